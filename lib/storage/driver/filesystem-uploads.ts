import { createHash, type Hash } from 'node:crypto';
import { mkdir, open, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Digest, DigestAlgorithm } from '../../oci/digest.js';
import { commitFile } from '../atomic.js';
import { SyncBehind } from '../sync-behind.js';
import { writeBatched } from '../write-batched.js';
import { UploadOffsetError, type UploadSession, type UploadSessions } from './driver.js';
import type { FilesystemDriver } from './filesystem.js';
import { checkUploadId, verifyContent } from './verify.js';

interface PersistedUploadState {
  offset: number;
  startedAt: number;
  [meta: string]: unknown;
}

/**
 * Upload sessions as today's layout has them: `_uploads/<id>/data` appended in place, and
 * `_uploads/<id>/state.json` = the meta fields, `offset` (bytes acknowledged) and `startedAt`. The data
 * file may run past `offset` after an append cut short; the next append overwrites from `offset`.
 * A running hash is kept in memory while one process appends from the start, so finishing needs no
 * re-read; after a restart, finishing re-hashes the data file.
 */
export class FilesystemUploads implements UploadSessions {
  private readonly running = new Map<string, { size: number; hash: Hash }>();

  constructor(private readonly driver: FilesystemDriver) {}

  private dataKey(id: string): string {
    return `_uploads/${checkUploadId(id)}/data`;
  }

  private stateKey(id: string): string {
    return `_uploads/${checkUploadId(id)}/state.json`;
  }

  async create(id: string, meta: Record<string, unknown>): Promise<UploadSession> {
    const startedAt = Date.now();
    const dataPath = this.driver.path(this.dataKey(id));
    await mkdir(dirname(dataPath), { recursive: true });
    await (await open(dataPath, 'wx', 0o644)).close();
    await this.writeState(id, { ...meta, offset: 0, startedAt });
    this.running.set(id, { size: 0, hash: createHash('sha256') });
    return { id, meta, size: 0, startedAt: new Date(startedAt) };
  }

  async get(id: string): Promise<UploadSession> {
    const state = JSON.parse((await this.driver.getContent(this.stateKey(id))).toString('utf8')) as PersistedUploadState;
    const { offset, startedAt, ...meta } = state;
    return { id, meta, size: offset, startedAt: new Date(startedAt) };
  }

  async append(id: string, offset: number, body: AsyncIterable<Buffer>): Promise<number> {
    return this.driver.withLock(`upload-${checkUploadId(id)}`, async () => {
      const state = JSON.parse((await this.driver.getContent(this.stateKey(id))).toString('utf8')) as PersistedUploadState;
      if (offset !== state.offset) throw new UploadOffsetError(state.offset, offset);
      const running = this.running.get(id);
      const hash = running && running.size === offset ? running.hash : undefined;
      this.running.delete(id);
      const handle = await open(this.driver.path(this.dataKey(id)), 'r+');
      const syncBehind = new SyncBehind(handle);
      let size = offset;
      try {
        await handle.truncate(offset);
        // Batched (writeBatched): the chunks that arrive while a write is in flight go out in the next
        // positioned write, instead of one thread-pool round trip per socket chunk.
        const appendChunks = async (chunks: Buffer[]) => {
          const at = size;
          for (const chunk of chunks) {
            hash?.update(chunk);
            size += chunk.length;
          }
          await handle.writev(chunks, at);
          syncBehind.wrote(size - at);
        };
        await writeBatched({ write: (data) => appendChunks([data]), writev: appendChunks }, body);
        // No fsync per chunk (distribution does none either; SyncBehind only writes back early): a
        // chunk lost to a power cut costs the client its upload, never a corrupt blob, since finish()
        // fsyncs the whole file and checks the digest (re-hashing the file after a restart) before the
        // rename makes it visible.
      } finally {
        await syncBehind.settle().finally(() => handle.close());
      }
      // Deleted (cancelled) while the chunk streamed: writing the state would bring the session back.
      await this.driver.stat(this.stateKey(id));
      await this.writeState(id, { ...state, offset: size });
      if (hash) this.running.set(id, { size, hash });
      return size;
    });
  }

  async finish(id: string, key: string, expected: Digest): Promise<number> {
    return this.driver.withLock(`upload-${checkUploadId(id)}`, async () => {
      const session = await this.get(id);
      const dataPath = this.driver.path(this.dataKey(id));
      const running = this.running.get(id);
      this.running.delete(id);
      const hash = expected.algorithm === 'sha256' && running?.size === session.size ? running.hash : await hashFile(dataPath, expected.algorithm, session.size);
      verifyContent(hash, session.size, expected);
      const handle = await open(dataPath, 'r+');
      try {
        await handle.truncate(session.size);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await commitFile(dataPath, this.driver.path(key));
      await this.delete(id);
      return session.size;
    });
  }

  async delete(id: string): Promise<void> {
    this.running.delete(id);
    await this.driver.deletePrefix(`_uploads/${checkUploadId(id)}/`);
  }

  async *list(): AsyncIterable<{ id: string; startedAt: Date }> {
    const page = await this.driver.list('_uploads/', { delimiter: '/', limit: Number.MAX_SAFE_INTEGER });
    for (const prefix of page.prefixes) {
      const id = prefix.slice('_uploads/'.length, -1);
      const session = await this.get(id).catch(() => undefined);
      if (session) yield { id, startedAt: session.startedAt };
      else {
        // A session without state (killed between mkdir and the first state write): its dir's time.
        const info = await stat(join(this.driver.root, prefix)).catch(() => undefined);
        if (info) yield { id, startedAt: info.mtime };
      }
    }
  }

  private async writeState(id: string, state: PersistedUploadState): Promise<void> {
    await this.driver.putContent(this.stateKey(id), JSON.stringify(state));
  }
}

async function hashFile(path: string, algorithm: DigestAlgorithm, length: number): Promise<Hash> {
  const hash = createHash(algorithm);
  if (length === 0) return hash;
  const handle = await open(path, 'r');
  try {
    for await (const chunk of handle.createReadStream({ start: 0, end: length - 1, autoClose: false })) hash.update(chunk as Buffer);
  } finally {
    await handle.close();
  }
  return hash;
}
