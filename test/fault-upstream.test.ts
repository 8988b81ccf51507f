import assert from 'node:assert/strict';
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { corruptBlobs, isComplete, looksComplete, sleep, startThrottledRelay, streamBlob } from './helpers/faults.js';
import { buildImage, type BuiltImage } from './helpers/oci-image.js';
import { startRestartableDistribution, startStevedoreRegistry, tempDir, type RestartableDistribution, type RunningProcess } from './helpers/processes.js';
import { cacheBlobPath, MANIFEST_ACCEPT, pull, seed, sha256 } from './helpers/proxy-fixtures.js';

/**
 * Faults of the upstream, with a real one (docker-registry) killed and started again on the same
 * port with the same storage: stopped in the middle of a blob, and flapping (down 2 s, up 2 s) while
 * pulls run the whole time.
 */

const MiB = 1024 * 1024;
const cleanup: Array<() => Promise<unknown>> = [];
async function cleanUp(): Promise<void> {
  for (const fn of cleanup.splice(0).reverse()) await fn().catch(() => {});
}

async function startCache(upstreamUrl: string, extra: string[] = []): Promise<RunningProcess & { root: string }> {
  const root = await tempDir('fault-upstream-root-');
  cleanup.push(() => rm(root, { recursive: true, force: true }));
  const cache = await startStevedoreRegistry(['--root', root, '--upstream', upstreamUrl, ...extra]);
  cleanup.push(() => cache.stop());
  return Object.assign(cache, { root });
}

async function tempFiles(root: string): Promise<string[]> {
  const dirs = await readdir(join(root, '_tmp')).catch(() => [] as string[]);
  const files: string[] = [];
  for (const d of dirs) files.push(...(await readdir(join(root, '_tmp', d)).catch(() => [] as string[])));
  return files;
}

const exists = (path: string): Promise<boolean> => stat(path).then(() => true, () => false);

describe('fault: the upstream is killed while a big blob is streaming', () => {
  let upstream: RestartableDistribution;
  let cache: RunningProcess & { root: string };
  const image = buildImage({ layerSizes: [20 * MiB], seed: 'fault-upstream-midfill' });
  const layer = image.layers[0]!;
  const url = () => `${cache.url}/v2/team/midfill/blobs/${layer.digest}`;

  before(async () => {
    upstream = await startRestartableDistribution();
    cleanup.push(() => upstream.stop());
    await seed(upstream.url, 'team/midfill:v1', [image]);
    // 8 MB/s with backpressure: when the upstream dies, most of the blob is still in it.
    const relay = await startThrottledRelay(upstream.port, 8_000_000);
    cleanup.push(() => relay.stop());
    cache = await startCache(relay.url, ['--upstream-timeout', '2s']);
  });
  after(cleanUp);

  it('the client sees a broken transfer, nothing is cached; once the upstream is back the next pull succeeds', async (t) => {
    let killed: Promise<void> | undefined;
    const transfer = await streamBlob(url(), {
      onProgress: (received) => {
        if (!killed && received >= 2 * MiB) killed = upstream.down('SIGKILL');
      },
    });
    await killed;
    t.diagnostic(`upstream killed after 2 MiB; the client got ${transfer.status}, ${transfer.received} of ${layer.size} bytes, ${transfer.ended ? 'ended' : `broken (${transfer.error})`}`);
    assert.ok(killed, 'the upstream was killed mid-transfer');
    assert.ok(!looksComplete(transfer), 'the transfer must not look complete');
    assert.ok(!isComplete(transfer, layer.digest, layer.size));

    // The fill is abandoned: no blob, no temp file, nothing corrupt in the store.
    for (let i = 0; i < 50 && !cache.logLines().some((l) => l.msg === 'cache fill failed; nothing cached'); i++) await sleep(100);
    assert.ok(cache.logLines().some((l) => l.msg === 'cache fill failed; nothing cached' && l.digest === layer.digest), 'the worker logged the failed fill');
    assert.equal(await exists(cacheBlobPath(cache.root, layer.digest)), false);
    assert.deepEqual(await tempFiles(cache.root), []);
    assert.deepEqual((await corruptBlobs(cache.root)).corrupt, []);

    await upstream.up();
    const backAt = Date.now();
    const again = await streamBlob(url());
    assert.ok(isComplete(again, layer.digest, layer.size), JSON.stringify(again));
    t.diagnostic(`after the upstream came back: the blob pulled whole in ${Date.now() - backAt} ms`);
    const pulled = await pull(cache.url, 'team/midfill:v1');
    assert.deepEqual(pulled.manifests, [{ digest: image.manifest.digest, config: image.config.digest, layers: [layer.digest] }]);
  });
});

describe('fault: the upstream flaps (down 2 s, up 2 s, three times) while pulls run', () => {
  const CYCLES = 3;
  const PHASE_MS = 2000;
  let upstream: RestartableDistribution;
  let cache: RunningProcess & { root: string };
  const cached = buildImage({ layerSizes: [60_000, 20_000], seed: 'fault-flap-cached' });
  const misses = Array.from({ length: CYCLES }, (_, i) => buildImage({ layerSizes: [40_000], seed: `fault-flap-miss-${i}` }));

  before(async () => {
    upstream = await startRestartableDistribution();
    cleanup.push(() => upstream.stop());
    await seed(upstream.url, 'team/cached:v1', [cached]);
    for (const [i, image] of misses.entries()) await seed(upstream.url, `team/miss${i}:v1`, [image]);
    // A short tag TTL, so that cached pulls revalidate (and must fall back to the stale tag) during outages.
    cache = await startCache(upstream.url, ['--tag-ttl', '1s', '--upstream-timeout', '2s']);
    await pull(cache.url, 'team/cached:v1');
  });
  after(cleanUp);

  /** One pull over HTTP: the manifest by tag, then every blob, each verified. Returns what went wrong, or undefined. */
  async function pullOnce(repo: string, image: BuiltImage): Promise<string | undefined> {
    try {
      const manifest = await fetch(`${cache.url}/v2/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT }, signal: AbortSignal.timeout(10_000) });
      const body = Buffer.from(await manifest.arrayBuffer());
      if (manifest.status !== 200) return `manifest ${manifest.status}: ${body.toString('utf8').slice(0, 200)}`;
      if (sha256(body) !== image.manifest.digest) return 'manifest: wrong bytes';
      for (const blob of [image.config, ...image.layers]) {
        const res = await fetch(`${cache.url}/v2/${repo}/blobs/${blob.digest}`, { signal: AbortSignal.timeout(10_000) });
        const data = Buffer.from(await res.arrayBuffer());
        if (res.status !== 200) return `blob ${res.status}: ${data.toString('utf8').slice(0, 200)}`;
        if (sha256(data) !== blob.digest) return 'blob: wrong bytes';
      }
      return undefined;
    } catch (err) {
      return `error: ${(err as Error).message}`;
    }
  }

  it('every pull of cached content succeeds; a miss fails fast while down and succeeds within 2 s of the upstream answering again', async (t) => {
    let running = true;
    const cachedPulls: Array<{ at: number; problem?: string }> = [];
    const started = Date.now();
    const loop = (async () => {
      while (running) {
        const problem = await pullOnce('team/cached', cached);
        cachedPulls.push({ at: Date.now() - started, ...(problem ? { problem } : {}) });
        await sleep(20);
      }
    })();

    const phases: Array<{ name: string; from: number; to: number }> = [];
    const downMisses: Array<{ status: number; ms: number }> = [];
    const recoveries: Array<number | undefined> = [];
    const lastProblems: Array<string | undefined> = [];
    try {
      for (let cycle = 0; cycle < CYCLES; cycle++) {
        await upstream.down('SIGKILL');
        const downAt = Date.now();
        const missStarted = Date.now();
        const miss = await fetch(`${cache.url}/v2/team/miss${cycle}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
        await miss.arrayBuffer();
        downMisses.push({ status: miss.status, ms: Date.now() - missStarted });
        await sleep(Math.max(0, downAt + PHASE_MS - Date.now()));
        phases.push({ name: `down ${cycle + 1}`, from: downAt - started, to: Date.now() - started });

        await upstream.up();
        const upAt = Date.now();
        // Bounded: a miss that is not back within 5 s is recorded as not recovered (and ends the flapping).
        let recovered: number | undefined;
        let problem: string | undefined;
        while (Date.now() - upAt < 5000) {
          problem = await pullOnce(`team/miss${cycle}`, misses[cycle]!);
          if (!problem) {
            recovered = Date.now() - upAt;
            break;
          }
          await sleep(100);
        }
        recoveries.push(recovered);
        lastProblems.push(problem);
        if (recovered === undefined) break;
        await sleep(Math.max(0, upAt + PHASE_MS - Date.now()));
        phases.push({ name: `up ${cycle + 1}`, from: upAt - started, to: Date.now() - started });
      }
    } finally {
      running = false;
      await loop;
    }

    const failures = cachedPulls.filter((p) => p.problem);
    t.diagnostic(`cached pulls: ${cachedPulls.length}, failed: ${failures.length}${failures.length ? ` (first: ${failures[0]!.problem} at ${failures[0]!.at} ms)` : ''}`);
    t.diagnostic(`misses while down: ${downMisses.map((m) => `${m.status} in ${m.ms} ms`).join(', ')}`);
    t.diagnostic(`recovery of a cold pull after the upstream listens again: ${recoveries.map((r) => (r === undefined ? 'not within 5 s' : `${r} ms`)).join(', ')}`);

    // Pulls ran the whole time: some completed within every phase.
    for (const phase of phases) {
      assert.ok(cachedPulls.some((p) => p.at >= phase.from && p.at <= phase.to), `no cached pull completed while ${phase.name}`);
    }
    assert.deepEqual(failures, [], 'every pull of cached content succeeded');
    for (const miss of downMisses) {
      assert.equal(miss.status, 503);
      assert.ok(miss.ms < 1500, `a miss while the upstream is down failed fast (${miss.ms} ms)`);
    }
    recoveries.forEach((ms, cycle) => {
      assert.ok(ms !== undefined && ms <= 2000, `cycle ${cycle + 1}: a cold pull succeeded within 2 s of the upstream being up (took ${ms ?? '> 5000'} ms; last problem: ${lastProblems[cycle]})`);
    });
    assert.equal(recoveries.length, CYCLES);
  });
});
