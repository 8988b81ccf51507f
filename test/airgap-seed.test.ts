import assert from 'node:assert/strict';
import { copyFile, mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar';
import { buildImage, buildIndex, writeOciLayout, type BuiltImage } from './helpers/oci-image.js';
import { startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';
import { hostOf, inspectRaw, pull, sha256, skopeo } from './helpers/proxy-fixtures.js';
import { corrupt, exists, stevedore, storeBlobPath } from './helpers/airgap.js';

/**
 * `stevedore seed` from an OCI layout, a docker-archive made by skopeo, a registry directory and a
 * `stevedore export` archive; then skopeo pulls from the store served read-only give the original
 * digests. Corrupt input is refused, named, and leaves nothing visible.
 */

describe('stevedore seed and export: carry images across an air gap', () => {
  const dirs: string[] = [];
  const running: RunningProcess[] = [];
  const app = buildImage({ layerSizes: [3000, 4000], seed: 'seed-app' });
  const amd64 = buildImage({ layerSizes: [2000], architecture: 'amd64', seed: 'seed-amd64' });
  const arm64 = buildImage({ layerSizes: [2000], architecture: 'arm64', seed: 'seed-arm64' });
  const index = buildIndex([amd64, arm64]);
  const archived = buildImage({ layerSizes: [2500, 3500], seed: 'seed-archived' });
  const dirImage = buildImage({ layerSizes: [1500], seed: 'seed-dir' });
  let work: string;
  let store: string;
  let archivePath: string;

  const dir = async (prefix: string) => {
    const d = await tempDir(prefix);
    dirs.push(d);
    return d;
  };
  const serve = async (root: string) => {
    const registry = await startStevedoreRegistry(['--root', root, '--read-only']);
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
    store = await dir('airgap-seed-store-');
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
  });

  it('seeds an OCI layout: repo:tag names as they are, a bare tag only with --name', async () => {
    const app1 = await stevedore(['seed', '--from', join(work, 'oci-app'), '--store', store]);
    assert.equal(app1.code, 0, app1.stderr);
    assert.match(app1.stderr, /ok team\/app:v1 \(sha256:[0-9a-f]{64}\): 3 blob\(s\) imported/);

    const multi = join(work, 'oci-multi');
    await writeOciLayout(multi, 'v2', [amd64, arm64], index);
    const unnamed = await stevedore(['seed', '--from', multi, '--store', store]);
    assert.equal(unnamed.code, 1);
    assert.match(unnamed.stderr, /a tag only; give --name REPO to store it as REPO:v2/);
    const named = await stevedore(['seed', '--from', multi, '--store', store, '--name', 'team/multi']);
    assert.equal(named.code, 0, named.stderr);
    assert.match(named.stderr, /ok team\/multi:v2/);
  });

  it('seeds a docker-archive made by skopeo, plain and gzip-compressed', async () => {
    const plain = await stevedore(['seed', '--from', archivePath, '--store', store]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.match(plain.stderr, /from docker-archive .*\nok team\/archived:v1 .*: 3 blob\(s\) imported/);
    // The same archive gzip-compressed, into a fresh store: the same manifest (built from the same bytes).
    const gz = join(work, 'archived.tar.gz');
    await writeFile(gz, gzipSync(await readFile(archivePath), { level: 1 }));
    const other = await dir('airgap-seed-gz-');
    const compressed = await stevedore(['seed', '--from', gz, '--store', other]);
    assert.equal(compressed.code, 0, compressed.stderr);
    const digestOf = (text: string) => /ok team\/archived:v1 \((sha256:[0-9a-f]{64})\)/.exec(text)?.[1];
    assert.equal(digestOf(compressed.stderr), digestOf(plain.stderr));
    assert.deepEqual(await readdir(join(other, '_tmp', '_seed')), [], 'the extracted archive is removed');
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

    const result = await stevedore(['seed', '--from', reg, '--store', store]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /ok team\/dir:v1 /);
    assert.match(result.stderr, /ok team\/dir:copy /);
    assert.match(result.stderr, /ok other\/thing:latest /);
  });

  it('the read-only store serves every seeded image with its original digests; export → seed gives the same store', async () => {
    const registry = await serve(store);
    await checkServed(registry.url);

    const out = join(work, 'store-export.tar.gz');
    const exported = await stevedore(['export', '--store', store, '--out', out]);
    assert.equal(exported.code, 0, exported.stderr);
    assert.match(exported.stderr, /exported 5 repositories, 6 tag\(s\), \d+ blob\(s\)/);
    const across = await dir('airgap-seed-across-');
    const seeded = await stevedore(['seed', '--from', out, '--store', across]);
    assert.equal(seeded.code, 0, seeded.stderr);
    assert.match(seeded.stderr, /from Stevedore export/);
    const copy = await serve(across);
    await checkServed(copy.url);

    // The same round trip through a zstd archive (zlib on Node >= 22.15, the zstd command before).
    const zst = join(work, 'store-export.tar.zst');
    const exportedZst = await stevedore(['export', '--store', store, '--out', zst]);
    assert.equal(exportedZst.code, 0, exportedZst.stderr);
    assert.deepEqual([...(await readFile(zst)).subarray(0, 4)], [0x28, 0xb5, 0x2f, 0xfd], 'a zstd frame');
    const acrossZst = await dir('airgap-seed-across-zst-');
    const seededZst = await stevedore(['seed', '--from', zst, '--store', acrossZst]);
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
    const target = await dir('airgap-seed-bad-');
    const result = await stevedore(['seed', '--from', layout, '--store', target]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, new RegExp(`team/bad:v1: blob ${broken.digest} \\(.*\\) is corrupt: its content hashes to sha256:[0-9a-f]{64}`));
    assert.ok(!(await exists(join(target, 'repositories', 'team', 'bad'))), 'no link, manifest or tag of the refused image');
    assert.ok(!(await exists(storeBlobPath(target, broken.digest))));
    assert.deepEqual(await readdir(join(target, '_tmp', '_hosted')), []);

    // A docker-archive whose layer was altered: its diff ID (in the config) gives it away.
    const extracted = join(work, 'archive-dir');
    await mkdir(extracted);
    await tar.x({ file: archivePath, cwd: extracted });
    const layerFile = join(extracted, `${diffIds(archived)[0]!.slice(7)}.tar`);
    await corrupt(layerFile);
    const fromArchive = await stevedore(['seed', '--from', extracted, '--store', target]);
    assert.equal(fromArchive.code, 1);
    assert.match(fromArchive.stderr, new RegExp(`team/archived:v1: layer 1 \\(${diffIds(archived)[0]!.slice(7)}\\.tar\\) is corrupt: its name says ${diffIds(archived)[0]}, its content hashes to`));
    assert.ok(!(await exists(join(target, 'repositories', 'team', 'archived'))));

    // An export archive with a damaged blob: every blob is verified again on the way in.
    const exportDir = join(work, 'export-dir');
    await mkdir(exportDir);
    await tar.x({ file: join(work, 'store-export.tar.gz'), cwd: exportDir });
    const damaged = app.layers[0]!;
    await corrupt(storeBlobPath(exportDir, damaged.digest));
    const fromExport = await stevedore(['seed', '--from', exportDir, '--store', target]);
    assert.equal(fromExport.code, 1);
    assert.match(fromExport.stderr, new RegExp(`team/app@${app.manifest.digest} \\(v1\\): blob ${damaged.digest} .* is corrupt`));
    assert.ok(!(await exists(join(target, 'repositories', 'team', 'app', '_manifests'))));
    assert.match(fromExport.stderr, /ok team\/multi:v2/, 'the intact images of the export are seeded');
  });

  it('says what to do with input it cannot read', async () => {
    const zst = join(work, 'images.tar.zst');
    await writeFile(zst, Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(600)]));
    const target = await dir('airgap-seed-zst-');
    const zstd = await stevedore(['seed', '--from', zst, '--store', target]);
    assert.equal(zstd.code, 1);
    assert.match(zstd.stderr, /zstd|cannot read the archive/i);
    const text = join(work, 'notes.txt');
    await copyFile(join(work, 'oci-app', 'index.json'), text);
    const notTar = await stevedore(['seed', '--from', text, '--store', target]);
    assert.equal(notTar.code, 1);
    assert.match(notTar.stderr, /is not a tar archive/);
    const missing = await stevedore(['seed', '--store', target]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /missing --from \(STEVEDORE_SEED_FROM\)/);
  });
});
