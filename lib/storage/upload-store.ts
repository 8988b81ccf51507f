import { randomUUID } from 'node:crypto';
import type { Digest } from '../oci/digest.js';
import { RegistryError, isRegistryError } from '../oci/errors.js';
import { removeStale } from './atomic.js';
import type { BlobStore } from './blob-store.js';
import { isStorageNotFound, UploadOffsetError } from './driver/driver.js';
import { UPLOAD_ID_PATTERN } from './layout.js';

/** An upload session of repository `name`: `offset` bytes are stored (the next chunk starts there). */
export interface UploadSession {
  id: string;
  name: string;
  offset: number;
  startedAt: number;
}

/** Temp files of interrupted writes older than this are removed at start-up (at most; see purgeStale). */
const STALE_TEMP_MAX_MS = 3_600_000;

/**
 * Upload sessions (POST / PATCH / PUT) through the driver's upload sessions, which live in the store:
 * a chunked upload survives a worker restart and may continue on another worker. A chunk counts only
 * once it arrived whole; the blob becomes visible only after its digest was verified (finish).
 */
export class UploadStore {
  /** Sessions with a chunk or finish in progress in this process: a second one is refused at once (416). */
  private readonly busy = new Set<string>();

  constructor(private readonly blobs: BlobStore) {}

  private get sessions() {
    return this.blobs.driver.uploads;
  }

  async create(name: string): Promise<UploadSession> {
    const id = randomUUID();
    const session = await this.sessions.create(id, { name });
    return { id, name, offset: 0, startedAt: session.startedAt.getTime() };
  }

  /** Finds a session of repository `name`; a malformed or foreign id is BLOB_UPLOAD_UNKNOWN. */
  async get(name: string, id: string): Promise<UploadSession> {
    const unknown = () => new RegistryError('BLOB_UPLOAD_UNKNOWN', { uploadId: id.slice(0, 100) });
    if (!UPLOAD_ID_PATTERN.test(id)) throw unknown();
    let stored;
    try {
      stored = await this.sessions.get(id);
    } catch (err) {
      if (isStorageNotFound(err)) throw unknown();
      throw err;
    }
    if (stored.meta.name !== name) throw unknown();
    return { id, name, offset: stored.size, startedAt: stored.startedAt.getTime() };
  }

  /**
   * Appends one chunk at the session's offset. `start` (from Content-Range) must equal the offset,
   * else 416 with the current range, as the spec requires for out-of-order chunks. A chunk shorter or
   * longer than `expectedLength` fails before the driver counts it: the session keeps its size.
   */
  async append(session: UploadSession, body: AsyncIterable<Buffer>, start?: number, expectedLength?: number): Promise<void> {
    if (start !== undefined && start !== session.offset) throw outOfOrder(session, start);
    this.claim(session);
    try {
      session.offset = await this.sessions.append(session.id, session.offset, checkedLength(body, expectedLength));
    } catch (err) {
      if (err instanceof UploadOffsetError) {
        session.offset = err.expected;
        throw outOfOrder(session, err.actual);
      }
      if (isStorageNotFound(err)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { uploadId: session.id });
      throw err;
    } finally {
      this.busy.delete(session.id);
    }
  }

  /** Verifies the uploaded bytes against `digest`, commits them as the blob and links it into the repository. */
  async finish(session: UploadSession, digest: Digest): Promise<number> {
    this.claim(session);
    let size: number;
    try {
      size = await this.sessions.finish(session.id, this.blobs.layout.blobKey(digest), digest);
    } catch (err) {
      // As distribution does: an upload that does not match its digest is over.
      if (isRegistryError(err) && (err.code === 'DIGEST_INVALID' || err.code === 'SIZE_INVALID')) await this.sessions.delete(session.id).catch(() => {});
      if (isStorageNotFound(err)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { uploadId: session.id });
      throw err;
    } finally {
      this.busy.delete(session.id);
    }
    this.blobs.forget(digest);
    await this.blobs.link(session.name, digest);
    return size;
  }

  async cancel(session: UploadSession): Promise<void> {
    await this.sessions.delete(session.id);
  }

  /**
   * At start-up: removes upload sessions started more than `graceMs` ago (their clients are long
   * gone) and temp files / incomplete writes older than min(graceMs, 1 h); how many were removed.
   */
  async purgeStale(graceMs: number): Promise<number> {
    const now = Date.now();
    let removed = 0;
    for await (const { id, startedAt } of this.sessions.list()) {
      if (now - startedAt.getTime() <= graceMs) continue;
      await this.sessions.delete(id);
      removed++;
    }
    const tempGrace = Math.min(graceMs, STALE_TEMP_MAX_MS);
    for await (const write of this.blobs.driver.listIncompleteWrites()) {
      if (now - write.startedAt.getTime() <= tempGrace) continue;
      await this.blobs.driver.abortIncompleteWrite(write);
      removed++;
    }
    // The worker's local temp dir (cache fills spool there before they are committed).
    return removed + (await removeStale(this.blobs.layout.tmpDir, tempGrace));
  }

  private claim(session: UploadSession): void {
    if (this.busy.has(session.id)) {
      throw new RegistryError('BLOB_UPLOAD_INVALID', { uploadId: session.id }, {
        status: 416, message: 'another chunk of this upload is in progress', headers: uploadHeaders(session),
      });
    }
    this.busy.add(session.id);
  }
}

function outOfOrder(session: UploadSession, start: number): RegistryError {
  return new RegistryError('BLOB_UPLOAD_INVALID', { expectedStart: session.offset, receivedStart: start }, {
    status: 416,
    message: `chunk out of order: the upload has ${session.offset} bytes, the next chunk must start there`,
    headers: uploadHeaders(session),
  });
}

/** Passes `body` through, failing at its end (before the driver commits the chunk) if its length is not `expected`. */
async function* checkedLength(body: AsyncIterable<Buffer>, expected: number | undefined): AsyncIterable<Buffer> {
  let received = 0;
  for await (const chunk of body) {
    received += chunk.length;
    yield chunk;
  }
  if (expected !== undefined && received !== expected) {
    throw new RegistryError('SIZE_INVALID', { expected, received }, {
      message: 'chunk length does not match its Content-Range/Content-Length',
    });
  }
}

/** Headers every upload response carries: where to continue and how much is there. */
export function uploadHeaders(session: UploadSession): Record<string, string> {
  return {
    Location: `/v2/${session.name}/blobs/uploads/${session.id}`,
    Range: `0-${Math.max(0, session.offset - 1)}`,
    'Docker-Upload-UUID': session.id,
  };
}
