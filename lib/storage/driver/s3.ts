import { createHash, randomUUID, type Hash } from 'node:crypto';
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CopyObjectCommand, CreateMultipartUploadCommand, DeleteObjectCommand,
  DeleteObjectsCommand, GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command,
  PutObjectCommand, UploadPartCommand, UploadPartCopyCommand, type S3Client,
} from '@aws-sdk/client-s3';
import type { Digest, DigestAlgorithm } from '../../oci/digest.js';
import {
  checkKey, checkPrefix, StorageNotFoundError, UploadOffsetError,
  type BlobWriter, type IncompleteWrite, type KeyInfo, type ListOptions, type ListPage, type StorageDriver,
  type UploadSession, type UploadSessions, type VersionedContent,
} from './driver.js';
import { httpStatusOf, translateS3Error } from './s3-client.js';
import { checkUploadId, offsetKey, verifyContent } from './verify.js';

export interface S3DriverOptions {
  client: S3Client;
  bucket: string;
  /** Key prefix inside the bucket, without leading or trailing `/` ('' for the bucket's root). */
  prefix?: string;
  /** Multipart part size: S3's minimum is 5 MiB (except the last part). Default 8 MiB. */
  partSize?: number;
  /** Parts of one writer uploaded at once; memory per writer is about partSize × (partConcurrency + 1). */
  partConcurrency?: number;
}

const MIN_PART_SIZE = 5 * 1024 * 1024;
/** Largest source of one CopyObject / UploadPartCopy request (S3's limit is 5 GiB). */
const MAX_COPY_SIZE = 5 * 1024 * 1024 * 1024;
/** Ranges a large chunk is copied in: well under MAX_COPY_SIZE, well over MIN_PART_SIZE. */
const COPY_RANGE_SIZE = 1024 * 1024 * 1024;

function unquote(etag: string | undefined): string {
  return (etag ?? '').replace(/^"|"$/g, '');
}

/**
 * The storage driver over an S3 bucket (AWS S3, Ceph RGW, MinIO, R2). A key is the object
 * `<prefix>/<key>`. Blobs are multipart uploads completed only after verification; conditional
 * writes are `If-None-Match: *` and `If-Match: <etag>` (unquoted: Ceph RGW rejects the quoted form).
 */
export class S3Driver implements StorageDriver {
  readonly kind = 's3';
  readonly location: string;
  readonly client: S3Client;
  readonly bucket: string;
  readonly prefix: string;
  readonly partSize: number;
  readonly partConcurrency: number;
  readonly uploads: UploadSessions;

  constructor(options: S3DriverOptions) {
    this.client = options.client;
    this.bucket = options.bucket;
    this.prefix = options.prefix ? `${options.prefix.replace(/^\/+|\/+$/g, '')}/` : '';
    this.location = `s3://${this.bucket}/${this.prefix}`;
    this.partSize = Math.max(options.partSize ?? 8 * 1024 * 1024, MIN_PART_SIZE);
    this.partConcurrency = Math.max(options.partConcurrency ?? 2, 1);
    this.uploads = new S3Uploads(this);
  }

  objectKey(key: string): string {
    return this.prefix + checkKey(key);
  }

  /** Runs one SDK call, translating its failure (not found, unavailable) for `key`. */
  async call<T>(key: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw translateS3Error(err, key);
    }
  }

  async getContent(key: string): Promise<Buffer> {
    return (await this.getVersioned(key)).data;
  }

  async getVersioned(key: string): Promise<VersionedContent> {
    return this.call(key, async () => {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }));
      const data = Buffer.from(await out.Body!.transformToByteArray());
      return { data, version: unquote(out.ETag) };
    });
  }

  async putContent(key: string, data: Buffer | string): Promise<void> {
    await this.call(key, () => this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key), Body: toBuffer(data) })));
  }

  async putIfAbsent(key: string, data: Buffer | string): Promise<boolean> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key), Body: toBuffer(data), IfNoneMatch: '*' }));
        return true;
      } catch (err) {
        const status = httpStatusOf(err);
        if (status === 412) return false;
        // 409 ConditionalRequestConflict (AWS): a concurrent conditional write is in progress; retry.
        if (status === 409 && attempt < 5) {
          await new Promise((resolve) => setTimeout(resolve, 20 * (attempt + 1)));
          continue;
        }
        throw translateS3Error(err, key);
      }
    }
  }

  async replaceIfMatch(key: string, data: Buffer | string, version: string): Promise<string | undefined> {
    try {
      const out = await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key), Body: toBuffer(data), IfMatch: unquote(version) }));
      return unquote(out.ETag);
    } catch (err) {
      const status = httpStatusOf(err);
      if (status === 412 || status === 404 || status === 409) return undefined;
      throw translateS3Error(err, key);
    }
  }

  async reader(key: string, range: { offset?: number; length?: number } = {}): Promise<Readable> {
    const offset = range.offset ?? 0;
    if (range.length === 0) {
      await this.stat(key);
      return Readable.from([]);
    }
    const header = offset === 0 && range.length === undefined
      ? undefined
      : `bytes=${offset}-${range.length === undefined ? '' : offset + range.length - 1}`;
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key), ...(header ? { Range: header } : {}) }));
      return out.Body as Readable;
    } catch (err) {
      // A range starting at or past the end: no bytes, as a file read past its end gives.
      if (httpStatusOf(err) === 416) return Readable.from([]);
      throw translateS3Error(err, key);
    }
  }

  async stat(key: string): Promise<KeyInfo> {
    return this.call(key, async () => {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }));
      return { key, size: out.ContentLength ?? 0, modifiedAt: out.LastModified ?? new Date(0) };
    });
  }

  async list(prefix: string, options: ListOptions = {}): Promise<ListPage> {
    checkPrefix(prefix);
    return this.call(prefix, async () => {
      const out = await this.client.send(new ListObjectsV2Command({
        Bucket: this.bucket,
        Prefix: this.prefix + prefix,
        MaxKeys: Math.min(options.limit ?? 1000, 1000),
        ...(options.delimiter ? { Delimiter: options.delimiter } : {}),
        ...(options.cursor ? { ContinuationToken: options.cursor } : options.startAfter ? { StartAfter: this.prefix + options.startAfter } : {}),
      }));
      const strip = (k: string) => k.slice(this.prefix.length);
      return {
        keys: (out.Contents ?? []).map((o) => ({ key: strip(o.Key!), size: o.Size ?? 0, modifiedAt: o.LastModified ?? new Date(0) })),
        prefixes: (out.CommonPrefixes ?? []).map((p) => strip(p.Prefix!)),
        next: out.IsTruncated ? out.NextContinuationToken : undefined,
      };
    });
  }

  async *walk(prefix: string): AsyncIterable<KeyInfo> {
    let cursor: string | undefined;
    do {
      const page = await this.list(prefix, cursor ? { cursor } : {});
      yield* page.keys;
      cursor = page.next;
    } while (cursor);
  }

  async delete(key: string): Promise<void> {
    await this.call(key, () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) })));
  }

  async deletePrefix(prefix: string): Promise<number> {
    if (!prefix.endsWith('/') || prefix === '/') throw new Error(`deletePrefix needs a prefix ending with "/": "${prefix}"`);
    let removed = 0;
    let batch: string[] = [];
    const flush = async () => {
      if (batch.length === 0) return;
      const objects = batch.map((k) => ({ Key: this.objectKey(k) }));
      batch = [];
      await this.call(prefix, () => this.client.send(new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: objects, Quiet: true } })));
      removed += objects.length;
    };
    for await (const info of this.walk(prefix)) {
      batch.push(info.key);
      if (batch.length === 1000) await flush();
    }
    await flush();
    return removed;
  }

  async blobWriter(key: string, algorithm: DigestAlgorithm = 'sha256'): Promise<S3BlobWriter> {
    return new S3BlobWriter(this, key, createHash(algorithm));
  }

  async *listIncompleteWrites(): AsyncIterable<IncompleteWrite> {
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      const out = await this.call(this.prefix, () => this.client.send(new ListMultipartUploadsCommand({
        Bucket: this.bucket, Prefix: this.prefix, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker,
      })));
      for (const upload of out.Uploads ?? []) {
        yield { id: upload.UploadId!, key: upload.Key!.slice(this.prefix.length), startedAt: upload.Initiated ?? new Date(0) };
      }
      if (!out.IsTruncated) return;
      keyMarker = out.NextKeyMarker;
      uploadIdMarker = out.NextUploadIdMarker;
    }
  }

  /** `bucket/key` as CopySource wants it: the key URL-encoded segment by segment. */
  copySource(key: string): string {
    return `${this.bucket}/${this.objectKey(key).split('/').map(encodeURIComponent).join('/')}`;
  }

  /**
   * Concatenates `sources` (all but the last at least 5 MiB) into `key` on the server: one
   * CopyObject for a single source, else a multipart upload of UploadPartCopy ranges. Used only for
   * content already verified, so the copy needs no re-read.
   */
  async copyConcatenated(key: string, sources: Array<{ key: string; size: number }>): Promise<void> {
    if (sources.length === 1 && sources[0]!.size <= MAX_COPY_SIZE) {
      await this.call(key, () => this.client.send(new CopyObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key), CopySource: this.copySource(sources[0]!.key) })));
      return;
    }
    const uploadId = await this.call(key, async () => (await this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: this.objectKey(key) }))).UploadId!);
    try {
      const parts: Array<{ PartNumber: number; ETag: string }> = [];
      for (const source of sources) {
        const ranges = Math.max(1, Math.ceil(source.size / COPY_RANGE_SIZE));
        const step = Math.ceil(source.size / ranges);
        for (let start = 0; start < source.size; start += step) {
          const end = Math.min(start + step, source.size) - 1;
          const partNumber = parts.length + 1;
          const out = await this.call(key, () => this.client.send(new UploadPartCopyCommand({
            Bucket: this.bucket, Key: this.objectKey(key), UploadId: uploadId, PartNumber: partNumber,
            CopySource: this.copySource(source.key), CopySourceRange: `bytes=${start}-${end}`,
          })));
          parts.push({ PartNumber: partNumber, ETag: out.CopyPartResult!.ETag! });
        }
      }
      await this.call(key, () => this.client.send(new CompleteMultipartUploadCommand({
        Bucket: this.bucket, Key: this.objectKey(key), UploadId: uploadId, MultipartUpload: { Parts: parts },
      })));
    } catch (err) {
      await this.abortIncompleteWrite({ id: uploadId, key, startedAt: new Date() }).catch(() => {});
      throw err;
    }
  }

  async abortIncompleteWrite(write: IncompleteWrite): Promise<void> {
    if (write.key === undefined) throw new Error('an S3 incomplete write needs its key');
    await this.call(write.key, () => this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: this.objectKey(write.key!), UploadId: write.id })))
      .catch((err) => (err instanceof StorageNotFoundError ? undefined : Promise.reject(err)));
  }
}

function toBuffer(data: Buffer | string): Buffer {
  return typeof data === 'string' ? Buffer.from(data) : data;
}

/**
 * Buffers up to one part; full parts go to a multipart upload of the final key (a few at once), and
 * the upload is completed only in commit, after the digest checked out. Content smaller than a part
 * never starts a multipart upload: commit PUTs it in one request.
 */
export class S3BlobWriter implements BlobWriter {
  size = 0;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private uploadId: Promise<string> | undefined;
  private readonly parts: Array<{ PartNumber: number; ETag: string }> = [];
  private readonly inFlight = new Set<Promise<void>>();
  private failure: unknown;
  private done = false;
  private nextPartNumber = 1;

  constructor(private readonly driver: S3Driver, readonly key: string, private readonly hash: Hash | undefined) {
    driver.objectKey(key);
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.done) throw new Error('blob writer already finished');
    if (this.failure) throw this.failure;
    this.hash?.update(chunk);
    this.size += chunk.length;
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    while (this.pendingBytes >= this.driver.partSize) {
      this.startPart(this.takePart(this.driver.partSize));
      while (this.inFlight.size >= this.driver.partConcurrency) await Promise.race(this.inFlight);
      if (this.failure) throw this.failure;
    }
  }

  async commit(expected: Digest, expectedSize?: number): Promise<void> {
    if (this.done) throw new Error('blob writer already finished');
    try {
      if (!this.hash) throw new Error('blob writer without a hash cannot verify');
      verifyContent(this.hash, this.size, expected, expectedSize);
      await this.complete();
    } catch (err) {
      await this.cancel();
      throw err;
    }
  }

  /** Makes the key visible without a digest check: for upload chunks, which are not content-addressed. */
  async complete(): Promise<void> {
    const { driver } = this;
    this.done = true;
    if (!this.uploadId) {
      const body = Buffer.concat(this.pending, this.pendingBytes);
      this.pending = [];
      await driver.call(this.key, () => driver.client.send(new PutObjectCommand({
        Bucket: driver.bucket, Key: driver.objectKey(this.key), Body: body, ContentLength: body.length,
      })));
      return;
    }
    if (this.pendingBytes > 0) this.startPart(this.takePart(this.pendingBytes));
    await Promise.all(this.inFlight);
    if (this.failure) throw this.failure;
    const uploadId = await this.uploadId;
    const parts = [...this.parts].sort((a, b) => a.PartNumber - b.PartNumber);
    await driver.call(this.key, () => driver.client.send(new CompleteMultipartUploadCommand({
      Bucket: driver.bucket, Key: driver.objectKey(this.key), UploadId: uploadId, MultipartUpload: { Parts: parts },
    })));
    // Completed: a later cancel() has nothing to abort.
    this.uploadId = undefined;
  }

  async cancel(): Promise<void> {
    this.done = true;
    this.pending = [];
    const uploadId = this.uploadId;
    this.uploadId = undefined;
    if (!uploadId) return;
    await Promise.allSettled(this.inFlight);
    const id = await uploadId.catch(() => undefined);
    if (id) await this.driver.abortIncompleteWrite({ id, key: this.key, startedAt: new Date() }).catch(() => {});
  }

  private takePart(bytes: number): Buffer {
    const all = Buffer.concat(this.pending, this.pendingBytes);
    const part = all.subarray(0, bytes);
    const rest = all.subarray(bytes);
    this.pending = rest.length > 0 ? [rest] : [];
    this.pendingBytes = rest.length;
    return part;
  }

  private startPart(body: Buffer): void {
    const { driver } = this;
    const partNumber = this.nextPartNumber++;
    this.uploadId ??= driver.call(this.key, async () => {
      const out = await driver.client.send(new CreateMultipartUploadCommand({ Bucket: driver.bucket, Key: driver.objectKey(this.key) }));
      return out.UploadId!;
    });
    const uploadId = this.uploadId;
    const task: Promise<void> = (async () => {
      const id = await uploadId;
      const out = await driver.call(this.key, () => driver.client.send(new UploadPartCommand({
        Bucket: driver.bucket, Key: driver.objectKey(this.key), UploadId: id, PartNumber: partNumber, Body: body, ContentLength: body.length,
      })));
      this.parts.push({ PartNumber: partNumber, ETag: out.ETag! });
    })().catch((err) => {
      this.failure ??= err;
    }).finally(() => {
      this.inFlight.delete(task);
    });
    this.inFlight.add(task);
  }
}

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
class S3Uploads implements UploadSessions {
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
        const info = await this.driver.stat(`${prefix}state.json`).catch(() => undefined);
        // No state (killed before create finished): GC judges it by its oldest object's time.
        const startedAt = info?.modifiedAt ?? (await this.oldest(prefix));
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
