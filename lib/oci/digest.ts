import { createHash, type Hash } from 'node:crypto';
import { RegistryError } from './errors.js';

/** Algorithms a registry must verify: sha256 (everywhere) and sha512 (spec, optional but cheap). */
export type DigestAlgorithm = 'sha256' | 'sha512';

const HEX_LENGTH: Record<DigestAlgorithm, number> = { sha256: 64, sha512: 128 };

/** A parsed, validated `algorithm:hex` digest. The string form is canonical (lower-case hex). */
export interface Digest {
  readonly algorithm: DigestAlgorithm;
  readonly hex: string;
  readonly value: string;
}

// The spec's grammar is wider (`[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+`), but a digest we
// cannot verify is one we must not store, so only registered algorithms with exact hex lengths pass.
const DIGEST_PATTERN = /^(sha256|sha512):([a-f0-9]+)$/;

export function tryParseDigest(value: string): Digest | undefined {
  const match = DIGEST_PATTERN.exec(value);
  if (!match) return undefined;
  const algorithm = match[1] as DigestAlgorithm;
  const hex = match[2]!;
  if (hex.length !== HEX_LENGTH[algorithm]) return undefined;
  return { algorithm, hex, value };
}

/** Parses a digest from a request; anything malformed is DIGEST_INVALID (400), never a 500. */
export function parseDigest(value: string): Digest {
  const digest = tryParseDigest(value);
  if (!digest) {
    throw new RegistryError('DIGEST_INVALID', { digest: value.slice(0, 200) }, {
      message: 'invalid digest: expected sha256:<64 hex> or sha512:<128 hex>',
    });
  }
  return digest;
}

export function createDigester(algorithm: DigestAlgorithm): Hash {
  return createHash(algorithm);
}

export function digestOf(data: Buffer | string, algorithm: DigestAlgorithm = 'sha256'): Digest {
  const hex = createHash(algorithm).update(data).digest('hex');
  return { algorithm, hex, value: `${algorithm}:${hex}` };
}

export function digestFromHash(algorithm: DigestAlgorithm, hash: Hash): Digest {
  const hex = hash.digest('hex');
  return { algorithm, hex, value: `${algorithm}:${hex}` };
}
