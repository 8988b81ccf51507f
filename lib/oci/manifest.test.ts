import { test } from 'node:test';
import assert from 'node:assert/strict';
import { descriptorDigest, parseManifest } from './manifest.js';
import { RegistryError } from './errors.js';
import { MediaType } from './media-types.js';

const d = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}`;
const config = { mediaType: 'application/vnd.oci.image.config.v1+json', digest: d(1), size: 10 };
const layer = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: d(2), size: 20 };

function body(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}

function invalid(pattern: RegExp) {
  return (err: unknown) => err instanceof RegistryError && err.code === 'MANIFEST_INVALID' && err.status === 400 && pattern.test(err.message);
}

test('an OCI image manifest: its config and layers are the blobs it needs; artifactType falls back to the config type', () => {
  const parsed = parseManifest(body({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [layer], annotations: { a: 'b' } }), undefined);
  assert.equal(parsed.mediaType, MediaType.OciManifest);
  assert.deepEqual(parsed.blobs, [config, layer]);
  assert.deepEqual(parsed.manifests, []);
  assert.equal(parsed.subject, undefined);
  assert.equal(parsed.artifactType, config.mediaType);
  assert.deepEqual(parsed.annotations, { a: 'b' });
});

test('an explicit artifactType wins over the config media type; the subject is parsed', () => {
  const subject = { mediaType: MediaType.OciManifest, digest: d(9), size: 500 };
  const parsed = parseManifest(body({
    schemaVersion: 2, mediaType: MediaType.OciManifest, artifactType: 'application/vnd.example.sbom',
    config: { mediaType: MediaType.OciEmpty, digest: d(3), size: 2 }, layers: [], subject,
  }), MediaType.OciManifest);
  assert.equal(parsed.artifactType, 'application/vnd.example.sbom');
  assert.deepEqual(parsed.subject, subject);
  assert.equal(descriptorDigest(parsed.subject!).value, d(9));
});

test('foreign layers (with urls) are not required blobs', () => {
  const foreign = { ...layer, digest: d(5), urls: ['https://example.com/layer'] };
  const parsed = parseManifest(body({ schemaVersion: 2, mediaType: MediaType.DockerManifest, config, layers: [foreign, layer] }), undefined);
  assert.equal(parsed.mediaType, MediaType.DockerManifest);
  assert.deepEqual(parsed.blobs.map((b) => b.digest), [d(1), d(2)]);
});

test('an index lists manifests and needs no blobs', () => {
  const child = { mediaType: MediaType.OciManifest, digest: d(7), size: 300, platform: { os: 'linux', architecture: 'arm64' } };
  const parsed = parseManifest(body({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [child] }), undefined);
  assert.equal(parsed.mediaType, MediaType.OciIndex);
  assert.deepEqual(parsed.manifests, [child]);
  assert.deepEqual(parsed.blobs, []);
  assert.equal(parsed.artifactType, undefined);
  const list = parseManifest(body({ schemaVersion: 2, mediaType: MediaType.DockerManifestList, manifests: [] }), undefined);
  assert.equal(list.mediaType, MediaType.DockerManifestList);
});

test('the media type comes from the body, else Content-Type, else the shape', () => {
  assert.equal(parseManifest(body({ schemaVersion: 2, config, layers: [] }), MediaType.DockerManifest).mediaType, MediaType.DockerManifest);
  assert.equal(parseManifest(body({ schemaVersion: 2, config, layers: [] }), `${MediaType.OciManifest}; charset=utf-8`).mediaType, MediaType.OciManifest);
  assert.equal(parseManifest(body({ schemaVersion: 2, config, layers: [] }), undefined).mediaType, MediaType.OciManifest);
  assert.equal(parseManifest(body({ schemaVersion: 2, config, layers: [] }), 'application/json').mediaType, MediaType.OciManifest);
  assert.equal(parseManifest(body({ schemaVersion: 2, manifests: [] }), 'application/octet-stream').mediaType, MediaType.OciIndex);
  // A non-manifest Content-Type next to a declared mediaType is ignored.
  assert.equal(parseManifest(body({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [] }), 'application/json').mediaType, MediaType.OciManifest);
});

test('malformed manifests are MANIFEST_INVALID (400), never a crash', () => {
  const cases: Array<[Buffer, string | undefined, RegExp]> = [
    [Buffer.from('not json'), undefined, /not valid JSON/],
    [Buffer.from(''), undefined, /not valid JSON/],
    [Buffer.from([0xff, 0xfe, 0x00]), undefined, /not valid JSON/],
    [body([1, 2]), undefined, /not a JSON object/],
    [body(null), undefined, /not a JSON object/],
    [body('string'), undefined, /not a JSON object/],
    [body({ schemaVersion: 1, config, layers: [] }), undefined, /schemaVersion must be 2/],
    [body({ schemaVersion: '2', config, layers: [] }), undefined, /schemaVersion must be 2/],
    [body({ config, layers: [] }), undefined, /schemaVersion must be 2/],
    [body({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [] }), MediaType.DockerManifest, /does not match/],
    [body({ schemaVersion: 2, mediaType: 'application/vnd.oci.artifact.manifest.v1+json', blobs: [] }), undefined, /unsupported manifest media type/],
    [body({ schemaVersion: 2, mediaType: 7, config, layers: [] }), MediaType.DockerManifestList, /an index needs/],
    [body({ schemaVersion: 2 }), undefined, /unsupported manifest media type/],
    [body({ schemaVersion: 2, mediaType: MediaType.OciIndex }), undefined, /an index needs a "manifests" array/],
    [body({ schemaVersion: 2, mediaType: MediaType.OciManifest, layers: [] }), undefined, /config is not a descriptor/],
    [body({ schemaVersion: 2, mediaType: MediaType.OciManifest, config }), undefined, /needs a "layers" array/],
    [body({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [{ ...layer, digest: 'sha256:abc' }] }), undefined, /layers\[0\]\.digest/],
    [body({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [{ ...layer, size: -1 }] }), undefined, /layers\[0\]\.size/],
    [body({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [{ ...layer, size: 1.5 }] }), undefined, /layers\[0\]\.size/],
    [body({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [{ ...layer, size: '20' }] }), undefined, /layers\[0\]\.size/],
    [body({ schemaVersion: 2, mediaType: MediaType.OciManifest, config: { ...config, mediaType: '' }, layers: [] }), undefined, /config\.mediaType/],
    [body({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [null] }), undefined, /layers\[0\] is not a descriptor/],
    [body({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [{ mediaType: MediaType.OciManifest, digest: `sha256:${'A'.repeat(64)}`, size: 1 }] }), undefined, /manifests\[0\]\.digest/],
    [body({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [], subject: 'sha256:x' }), undefined, /subject is not a descriptor/],
  ];
  for (const [input, contentType, pattern] of cases) {
    assert.throws(() => parseManifest(input, contentType), invalid(pattern), `${input.toString('utf8').slice(0, 120)} (${contentType})`);
  }
});

/** A JSON text nested `depth` levels deep (built as text: JSON.stringify of it would overflow the stack). */
const nested = (depth: number): string => `${'{"a":'.repeat(depth)}"x"${'}'.repeat(depth)}`;

test('annotations are string → string everywhere: a push with anything else is MANIFEST_INVALID naming the field', () => {
  const image = (extra: Record<string, unknown>, layers: unknown[] = [layer]) => ({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers, ...extra });
  const cases: Array<[unknown, RegExp]> = [
    [image({ annotations: { a: { b: 'c' } } }), /annotations\["a"\] is an object: annotation values must be strings/],
    [image({ annotations: { a: 'ok', n: 1 } }), /annotations\["n"\] is a number/],
    [image({ annotations: { a: ['x'] } }), /annotations\["a"\] is an array/],
    [image({ annotations: { a: null } }), /annotations\["a"\] is null/],
    [image({ annotations: 'a=b' }), /annotations must be an object of string values/],
    [image({ config: { ...config, annotations: { x: 1 } } }), /config\.annotations\["x"\]/],
    [image({}, [layer, { ...layer, digest: d(3), annotations: { deep: { deeper: {} } } }]), /layers\[1\]\.annotations\["deep"\]/],
    [image({ subject: { mediaType: MediaType.OciManifest, digest: d(9), size: 5, annotations: { s: true } } }), /subject\.annotations\["s"\] is a boolean/],
    [{ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [{ mediaType: MediaType.OciManifest, digest: d(4), size: 3, annotations: { p: {} } }] }, /manifests\[0\]\.annotations\["p"\]/],
  ];
  for (const [manifest, pattern] of cases) {
    assert.throws(() => parseManifest(body(manifest), undefined, { strict: true }), invalid(pattern), JSON.stringify(manifest));
    // Content already stored or fetched from an upstream is parsed without refusing it; its bad annotations are left out.
    const lenient = parseManifest(body(manifest), undefined);
    assert.equal(lenient.annotations, undefined);
  }
});

test('a 10,000-level (and a 100,000-level) nested annotation is refused without recursion, and its error renders', () => {
  for (const depth of [10_000, 100_000]) {
    const text = `{"schemaVersion":2,"mediaType":"${MediaType.OciManifest}","config":${JSON.stringify(config)},"layers":[],"annotations":{"evil":${nested(depth)}}}`;
    let error: unknown;
    try {
      parseManifest(Buffer.from(text), undefined, { strict: true });
    } catch (err) {
      error = err;
    }
    assert.ok(invalid(/annotations\["evil"\] is an object/)(error), String(error));
    // The error's JSON (what the client receives) can be rendered: no deep value reached its detail.
    assert.ok(JSON.stringify((error as RegistryError).toBody()).length < 1000);
    // A deep value in a field that goes into an error detail is summarized, not copied.
    const badDigest = `{"schemaVersion":2,"mediaType":"${MediaType.OciManifest}","config":{"mediaType":"x","size":1,"digest":${nested(depth)}},"layers":[]}`;
    assert.throws(() => parseManifest(Buffer.from(badDigest), undefined, { strict: true }), (err: unknown) => {
      assert.ok(invalid(/config\.digest/)(err));
      assert.ok(JSON.stringify((err as RegistryError).toBody()).length < 1000);
      return true;
    });
    const badVersion = `{"schemaVersion":${nested(depth)}}`;
    assert.throws(() => parseManifest(Buffer.from(badVersion), undefined), (err: unknown) => {
      assert.ok(invalid(/schemaVersion must be 2/)(err));
      assert.ok(JSON.stringify((err as RegistryError).toBody()).length < 1000);
      return true;
    });
  }
});

test('each required blob and listed manifest keeps the field it came from', () => {
  const foreign = { ...layer, digest: d(5), urls: ['https://example.com/x'] };
  const parsed = parseManifest(body({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [foreign, layer, { ...layer, digest: d(6) }] }), undefined);
  assert.deepEqual(parsed.blobFields, ['config', 'layers[1]', 'layers[2]']);
  const index = parseManifest(body({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [{ ...layer, mediaType: MediaType.OciManifest }] }), undefined);
  assert.deepEqual(index.manifestFields, ['manifests[0]']);
});
