/** A benchmark setting: `--flag VALUE`, `--flag=VALUE` or a bare `--flag` (true), else the variable, else the fallback. */
export function option(flag: string, env: string, fallback: string): string {
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === `--${flag}`) {
      const next = argv[i + 1];
      return next === undefined || next.startsWith('--') ? 'true' : next;
    }
    if (arg.startsWith(`--${flag}=`)) return arg.slice(flag.length + 3);
  }
  return process.env[env] ?? fallback;
}

/** A numeric benchmark setting (see option()); a value outside the bounds stops the run with a message naming it. */
export function numberOption(flag: string, env: string, fallback: number, bounds: { min: number; max?: number; integer?: boolean }): number {
  const raw = option(flag, env, String(fallback));
  const value = Number(raw);
  const { min, max, integer = false } = bounds;
  if (!Number.isFinite(value) || (integer && !Number.isInteger(value)) || value < min || (max !== undefined && value > max)) {
    throw new Error(`--${flag} (${env}) must be ${integer ? 'an integer' : 'a number'} ${max === undefined ? `>= ${min}` : `in ${min}..${max}`}, got "${raw}"`);
  }
  return value;
}
