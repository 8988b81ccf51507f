import { open, type FileHandle } from 'node:fs/promises';
import { request as httpRequest, type Agent, type IncomingMessage, type ServerResponse } from 'node:http';
import { pipeline } from 'node:stream';
import { CACHE_RESULT_HEADER, FILL_SPOOL_HEADER, type WorkerPlan } from '../../../lib/appliance.js';
import type { FileResponse } from '../../../lib/http/file-response.js';
import type { Digest } from '../../../lib/oci/digest.js';
import { rangedAnswer } from './blob-direct.js';

/**
 * A cold blob GET through the gateway, read from the cache worker's spool file instead of relayed.
 *
 * The cache worker fetches the blob into a local spool file (BlobFill) and answers the gateway's GET
 * (marked with FILL_SPOOL_HEADER) with the fill's progress instead of its bytes: the spool's path, how
 * much of it is written, and finally whether the digest checked out (BlobFill.spoolEvents). The
 * gateway reads the bytes from the spool and sends them itself, never the last byte before the fill
 * is verified, so a blob that fails verification reaches no client whole, as through the worker.
 *
 * Why: relayed, every byte of a fill cost the worker a socket write and the gateway a socket read and
 * write; measured (bench/cold-fill.ts, 200 MiB, 2 cores) the appliance filled at ~0.75x the worker's
 * rate. Read from the spool (in the page cache), a byte costs the gateway what a stored blob costs it.
 */
export type SpoolAnswer =
  /** No fill to follow (stored, over, or the worker could not be asked): forward the GET as usual. */
  | { kind: 'none' }
  /** The worker's own answer (an error): send it to the client as it is. */
  | { kind: 'answer'; response: IncomingMessage }
  /** Send this file response (it follows the fill); `close()` once sent. */
  | { kind: 'spool'; file: FileResponse & { status: 200 | 206 }; close(): void };

export async function openFillSpool(agent: Agent, worker: WorkerPlan, url: string, digest: Digest, range: string | undefined): Promise<SpoolAnswer> {
  let response: IncomingMessage;
  try {
    response = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest({ socketPath: worker.socketPath, path: url, method: 'GET', agent, headers: { host: 'localhost', [FILL_SPOOL_HEADER]: '1' } }, resolve);
      req.once('error', reject);
      req.end();
    });
  } catch {
    return { kind: 'none' };
  }
  const mode = response.headers[FILL_SPOOL_HEADER];
  if (mode === 'none') {
    response.resume();
    return { kind: 'none' };
  }
  if (mode !== 'events') return { kind: 'answer', response };

  const progress = new FillProgress(response);
  let handle: FileHandle | undefined;
  try {
    const { path, size } = await progress.opened;
    const answer = rangedAnswer(digest, size, range, url);
    // 416: the worker's answer, through the usual forward.
    if (!answer) throw new Error('unsatisfiable range');
    // Opened while the fill runs; a fill that finished meanwhile (renamed or removed) is served from the store instead.
    handle = await open(path, 'r');
    return {
      kind: 'spool',
      file: { handle, ...answer, available: (position) => progress.available(position) },
      close: () => response.destroy(),
    };
  } catch {
    await handle?.close().catch(() => {});
    response.destroy();
    return { kind: 'none' };
  }
}

/** The worker's progress lines of one fill (see BlobFill.spoolEvents). */
class FillProgress {
  readonly opened: Promise<{ path: string; size: number }>;
  private size = 0;
  private written = 0;
  private verified = false;
  private failure: Error | undefined;
  private waiters: Array<() => void> = [];

  constructor(response: IncomingMessage) {
    let resolveOpened!: (value: { path: string; size: number }) => void;
    let rejectOpened!: (err: Error) => void;
    this.opened = new Promise((resolve, reject) => {
      resolveOpened = resolve;
      rejectOpened = reject;
    });
    this.opened.catch(() => {});
    let pending = '';
    let first = true;
    const fail = (err: Error) => {
      if (this.verified || this.failure) return;
      this.failure = err;
      rejectOpened(err);
      this.wake();
    };
    response.setEncoding('utf8');
    response.on('data', (text: string) => {
      pending += text;
      let newline: number;
      while ((newline = pending.indexOf('\n')) !== -1) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        let event: { spool?: string; size?: number; written?: number; verified?: boolean; error?: string };
        try {
          event = JSON.parse(line) as typeof event;
        } catch {
          return fail(new Error('cache worker sent a malformed fill progress line'));
        }
        if (first) {
          first = false;
          if (typeof event.spool !== 'string' || typeof event.size !== 'number') return fail(new Error('cache worker sent no spool'));
          this.size = event.size;
          resolveOpened({ path: event.spool, size: event.size });
        } else if (typeof event.written === 'number') this.written = event.written;
        else if (event.verified === true) this.verified = true;
        else if (typeof event.error === 'string') return fail(new Error(`cache fill failed: ${event.error}`));
        this.wake();
      }
    });
    response.once('end', () => fail(new Error('cache worker ended the fill progress before the blob was verified')));
    response.once('error', (err) => fail(err));
    response.once('close', () => fail(new Error('cache worker closed the fill progress before the blob was verified')));
  }

  /** How far the spool may be read: what is written, short of the last byte until the digest checked out. */
  private get limit(): number {
    return this.verified ? this.size : Math.min(this.written, this.size - 1);
  }

  available(position: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.limit > position) return resolve(this.limit);
        if (this.failure) return reject(this.failure);
        this.waiters.push(check);
      };
      check();
    });
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter();
  }
}

/** Headers of the worker's answer that are about the gateway's connection to it, or for the gateway only. */
const NOT_FOR_CLIENTS = ['connection', 'keep-alive', 'transfer-encoding', CACHE_RESULT_HEADER, FILL_SPOOL_HEADER];

/** Sends the worker's own answer to a spool request (an error: small) to the client as it is. */
export function relayWorkerAnswer(response: IncomingMessage, res: ServerResponse, sent: (bytes: number) => void): Promise<void> {
  const headers = { ...response.headers };
  for (const name of NOT_FOR_CLIENTS) delete headers[name];
  res.writeHead(response.statusCode ?? 502, headers);
  response.on('data', (chunk: Buffer) => sent(chunk.length));
  return new Promise((resolve) => {
    pipeline(response, res, () => resolve());
  });
}
