/**
 * Web console API timings on a large store: 10,000 tagged images of 10 blobs each (100,000
 * blobs), half hosted, half cached under one upstream, in 500 repositories of each, plus an
 * access log of 200,000 lines. The gateway runs in this process (createGateway with the console);
 * each endpoint is timed over HTTP on loopback, cold (first call) and warm (median of 5).
 *
 *   npm run bench:console
 *   BENCH_IMAGES=1000 npm run bench:console          # quick run (10,000 blobs)
 *   node dist/bench/console-bench.js --images 10000 --json out.json
 */
import { compactServedIndex } from '../lib/storage/served-index.js';
import { writeFileSync } from 'node:fs';
import { appendFile, mkdir, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { ACCESS_LOG_MESSAGE } from '../lib/access-log.js';
import type { AppliancePlan } from '../lib/appliance.js';
import { createLogger } from '../lib/log.js';
import { AccessLogWriter } from '../services/gateway/src/access-log.js';
import { GatewayMetrics } from '../services/gateway/src/metrics.js';
import { createGateway } from '../services/gateway/src/server.js';
import { tempDir } from '../test/helpers/processes.js';
import { SyntheticStore } from '../test/helpers/synthetic-store.js';
import { numberOption, option } from './options.js';

const IMAGES = numberOption('images', 'BENCH_IMAGES', 10_000, { min: 10, integer: true });
const LAYERS = 8;
const REPOS = 500;
const LOG_LINES = numberOption('log-lines', 'BENCH_LOG_LINES', 200_000, { min: 0, integer: true });
const JSON_PATH = option('json', 'BENCH_JSON', '');
const UPSTREAM = 'registry.example.com';
const DAY = 86_400_000;

async function pool<T>(items: T[], width: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await task(items[next++]!);
  }));
}

async function main(): Promise<void> {
  const root = await tempDir('console-bench-');
  const store = new SyntheticStore(root);
  const started = Date.now();
  const now = Date.now();
  const images = Array.from({ length: IMAGES }, (_, i) => i);
  let first: { repo: string; digest: string } | undefined;
  await pool(images, 16, async (i) => {
    const cached = i % 2 === 0;
    const layout = cached ? store.cache(UPSTREAM) : store.hosted;
    const repo = `${cached ? 'mirror' : 'team'}/app-${Math.floor(i / 2) % REPOS}`;
    const atimeMs = now - Math.floor(Math.random() * 30 * DAY);
    const image = await store.image(layout, repo, Array.from({ length: LAYERS }, () => 256), { tag: `v${i}`, times: { atimeMs, mtimeMs: atimeMs - DAY } });
    if (cached && !first) first = { repo, digest: image.manifest.digest.value };
  });
  // The served times are batches as the logger writes them; a cleaner run folds them into one snapshot.
  await compactServedIndex(store.driver);
  const buildMs = Date.now() - started;
  const accessLogPath = join(root, 'logs', 'access.log');
  await mkdir(join(root, 'logs'), { recursive: true });
  for (let written = 0; written < LOG_LINES; written += 10_000) {
    const lines: string[] = [];
    for (let j = 0; j < Math.min(10_000, LOG_LINES - written); j++) {
      lines.push(JSON.stringify({ level: 30, time: new Date(now - (LOG_LINES - written - j) * 1000).toISOString(), msg: ACCESS_LOG_MESSAGE, user: 'reader', method: 'GET', path: `/v2/${UPSTREAM}/mirror/app-${j % REPOS}/blobs/sha256:${'0'.repeat(64)}`, upstream: UPSTREAM, repository: `mirror/app-${j % REPOS}`, reference: `sha256:${'0'.repeat(64)}`, kind: 'blob', status: 200, bytes: 256, durationMs: 0.4 }));
    }
    await appendFile(accessLogPath, `${lines.join('\n')}\n`);
  }

  const plan: AppliancePlan = {
    hosted: { name: 'registry-hosted', kind: 'hosted', prefixes: [], socketPath: join(root, 'none-hosted.sock') },
    proxies: [{ name: 'registry-cache', kind: 'proxy', upstream: UPSTREAM, upstreamUrl: `https://${UPSTREAM}/`, prefixes: [UPSTREAM], socketPath: join(root, 'none-cache.sock') }],
  };
  const log = createLogger('bench', 'silent');
  const metrics = new GatewayMetrics(join(root, 'blobs'));
  const accessLog = new AccessLogWriter(join(root, 'logs', 'bench-gateway.log'));
  const startGateway = async () => {
    const gateway = createGateway({
      plan, log, users: undefined, realm: 'bench', accessLog, metrics, root,
      console: { accessLogPath, cleaner: { maxSize: 1024 ** 2, thresholdPercentage: 20, grace: 0, runEvery: 30 * 60_000 } },
    });
    await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));
    return gateway;
  };
  let server = await startGateway();
  let base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const time = async (path: string): Promise<{ ms: number; bytes: number }> => {
    const t0 = performance.now();
    const res = await fetch(`${base}${path}`);
    const body = await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`${path}: ${res.status} ${Buffer.from(body).toString()}`);
    return { ms: performance.now() - t0, bytes: body.byteLength };
  };
  const endpoints = [
    '/api/v1/overview',
    '/api/v1/evictions?per_page=50',
    '/api/v1/evictions?per_page=50&fresh=1',
    '/api/v1/repositories?per_page=50',
    '/api/v1/repositories?q=app-42&per_page=50',
    `/api/v1/tags?source=${UPSTREAM}&repository=${first!.repo}`,
    `/api/v1/image?source=${UPSTREAM}&repository=${first!.repo}&digest=${first!.digest}`,
    '/api/v1/pulls?limit=100',
    '/api/v1/top',
    '/api/v1/history',
  ];
  const results: Array<{ path: string; coldMs: number; warmMs: number; bytes: number }> = [];
  // The first overview waits for the gateway's start-up walk of the store (the history's first point).
  for (const path of endpoints) {
    const cold = await time(path);
    const warm: number[] = [];
    for (let i = 0; i < 5; i++) warm.push((await time(path)).ms);
    warm.sort((a, b) => a - b);
    results.push({ path, coldMs: Math.round(cold.ms), warmMs: Math.round(warm[2]!), bytes: cold.bytes });
  }
  // A restart: the new gateway's first overview and ranking come from what the first one stored
  // (_state/inventory.json, _state/console/largest-images.json), not from a walk of the store.
  await new Promise((resolve) => setTimeout(resolve, 1000));
  server.close();
  server = await startGateway();
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const restarted: Array<{ path: string; ms: number }> = [];
  for (const path of ['/api/v1/overview', '/api/v1/top']) restarted.push({ path, ms: Math.round((await time(path)).ms) });
  server.close();
  accessLog.close();
  process.stdout.write(`store: ${IMAGES} tags, ${IMAGES * (LAYERS + 2)} blobs in ${REPOS * 2} repositories (built in ${(buildMs / 1000).toFixed(1)} s); access log ${LOG_LINES} lines\n`);
  process.stdout.write('endpoint                                                     cold ms  warm ms (median of 5)  response bytes\n');
  for (const r of results) process.stdout.write(`${r.path.slice(0, 60).padEnd(60)} ${String(r.coldMs).padStart(7)}  ${String(r.warmMs).padStart(7)}  ${String(r.bytes).padStart(10)}\n`);
  for (const r of restarted) process.stdout.write(`${`${r.path} (first after a restart)`.slice(0, 60).padEnd(60)} ${String(r.ms).padStart(7)}\n`);
  if (JSON_PATH) writeFileSync(JSON_PATH, JSON.stringify({ images: IMAGES, blobs: IMAGES * (LAYERS + 2), logLines: LOG_LINES, results, restarted }, null, 2));
  await rm(root, { recursive: true, force: true });
}

await main();
