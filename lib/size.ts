const POWERS: Record<string, number> = { '': 0, k: 1, m: 2, g: 3, t: 4, p: 5, e: 6 };

/**
 * Parses human sizes as the cleaner's variables use them, case-insensitive, decimals allowed:
 * `10G`, `10Gi`, `10GiB` and bare letters are powers of 1024 (registry-cache's meaning of `10G`);
 * `10kB`, `10MB`, `10GB` are powers of 1000; plain numbers and `B` are bytes.
 */
export function parseSize(input: string): number {
  // `i` only after a prefix: `10i` or `10iB` is not a size.
  const match = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*(?:([kmgtpe])(i?))?(b?)\s*$/i.exec(input);
  if (!match) throw new Error(`invalid size "${input}": use e.g. 500M, 10G, 1.5GiB, 800MB`);
  const [, number, prefix = '', binary = '', byteSuffix] = match as unknown as [string, string, string | undefined, string | undefined, string];
  const power = POWERS[prefix.toLowerCase()]!;
  // A lone `B` after a prefix without `i` (kB, MB, GB) is SI; a bare prefix or `iB` is binary.
  const base = power > 0 && byteSuffix !== '' && binary === '' ? 1000 : 1024;
  const bytes = Number(number) * base ** power;
  if (!Number.isFinite(bytes)) throw new Error(`invalid size "${input}": too large`);
  return Math.round(bytes);
}
