const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;

/**
 * Parses durations such as `30m`, `1h2m3s`, `1h 30m`, `500ms` or `2d` (Go-style units, as the
 * registry-cache variables use). A bare number is seconds. Returns milliseconds; throws on anything else.
 */
export function parseDuration(input: string): number {
  const trimmed = input.trim();
  if (/^\d+(?:\.\d+)?$/.test(trimmed)) return Math.round(Number(trimmed) * 1000);
  // Spaces may separate parts (`1h 30m`), not digits (`5 5` is not 55s).
  const value = trimmed.replace(/([a-z])\s+/g, '$1');
  if (value === '') throw new Error('empty duration');
  let total = 0;
  PART.lastIndex = 0;
  let consumed = 0;
  let match: RegExpExecArray | null;
  while ((match = PART.exec(value)) !== null) {
    total += Number(match[1]) * UNIT_MS[match[2]!]!;
    consumed = PART.lastIndex;
  }
  if (consumed !== value.length) {
    throw new Error(`invalid duration "${input}": use e.g. 30s, 5m, 1h2m3s, 500ms, 2d`);
  }
  return Math.round(total);
}

export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
