import { Agent, type AgentOptions, type ClientRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { setTimeout as wait } from 'node:timers/promises';
import './http-proxy-compat.js';
import httpProxy from 'http-proxy';
import type { WorkerPlan } from '../../../lib/appliance.js';
import type { Logger } from '../../../lib/log.js';
import { RegistryError } from '../../../lib/oci/errors.js';
import { sendError } from './send-error.js';
import { WorkerAvailability } from './worker-availability.js';
import { coalesceWrites } from './write-coalescing.js';

/**
 * Request bodies up to this size are read before they are forwarded, so that a request whose
 * connection to the worker fails before any answer can be sent again (manifests are at most 4 MiB;
 * clients' upload chunks are usually smaller). Larger bodies are streamed and can't be replayed.
 */
export const REPLAYABLE_BODY_MAX = 4 * 1024 * 1024;
/**
 * After a worker answered early (a 4xx before it read the body), this much of the client's
 * remaining body is read and dropped so the client's keep-alive connection stays usable; with more
 * left the gateway closes the connection after the answer (Go's net/http does the same, at 256 KiB).
 */
const DRAIN_MAX = 64 * 1024 * 1024;
/**
 * Pooled worker connections idle longer than this are closed by the gateway, well before the
 * worker's own keep-alive timeout (72 s), so the gateway never reuses one the worker is closing.
 */
const POOL_IDLE_MS = 30_000;
/**
 * Buffer sizes of the gateway's worker connections: an answer is read ahead up to 1 MiB before the
 * worker's socket stops being read (Node's default, 16 KiB, is less than one 64 KiB socket read), and
 * a forwarded request body is written without pausing the client's upload every chunk.
 */
const WORKER_SOCKET_HIGH_WATER_MARK = 1024 * 1024;
/** Errors of a connection to a worker that is not listening (stopped, restarting, not started yet). */
const NOT_LISTENING = new Set(['ECONNREFUSED', 'ENOENT']);
/** Errors of a connection that failed under a request: a reused connection the worker had closed. */
const CONNECTION_LOST = new Set(['ECONNRESET', 'EPIPE']);
/**
 * How often a request whose connection was lost before any answer is sent again. The first retry
 * (a stale pooled connection) goes at once; later ones wait RETRY_STEP_MS more each time: a worker
 * killed a moment ago still has its listening socket until the kernel has torn the process down,
 * so a fresh connection can be accepted and then reset once or twice before connections are refused
 * (and then waited for until PM2 has it back).
 */
const CONNECTION_LOST_RETRIES = 4;
const RETRY_STEP_MS = 100;

export interface ForwardOptions {
  log: Logger;
  workers: readonly WorkerPlan[];
  /** How long a request waits for a worker that is starting or restarting (STEVEDORE_WORKER_WAIT). */
  workerWaitMs: number;
  /** Called with each worker answer before it is passed on (header rewriting, metrics). */
  onResponse(proxyRes: IncomingMessage, req: IncomingMessage): void;
  /** Called when a request reached a worker, or may have (it may have written before it failed). */
  onForwarded(req: IncomingMessage): void;
}

/** Whether the client asked to close its connection after this request. */
function clientWantsClose(req: IncomingMessage): boolean {
  const connection = (req.headers.connection ?? '').toLowerCase();
  if (req.httpVersion === '1.0') return !connection.includes('keep-alive');
  return connection.split(',').some((token) => token.trim() === 'close');
}

/** What a request's body is, for forwarding: none, read whole (replayable), or a stream. */
export type ForwardBody = { kind: 'none' } | { kind: 'buffered'; data: Buffer } | { kind: 'stream' };

/**
 * Reads a request body of at most REPLAYABLE_BODY_MAX bytes (declared by Content-Length) into
 * memory; undefined if the client went away meanwhile.
 */
export async function readForwardBody(req: IncomingMessage): Promise<ForwardBody | undefined> {
  const declared = req.headers['content-length'];
  if (declared === undefined) return req.headers['transfer-encoding'] === undefined ? { kind: 'none' } : { kind: 'stream' };
  const length = Number(declared);
  if (length === 0) return { kind: 'none' };
  if (!Number.isSafeInteger(length) || length > REPLAYABLE_BODY_MAX) return { kind: 'stream' };
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of req) chunks.push(chunk as Buffer);
  } catch {
    return undefined;
  }
  if (!req.complete) return undefined;
  return { kind: 'buffered', data: Buffer.concat(chunks) };
}

interface Attempt {
  responded: boolean;
  /** Body bytes received from the client so far (a streamed body). */
  bodyBytes: number;
}

/**
 * Sends requests to the registry workers through http-proxy and keeps a worker's own answer intact:
 * a worker that is starting is waited for; a request that fails on a connection before any answer
 * is sent again when it can be (no body, or a buffered one); an early answer (a 4xx before the
 * body was read) reaches the client unchanged, and the rest of the client's body is dropped instead
 * of stalling its connection. A 503 means the worker could really not be reached.
 */
export class WorkerForwarder {
  readonly availability: WorkerAvailability;
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 512, timeout: POOL_IDLE_MS, highWaterMark: WORKER_SOCKET_HIGH_WATER_MARK } as AgentOptions);
  /** Retries go on a new connection, never on another pooled one that may be as stale. */
  private readonly freshAgent = new Agent({ keepAlive: false, highWaterMark: WORKER_SOCKET_HIGH_WATER_MARK } as AgentOptions);
  private readonly proxy = httpProxy.createProxyServer({ xfwd: false, proxyTimeout: 0 });
  private readonly attempts = new WeakMap<IncomingMessage, Attempt>();

  constructor(private readonly options: ForwardOptions) {
    this.availability = new WorkerAvailability(options.workers, options.workerWaitMs);
    this.proxy.on('proxyRes', (proxyRes, req, res) => this.onProxyResponse(proxyRes, req, res));

    // A client that went away mid-request: http-proxy aborts the worker request; nothing to answer.
    this.proxy.on('econnreset', () => {});
  }

  /** The keep-alive pool (for health probes of the same sockets). */
  get pool(): Agent {
    return this.agent;
  }

  async forward(req: IncomingMessage, res: ServerResponse, worker: WorkerPlan, body: ForwardBody, retries = 0): Promise<void> {
    const ready = this.availability.ready(worker);
    if (!(ready === true || await ready)) return this.unavailable(res, worker, `not accepting connections after ${this.options.workerWaitMs} ms`);
    if (res.destroyed) return;
    const attempt: Attempt = { responded: false, bodyBytes: 0 };
    this.attempts.set(req, attempt);
    if (body.kind === 'stream') req.on('data', (chunk: Buffer) => { attempt.bodyBytes += chunk.length; });
    const target = { socketPath: worker.socketPath } as unknown as string;
    // Connection is hop-by-hop: the gateway's connection to a worker stays a pooled keep-alive one
    // whatever the client asked for its own. (A client's `Connection: close` passed on made the
    // worker close the socket after an early answer while the gateway was still sending the body:
    // EPIPE before the answer was read, and a false 503.) http-proxy copies the headers in web().
    const { connection, 'keep-alive': keepAlive } = req.headers;
    req.headers.connection = 'keep-alive';
    delete req.headers['keep-alive'];
    this.proxy.web(req, res, {
      target,
      agent: retries > 0 ? this.freshAgent : this.agent,
      ...(body.kind === 'buffered' ? { buffer: Readable.from([body.data]) } : {}),
    }, (err: NodeJS.ErrnoException) => {
      if (attempt.responded) return; // the answer is on its way; a late write error changes nothing
      const code = err.code ?? '';
      const replayable = body.kind !== 'stream';
      const notListening = NOT_LISTENING.has(code);
      if (notListening) this.availability.markDown(worker);
      else this.options.onForwarded(req);
      const lost = CONNECTION_LOST.has(code) || err.message === 'socket hang up';
      const retry = replayable && !res.headersSent && !res.destroyed && (notListening || (lost && retries < CONNECTION_LOST_RETRIES));
      if (retry) {
        this.options.log.debug({ worker: worker.name, err: err.message }, 'worker connection failed before an answer: sending the request again');
        // A refused connection is waited for by the availability probe; a lost one waits here.
        const delay = notListening ? 0 : RETRY_STEP_MS * retries;
        wait(delay).then(() => this.forward(req, res, worker, body, notListening ? Math.max(retries, 1) : retries + 1)).catch((e: unknown) => {
          this.options.log.error({ err: e }, 'gateway request failed');
          res.destroy();
        });
        return;
      }
      this.unavailable(res, worker, `the connection to it failed before it answered (${err.message})`);
    });
    if (connection === undefined) delete req.headers.connection;
    else req.headers.connection = connection;
    if (keepAlive !== undefined) req.headers['keep-alive'] = keepAlive;
  }

  close(): void {
    this.agent.destroy();
    this.freshAgent.destroy();
    this.proxy.close();
  }

  private onProxyResponse(proxyRes: IncomingMessage, req: IncomingMessage, res: ServerResponse): void {
    const attempt = this.attempts.get(req);
    if (attempt) attempt.responded = true;
    // The client's connection follows the client's wish, not the worker's.
    proxyRes.headers.connection = clientWantsClose(req) ? 'close' : 'keep-alive';
    this.options.onResponse(proxyRes, req);
    coalesceWrites(proxyRes, res.socket);
    // The answer broke off midway: the client must see a broken transfer, not a short body.
    proxyRes.once('aborted', () => res.destroy());
    proxyRes.once('error', () => res.destroy());
    if (!req.complete) this.dropRestOfBody(proxyRes, req, res, attempt?.bodyBytes ?? 0);
  }

  /**
   * The worker answered before it had the whole body (an early 4xx). Node's HTTP client stops
   * sending a body once the answer has ended, which left the client's request half-read and its
   * connection stalled: stop forwarding, discard the worker connection, and read (and drop) the
   * rest of the client's body, or close the client connection when too much is left.
   */
  private dropRestOfBody(proxyRes: IncomingMessage, req: IncomingMessage, res: ServerResponse, received: number): void {
    const proxyReq = (proxyRes as IncomingMessage & { req?: ClientRequest }).req;
    if (proxyReq) {
      req.unpipe(proxyReq);
      proxyRes.once('end', () => proxyReq.destroy());
    }
    const declared = Number(req.headers['content-length']);
    const left = Number.isSafeInteger(declared) ? declared - received : Infinity;
    if (left > DRAIN_MAX && !res.headersSent) res.shouldKeepAlive = false;
    req.resume();
  }

  private unavailable(res: ServerResponse, worker: WorkerPlan, reason: string): void {
    this.options.log.warn({ worker: worker.name, err: reason }, 'registry worker unreachable');
    sendError(res, new RegistryError('UNAVAILABLE', { worker: worker.name }, {
      message: `the registry worker for this request is unreachable: ${reason}; retry shortly`,
      headers: { 'retry-after': '1' },
    }));
  }
}
