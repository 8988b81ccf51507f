import { lstat, mkdir, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { ConfigError, isSharedStore, loadRegistryConfig, storageLocationOf, type ListenAddress } from '../../../lib/config.js';
import { createLogger } from '../../../lib/log.js';
import { buildRegistry, type RegistryApp } from './app.js';
import { openConfiguredStorage } from '../../../lib/storage/driver/open.js';
import { openRemoteBlobSettings } from '../../../lib/storage/remote-blob-source.js';
import { credentialsFor, readAuthsFile } from '../../../lib/upstreams.js';

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);
/** How long in-flight requests may take to finish after SIGTERM. */
const SHUTDOWN_DEADLINE_MS = 30_000;

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
  const driver = await openConfiguredStorage(storageLocationOf(config, config.root), config);
  const remoteBlobs = await openRemoteBlobSettings(config);
  const peer = { url: config.peerUrl, token: config.peerToken, caPath: config.peerCa, leaseTtlMs: config.fillLeaseTime };
  const { app, context } = await buildRegistry({ config, log, sharedStore: isSharedStore(config), driver, remoteBlobs, upstreamCredentials, peer });
  try {
    const purged = await context.uploads.purgeStale(config.uploadTtl);
    if (purged > 0) log.info({ purged }, 'removed stale upload sessions and temp files');
  } catch (err) {
    // A store that is down at start-up: serve anyway (requests answer 503 until it is back).
    log.warn({ err, storage: driver.location }, 'start-up sweep of stale uploads failed');
  }

  try {
    await listen(app, config.listen);
  } catch (err) {
    const where = config.listen.kind === 'socket' ? config.listen.path : `${config.listen.host}:${config.listen.port}`;
    process.stderr.write(`stevedore registry: cannot listen on ${where} (--listen, STEVEDORE_LISTEN): ${(err as Error).message}\n`);
    await app.close().catch(() => {});
    return 2;
  }
  const address = describe(app.server.address());
  if (config.listen.kind === 'tcp' && !LOOPBACK.has(config.listen.host)) {
    log.warn({ address }, 'listening on a non-loopback address: in the appliance, workers are reached only through the gateway');
  }
  log.info({
    address, root: config.root, storage: driver.location, readOnly: config.readOnly,
    upstream: config.upstream?.url.href, upstreamAuth: config.upstream ? (upstreamCredentials ? 'credentials' : 'anonymous') : undefined,
    // Node's own options (the appliance sets V8's, lib/ecosystem.ts workerNodeArgs).
    nodeOptions: process.execArgv,
  }, 'registry listening');
  process.send?.('ready');

  return new Promise<number>((resolve) => {
    let closing = false;
    const stop = (signal: NodeJS.Signals) => {
      if (closing) return;
      closing = true;
      log.info({ signal }, 'shutting down: finishing in-flight requests');
      // close() ends the connections that are idle when it is called; a keep-alive connection whose
      // request finishes later would stay open until its idle timeout (72 s) and hold the exit.
      const sweep = setInterval(() => app.server.closeIdleConnections(), 50);
      // A stalled client must not hold the worker forever: after the deadline, cut what is left
      // (before PM2's kill_timeout would SIGKILL the process).
      const deadline = setTimeout(() => {
        log.warn({ afterMs: SHUTDOWN_DEADLINE_MS }, 'shutdown deadline reached: closing remaining connections');
        app.server.closeAllConnections();
      }, SHUTDOWN_DEADLINE_MS);
      deadline.unref();
      app.close().finally(() => clearInterval(sweep)).then(
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

async function listen(app: RegistryApp['app'], address: ListenAddress): Promise<void> {
  if (address.kind === 'socket') {
    // A socket file left by a killed worker would make listen fail with EADDRINUSE; anything else at
    // that path (a mistyped --listen naming a real file) is not ours to delete.
    const existing = await lstat(address.path).catch(() => undefined);
    if (existing && !existing.isSocket()) throw new Error(`${address.path} exists and is not a unix socket`);
    if (existing) await rm(address.path, { force: true });
    await app.listen({ path: address.path });
    return;
  }
  await app.listen({ host: address.host, port: address.port });
}
