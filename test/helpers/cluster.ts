import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import {
  ADMIN, call, createCredentials, isAlive, READER, sleep, startAppliance, type Appliance, type ApplianceCredentials, type ApplianceOptions, type HttpResult, type User,
} from './appliance.js';
import { freePort, startDistribution, tempDir, type RunningProcess } from './processes.js';
import type { TestStorage } from './storage-targets.js';

/**
 * Issue 12: N whole appliances (`stevedore start` under PM2, each with its own run dir, root, PM2_HOME
 * and gateway port) on ONE store with STEVEDORE_SHARED_STORE=true, sharing one certificate, one users
 * file and one pull secret (as the pods of a Deployment share Secrets), behind the Debian `haproxy`:
 * TLS passed through in `mode tcp`, round-robin per connection, `/healthz` checked over TLS every
 * 500 ms so that a dead appliance leaves the rotation within about a second.
 */

export const HAPROXY_BIN = '/usr/sbin/haproxy';

export function haproxyInstalled(): boolean {
  return existsSync(HAPROXY_BIN);
}

/** HAProxy's view of one backend server (`show stat`). */
export interface HaproxyServerState {
  name: string;
  /** UP, DOWN, "UP 1/2" (going down), "DOWN 1/2" (coming up), MAINT, no check... */
  status: string;
  /** Connections HAProxy sent to it so far. */
  sessions: number;
  /** Connection attempts to it that failed and were retried (`wretr`), and sent to another server instead (`wredis`). */
  retries: number;
  redispatches: number;
}

export interface ClusterMember {
  index: number;
  /** Its server name in HAProxy's backend (`app0`, `app1`, ...). */
  name: string;
  /** https://127.0.0.1:PORT of its gateway (fixed: a restart listens there again). */
  url: string;
  /** 127.0.0.1:PORT, as skopeo names the registry. */
  host: string;
  port: number;
  /** The running appliance (replaced by restart()). */
  appliance: Appliance;
  call(method: string, path: string, options?: Parameters<typeof call>[3]): Promise<HttpResult>;
  /**
   * Sends `signal` (default SIGKILL) to every process of the appliance (`stevedore start`, PM2 and
   * every app: a machine or pod that dies), or to its gateway only; resolves once they are gone
   * (the gateway alone is then restarted by PM2).
   */
  kill(signal?: NodeJS.Signals, what?: 'all' | 'gateway'): Promise<void>;
  /** Stops what is left of the appliance and starts a fresh one on the same port and store; resolves once healthy. */
  restart(): Promise<void>;
}

export interface ClusterOptions {
  appliances?: number;
  storage: TestStorage;
  /** The upstream of every appliance's pull secret (reachable as the alias `up`); default: a docker-registry started (and stopped) here. */
  upstream?: RunningProcess & { root: string };
  /** Environment of every appliance (after the cluster's own: store, shared store, peer URL and token). */
  env?: Record<string, string>;
  perApplianceEnv?: (index: number) => Record<string, string>;
}

export interface Cluster {
  /** https://127.0.0.1:PORT of HAProxy's frontend. */
  url: string;
  /** 127.0.0.1:PORT of HAProxy's frontend, as skopeo names the registry. */
  host: string;
  members: ClusterMember[];
  upstream: RunningProcess & { root: string };
  /** 127.0.0.1:PORT of the upstream (plain HTTP), also reachable through every appliance as the alias `up`. */
  upHost: string;
  storage: TestStorage;
  /** The certificate and users every appliance shares. */
  credentials: ApplianceCredentials;
  /** A directory with the shared certificate as a CA (skopeo --cert-dir), valid for HAProxy and every appliance. */
  certDir: string;
  admin: User;
  reader: User;
  peerToken: string;
  /** The HAProxy configuration in use (the README's example is this, trimmed). */
  haproxyConfig: string;
  call(method: string, path: string, options?: Parameters<typeof call>[3]): Promise<HttpResult>;
  /** HAProxy's state of each backend server, from its stats socket. */
  haproxyServers(): Promise<HaproxyServerState[]>;
  /** Sends a command to HAProxy's admin socket (e.g. `disable health appliances/app1`); resolves with its answer. */
  haproxyCommand(command: string): Promise<string>;
  /** Resolves once HAProxy reports `server` in a status starting with `status` (UP or DOWN); the ms it took. */
  waitServerStatus(server: string, status: 'UP' | 'DOWN', timeoutMs?: number): Promise<number>;
  /** HAProxy's output so far (alerts and warnings). */
  haproxyOutput(): string;
  stop(): Promise<void>;
}

/** The HAProxy configuration of a cluster: TLS passthrough to `servers` (name → port), health checks on /healthz. */
export function haproxyConfig(options: { listenPort: number; statsSocket: string; servers: Array<{ name: string; port: number }> }): string {
  return [
    'global',
    `  stats socket ${options.statsSocket} mode 600 level admin`,
    '  nbthread 1',
    '',
    'defaults',
    '  mode tcp',
    '  timeout connect 2s',
    '  timeout client 10m',
    '  timeout server 10m',
    '  timeout check 2s',
    // A connection refused by a dead appliance not yet marked down is tried again on another one.
    '  retries 2',
    '  option redispatch 1',
    '',
    'frontend registry',
    `  bind 127.0.0.1:${options.listenPort}`,
    '  default_backend appliances',
    '',
    'backend appliances',
    '  balance roundrobin',
    '  option httpchk GET /healthz',
    '  http-check expect status 200',
    // The check speaks TLS to the gateway; its certificate is not verified (one self-signed for all).
    '  default-server check check-ssl verify none inter 500ms fall 2 rise 2',
    ...options.servers.map((s) => `  server ${s.name} 127.0.0.1:${s.port}`),
    '',
  ].join('\n');
}

/** Sends one command to HAProxy's stats socket and resolves with its whole answer. */
function statsCommand(socketPath: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => { text += chunk; });
    socket.on('end', () => resolve(text));
    socket.on('error', reject);
    socket.setTimeout(5_000, () => socket.destroy(new Error(`haproxy stats socket: no answer to "${command}"`)));
    socket.end(`${command}\n`);
  });
}

export function parseShowStat(csv: string, backend: string): HaproxyServerState[] {
  const lines = csv.split('\n').filter(Boolean);
  const header = lines[0]?.replace(/^# /, '').split(',') ?? [];
  const col = (name: string) => header.indexOf(name);
  const [px, sv, status, stot, wretr, wredis] = ['pxname', 'svname', 'status', 'stot', 'wretr', 'wredis'].map(col) as [number, number, number, number, number, number];
  return lines.slice(1).map((l) => l.split(','))
    .filter((f) => f[px] === backend && f[sv] !== 'BACKEND' && f[sv] !== 'FRONTEND')
    .map((f) => ({ name: f[sv]!, status: f[status]!, sessions: Number(f[stot]), retries: Number(f[wretr] || 0), redispatches: Number(f[wredis] || 0) }));
}

/** Resolves once none of `pids` is running (a zombie not yet reaped by PM2 counts as gone). */
async function waitForExit(pids: number[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (pids.some(isAlive)) {
    if (Date.now() > deadline) throw new Error(`processes still running after ${timeoutMs} ms: ${pids.filter(isAlive).join(' ')}`);
    await sleep(20);
  }
}

export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  const count = options.appliances ?? 3;
  const dir = await tempDir('stevedore-cluster-');
  const cleanups: Array<() => Promise<unknown>> = [() => rm(dir, { recursive: true, force: true })];
  // Last started, first stopped; a second call finds nothing left to do.
  const cleanup = async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
  };
  try {
    const credentialsPromise = createCredentials(dir);
    const upstreamPromise = options.upstream ? Promise.resolve(options.upstream) : startDistribution();
    const [credentials, upstream] = await Promise.all([credentialsPromise, upstreamPromise]);
    if (!options.upstream) cleanups.push(() => upstream.stop());
    const upHost = `127.0.0.1:${upstream.port}`;
    const peerToken = randomBytes(24).toString('hex');
    const ports: number[] = [];
    // Distinct ports: freePort returns a port that was free a moment ago; a second call may return the same one.
    while (ports.length < count + 1) {
      const port = await freePort();
      if (!ports.includes(port)) ports.push(port);
    }
    const lbPort = ports.pop()!;

    const applianceOptions = (index: number): ApplianceOptions => ({
      upstreams: [upHost], aliases: `up=${upHost}`, credentials, port: ports[index]!,
      env: {
        ...options.storage.env, STEVEDORE_SHARED_STORE: 'true',
        STEVEDORE_PEER_URL: `https://127.0.0.1:${ports[index]!}`, STEVEDORE_PEER_TOKEN: peerToken,
        ...options.env, ...options.perApplianceEnv?.(index),
      },
    });
    // In parallel: each start is mostly waiting for PM2 and its apps.
    const started = await Promise.allSettled(ports.map((_, i) => startAppliance(applianceOptions(i))));
    for (const s of started) if (s.status === 'fulfilled') cleanups.push(() => s.value.stop());
    const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    // Stopped at the end: whichever appliance is current then (restart() replaces them).
    const current = started.map((s) => (s as PromiseFulfilledResult<Appliance>).value);
    cleanups.splice(cleanups.length - count, count, () => Promise.all(current.map((a) => a.stop())));
    const certDir = join(dir, 'ca');
    await mkdir(certDir);
    await writeFile(join(certDir, 'ca.crt'), await readFile(join(current[0]!.certDir, 'ca.crt')));

    const statsSocket = join(dir, 'haproxy.sock');
    const servers = ports.map((port, i) => ({ name: `app${i}`, port }));
    const config = haproxyConfig({ listenPort: lbPort, statsSocket, servers });
    const configPath = join(dir, 'haproxy.cfg');
    await writeFile(configPath, config);
    const haproxy: ChildProcess = spawn(HAPROXY_BIN, ['-db', '-f', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    let haproxyText = '';
    haproxy.stdout!.on('data', (c: Buffer) => { haproxyText += c.toString('utf8'); });
    haproxy.stderr!.on('data', (c: Buffer) => { haproxyText += c.toString('utf8'); });
    const haproxyExited = new Promise<void>((resolve) => haproxy.once('exit', () => resolve()));
    cleanups.push(async () => {
      if (haproxy.exitCode === null && haproxy.signalCode === null) haproxy.kill('SIGTERM');
      await Promise.race([haproxyExited, sleep(5_000).then(() => haproxy.kill('SIGKILL'))]);
    });

    const haproxyServers = async () => {
      if (haproxy.exitCode !== null) throw new Error(`haproxy exited with ${haproxy.exitCode}:\n${haproxyText}`);
      return parseShowStat(await statsCommand(statsSocket, 'show stat'), 'appliances');
    };
    const waitServerStatus = async (server: string, status: 'UP' | 'DOWN', timeoutMs = 15_000) => {
      const started = Date.now();
      let last = 'no answer';
      while (Date.now() - started < timeoutMs) {
        try {
          const state = (await haproxyServers()).find((s) => s.name === server);
          last = state?.status ?? `no server ${server}`;
          // "UP 1/2" is a server going down, "DOWN 1/2" one coming up: only the settled state counts.
          if (last === status) return Date.now() - started;
        } catch (err) {
          if (haproxy.exitCode !== null) throw err;
          last = (err as Error).message;
        }
        await sleep(50);
      }
      throw new Error(`haproxy: ${server} not ${status} within ${timeoutMs} ms (last: ${last}); haproxy output:\n${haproxyText.slice(-2000)}`);
    };

    const members: ClusterMember[] = current.map((_, index) => {
      const port = ports[index]!;
      const member: ClusterMember = {
        index, name: `app${index}`, url: `https://127.0.0.1:${port}`, host: `127.0.0.1:${port}`, port,
        get appliance() { return current[index]!; },
        call: (method, path, opts) => call(member.url, method, path, opts),
        async kill(signal: NodeJS.Signals = 'SIGKILL', what: 'all' | 'gateway' = 'all') {
          const targets = member.appliance.processes().filter((p) => what === 'all' || p.name === 'gateway');
          if (targets.length === 0) throw new Error(`${member.name}: no ${what === 'all' ? 'process' : 'gateway'} to kill`);
          for (const p of targets) {
            try {
              process.kill(p.pid, signal);
            } catch { /* already gone */ }
          }
          if (signal === 'SIGKILL') await waitForExit(targets.map((p) => p.pid), 5_000);
        },
        async restart() {
          await current[index]!.stop();
          current[index] = await startAppliance(applianceOptions(index));
        },
      };
      return member;
    });

    const lbUrl = `https://127.0.0.1:${lbPort}`;
    // Ready once HAProxy has checked every appliance healthy.
    await Promise.all(servers.map((s) => waitServerStatus(s.name, 'UP')));
    return {
      url: lbUrl, host: `127.0.0.1:${lbPort}`, members, upstream, upHost, storage: options.storage, credentials,
      certDir, admin: ADMIN, reader: READER, peerToken, haproxyConfig: config,
      call: (method, path, opts) => call(lbUrl, method, path, opts),
      haproxyServers, waitServerStatus,
      haproxyCommand: (command) => statsCommand(statsSocket, command),
      haproxyOutput: () => haproxyText,
      stop: cleanup,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
