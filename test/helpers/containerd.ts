import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run, sleep, type CommandResult } from './appliance.js';

/**
 * A private containerd 1.6 (Debian `containerd`) for the end-to-end tests: its own config, root,
 * state and gRPC socket in a temp dir, so it never touches a system containerd. Pulls go through
 * `ctr images pull --hosts-dir` with hosts.toml mirrors, as a K3s node's containerd pulls through
 * Stevedore (containerd adds `?ns=<registry>` to every request it sends to a mirror).
 * containerd needs root (it mounts and chowns snapshots); only the `native` snapshotter is used.
 */

export const CONTAINERD_BIN = '/usr/bin/containerd';
export const CTR_BIN = '/usr/bin/ctr';

/** Why containerd cannot run here (not installed, not root), or undefined when it can. */
export async function containerdUnavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'containerd needs root';
  const found = await run('sh', ['-c', `command -v ${CONTAINERD_BIN} && command -v ${CTR_BIN}`]);
  return found.code === 0 ? undefined : 'containerd is not installed (apt-get install containerd)';
}

export interface PulledImage {
  /** The name containerd stored the image under (`docker.io/team/app:v1`). */
  name: string;
  /** Digest of the top manifest or index, as `ctr images ls` reports it. */
  digest: string;
  /** Media type of that top manifest. */
  mediaType: string;
  /** Platforms the image record lists (e.g. `linux/amd64,linux/arm64/v8`). */
  platforms: string;
}

export interface Containerd {
  dir: string;
  socket: string;
  /** Everything containerd wrote to stdout/stderr. */
  output(): string;
  /** Runs `ctr --address SOCK ...`. */
  ctr(args: string[], timeoutMs?: number): Promise<CommandResult>;
  /** `ctr images pull --snapshotter native --hosts-dir hostsDir --user creds [--platform p] ref`; throws with ctr's output on failure. */
  pull(ref: string, options: { hostsDir: string; creds: string; platform?: string }): Promise<PulledImage>;
  /** The image records of the default namespace. */
  images(): Promise<PulledImage[]>;
  /** Digests of every blob in containerd's content store. */
  content(): Promise<string[]>;
  /** SIGTERM (SIGKILL after a bound), then removes the temp dir. */
  stop(): Promise<void>;
}

function configToml(dir: string, socket: string): string {
  return [
    'version = 2',
    `root = "${join(dir, 'root')}"`,
    `state = "${join(dir, 'state')}"`,
    // The CRI (needs CNI) and the snapshotters that need kernel features or tools this may lack.
    'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",',
    '  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.overlayfs"]',
    '[grpc]',
    `  address = "${socket}"`,
    '[ttrpc]',
    `  address = "${socket}.ttrpc"`,
    '[debug]',
    '  address = ""',
    '[metrics]',
    '  address = ""',
    // Its default would create /opt/containerd.
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = "${join(dir, 'opt')}"`,
    '',
  ].join('\n');
}

/** Starts a private containerd; resolves once it serves its socket. */
export async function startContainerd(): Promise<Containerd> {
  // Short: the socket path must fit in sun_path (108 bytes).
  const dir = await mkdtemp('/tmp/ctd-');
  const socket = join(dir, 'c.sock');
  const configPath = join(dir, 'config.toml');
  await writeFile(configPath, configToml(dir, socket));
  const proc: ChildProcess = spawn(CONTAINERD_BIN, ['--config', configPath, '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  proc.stdout!.on('data', (c: Buffer) => { text += c.toString('utf8'); });
  proc.stderr!.on('data', (c: Buffer) => { text += c.toString('utf8'); });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));

  const ctr = (args: string[], timeoutMs = 120_000) => run(CTR_BIN, ['--address', socket, ...args], { timeoutMs });
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + 20_000;
  while (!text.includes('containerd successfully booted')) {
    if (proc.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`containerd did not start (exit ${proc.exitCode}):\n${text.slice(-3000)}`);
    }
    await sleep(50);
  }

  const images = async (): Promise<PulledImage[]> => {
    const listed = await ctr(['images', 'ls']);
    if (listed.code !== 0) throw new Error(`ctr images ls failed: ${listed.stderr}`);
    // REF  TYPE  DIGEST  SIZE(2 words)  PLATFORMS  LABELS
    return listed.stdout.split('\n').slice(1).filter(Boolean).map((line) => {
      const cols = line.trim().split(/\s+/);
      return { name: cols[0]!, mediaType: cols[1]!, digest: cols[2]!, platforms: cols[5] ?? '' };
    });
  };

  return {
    dir, socket, ctr, images, stop,
    output: () => text,
    async pull(ref, options) {
      const args = ['images', 'pull', '--snapshotter', 'native', '--hosts-dir', options.hostsDir, '--user', options.creds];
      if (options.platform) args.push('--platform', options.platform);
      args.push(ref);
      const result = await ctr(args);
      if (result.code !== 0) throw new Error(`ctr ${args.join(' ').replace(options.creds, 'USER:***')} failed (${result.code}):\n${result.stderr}${result.stdout}`);
      const image = (await images()).find((i) => i.name === ref);
      if (!image) throw new Error(`ctr pulled ${ref} but it is not listed:\n${result.stdout}`);
      return image;
    },
    async content() {
      const listed = await ctr(['content', 'ls', '--quiet']);
      if (listed.code !== 0) throw new Error(`ctr content ls failed: ${listed.stderr}`);
      return listed.stdout.split('\n').map((l) => l.trim()).filter(Boolean);
    },
  };
}

/**
 * Writes `<hostsDir>/<registry>/hosts.toml` making `mirror` (https://HOST:PORT of the gateway, its
 * certificate trusted with `ca`) the pull/resolve host for `registry`, as K3s writes it from
 * registries.yaml. `server` is where containerd would go if the mirror failed: the tests check the
 * gateway's access log (and the upstream's) to show the mirror served.
 */
export async function writeHostsToml(hostsDir: string, registry: string, mirror: string, ca: string, server?: string): Promise<void> {
  const dir = join(hostsDir, registry);
  await mkdir(dir, { recursive: true });
  const defaultServer = registry === 'docker.io' ? 'https://registry-1.docker.io' : `https://${registry}`;
  await writeFile(join(dir, 'hosts.toml'), [
    `server = "${server ?? defaultServer}"`,
    '',
    `[host."${mirror}"]`,
    '  capabilities = ["pull", "resolve"]',
    `  ca = "${ca}"`,
    '',
  ].join('\n'));
}
