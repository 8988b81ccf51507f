import { RegistryError } from './errors.js';
import { tryParseDigest, type Digest } from './digest.js';

// Regular expressions from the OCI distribution-spec v1.1 ("Pulling manifests").
const NAME_COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
export const NAME_PATTERN = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
export const TAG_PATTERN = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
/** distribution caps a repository name at 255 characters; so do we (it also bounds path length). */
export const MAX_NAME_LENGTH = 255;

export function isValidName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && NAME_PATTERN.test(name);
}

/** Validates a repository name; its components become directories, so this is a security boundary. */
export function parseRepositoryName(name: string): string {
  if (!isValidName(name)) {
    throw new RegistryError('NAME_INVALID', { name: name.slice(0, 300) }, {
      message: `invalid repository name: must match ${NAME_PATTERN.source} and be at most ${MAX_NAME_LENGTH} characters`,
    });
  }
  return name;
}

export function isValidTag(tag: string): boolean {
  return TAG_PATTERN.test(tag);
}

export function parseTag(tag: string): string {
  if (!isValidTag(tag)) {
    throw new RegistryError('MANIFEST_INVALID', { tag: tag.slice(0, 200) }, {
      message: `invalid tag: must match ${TAG_PATTERN.source}`,
    });
  }
  return tag;
}

/** A manifest reference: a tag or a digest. */
export type Reference = { kind: 'tag'; tag: string } | { kind: 'digest'; digest: Digest };

/** Parses `<reference>` of `/v2/<name>/manifests/<reference>`. */
export function parseReference(value: string): Reference {
  if (value.includes(':')) {
    const digest = tryParseDigest(value);
    if (!digest) {
      throw new RegistryError('DIGEST_INVALID', { reference: value.slice(0, 200) }, {
        message: 'invalid manifest reference: not a tag, and not a sha256/sha512 digest',
      });
    }
    return { kind: 'digest', digest };
  }
  if (!isValidTag(value)) {
    throw new RegistryError('MANIFEST_INVALID', { reference: value.slice(0, 200) }, {
      message: `invalid tag: must match ${TAG_PATTERN.source}`,
    });
  }
  return { kind: 'tag', tag: value };
}

/**
 * Parses `<reference>` of a manifest read or delete. Something that is neither a valid tag nor a
 * valid digest cannot name a stored manifest, so it is 404 MANIFEST_UNKNOWN (as the OCI conformance
 * suite requires for `.INVALID_MANIFEST_NAME`), not the 400 a push of it gets.
 */
export function lookupReference(name: string, value: string): Reference {
  try {
    return parseReference(value);
  } catch (err) {
    if (!(err instanceof RegistryError)) throw err;
    throw new RegistryError('MANIFEST_UNKNOWN', { name, reference: value.slice(0, 200) }, {
      message: 'manifest unknown: the reference is neither a valid tag nor a valid digest',
    });
  }
}
