import { randomUUID, type Hash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, readFile, rm, truncate } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { createDigester, type Digest } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { removeStale, writeFileAtomic } from '../../../../lib/storage/atomic.js';
import { UPLOAD_ID_PATTERN, type StorageLayout } from '../../../../lib/storage/layout.js';
import { BlobStore, WRITE_BUFFER } from './blob-store.js';

/** An upload session: bytes 0..offset-1 of `data` are committed chunks. */
export interface UploadSession {
  id: string;
  name: string;
  offset: number;
  startedAt: number;
  /** Running sha256 of the committed bytes; dropped (undefined) when a chunk fails midway. */
  hash: Hash | undefined;
  busy: boolean;
}

interface PersistedState {
  name: string;
  offset: number;
  startedAt: number;
}

/**
 * Upload sessions on disk under `_uploads/<uuid>/`: chunks are written in place at the committed
 * offset, the offset is persisted only after a chunk is complete, and the blob becomes visible
 * only after its digest is verified (see finish).
 */
export class UploadStore {
  private readonly sessions = new Map<string, UploadSession>();

  constructor(private readonly layout: StorageLayout, private readonly blobs: BlobStore) {}

  async create(name: string): Promise<UploadSession> {
    const id = randomUUID();
    await mkdir(this.layout.uploadDir(id), { recursive: true });
    await (await open(this.layout.uploadDataPath(id), 'w', 0o644)).close();
    const session: UploadSession = { id, name, offset: 0, startedAt: Date.now(), hash: createDigester('sha256'), busy: false };
    await this.persist(session);
    this.sessions.set(id, session);
    return session;
  }

  /** Finds a session of repository `name`; a malformed or foreign id is BLOB_UPLOAD_UNKNOWN. */
  async get(name: string, id: string): Promise<UploadSession> {
    const unknown = () => new RegistryError('BLOB_UPLOAD_UNKNOWN', { uploadId: id.slice(0, 100) });
    if (!UPLOAD_ID_PATTERN.test(id)) throw unknown();
    let session = this.sessions.get(id);
    if (!session) {
      // After a restart the session survives on disk, without its running hash.
      const raw = await readFile(this.layout.uploadStatePath(id), 'utf8').catch(() => undefined);
      if (raw === undefined) throw unknown();
      const state = JSON.parse(raw) as PersistedState;
      session = { id, name: state.name, offset: state.offset, startedAt: state.startedAt, hash: state.offset === 0 ? createDigester('sha256') : undefined, busy: false };
      this.sessions.set(id, session);
    }
    if (session.name !== name) throw unknown();
    return session;
  }

  /**
   * Appends one chunk at the session's offset. `start` (from Content-Range) must equal the offset,
   * else 416 with the current range, as the spec requires for out-of-order chunks.
   */
  async append(session: UploadSession, body: Readable, start?: number, expectedLength?: number): Promise<void> {
    if (start !== undefined && start !== session.offset) {
      throw new RegistryError('BLOB_UPLOAD_INVALID', { expectedStart: session.offset, receivedStart: start }, {
        status: 416,
        message: `chunk out of order: the upload has ${session.offset} bytes, the next chunk must start there`,
        headers: uploadHeaders(session),
      });
    }
    this.refuseIfBusy(session);
    session.busy = true;
    const hash = session.hash;
    let written = 0;
    try {
      await pipeline(
        body,
        async function* (chunks: AsyncIterable<Buffer>) {
          for await (const chunk of chunks) {
            hash?.update(chunk);
            written += chunk.length;
            yield chunk;
          }
        },
        createWriteStream(this.layout.uploadDataPath(session.id), { flags: 'r+', start: session.offset, highWaterMark: WRITE_BUFFER }),
      );
      if (expectedLength !== undefined && written !== expectedLength) {
        throw new RegistryError('SIZE_INVALID', { expected: expectedLength, received: written }, {
          message: 'chunk length does not match its Content-Range/Content-Length',
        });
      }
    } catch (err) {
      // The running hash has seen a partial chunk: drop it; finish re-hashes from disk.
      session.hash = undefined;
      throw err;
    } finally {
      session.busy = false;
    }
    // Cancelled (DELETE) while this chunk was streaming: persisting would bring the session back
    // (state.json without data), and the next PATCH would fail.
    if (this.sessions.get(session.id) !== session) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { uploadId: session.id });
    session.offset += written;
    await this.persist(session);
  }

  private refuseIfBusy(session: UploadSession): void {
    if (session.busy) {
      throw new RegistryError('BLOB_UPLOAD_INVALID', { uploadId: session.id }, {
        status: 416, message: 'another chunk of this upload is in progress', headers: uploadHeaders(session),
      });
    }
  }

  /** Verifies the uploaded bytes against `digest` and moves them into the content store. */
  async finish(session: UploadSession, digest: Digest): Promise<number> {
    const dataPath = this.layout.uploadDataPath(session.id);
    // A PUT while a PATCH streams would truncate and hash a file still being written.
    this.refuseIfBusy(session);
    session.busy = true;
    try {
      // Bytes past the offset are from an interrupted chunk and are not part of the blob.
      await truncate(dataPath, session.offset);
      const actual = digest.algorithm === 'sha256' && session.hash
        ? `sha256:${session.hash.copy().digest('hex')}`
        : await BlobStore.hashFile(dataPath, digest.algorithm, session.offset);
      if (actual !== digest.value) {
        await this.cancel(session);
        throw new RegistryError('DIGEST_INVALID', { expected: digest.value, actual });
      }
      const handle = await open(dataPath, 'r+');
      await handle.sync().finally(() => handle.close());
      await this.blobs.commitVerified(dataPath, digest);
      await this.blobs.link(session.name, digest);
      await this.cancel(session);
      return session.offset;
    } finally {
      session.busy = false;
    }
  }

  async cancel(session: UploadSession): Promise<void> {
    this.sessions.delete(session.id);
    await rm(this.layout.uploadDir(session.id), { recursive: true, force: true });
  }

  /** Removes sessions idle for longer than `graceMs` (at start-up; their clients are long gone). */
  async purgeStale(graceMs: number): Promise<number> {
    const removed = await removeStale(this.layout.uploadsDir, graceMs);
    return removed + (await removeStale(this.layout.tmpDir, Math.min(graceMs, 3_600_000)));
  }

  private async persist(session: UploadSession): Promise<void> {
    const state: PersistedState = { name: session.name, offset: session.offset, startedAt: session.startedAt };
    await writeFileAtomic(this.layout.tmpDir, this.layout.uploadStatePath(session.id), JSON.stringify(state));
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
