/** A satisfiable byte range of a blob of known size; `end` is inclusive. */
export interface ByteRange {
  start: number;
  end: number;
}

export type RangeResult =
  | { kind: 'full' }
  | { kind: 'partial'; range: ByteRange }
  | { kind: 'unsatisfiable' };

const SINGLE_RANGE = /^bytes=(\d*)-(\d*)$/;

/**
 * Interprets a `Range` request header against a blob of `size` bytes (RFC 9110 §14). Units other
 * than bytes and multi-range requests are ignored (a full 200 is allowed); a malformed or
 * unsatisfiable byte range is 416.
 */
export function parseRange(header: string | undefined, size: number): RangeResult {
  if (header === undefined) return { kind: 'full' };
  const value = header.trim();
  if (!value.toLowerCase().startsWith('bytes=')) return { kind: 'full' };
  if (value.includes(',')) return { kind: 'full' };
  const match = SINGLE_RANGE.exec(value.replace(/\s+/g, '').replace(/^bytes=/i, 'bytes='));
  if (!match) return { kind: 'unsatisfiable' };
  const [, first, lastRaw] = match as unknown as [string, string, string];
  if (first === '' && lastRaw === '') return { kind: 'unsatisfiable' };
  if (first === '') {
    // Suffix range: the last N bytes.
    const length = Number(lastRaw);
    if (length === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'partial', range: { start: Math.max(0, size - length), end: size - 1 } };
  }
  const start = Number(first);
  if (!Number.isSafeInteger(start) || start >= size) return { kind: 'unsatisfiable' };
  // `last` is digits only, so a number (a huge one, past any blob, is clamped like any last-byte-pos past the end).
  const last = lastRaw === '' ? size - 1 : Number(lastRaw);
  if (last < start) return { kind: 'unsatisfiable' };
  return { kind: 'partial', range: { start, end: Math.min(last, size - 1) } };
}

/**
 * Parses an upload chunk's `Content-Range` (the spec's `<start>-<end>`, or RFC `bytes <start>-<end>/<len>`).
 * Returns undefined when malformed.
 */
export function parseUploadContentRange(header: string): ByteRange | undefined {
  const match = /^(?:bytes[ =])?(\d+)-(\d+)(?:\/(?:\d+|\*))?$/i.exec(header.trim());
  if (!match) return undefined;
  const start = Number(match[1]);
  const end = Number(match[2]);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || end < start) return undefined;
  return { start, end };
}
