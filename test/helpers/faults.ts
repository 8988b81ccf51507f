import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { Agent as HttpAgent, createServer as createHttpServer, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';

/** Pieces of the fault suite (test/fault-*.test.ts): a throttled link, streaming blob GETs, keep-alive clients, store checks. */

export { sleep } from './wait.js';

/**
 * A TCP relay to `targetPort` that passes the target's answers at `bytesPerSecond` per connection,
 * with backpressure: it reads from the target only as fast as it forwards, so the target's data is
 * still in the target (not in the relay) when the target dies — killing it truncates the transfer.
 */
export async function startThrottledRelay(targetPort: number, bytesPerSecond: number): Promise<{ url: string; port: number; stop(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const target = connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(target);
    client.pipe(target);
    const tickMs = 20;
    const perTick = Math.max(1, Math.floor((bytesPerSecond * tickMs) / 1000));
    const queue: Buffer[] = [];
    let queued = 0;
    let ended = false;
    const close = () => {
      clearInterval(timer);
      client.destroy();
      target.destroy();
      sockets.delete(client);
      sockets.delete(target);
    };
    const timer = setInterval(() => {
      let budget = perTick;
      while (budget > 0 && queue.length > 0) {
        const head = queue[0]!;
        const part = head.length <= budget ? head : head.subarray(0, budget);
        client.write(part);
        budget -= part.length;
        queued -= part.length;
        if (part === head) queue.shift();
        else queue[0] = head.subarray(part.length);
      }
      if (queued < perTick * 2 && target.isPaused()) target.resume();
      if (queue.length === 0 && ended) {
        clearInterval(timer);
        client.end();
      }
    }, tickMs);
    target.on('data', (chunk: Buffer) => {
      queue.push(chunk);
      queued += chunk.length;
      if (queued >= perTick * 2) target.pause();
    });
    target.on('end', () => { ended = true; });
    target.on('error', close);
    client.on('error', close);
    client.on('close', close);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

interface Relay {
  url: string;
  port: number;
  /** Both sides of every open connection through the relay. */
  sockets: Set<Socket>;
  stop(): Promise<void>;
}

/**
 * A TCP relay to 127.0.0.1:`targetPort`: each client gets its own connection to the target, its
 * requests piped through; `answer` passes the target's answers on (and may delay them). A client
 * that `admit()` refuses is reset at once.
 */
async function startRelay(targetPort: number, answer: (target: Socket, client: Socket) => void, admit: () => boolean = () => true): Promise<Relay> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    if (!admit()) return void client.resetAndDestroy();
    const target = connect(targetPort, '127.0.0.1');
    for (const s of [client, target]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => { client.destroy(); target.destroy(); });
    }
    client.pipe(target);
    answer(target, client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    sockets,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * A TCP relay to `targetPort` that passes every chunk of the target's answers `delayMs` after it
 * arrived (in order: equal delays fire in order), so every request through it takes that much longer.
 */
export async function startLatencyRelay(targetPort: number, delayMs: number): Promise<{ url: string; stop(): Promise<void> }> {
  return startRelay(targetPort, (target, client) => {
    target.on('data', (chunk: Buffer) => setTimeout(() => client.write(chunk), delayMs));
    target.on('end', () => setTimeout(() => client.end(), delayMs));
  });
}

/**
 * A plain TCP relay to `targetPort` that can be cut: `cut()` destroys every connection through it and
 * resets new ones at once (the target looks down: refused / reset), `restore()` relays again.
 */
export async function startCuttableRelay(targetPort: number): Promise<{ url: string; port: number; cut(): void; restore(): void; stop(): Promise<void> }> {
  let down = false;
  const relay = await startRelay(targetPort, (target, client) => target.pipe(client), () => !down);
  return {
    url: relay.url,
    port: relay.port,
    cut: () => {
      down = true;
      for (const s of relay.sockets) s.resetAndDestroy();
    },
    restore: () => { down = false; },
    stop: relay.stop,
  };
}

export interface BlobTransfer {
  status: number;
  /** Content-Length the server announced (undefined when none). */
  length: number | undefined;
  /** Body bytes received. */
  received: number;
  /** sha256 of the bytes received. */
  digest: string;
  /** The body ended normally (not a reset or an error). */
  ended: boolean;
  /** What broke the transfer, when it did. */
  error?: string;
  ms: number;
}

/**
 * GETs `url` on its own connection, hashing the body as it streams (20 MiB blobs are never held in
 * memory); `onProgress` sees the byte count. Never rejects: a broken transfer is a result.
 */
export function streamBlob(url: string, options: { onProgress?: (received: number) => void; timeoutMs?: number; headers?: Record<string, string> } = {}): Promise<BlobTransfer> {
  const started = Date.now();
  return new Promise((resolve) => {
    const hash = createHash('sha256');
    let received = 0;
    let status = 0;
    let length: number | undefined;
    let settled = false;
    const finish = (ended: boolean, error?: string) => {
      if (settled) return;
      settled = true;
      resolve({ status, length, received, digest: `sha256:${hash.digest('hex')}`, ended, ...(error ? { error } : {}), ms: Date.now() - started });
    };
    const req = httpRequest(url, { agent: false, headers: options.headers ?? {}, timeout: options.timeoutMs ?? 30_000 }, (res) => {
      status = res.statusCode ?? 0;
      length = res.headers['content-length'] === undefined ? undefined : Number(res.headers['content-length']);
      res.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        received += chunk.length;
        options.onProgress?.(received);
      });
      res.on('end', () => finish(true));
      res.on('error', (err) => finish(false, err.message));
      res.on('aborted', () => finish(false, 'aborted'));
      res.on('close', () => finish(res.complete, res.complete ? undefined : 'connection closed before the body ended'));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err) => finish(false, err.message));
    req.end();
  });
}

/** A transfer the client could take for a complete, correct blob: 200, the announced length, ended, and the digest. */
export const isComplete = (t: BlobTransfer, digest: string, size: number): boolean =>
  t.status === 200 && t.ended && t.received === size && t.length === size && t.digest === digest;

/** A transfer that reached the client as whole (200, all announced bytes, ended): it must then be the right bytes. */
export const looksComplete = (t: BlobTransfer): boolean => t.status === 200 && t.ended && t.length !== undefined && t.received === t.length;

/** Every file of `<root>/blobs/<alg>/<xx>/<hex>` whose content does not hash to its name (a visible partial or corrupt blob). */
export async function corruptBlobs(root: string): Promise<{ checked: number; corrupt: string[] }> {
  const base = join(root, 'blobs', 'sha256');
  const corrupt: string[] = [];
  let checked = 0;
  for (const prefix of await readdir(base).catch(() => [] as string[])) {
    for (const name of await readdir(join(base, prefix)).catch(() => [] as string[])) {
      const path = join(base, prefix, name);
      const hash = createHash('sha256');
      for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
      checked++;
      if (hash.digest('hex') !== name || !name.startsWith(prefix)) corrupt.push(path);
    }
  }
  return { checked, corrupt };
}

export interface KeepAliveResult {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  text(): string;
  json<T = unknown>(): T;
}

/**
 * One client connection with keep-alive (an agent with a single socket): requests go one after the
 * other on the same TCP/TLS connection while the server keeps it open. Paths are sent as given.
 * With `keepAlive: false`, every request has a connection of its own instead.
 */
export function keepAliveClient(base: string, auth?: string, options: { timeoutMs?: number; keepAlive?: boolean } = {}): {
  request(method: string, path: string, options?: { headers?: Record<string, string>; body?: Buffer | string }): Promise<KeepAliveResult>;
  /** How many sockets this client opened so far (1 if the server kept the connection). */
  connections(): number;
  close(): void;
} {
  const url = new URL(base);
  const tls = url.protocol === 'https:';
  const timeoutMs = options.timeoutMs ?? 10_000;
  const agent = options.keepAlive === false ? undefined : tls
    ? new HttpsAgent({ keepAlive: true, maxSockets: 1, rejectUnauthorized: false })
    : new HttpAgent({ keepAlive: true, maxSockets: 1 });
  let connections = 0;
  const send = tls ? httpsRequest : httpRequest;
  return {
    request(method, path, options = {}) {
      const headers: Record<string, string> = { ...options.headers };
      if (auth) headers.authorization = auth;
      if (options.body !== undefined) headers['content-length'] = String(Buffer.byteLength(options.body));
      return new Promise((resolve, reject) => {
        const req = send({ host: url.hostname, port: url.port, method, path, headers, agent: agent ?? false, rejectUnauthorized: false, timeout: timeoutMs }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const body = Buffer.concat(chunks);
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: () => body.toString('utf8'), json: <T>() => JSON.parse(body.toString('utf8')) as T });
          });
          res.on('error', reject);
        });
        req.on('socket', (socket) => {
          if (!(socket as Socket & { counted?: boolean }).counted) {
            (socket as Socket & { counted?: boolean }).counted = true;
            connections++;
          }
        });
        req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)));
        // The server may answer (and close) before reading the whole body: the answer still counts.
        req.on('error', reject);
        req.end(options.body);
      });
    },
    connections: () => connections,
    close: () => agent?.destroy(),
  };
}

/**
 * A real HTTP relay to `targetPort` (a docker-registry) that adds Docker Hub's rate-limit headers to
 * manifest answers, as registry-1.docker.io does: `ratelimit-limit: <limit>;w=<window>` and
 * `ratelimit-remaining: <left>;w=<window>`, one less after every manifest GET. docker-registry
 * sends no such headers, and the cache must be tested against a server that does.
 */
export async function startRateLimitRelay(targetPort: number, options: { limit?: number; windowSeconds?: number } = {}): Promise<{ host: string; port: number; remaining(): number; stop(): Promise<void> }> {
  const limit = options.limit ?? 100;
  const window = options.windowSeconds ?? 21_600;
  let remaining = limit;
  const agent = new HttpAgent({ keepAlive: true });
  const server = createHttpServer((req, res) => {
    const isManifest = /^\/v2\/.+\/manifests\/[^/]+$/.test((req.url ?? '').split('?')[0]!);
    const upstream = httpRequest({ host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers: { ...req.headers, host: `127.0.0.1:${targetPort}` }, agent }, (answer) => {
      const headers = { ...answer.headers };
      if (isManifest) {
        if (req.method === 'GET' && answer.statusCode === 200) remaining = Math.max(0, remaining - 1);
        headers['ratelimit-limit'] = `${limit};w=${window}`;
        headers['ratelimit-remaining'] = `${remaining};w=${window}`;
        headers['docker-ratelimit-source'] = '127.0.0.1';
      }
      res.writeHead(answer.statusCode ?? 502, headers);
      answer.pipe(res);
    });
    upstream.on('error', () => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    host: `127.0.0.1:${port}`, port, remaining: () => remaining,
    stop: async () => {
      server.closeAllConnections();
      agent.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
