import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { buildEcosystem } from '../lib/ecosystem.js';

const ECOSYSTEM = fileURLToPath(new URL('../../ecosystem.config.js', import.meta.url));

/**
 * `stevedore start`: the whole appliance in the foreground under pm2-runtime (PID 1 behaviour in a
 * container: signals forwarded, apps restarted when they crash).
 */
export async function runStart(argv: readonly string[]): Promise<number> {
  if (argv.length > 0) {
    const what = argv[0]!.startsWith('-') ? `unknown option ${argv[0]}` : `unexpected argument "${argv[0]}"`;
    process.stderr.write(`stevedore start: ${what}: it takes no arguments, configure it with environment variables (see stevedore start --help)\n`);
    return 2;
  }
  try {
    // Validate the configuration here, where a bad value is one clear message instead of PM2 noise.
    buildEcosystem(process.env);
  } catch (err) {
    process.stderr.write(`stevedore start: ${(err as Error).message}\n`);
    return 2;
  }
  const pm2Runtime = createRequire(import.meta.url).resolve('pm2/bin/pm2-runtime');
  const child = spawn(process.execPath, [pm2Runtime, 'start', ECOSYSTEM], { stdio: 'inherit', env: process.env });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => child.kill(signal));
  return new Promise((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal ? 0 : 1))));
}
