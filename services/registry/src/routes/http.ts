import type { IncomingMessage } from 'node:http';
import { RegistryError } from '../../../../lib/oci/errors.js';

/** Whether a request carries a body (a Content-Length above zero, or a chunked transfer). */
export function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  if (length !== undefined) return length !== '0';
  return req.headers['transfer-encoding'] !== undefined;
}

/** Content-Length as a number, or undefined when absent (chunked). */
export function contentLength(req: IncomingMessage): number | undefined {
  const length = req.headers['content-length'];
  if (length === undefined) return undefined;
  const value = Number(length);
  return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

/**
 * Reads a small request body (a manifest) into memory, refusing more than `max` bytes with 413
 * before reading them when Content-Length says so, or as soon as the stream passes the cap.
 */
export async function readLimitedBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const tooLarge = (size: number | string) => new RegistryError('SIZE_INVALID', { limit: max, size }, {
    status: 413, message: `manifest too large: the limit is ${max} bytes`,
  });
  // A declared body is never read: node discards it after the answer, and the connection stays usable.
  const declared = contentLength(req);
  if (declared !== undefined && declared > max) throw tooLarge(declared);
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    const onData = (chunk: Buffer) => {
      total += chunk.length;
      if (total <= max) {
        chunks.push(chunk);
        return;
      }
      // Past the cap: stop buffering but keep reading (and dropping) the rest. Destroying the request
      // instead left its unread bytes on a keep-alive connection, stalling the client's next request
      // there until the idle timeout; closing the connection makes clients that are still sending
      // fail with EPIPE before they read the 413.
      cleanup();
      req.resume();
      reject(tooLarge(`>${max}`));
    };
    const onEnd = () => {
      cleanup();
      resolve(Buffer.concat(chunks, total));
    };
    const onClose = () => {
      cleanup();
      reject(new Error('request body aborted'));
    };
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onClose);
      req.off('close', onClose);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onClose);
    req.on('close', onClose);
  });
}

/**
 * Parses `n` and `last` of a paginated list (tags, catalog). `n` absent means "up to `cap`";
 * a malformed `n` is 400 with the spec's UNSUPPORTED ("invalid set of parameters").
 */
export function parsePagination(query: URLSearchParams, cap: number): { n: number; last: string | undefined } {
  const rawN = query.get('n');
  let n = cap;
  if (rawN !== null) {
    if (!/^\d{1,9}$/.test(rawN)) {
      throw new RegistryError('UNSUPPORTED', { n: rawN.slice(0, 50) }, { status: 400, message: 'invalid pagination: n must be a non-negative integer' });
    }
    n = Math.min(Number(rawN), cap);
  }
  return { n, last: query.get('last') ?? undefined };
}

/** One page of a sorted list after `last`, and the Link header for the next page if there is one. */
export function paginate(items: string[], n: number, last: string | undefined, linkBase: string): { page: string[]; link: string | undefined } {
  const start = last === undefined ? 0 : items.findIndex((item) => item > last);
  const from = start === -1 ? items.length : start;
  const page = items.slice(from, from + n);
  const more = n > 0 && from + n < items.length;
  const link = more ? `<${linkBase}?n=${n}&last=${encodeURIComponent(page[page.length - 1]!)}>; rel="next"` : undefined;
  return { page, link };
}
