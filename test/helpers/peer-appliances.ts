import type { ChildProcess } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import { join } from 'node:path';
import type { AppliancePlan } from '../../lib/appliance.js';
import { createLogger } from '../../lib/log.js';
import { AccessLogWriter } from '../../services/gateway/src/access-log.js';
import { GatewayMetrics } from '../../services/gateway/src/metrics.js';
import { createGateway } from '../../services/gateway/src/server.js';
import { startSocketWorker } from './gateway.js';
import { freePort, tempDir } from './processes.js';
import type { TestStorage } from './storage-targets.js';

/**
 * N appliances on one store, each reduced to what a shared cache fill involves: its gateway (in this
 * process, admitting peers with the token) and a real cache worker process for one upstream (alias
 * `up`), each with its own local root and run dir, all with STEVEDORE_SHARED_STORE and a peer URL.
 * Cheaper than N whole PM2 appliances (test/helpers/cluster.ts), and a worker can be SIGKILLed alone.
 */

export const PEER_TOKEN = 'peer-token-for-the-tests-0123456789';

export interface PeerAppliance {
  url: string;
  worker: ChildProcess;
  output(): string;
  /** The appliance dies: its worker is SIGKILLed and its gateway drops every connection and stops listening. */
  kill(): Promise<void>;
  close(): Promise<void>;
}

export async function startPeerAppliance(storage: TestStorage, upstreamUrl: string, env: Record<string, string> = {}): Promise<PeerAppliance> {
  const dir = await tempDir('stevedore-peer-');
  const root = join(dir, 'root');
  const run = join(dir, 'run');
  await mkdir(run, { mode: 0o700 });
  const upstream = new URL(upstreamUrl).host;
  const socketPath = join(run, 'up.sock');
  const plan: AppliancePlan = {
    hosted: { name: 'registry-hosted', kind: 'hosted', prefixes: [], socketPath: join(run, 'hosted.sock') },
    proxies: [{ name: 'registry-up', kind: 'proxy', upstream, upstreamUrl, prefixes: [upstream, 'up'], socketPath }],
  };
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const accessLog = new AccessLogWriter(join(dir, 'access.log'));
  const gateway: Server = createGateway({
    plan, log: createLogger('gateway', 'silent'), users: undefined, realm: 'Test', accessLog, metrics: new GatewayMetrics(join(root, 'blobs')), root,
    storage: storage.driver, sharedStore: true, peerToken: PEER_TOKEN, workerWaitMs: 1_000,
  });
  await new Promise<void>((resolve) => gateway.listen(port, '127.0.0.1', resolve));
  const { worker, output } = await startSocketWorker(socketPath, ['--root', root, '--upstream', upstreamUrl, ...storage.args], {
    ...storage.env, STEVEDORE_SHARED_STORE: 'true', STEVEDORE_PEER_URL: url, STEVEDORE_PEER_TOKEN: PEER_TOKEN, ...env,
  });
  const exited = new Promise((resolve) => worker.once('exit', resolve));
  const stopWorker = async (signal: NodeJS.Signals) => {
    if (worker.exitCode === null && worker.signalCode === null) worker.kill(signal);
    await exited;
  };
  return {
    url, worker, output,
    async kill() {
      gateway.closeAllConnections();
      gateway.close();
      await stopWorker('SIGKILL');
    },
    async close() {
      if (gateway.listening) await new Promise<void>((resolve) => { gateway.close(() => resolve()); gateway.closeAllConnections(); });
      accessLog.close();
      await stopWorker('SIGTERM');
      await rm(dir, { recursive: true, force: true });
    },
  };
}
