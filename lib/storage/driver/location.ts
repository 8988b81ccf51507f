import { isAbsolute, resolve } from 'node:path';

/** Where a store lives: `--storage` / `STEVEDORE_STORAGE`, or the `--root`/`--store` of today. */
export type StorageLocation =
  | { kind: 'filesystem'; root: string }
  | { kind: 's3'; bucket: string; prefix: string };

// S3's bucket naming rules (the subset every provider accepts): 3-63 lower-case letters, digits, dots
// and hyphens, starting and ending with a letter or digit, not an IP address.
const BUCKET_PATTERN = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/**
 * Parses a storage location: `s3://BUCKET[/PREFIX]` is the S3 driver, anything else a filesystem
 * path (relative paths resolve against `cwd`). Throws an Error naming what is wrong, for the config
 * module to report with the option's name.
 */
export function parseStorageLocation(value: string, cwd = process.cwd()): StorageLocation {
  const text = value.trim();
  if (text === '') throw new Error('storage location is empty: expected a directory or s3://BUCKET[/PREFIX]');
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//.exec(text);
  if (!scheme) return { kind: 'filesystem', root: isAbsolute(text) ? resolve(text) : resolve(cwd, text) };
  if (scheme[1]!.toLowerCase() !== 's3') {
    throw new Error(`unsupported storage location "${text}": expected a directory or s3://BUCKET[/PREFIX]`);
  }
  const rest = text.slice(scheme[0].length);
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const prefix = (slash < 0 ? '' : rest.slice(slash + 1)).replace(/\/+$/, '');
  if (!BUCKET_PATTERN.test(bucket) || bucket.includes('..') || /^\d+\.\d+\.\d+\.\d+$/.test(bucket)) {
    throw new Error(`invalid S3 bucket name "${bucket}" in "${text}": 3-63 characters a-z, 0-9, '.', '-'`);
  }
  if (prefix !== '') {
    const parts = prefix.split('/');
    if (parts.some((p) => p === '' || p === '.' || p === '..') || /[\0\\?#]/.test(prefix)) {
      throw new Error(`invalid S3 key prefix "${prefix}" in "${text}": '/'-separated names, no empty, '.' or '..' parts`);
    }
  }
  return { kind: 's3', bucket, prefix };
}

/** The canonical text of a location, for logs and for passing to child processes. */
export function formatStorageLocation(location: StorageLocation): string {
  if (location.kind === 'filesystem') return location.root;
  return `s3://${location.bucket}${location.prefix ? `/${location.prefix}` : ''}`;
}
