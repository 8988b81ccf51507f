import { mkdir, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { ConfigError, loadRegistryConfig, type ListenAddress } from '../../../lib/config.js';
import { createLogger } from '../../../lib/log.js';
import { buildRegistry } from './app.js';
import { credentialsFor, readAuthsFile } from '../../../lib/upstreams.js';

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

function describe(address: string | AddressInfo | null): string {
  if (address === null) return 'unknown';
  if (typeof address === 'string') return address;
  return address.family === 'IPv6' ? `[${address.address}]:${address.port}` : `${address.address}:${address.port}`;
}

/**
 * Runs one registry worker in the foreground until SIGINT/SIGTERM, then stops accepting, lets
 * in-flight requests finish and resolves with the exit code.
 */
export async function runRegistry(argv: readonly string[]): Promise<number> {
  let config;
  try {
    config = loadRegistryConfig(argv);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`stevedore registry: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const log = createLogger('registry', config.logLevel);
  try {
    await mkdir(config.root, { recursive: true });
  } catch (err) {
    process.stderr.write(`stevedore registry: cannot create --root ${config.root}: ${(err as Error).message}\n`);
    return 2;
  }
  let upstreamCredentials;
  if (config.upstream && config.authFile) {
    try {
      upstreamCredentials = credentialsFor(await readAuthsFile(config.authFile), config.upstream);
    } catch (err) {
      process.stderr.write(`stevedore registry: invalid --auth-file (STEVEDORE_AUTH_FILE): ${(err as Error).message}\n`);
      return 2;
    }
  }
  const { app, context } = buildRegistry({ config, log, upstreamCredentials });
  const purged = await context.uploads.purgeStale(config.uploadTtl);
  if (purged > 0) log.info({ purged }, 'removed stale upload sessions and temp files');

  await listen(app, config.listen);
  const address = describe(app.server.address());
  if (config.listen.kind === 'tcp' && !LOOPBACK.has(config.listen.host)) {
    log.warn({ address }, 'listening on a non-loopback address: in the appliance, workers are reached only through the gateway');
  }
  log.info({
    address, root: config.root, readOnly: config.readOnly,
    upstream: config.upstream?.url.href, upstreamAuth: config.upstream ? (upstreamCredentials ? 'credentials' : 'anonymous') : undefined,
  }, 'registry listening');
  process.send?.('ready');

  return new Promise<number>((resolve) => {
    let closing = false;
    const stop = (signal: NodeJS.Signals) => {
      if (closing) return;
      closing = true;
      log.info({ signal }, 'shutting down: finishing in-flight requests');
      app.close().then(
        () => resolve(0),
        (err: unknown) => {
          log.error({ err }, 'error while shutting down');
          resolve(1);
        },
      );
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}

async function listen(app: ReturnType<typeof buildRegistry>['app'], address: ListenAddress): Promise<void> {
  if (address.kind === 'socket') {
    // A socket file left by a killed worker would make listen fail with EADDRINUSE.
    await rm(address.path, { force: true });
    await app.listen({ path: address.path });
    return;
  }
  await app.listen({ host: address.host, port: address.port });
}
