import type { Hash } from 'node:crypto';
import { CompleteMultipartUploadCommand, CreateMultipartUploadCommand, PutObjectCommand, UploadPartCommand } from '@aws-sdk/client-s3';
import type { Digest } from '../../oci/digest.js';
import type { BlobWriter } from './driver.js';
import type { S3Driver } from './s3.js';
import { verifyContent } from './verify.js';

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
