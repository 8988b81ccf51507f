import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CopyObjectCommand, CreateMultipartUploadCommand, DeleteObjectCommand,
  DeleteObjectsCommand, GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command,
  PutObjectCommand, UploadPartCopyCommand, type S3Client,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import type { DigestAlgorithm } from '../../oci/digest.js';
import {
  checkKey, checkPrefix, StorageNotFoundError,
  type IncompleteWrite, type KeyInfo, type ListOptions, type ListPage, type OpenedKey, type StorageDriver, type UploadSessions, type VersionedContent,
} from './driver.js';
import { S3BlobWriter } from './s3-blob-writer.js';
import { DEFAULT_PART_SIZE, MIN_PART_SIZE } from './s3-part-size.js';
import { httpStatusOf, translateS3Error } from './s3-client.js';
import { S3Uploads } from './s3-uploads.js';

export interface S3DriverOptions {
  client: S3Client;
  bucket: string;
  /** Key prefix inside the bucket, without leading or trailing `/` ('' for the bucket's root). */
  prefix?: string;
  /** Multipart part size: S3's minimum is 5 MiB (except the last part). Default DEFAULT_PART_SIZE (10 MiB). */
  partSize?: number;
  /** Parts of one writer uploaded at once; memory per writer is about partSize × (partConcurrency + 1). */
  partConcurrency?: number;
}

/** Keys in one DeleteObjects request (S3's limit). */
const DELETE_BATCH = 1000;
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
    this.partSize = Math.max(options.partSize ?? DEFAULT_PART_SIZE, MIN_PART_SIZE);
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

  async redirectURL(key: string, expiresInSeconds: number): Promise<string> {
    // S3 caps presigned URLs at 7 days; a registry wants minutes.
    const expiresIn = Math.min(Math.max(Math.round(expiresInSeconds), 1), 7 * 24 * 3600);
    return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }), { expiresIn });
  }

  async getContent(key: string): Promise<Buffer> {
    return (await this.getVersioned(key)).data;
  }

  async getVersioned(key: string): Promise<VersionedContent> {
    return this.call(key, async () => {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }));
      const data = Buffer.from(await out.Body!.transformToByteArray());
      return { data, version: unquote(out.ETag), modifiedAt: out.LastModified ?? new Date(0) };
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

  async open(key: string): Promise<OpenedKey> {
    return this.call(key, async () => {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }));
      // S3 always sends Content-Length for a plain GET; a store that did not is asked separately.
      const size = out.ContentLength ?? (await this.stat(key)).size;
      return { stream: out.Body as Readable, size, modifiedAt: out.LastModified ?? new Date(0) };
    });
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
    for await (const info of this.walk(prefix)) {
      batch.push(info.key);
      if (batch.length === DELETE_BATCH) {
        await this.deleteMany(batch);
        removed += batch.length;
        batch = [];
      }
    }
    await this.deleteMany(batch);
    return removed + batch.length;
  }

  async deleteMany(keys: readonly string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      const objects = keys.slice(i, i + DELETE_BATCH).map((k) => ({ Key: this.objectKey(k) }));
      const out = await this.call(keys[i]!, () => this.client.send(new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: objects, Quiet: true } })));
      // DeleteObjects answers 200 and lists the keys it could not remove: those are failures too.
      const failed = out.Errors ?? [];
      if (failed.length > 0) {
        const first = failed[0]!;
        throw new Error(`S3 DeleteObjects could not remove ${failed.length} of ${objects.length} keys (first: ${first.Key}: ${first.Code} ${first.Message})`);
      }
    }
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
