/**
 * What coordinating cache fills through the store costs (issue 12): concurrent cold skopeo pulls of
 * one image through 1 appliance and through 3 appliances on one S3 store (Ceph RGW), with the fills
 * shared (STEVEDORE_SHARED_STORE: one fill lease per blob, peers stream the holder's fill) and, for
 * reference, 3 appliances that do not coordinate (each fetches every blob, as distribution's replicas
 * do). Prints wall time, upstream GETs per blob (the upstream's access log), and the time of the
 * lease operations a fill adds (acquire + delete by the filler; a failed acquire by a peer), and the
 * S3 requests (Ceph RGW's access log, every request of every appliance, background services
 * included) of the cold pulls and of one warm pull afterwards.
 *
 *   npm run bench:cluster -- [LAYERS=4] [LAYER_MIB=16] [PULLS=8]
 */
import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { acquireLease } from '../lib/storage/lease.js';
import { buildImage } from '../test/helpers/oci-image.js';
import { startPeerAppliance, type PeerAppliance } from '../test/helpers/peer-appliances.js';
import { startDistribution } from '../test/helpers/processes.js';
import { blobGets, pull, seed } from '../test/helpers/proxy-fixtures.js';
import { RgwLog } from '../test/helpers/rgw-log.js';
import { testStorage } from '../test/helpers/storage-targets.js';

const layers = Number(process.argv[2] ?? 4);
const layerMiB = Number(process.argv[3] ?? 16);
const pulls = Number(process.argv[4] ?? 8);

/** All S3 requests since `mark` (every prefix: the bench's appliances are the store's only users), by operation. */
async function s3Requests(log: RgwLog, mark: number): Promise<{ total: number; byOperation: Record<string, number> }> {
  const byOperation: Record<string, number> = {};
  let total = 0;
  for (const stats of (await log.since(mark)).values()) {
    total += stats.requests;
    for (const [op, n] of Object.entries(stats.byOperation)) byOperation[op] = (byOperation[op] ?? 0) + n;
  }
  return { total, byOperation };
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

const upstream = await startDistribution();
const rows: Record<string, unknown>[] = [];
try {
  const scenarios = [
    { name: '1 appliance', appliances: 1, shared: true },
    { name: '3 appliances, fills shared', appliances: 3, shared: true },
    { name: '3 appliances, not coordinated', appliances: 3, shared: false },
  ];
  for (const [i, scenario] of scenarios.entries()) {
    const storage = await testStorage('s3');
    const started: PeerAppliance[] = [];
    try {
      for (let a = 0; a < scenario.appliances; a++) {
        started.push(await startPeerAppliance(storage, upstream.url, { STEVEDORE_SHARED_STORE: String(scenario.shared) }));
      }
      const image = buildImage({ layerSizes: Array.from({ length: layers }, () => layerMiB * 1024 * 1024), seed: `coordination-${i}-${Date.now()}` });
      const repo = `bench/app${i}`;
      await seed(upstream.url, `${repo}:v1`, [image]);
      const rgwLog = new RgwLog(storage.rgwDir!);
      const coldMark = await rgwLog.mark();
      const t0 = performance.now();
      await Promise.all(Array.from({ length: pulls }, (_, p) => pull(started[p % started.length]!.url, `up/${repo}:v1`, { timeoutMs: 300_000 })));
      const ms = performance.now() - t0;
      const cold = await s3Requests(rgwLog, coldMark);
      // A warm pull (everything cached) through one appliance: what a hit costs the store.
      const warmMark = await rgwLog.mark();
      const w0 = performance.now();
      await pull(started[0]!.url, `up/${repo}:v1`, { timeoutMs: 300_000 });
      const warmMs = performance.now() - w0;
      const warm = await s3Requests(rgwLog, warmMark);
      const gets = blobGets(upstream.output(), repo);
      const counts = [image.config, ...image.layers].map((b) => gets.get(b.digest) ?? 0);
      rows.push({
        scenario: scenario.name, pulls, imageMiB: layers * layerMiB, ms: Math.round(ms),
        upstreamBlobGets: counts.reduce((s, n) => s + n, 0), blobs: counts.length, maxGetsPerBlob: Math.max(...counts),
        s3RequestsColdPulls: cold.total, s3ColdByOperation: cold.byOperation,
        warmPullMs: Math.round(warmMs), s3RequestsWarmPull: warm.total, s3WarmByOperation: warm.byOperation,
      });
    } finally {
      await Promise.all(started.map((a) => a.close()));
      await storage.cleanup();
    }
  }

  // The store requests a fill adds, timed on the same RGW: the filler's acquire (create with
  // If-None-Match: *, read back its version) and release (delete); a peer's failed acquire (create
  // refused, read the holder's record).
  const storage = await testStorage('s3');
  try {
    const own: number[] = [];
    const lost: number[] = [];
    for (let n = 0; n < 50; n++) {
      const t0 = performance.now();
      const attempt = await acquireLease(storage.driver, `fills/bench/${n}`, { ttlMs: 15_000, source: 'https://10.0.0.1:8443/v2/x/blobs/y' });
      const t1 = performance.now();
      const contender = await acquireLease(storage.driver, `fills/bench/${n}`, { ttlMs: 15_000 });
      const t2 = performance.now();
      if (!attempt.acquired || contender.acquired) throw new Error('lease semantics broken');
      await attempt.lease.releaseByDelete();
      own.push(t1 - t0 + (performance.now() - t2));
      lost.push(t2 - t1);
    }
    rows.push({ lease: 'filler: acquire + delete (3 requests)', medianMs: Number(median(own).toFixed(2)) });
    rows.push({ lease: 'peer: acquire refused (2 requests)', medianMs: Number(median(lost).toFixed(2)) });
  } finally {
    await storage.cleanup();
  }
} finally {
  await upstream.stop();
}
const one = rows.find((r) => r.scenario === '1 appliance');
const three = rows.find((r) => r.scenario === '3 appliances, fills shared');
for (const row of rows) console.log(JSON.stringify(row));
if (one && three) console.log(JSON.stringify({ ratio3to1: Number(((three.ms as number) / (one.ms as number)).toFixed(2)), loadavg: loadavg().map((l) => Number(l.toFixed(2))) }));
process.exit(0);
