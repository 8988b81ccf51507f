import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { AppliancePlan } from '../../lib/appliance.js';
import { createLogger } from '../../lib/log.js';
import { AccessLogWriter } from '../../services/gateway/src/access-log.js';
import { GatewayMetrics } from '../../services/gateway/src/metrics.js';
import { createGateway } from '../../services/gateway/src/server.js';
import { sleep, type HttpResult } from './appliance.js';
import { STEVEDORE_BIN } from './processes.js';
import type { TestStorage } from './storage-targets.js';

/** One request to a unix socket (a worker, as the gateway reaches it). */
export function callSocket(socketPath: string, method: string, path: string, headers: Record<string, string> = {}): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, ms: 0, text: () => body.toString('utf8'), json: <T>() => JSON.parse(body.toString('utf8')) as T });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** Headers that describe the content (the transport's Date, Connection and Keep-Alive left out). */
export function contentHeaders(headers: IncomingHttpHeaders): Record<string, unknown> {
  const { date: _date, connection: _connection, 'keep-alive': _keepAlive, ...rest } = headers;
  return rest;
}

/**
 * A plan with the hosted worker and a cache worker of `up.example:5000` (alias `up`), plus any
 * `more` cache workers, their sockets in `run`.
 */
export function testPlan(run: string, more: AppliancePlan['proxies'] = []): AppliancePlan {
  return {
    hosted: { name: 'registry-hosted', kind: 'hosted', prefixes: [], socketPath: join(run, 'hosted.sock') },
    proxies: [
      { name: 'registry-up.example_5000', kind: 'proxy', upstream: 'up.example:5000', upstreamUrl: 'https://up.example:5000/', prefixes: ['up.example:5000', 'up'], socketPath: join(run, 'up.sock') },
      ...more,
    ],
  };
}

export interface InProcessGateway {
  root: string;
  plan: AppliancePlan;
  /** The hosted worker (a real `stevedore registry` on the plan's unix socket). */
  worker: ChildProcess;
  gateway: Server;
  url: string;
  metrics: GatewayMetrics;
  accessLog: AccessLogWriter;
  accessLogPath: string;
  close(): Promise<void>;
}

/** Starts `stevedore registry` on the unix socket the gateway reaches it at; resolves once it listens. */
export async function startSocketWorker(socketPath: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ worker: ChildProcess; output(): string }> {
  const worker = spawn(process.execPath, [STEVEDORE_BIN, 'registry', '--listen', socketPath, ...args, '--log-level', 'info'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  let output = '';
  worker.stdout!.on('data', (c: Buffer) => { output += c.toString(); });
  worker.stderr!.on('data', (c: Buffer) => { output += c.toString(); });
  for (let i = 0; i < 150 && !output.includes('"registry listening"'); i++) await sleep(100);
  assert.ok(output.includes('"registry listening"'), `worker did not start: ${output}`);
  return { worker, output: () => output };
}

/**
 * A gateway in this process with a real hosted worker on a unix socket, and one cache worker
 * (`up.example:5000`, alias `up`) in the plan that never runs: what it would serve is written to
 * its store by the test.
 */
export async function startGatewayWithHostedWorker(dir: string, options: { tagTtlMs?: number; storage?: TestStorage; sharedStore?: boolean } = {}): Promise<InProcessGateway> {
  // The store: a TestStorage (a directory or an S3 prefix, with its own local root), else `<dir>/root`.
  const root = options.storage?.root ?? join(dir, 'root');
  const run = join(dir, 'run');
  await mkdir(run, { mode: 0o700 });
  const plan = testPlan(run);
  const { worker } = await startSocketWorker(plan.hosted.socketPath, ['--root', root, ...(options.storage?.args ?? [])], {
    ...options.storage?.env, ...(options.sharedStore !== undefined ? { STEVEDORE_SHARED_STORE: String(options.sharedStore) } : {}),
  });

  const accessLogPath = join(dir, 'logs', 'access.log');
  const accessLog = new AccessLogWriter(accessLogPath);
  const metrics = new GatewayMetrics(join(root, 'blobs'));
  const gateway = createGateway({
    plan, log: createLogger('gateway', 'silent'), users: undefined, realm: 'Test Realm', accessLog, metrics, root,
    ...(options.storage ? { storage: options.storage.driver } : {}),
    // The plan's cache worker never runs: requests that need it give up waiting after 1 s, not 10 s.
    workerWaitMs: 1_000,
    ...(options.tagTtlMs !== undefined ? { tagTtlMs: options.tagTtlMs } : {}),
    ...(options.sharedStore !== undefined ? { sharedStore: options.sharedStore } : {}),
  });
  await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(gateway.address() as AddressInfo).port}`;
  return {
    root, plan, worker, gateway, url, metrics, accessLog, accessLogPath,
    async close() {
      await new Promise<void>((resolve) => { gateway.close(() => resolve()); gateway.closeAllConnections(); });
      accessLog.close();
      if (worker.exitCode === null && worker.signalCode === null) {
        worker.kill('SIGCONT');
        worker.kill('SIGTERM');
        await new Promise((resolve) => worker.once('exit', resolve));
      }
    },
  };
}
