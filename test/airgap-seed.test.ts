import assert from 'node:assert/strict';
import { copyFile, mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar';
import { buildImage, buildIndex, writeOciLayout, type BuiltImage } from './helpers/oci-image.js';
import { startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';
import { hostOf, inspectRaw, pull, sha256, skopeo } from './helpers/proxy-fixtures.js';
import {
  blobKey, corrupt, hasKey, incompleteWrites, keysUnder, servableRoot, stevedore, storeArgs, storeBlobPath, storeEnv,
} from './helpers/airgap.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * `stevedore seed` from an OCI layout, a docker-archive made by skopeo, a registry directory and a
 * `stevedore export` archive; then skopeo pulls from the store served read-only give the original
 * digests. Corrupt input is refused, named, and leaves nothing visible. On both store kinds; an S3
 * store is served through servableRoot (its export, seeded to a directory) until the worker runs on
 * the driver. What does not depend on the store runs on the filesystem only.
 */

for (const kind of STORAGE_KINDS) {
  describe(`stevedore seed and export (${kind} store): carry images across an air gap`, () => {
    const dirs: string[] = [];
    const stores: TestStorage[] = [];
    const running: RunningProcess[] = [];
    const onFilesystem = kind === 'filesystem' ? it : it.skip;
    const app = buildImage({ layerSizes: [3000, 4000], seed: 'seed-app' });
    const amd64 = buildImage({ layerSizes: [2000], architecture: 'amd64', seed: 'seed-amd64' });
    const arm64 = buildImage({ layerSizes: [2000], architecture: 'arm64', seed: 'seed-arm64' });
    const index = buildIndex([amd64, arm64]);
    const archived = buildImage({ layerSizes: [2500, 3500], seed: 'seed-archived' });
    const dirImage = buildImage({ layerSizes: [1500], seed: 'seed-dir' });
    let work: string;
    let store: TestStorage;
    let archivePath: string;
    /** The seed's extraction dir for S3 stores (TMPDIR of the child), to check it is left empty. */
    let extractTmp: string;

    const dir = async (prefix: string) => {
      const d = await tempDir(prefix);
      dirs.push(d);
      return d;
    };
    const newStore = async () => {
      const created = await testStorage(kind);
      stores.push(created);
      return created;
    };
    /** `stevedore seed|export ... --store <target>`. */
    const into = (command: string, args: string[], target: TestStorage) =>
      stevedore([command, ...args, ...storeArgs(target)], 60_000, { ...storeEnv(target), TMPDIR: extractTmp });
    const serve = async (target: TestStorage) => {
      const registry = await startStevedoreRegistry(['--root', await servableRoot(target, work), '--read-only']);
      running.push(registry);
      return registry;
    };
    const diffIds = (image: BuiltImage): string[] => (JSON.parse(image.config.data.toString('utf8')) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids;

    /** What the store must serve after all seeds: the original digests (for the docker-archive: config digest and diff IDs). */
    const checkServed = async (url: string) => {
      assert.equal((await inspectRaw(url, 'team/app:v1')).digest, app.manifest.digest);
      const pulledApp = await pull(url, 'team/app:v1');
      assert.deepEqual(pulledApp.manifests, [{ digest: app.manifest.digest, config: app.config.digest, layers: app.layers.map((l) => l.digest) }]);

      assert.equal((await inspectRaw(url, 'team/multi:v2')).digest, index.digest);
      const all = await pull(url, 'team/multi:v2', { all: true });
      assert.deepEqual(all.manifests.map((m) => m.digest).sort(), [amd64.manifest.digest, arm64.manifest.digest].sort());

      const raw = JSON.parse((await inspectRaw(url, 'team/archived:v1')).body.toString('utf8')) as { mediaType: string; config: { digest: string }; layers: Array<{ digest: string; mediaType: string }> };
      assert.equal(raw.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
      assert.equal(raw.config.digest, archived.config.digest);
      assert.deepEqual(raw.layers.map((l) => l.digest), diffIds(archived));
      assert.ok(raw.layers.every((l) => l.mediaType === 'application/vnd.docker.image.rootfs.diff.tar'));
      // The config is served byte for byte (skopeo's own pull into an OCI layout would convert it, so compare the raw bytes).
      const config = await skopeo(['inspect', '--config', '--raw', '--tls-verify=false', `docker://${hostOf(url)}/team/archived:v1`]);
      assert.equal(sha256(config.stdout), archived.config.digest);
      const pulledArchive = await pull(url, 'team/archived:v1');
      assert.equal(pulledArchive.manifests[0]!.layers.length, 2);

      assert.equal((await inspectRaw(url, 'team/dir:v1')).digest, index.digest);
      assert.equal((await inspectRaw(url, 'team/dir:copy')).digest, arm64.manifest.digest);
      assert.equal((await inspectRaw(url, 'other/thing:latest')).digest, dirImage.manifest.digest);
      const pulledDir = await pull(url, 'other/thing:latest');
      assert.deepEqual(pulledDir.manifests[0]!.layers, dirImage.layers.map((l) => l.digest));
    };

    before(async () => {
      work = await dir('airgap-seed-work-');
      extractTmp = await dir('airgap-seed-tmp-');
      store = await newStore();
      const ociApp = join(work, 'oci-app');
      await writeOciLayout(ociApp, 'team/app:v1', [app]);
      const ociArchived = join(work, 'oci-archived');
      await writeOciLayout(ociArchived, 'v1', [archived]);
      archivePath = join(work, 'archived.tar');
      await skopeo(['copy', '--quiet', `oci:${ociArchived}:v1`, `docker-archive:${archivePath}:team/archived:v1`]);
    });

    after(async () => {
      for (const r of running) await r.stop();
      for (const d of dirs) await rm(d, { recursive: true, force: true });
      for (const s of stores) await s.cleanup();
    });

    it('seeds an OCI layout: repo:tag names as they are, a bare tag only with --name', async () => {
      const app1 = await into('seed', ['--from', join(work, 'oci-app')], store);
      assert.equal(app1.code, 0, app1.stderr);
      assert.match(app1.stderr, /ok team\/app:v1 \(sha256:[0-9a-f]{64}\): 3 blob\(s\) imported/);

      const multi = join(work, 'oci-multi');
      await writeOciLayout(multi, 'v2', [amd64, arm64], index);
      const unnamed = await into('seed', ['--from', multi], store);
      assert.equal(unnamed.code, 1);
      assert.match(unnamed.stderr, /a tag only; give --name REPO to store it as REPO:v2/);
      const named = await into('seed', ['--from', multi, '--name', 'team/multi'], store);
      assert.equal(named.code, 0, named.stderr);
      assert.match(named.stderr, /ok team\/multi:v2/);
    });

    it('seeds a docker-archive made by skopeo, plain and gzip-compressed', async () => {
      const plain = await into('seed', ['--from', archivePath], store);
      assert.equal(plain.code, 0, plain.stderr);
      assert.match(plain.stderr, /from docker-archive .*\nok team\/archived:v1 .*: 3 blob\(s\) imported/);
      // The same archive gzip-compressed, into a fresh store: the same manifest (built from the same bytes).
      const gz = join(work, 'archived.tar.gz');
      await writeFile(gz, gzipSync(await readFile(archivePath), { level: 1 }));
      const other = await newStore();
      const compressed = await into('seed', ['--from', gz], other);
      assert.equal(compressed.code, 0, compressed.stderr);
      const digestOf = (text: string) => /ok team\/archived:v1 \((sha256:[0-9a-f]{64})\)/.exec(text)?.[1];
      assert.equal(digestOf(compressed.stderr), digestOf(plain.stderr));
      // Extracted inside a directory store (verified files are renamed into place), else in TMPDIR.
      const extractedTo = kind === 'filesystem' ? join(other.root, '_tmp', '_seed') : join(extractTmp, 'stevedore-seed');
      assert.deepEqual(await readdir(extractedTo), [], 'the extracted archive is removed');
    });

    it('seeds a minimal registry directory: digest-named manifests, tag links, per-repository and shared blobs', async () => {
      const reg = join(work, 'registry');
      const manifests = join(reg, 'team', 'dir', 'manifests');
      await mkdir(manifests, { recursive: true });
      await mkdir(join(reg, 'team', 'dir', 'blobs'), { recursive: true });
      await mkdir(join(reg, 'blobs', 'sha256'), { recursive: true });
      for (const doc of [index, amd64.manifest, arm64.manifest]) await writeFile(join(manifests, doc.digest), doc.data);
      await symlink(index.digest, join(manifests, 'v1'));
      await writeFile(join(manifests, 'copy'), arm64.manifest.data);
      for (const blob of [amd64.config, ...amd64.layers]) await writeFile(join(reg, 'team', 'dir', 'blobs', blob.digest), blob.data);
      for (const blob of [arm64.config, ...arm64.layers]) await writeFile(join(reg, 'blobs', blob.digest), blob.data);
      const thing = join(reg, 'other', 'thing', 'manifests');
      await mkdir(thing, { recursive: true });
      await writeFile(join(thing, dirImage.manifest.digest), dirImage.manifest.data);
      await writeFile(join(thing, 'latest'), `${dirImage.manifest.digest}\n`);
      for (const blob of [dirImage.config, ...dirImage.layers]) await writeFile(join(reg, 'blobs', 'sha256', blob.digest.slice(7)), blob.data);

      // --storage (STEVEDORE_STORAGE) names the store as well as --store does.
      const result = await stevedore(['seed', '--from', reg, '--storage', store.storage], 60_000, { ...storeEnv(store), TMPDIR: extractTmp });
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stderr, /ok team\/dir:v1 /);
      assert.match(result.stderr, /ok team\/dir:copy /);
      assert.match(result.stderr, /ok other\/thing:latest /);
    });

    it('the read-only store serves every seeded image with its original digests; export → seed gives the same store', async () => {
      const registry = await serve(store);
      await checkServed(registry.url);

      const out = join(work, 'store-export.tar.gz');
      const exported = await into('export', ['--out', out], store);
      assert.equal(exported.code, 0, exported.stderr);
      assert.match(exported.stderr, /exported 5 repositories, 6 tag\(s\), \d+ blob\(s\)/);
      const across = await newStore();
      const seeded = await into('seed', ['--from', out], across);
      assert.equal(seeded.code, 0, seeded.stderr);
      assert.match(seeded.stderr, /from Stevedore export/);
      // The same store on the other side: every repository key with the same content, every blob.
      const contents = async (target: TestStorage) => Promise.all((await keysUnder(target, 'repositories/')).map(async (key) => `${key} ${(await target.driver.getContent(key)).toString()}`));
      assert.deepEqual(await contents(across), await contents(store));
      assert.deepEqual(await keysUnder(across, 'blobs/'), await keysUnder(store, 'blobs/'));
      if (kind === 's3') return; // The archive formats do not depend on the store; serving the copy neither.
      const copy = await serve(across);
      await checkServed(copy.url);

      // The same round trip through a zstd archive (zlib on Node >= 22.15, the zstd command before).
      const zst = join(work, 'store-export.tar.zst');
      const exportedZst = await into('export', ['--out', zst], store);
      assert.equal(exportedZst.code, 0, exportedZst.stderr);
      assert.deepEqual([...(await readFile(zst)).subarray(0, 4)], [0x28, 0xb5, 0x2f, 0xfd], 'a zstd frame');
      const acrossZst = await newStore();
      const seededZst = await into('seed', ['--from', zst], acrossZst);
      assert.equal(seededZst.code, 0, seededZst.stderr);
      const copyZst = await serve(acrossZst);
      await checkServed(copyZst.url);
    });

    it('refuses a corrupt blob, naming it, and leaves nothing of the image visible', async () => {
      const bad = buildImage({ layerSizes: [1000, 2000], seed: 'seed-bad' });
      const layout = join(work, 'oci-bad');
      await writeOciLayout(layout, 'team/bad:v1', [bad]);
      const broken = bad.layers[1]!;
      await corrupt(join(layout, 'blobs', 'sha256', broken.digest.slice(7)));
      const target = await newStore();
      const result = await into('seed', ['--from', layout], target);
      assert.equal(result.code, 1);
      assert.match(result.stderr, new RegExp(`team/bad:v1: blob ${broken.digest} \\(.*\\) is corrupt: its content hashes to sha256:[0-9a-f]{64}`));
      assert.deepEqual(await keysUnder(target, 'repositories/team/bad/'), [], 'no link, manifest or tag of the refused image');
      assert.ok(!(await hasKey(target, blobKey(broken.digest))));
      assert.deepEqual(await incompleteWrites(target), [], 'the refused blob left no temp file or multipart upload');

      // A docker-archive whose layer was altered: its diff ID (in the config) gives it away.
      const extracted = join(work, 'archive-dir');
      await mkdir(extracted);
      await tar.x({ file: archivePath, cwd: extracted });
      const layerFile = join(extracted, `${diffIds(archived)[0]!.slice(7)}.tar`);
      await corrupt(layerFile);
      const fromArchive = await into('seed', ['--from', extracted], target);
      assert.equal(fromArchive.code, 1);
      assert.match(fromArchive.stderr, new RegExp(`team/archived:v1: layer 1 \\(${diffIds(archived)[0]!.slice(7)}\\.tar\\) is corrupt: its name says ${diffIds(archived)[0]}, its content hashes to`));
      assert.deepEqual(await keysUnder(target, 'repositories/team/archived/'), []);

      // An export archive with a damaged blob: every blob is verified again on the way in.
      const exportDir = join(work, 'export-dir');
      await mkdir(exportDir);
      await tar.x({ file: join(work, 'store-export.tar.gz'), cwd: exportDir });
      const damaged = app.layers[0]!;
      await corrupt(storeBlobPath(exportDir, damaged.digest));
      const fromExport = await into('seed', ['--from', exportDir], target);
      assert.equal(fromExport.code, 1);
      assert.match(fromExport.stderr, new RegExp(`team/app@${app.manifest.digest} \\(v1\\): blob ${damaged.digest} .* is corrupt`));
      assert.deepEqual(await keysUnder(target, 'repositories/team/app/_manifests/'), []);
      assert.match(fromExport.stderr, /ok team\/multi:v2/, 'the intact images of the export are seeded');
    });

    onFilesystem('says what to do with input it cannot read', async () => {
      const zst = join(work, 'images.tar.zst');
      await writeFile(zst, Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(600)]));
      const target = await newStore();
      const zstd = await into('seed', ['--from', zst], target);
      assert.equal(zstd.code, 1);
      assert.match(zstd.stderr, /zstd|cannot read the archive/i);
      const text = join(work, 'notes.txt');
      await copyFile(join(work, 'oci-app', 'index.json'), text);
      const notTar = await into('seed', ['--from', text], target);
      assert.equal(notTar.code, 1);
      assert.match(notTar.stderr, /is not a tar archive/);
      const missing = await into('seed', [], target);
      assert.equal(missing.code, 2);
      assert.match(missing.stderr, /missing --from \(STEVEDORE_SEED_FROM\)/);
    });
  });
}
