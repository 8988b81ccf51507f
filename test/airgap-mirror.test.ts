import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildImage } from './helpers/oci-image.js';
import { freePort, startDistribution, startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';
import {
  blobGets, hostOf, inspectRaw, MANIFEST_ACCEPT, pull, seed, sha256, sleep, startSlowRelay, writeAuths, writeHtpasswd,
} from './helpers/proxy-fixtures.js';
import { blobKey, hasKey, keysUnder, pullArch, servableRoot, startStevedore, stevedore, storeArgs, storedDigest, storeEnv } from './helpers/airgap.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * `stevedore mirror` against a real registry (CNCF distribution 2.8), then the filled store served
 * read-only by `stevedore registry --read-only` to skopeo and to containerd-style (?ns=) requests.
 * On both store kinds; an S3 store is served through servableRoot (its export, seeded to a directory)
 * until the worker runs on the driver. Tests of what does not depend on the store run on the filesystem only.
 */

for (const kind of STORAGE_KINDS) {
  describe(`stevedore mirror: fill a store (${kind}) from registries, serve it read-only`, () => {
    let upstream: RunningProcess & { root: string };
    let host: string;
    const dirs: string[] = [];
    const stores: TestStorage[] = [];
    const running: RunningProcess[] = [];
    const onFilesystem = kind === 'filesystem' ? it : it.skip;
    const onS3 = kind === 's3' ? it : it.skip;
    const single = buildImage({ layerSizes: [3000, 5000], seed: 'mirror-single' });
    const amd64 = buildImage({ layerSizes: [2000, 2500], architecture: 'amd64', seed: 'mirror-amd64' });
    const arm64 = buildImage({ layerSizes: [2000, 2500], architecture: 'arm64', seed: 'mirror-arm64' });
    const big = buildImage({ layerSizes: [1000, 1500, 600_000], seed: 'mirror-big' });
    let indexDigest: string;

    const dir = async (prefix: string) => {
      const d = await tempDir(prefix);
      dirs.push(d);
      return d;
    };
    const list = async (lines: string[]) => {
      const path = join(await dir('airgap-list-'), 'images.txt');
      await writeFile(path, `${lines.join('\n')}\n`);
      return path;
    };
    const newStore = async () => {
      const store = await testStorage(kind);
      stores.push(store);
      return store;
    };
    const mirror = (args: string[], store: TestStorage) => stevedore(['mirror', ...args, ...storeArgs(store)], 60_000, storeEnv(store));
    const serve = async (store: TestStorage) => {
      const registry = await startStevedoreRegistry(['--root', await servableRoot(store, await dir('airgap-served-')), '--read-only']);
      running.push(registry);
      return registry;
    };

    before(async () => {
      upstream = await startDistribution();
      host = hostOf(upstream.url);
      await seed(upstream.url, 'team/single:v1', [single]);
      indexDigest = (await seed(upstream.url, 'team/multi:v1', [amd64, arm64], { index: true })).digest;
      await seed(upstream.url, 'team/big:v1', [big]);
    });

    after(async () => {
      for (const r of running) await r.stop();
      await upstream?.stop();
      for (const d of dirs) await rm(d, { recursive: true, force: true });
      for (const s of stores) await s.cleanup();
    });

    it('copies the listed images with only the selected platform, lists failures, and the read-only store serves the original digests', async () => {
      const store = await newStore();
      const images = await list([
        '# K3s images, one a line',
        `${host}/team/multi:v1   # multi-platform`,
        '',
        `${host}/team/single@${single.manifest.digest}`,
        `${host}/team/missing:v1`,
      ]);
      const result = await mirror(['--list', images, '--platform', 'linux/arm64'], store);
      assert.equal(result.code, 1, result.stderr);
      assert.match(result.stderr, /mirrored 2 of 3 image\(s\)/);
      assert.match(result.stderr, new RegExp(`1 image\\(s\\) failed:\\n  ${host}/team/missing:v1 \\(.*images.txt:5\\): manifest .*team/missing:v1 not found on ${host} \\(404\\)`));

      // Only arm64's blobs were copied; the index itself is kept byte for byte.
      for (const blob of [arm64.config, ...arm64.layers, single.config, ...single.layers]) assert.ok(await hasKey(store, blobKey(blob.digest)), blob.digest);
      for (const blob of [amd64.config, ...amd64.layers]) assert.ok(!(await hasKey(store, blobKey(blob.digest))), `amd64 blob ${blob.digest} was copied`);
      assert.equal((await store.driver.getContent('repositories/team/multi/_manifests/tags/v1')).toString(), indexDigest);

      const registry = await serve(store);
      assert.equal((await inspectRaw(registry.url, 'team/multi:v1')).digest, indexDigest);
      const pulled = await pullArch(registry.url, 'team/multi:v1', 'arm64');
      assert.equal(pulled.code, 0, pulled.stderr);
      assert.deepEqual(pulled.layout!.manifests, [{ digest: arm64.manifest.digest, config: arm64.config.digest, layers: arm64.layers.map((l) => l.digest) }]);
      const other = await pullArch(registry.url, 'team/multi:v1', 'amd64');
      assert.notEqual(other.code, 0, 'amd64 was not mirrored, so it cannot be pulled');
      const bySingle = await pull(registry.url, `team/single@${single.manifest.digest}`);
      assert.deepEqual(bySingle.manifests, [{ digest: single.manifest.digest, config: single.config.digest, layers: single.layers.map((l) => l.digest) }]);

      // containerd asks a mirror with ?ns=<upstream host>: answered from the store like any request.
      const manifest = await fetch(`${registry.url}/v2/team/multi/manifests/v1?ns=docker.io`, { headers: { accept: MANIFEST_ACCEPT } });
      assert.equal(manifest.status, 200);
      assert.equal(manifest.headers.get('docker-content-digest'), indexDigest);
      assert.equal(sha256(Buffer.from(await manifest.arrayBuffer())), indexDigest);
      const head = await fetch(`${registry.url}/v2/team/multi/manifests/${arm64.manifest.digest}?ns=docker.io`, { method: 'HEAD', headers: { accept: MANIFEST_ACCEPT } });
      assert.equal(head.status, 200);
      const layer = arm64.layers[0]!;
      const blob = await fetch(`${registry.url}/v2/team/multi/blobs/${layer.digest}?ns=docker.io`);
      assert.equal(blob.status, 200);
      assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), layer.digest);
      // Read-only: a push is refused.
      const push = await fetch(`${registry.url}/v2/team/multi/blobs/uploads/?ns=docker.io`, { method: 'POST' });
      assert.equal(push.status, 405);
    });

    onFilesystem('--all-platforms with --keep-registry keeps every platform under the registry host', async () => {
      const store = await newStore();
      const result = await mirror(['--list', await list([`${host}/team/multi:v1`]), '--all-platforms', '--keep-registry'], store);
      assert.equal(result.code, 0, result.stderr);
      const name = `${host.replace(':', '_')}/team/multi`;
      assert.match(result.stderr, new RegExp(`ok → ${name}:v1: 6 blob\\(s\\) fetched`));
      const registry = await serve(store);
      const all = await pull(registry.url, `${name}:v1`, { all: true });
      assert.equal(all.top, indexDigest);
      assert.deepEqual(all.manifests.map((m) => m.digest).sort(), [amd64.manifest.digest, arm64.manifest.digest].sort());
    });

    it('an interrupted mirror resumes: blobs stored before the kill are not fetched again', async () => {
      const store = await newStore();
      // A slow link (200 kB/s): the small blobs land at once, the 600 kB layer takes ~3 s.
      const relay = await startSlowRelay(upstream.port, 200_000);
      try {
        const [small1, small2, large] = big.layers as [typeof big.layers[0], typeof big.layers[0], typeof big.layers[0]];
        const proc = startStevedore(['mirror', '--list', await list([`127.0.0.1:${relay.port}/team/big:v1`]), ...storeArgs(store)], storeEnv(store));
        const deadline = Date.now() + 10_000;
        while (!(await hasKey(store, blobKey(small1.digest)) && await hasKey(store, blobKey(small2.digest)) && await hasKey(store, blobKey(big.config.digest)))) {
          assert.ok(Date.now() < deadline, 'the small blobs never arrived');
          await sleep(20);
        }
        proc.kill('SIGKILL');
        await new Promise((resolve) => proc.once('exit', resolve));
        assert.ok(!(await hasKey(store, blobKey(large.digest))), 'the large layer cannot be complete yet');
        // Nothing of the image is visible yet: no tag, no manifest.
        assert.deepEqual(await keysUnder(store, 'repositories/team/big/_manifests/'), []);
      } finally {
        await relay.stop();
      }
      const before = blobGets(upstream.output(), 'team/big');
      const result = await mirror(['--list', await list([`${host}/team/big:v1`])], store);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stderr, /1 blob\(s\) fetched .*, 3 already present/);
      const afterRun = blobGets(upstream.output(), 'team/big');
      for (const blob of [big.config, big.layers[0]!, big.layers[1]!]) {
        assert.equal(afterRun.get(blob.digest), before.get(blob.digest), `${blob.digest} was fetched again`);
        assert.equal(afterRun.get(blob.digest), 1);
      }
      assert.equal((afterRun.get(big.layers[2]!.digest) ?? 0) - (before.get(big.layers[2]!.digest) ?? 0), 1);
      // The killed run's partial download never became visible: every blob in the store is whole.
      if (kind === 's3') {
        for (const blob of [big.manifest, big.config, ...big.layers]) assert.equal(await storedDigest(store, blob.digest), blob.digest);
        assert.equal((await store.driver.getContent('repositories/team/big/_manifests/tags/v1')).toString(), big.manifest.digest);
        return;
      }
      const registry = await serve(store);
      const pulled = await pull(registry.url, 'team/big:v1');
      assert.deepEqual(pulled.manifests, [{ digest: big.manifest.digest, config: big.config.digest, layers: big.layers.map((l) => l.digest) }]);
    });

    onS3('says so quickly when the store cannot be reached, and writes nothing', async () => {
      const store = await newStore();
      const down = ['--s3-endpoint', `http://127.0.0.1:${await freePort()}`];
      const mirrored = await stevedore(['mirror', '--list', await list([`${host}/team/single:v1`]), ...storeArgs(store), ...down], 30_000, storeEnv(store));
      assert.equal(mirrored.code, 2, mirrored.stderr);
      assert.match(mirrored.stderr, new RegExp(`cannot use --store ${store.storage}/?: storage unavailable`));
      const exported = await stevedore(['export', ...storeArgs(store), ...down, '--out', join(await dir('airgap-export-'), 'out.tar')], 30_000, storeEnv(store));
      assert.equal(exported.code, 1, exported.stderr);
      assert.match(exported.stderr, /cannot read s3:\/\/.*: storage unavailable/);
      assert.ok(mirrored.ms + exported.ms < 15_000, `took ${mirrored.ms} + ${exported.ms} ms`);
    });

    onFilesystem('takes credentials from --auth-file, and says so when they are missing', async () => {
      const authDir = await dir('airgap-mirror-auth-');
      const secured = await startDistribution({ htpasswd: await writeHtpasswd(authDir, 'mirror', 's3cret') });
      running.push(secured);
      await seed(secured.url, 'private/app:v1', [single], { creds: 'mirror:s3cret' });
      const images = await list([`${hostOf(secured.url)}/private/app:v1`]);
      const store = await newStore();
      const anonymous = await mirror(['--list', images], store);
      assert.equal(anonymous.code, 1);
      assert.match(anonymous.stderr, /requires credentials; add them to the auths file/);
      const authFile = await writeAuths(authDir, `http://${hostOf(secured.url)}`, { user: 'mirror', pass: 's3cret' });
      const result = await mirror(['--list', images, '--auth-file', authFile], store);
      assert.equal(result.code, 0, result.stderr);
      assert.deepEqual(await keysUnder(store, 'repositories/private/app/_manifests/tags/'), ['repositories/private/app/_manifests/tags/v1']);
    });
  });
}
