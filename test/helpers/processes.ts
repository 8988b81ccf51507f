import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Real servers for tests and benchmarks: Stevedore's own CLI and the Debian `docker-registry`. */

export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const STEVEDORE_BIN = join(REPO_ROOT, 'bin', 'stevedore.js');

export async function tempDir(prefix = 'stevedore-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** The state letter of each thread of a process (R running, S sleeping, D disk, T stopped...): /proc/PID/task/TID/stat. */
export async function threadStates(pid: number): Promise<string[]> {
  const tids = await readdir(`/proc/${pid}/task`);
  const stats = await Promise.all(tids.map((tid) => readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => undefined)));
  return stats.filter((s): s is string => s !== undefined).map((s) => s.charAt(s.lastIndexOf(')') + 2));
}

/**
 * SIGSTOPs a process and resolves once EVERY thread of it is stopped. kill() returns once the signal
 * is queued; the kernel wakes one thread to take it, and only when that thread runs does it stop the
 * others: on a busy machine the rest (Go's network poller, Node's main thread) keep answering requests
 * meanwhile (measured: a docker-registry answered a request sent right after kill(SIGSTOP) 3 times in 100).
 */
export async function stopProcess(proc: ChildProcess, timeoutMs = 5000): Promise<void> {
  proc.kill('SIGSTOP');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const states = await threadStates(proc.pid!);
    if (states.length > 0 && states.every((s) => s === 'T')) return;
    if (Date.now() > deadline) throw new Error(`pid ${proc.pid} not stopped after ${timeoutMs} ms: thread states ${states.join('')}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

export interface RunningProcess {
  proc: ChildProcess;
  url: string;
  port: number;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  /** JSON log lines parsed from stdout. */
  logLines(): Array<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

function track(proc: ChildProcess): { output: () => string; waitFor: (test: (text: string) => boolean, ms: number) => Promise<void> } {
  let text = '';
  const waiters: Array<() => void> = [];
  const onData = (chunk: Buffer) => {
    text += chunk.toString('utf8');
    for (const w of waiters.splice(0)) w();
  };
  proc.stdout?.on('data', onData);
  proc.stderr?.on('data', onData);
  return {
    output: () => text,
    waitFor: (test, ms) => new Promise<void>((resolve, reject) => {
      // A process that never got ready is killed: left running, it would hold the test runner open.
      const timer = setTimeout(() => {
        proc.kill('SIGKILL');
        reject(new Error(`timed out after ${ms} ms waiting for process output; got:\n${text.slice(-3000)}`));
      }, ms);
      const check = () => {
        if (test(text)) {
          clearTimeout(timer);
          resolve();
        } else if (proc.exitCode !== null) {
          clearTimeout(timer);
          reject(new Error(`process exited with ${proc.exitCode}; output:\n${text.slice(-3000)}`));
        } else waiters.push(check);
      };
      proc.once('exit', () => { for (const w of waiters.splice(0)) w(); });
      check();
    }),
  };
}

function stopper(proc: ChildProcess) {
  return (signal: NodeJS.Signals = 'SIGTERM') => new Promise<number | null>((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve(proc.exitCode);
    const kill = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    proc.once('exit', (code) => {
      clearTimeout(kill);
      resolve(code);
    });
    proc.kill(signal);
  });
}

/**
 * Starts `stevedore registry` on loopback port 0, so the kernel picks the port at bind time and no
 * other process can take it between choosing and binding (freePort's race); resolves once the worker
 * logs that it listens, with the port it logged.
 */
export async function startStevedoreRegistry(args: string[], env: NodeJS.ProcessEnv = {}, nodeArgs: string[] = []): Promise<RunningProcess> {
  const proc = spawn(process.execPath, [...nodeArgs, STEVEDORE_BIN, 'registry', '--listen', '127.0.0.1:0', '--log-level', 'info', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const { output, waitFor } = track(proc);
  const listening = /"address":"127\.0\.0\.1:(\d+)"[^\n]*"msg":"registry listening"/;
  await waitFor((text) => listening.test(text), 30_000);
  const port = Number(listening.exec(output())![1]);
  return {
    proc, port, url: `http://127.0.0.1:${port}`, output,
    logLines: () => output().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>),
    stop: stopper(proc),
  };
}

export interface DistributionOptions {
  /** Storage root; default: a `data` dir inside the instance's temp dir (removed by stop()). A given root is kept. */
  root?: string;
  /** Port to listen on (e.g. to restart an instance where it was); default: a free one. */
  port?: number;
  /** htpasswd file path (bcrypt) for Basic auth. */
  htpasswd?: string;
  /** Token auth: the realm URL of a token server, service name, and the issuer's certificate bundle. */
  token?: { realm: string; service: string; issuer: string; rootCertBundle: string };
  /** Run as a pull-through cache of this upstream. */
  proxy?: { remoteurl: string; username?: string; password?: string };
}

export const DISTRIBUTION_BIN = '/usr/bin/docker-registry';

/**
 * distribution's config.yml for `options` (port, and a root or another storage driver's block, given): access log on at level info, as the
 * tests read it; `quiet` (benchmarks) logs warnings only, without access log.
 */
export function distributionConfig(options: DistributionOptions & { port: number; quiet?: boolean } & ({ root: string } | { storage: string[] })): string {
  const { port } = options;
  // The storage driver's block (under `storage:`): the filesystem at `root`, or the caller's (e.g. s3).
  const driver = 'storage' in options ? options.storage : ['  filesystem:', `    rootdirectory: ${options.root}`];
  const lines = [
    'version: 0.1',
    'log:',
    `  level: ${options.quiet ? 'warn' : 'info'}`,
    '  accesslog:',
    `    disabled: ${options.quiet ? 'true' : 'false'}`,
    'storage:',
    ...driver,
    '  delete:',
    '    enabled: true',
    '  cache:',
    '    blobdescriptor: inmemory',
    'http:',
    `  addr: 127.0.0.1:${port}`,
  ];
  if (options.htpasswd) lines.push('auth:', '  htpasswd:', '    realm: test-realm', `    path: ${options.htpasswd}`);
  if (options.token) {
    lines.push('auth:', '  token:', `    realm: ${options.token.realm}`, `    service: ${options.token.service}`,
      `    issuer: ${options.token.issuer}`, `    rootcertbundle: ${options.token.rootCertBundle}`);
  }
  if (options.proxy) {
    lines.push('proxy:', `  remoteurl: ${options.proxy.remoteurl}`);
    if (options.proxy.username) lines.push(`  username: ${options.proxy.username}`, `  password: ${options.proxy.password ?? ''}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Starts the Debian `docker-registry` (CNCF distribution 2.8) with its access log on stdout. */
export async function startDistribution(options: DistributionOptions = {}): Promise<RunningProcess & { root: string }> {
  const dir = await tempDir('distribution-');
  const root = options.root ?? join(dir, 'data');
  // Port 0 unless a port is asked for (a restart where it was): the kernel picks it at bind time.
  const config = distributionConfig({ ...options, root, port: options.port ?? 0 });
  const configPath = join(dir, 'config.yml');
  await writeFile(configPath, config);
  const proc = spawn(DISTRIBUTION_BIN, ['serve', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  const { output, waitFor } = track(proc);
  const stop = stopper(proc);
  // The temp dir holds the config (and the default storage root): removed on stop, or if start-up fails.
  const stopAndClean = async (signal?: NodeJS.Signals) => {
    const code = await stop(signal);
    await rm(dir, { recursive: true, force: true });
    return code;
  };
  // distribution logs the address it bound: `listening on 127.0.0.1:PORT`.
  const listening = /listening on 127\.0\.0\.1:(\d+)/;
  try {
    await waitFor((text) => listening.test(text), 30_000);
  } catch (err) {
    await stopAndClean('SIGKILL');
    throw err;
  }
  const port = Number(listening.exec(output())![1]);
  return {
    proc, port, root, url: `http://127.0.0.1:${port}`, output,
    logLines: () => output().split('\n').filter((l) => l.includes('"GET ') || l.includes('"HEAD ')).map((line) => ({ line })),
    stop: stopAndClean,
  };
}

/** Requests made to a distribution instance, parsed from its combined access log lines. */
export function distributionRequests(output: string): Array<{ method: string; path: string; status: number }> {
  const result: Array<{ method: string; path: string; status: number }> = [];
  for (const match of output.matchAll(/"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP\/[\d.]+" (\d{3})/g)) {
    result.push({ method: match[1]!, path: match[2]!, status: Number(match[3]) });
  }
  return result;
}

/** A docker-registry that can be stopped and started again on the same port with the same storage (an upstream outage). */
export interface RestartableDistribution {
  port: number;
  root: string;
  url: string;
  /** The running instance, if up. */
  current(): (RunningProcess & { root: string }) | undefined;
  /** Everything every instance wrote so far (access logs of all of them). */
  output(): string;
  /** Stops the instance (SIGKILL by default: an upstream that dies, not one that drains). */
  down(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again where it was; resolves once it listens. */
  up(): Promise<void>;
  stop(): Promise<void>;
}

export async function startRestartableDistribution(options: Omit<DistributionOptions, 'root' | 'port'> = {}): Promise<RestartableDistribution> {
  const dir = await tempDir('distribution-restartable-');
  const root = join(dir, 'data');
  let instance: (RunningProcess & { root: string }) | undefined = await startDistribution({ ...options, root });
  const port = instance.port;
  let previous = '';
  const restartable: RestartableDistribution = {
    port, root, url: `http://127.0.0.1:${port}`,
    current: () => instance,
    output: () => previous + (instance?.output() ?? ''),
    async down(signal: NodeJS.Signals = 'SIGKILL') {
      if (!instance) return;
      const stopping = instance;
      instance = undefined;
      await stopping.stop(signal);
      previous += stopping.output();
    },
    async up() {
      if (instance) return;
      instance = await startDistribution({ ...options, root, port });
    },
    async stop() {
      await restartable.down('SIGTERM');
      await rm(dir, { recursive: true, force: true });
    },
  };
  return restartable;
}
