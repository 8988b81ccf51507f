import assert from 'node:assert/strict';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildImage, buildIndex, writeOciLayout, type Blob, type BuiltImage } from './helpers/oci-image.js';
import { startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';
import { assertOciError, fetchText, raw, sha256, skopeo, skopeoOk } from './helpers/hosted.js';

/**
 * The hosted worker with a real client: skopeo 1.9 pushes, pulls, lists, deletes and mounts over plain
 * HTTP, on each storage driver (a directory, and Ceph RGW through the S3 driver).
 */

const TLS_OFF = '--tls-verify=false';
const SRC_TLS_OFF = '--src-tls-verify=false';
const DEST_TLS_OFF = '--dest-tls-verify=false';

let dir: string;
let storage: TestStorage;
let reg: RunningProcess;
let host: string;
// One layer above SMALL_BLOB_MAX (64 KiB): served by the file / store streaming path, not from memory.
const single = buildImage({ layerSizes: [3000, 300_000], seed: 'skopeo-single' });
const amd = buildImage({ layerSizes: [2000], architecture: 'amd64', seed: 'skopeo-multi' });
const arm = buildImage({ layerSizes: [2500], architecture: 'arm64', seed: 'skopeo-multi' });
const multi = buildIndex([amd, arm]);

/** The manifest digest an OCI layout's index.json points at. */
async function layoutDigest(layout: string): Promise<string> {
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
  assert.equal(index.manifests.length, 1);
  return index.manifests[0]!.digest;
}

/** Asserts that an OCI layout holds each blob, byte for byte (its file hashes to its digest). */
async function assertLayoutHolds(layout: string, blobs: Blob[]): Promise<void> {
  for (const blob of blobs) {
    const data = await readFile(join(layout, 'blobs', 'sha256', blob.digest.slice(7)));
    assert.equal(sha256(data), blob.digest);
    assert.equal(data.length, blob.size);
  }
}

const imageBlobs = (image: BuiltImage): Blob[] => [image.manifest, image.config, ...image.layers];

function hooks(kind: (typeof STORAGE_KINDS)[number]): void {
  before(async () => {
    dir = await tempDir(`hosted-skopeo-${kind}-`);
    await writeOciLayout(join(dir, 'single'), 'v1', [single]);
    await writeOciLayout(join(dir, 'multi'), 'v1', [amd, arm], multi);
    storage = await testStorage(kind);
    reg = await startStevedoreRegistry(['--root', storage.root, ...storage.args], storage.env);
    host = reg.url.slice('http://'.length);
  });

  after(async () => {
    await reg?.stop();
    await storage?.cleanup();
    await rm(dir, { recursive: true, force: true });
  });
}

for (const kind of STORAGE_KINDS) {
  describe(`hosted worker on ${kind}`, () => {
    hooks(kind);

    describe('skopeo against the hosted worker', () => {
      it('push an OCI layout: the registry serves the same manifest digest, and a copy back has the same manifest, config and layers', async () => {
        await skopeoOk(['copy', DEST_TLS_OFF, `oci:${join(dir, 'single')}:v1`, `docker://${host}/team/app:v1`]);
        const rawManifest = await skopeoOk(['inspect', '--raw', TLS_OFF, `docker://${host}/team/app:v1`]);
        assert.equal(sha256(rawManifest), single.manifest.digest);
        const inspected = JSON.parse(await skopeoOk(['inspect', TLS_OFF, `docker://${host}/team/app:v1`])) as { Digest: string; Architecture: string; Layers: string[] };
        assert.equal(inspected.Digest, single.manifest.digest);
        assert.equal(inspected.Architecture, 'amd64');
        assert.deepEqual(inspected.Layers, single.layers.map((l) => l.digest));

        const back = join(dir, 'back');
        await skopeoOk(['copy', SRC_TLS_OFF, `docker://${host}/team/app:v1`, `oci:${back}:v1`]);
        assert.equal(await layoutDigest(back), single.manifest.digest);
        await assertLayoutHolds(back, imageBlobs(single));
      });

      it('multi-arch: copy --all pushes the index and both images; a single platform child is inspected by digest', async () => {
        await skopeoOk(['copy', '--all', DEST_TLS_OFF, `oci:${join(dir, 'multi')}:v1`, `docker://${host}/team/multi:v1`]);
        assert.equal(sha256(await skopeoOk(['inspect', '--raw', TLS_OFF, `docker://${host}/team/multi:v1`])), multi.digest);
        const child = await skopeoOk(['inspect', '--raw', TLS_OFF, `docker://${host}/team/multi@${arm.manifest.digest}`]);
        assert.equal(sha256(child), arm.manifest.digest);
        // skopeo resolves the platform through the index (its Digest field stays the index's).
        const armInspect = JSON.parse(await skopeoOk(['inspect', TLS_OFF, '--override-arch', 'arm64', `docker://${host}/team/multi:v1`])) as { Digest: string; Architecture: string; Layers: string[] };
        assert.equal(armInspect.Architecture, 'arm64');
        assert.deepEqual(armInspect.Layers, arm.layers.map((l) => l.digest));
        assert.equal(armInspect.Digest, multi.digest);

        const back = join(dir, 'multi-back');
        await skopeoOk(['copy', '--all', SRC_TLS_OFF, `docker://${host}/team/multi:v1`, `oci:${back}:v1`]);
        assert.equal(await layoutDigest(back), multi.digest);
        await assertLayoutHolds(back, [multi, ...imageBlobs(amd), ...imageBlobs(arm)]);
      });

      it('list-tags lists the tags of a repository; an unknown repository fails', async () => {
        await skopeoOk(['copy', SRC_TLS_OFF, DEST_TLS_OFF, `docker://${host}/team/app:v1`, `docker://${host}/team/app:v2`]);
        await skopeoOk(['copy', SRC_TLS_OFF, DEST_TLS_OFF, `docker://${host}/team/app:v1`, `docker://${host}/team/app:1.0`]);
        const tags = JSON.parse(await skopeoOk(['list-tags', TLS_OFF, `docker://${host}/team/app`])) as { Repository: string; Tags: string[] };
        assert.equal(tags.Repository, `${host}/team/app`);
        assert.deepEqual(tags.Tags, ['1.0', 'v1', 'v2']);
        const unknown = await skopeo(['list-tags', TLS_OFF, `docker://${host}/team/none`]);
        assert.notEqual(unknown.code, 0);
        assert.match(unknown.stderr, /repository name not known to registry|NAME_UNKNOWN|404/i);
      });

      it('delete by tag (skopeo deletes the manifest the tag names) and by digest', async () => {
        const first = buildImage({ layerSizes: [1000], seed: 'skopeo-delete-1' });
        const second = buildImage({ layerSizes: [1000], seed: 'skopeo-delete-2' });
        await writeOciLayout(join(dir, 'del1'), 'v1', [first]);
        await writeOciLayout(join(dir, 'del2'), 'v1', [second]);
        await skopeoOk(['copy', DEST_TLS_OFF, `oci:${join(dir, 'del1')}:v1`, `docker://${host}/team/del:a`]);
        await skopeoOk(['copy', DEST_TLS_OFF, `oci:${join(dir, 'del2')}:v1`, `docker://${host}/team/del:b`]);

        await skopeoOk(['delete', TLS_OFF, `docker://${host}/team/del:a`]);
        const gone = await skopeo(['inspect', '--raw', TLS_OFF, `docker://${host}/team/del:a`]);
        assert.notEqual(gone.code, 0);
        assert.match(gone.stderr, /manifest unknown/i);
        assertOciError(await fetchText(`${reg.url}/v2/team/del/manifests/${first.manifest.digest}`), 404, 'MANIFEST_UNKNOWN');
        assert.equal(sha256(await skopeoOk(['inspect', '--raw', TLS_OFF, `docker://${host}/team/del:b`])), second.manifest.digest);

        await skopeoOk(['delete', TLS_OFF, `docker://${host}/team/del@${second.manifest.digest}`]);
        assert.notEqual((await skopeo(['inspect', '--raw', TLS_OFF, `docker://${host}/team/del@${second.manifest.digest}`])).code, 0);
        assertOciError(await fetchText(`${reg.url}/v2/team/del/manifests/b`), 404, 'MANIFEST_UNKNOWN');
        assert.deepEqual(JSON.parse(await skopeoOk(['list-tags', TLS_OFF, `docker://${host}/team/del`])).Tags, []);
      });

      it('copy between two repositories of the registry mounts the layers (POST ?mount= answers 201)', async () => {
        await skopeoOk(['copy', SRC_TLS_OFF, DEST_TLS_OFF, `docker://${host}/team/app:v1`, `docker://${host}/other/app:v1`]);
        assert.equal(sha256(await skopeoOk(['inspect', '--raw', TLS_OFF, `docker://${host}/other/app:v1`])), single.manifest.digest);
        const mounted = reg.logLines().filter((l) => l.msg === 'blob mounted' && l.name === 'other/app').map((l) => [l.from, l.digest]);
        for (const layer of single.layers) assert.deepEqual(mounted.filter(([, digest]) => digest === layer.digest), [['team/app', layer.digest]]);
        for (const blob of [single.config, ...single.layers]) {
          const head = await raw({ port: reg.port }, 'HEAD', `/v2/other/app/blobs/${blob.digest}`);
          assert.equal(head.status, 200, blob.digest);
          assert.equal(head.headers['content-length'], String(blob.size));
        }
      });

      it('5 concurrent pulls give the same digests', async () => {
        const dirs = Array.from({ length: 5 }, (_, i) => join(dir, `pull-${i}`));
        await Promise.all(dirs.map((d) => skopeoOk(['copy', SRC_TLS_OFF, `docker://${host}/team/app:v1`, `oci:${d}:v1`])));
        for (const d of dirs) {
          assert.equal(await layoutDigest(d), single.manifest.digest);
          await assertLayoutHolds(d, imageBlobs(single));
        }
      });
    });

    describe('--read-only worker', () => {
      it('serves a store filled beforehand and refuses every write', async (t) => {
        const seeded = await testStorage(storage.kind);
        t.after(() => seeded.cleanup());
        const writer = await startStevedoreRegistry(['--root', seeded.root, ...seeded.args], seeded.env);
        t.after(() => writer.stop());
        const writerHost = writer.url.slice('http://'.length);
        await skopeoOk(['copy', DEST_TLS_OFF, `oci:${join(dir, 'single')}:v1`, `docker://${writerHost}/seed/app:v1`]);
        assert.equal(await writer.stop(), 0);

        const ro = await startStevedoreRegistry(['--root', seeded.root, ...seeded.args, '--read-only'], seeded.env);
        t.after(() => ro.stop());
        assert.equal(ro.logLines().find((l) => l.msg === 'registry listening')?.readOnly, true);
        const roHost = ro.url.slice('http://'.length);
        const pulled = join(dir, 'ro-pull');
        await skopeoOk(['copy', SRC_TLS_OFF, `docker://${roHost}/seed/app:v1`, `oci:${pulled}:v1`]);
        assert.equal(await layoutDigest(pulled), single.manifest.digest);
        await assertLayoutHolds(pulled, imageBlobs(single));
        assert.deepEqual(JSON.parse(await skopeoOk(['list-tags', TLS_OFF, `docker://${roHost}/seed/app`])).Tags, ['v1']);

        const push = await skopeo(['copy', DEST_TLS_OFF, `oci:${join(dir, 'multi')}:v1`, `docker://${roHost}/seed/other:v1`]);
        assert.notEqual(push.code, 0);
        assert.match(push.stderr, /read-only|405|unsupported/i);
        const del = await skopeo(['delete', TLS_OFF, `docker://${roHost}/seed/app:v1`]);
        assert.notEqual(del.code, 0);

        const target = { port: ro.port };
        const writes: Array<[string, string]> = [
          ['POST', '/v2/seed/app/blobs/uploads/'],
          ['POST', `/v2/seed/app/blobs/uploads/?digest=${sha256('x')}`],
          ['POST', `/v2/seed/new/blobs/uploads/?mount=${single.layers[0]!.digest}&from=seed/app`],
          ['PATCH', '/v2/seed/app/blobs/uploads/0b6a3f1e-2c4d-4e5f-8a9b-0c1d2e3f4a5b'],
          ['PUT', `/v2/seed/app/blobs/uploads/0b6a3f1e-2c4d-4e5f-8a9b-0c1d2e3f4a5b?digest=${sha256('x')}`],
          ['DELETE', '/v2/seed/app/blobs/uploads/0b6a3f1e-2c4d-4e5f-8a9b-0c1d2e3f4a5b'],
          ['PUT', '/v2/seed/app/manifests/v2'],
          ['DELETE', '/v2/seed/app/manifests/v1'],
          ['DELETE', `/v2/seed/app/blobs/${single.layers[0]!.digest}`],
        ];
        for (const [method, path] of writes) {
          const res = await raw(target, method, path, { body: 'x', headers: { 'content-type': single.manifest.mediaType } });
          const error = assertOciError(res, 405, 'UNSUPPORTED', `${method} ${path}`);
          assert.match(error.message, /read-only/);
        }
        // Nothing changed: the image is still complete and tagged.
        assert.equal(sha256(await skopeoOk(['inspect', '--raw', TLS_OFF, `docker://${roHost}/seed/app:v1`])), single.manifest.digest);
        const blob = await fetch(`${ro.url}/v2/seed/app/blobs/${single.layers[0]!.digest}`);
        assert.equal(blob.status, 200);
        assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), single.layers[0]!.digest);
        assertOciError(await fetchText(`${ro.url}/v2/seed/new/blobs/${single.layers[0]!.digest}`), 404, 'BLOB_UNKNOWN');
      });
    });
  });
}
