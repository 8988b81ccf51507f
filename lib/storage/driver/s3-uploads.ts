import { createHash, randomUUID, type Hash } from 'node:crypto';
import type { Digest } from '../../oci/digest.js';
import { StorageNotFoundError, UploadOffsetError, type UploadSession, type UploadSessions } from './driver.js';
import { S3BlobWriter } from './s3-blob-writer.js';
import { MIN_PART_SIZE } from './s3-part-size.js';
import type { S3Driver } from './s3.js';
import { checkUploadId, offsetKey, verifyContent } from './verify.js';

interface ChunkClaim {
  chunk: string;
  size: number;
}

/**
 * Upload sessions as objects: `_uploads/<id>/state.json` (meta + startedAt, created once),
 * `_uploads/<id>/chunks/<offset>-<uuid>` (each append's bytes, any size), and
 * `_uploads/<id>/claims/<offset>` (conditional create naming the chunk that holds the bytes from that
 * offset: of two appends racing at one offset exactly one wins). The session's size is the last
 * claim's offset + size. An append killed midway leaves an unclaimed chunk (or an incomplete
 * multipart upload), which `delete` or GC removes. `finish` copies on the server when this process
 * hashed every append, else re-reads (see UploadSessions).
 */
export class S3Uploads implements UploadSessions {
  /** sha256 of the session so far, while this process made every append: finish then copies on the server. */
  private readonly running = new Map<string, { size: number; hash: Hash }>();

  constructor(private readonly driver: S3Driver) {}

  private dir(id: string): string {
    return `_uploads/${checkUploadId(id)}/`;
  }

  async create(id: string, meta: Record<string, unknown>): Promise<UploadSession> {
    const startedAt = Date.now();
    if (!(await this.driver.putIfAbsent(`${this.dir(id)}state.json`, JSON.stringify({ ...meta, startedAt })))) {
      throw new Error(`upload session ${id} already exists`);
    }
    this.running.set(id, { size: 0, hash: createHash('sha256') });
    return { id, meta, size: 0, startedAt: new Date(startedAt) };
  }

  async get(id: string): Promise<UploadSession> {
    const [state, claims] = await Promise.all([
      this.driver.getContent(`${this.dir(id)}state.json`),
      this.lastClaim(id),
    ]);
    const { startedAt, ...meta } = JSON.parse(state.toString('utf8')) as { startedAt: number } & Record<string, unknown>;
    return { id, meta, size: claims, startedAt: new Date(startedAt) };
  }

  async append(id: string, offset: number, body: AsyncIterable<Buffer>): Promise<number> {
    const previous = this.running.get(id);
    this.running.delete(id);
    // When this process made the last append, it knows the size: no need to list the claims. If another
    // process appended since, the claim below is taken and this append fails as it should.
    if (previous?.size !== offset) {
      const session = await this.get(id);
      if (offset !== session.size) throw new UploadOffsetError(session.size, offset);
    }
    const chunkKey = `${this.dir(id)}chunks/${offsetKey(offset)}-${randomUUID()}`;
    const writer = new S3BlobWriter(this.driver, chunkKey, undefined);
    const hash = offset === 0 ? createHash('sha256') : previous?.size === offset ? previous.hash : undefined;
    try {
      for await (const chunk of body) {
        hash?.update(chunk);
        await writer.write(chunk);
      }
    } catch (err) {
      await writer.cancel();
      throw err;
    }
    if (writer.size === 0) {
      await writer.cancel();
      if (hash) this.running.set(id, { size: offset, hash });
      return offset;
    }
    try {
      await writer.complete();
    } catch (err) {
      await writer.cancel();
      throw err;
    }
    const claim: ChunkClaim = { chunk: chunkKey, size: writer.size };
    if (!(await this.driver.putIfAbsent(`${this.dir(id)}claims/${offsetKey(offset)}`, JSON.stringify(claim)))) {
      await this.driver.delete(chunkKey);
      throw new UploadOffsetError((await this.get(id)).size, offset);
    }
    // Deleted (cancelled) while the chunk streamed: the claim must not outlive the session.
    if (!(await this.driver.stat(`${this.dir(id)}state.json`).then(() => true, () => false))) {
      await this.driver.deletePrefix(this.dir(id));
      throw new StorageNotFoundError(`${this.dir(id)}state.json`);
    }
    if (hash) this.running.set(id, { size: offset + writer.size, hash });
    return offset + writer.size;
  }

  async finish(id: string, key: string, expected: Digest): Promise<number> {
    const claims = await this.claims(id);
    const size = claims.reduce((sum, claim) => sum + claim.size, 0);
    const running = this.running.get(id);
    this.running.delete(id);
    // Fast path: this process hashed every byte as it was appended, so verify now and let the store
    // copy the chunks into place; parts other than the last must be >= 5 MiB for UploadPartCopy.
    if (running && running.size === size && expected.algorithm === 'sha256' && claims.length > 0
      && claims.slice(0, -1).every((claim) => claim.size >= MIN_PART_SIZE)) {
      verifyContent(running.hash, size, expected);
      await this.driver.copyConcatenated(key, claims.map((claim) => ({ key: claim.chunk, size: claim.size })));
      await this.delete(id);
      return size;
    }
    const writer = await this.driver.blobWriter(key, expected.algorithm);
    try {
      // Re-read the chunks in order: hashing and part-packing in one pass, memory bounded by the writer.
      for (const claim of claims) {
        const stream = await this.driver.reader(claim.chunk);
        for await (const chunk of stream) await writer.write(chunk as Buffer);
      }
    } catch (err) {
      await writer.cancel();
      throw err;
    }
    await writer.commit(expected);
    await this.delete(id);
    return writer.size;
  }

  async delete(id: string): Promise<void> {
    this.running.delete(id);
    await this.driver.deletePrefix(this.dir(id));
  }

  async *list(): AsyncIterable<{ id: string; startedAt: Date }> {
    let cursor: string | undefined;
    do {
      const page = await this.driver.list('_uploads/', { delimiter: '/', ...(cursor ? { cursor } : {}) });
      for (const prefix of page.prefixes) {
        const id = prefix.slice('_uploads/'.length, -1);
        // The start recorded in the state (as on the filesystem). No state (killed before create
        // finished): GC judges it by its oldest object's time.
        const state = await this.driver.getContent(`${prefix}state.json`).then((data) => JSON.parse(data.toString('utf8')) as { startedAt?: unknown }, () => undefined);
        const startedAt = typeof state?.startedAt === 'number' ? new Date(state.startedAt) : await this.oldest(prefix);
        yield { id, startedAt };
      }
      cursor = page.next;
    } while (cursor);
  }

  private async oldest(prefix: string): Promise<Date> {
    let oldest = new Date();
    for await (const info of this.driver.walk(prefix)) if (info.modifiedAt < oldest) oldest = info.modifiedAt;
    return oldest;
  }

  /** The claims in offset order, checked to be contiguous from 0. */
  private async claims(id: string): Promise<ChunkClaim[]> {
    const claims: ChunkClaim[] = [];
    let size = 0;
    for await (const info of this.driver.walk(`${this.dir(id)}claims/`)) {
      const offset = Number(info.key.slice(info.key.lastIndexOf('/') + 1));
      const claim = JSON.parse((await this.driver.getContent(info.key)).toString('utf8')) as ChunkClaim;
      if (offset !== size) throw new Error(`upload session ${id}: chunk at offset ${offset}, expected ${size}`);
      claims.push(claim);
      size += claim.size;
    }
    if (claims.length === 0) await this.driver.stat(`${this.dir(id)}state.json`);
    return claims;
  }

  /** The session's size: the last claim's offset plus its size. */
  private async lastClaim(id: string): Promise<number> {
    let last: string | undefined;
    for await (const info of this.driver.walk(`${this.dir(id)}claims/`)) last = info.key;
    if (!last) return 0;
    const claim = JSON.parse((await this.driver.getContent(last)).toString('utf8')) as ChunkClaim;
    return Number(last.slice(last.lastIndexOf('/') + 1)) + claim.size;
  }
}
