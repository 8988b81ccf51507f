import { S3Client, S3ServiceException } from '@aws-sdk/client-s3';
import { UndiciHttpHandler } from './s3-http-handler.js';
import { storageUnavailable, StorageNotFoundError } from './driver.js';

export { STORE_RETRY_AFTER_SECONDS } from './driver.js';

export interface S3ClientOptions {
  /** `http(s)://host:port` of an S3-compatible store (lib/config.ts: AWS_ENDPOINT_URL); default: AWS. */
  endpoint?: string;
  /** Default us-east-1 (what Ceph RGW and MinIO accept); lib/config.ts reads AWS_REGION. */
  region?: string;
  /** Path-style URLs (`endpoint/bucket/key`): default true when an endpoint is given. */
  forcePathStyle?: boolean;
  /** TCP connect timeout (ms): a dead endpoint fails this fast. Default 3000. */
  connectTimeoutMs?: number;
  /** Socket idle timeout (ms): a store that stops answering mid-request. Default 30000. */
  idleTimeoutMs?: number;
  /** Attempts per request including retries. Default 2: fail over to the client quickly. */
  maxAttempts?: number;
}

/**
 * The S3 client Stevedore uses. Checksums only where the API requires them: the SDK's default
 * (checksums on every request) makes streaming PutObject fail with 411 on Ceph RGW and others.
 * Credentials come from the SDK's own chain (env, profile, web identity); requests go out through
 * undici (UndiciHttpHandler), not the SDK's node:http handler.
 */
export function createS3Client(options: S3ClientOptions = {}): S3Client {
  const endpoint = options.endpoint;
  return new S3Client({
    ...(endpoint ? { endpoint } : {}),
    region: options.region ?? 'us-east-1',
    forcePathStyle: options.forcePathStyle ?? endpoint !== undefined,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: options.maxAttempts ?? 2,
    // Blob fills and GETs run many requests at once: 256 connections to the store, not the SDK's 50.
    requestHandler: new UndiciHttpHandler({ connectTimeoutMs: options.connectTimeoutMs ?? 3000, idleTimeoutMs: options.idleTimeoutMs ?? 30_000, connections: 256 }),
  });
}

export function httpStatusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNABORTED',
  // undici's (UndiciHttpHandler): a connection closed mid-answer, and its timeouts.
  'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT',
]);

/** True for failures of the store itself (unreachable, timed out, 5xx), as opposed to answers about a key. */
export function isStoreUnavailable(err: unknown): boolean {
  const status = httpStatusOf(err);
  if (status !== undefined && status >= 500) return true;
  if (err instanceof S3ServiceException) return false;
  const e = err as { code?: string; name?: string };
  return NETWORK_CODES.has(e.code ?? '') || e.name === 'TimeoutError' || e.name === 'RequestTimeout'
    || /socket hang up|timed out|timeout/i.test(String((err as Error)?.message ?? ''));
}

/**
 * Translates an SDK failure: a missing key is a StorageNotFoundError, an unavailable store a
 * RegistryError UNAVAILABLE with Retry-After (what the client of the registry should see); anything
 * else (access denied, bad request) is passed on as it is, a bug or a misconfiguration to log.
 */
export function translateS3Error(err: unknown, key: string): Error {
  const name = (err as { name?: string }).name;
  if (name === 'NoSuchKey' || name === 'NotFound' || httpStatusOf(err) === 404) return new StorageNotFoundError(key);
  if (isStoreUnavailable(err)) return storageUnavailable('s3', err);
  return err as Error;
}
