import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildImage, buildIndex } from './helpers/oci-image.js';
import { startStevedoreRegistry, type RunningProcess } from './helpers/processes.js';
import { STORAGE_KINDS, testStorage, type StorageKind, type TestStorage } from './helpers/storage-targets.js';
import { assertOciError, fetchText, pushBlob, pushImage, pushManifest, raw, rawSocket, sha256, sha512, type Target } from './helpers/hosted.js';

/**
 * The hosted worker's OCI distribution-spec v1.1 API, driven over loopback HTTP against a real
 * `stevedore registry` process: exact statuses, headers and OCI error codes.
 */

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
const EMPTY = 'application/vnd.oci.empty.v1+json';

let storage: TestStorage;
let root: string;
let reg: RunningProcess;
let base: string;
let target: Target;

/** Whether the store has `key` (a file on the filesystem, an object on S3). */
const exists = (key: string): Promise<boolean> => storage.driver.stat(key).then(() => true, () => false);
/** Whether the store has any key under `prefix` (an upload session's `_uploads/<id>/`). */
const existsUnder = async (prefix: string): Promise<boolean> => {
  const page = await storage.driver.list(prefix, { limit: 1 });
  return page.keys.length > 0;
};

/** The blob key of the layout (blobs/<alg>/<2 hex>/<hex>), to check what reached the content store. */
function blobFile(digest: string): string {
  const [alg, hex] = digest.split(':') as [string, string];
  return `blobs/${alg}/${hex.slice(0, 2)}/${hex}`;
}

function hooks(kind: StorageKind): void {
  before(async () => {
    storage = await testStorage(kind);
    root = storage.root;
    reg = await startStevedoreRegistry(['--root', root, ...storage.args], storage.env);
    base = reg.url;
    target = { port: reg.port };
  });

  after(async () => {
    await reg?.stop();
    await storage?.cleanup();
  });
}

async function startSession(name: string): Promise<string> {
  const res = await fetch(`${base}/v2/${name}/blobs/uploads/`, { method: 'POST' });
  assert.equal(res.status, 202);
  const location = res.headers.get('location')!;
  assert.match(location, new RegExp(`^/v2/${name}/blobs/uploads/[0-9a-f-]{36}$`));
  return location;
}

for (const kind of STORAGE_KINDS) describe(`hosted API on ${kind}`, () => {
  hooks(kind);

  describe('base endpoint', () => {
    it('GET and HEAD /v2/ answer 200 with Docker-Distribution-API-Version', async () => {
      for (const path of ['/v2/', '/v2']) {
        const res = await fetch(`${base}${path}`);
        assert.equal(res.status, 200, path);
        assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0');
        assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
        assert.deepEqual(await res.json(), {});
      }
      const head = await raw(target, 'HEAD', '/v2/');
      assert.equal(head.status, 200);
      assert.equal(head.headers['docker-distribution-api-version'], 'registry/2.0');
      assert.equal(head.body.length, 0);
    });

    it('other methods are 405 UNSUPPORTED with Allow', async () => {
      const res = await fetchText(`${base}/v2/`, { method: 'POST' });
      assertOciError(res, 405, 'UNSUPPORTED');
      assert.equal(res.headers.get('allow'), 'GET, HEAD');
    });

    it('?ns= of a host is echoed as OCI-Namespace; anything else is not', async () => {
      assert.equal((await fetch(`${base}/v2/?ns=quay.io`)).headers.get('oci-namespace'), 'quay.io');
      assert.equal((await fetch(`${base}/v2/?ns=registry.local:5000`)).headers.get('oci-namespace'), 'registry.local:5000');
      assert.equal((await fetch(`${base}/v2/?ns=${encodeURIComponent('a/b\r\nx: y')}`)).headers.get('oci-namespace'), null);
    });
  });

  describe('manifests', () => {
    const image = buildImage({ layerSizes: [700], seed: 'api-get' });
    let digest: string;

    before(async () => {
      digest = await pushImage(base, 'api/get', 'v1', image);
    });

    it('GET by tag and by digest: body, Content-Type, Docker-Content-Digest, Content-Length, ETag', async () => {
      for (const ref of ['v1', digest]) {
        const res = await fetch(`${base}/v2/api/get/manifests/${ref}`, { headers: { accept: OCI_MANIFEST } });
        assert.equal(res.status, 200, ref);
        assert.equal(res.headers.get('content-type'), OCI_MANIFEST);
        assert.equal(res.headers.get('docker-content-digest'), image.manifest.digest);
        assert.equal(res.headers.get('content-length'), String(image.manifest.size));
        assert.equal(res.headers.get('etag'), `"${image.manifest.digest}"`);
        assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0');
        assert.deepEqual(Buffer.from(await res.arrayBuffer()), image.manifest.data);
      }
    });

    it('HEAD by tag and by digest: the same headers, no body', async () => {
      for (const ref of ['v1', digest]) {
        const res = await raw(target, 'HEAD', `/v2/api/get/manifests/${ref}`);
        assert.equal(res.status, 200, ref);
        assert.equal(res.headers['content-type'], OCI_MANIFEST);
        assert.equal(res.headers['docker-content-digest'], image.manifest.digest);
        assert.equal(res.headers['content-length'], String(image.manifest.size));
        assert.equal(res.body.length, 0);
      }
    });

    it('If-None-Match with the ETag is 304', async () => {
      const res = await fetch(`${base}/v2/api/get/manifests/v1`, { headers: { 'if-none-match': `"${digest}"` } });
      assert.equal(res.status, 304);
      assert.equal(res.headers.get('docker-content-digest'), digest);
    });

    it('Accept: a header naming only other manifest types is 404 MANIFEST_UNKNOWN; one naming this type, none, or */* is 200', async () => {
      assertOciError(await fetchText(`${base}/v2/api/get/manifests/v1`, { headers: { accept: DOCKER_MANIFEST } }), 404, 'MANIFEST_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/get/manifests/${digest}`, { headers: { accept: `${DOCKER_MANIFEST}, ${DOCKER_LIST}, ${OCI_INDEX}` } }), 404, 'MANIFEST_UNKNOWN');
      for (const accept of [`${DOCKER_MANIFEST}, ${OCI_MANIFEST}`, `${OCI_INDEX};q=0.5, ${OCI_MANIFEST};q=0.9`, 'application/json', '*/*']) {
        const res = await fetch(`${base}/v2/api/get/manifests/v1`, { headers: { accept } });
        assert.equal(res.status, 200, accept);
        assert.equal(res.headers.get('content-type'), OCI_MANIFEST);
      }
      const none = await raw(target, 'GET', '/v2/api/get/manifests/v1');
      assert.equal(none.status, 200);
    });

    it('unknown tags and digests, and manifests of other repositories, are 404 MANIFEST_UNKNOWN', async () => {
      assertOciError(await fetchText(`${base}/v2/api/get/manifests/v2`), 404, 'MANIFEST_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/get/manifests/${sha256('nothing')}`), 404, 'MANIFEST_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/other/manifests/${digest}`), 404, 'MANIFEST_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/other/manifests/v1`), 404, 'MANIFEST_UNKNOWN');
      const head = await raw(target, 'HEAD', '/v2/api/get/manifests/v2');
      assert.equal(head.status, 404);
      assert.equal(head.body.length, 0);
    });

    it('PUT answers 201 with Location and Docker-Content-Digest', async () => {
      const other = buildImage({ layerSizes: [300], seed: 'api-put-201' });
      for (const blob of [other.config, ...other.layers]) await pushBlob(base, 'api/put', blob.data, blob.digest);
      const res = await fetch(`${base}/v2/api/put/manifests/v1`, { method: 'PUT', body: other.manifest.data, headers: { 'content-type': OCI_MANIFEST } });
      assert.equal(res.status, 201);
      assert.equal(res.headers.get('location'), `/v2/api/put/manifests/${other.manifest.digest}`);
      assert.equal(res.headers.get('docker-content-digest'), other.manifest.digest);
      assert.equal(res.headers.get('oci-subject'), null);
    });

    it('PUT by digest with a digest that does not match the body is 400 DIGEST_INVALID and stores nothing', async () => {
      const other = buildImage({ layerSizes: [300], seed: 'api-put-digest' });
      for (const blob of [other.config, ...other.layers]) await pushBlob(base, 'api/put', blob.data, blob.digest);
      const wrong = sha256('something else');
      const res = await fetchText(`${base}/v2/api/put/manifests/${wrong}`, { method: 'PUT', body: other.manifest.data, headers: { 'content-type': OCI_MANIFEST } });
      assertOciError(res, 400, 'DIGEST_INVALID');
      assertOciError(await fetchText(`${base}/v2/api/put/manifests/${wrong}`), 404, 'MANIFEST_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/put/manifests/${other.manifest.digest}`), 404, 'MANIFEST_UNKNOWN');
      // The right digest is accepted.
      const ok = await fetch(`${base}/v2/api/put/manifests/${other.manifest.digest}`, { method: 'PUT', body: other.manifest.data, headers: { 'content-type': OCI_MANIFEST } });
      assert.equal(ok.status, 201);
    });

    it('a manifest referencing a blob the repository does not have is 400 MANIFEST_BLOB_UNKNOWN (even if another repository has it)', async () => {
      const other = buildImage({ layerSizes: [300, 400], seed: 'api-blob-unknown' });
      await pushBlob(base, 'api/missing', other.config.data);
      await pushBlob(base, 'api/missing', other.layers[0]!.data);
      await pushBlob(base, 'api/elsewhere', other.layers[1]!.data);
      const res = await fetchText(`${base}/v2/api/missing/manifests/v1`, { method: 'PUT', body: other.manifest.data, headers: { 'content-type': OCI_MANIFEST } });
      const error = assertOciError(res, 400, 'MANIFEST_BLOB_UNKNOWN');
      assert.deepEqual(error.detail, { missing: [other.layers[1]!.digest] });
      assertOciError(await fetchText(`${base}/v2/api/missing/manifests/v1`), 404, 'MANIFEST_UNKNOWN');
      // An index whose child manifest is not in the repository.
      const index = buildIndex([other]);
      assertOciError(await fetchText(`${base}/v2/api/missing/manifests/idx`, { method: 'PUT', body: index.data, headers: { 'content-type': OCI_INDEX } }), 400, 'MANIFEST_BLOB_UNKNOWN');
    });

    it('malformed manifests and tags are 400 MANIFEST_INVALID', async () => {
      const other = buildImage({ layerSizes: [100], seed: 'api-invalid' });
      await pushImage(base, 'api/invalid', 'base', other);
      const put = (ref: string, body: string | Buffer, contentType = OCI_MANIFEST) =>
        fetchText(`${base}/v2/api/invalid/manifests/${ref}`, { method: 'PUT', body, headers: { 'content-type': contentType } });
      assertOciError(await put('x', 'not json'), 400, 'MANIFEST_INVALID');
      assertOciError(await put('x', '{"schemaVersion":1}'), 400, 'MANIFEST_INVALID');
      assertOciError(await put('x', other.manifest.data, DOCKER_MANIFEST), 400, 'MANIFEST_INVALID');
      assertOciError(await put('x', ''), 400, 'MANIFEST_INVALID');
      assertOciError(await put('-x', other.manifest.data), 400, 'MANIFEST_INVALID');
      assertOciError(await put(`x?tag=${encodeURIComponent('bad tag')}`, other.manifest.data), 400, 'MANIFEST_INVALID');
      assertOciError(await fetchText(`${base}/v2/api/invalid/manifests/x`), 404, 'MANIFEST_UNKNOWN');
    });

    it('annotations that are not string → string (10,000-level nesting included) are 400 MANIFEST_INVALID naming the field', async () => {
      const other = buildImage({ layerSizes: [150, 160, 170], seed: 'api-annotations' });
      await pushImage(base, 'api/annotations', 'base', other);
      const json = JSON.parse(other.manifest.data.toString()) as { config: object; layers: object[] };
      const put = (text: string) => fetchText(`${base}/v2/api/annotations/manifests/bad`, { method: 'PUT', body: text, headers: { 'content-type': OCI_MANIFEST } });
      // Built as text: a 10,000-level object is beyond JSON.stringify's recursion.
      const deep = `${'{"a":'.repeat(10_000)}"x"${'}'.repeat(10_000)}`;
      const withDeep = `{"schemaVersion":2,"mediaType":"${OCI_MANIFEST}","config":${JSON.stringify(json.config)},"layers":${JSON.stringify(json.layers)},"annotations":{"org.example":${deep}}}`;
      const error = assertOciError(await put(withDeep), 400, 'MANIFEST_INVALID');
      assert.match(error.message, /annotations\["org\.example"\] is an object: annotation values must be strings/);
      // The same in a layer descriptor and under a subject.
      const layers = json.layers.map((l, i) => (i === 2 ? { ...l, annotations: { n: 5 } } : l));
      assert.match(assertOciError(await put(JSON.stringify({ ...json, schemaVersion: 2, mediaType: OCI_MANIFEST, layers })), 400, 'MANIFEST_INVALID').message, /layers\[2\]\.annotations\["n"\] is a number/);
      const subject = { mediaType: OCI_MANIFEST, digest: sha256('s'), size: 1, annotations: { s: {} } };
      assert.match(assertOciError(await put(JSON.stringify({ ...json, schemaVersion: 2, mediaType: OCI_MANIFEST, subject })), 400, 'MANIFEST_INVALID').message, /subject\.annotations\["s"\]/);
      assertOciError(await fetchText(`${base}/v2/api/annotations/manifests/bad`), 404, 'MANIFEST_UNKNOWN');
    });

    it('a descriptor whose size differs from the stored blob or manifest is 400 MANIFEST_INVALID naming the field', async () => {
      const other = buildImage({ layerSizes: [150, 160, 170], seed: 'api-sizes' });
      const pushed = await pushImage(base, 'api/sizes', 'base', other);
      const json = JSON.parse(other.manifest.data.toString()) as { config: { size: number }; layers: Array<{ size: number }> };
      const put = (ref: string, body: string, contentType = OCI_MANIFEST) => fetchText(`${base}/v2/api/sizes/manifests/${ref}`, { method: 'PUT', body, headers: { 'content-type': contentType } });
      const layers = json.layers.map((l, i) => (i === 2 ? { ...l, size: 123 } : l));
      const error = assertOciError(await put('bad', JSON.stringify({ ...json, layers })), 400, 'MANIFEST_INVALID');
      assert.match(error.message, new RegExp(`layers\\[2\\]\\.size 123 does not match the stored blob's size ${other.layers[2]!.size}`));
      const config = { ...json.config, size: json.config.size + 1 };
      assert.match(assertOciError(await put('bad', JSON.stringify({ ...json, config })), 400, 'MANIFEST_INVALID').message,
        new RegExp(`config\\.size ${json.config.size + 1} does not match the stored blob's size ${json.config.size}`));
      const index = { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ mediaType: OCI_MANIFEST, digest: pushed, size: other.manifest.size - 1 }] };
      assert.match(assertOciError(await put('idx', JSON.stringify(index), OCI_INDEX), 400, 'MANIFEST_INVALID').message,
        new RegExp(`manifests\\[0\\]\\.size ${other.manifest.size - 1} does not match the stored manifest's size ${other.manifest.size}`));
      assertOciError(await fetchText(`${base}/v2/api/sizes/manifests/bad`), 404, 'MANIFEST_UNKNOWN');
      // The right sizes are accepted.
      const ok = await put('idx', JSON.stringify({ ...index, manifests: [{ ...index.manifests[0]!, size: other.manifest.size }] }), OCI_INDEX);
      assert.equal(ok.status, 201, ok.text);
    });

    it('a 4.9 MB manifest is 413 SIZE_INVALID (declared length or streamed); exactly 4 MiB is accepted', async () => {
      const other = buildImage({ layerSizes: [100], seed: 'api-size' });
      for (const blob of [other.config, ...other.layers]) await pushBlob(base, 'api/size', blob.data, blob.digest);
      const manifestOf = (size: number): Buffer => {
        const json = JSON.parse(other.manifest.data.toString()) as Record<string, unknown>;
        const skeleton = Buffer.from(JSON.stringify({ ...json, annotations: { pad: '' } }));
        return Buffer.from(JSON.stringify({ ...json, annotations: { pad: 'x'.repeat(size - skeleton.length) } }));
      };
      const big = manifestOf(4_900_000);
      assert.equal(big.length, 4_900_000);
      assertOciError(await fetchText(`${base}/v2/api/size/manifests/big`, { method: 'PUT', body: big, headers: { 'content-type': OCI_MANIFEST } }), 413, 'SIZE_INVALID');
      const streamed = new ReadableStream<Uint8Array>({
        start(controller) {
          for (let i = 0; i < big.length; i += 65536) controller.enqueue(big.subarray(i, i + 65536));
          controller.close();
        },
      });
      const chunked = await fetchText(`${base}/v2/api/size/manifests/big`, { method: 'PUT', body: streamed, headers: { 'content-type': OCI_MANIFEST }, duplex: 'half' } as RequestInit);
      assertOciError(chunked, 413, 'SIZE_INVALID');
      assertOciError(await fetchText(`${base}/v2/api/size/manifests/big`), 404, 'MANIFEST_UNKNOWN');

      const limit = manifestOf(4 * 1024 * 1024);
      const digest = await pushManifest(base, 'api/size', 'limit', limit, OCI_MANIFEST);
      const res = await fetch(`${base}/v2/api/size/manifests/limit`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('docker-content-digest'), digest);
      assert.deepEqual(Buffer.from(await res.arrayBuffer()), limit);
    });

    it('several ?tag= on one PUT tag the manifest under each of them', async () => {
      const other = buildImage({ layerSizes: [200], seed: 'api-tags' });
      for (const blob of [other.config, ...other.layers]) await pushBlob(base, 'api/multi', blob.data, blob.digest);
      const res = await fetch(`${base}/v2/api/multi/manifests/${other.manifest.digest}?tag=a&tag=b&tag=c`, { method: 'PUT', body: other.manifest.data, headers: { 'content-type': OCI_MANIFEST } });
      assert.equal(res.status, 201);
      assert.equal(res.headers.get('docker-content-digest'), other.manifest.digest);
      const byTag = await fetch(`${base}/v2/api/multi/manifests/v1?tag=v2`, { method: 'PUT', body: other.manifest.data, headers: { 'content-type': OCI_MANIFEST } });
      assert.equal(byTag.status, 201);
      for (const tag of ['a', 'b', 'c', 'v1', 'v2']) {
        const get = await fetch(`${base}/v2/api/multi/manifests/${tag}`);
        assert.equal(get.status, 200, tag);
        assert.equal(get.headers.get('docker-content-digest'), other.manifest.digest);
      }
      assert.deepEqual(await (await fetch(`${base}/v2/api/multi/tags/list`)).json(), { name: 'api/multi', tags: ['a', 'b', 'c', 'v1', 'v2'] });
    });

    it('DELETE of a tag is 202 and leaves the manifest and its other tags; DELETE by digest removes it with every tag', async () => {
      const other = buildImage({ layerSizes: [200], seed: 'api-delete' });
      const digest = await pushImage(base, 'api/delete', 'a', other);
      await pushManifest(base, 'api/delete', 'b', other.manifest.data, OCI_MANIFEST);
      await pushManifest(base, 'api/delete', 'c', other.manifest.data, OCI_MANIFEST);
      const del = await fetch(`${base}/v2/api/delete/manifests/a`, { method: 'DELETE' });
      assert.equal(del.status, 202);
      assert.equal(del.headers.get('docker-distribution-api-version'), 'registry/2.0');
      assertOciError(await fetchText(`${base}/v2/api/delete/manifests/a`), 404, 'MANIFEST_UNKNOWN');
      assert.equal((await fetch(`${base}/v2/api/delete/manifests/b`)).status, 200);
      assert.equal((await fetch(`${base}/v2/api/delete/manifests/${digest}`)).status, 200);
      assert.deepEqual(await (await fetch(`${base}/v2/api/delete/tags/list`)).json(), { name: 'api/delete', tags: ['b', 'c'] });
      assertOciError(await fetchText(`${base}/v2/api/delete/manifests/a`, { method: 'DELETE' }), 404, 'MANIFEST_UNKNOWN');

      assert.equal((await fetch(`${base}/v2/api/delete/manifests/${digest}`, { method: 'DELETE' })).status, 202);
      for (const ref of ['b', 'c', digest]) assertOciError(await fetchText(`${base}/v2/api/delete/manifests/${ref}`), 404, 'MANIFEST_UNKNOWN', ref);
      assert.deepEqual(await (await fetch(`${base}/v2/api/delete/tags/list`)).json(), { name: 'api/delete', tags: [] });
      assertOciError(await fetchText(`${base}/v2/api/delete/manifests/${digest}`, { method: 'DELETE' }), 404, 'MANIFEST_UNKNOWN');
      // The manifest can be pushed again.
      await pushManifest(base, 'api/delete', 'again', other.manifest.data, OCI_MANIFEST);
    });

    it('a sha512 manifest digest is verified and served', async () => {
      const other = buildImage({ layerSizes: [200], seed: 'api-sha512-manifest' });
      for (const blob of [other.config, ...other.layers]) await pushBlob(base, 'api/sha512m', blob.data, blob.digest);
      const digest = sha512(other.manifest.data);
      const res = await fetch(`${base}/v2/api/sha512m/manifests/${digest}?tag=t`, { method: 'PUT', body: other.manifest.data, headers: { 'content-type': OCI_MANIFEST } });
      assert.equal(res.status, 201);
      assert.equal(res.headers.get('docker-content-digest'), digest);
      for (const ref of [digest, 't']) {
        const get = await fetch(`${base}/v2/api/sha512m/manifests/${ref}`);
        assert.equal(get.status, 200);
        assert.equal(get.headers.get('docker-content-digest'), digest);
        assert.deepEqual(Buffer.from(await get.arrayBuffer()), other.manifest.data);
      }
    });

    it('an index of manifests in the repository is accepted and served as an index', async () => {
      const amd = buildImage({ layerSizes: [100], architecture: 'amd64', seed: 'api-index' });
      const arm = buildImage({ layerSizes: [100], architecture: 'arm64', seed: 'api-index' });
      await pushImage(base, 'api/index', amd.manifest.digest, amd);
      await pushImage(base, 'api/index', arm.manifest.digest, arm);
      const index = buildIndex([amd, arm]);
      await pushManifest(base, 'api/index', 'multi', index.data, OCI_INDEX);
      const res = await fetch(`${base}/v2/api/index/manifests/multi`);
      assert.equal(res.headers.get('content-type'), OCI_INDEX);
      assert.deepEqual(Buffer.from(await res.arrayBuffer()), index.data);
      assertOciError(await fetchText(`${base}/v2/api/index/manifests/multi`, { headers: { accept: OCI_MANIFEST } }), 404, 'MANIFEST_UNKNOWN');
    });
  });

  describe('blobs', () => {
    const small = randomBytes(1000);
    const large = randomBytes(200 * 1024);
    const empty = Buffer.alloc(0);

    before(async () => {
      await pushBlob(base, 'api/blobs', small);
      await pushBlob(base, 'api/blobs', large);
      await pushBlob(base, 'api/blobs', empty);
    });

    it('GET and HEAD: 200 with Content-Length, Docker-Content-Digest, ETag, Accept-Ranges', async () => {
      for (const data of [small, large, empty]) {
        const digest = sha256(data);
        const res = await fetch(`${base}/v2/api/blobs/blobs/${digest}`);
        assert.equal(res.status, 200);
        assert.equal(res.headers.get('content-length'), String(data.length));
        assert.equal(res.headers.get('content-type'), 'application/octet-stream');
        assert.equal(res.headers.get('docker-content-digest'), digest);
        assert.equal(res.headers.get('etag'), `"${digest}"`);
        assert.equal(res.headers.get('accept-ranges'), 'bytes');
        assert.deepEqual(Buffer.from(await res.arrayBuffer()), data);
        const head = await raw(target, 'HEAD', `/v2/api/blobs/blobs/${digest}`);
        assert.equal(head.status, 200);
        assert.equal(head.headers['content-length'], String(data.length));
        assert.equal(head.headers['docker-content-digest'], digest);
        assert.equal(head.body.length, 0);
      }
      const notModified = await fetch(`${base}/v2/api/blobs/blobs/${sha256(small)}`, { headers: { 'if-none-match': `"${sha256(small)}"` } });
      assert.equal(notModified.status, 304);
    });

    it('Range: 206 with Content-Range for bytes=a-b, a- and -n (small and streamed blobs)', async () => {
      for (const data of [small, large]) {
        const url = `${base}/v2/api/blobs/blobs/${sha256(data)}`;
        const size = data.length;
        const cases: Array<[string, number, number]> = [['bytes=10-19', 10, 19], ['bytes=0-0', 0, 0], [`bytes=${size - 3}-`, size - 3, size - 1],
          ['bytes=-5', size - 5, size - 1], [`bytes=100-${size + 1000}`, 100, size - 1], [`bytes=${size - 1}-${size - 1}`, size - 1, size - 1]];
        for (const [range, start, end] of cases) {
          const res = await fetch(url, { headers: { range } });
          assert.equal(res.status, 206, `${range} of ${size}`);
          assert.equal(res.headers.get('content-range'), `bytes ${start}-${end}/${size}`);
          assert.equal(res.headers.get('content-length'), String(end - start + 1));
          assert.equal(res.headers.get('docker-content-digest'), sha256(data));
          assert.deepEqual(Buffer.from(await res.arrayBuffer()), data.subarray(start, end + 1), range);
        }
        const head = await raw(target, 'HEAD', `/v2/api/blobs/blobs/${sha256(data)}`, { headers: { range: 'bytes=0-9' } });
        assert.equal(head.status, 206);
        assert.equal(head.headers['content-length'], '10');
        assert.equal(head.headers['content-range'], `bytes 0-9/${size}`);
      }
    });

    it('Range: unsatisfiable or malformed is 416 with Content-Range: bytes */size; multi-range and other units are a full 200', async () => {
      const url = `${base}/v2/api/blobs/blobs/${sha256(small)}`;
      for (const range of ['bytes=1000-', 'bytes=5000-6000', 'bytes=5-2', 'bytes=-0', 'bytes=abc', 'bytes=-']) {
        const res = await fetchText(url, { headers: { range } });
        assertOciError(res, 416, 'SIZE_INVALID', range);
        assert.equal(res.headers.get('content-range'), 'bytes */1000', range);
      }
      const emptyRange = await fetchText(`${base}/v2/api/blobs/blobs/${sha256(empty)}`, { headers: { range: 'bytes=0-' } });
      assertOciError(emptyRange, 416, 'SIZE_INVALID');
      assert.equal(emptyRange.headers.get('content-range'), 'bytes */0');
      for (const range of ['bytes=0-1,5-6', 'items=0-5']) {
        const res = await fetch(url, { headers: { range } });
        assert.equal(res.status, 200, range);
        assert.equal(res.headers.get('content-range'), null);
        assert.deepEqual(Buffer.from(await res.arrayBuffer()), small);
      }
    });

    it('unknown blobs, and blobs of other repositories, are 404 BLOB_UNKNOWN', async () => {
      assertOciError(await fetchText(`${base}/v2/api/blobs/blobs/${sha256('nope')}`), 404, 'BLOB_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/blobs/blobs/${sha512('nope')}`), 404, 'BLOB_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/elsewhere/blobs/${sha256(small)}`), 404, 'BLOB_UNKNOWN');
      const head = await raw(target, 'HEAD', `/v2/api/elsewhere/blobs/${sha256(small)}`);
      assert.equal(head.status, 404);
      assert.equal(head.body.length, 0);
    });

    it('DELETE unlinks a blob from the repository: 202, then 404 BLOB_UNKNOWN', async () => {
      const data = randomBytes(100);
      const digest = await pushBlob(base, 'api/blobdel', data);
      await pushBlob(base, 'api/blobkeep', data);
      assert.equal((await fetch(`${base}/v2/api/blobdel/blobs/${digest}`, { method: 'DELETE' })).status, 202);
      assertOciError(await fetchText(`${base}/v2/api/blobdel/blobs/${digest}`), 404, 'BLOB_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/blobdel/blobs/${digest}`, { method: 'DELETE' }), 404, 'BLOB_UNKNOWN');
      assert.equal((await fetch(`${base}/v2/api/blobkeep/blobs/${digest}`)).status, 200);
    });
  });

  describe('blob uploads', () => {
    it('monolithic POST ?digest=: 201 with Location and Docker-Content-Digest; larger than the manifest limit is fine', async () => {
      const data = randomBytes(5 * 1024 * 1024);
      const digest = sha256(data);
      const res = await fetch(`${base}/v2/api/mono/blobs/uploads/?digest=${digest}`, { method: 'POST', body: data, headers: { 'content-type': 'application/octet-stream' } });
      assert.equal(res.status, 201, await res.text());
      assert.equal(res.headers.get('location'), `/v2/api/mono/blobs/${digest}`);
      assert.equal(res.headers.get('docker-content-digest'), digest);
      const get = await fetch(`${base}/v2/api/mono/blobs/${digest}`);
      assert.equal(get.status, 200);
      assert.equal(sha256(Buffer.from(await get.arrayBuffer())), digest);
    });

    it('monolithic POST with a wrong digest is 400 DIGEST_INVALID and leaves nothing behind', async () => {
      const data = randomBytes(3000);
      const claimed = sha256('other content');
      assertOciError(await fetchText(`${base}/v2/api/mono/blobs/uploads/?digest=${claimed}`, { method: 'POST', body: data }), 400, 'DIGEST_INVALID');
      assertOciError(await fetchText(`${base}/v2/api/mono/blobs/${claimed}`), 404, 'BLOB_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/mono/blobs/${sha256(data)}`), 404, 'BLOB_UNKNOWN');
      assert.equal(await exists(blobFile(claimed)), false);
      assert.equal(await exists(blobFile(sha256(data))), false);
      // No temp file (filesystem) or multipart upload (S3) of the refused blob is left.
      for await (const write of storage.driver.listIncompleteWrites()) assert.fail(`left behind: ${JSON.stringify(write)}`);
    });

    it('POST then one PUT with the whole blob: 202 session, then 201', async () => {
      const data = randomBytes(4000);
      const digest = sha256(data);
      const post = await fetch(`${base}/v2/api/putonly/blobs/uploads/`, { method: 'POST' });
      assert.equal(post.status, 202);
      const location = post.headers.get('location')!;
      const uuid = post.headers.get('docker-upload-uuid')!;
      assert.equal(location, `/v2/api/putonly/blobs/uploads/${uuid}`);
      assert.equal(post.headers.get('range'), '0-0');
      assert.equal(post.headers.get('content-length'), '0');
      const put = await fetch(`${base}${location}?digest=${digest}`, { method: 'PUT', body: data, headers: { 'content-type': 'application/octet-stream' } });
      assert.equal(put.status, 201);
      assert.equal(put.headers.get('location'), `/v2/api/putonly/blobs/${digest}`);
      assert.equal(put.headers.get('docker-content-digest'), digest);
      assert.deepEqual(Buffer.from(await (await fetch(`${base}/v2/api/putonly/blobs/${digest}`)).arrayBuffer()), data);
      assertOciError(await fetchText(`${base}${location}`), 404, 'BLOB_UPLOAD_UNKNOWN');
      assert.equal(await existsUnder(`_uploads/${uuid}/`), false);
    });

    it('chunked PATCH with Content-Range, upload status, out-of-order chunks and the final PUT', async () => {
      const parts = [randomBytes(10), randomBytes(10), randomBytes(5), randomBytes(5)];
      const all = Buffer.concat(parts);
      const location = await startSession('api/chunked');
      const uuid = location.split('/').pop()!;
      const patch = (body: Buffer, headers: Record<string, string> = {}) =>
        fetchText(`${base}${location}`, { method: 'PATCH', body, headers: { 'content-type': 'application/octet-stream', ...headers } });

      const first = await patch(parts[0]!, { 'content-range': '0-9' });
      assert.equal(first.status, 202, first.text);
      assert.equal(first.headers.get('range'), '0-9');
      assert.equal(first.headers.get('location'), location);
      assert.equal(first.headers.get('docker-upload-uuid'), uuid);

      const status = await fetch(`${base}${location}`);
      assert.equal(status.status, 204);
      assert.equal(status.headers.get('range'), '0-9');
      assert.equal(status.headers.get('location'), location);
      assert.equal(status.headers.get('docker-upload-uuid'), uuid);

      for (const contentRange of ['20-29', '5-14', '0-9']) {
        const res = await patch(parts[1]!, { 'content-range': contentRange });
        assertOciError(res, 416, 'BLOB_UPLOAD_INVALID', contentRange);
        assert.equal(res.headers.get('range'), '0-9', contentRange);
        assert.equal(res.headers.get('location'), location);
      }
      assertOciError(await patch(parts[1]!, { 'content-range': 'abc' }), 416, 'BLOB_UPLOAD_INVALID');
      // Content-Length must agree with Content-Range.
      assertOciError(await patch(parts[2]!, { 'content-range': '10-19' }), 400, 'SIZE_INVALID');
      assert.equal((await fetch(`${base}${location}`)).headers.get('range'), '0-9');

      const second = await patch(parts[1]!, { 'content-range': '10-19' });
      assert.equal(second.status, 202);
      assert.equal(second.headers.get('range'), '0-19');
      // A streamed chunk without Content-Range is appended.
      const third = await patch(parts[2]!);
      assert.equal(third.status, 202);
      assert.equal(third.headers.get('range'), '0-24');

      const digest = sha256(all);
      const put = await fetch(`${base}${location}?digest=${digest}`, { method: 'PUT', body: parts[3], headers: { 'content-range': '25-29', 'content-type': 'application/octet-stream' } });
      assert.equal(put.status, 201);
      assert.equal(put.headers.get('docker-content-digest'), digest);
      assert.deepEqual(Buffer.from(await (await fetch(`${base}/v2/api/chunked/blobs/${digest}`)).arrayBuffer()), all);
      assertOciError(await fetchText(`${base}${location}`), 404, 'BLOB_UPLOAD_UNKNOWN');
    });

    it('a streamed chunk longer than its Content-Range is 400 SIZE_INVALID and not counted; the upload goes on', async () => {
      const location = await startSession('api/badchunk');
      const twelve = randomBytes(12);
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(twelve);
          controller.close();
        },
      });
      const res = await fetchText(`${base}${location}`, { method: 'PATCH', body, duplex: 'half', headers: { 'content-range': '0-9' } } as RequestInit);
      assertOciError(res, 400, 'SIZE_INVALID');
      assert.equal((await fetch(`${base}${location}`)).headers.get('range'), '0-0');
      const ten = randomBytes(10);
      const ok = await fetch(`${base}${location}`, { method: 'PATCH', body: ten, headers: { 'content-range': '0-9' } });
      assert.equal(ok.headers.get('range'), '0-9');
      const put = await fetch(`${base}${location}?digest=${sha256(ten)}`, { method: 'PUT' });
      assert.equal(put.status, 201, await put.text());
      assert.deepEqual(Buffer.from(await (await fetch(`${base}/v2/api/badchunk/blobs/${sha256(ten)}`)).arrayBuffer()), ten);
    });

    it('DELETE of an upload session is 204; then every use of it is 404 BLOB_UPLOAD_UNKNOWN', async () => {
      const location = await startSession('api/cancel');
      const uuid = location.split('/').pop()!;
      assert.equal((await fetch(`${base}${location}`, { method: 'PATCH', body: 'abc' })).status, 202);
      assert.equal(await existsUnder(`_uploads/${uuid}/`), true);
      const del = await fetch(`${base}${location}`, { method: 'DELETE' });
      assert.equal(del.status, 204);
      assert.equal(await existsUnder(`_uploads/${uuid}/`), false);
      assertOciError(await fetchText(`${base}${location}`), 404, 'BLOB_UPLOAD_UNKNOWN');
      assertOciError(await fetchText(`${base}${location}`, { method: 'PATCH', body: 'def' }), 404, 'BLOB_UPLOAD_UNKNOWN');
      assertOciError(await fetchText(`${base}${location}?digest=${sha256('abc')}`, { method: 'PUT' }), 404, 'BLOB_UPLOAD_UNKNOWN');
      assertOciError(await fetchText(`${base}${location}`, { method: 'DELETE' }), 404, 'BLOB_UPLOAD_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/cancel/blobs/${sha256('abc')}`), 404, 'BLOB_UNKNOWN');
    });

    it('a session belongs to its repository: another repository is 404 BLOB_UPLOAD_UNKNOWN', async () => {
      const location = await startSession('api/owner');
      const uuid = location.split('/').pop()!;
      assertOciError(await fetchText(`${base}/v2/api/thief/blobs/uploads/${uuid}`), 404, 'BLOB_UPLOAD_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/thief/blobs/uploads/${uuid}`, { method: 'PATCH', body: 'x' }), 404, 'BLOB_UPLOAD_UNKNOWN');
      assert.equal((await fetch(`${base}${location}`)).status, 204);
    });

    it('a DELETE while a chunk is still streaming cancels the session for good (no resurrected session, no 500)', async () => {
      const location = await startSession('api/racecancel');
      const uuid = location.split('/').pop()!;
      let release!: () => void;
      const gate = new Promise<void>((resolve) => { release = resolve; });
      let pulls = 0;
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          if (pulls++ === 0) return controller.enqueue(new Uint8Array(1000));
          await gate;
          controller.enqueue(new Uint8Array(1000));
          controller.close();
        },
      });
      const patch = fetchText(`${base}${location}`, { method: 'PATCH', body, duplex: 'half', headers: { 'content-type': 'application/octet-stream' } } as RequestInit);
      if (storage.kind === 'filesystem') {
        const dataFile = join(root, '_uploads', uuid, 'data');
        for (let i = 0; i < 200 && ((await stat(dataFile).catch(() => undefined))?.size ?? 0) < 1000; i++) await new Promise((r) => setTimeout(r, 10));
      } else {
        // On S3 the chunk's first bytes are in the worker's memory (a small chunk is one PUT at its end).
        await new Promise((r) => setTimeout(r, 300));
      }
      // A PUT while the chunk streams must not hash a file that is still being written.
      // (It used to: the running hash had seen the streaming bytes, the file was truncated to the committed
      // offset (0), and an empty file was stored as the blob of the 1000 bytes.)
      assertOciError(await fetchText(`${base}${location}?digest=${sha256(Buffer.alloc(1000))}`, { method: 'PUT' }), 416, 'BLOB_UPLOAD_INVALID');
      assert.equal(await exists(blobFile(sha256(Buffer.alloc(1000)))), false);
      assert.equal((await fetch(`${base}${location}`, { method: 'DELETE' })).status, 204);
      release();
      assertOciError(await patch, 404, 'BLOB_UPLOAD_UNKNOWN');
      assert.equal(await existsUnder(`_uploads/${uuid}/`), false);
      assertOciError(await fetchText(`${base}${location}`), 404, 'BLOB_UPLOAD_UNKNOWN');
      assertOciError(await fetchText(`${base}${location}`, { method: 'PATCH', body: 'abc' }), 404, 'BLOB_UPLOAD_UNKNOWN');
    });

    it('sha512: chunked and monolithic uploads are verified and served by their sha512 digest', async () => {
      const data = randomBytes(70_000);
      const digest = sha512(data);
      const location = await startSession('api/sha512');
      assert.equal((await fetch(`${base}${location}`, { method: 'PATCH', body: data.subarray(0, 30_000), headers: { 'content-range': '0-29999' } })).status, 202);
      const put = await fetch(`${base}${location}?digest=${digest}`, { method: 'PUT', body: data.subarray(30_000) });
      assert.equal(put.status, 201);
      assert.equal(put.headers.get('docker-content-digest'), digest);
      assert.equal(put.headers.get('location'), `/v2/api/sha512/blobs/${digest}`);
      const get = await fetch(`${base}/v2/api/sha512/blobs/${digest}`);
      assert.equal(get.status, 200);
      assert.equal(get.headers.get('docker-content-digest'), digest);
      assert.deepEqual(Buffer.from(await get.arrayBuffer()), data);
      assert.equal(await exists(blobFile(digest)), true);
      // The sha256 of the same bytes was never pushed.
      assertOciError(await fetchText(`${base}/v2/api/sha512/blobs/${sha256(data)}`), 404, 'BLOB_UNKNOWN');

      const mono = randomBytes(500);
      await pushBlob(base, 'api/sha512', mono, sha512(mono));
      assert.equal((await fetch(`${base}/v2/api/sha512/blobs/${sha512(mono)}`)).status, 200);
      assertOciError(await fetchText(`${base}/v2/api/sha512/blobs/uploads/?digest=${sha512('other')}`, { method: 'POST', body: mono }), 400, 'DIGEST_INVALID');
    });

    it('a digest mismatch when finishing is 400 DIGEST_INVALID: the blob is not visible and the session is gone', async () => {
      const data = randomBytes(2000);
      const claimed = sha256(randomBytes(2000));
      const location = await startSession('api/mismatch');
      assert.equal((await fetch(`${base}${location}`, { method: 'PATCH', body: data })).status, 202);
      // A missing or malformed digest does not end the session.
      assertOciError(await fetchText(`${base}${location}`, { method: 'PUT' }), 400, 'DIGEST_INVALID');
      assertOciError(await fetchText(`${base}${location}?digest=sha256:1234`, { method: 'PUT' }), 400, 'DIGEST_INVALID');
      assert.equal((await fetch(`${base}${location}`)).headers.get('range'), '0-1999');

      assertOciError(await fetchText(`${base}${location}?digest=${claimed}`, { method: 'PUT' }), 400, 'DIGEST_INVALID');
      assertOciError(await fetchText(`${base}/v2/api/mismatch/blobs/${claimed}`), 404, 'BLOB_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/mismatch/blobs/${sha256(data)}`), 404, 'BLOB_UNKNOWN');
      assert.equal(await exists(blobFile(claimed)), false);
      assert.equal(await exists(blobFile(sha256(data))), false);
      assertOciError(await fetchText(`${base}${location}`), 404, 'BLOB_UPLOAD_UNKNOWN');
    });

    it('cross-repository mount: 201 when the source repository has the blob, else the 202 upload fallback', async () => {
      const data = randomBytes(1500);
      const digest = await pushBlob(base, 'api/mount-src', data);
      const onlyElsewhere = await pushBlob(base, 'api/mount-other', randomBytes(1500));

      const mounted = await fetch(`${base}/v2/api/mount-dst/blobs/uploads/?mount=${digest}&from=api/mount-src`, { method: 'POST' });
      assert.equal(mounted.status, 201);
      assert.equal(mounted.headers.get('location'), `/v2/api/mount-dst/blobs/${digest}`);
      assert.equal(mounted.headers.get('docker-content-digest'), digest);
      const head = await raw(target, 'HEAD', `/v2/api/mount-dst/blobs/${digest}`);
      assert.equal(head.status, 200);
      assert.equal(head.headers['content-length'], '1500');
      assert.ok(reg.logLines().some((l) => l.msg === 'blob mounted' && l.name === 'api/mount-dst' && l.from === 'api/mount-src' && l.digest === digest));

      // Not in the source repository (even though another repository has it), unknown, or no `from`: a normal session.
      for (const query of [`mount=${onlyElsewhere}&from=api/mount-src`, `mount=${sha256('unknown')}&from=api/mount-src`, `mount=${digest}`]) {
        const res = await fetch(`${base}/v2/api/mount-fallback/blobs/uploads/?${query}`, { method: 'POST' });
        assert.equal(res.status, 202, query);
        assert.match(res.headers.get('location') ?? '', /^\/v2\/api\/mount-fallback\/blobs\/uploads\/[0-9a-f-]{36}$/);
        assert.equal(res.headers.get('range'), '0-0');
      }
      assertOciError(await fetchText(`${base}/v2/api/mount-fallback/blobs/${onlyElsewhere}`), 404, 'BLOB_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/mount-fallback/blobs/${digest}`), 404, 'BLOB_UNKNOWN');
      assertOciError(await fetchText(`${base}/v2/api/mount-fallback/blobs/uploads/?mount=${digest}&from=Bad/Name`, { method: 'POST' }), 400, 'NAME_INVALID');
      assertOciError(await fetchText(`${base}/v2/api/mount-fallback/blobs/uploads/?mount=sha256:12&from=api/mount-src`, { method: 'POST' }), 400, 'DIGEST_INVALID');
    });
  });

  describe('listings', () => {
    it('tags list: lexical order, n/last pagination with Link, n=0 is an empty list without Link', async () => {
      const image = buildImage({ layerSizes: [100], seed: 'api-taglist' });
      const tags = ['b', 'a', 'c10', 'c9', 'C', '_x'];
      for (const blob of [image.config, ...image.layers]) await pushBlob(base, 'api/tags', blob.data, blob.digest);
      const res = await fetch(`${base}/v2/api/tags/manifests/${image.manifest.digest}?${tags.map((t) => `tag=${t}`).join('&')}`, { method: 'PUT', body: image.manifest.data, headers: { 'content-type': OCI_MANIFEST } });
      assert.equal(res.status, 201);
      const sorted = ['C', '_x', 'a', 'b', 'c10', 'c9'];

      const list = async (query: string) => {
        const r = await fetch(`${base}/v2/api/tags/tags/list${query}`);
        assert.equal(r.status, 200, query);
        assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
        return { body: await r.json() as { name: string; tags: string[] }, link: r.headers.get('link') };
      };
      assert.deepEqual(await list(''), { body: { name: 'api/tags', tags: sorted }, link: null });
      const page1 = await list('?n=2');
      assert.deepEqual(page1, { body: { name: 'api/tags', tags: ['C', '_x'] }, link: '</v2/api/tags/tags/list?n=2&last=_x>; rel="next"' });
      const page2 = await list(page1.link!.slice('</v2/api/tags/tags/list'.length, page1.link!.indexOf('>')));
      assert.deepEqual(page2, { body: { name: 'api/tags', tags: ['a', 'b'] }, link: '</v2/api/tags/tags/list?n=2&last=b>; rel="next"' });
      assert.deepEqual(await list('?n=2&last=b'), { body: { name: 'api/tags', tags: ['c10', 'c9'] }, link: null });
      assert.deepEqual(await list('?n=0'), { body: { name: 'api/tags', tags: [] }, link: null });
      assert.deepEqual(await list('?last=b'), { body: { name: 'api/tags', tags: ['c10', 'c9'] }, link: null });
      assert.deepEqual(await list('?last=bb'), { body: { name: 'api/tags', tags: ['c10', 'c9'] }, link: null });
      assert.deepEqual(await list('?last=zzz'), { body: { name: 'api/tags', tags: [] }, link: null });
      assert.deepEqual(await list('?n=6'), { body: { name: 'api/tags', tags: sorted }, link: null });
      assert.deepEqual(await list('?n=5'), { body: { name: 'api/tags', tags: sorted.slice(0, 5) }, link: '</v2/api/tags/tags/list?n=5&last=c10>; rel="next"' });
      assert.deepEqual(await list('?n=1000'), { body: { name: 'api/tags', tags: sorted }, link: null });

      assertOciError(await fetchText(`${base}/v2/api/never/tags/list`), 404, 'NAME_UNKNOWN');
    });

    it('catalog: lexical order with the same pagination (a fresh store)', async (t) => {
      const fresh = await testStorage(storage.kind);
      t.after(() => fresh.cleanup());
      const worker = await startStevedoreRegistry(['--root', fresh.root, ...fresh.args], fresh.env);
      t.after(() => worker.stop());
      const list = async (query: string) => {
        const r = await fetch(`${worker.url}/v2/_catalog${query}`);
        assert.equal(r.status, 200, query);
        return { body: await r.json() as { repositories: string[] }, link: r.headers.get('link') };
      };
      assert.deepEqual(await list(''), { body: { repositories: [] }, link: null });
      const data = randomBytes(10);
      for (const name of ['c', 'b/x', 'a/b', 'a', 'a-b', 'b']) await pushBlob(worker.url, name, data);
      const sorted = ['a', 'a-b', 'a/b', 'b', 'b/x', 'c'];
      assert.deepEqual(await list(''), { body: { repositories: sorted }, link: null });
      const page1 = await list('?n=3');
      assert.deepEqual(page1, { body: { repositories: ['a', 'a-b', 'a/b'] }, link: '</v2/_catalog?n=3&last=a%2Fb>; rel="next"' });
      const next = page1.link!.slice('</v2/_catalog'.length, page1.link!.indexOf('>'));
      assert.deepEqual(await list(next), { body: { repositories: ['b', 'b/x', 'c'] }, link: null });
      assert.deepEqual(await list('?n=2&last=a-b'), { body: { repositories: ['a/b', 'b'] }, link: '</v2/_catalog?n=2&last=b>; rel="next"' });
      assert.deepEqual(await list('?n=0'), { body: { repositories: [] }, link: null });
      assert.deepEqual(await list('?last=c'), { body: { repositories: [] }, link: null });
      assertOciError(await fetchText(`${worker.url}/v2/_catalog?n=x`), 400, 'UNSUPPORTED');
      // Upload sessions do not make repositories.
      await fetch(`${worker.url}/v2/d/blobs/uploads/`, { method: 'POST' });
      assert.deepEqual((await list('')).body.repositories, sorted);
    });
  });

  describe('referrers API', () => {
    const subjectImage = buildImage({ layerSizes: [300], seed: 'api-referrers' });
    const emptyConfig = Buffer.from('{}');
    const sbomLayer = Buffer.from('{"sbom":true}');
    const sigConfig = Buffer.from('{"sig":1}');
    const SBOM = 'application/vnd.example.sbom.v1';
    const SIG_CONFIG = 'application/vnd.example.signature.config.v1+json';
    let subject: string;
    let sbom: Buffer;
    let signature: Buffer;

    before(async () => {
      subject = await pushImage(base, 'api/ref', 'v1', subjectImage);
      for (const blob of [emptyConfig, sbomLayer, sigConfig]) await pushBlob(base, 'api/ref', blob);
      const subjectDescriptor = { mediaType: OCI_MANIFEST, digest: subject, size: subjectImage.manifest.size };
      sbom = Buffer.from(JSON.stringify({
        schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType: SBOM,
        config: { mediaType: EMPTY, digest: sha256(emptyConfig), size: 2 },
        layers: [{ mediaType: 'application/json', digest: sha256(sbomLayer), size: sbomLayer.length }],
        subject: subjectDescriptor, annotations: { 'org.example.kind': 'sbom' },
      }));
      signature = Buffer.from(JSON.stringify({
        schemaVersion: 2, mediaType: OCI_MANIFEST,
        config: { mediaType: SIG_CONFIG, digest: sha256(sigConfig), size: sigConfig.length },
        layers: [], subject: subjectDescriptor,
      }));
    });

    it('a PUT with a subject answers OCI-Subject', async () => {
      const res = await fetch(`${base}/v2/api/ref/manifests/${sha256(sbom)}`, { method: 'PUT', body: sbom, headers: { 'content-type': OCI_MANIFEST } });
      assert.equal(res.status, 201);
      assert.equal(res.headers.get('oci-subject'), subject);
      const sig = await fetch(`${base}/v2/api/ref/manifests/sig`, { method: 'PUT', body: signature, headers: { 'content-type': OCI_MANIFEST } });
      assert.equal(sig.status, 201);
      assert.equal(sig.headers.get('oci-subject'), subject);
    });

    it('GET referrers returns an OCI index of descriptors with artifactType and annotations', async () => {
      const res = await fetch(`${base}/v2/api/ref/referrers/${subject}`);
      assert.equal(res.status, 200);
      assert.equal((res.headers.get('content-type') ?? '').split(';')[0], OCI_INDEX);
      assert.equal(res.headers.get('oci-filters-applied'), null);
      const index = await res.json() as { schemaVersion: number; mediaType: string; manifests: Array<Record<string, unknown>> };
      assert.equal(index.schemaVersion, 2);
      assert.equal(index.mediaType, OCI_INDEX);
      const expected = [
        { mediaType: OCI_MANIFEST, digest: sha256(sbom), size: sbom.length, artifactType: SBOM, annotations: { 'org.example.kind': 'sbom' } },
        { mediaType: OCI_MANIFEST, digest: sha256(signature), size: signature.length, artifactType: SIG_CONFIG },
      ].sort((a, b) => a.digest.localeCompare(b.digest));
      assert.deepEqual([...index.manifests].sort((a, b) => String(a.digest).localeCompare(String(b.digest))), expected);
    });

    it('?artifactType= filters and sets OCI-Filters-Applied: artifactType', async () => {
      const res = await fetch(`${base}/v2/api/ref/referrers/${subject}?artifactType=${encodeURIComponent(SBOM)}`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('oci-filters-applied'), 'artifactType');
      const index = await res.json() as { manifests: Array<{ digest: string }> };
      assert.deepEqual(index.manifests.map((m) => m.digest), [sha256(sbom)]);
      const none = await fetch(`${base}/v2/api/ref/referrers/${subject}?artifactType=application/vnd.none`);
      assert.equal(none.headers.get('oci-filters-applied'), 'artifactType');
      assert.deepEqual((await none.json() as { manifests: unknown[] }).manifests, []);
    });

    it('an unknown subject, or an unknown repository, is 200 with an empty index; a malformed digest is 400 DIGEST_INVALID', async () => {
      for (const path of [`/v2/api/ref/referrers/${sha256('unknown')}`, `/v2/api/noref/referrers/${subject}`]) {
        const res = await fetch(`${base}${path}`);
        assert.equal(res.status, 200, path);
        assert.deepEqual(await res.json(), { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] });
      }
      assertOciError(await fetchText(`${base}/v2/api/ref/referrers/latest`), 400, 'DIGEST_INVALID');
    });

    it('a referrer may be pushed before its subject exists', async () => {
      const missing = sha256('subject pushed later');
      const early = Buffer.from(JSON.stringify({
        schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType: SBOM,
        config: { mediaType: EMPTY, digest: sha256(emptyConfig), size: 2 }, layers: [],
        subject: { mediaType: OCI_MANIFEST, digest: missing, size: 100 },
      }));
      const res = await fetch(`${base}/v2/api/ref/manifests/${sha256(early)}`, { method: 'PUT', body: early, headers: { 'content-type': OCI_MANIFEST } });
      assert.equal(res.status, 201);
      assert.equal(res.headers.get('oci-subject'), missing);
      const index = await (await fetch(`${base}/v2/api/ref/referrers/${missing}`)).json() as { manifests: Array<{ digest: string; artifactType: string }> };
      assert.deepEqual(index.manifests.map((m) => [m.digest, m.artifactType]), [[sha256(early), SBOM]]);
    });

    it('a deleted referrer leaves the list', async () => {
      assert.equal((await fetch(`${base}/v2/api/ref/manifests/${sha256(sbom)}`, { method: 'DELETE' })).status, 202);
      const index = await (await fetch(`${base}/v2/api/ref/referrers/${subject}`)).json() as { manifests: Array<{ digest: string }> };
      assert.deepEqual(index.manifests.map((m) => m.digest), [sha256(signature)]);
    });
  });

  describe('bad input is a 4xx with the right code, never a 500', () => {
    const uuid = randomUUID();
    const d = sha256('x');
    const cases: Array<[string, string, number, string]> = [
      ['GET', '/v2/Upper/tags/list', 400, 'NAME_INVALID'],
      ['GET', '/v2/a/../b/tags/list', 400, 'NAME_INVALID'],
      ['GET', '/v2/../tags/list', 400, 'NAME_INVALID'],
      ['GET', '/v2/a/%2e%2e/tags/list', 400, 'NAME_INVALID'],
      ['GET', '/v2/a/%2E%2E/b/manifests/latest', 400, 'NAME_INVALID'],
      ['GET', '/v2/a%2fb/tags/list', 400, 'NAME_INVALID'],
      ['GET', '/v2/a%2Fb/manifests/latest', 400, 'NAME_INVALID'],
      ['GET', '/v2//a/tags/list', 400, 'NAME_INVALID'],
      ['GET', '/v2/a//b/tags/list', 400, 'NAME_INVALID'],
      ['GET', '/v2/a/./b/tags/list', 400, 'NAME_INVALID'],
      ['GET', '/v2/a%00b/tags/list', 400, 'NAME_INVALID'],
      ['GET', '/v2/a/%00/blobs/' + d, 400, 'NAME_INVALID'],
      ['GET', `/v2/${'a'.repeat(256)}/tags/list`, 400, 'NAME_INVALID'],
      ['GET', `/v2/${'a/'.repeat(2000)}b/tags/list`, 400, 'NAME_INVALID'],
      ['POST', '/v2/UP/blobs/uploads/', 400, 'NAME_INVALID'],
      ['GET', '/v2/a/b', 404, 'NAME_UNKNOWN'],
      ['GET', '/v2/_catalog/x', 404, 'NAME_UNKNOWN'],
      ['GET', '/nope', 404, 'NAME_UNKNOWN'],
      ['GET', `/v2/a/blobs/uploads/${uuid}/x`, 404, 'NAME_UNKNOWN'],
      ['GET', '/v2/a/blobs/sha256:xyz', 400, 'DIGEST_INVALID'],
      ['GET', `/v2/a/blobs/sha256:${'A'.repeat(64)}`, 400, 'DIGEST_INVALID'],
      ['GET', `/v2/a/blobs/sha256:${'a'.repeat(63)}`, 400, 'DIGEST_INVALID'],
      ['GET', `/v2/a/blobs/sha512:${'a'.repeat(64)}`, 400, 'DIGEST_INVALID'],
      ['GET', `/v2/a/blobs/md5:${'a'.repeat(32)}`, 400, 'DIGEST_INVALID'],
      ['GET', '/v2/a/blobs/latest', 400, 'DIGEST_INVALID'],
      ['DELETE', '/v2/a/blobs/sha256:%2e%2e', 400, 'DIGEST_INVALID'],
      // A reference that is neither a tag nor a digest names no manifest: 404 for reads and deletes (OCI
      // conformance: `.INVALID_MANIFEST_NAME`); a push of it is 400.
      ['GET', '/v2/a/manifests/sha256:abc', 404, 'MANIFEST_UNKNOWN'],
      ['DELETE', '/v2/a/manifests/sha256:zz', 404, 'MANIFEST_UNKNOWN'],
      ['GET', '/v2/a/manifests/-bad', 404, 'MANIFEST_UNKNOWN'],
      ['GET', `/v2/a/manifests/${'t'.repeat(129)}`, 404, 'MANIFEST_UNKNOWN'],
      ['GET', '/v2/a/manifests/%2e%2e', 404, 'MANIFEST_UNKNOWN'],
      ['GET', '/v2/a/manifests/.INVALID_MANIFEST_NAME', 404, 'MANIFEST_UNKNOWN'],
      ['DELETE', '/v2/a/manifests/.INVALID_MANIFEST_NAME', 404, 'MANIFEST_UNKNOWN'],
      ['PUT', '/v2/a/manifests/.INVALID_MANIFEST_NAME', 400, 'MANIFEST_INVALID'],
      ['PUT', '/v2/a/manifests/sha256:abc', 400, 'DIGEST_INVALID'],
      // A path fastify's router cannot decode still reaches the registry's own parser.
      ['GET', '/v2/%C0%AE/manifests/x', 400, 'NAME_INVALID'],
      ['GET', '/v2/a/manifests/%C0%AE', 404, 'MANIFEST_UNKNOWN'],
      ['GET', '/v2/a/blobs/%C0%AE', 400, 'DIGEST_INVALID'],
      ['GET', '/nope/%C0%AE', 404, 'NAME_UNKNOWN'],
      // Methods no endpoint has are 405 like the others.
      ['TRACE', '/v2/', 405, 'UNSUPPORTED'],
      ['OPTIONS', '/v2/a/manifests/latest', 405, 'UNSUPPORTED'],
      ['PROPFIND', '/v2/a/tags/list', 405, 'UNSUPPORTED'],
      ['GET', '/v2/a/referrers/notadigest', 400, 'DIGEST_INVALID'],
      ['GET', `/v2/a/referrers/sha256:${'A'.repeat(64)}`, 400, 'DIGEST_INVALID'],
      ['POST', '/v2/a/blobs/uploads/?digest=sha256:bad', 400, 'DIGEST_INVALID'],
      ['POST', '/v2/a/blobs/uploads/?mount=bad&from=b', 400, 'DIGEST_INVALID'],
      ['POST', `/v2/a/blobs/uploads/?mount=${d}&from=B`, 400, 'NAME_INVALID'],
      ['POST', `/v2/a/blobs/uploads/?mount=${d}&from=..%2Fetc`, 400, 'NAME_INVALID'],
      ['GET', '/v2/a/blobs/uploads/', 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['PATCH', '/v2/a/blobs/uploads/not-a-uuid', 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['PATCH', `/v2/a/blobs/uploads/${uuid.toUpperCase()}`, 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['GET', `/v2/a/blobs/uploads/${uuid}`, 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['PUT', `/v2/a/blobs/uploads/..%2f..?digest=${d}`, 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['DELETE', '/v2/a/blobs/uploads/%2e%2e', 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['PUT', `/v2/a/blobs/uploads/${uuid}`, 400, 'DIGEST_INVALID'],
      ['GET', '/v2/api/get/tags/list?n=-1', 400, 'UNSUPPORTED'],
      ['GET', '/v2/api/get/tags/list?n=abc', 400, 'UNSUPPORTED'],
      ['GET', '/v2/api/get/tags/list?n=1.5', 400, 'UNSUPPORTED'],
      ['GET', '/v2/api/get/tags/list?n=1e3', 400, 'UNSUPPORTED'],
      ['GET', '/v2/api/get/tags/list?n=', 400, 'UNSUPPORTED'],
      ['GET', '/v2/api/get/tags/list?n=99999999999', 400, 'UNSUPPORTED'],
      ['GET', '/v2/api/get/tags/list?n=%zz', 400, 'UNSUPPORTED'],
      ['GET', '/v2/_catalog?n=-5', 400, 'UNSUPPORTED'],
      ['PATCH', '/v2/a/manifests/latest', 405, 'UNSUPPORTED'],
      ['POST', '/v2/a/tags/list', 405, 'UNSUPPORTED'],
      ['PUT', `/v2/a/blobs/${d}`, 405, 'UNSUPPORTED'],
      ['DELETE', '/v2/_catalog', 405, 'UNSUPPORTED'],
    ];

    it('the matrix', async () => {
      for (const [method, path, status, code] of cases) {
        const res = await raw(target, method, path, { headers: { 'content-length': 0 } });
        assertOciError(res, status, code, `${method} ${path.slice(0, 80)}`);
      }
      // HEAD answers carry the status without a body.
      const head = await raw(target, 'HEAD', '/v2/a/blobs/sha256:xyz');
      assert.equal(head.status, 400);
      assert.equal(head.body.length, 0);
      const invalidName = await raw(target, 'HEAD', '/v2/a/manifests/.INVALID_MANIFEST_NAME');
      assert.equal(invalidName.status, 404);
      assert.equal(invalidName.body.length, 0);
    });

    it('405 answers name the allowed methods', async () => {
      assert.equal((await raw(target, 'PATCH', '/v2/a/manifests/latest')).headers.allow, 'GET, HEAD, PUT, DELETE');
      assert.equal((await raw(target, 'PUT', `/v2/a/blobs/${d}`)).headers.allow, 'GET, HEAD, DELETE');
      assert.equal((await raw(target, 'POST', '/v2/a/referrers/' + d)).headers.allow, 'GET, HEAD');
      assert.equal((await raw(target, 'TRACE', '/v2/')).headers.allow, 'GET, HEAD');
    });

    it('an absolute-form request target (RFC 9112 §3.2.2) is served as its origin-form path', async () => {
      const ping = await rawSocket(reg.port, `GET http://127.0.0.1:${reg.port}/v2/ HTTP/1.1\r\nHost: 127.0.0.1:${reg.port}\r\nConnection: close\r\n\r\n`);
      assert.equal(ping.status, 200);
      assert.equal(ping.text, '{}');
      assert.equal(ping.headers['docker-distribution-api-version'], 'registry/2.0');
      const ns = await rawSocket(reg.port, `GET HTTP://stevedore.lan/v2/?ns=quay.io HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      assert.equal(ns.status, 200);
      assert.equal(ns.headers['oci-namespace'], 'quay.io');
      const tags = await rawSocket(reg.port, `GET http://127.0.0.1:${reg.port}/v2/Bad/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      assertOciError(tags, 400, 'NAME_INVALID', 'absolute-form, bad name');
    });

    it('requests the HTTP parser or fastify refuse are OCI error JSON too', async () => {
      const end = 'Host: x\r\nConnection: close\r\n\r\n';
      const cases: Array<[string, string, number]> = [
        ['bad Content-Length', `PUT /v2/a/manifests/x HTTP/1.1\r\nContent-Length: abc\r\n${end}`, 400],
        ['two Content-Lengths', `PUT /v2/a/manifests/x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n${end}`, 400],
        ['unknown method token', `FOO /v2/ HTTP/1.1\r\n${end}`, 400],
        ['malformed request line', `GET /v2/ HTTP/9\r\n${end}`, 400],
        ['headers too large', `GET /v2/ HTTP/1.1\r\nX-Big: ${'a'.repeat(20_000)}\r\n${end}`, 431],
        ['unparsable Content-Type', `POST /v2/a/blobs/uploads/ HTTP/1.1\r\nContent-Type: a b c\r\nContent-Length: 3\r\n${end}abc`, 415],
      ];
      for (const [what, request, status] of cases) {
        assertOciError(await rawSocket(reg.port, request), status, 'UNSUPPORTED', what);
      }
      assert.equal((await fetch(`${base}/v2/`)).status, 200, 'the worker keeps serving');
    });

    it('nothing above created a repository or a file outside the store', async () => {
      const catalog = await (await fetch(`${base}/v2/_catalog`)).json() as { repositories: string[] };
      for (const name of catalog.repositories) assert.match(name, /^api\//, name);
      for (const entry of await readdir(root)) assert.ok(['blobs', 'repositories', '_uploads', '_tmp'].includes(entry), entry);
      const top = await storage.driver.list('', { delimiter: '/' });
      assert.deepEqual(top.keys.map((k) => k.key), []);
      for (const prefix of top.prefixes) assert.ok(['blobs/', 'repositories/', '_uploads/'].includes(prefix), prefix);
    });

    it('a request line with raw control bytes is refused by the HTTP parser with 400, and the worker keeps serving', async () => {
      const answer = await new Promise<string>((resolve, reject) => {
        const socket = connect(reg.port, '127.0.0.1', () => socket.end('GET /v2/a\x00b/tags/list HTTP/1.1\r\nHost: x\r\n\r\n'));
        let text = '';
        socket.on('data', (chunk) => { text += chunk.toString('latin1'); });
        socket.on('end', () => resolve(text));
        socket.on('error', reject);
      });
      assert.match(answer, /^HTTP\/1\.1 400 /);
      assert.equal((await fetch(`${base}/v2/`)).status, 200);
    });
  });

  describe('worker health after all of the above', () => {
    it('no request failed with a 500 (the worker logged no error)', () => {
      const failures = reg.logLines().filter((line) => Number(line.level) >= 50 || line.msg === 'internal server error');
      assert.deepEqual(failures, []);
      assert.equal(reg.proc.exitCode, null);
    });
  });
});
