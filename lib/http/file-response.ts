import type { FileHandle } from 'node:fs/promises';
import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Duplex, Readable } from 'node:stream';

/**
 * Blobs up to this size are answered from memory once read, by the registry workers and by the
 * gateway (blob-direct.ts): one buffer, no file I/O; larger ones are copied from their file with
 * copyFileToResponse.
 */
export const SMALL_BLOB_MAX = 64 * 1024;

/** Read size: large chunks keep syscalls and per-chunk work low. */
export const FILE_CHUNK = 1024 * 1024;

/** Spare read buffers of FILE_CHUNK bytes, reused across transfers (bounded). */
const sparePool: Buffer[] = [];
const SPARE_POOL_MAX = 8;

class ClientGoneError extends Error {}

/** Raises a socket's buffer limits (Node's 16 KiB default turns every large write into a backpressure pause). */
export function raiseHighWaterMark(stream: Duplex, bytes: number): void {
  const states = stream as unknown as { _readableState?: { highWaterMark: number }; _writableState?: { highWaterMark: number } };
  if (states._readableState && states._readableState.highWaterMark < bytes) states._readableState.highWaterMark = bytes;
  if (states._writableState && states._writableState.highWaterMark < bytes) states._writableState.highWaterMark = bytes;
}

/** Streamed answers at least this large have their writes coalesced (sendStreamResponse). */
const COALESCE_MIN_BYTES = 256 * 1024;
/**
 * What a client socket buffers while a turn's chunks are corked: several 64 KiB reads, so a turn's
 * writes still leave together. Not more: whatever a slow client leaves in this buffer lives long
 * enough to be promoted to V8's old generation, where only full collections free it. With 4 MiB per
 * response, a skopeo pull of 10 x 20 MiB from S3 cost 6-10 mark-compacts and ~420 ms of worker CPU;
 * with 1 MiB, none and ~240 ms (one 200 MiB GET by curl: the same ~195 ms either way).
 */
const COALESCE_SOCKET_BUFFER = 1024 * 1024;

/** Whether a transfer failed because the client went away (not worth a log line). */
export function isClientGone(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return err instanceof ClientGoneError || code === 'ERR_STREAM_DESTROYED' || code === 'ECONNRESET' || code === 'EPIPE';
}

/**
 * Copies bytes `start..end` (inclusive) of an open file to a response whose headers are written,
 * then ends it. Double buffered: the next chunk is read while the previous one is being written;
 * a buffer is refilled only once the socket has taken all of it (its write callback), which is
 * also the backpressure. Serving a blob of any size holds ~2 MiB and makes no garbage. Used by the
 * registry workers and by the gateway's direct blob path. Throws on failure (the caller destroys
 * the response: a broken transfer, never a short one).
 */
export async function copyFileToResponse(handle: FileHandle, res: ServerResponse, start: number, end: number, sent?: (bytes: number) => void, available?: GrowingFile): Promise<void> {
  const total = end - start + 1;
  const pooled = total >= FILE_CHUNK;
  const size = pooled ? FILE_CHUNK : total;
  const buffers = [pooled ? sparePool.pop() ?? Buffer.allocUnsafeSlow(size) : Buffer.allocUnsafe(size)];
  if (total > size) buffers.push(pooled ? sparePool.pop() ?? Buffer.allocUnsafeSlow(size) : Buffer.allocUnsafe(size));
  const writes: Array<Promise<void> | undefined> = [undefined, undefined];

  let gone: (() => void) | undefined;
  const closed = new Promise<never>((_, reject) => {
    gone = () => reject(new ClientGoneError('client closed the connection'));
  });
  closed.catch(() => {});
  const onClose = () => {
    if (!res.writableFinished) gone!();
  };
  res.once('close', onClose);
  try {
    let position = start;
    let turn = 0;
    while (position <= end) {
      const buffer = buffers[turn]!;
      const pending = writes[turn];
      if (pending) await Promise.race([pending, closed]);
      let want = Math.min(buffer.length, end - position + 1);
      if (available) {
        let limit: number;
        try {
          limit = await Promise.race([available(position), closed]);
        } catch (err) {
          // The file will not be complete (a fill that failed verification): what was read goes out
          // before the caller breaks the transfer, as when the worker streams it.
          if (!(err instanceof ClientGoneError)) await Promise.race([Promise.all(writes), closed]).catch(() => {});
          throw err;
        }
        want = Math.min(want, limit - position);
      }
      const { bytesRead } = await handle.read(buffer, 0, want, position);
      if (bytesRead === 0) throw new Error(`file ended at ${position}, expected ${end + 1} bytes`);
      if (res.destroyed) throw new ClientGoneError('client closed the connection');
      position += bytesRead;
      const chunk = bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead);
      writes[turn] = new Promise<void>((resolve, reject) => {
        res.write(chunk, (err) => (err ? reject(err) : resolve()));
      });
      writes[turn]!.catch(() => {});
      sent?.(bytesRead);
      turn = (turn + 1) % buffers.length;
    }
    await Promise.race([Promise.all(writes), closed]);
    await Promise.race([new Promise<void>((resolve) => res.end(resolve)), closed]);
    // Every write completed: no socket request still refers to the buffers.
    if (pooled) for (const buffer of buffers) if (sparePool.length < SPARE_POOL_MAX) sparePool.push(buffer);
  } finally {
    res.off('close', onClose);
  }
}

/**
 * For a file still being written (a cache fill's spool): resolves with how far the file may be read
 * (exclusive, above `position`) once it is; rejects if the file will never be complete.
 */
export type GrowingFile = (position: number) => Promise<number>;

/** A prepared file response: the open file, the status and headers, and the inclusive byte range to send. */
export interface FileResponse {
  handle: FileHandle;
  status: number;
  headers: OutgoingHttpHeaders;
  start: number;
  end: number;
  /** The file is still being written: read only as far as this allows. */
  available?: GrowingFile;
}

/**
 * Writes the headers, copies the range (copyFileToResponse) and closes the file. A transfer that
 * fails after the headers destroys the response: the client sees a broken transfer, never a short
 * blob. Resolves with the failure, unless the client left (nothing worth logging).
 */
export async function sendFileResponse(file: FileResponse, res: ServerResponse, sent?: (bytes: number) => void): Promise<Error | undefined> {
  try {
    res.writeHead(file.status, file.headers);
    await copyFileToResponse(file.handle, res, file.start, file.end, sent, file.available);
    return undefined;
  } catch (err) {
    res.destroy();
    return isClientGone(err) ? undefined : (err as Error);
  } finally {
    await file.handle.close().catch(() => {});
  }
}

/**
 * As sendFileResponse for a store that is not a directory (S3): writes the headers and pipes the
 * stream (the store's ranged read) to the response with backpressure. A stream that fails or ends
 * short destroys the response: a broken transfer, never a short blob. Plain pipe() and a byte count,
 * no per-chunk promise: at hundreds of MB/s in 16-64 KiB chunks that overhead was measurable.
 */
export function sendStreamResponse(stream: Readable, status: number, headers: OutgoingHttpHeaders, length: number, res: ServerResponse, sent?: (bytes: number) => void): Promise<Error | undefined> {
  return new Promise((resolve) => {
    let received = 0;
    let settled = false;
    const settle = (err?: Error) => {
      if (settled) return;
      settled = true;
      if (err) {
        stream.unpipe(res);
        stream.destroy();
        res.destroy();
        resolve(isClientGone(err) || (err as NodeJS.ErrnoException).code === 'ERR_STREAM_PREMATURE_CLOSE' ? undefined : err);
      } else resolve(undefined);
    };
    stream.on('data', (chunk: Buffer) => {
      received += chunk.length;
      sent?.(chunk.length);
    });
    stream.once('end', () => {
      if (received !== length) settle(new Error(`store stream ended at ${received} of ${length} bytes`));
      else res.end(() => settle());
    });
    stream.once('error', (err) => settle(err));
    res.once('close', () => {
      if (!res.writableFinished) settle(new ClientGoneError('client closed the connection'));
    });
    res.once('error', (err) => settle(err));
    try {
      res.writeHead(status, headers);
    } catch (err) {
      settle(err as Error);
      return;
    }
    if (length >= COALESCE_MIN_BYTES && res.socket) coalesceTurns(stream, res);
    stream.pipe(res, { end: false });
  });
}

/**
 * A store's stream arrives in 64 KiB socket reads (an S3 GetObject), many per event-loop turn: the
 * client socket is corked at a turn's first chunk and uncorked after the turn (setImmediate), so each
 * turn's chunks leave in one writev instead of one write(2) each (as the gateway does for worker
 * answers, write-coalescing.ts). The socket's buffer is raised above a turn's reads, or each corked
 * write would report backpressure and pause the pipe after one chunk.
 */
function coalesceTurns(stream: Readable, res: ServerResponse): void {
  raiseHighWaterMark(res.socket!, COALESCE_SOCKET_BUFFER);
  corkEachTurn(stream, res);
}

/**
 * Corks `target` at the first chunk `source` emits in an event-loop turn and uncorks it after the
 * turn (setImmediate), at the end, or when the source closes: a turn's writes leave as one writev.
 */
export function corkEachTurn(source: Readable, target: { cork(): void; uncork(): void }): void {
  let corked = false;
  const flush = (): void => {
    if (!corked) return;
    corked = false;
    target.uncork();
  };
  source.on('data', () => {
    if (corked) return;
    corked = true;
    target.cork();
    setImmediate(flush);
  });
  source.once('end', flush);
  source.once('close', flush);
}
