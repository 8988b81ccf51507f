import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { IncomingHttpHeaders } from 'node:http';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { buildIndex, MANIFEST_ACCEPT, writeOciLayout, type BuiltImage, type PulledLayout } from './oci-image.js';

export { MANIFEST_ACCEPT };
import { freePort, STEVEDORE_BIN } from './processes.js';
import { sleep } from './wait.js';

/**
 * The whole appliance (`stevedore start`: pm2-runtime, gateway, workers) in a temp dir, for the
 * end-to-end tests test/appliance-*.test.ts. Processes are found through /proc (their environment
 * names this instance's PM2_HOME), never with the pm2 CLI: a pm2 CLI that cannot reach the
 * runtime's daemon would start a new one and leave it behind.
 */

export const sha256 = (data: Buffer | string): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
export const basic = (user: string, pass: string): string => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
export { sleep };

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command (optionally feeding stdin); never throws on a non-zero exit. */
export function run(cmd: string, args: string[], options: { env?: NodeJS.ProcessEnv; input?: string; cwd?: string; timeoutMs?: number } = {}): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, {
      env: options.env ?? process.env, cwd: options.cwd, timeout: options.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8',
    }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string; killed?: boolean }) | null;
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : -1) : 0, stdout, stderr: `${stderr}${e?.killed ? ' (killed: timeout)' : ''}` });
    });
    // The command may exit without reading its stdin.
    child.stdin?.on('error', () => {});
    if (options.input !== undefined) child.stdin?.end(options.input);
    else child.stdin?.end();
  });
}

export async function mustRun(cmd: string, args: string[], options: Parameters<typeof run>[2] = {}): Promise<CommandResult> {
  const result = await run(cmd, args, options);
  if (result.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${result.code}): ${result.stderr}${result.stdout}`);
  return result;
}

export interface HttpResult {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  ms: number;
  text(): string;
  json<T = unknown>(): T;
}

/**
 * One HTTP(S) request with the path sent exactly as given (fetch and URL would normalize `..`,
 * `%2e` and `//` away). TLS certificates are not verified (the appliance's is self-signed).
 */
export function call(base: string, method: string, path: string, options: { auth?: string; headers?: Record<string, string>; body?: Buffer | string; timeoutMs?: number } = {}): Promise<HttpResult> {
  const url = new URL(base);
  const headers: Record<string, string> = { ...options.headers };
  if (options.auth) headers.authorization = options.auth;
  if (options.body !== undefined) headers['content-length'] = String(Buffer.byteLength(options.body));
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send({
      host: url.hostname, port: url.port, method, path, headers, agent: false, rejectUnauthorized: false, timeout: options.timeoutMs ?? 15_000,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({
          status: res.statusCode ?? 0, headers: res.headers, body, ms: Date.now() - started,
          text: () => body.toString('utf8'),
          json: <T>() => JSON.parse(body.toString('utf8')) as T,
        });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer within ${options.timeoutMs ?? 15_000} ms`)));
    req.on('error', reject);
    req.end(options.body);
  });
}

/** The first OCI error of a response body ({"errors":[...]}); throws if the body is not one. */
export function ociError(res: HttpResult): { code: string; message: string; detail?: unknown } {
  let body: { errors?: Array<{ code: string; message: string; detail?: unknown }> };
  try {
    body = res.json();
  } catch {
    throw new Error(`expected an OCI error body, got ${res.status}: ${res.text().slice(0, 300)}`);
  }
  const first = body.errors?.[0];
  if (!first) throw new Error(`expected an OCI error body, got ${res.status}: ${res.text().slice(0, 300)}`);
  return first;
}

/** A process of this appliance, found in /proc by its environment. */
export interface ApplianceProcess {
  pid: number;
  /** PM2 app name (gateway, registry-hosted, registry-<host>, ...); undefined for pm2-runtime and `stevedore start`. */
  name: string | undefined;
  /** STEVEDORE_LISTEN of a registry worker (its unix socket). */
  listen: string | undefined;
}

function readEnviron(pid: number): Map<string, string> | undefined {
  let raw: string;
  try {
    raw = readFileSync(`/proc/${pid}/environ`, 'utf8');
  } catch {
    return undefined;
  }
  const env = new Map<string, string>();
  for (const item of raw.split('\0')) {
    const eq = item.indexOf('=');
    if (eq > 0) env.set(item.slice(0, eq), item.slice(eq + 1));
  }
  return env;
}

/** Live (not zombie) processes whose environment has PM2_HOME=pm2Home. */
export function processesOf(pm2Home: string): ApplianceProcess[] {
  const found: ApplianceProcess[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    const env = readEnviron(pid);
    if (env?.get('PM2_HOME') !== pm2Home) continue;
    found.push({ pid, name: env.has('pm_id') ? env.get('name') : undefined, listen: env.get('STEVEDORE_LISTEN') });
  }
  return found;
}

export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 3 (after the parenthesised command) is the state; Z = zombie (dead, not yet reaped).
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Inodes of the sockets listening on TCP (IPv4 and IPv6). */
export function tcpListenInodes(): Map<string, number> {
  const inodes = new Map<string, number>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10 || cols[3] !== '0A') continue;
      inodes.set(cols[9]!, parseInt(cols[1]!.split(':')[1]!, 16));
    }
  }
  return inodes;
}

/** TCP ports a process listens on (its socket fds matched against /proc/net/tcp*). */
export function tcpListenPorts(pid: number): number[] {
  const listening = tcpListenInodes();
  const ports: number[] = [];
  let fds: string[] = [];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return ports;
  }
  for (const fd of fds) {
    let target = '';
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m && listening.has(m[1]!)) ports.push(listening.get(m[1]!)!);
  }
  return ports;
}

function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (/^(PM2_|STEVEDORE_|REGISTRY_|TLS_|CLEANER_|LOGGER_|NODE_TEST|NODE_TLS_)/.test(key)) continue;
    if (['ACCESS_LOG_PATH', 'PULLSECRETPATH', 'IGNOREREGISTRYLIST', 'LOG_LEVEL', 'NODE_ENV'].includes(key)) continue;
    env[key] = value;
  }
  return env;
}

export interface User {
  name: string;
  pass: string;
  auth: string;
  /** user:pass for skopeo --creds. */
  creds: string;
}

function user(name: string, pass: string): User {
  return { name, pass, auth: basic(name, pass), creds: `${name}:${pass}` };
}

export interface ApplianceOptions {
  /** Plain-HTTP upstreams (host:port) for the pull secret: one cache worker each. */
  upstreams?: string[];
  /** STEVEDORE_UPSTREAM_ALIASES value, e.g. `up=127.0.0.1:5000`. */
  aliases?: string;
  tls?: boolean;
  auth?: boolean;
  realm?: string;
  env?: Record<string, string>;
  /** Resolve once /healthz is 200 (default); false: as soon as `stevedore start` is spawned (start-up tests). */
  waitHealthy?: boolean;
  /** Use this certificate and these users files instead of generating them (appliances sharing them, as pods share a Secret). */
  credentials?: ApplianceCredentials;
  /** Gateway port (e.g. to start an appliance again where it was); default: a free one. */
  port?: number;
}

/** The gateway's certificate (certificate and key in one PEM) and the users files, as `createCredentials` writes them. */
export interface ApplianceCredentials {
  certsPath: string;
  htpasswdPath: string;
  adminsPath: string;
}

/** The users every test appliance has: an admin and a read-only user. */
export const ADMIN = user('admin', 'Adm1n-pw-7f3c1d');
export const READER = user('reader', 'Re4der-pw-9b2e6a');

/**
 * Writes a self-signed certificate for 127.0.0.1/localhost (when `tls`) and the users ADMIN and READER
 * (when `auth`) under `dir`, with the CLI (`stevedore tls generate`, `stevedore user add`).
 */
export async function createCredentials(dir: string, options: { tls?: boolean; auth?: boolean } = {}): Promise<ApplianceCredentials> {
  const credentials = { certsPath: join(dir, 'certs', 'certs.pem'), htpasswdPath: join(dir, 'auth', 'htpasswd'), adminsPath: join(dir, 'auth', 'admins') };
  const env: NodeJS.ProcessEnv = {
    ...cleanEnv(), TLS_CERTS_PATH: credentials.certsPath,
    REGISTRY_AUTH_HTPASSWD_PATH: credentials.htpasswdPath, REGISTRY_AUTH_ADMINS_PATH: credentials.adminsPath,
  };
  const mustCli = async (args: string[], input?: string) => {
    const result = await run(process.execPath, [STEVEDORE_BIN, ...args], { env, ...(input !== undefined ? { input } : {}) });
    if (result.code !== 0) throw new Error(`stevedore ${args.join(' ')} failed (${result.code}): ${result.stderr}`);
  };
  // Both settle before anything is judged, so that a failure leaves nothing writing into `dir`.
  const setup = await Promise.allSettled([
    options.tls ?? true ? mustCli(['tls', 'generate', '127.0.0.1', 'localhost']) : Promise.resolve(),
    options.auth ?? true ? (async () => {
      // One at a time: both rewrite the same files.
      await mustCli(['user', 'add', ADMIN.name, '--admin'], `${ADMIN.pass}\n`);
      await mustCli(['user', 'add', READER.name], `${READER.pass}\n`);
    })() : Promise.resolve(),
  ]);
  const failed = setup.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return credentials;
}

export interface Appliance {
  dir: string;
  env: NodeJS.ProcessEnv;
  /** https://127.0.0.1:PORT (http:// without TLS). */
  url: string;
  /** 127.0.0.1:PORT, as skopeo names the registry. */
  host: string;
  port: number;
  pm2Home: string;
  runDir: string;
  root: string;
  accessLogPath: string;
  htpasswdPath: string;
  adminsPath: string;
  /** A directory with the gateway's certificate as a CA (skopeo --cert-dir). */
  certDir: string;
  admin: User;
  reader: User;
  proc: ChildProcess;
  /** Everything `stevedore start` (pm2-runtime and the apps) wrote to stdout and stderr. */
  output(): string;
  call(method: string, path: string, options?: Parameters<typeof call>[3]): Promise<HttpResult>;
  /** Runs `stevedore <args>` with the appliance's environment (user, tls commands). */
  cli(args: string[], input?: string): Promise<CommandResult>;
  processes(): ApplianceProcess[];
  /** Resolves once /healthz answers 200 with every worker ok. */
  waitHealthy(timeoutMs?: number): Promise<Record<string, string>>;
  /** Access-log lines so far. */
  accessLog(): Promise<string[]>;
  /**
   * SIGTERM to `stevedore start`; waits for it and every process of the appliance to exit (SIGKILL
   * after a bound), then removes the temp dir. Reports how it went instead of throwing.
   */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number; survivors: ApplianceProcess[] }>;
}

/** Starts `stevedore start` with its own temp dir, port, certificate and users; resolves once healthy. */
export async function startAppliance(options: ApplianceOptions = {}): Promise<Appliance> {
  // Short: the workers' socket paths must fit in sun_path (108 bytes).
  const dir = await mkdtemp('/tmp/stv-');
  const port = options.port ?? await freePort();
  const tls = options.tls ?? true;
  const auth = options.auth ?? true;
  let credentials: ApplianceCredentials;
  try {
    credentials = options.credentials ?? await createCredentials(dir, { tls, auth });
    if (tls) {
      const pem = await readFile(credentials.certsPath, 'utf8');
      await mkdir(join(dir, 'ca'), { recursive: true });
      await writeFile(join(dir, 'ca', 'ca.crt'), pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/)![0]);
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const paths = {
    pm2Home: join(dir, 'pm2'), runDir: join(dir, 'run'), root: join(dir, 'root'), accessLogPath: join(dir, 'logs', 'access.log'),
    htpasswdPath: credentials.htpasswdPath, adminsPath: credentials.adminsPath, certDir: join(dir, 'ca'),
  };
  const pullSecret = join(dir, 'pull-secret.json');
  const auths = Object.fromEntries((options.upstreams ?? []).map((host) => [`http://${host}`, {}]));
  await writeFile(pullSecret, JSON.stringify({ auths }));
  const env: NodeJS.ProcessEnv = {
    ...cleanEnv(),
    PM2_HOME: paths.pm2Home, STEVEDORE_ROOT: paths.root, STEVEDORE_RUN_DIR: paths.runDir, PULLSECRETPATH: pullSecret,
    IGNOREREGISTRYLIST: 'cloud.openshift.com', STEVEDORE_GATEWAY_LISTEN: `127.0.0.1:${port}`,
    TLS_CERTS_PATH: credentials.certsPath, ACCESS_LOG_PATH: paths.accessLogPath,
    REGISTRY_AUTH: auth ? 'htpasswd' : 'none', REGISTRY_AUTH_HTPASSWD_PATH: paths.htpasswdPath, REGISTRY_AUTH_ADMINS_PATH: paths.adminsPath,
    ...(options.aliases ? { STEVEDORE_UPSTREAM_ALIASES: options.aliases } : {}),
    ...(options.realm ? { REGISTRY_AUTH_HTPASSWD_REALM: options.realm } : {}),
    ...options.env,
  };
  const cli = (args: string[], input?: string) => run(process.execPath, [STEVEDORE_BIN, ...args], { env, ...(input !== undefined ? { input } : {}) });
  const admin = ADMIN;
  const reader = READER;

  const proc = spawn(process.execPath, [STEVEDORE_BIN, 'start'], { env, cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let text = '';
  proc.stdout!.on('data', (c: Buffer) => { text += c.toString('utf8'); });
  proc.stderr!.on('data', (c: Buffer) => { text += c.toString('utf8'); });
  const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;

  const appliance: Appliance = {
    dir, env, url, host: `127.0.0.1:${port}`, port, ...paths, admin, reader, proc,
    output: () => text,
    call: (method, path, opts) => call(url, method, path, opts),
    cli,
    processes: () => processesOf(paths.pm2Home),
    async waitHealthy(timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      let last = 'no answer';
      while (Date.now() < deadline) {
        if (proc.exitCode !== null) throw new Error(`stevedore start exited with ${proc.exitCode}:\n${text.slice(-3000)}`);
        try {
          const res = await call(url, 'GET', '/healthz', { timeoutMs: 3_000 });
          last = `${res.status} ${res.text()}`;
          if (res.status === 200) return res.json<{ workers: Record<string, string> }>().workers;
        } catch (err) {
          last = (err as Error).message;
        }
        await sleep(150);
      }
      throw new Error(`appliance not healthy within ${timeoutMs} ms (last: ${last}); output:\n${text.slice(-3000)}`);
    },
    async accessLog() {
      const raw = await readFile(paths.accessLogPath, 'utf8').catch(() => '');
      return raw.split('\n').filter(Boolean);
    },
    async stop() {
      const started = Date.now();
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) resolve({ code: proc.exitCode, signal: proc.signalCode });
        else proc.once('exit', (code, signal) => resolve({ code, signal }));
      });
      proc.kill('SIGTERM');
      const timer = setTimeout(() => {
        try {
          process.kill(-proc.pid!, 'SIGKILL');
        } catch { /* already gone */ }
      }, 20_000);
      const result = await exited;
      clearTimeout(timer);
      const ms = Date.now() - started;
      // PM2 starts its apps in their own process groups: anything left is found by environment.
      let survivors = processesOf(paths.pm2Home).filter((p) => isAlive(p.pid));
      for (let i = 0; i < 20 && survivors.length > 0; i++) {
        await sleep(100);
        survivors = survivors.filter((p) => isAlive(p.pid));
      }
      for (const p of survivors) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch { /* gone */ }
      }
      await rm(dir, { recursive: true, force: true });
      return { ...result, ms, survivors };
    },
  };
  if (options.waitHealthy === false) return appliance;
  try {
    await appliance.waitHealthy();
  } catch (err) {
    await appliance.stop();
    throw err;
  }
  return appliance;
}

/** Writes `images` (an index of them with `index`) as an OCI layout in a new dir under `parent`. */
export async function layoutOf(parent: string, images: BuiltImage[], index = false): Promise<{ dir: string; digest: string }> {
  const dir = await mkdtemp(join(parent, 'layout-'));
  const top = index ? buildIndex(images) : undefined;
  await writeOciLayout(dir, 'latest', images, top);
  return { dir, digest: (top ?? images[0]!.manifest).digest };
}

/** What a pull of `images` must give: each image's manifest, config and layer digests. */
export function expected(images: BuiltImage[]): PulledLayout['manifests'] {
  return images.map((i) => ({ digest: i.manifest.digest, config: i.config.digest, layers: i.layers.map((l) => l.digest) }))
    .sort((a, b) => a.digest.localeCompare(b.digest));
}
