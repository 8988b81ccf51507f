import type { Hash } from 'node:crypto';
import { RegistryError } from '../../oci/errors.js';
import type { Digest } from '../../oci/digest.js';

/** Throws SIZE_INVALID / DIGEST_INVALID unless `hash` (already fed every byte) and `size` match. */
export function verifyContent(hash: Hash, size: number, expected: Digest, expectedSize?: number): void {
  if (expectedSize !== undefined && size !== expectedSize) {
    throw new RegistryError('SIZE_INVALID', { expected: expectedSize, actual: size });
  }
  const actual = `${expected.algorithm}:${hash.digest('hex')}`;
  if (actual !== expected.value) {
    throw new RegistryError('DIGEST_INVALID', { expected: expected.value, actual });
  }
}

/** Upload ids appear in keys and paths: the registry's are UUIDs; allow a safe superset. */
export function checkUploadId(id: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/.test(id)) throw new Error(`invalid upload id "${id}"`);
  return id;
}

/** Offsets as fixed-width decimal, so keys sort in offset order. */
export function offsetKey(offset: number): string {
  return String(offset).padStart(16, '0');
}
