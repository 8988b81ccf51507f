import { existsSync, readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { accessLogPathOf, adminsPathOf, ConfigError, isSharedStore, loadApplianceConfig, loadCleanerConfig, storageLocationOf } from '../../../lib/config.js';
import { planAppliance, readPullSecret } from '../../../lib/appliance.js';
import { createLogger } from '../../../lib/log.js';
import { openConfiguredStorage } from '../../../lib/storage/driver/open.js';
import { openRemoteBlobSettings } from '../../../lib/storage/remote-blob-source.js';
import { AccessLogWriter } from './access-log.js';
import { UserDirectory } from './auth.js';
import { GatewayMetrics } from './metrics.js';
import { createGateway } from './server.js';

/** Runs the gateway in the foreground until SIGINT/SIGTERM. */
export async function runGateway(argv: readonly string[]): Promise<number> {
  let config;
  let plan;
  let cleaner;
  try {
    config = loadApplianceConfig(argv);
    // The console shows and plans with the cleaner's settings (CLEANER_*, same environment).
    cleaner = loadCleanerConfig([]);
    plan = planAppliance(config, readPullSecret(config.pullSecretPath));
  } catch (err) {
    process.stderr.write(`stevedore gateway: ${(err as Error).message}\n`);
    return err instanceof ConfigError ? 2 : 1;
  }
  const log = createLogger('gateway', config.logLevel);

  let tls: { cert: Buffer; key: Buffer } | undefined;
  if (config.tlsCertPath && config.tlsKeyPath) {
    tls = { cert: readFileSync(config.tlsCertPath), key: readFileSync(config.tlsKeyPath) };
  } else if (existsSync(config.tlsCertsPath)) {
    // registry-cache's convention: certificate and key in one PEM.
    const pem = readFileSync(config.tlsCertsPath);
    tls = { cert: pem, key: pem };
  } else {
    log.warn({ tlsCertsPath: config.tlsCertsPath }, 'no TLS certificate found: serving plain HTTP (clients need --tls-verify=false / insecure registry settings)');
  }
  let users: UserDirectory | undefined;
  if (config.auth === 'htpasswd') {
    users = new UserDirectory(config.htpasswdPath, adminsPathOf(config), log);
    if (!existsSync(config.htpasswdPath)) log.warn({ path: config.htpasswdPath }, 'REGISTRY_AUTH=htpasswd but the htpasswd file does not exist yet: nobody can log in until a user is added');
  } else {
    log.warn('REGISTRY_AUTH is not htpasswd: anyone who reaches the gateway may pull, push and delete');
  }
  const accessLog = new AccessLogWriter(accessLogPathOf(config));
  const storage = await openConfiguredStorage(storageLocationOf(config, config.root), config);
  const metrics = new GatewayMetrics(storage);
  const remoteBlobs = await openRemoteBlobSettings(config);
  const server = createGateway({ plan, log, users, realm: config.realm, accessLog, metrics, root: config.root, storage, sharedStore: isSharedStore(config), remoteBlobs, peerToken: config.peerToken, tagTtlMs: config.tagTtl, workerWaitMs: config.workerWait,
    console: { accessLogPath: accessLogPathOf(config), cleaner: { maxSize: cleaner.maxSize, thresholdPercentage: cleaner.thresholdPercentage, grace: cleaner.grace, runEvery: cleaner.runEvery } },
    ...(tls ? { tls } : {}) });

  const listen = config.listen;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if (listen.kind === 'socket') server.listen(listen.path, resolve);
    else server.listen(listen.port, listen.host, resolve);
  });
  const address = server.address() as AddressInfo | string;
  log.info({
    address: typeof address === 'string' ? address : `${address.address}:${address.port}`,
    tls: Boolean(tls), auth: config.auth,
    upstreams: plan.proxies.map((p) => ({ host: p.upstream, prefixes: p.prefixes })),
    // Node's own options (the appliance sets V8's, lib/ecosystem.ts gatewayNodeArgs).
    nodeOptions: process.execArgv,
  }, 'gateway listening');
  process.send?.('ready');

  return new Promise<number>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      log.info({ signal }, 'shutting down: finishing in-flight requests');
      // close() ends the connections idle when it is called; one whose request finishes later would
      // stay open for the keep-alive timeout (120 s) and hold the exit, so idle ones are swept.
      const sweep = setInterval(() => server.closeIdleConnections(), 50);
      server.close(() => {
        clearInterval(sweep);
        accessLog.close();
        resolve(0);
      });
      server.closeIdleConnections();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
