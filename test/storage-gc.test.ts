import assert from 'node:assert/strict';
import { readdir, rm, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildImage } from './helpers/oci-image.js';
import { startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';
import {
  blobPathOf, deriveImage, exists, imageDigests, pullImage, pushImage, runStevedore, sha256, type CliResult,
} from './helpers/storage-fixtures.js';

/**
 * `stevedore gc` against a store a real hosted worker wrote: a manifest deleted through the API
 * leaves its own blobs unreferenced, GC removes exactly those, the image sharing layers with it
 * still pulls, and pushes that race with GC (under the default grace period) lose nothing.
 */

const HOUR = 3_600_000;

describe('garbage collection end to end (hosted worker, skopeo)', () => {
  let hosted: RunningProcess;
  let root: string;
  const a = buildImage({ layerSizes: [60_000, 30_000], seed: 'gc-a' });
  const b = deriveImage(a, buildImage({ layerSizes: [20_000], seed: 'gc-b' }));
  const gcEnv = (extra: Record<string, string> = {}) => ({ STEVEDORE_ROOT: root, LOG_LEVEL: 'warn', ...extra });
  const present = async (digest: string) => exists(blobPathOf(root, digest));

  /** Ages every blob and layer link of the store, so that only the grace period of new writes protects them. */
  async function ageStore(ms: number): Promise<void> {
    const when = new Date(Date.now() - ms);
    for (const shard of await readdir(join(root, 'blobs', 'sha256'))) {
      for (const hex of await readdir(join(root, 'blobs', 'sha256', shard))) await utimes(join(root, 'blobs', 'sha256', shard, hex), when, when);
    }
    const walk = async (dir: string): Promise<void> => {
      for (const entry of await readdir(dir, { withFileTypes: true })) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) await walk(path);
        else if (dir.includes('_layers')) await utimes(path, when, when);
      }
    };
    await walk(join(root, 'repositories'));
  }

  before(async () => {
    root = await tempDir('storage-gc-root-');
    hosted = await startStevedoreRegistry(['--root', root]);
  });

  after(async () => {
    await hosted?.stop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('removes only the deleted image\'s own blobs; the image sharing its base layer still pulls', async () => {
    await pushImage(hosted.url, 'team/app:a', a);
    await pushImage(hosted.url, 'team/app:b', b);
    assert.equal(b.layers[0]!.digest, a.layers[0]!.digest);
    const res = await fetch(`${hosted.url}/v2/team/app/manifests/${a.manifest.digest}`, { method: 'DELETE' });
    assert.equal(res.status, 202);
    const unshared = [a.manifest.digest, a.config.digest, a.layers[1]!.digest];

    const dry = await runStevedore(['gc', '--dry-run'], gcEnv({ CLEANER_GRACE_TIME: '0s' }));
    assert.equal(dry.code, 0, dry.stderr);
    const wouldRemove = [...dry.stdout.matchAll(/^would remove (sha256:[0-9a-f]{64}) .*\(unreferenced\)$/gm)].map((m) => m[1]);
    assert.deepEqual(wouldRemove.sort(), [...unshared].sort(), dry.stdout);
    assert.match(dry.stdout, /would free .* in 3 blob\(s\)/);
    for (const d of [...imageDigests(a), ...imageDigests(b)]) assert.ok(await present(d), 'the dry run removed a blob');

    const gc = await runStevedore(['gc'], gcEnv({ CLEANER_GRACE_TIME: '0s' }));
    assert.equal(gc.code, 0, gc.stderr);
    assert.deepEqual([...gc.stdout.matchAll(/^removed (sha256:[0-9a-f]{64})/gm)].map((m) => m[1]).sort(), [...unshared].sort());
    for (const d of unshared) assert.equal(await present(d), false, `${d} should be removed`);
    for (const d of imageDigests(b)) assert.ok(await present(d), `${d} of the kept image was removed`);

    const pulled = await pullImage(hosted.url, 'team/app:b');
    assert.equal(pulled.manifest, b.manifest.digest);
    assert.deepEqual(pulled.blobs, [b.config.digest, ...b.layers.map((l) => l.digest)]);
    assert.equal((await fetch(`${hosted.url}/v2/team/app/manifests/${a.manifest.digest}`)).status, 404);
    assert.equal((await fetch(`${hosted.url}/v2/team/app/blobs/${a.layers[1]!.digest}`, { method: 'HEAD' })).status, 404);
    // Pushing the deleted image again works (its blobs are uploaded anew).
    await pushImage(hosted.url, 'team/app:a', a);
    assert.equal((await pullImage(hosted.url, 'team/app:a')).manifest, a.manifest.digest);
  });

  it('a chunked upload in progress during GC (default grace) completes, and its image pulls', async () => {
    await ageStore(3 * HOUR);
    const image = buildImage({ layerSizes: [300_000], seed: 'gc-chunked' });
    const layer = image.layers[0]!.data;
    const config = image.config.data;
    const start = await fetch(`${hosted.url}/v2/team/chunked/blobs/uploads/`, { method: 'POST' });
    assert.equal(start.status, 202);
    const location = new URL(start.headers.get('location')!, hosted.url).href;
    const first = await fetch(location, { method: 'PATCH', body: layer.subarray(0, 100_000), headers: { 'content-type': 'application/octet-stream', 'content-range': '0-99999' } });
    assert.equal(first.status, 202);

    // GC between chunks, with the default grace period and with none: the session is not touched.
    for (const env of [gcEnv(), gcEnv({ CLEANER_GRACE_TIME: '0s' })]) {
      const gc = await runStevedore(['gc'], env);
      assert.equal(gc.code, 0, gc.stderr);
    }
    const second = await fetch(location, { method: 'PATCH', body: layer.subarray(100_000), headers: { 'content-type': 'application/octet-stream', 'content-range': `100000-${layer.length - 1}` } });
    assert.equal(second.status, 202);
    const done = await fetch(`${location}${location.includes('?') ? '&' : '?'}digest=${sha256(layer)}`, { method: 'PUT' });
    assert.equal(done.status, 201);
    const configPut = await fetch(`${hosted.url}/v2/team/chunked/blobs/uploads/?digest=${sha256(config)}`, { method: 'POST', body: config, headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(configPut.status, 201);

    // A GC run between the blob uploads and the manifest push: the new, unreferenced blobs are within the grace period.
    const gc = await runStevedore(['gc'], gcEnv());
    assert.equal(gc.code, 0, gc.stderr);
    assert.match(gc.stdout, /freed 0 B in 0 blob\(s\); 2 unreferenced blob\(s\) spared/);
    const manifest = image.manifest.data;
    const put = await fetch(`${hosted.url}/v2/team/chunked/manifests/v1`, { method: 'PUT', body: manifest, headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' } });
    assert.equal(put.status, 201);
    const pulled = await pullImage(hosted.url, 'team/chunked:v1');
    assert.equal(pulled.manifest, sha256(manifest));
  });

  it('skopeo pushes racing with GC runs (default grace) lose nothing, even pushes reusing old unreferenced blobs', async () => {
    // Old garbage: image b deleted, everything aged past the grace period.
    const res = await fetch(`${hosted.url}/v2/team/app/manifests/${b.manifest.digest}`, { method: 'DELETE' });
    assert.equal(res.status, 202);
    await ageStore(3 * HOUR);
    const bOwn = b.layers[1]!.digest;
    // New images: one reusing b's own (old, unreferenced) layer, pushed to another repository; others all new.
    const reuse = deriveImage({ ...b, layers: [b.layers[1]!] }, buildImage({ layerSizes: [50_000], seed: 'gc-race-reuse' }));
    assert.equal(reuse.layers[0]!.digest, bOwn);
    const fresh = Array.from({ length: 3 }, (_, i) => buildImage({ layerSizes: [80_000, 40_000], seed: `gc-race-${i}` }));

    const runs: CliResult[] = [];
    let pushing = true;
    const gcLoop = (async () => {
      while (pushing || runs.length === 0) runs.push(await runStevedore(['gc'], gcEnv()));
    })();
    try {
      await pushImage(hosted.url, 'team/reuse:v1', reuse);
      await Promise.all(fresh.map((img, i) => pushImage(hosted.url, `team/race${i}:v1`, img)));
    } finally {
      pushing = false;
      await gcLoop;
    }
    for (const run of runs) assert.equal(run.code, 0, run.stderr);
    // One more run after every push: still nothing of theirs goes.
    const last = await runStevedore(['gc'], gcEnv());
    assert.equal(last.code, 0, last.stderr);

    for (const img of [reuse, ...fresh]) for (const d of imageDigests(img)) assert.ok(await present(d), `${d} was lost`);
    assert.equal((await pullImage(hosted.url, 'team/reuse:v1')).manifest, reuse.manifest.digest);
    for (let i = 0; i < fresh.length; i++) assert.equal((await pullImage(hosted.url, `team/race${i}:v1`)).manifest, fresh[i]!.manifest.digest);
    // b's manifest and config were old garbage and are gone; its shared base layer is still a's.
    assert.equal(await present(b.manifest.digest), false);
    assert.equal(await present(b.config.digest), false);
    assert.ok(await present(a.layers[0]!.digest));
  });
});

