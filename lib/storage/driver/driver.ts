import type { Readable } from 'node:stream';
import type { Digest, DigestAlgorithm } from '../../oci/digest.js';
import { RegistryError } from '../../oci/errors.js';

/**
 * The one interface through which Stevedore touches storage: a filesystem directory or an S3 bucket.
 * Shaped like distribution's `storagedriver.StorageDriver`, plus what several writers on one bucket
 * need (conditional create and replace) and upload sessions that live in the store.
 *
 * Keys are relative, `/`-separated paths of the storage layout (`blobs/sha256/ab/ab…`,
 * `repositories/team/app/_manifests/tags/1.0`): on the filesystem a key is the file at `<root>/<key>`
 * (today's layout, byte for byte); on S3 it is the object `<prefix>/<key>`. A "directory" exists only
 * while it holds a key, as on S3 (the filesystem driver prunes emptied directories).
 *
 * Errors: a missing key is a StorageNotFoundError; a store that cannot be reached, times out or answers
 * 5xx is a RegistryError UNAVAILABLE with Retry-After, so a service passes it to the client unchanged.
 */
export interface StorageDriver {
  /** `filesystem` or `s3`, for logs and metrics. */
  readonly kind: 'filesystem' | 's3';
  /** Where it stores, for logs: a directory or `s3://bucket/prefix`. */
  readonly location: string;

  /** The whole content of a small key (tag, manifest, link, record). */
  getContent(key: string): Promise<Buffer>;
  /**
   * Content plus a version token for replaceIfMatch (S3: the unquoted ETag; filesystem: content MD5)
   * and the time it was last written, in one request (a tag's "validated at" is its write time).
   */
  getVersioned(key: string): Promise<VersionedContent>;
  /** Writes a small key atomically (readers see the old or the new content, never a mix). */
  putContent(key: string, data: Buffer | string): Promise<void>;
  /** Creates `key` only if it does not exist; false when it did (another writer won). Atomic across writers. */
  putIfAbsent(key: string, data: Buffer | string): Promise<boolean>;
  /**
   * Replaces `key` only if its version is still `version`; the new version, or undefined when the key
   * changed or vanished meanwhile (a stale read: re-read and retry). Atomic across writers.
   */
  replaceIfMatch(key: string, data: Buffer | string, version: string): Promise<string | undefined>;

  /** A stream of up to `length` bytes from `offset` (default: to the end). Never buffers the whole key. */
  reader(key: string, range?: { offset?: number; length?: number }): Promise<Readable>;
  /**
   * The whole key as a stream together with its size, in one request (S3: one GetObject, the size
   * from its Content-Length): for a reader that needs the size before the bytes, instead of a stat
   * followed by a read. Never buffers the whole key.
   */
  open(key: string): Promise<OpenedKey>;
  stat(key: string): Promise<KeyInfo>;
  /**
   * One page of keys under `prefix`, in key order. With `delimiter: '/'`, keys below the next `/` are
   * rolled up into `prefixes` (a directory listing). `startAfter` starts after that key (the catalog's
   * `last=`); `cursor` continues from the previous page's `next`.
   */
  list(prefix: string, options?: ListOptions): Promise<ListPage>;
  /** Every key under `prefix` (no delimiter), page by page; order is unspecified on the filesystem. */
  walk(prefix: string): AsyncIterable<KeyInfo>;
  /** Removes a key; removing a missing key is not an error. */
  delete(key: string): Promise<void>;
  /** Removes these keys (missing ones are not an error): on S3 up to 1,000 per request. */
  deleteMany(keys: readonly string[]): Promise<void>;
  /** Removes every key under `prefix` (which must end with `/`); how many were removed. */
  deletePrefix(prefix: string): Promise<number>;

  /**
   * A writer for content-addressed data: streams to the store, hashes as it goes, and makes `key`
   * visible only in `commit(digest)` after the digest (and size, if given) checked out. On the
   * filesystem a temp file, fsync, rename; on S3 a multipart upload to `key` completed only after
   * verification (small content: one PUT at commit). Until then nothing is visible under `key`.
   */
  blobWriter(key: string, algorithm?: DigestAlgorithm): Promise<BlobWriter>;
  /** Writes that were started and never committed or cancelled (a killed process): for GC to abort. */
  listIncompleteWrites(): AsyncIterable<IncompleteWrite>;
  abortIncompleteWrite(write: IncompleteWrite): Promise<void>;

  /**
   * A short-lived URL from which a client can GET `key` straight from the store (S3: a presigned
   * GetObject URL, valid `expiresInSeconds`), or undefined when the store has none (the filesystem).
   * Signing is local: it does not check that the key exists.
   */
  redirectURL(key: string, expiresInSeconds: number): Promise<string | undefined>;

  /** Resumable upload sessions, stored in the store so they survive a restart (see UploadSessions). */
  readonly uploads: UploadSessions;
}

export interface VersionedContent {
  data: Buffer;
  version: string;
  /** When the key was last written (S3 LastModified, file mtime): what stat() reports as modifiedAt. */
  modifiedAt: Date;
}

export interface OpenedKey {
  stream: Readable;
  size: number;
  modifiedAt: Date;
}

export interface KeyInfo {
  key: string;
  size: number;
  modifiedAt: Date;
}

export interface ListOptions {
  delimiter?: '/';
  startAfter?: string;
  cursor?: string;
  /** Page size; default 1000 (S3's maximum). */
  limit?: number;
}

export interface ListPage {
  keys: KeyInfo[];
  /** With a delimiter: the "directories", each ending with the delimiter. */
  prefixes: string[];
  /** Pass as `cursor` for the next page; undefined on the last page. */
  next: string | undefined;
}

export interface BlobWriter {
  /** Bytes written so far. */
  readonly size: number;
  /** Appends a chunk; resolves when it is accepted (applies backpressure on S3 part uploads). */
  write(chunk: Buffer): Promise<void>;
  /** Appends several chunks in one write (optional: lib/storage/write-batched.ts copies them into one buffer without it). */
  writev?(chunks: Buffer[]): Promise<void>;
  /**
   * Verifies `expected` (and `expectedSize`) against what was written and makes the key visible.
   * On a mismatch nothing becomes visible and it throws DIGEST_INVALID / SIZE_INVALID; the writer is
   * cancelled either way it fails.
   */
  commit(expected: Digest, expectedSize?: number): Promise<void>;
  /** Discards everything written; nothing becomes visible. Safe to call twice or after commit. */
  cancel(): Promise<void>;
}

export interface IncompleteWrite {
  /** Driver-specific handle: a temp file path, or an S3 multipart upload id. */
  id: string;
  /** The key it was writing, when the store knows it (S3). */
  key: string | undefined;
  startedAt: Date;
}

/**
 * Upload sessions (POST / PATCH / PUT of the distribution API), kept in the store: any process can
 * append to or finish a session another one started, and a session survives a restart.
 *
 * Filesystem: `_uploads/<id>/data` (appended in place) and `_uploads/<id>/state.json` (meta + offset +
 * startedAt), today's layout. S3: every append is its own object `_uploads/<id>/chunks/<offset>-<uuid>`
 * of any size (no 5 MiB rule: chunks are not parts), claimed with a conditional create of
 * `_uploads/<id>/claims/<offset>` so two concurrent appends at one offset cannot both win. `finish`:
 * when this process made every append it has the running hash, verifies it and has the store copy the
 * chunks into the final key (CopyObject / UploadPartCopy, no re-read); otherwise (after a restart, or
 * chunks under 5 MiB before the last) it re-reads the chunks in order through a blobWriter (hash +
 * multipart to the final key, memory bounded by the part size).
 */
export interface UploadSessions {
  /** Starts a session; `meta` (small JSON: the repository name) comes back from `get`. */
  create(id: string, meta: Record<string, unknown>): Promise<UploadSession>;
  /** The session's state; StorageNotFoundError if there is none. */
  get(id: string): Promise<UploadSession>;
  /**
   * Appends `body` at `offset`, which must be the session's current size (else UploadOffsetError and
   * nothing is appended). Resolves with the new size. An append cut short (client gone, process killed)
   * leaves the session at its previous size.
   */
  append(id: string, offset: number, body: AsyncIterable<Buffer>): Promise<number>;
  /** Verifies the session's content against `expected` and commits it to `key`, then removes the session. */
  finish(id: string, key: string, expected: Digest): Promise<number>;
  /** Removes a session and its data; a missing one is not an error. */
  delete(id: string): Promise<void>;
  /** Every session's id and start time, for GC of idle sessions. */
  list(): AsyncIterable<{ id: string; startedAt: Date }>;
}

export interface UploadSession {
  id: string;
  meta: Record<string, unknown>;
  /** Bytes appended so far (the next append's offset). */
  size: number;
  startedAt: Date;
}

/** Every page of a delimiter listing of `prefix`: the keys directly under it and its "directories". */
export async function listAll(driver: StorageDriver, prefix: string): Promise<{ keys: KeyInfo[]; prefixes: string[] }> {
  const keys: KeyInfo[] = [];
  const prefixes: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await driver.list(prefix, { delimiter: '/', ...(cursor ? { cursor } : {}) });
    keys.push(...page.keys);
    prefixes.push(...page.prefixes);
    cursor = page.next;
  } while (cursor);
  return { keys, prefixes };
}

/**
 * The bytes of an opened key's stream (StorageDriver.open) of `size` bytes, for small keys; undefined
 * when the stream gave more or fewer bytes than that (it is destroyed). A failing stream throws its error.
 */
export async function readOpened(stream: Readable, size: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let received = 0;
  for await (const chunk of stream) {
    received += (chunk as Buffer).length;
    // Leaving the loop destroys the stream.
    if (received > size) return undefined;
    chunks.push(chunk as Buffer);
  }
  return received === size ? Buffer.concat(chunks, size) : undefined;
}

/** Seconds a client should wait before retrying when the store is unavailable. */
export const STORE_RETRY_AFTER_SECONDS = 5;

/**
 * The error a failure of the store itself (unreachable, timed out, 5xx, a read cut off) becomes:
 * UNAVAILABLE with Retry-After, which a route passes to its client as it is.
 */
export function storageUnavailable(storage: string, err: unknown): RegistryError {
  return new RegistryError('UNAVAILABLE', { storage, reason: String((err as Error)?.message ?? err).slice(0, 200) }, {
    message: 'storage unavailable',
    headers: { 'Retry-After': String(STORE_RETRY_AFTER_SECONDS) },
  });
}

/** A key that does not exist (distribution's PathNotFoundError). */
export class StorageNotFoundError extends Error {
  readonly key: string;
  constructor(key: string) {
    super(`storage key not found: ${key}`);
    this.name = 'StorageNotFoundError';
    this.key = key;
  }
}

export function isStorageNotFound(err: unknown): err is StorageNotFoundError {
  return err instanceof StorageNotFoundError;
}

/** An append at an offset other than the session's size (the API answers 416). */
export class UploadOffsetError extends Error {
  readonly expected: number;
  readonly actual: number;
  constructor(expected: number, actual: number) {
    super(`upload offset ${actual} does not match the session size ${expected}`);
    this.name = 'UploadOffsetError';
    this.expected = expected;
    this.actual = actual;
  }
}

/** Rejects keys that could escape the store or alias another key. Layout keys always pass. */
export function checkKey(key: string): string {
  if (key === '' || key.startsWith('/') || key.endsWith('/') || key.includes('//') || key.includes('\0')
    || key.split('/').some((part) => part === '.' || part === '..')) {
    throw new Error(`invalid storage key "${key}"`);
  }
  return key;
}

/** Like checkKey for a list prefix: empty (everything) or ending with `/` allowed. */
export function checkPrefix(prefix: string): string {
  if (prefix === '') return prefix;
  if (prefix.endsWith('/')) checkKey(prefix.slice(0, -1));
  else checkKey(prefix);
  return prefix;
}
