import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { request, type Agent, type ClientRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { MANIFEST_ACCEPT, type BuiltImage } from './oci-image.js';
import { STEVEDORE_BIN } from './processes.js';

/** Small clients for the hosted-registry end-to-end tests: raw HTTP (no URL normalisation), skopeo, the CLI. */

export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function sha512(data: Buffer | string): string {
  return `sha512:${createHash('sha512').update(data).digest('hex')}`;
}

export interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  text: string;
}

/** Where a worker listens: a loopback port or a unix socket. */
export type Target = { port: number } | { socketPath: string };

/**
 * One HTTP request sent as given: the path is not normalised (`..`, `%2e%2e`, `//` reach the server
 * as written, unlike with fetch), and the body may be a Buffer or a list of parts sent with pauses.
 */
export function raw(target: Target, method: string, path: string, options: { headers?: Record<string, string | number>; body?: Buffer | string } = {}): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { ...options.headers };
    // Without a length, node sends a DELETE's or GET's body as if it were the next request.
    if (options.body !== undefined && !Object.keys(headers).some((h) => h.toLowerCase() === 'content-length')) headers['content-length'] = Buffer.byteLength(options.body);
    const req = request({ ...('port' in target ? { host: '127.0.0.1', port: target.port } : { socketPath: target.socketPath }), method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode!, headers: res.headers, body, text: body.toString('utf8') });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

/** Asserts an OCI error answer: status, JSON envelope with exactly one error of `code`, and the API version header. */
export function assertOciError(res: { status: number; headers: IncomingHttpHeaders | Headers; text: string }, status: number, code: string, what = ''): { code: string; message: string; detail?: unknown } {
  const header = (name: string) => (res.headers instanceof Headers ? res.headers.get(name) ?? undefined : res.headers[name] as string | undefined);
  assert.equal(res.status, status, `${what} status (body: ${res.text.slice(0, 300)})`);
  assert.match(header('content-type') ?? '', /^application\/json/, `${what} content-type`);
  assert.equal(header('docker-distribution-api-version'), 'registry/2.0', `${what} api version header`);
  const body = JSON.parse(res.text) as { errors: Array<{ code: string; message: string; detail?: unknown }> };
  assert.equal(body.errors.length, 1, what);
  assert.equal(body.errors[0]!.code, code, `${what} code (body: ${res.text.slice(0, 300)})`);
  assert.equal(typeof body.errors[0]!.message, 'string');
  assert.ok(body.errors[0]!.message.length > 0);
  return body.errors[0]!;
}

/** fetch, then the body as text, for assertOciError. */
export async function fetchText(url: string, init?: RequestInit): Promise<{ status: number; headers: Headers; text: string }> {
  const res = await fetch(url, init);
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/** Monolithic blob push (POST ?digest=); asserts 201. */
export async function pushBlob(baseUrl: string, name: string, data: Buffer, digest = sha256(data)): Promise<string> {
  const res = await fetch(`${baseUrl}/v2/${name}/blobs/uploads/?digest=${digest}`, { method: 'POST', body: data, headers: { 'content-type': 'application/octet-stream' } });
  assert.equal(res.status, 201, `push blob ${digest} to ${name}: ${await res.text()}`);
  return digest;
}

/** Pushes an image's blobs and manifest (under `reference`); asserts 201 and returns the manifest digest. */
export async function pushImage(baseUrl: string, name: string, reference: string, image: BuiltImage): Promise<string> {
  for (const blob of [image.config, ...image.layers]) await pushBlob(baseUrl, name, blob.data, blob.digest);
  return pushManifest(baseUrl, name, reference, image.manifest.data, image.manifest.mediaType);
}

export async function pushManifest(baseUrl: string, name: string, reference: string, body: Buffer, mediaType: string): Promise<string> {
  const res = await fetch(`${baseUrl}/v2/${name}/manifests/${reference}`, { method: 'PUT', body, headers: { 'content-type': mediaType } });
  assert.equal(res.status, 201, `push manifest ${name}:${reference}: ${await res.text()}`);
  const digest = res.headers.get('docker-content-digest')!;
  assert.equal(digest, sha256(body));
  return digest;
}

export interface SkopeoResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs skopeo; never throws on a non-zero exit (the test asserts the code). */
export function skopeo(args: string[], timeoutMs = 60_000): Promise<SkopeoResult> {
  return new Promise((resolve) => {
    execFile('skopeo', args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs skopeo and asserts it succeeded. */
export async function skopeoOk(args: string[]): Promise<string> {
  const result = await skopeo(args);
  assert.equal(result.code, 0, `skopeo ${args.join(' ')} failed:\n${result.stderr}`);
  return result.stdout;
}

export interface CliProcess {
  proc: ChildProcess;
  output(): string;
  /** Resolves with the exit code (null when killed by a signal) once the process is gone. */
  exited: Promise<number | null>;
  /** Resolves once the output contains `text`; rejects if the process exits first or after `ms`. */
  waitFor(text: string, ms?: number): Promise<void>;
  /** Signals the process (SIGTERM by default) unless it is gone, and waits for its exit; SIGKILL after 10 s. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Spawns `stevedore <args>` with no implied options (unlike startStevedoreRegistry, which adds --listen). */
export function spawnCli(args: string[], env: NodeJS.ProcessEnv = {}): CliProcess {
  const proc = spawn(process.execPath, [STEVEDORE_BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  const listeners = new Set<() => void>();
  const onData = (chunk: Buffer) => {
    text += chunk.toString('utf8');
    for (const listener of listeners) listener();
  };
  proc.stdout!.on('data', onData);
  proc.stderr!.on('data', onData);
  const exited = new Promise<number | null>((resolve) => proc.once('close', (code) => {
    for (const listener of listeners) listener();
    resolve(code);
  }));
  const waitFor = (needle: string, ms = 15_000) => new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`timed out waiting for ${JSON.stringify(needle)}; output:\n${text.slice(-3000)}`)), ms);
    const check = () => {
      if (text.includes(needle)) done();
      else if (proc.exitCode !== null || proc.signalCode !== null) done(new Error(`process exited (${proc.exitCode ?? proc.signalCode}) before ${JSON.stringify(needle)}; output:\n${text.slice(-3000)}`));
    };
    const done = (err?: Error) => {
      clearTimeout(timer);
      listeners.delete(check);
      if (err) reject(err);
      else resolve();
    };
    listeners.add(check);
    check();
  });
  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    if (proc.exitCode === null && proc.signalCode === null) {
      const kill = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      proc.kill(signal);
      const code = await exited;
      clearTimeout(kill);
      return code;
    }
    return exited;
  };
  return { proc, output: () => text, exited, waitFor, stop };
}

export async function fileSize(path: string): Promise<number> {
  return (await stat(path).catch(() => undefined))?.size ?? 0;
}

/** A PATCH whose body is sent in parts: the first now, the rest when the test says so (req.end). */
export function slowPatch(port: number, path: string, first: Buffer, agent?: Agent): { req: ClientRequest; response: Promise<IncomingMessage & { text: string }>; failed: Promise<Error> } {
  let fail!: (err: Error) => void;
  const failed = new Promise<Error>((resolve) => { fail = resolve; });
  let req!: ClientRequest;
  const response = new Promise<IncomingMessage & { text: string }>((resolve) => {
    req = request({ host: '127.0.0.1', port, method: 'PATCH', path, agent: agent ?? false, headers: { 'content-type': 'application/octet-stream' } }, (res) => {
      let text = '';
      res.on('data', (chunk: Buffer) => { text += chunk.toString(); });
      res.on('end', () => resolve(Object.assign(res, { text })));
    });
  });
  req.on('error', fail);
  req.write(first);
  return { req, response, failed };
}

/**
 * Sends `request` as written on a fresh TCP connection (for what HTTP clients never send: an
 * absolute-form target, a bad Content-Length, an unknown method token) and parses the answer.
 */
export function rawSocket(port: number, request: string): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(request));
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('close', () => {
      const all = Buffer.concat(chunks);
      const split = all.indexOf('\r\n\r\n');
      if (split === -1) return reject(new Error(`no HTTP answer: ${JSON.stringify(all.toString('latin1').slice(0, 300))}`));
      const [statusLine, ...lines] = all.subarray(0, split).toString('latin1').split('\r\n');
      const headers: IncomingHttpHeaders = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      const body = all.subarray(split + 4);
      resolve({ status: Number(statusLine!.split(' ')[1]), headers, body, text: body.toString('utf8') });
    });
    // Every request here asks the server to close; this only bounds a server that would not.
    socket.setTimeout(10_000, () => socket.destroy(new Error('no answer within 10 s')));
  });
}

/**
 * GET of a manifest: the digest of the bytes served (checked against Docker-Content-Digest), or the
 * status when it is not 200.
 */
export async function servedManifestDigest(base: string, name: string, reference: string): Promise<string | number> {
  const res = await fetch(`${base}/v2/${name}/manifests/${reference}`, { headers: { accept: MANIFEST_ACCEPT } });
  const body = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) return res.status;
  assert.equal(res.headers.get('docker-content-digest'), sha256(body));
  return sha256(body);
}
