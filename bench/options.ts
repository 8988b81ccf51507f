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
