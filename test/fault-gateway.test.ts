import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import {
  isAlive, layoutOf, MANIFEST_ACCEPT, mustRun, sha256, sleep, startAppliance, type Appliance, type HttpResult,
} from './helpers/appliance.js';
import { keepAliveClient, type KeepAliveResult } from './helpers/faults.js';
import { pushImage } from './helpers/hosted.js';
import { buildImage, type BuiltImage } from './helpers/oci-image.js';
import { startDistribution, startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';

/**
 * Faults at the gateway of the whole appliance (`stevedore start`, TLS, users): requests that
 * arrive while a worker is starting or restarting are held until it is up (not answered 503), and
 * a burst of requests the workers refuse, interleaved with good ones on keep-alive connections,
 * gets each worker's own 4xx and OCI error JSON — never a 503 invented by the gateway.
 */

describe('fault: the gateway while workers start and restart, and under bad requests', () => {
  let work: string;
  let upstream: RunningProcess & { root: string };
  let upHost: string;
  let app: Appliance;
  const toolImage = buildImage({ layerSizes: [3000], seed: 'fault-gateway-tool' });
  const coldImage = buildImage({ layerSizes: [2000], seed: 'fault-gateway-cold' });
  const hostedImage = buildImage({ layerSizes: [5000], seed: 'fault-gateway-hosted' });
  const skopeo = (args: string[]) => mustRun('skopeo', ['--insecure-policy', ...args], { timeoutMs: 60_000 });
  const workerName = () => `registry-${upHost.replace(':', '_')}`;

  const get = (path: string, timeoutMs = 15_000): Promise<HttpResult> =>
    app.call('GET', path, { auth: app.reader.auth, headers: { accept: MANIFEST_ACCEPT }, timeoutMs });
  const timed = async (request: Promise<HttpResult>, from = Date.now()): Promise<HttpResult & { after: number }> => {
    const res = await request;
    return Object.assign(res, { after: Date.now() - from });
  };

  /** SIGKILLs the PM2 app `name` (PM2 restarts it); resolves once the old process is gone. */
  async function kill9(name: string): Promise<void> {
    const target = app.processes().find((p) => p.name === name);
    assert.ok(target, `process ${name} not found among ${JSON.stringify(app.processes())}`);
    process.kill(target.pid, 'SIGKILL');
    for (let i = 0; i < 100 && isAlive(target.pid); i++) await sleep(10);
    assert.ok(!isAlive(target.pid), `${name} (pid ${target.pid}) still alive`);
  }

  before(async () => {
    work = await tempDir('fault-gateway-');
    upstream = await startDistribution();
    upHost = `127.0.0.1:${upstream.port}`;
    for (const [ref, image] of [['mirror/tool:1.0', toolImage], ['mirror/cold:1.0', coldImage]] as const) {
      const layout = await layoutOf(work, [image]);
      await skopeo(['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout.dir}:latest`, `docker://${upHost}/${ref}`]);
    }
  });

  after(async () => {
    await app?.stop();
    await upstream?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('right after `stevedore start`, a pull through a cache prefix issued as soon as the gateway answers is served (held until the worker is up), not 503', async (t) => {
    app = await startAppliance({ upstreams: [upHost], aliases: `up=${upHost}`, waitHealthy: false });
    const spawnedAt = Date.now();
    // The first moment the gateway answers /v2/ (bounded).
    let base: HttpResult | undefined;
    while (Date.now() - spawnedAt < 30_000) {
      base = await app.call('GET', '/v2/', { auth: app.reader.auth, timeoutMs: 2_000 }).catch(() => undefined);
      if (base?.status === 200) break;
      await sleep(20);
    }
    assert.equal(base?.status, 200, 'the gateway answers /v2/');
    const gatewayAt = Date.now();
    const health = await app.call('GET', '/healthz', { timeoutMs: 2_000 });
    const [manifest, tags] = await Promise.all([
      timed(get('/v2/up/mirror/tool/manifests/1.0'), gatewayAt),
      timed(get(`/v2/mirror/tool/tags/list?ns=${upHost}`), gatewayAt),
    ]);
    t.diagnostic(`gateway answered /v2/ ${gatewayAt - spawnedAt} ms after spawn; /healthz then: ${health.status} ${health.text()}`);
    t.diagnostic(`cache-prefix manifest GET: ${manifest.status} after ${manifest.after} ms; tags list via ?ns=: ${tags.status} after ${tags.after} ms`);
    assert.equal(manifest.status, 200, `manifest through the cache prefix right after start: ${manifest.text()}`);
    assert.equal(sha256(manifest.body), toolImage.manifest.digest);
    assert.equal(tags.status, 200, tags.text());
    assert.ok(manifest.after < 10_000);
    await app.waitHealthy(20_000);
  });

  it('while PM2 restarts a killed worker, requests that need it wait and succeed', async (t) => {
    const layout = await layoutOf(work, [hostedImage]);
    await skopeo(['copy', '--quiet', '--dest-cert-dir', app.certDir, '--dest-creds', app.admin.creds, `oci:${layout.dir}:latest`, `docker://${app.host}/team/app:v1`]);

    // The cache worker: a tag list (only the worker answers it) and a cold manifest (the worker fills it).
    await kill9(workerName());
    const killedAt = Date.now();
    const [tags, cold] = await Promise.all([
      timed(get('/v2/up/mirror/tool/tags/list'), killedAt),
      timed(get('/v2/up/mirror/cold/manifests/1.0'), killedAt),
    ]);
    t.diagnostic(`cache worker killed: tags list ${tags.status} after ${tags.after} ms, cold manifest ${cold.status} after ${cold.after} ms`);
    assert.equal(tags.status, 200, tags.text());
    assert.deepEqual(tags.json<{ tags: string[] }>().tags, ['1.0']);
    assert.equal(cold.status, 200, cold.text());
    assert.equal(sha256(cold.body), coldImage.manifest.digest);

    // The hosted worker: an upload session and a tag list.
    await kill9('registry-hosted');
    const hostedKilledAt = Date.now();
    const [upload, hostedTags] = await Promise.all([
      timed(app.call('POST', '/v2/team/app/blobs/uploads/', { auth: app.admin.auth, timeoutMs: 15_000 }), hostedKilledAt),
      timed(get('/v2/team/app/tags/list'), hostedKilledAt),
    ]);
    t.diagnostic(`hosted worker killed: upload POST ${upload.status} after ${upload.after} ms, tags list ${hostedTags.status} after ${hostedTags.after} ms`);
    assert.equal(upload.status, 202, upload.text());
    assert.equal(hostedTags.status, 200, hostedTags.text());
    await app.waitHealthy(20_000);
  });

  it('a burst of refused requests interleaved with good ones, a connection per request: each gets the worker\'s 4xx and OCI error JSON, no 503', async (t) => {
    await app.waitHealthy(20_000);
    assertBurst(t, await badRequestBurst(app.url, app.admin.auth, hostedImage, false));
  });

  it('the same burst on keep-alive connections: each answer as the worker gave it, no 503, and each connection stays usable', async (t) => {
    await app.waitHealthy(20_000);
    assertBurst(t, await badRequestBurst(app.url, app.admin.auth, hostedImage, true));
  });
});

const BURST_CONNECTIONS = 4;
const BURST_ROUNDS = 4;
/** Requests per round of the burst (good and bad). */
const BURST_REQUESTS_PER_ROUND = 13;

interface BurstReport {
  outcomes: Array<{ connection: number; what: string; status: number; code?: string; body: string }>;
  problems: string[];
  sockets: number[];
}

/**
 * On BURST_CONNECTIONS clients of `base` at once (each on one keep-alive connection, or with
 * `keepAlive` false a connection per request), BURST_ROUNDS rounds each of good
 * requests and requests a registry worker refuses (large bodies the worker answers before reading):
 * PATCH with `Content-Range: 9-0`, PUT `?digest=sha257:…`, a manifest with trailing garbage, a chunk
 * after the upload completed, a manifest whose layer digest is `sha256:..%2f..`. `team/app:v1`
 * (`image`) must be stored; `auth` may write. Every answer is checked against the worker's own.
 */
async function badRequestBurst(base: string, auth: string | undefined, image: BuiltImage, keepAlive: boolean): Promise<BurstReport> {
  // Bodies the worker refuses before reading them: 16 KiB (fits in socket buffers) and 1 MiB (does not), alternately.
  const bodies = [Buffer.alloc(16 * 1024, 0x5a), Buffer.alloc(1024 * 1024, 0x5a)];
  const small = Buffer.from('a small blob for the completed upload');
  const badManifest = Buffer.concat([image.manifest.data, Buffer.from('}trailing garbage')]);
  const parsed = JSON.parse(image.manifest.data.toString('utf8')) as { layers: Array<{ digest: string }> };
  parsed.layers[0]!.digest = 'sha256:..%2f..';
  const traversalManifest = Buffer.from(JSON.stringify(parsed));
  const withQuery = (location: string, query: string) => `${location}${location.includes('?') ? '&' : '?'}${query}`;

  const report: BurstReport = { outcomes: [], problems: [], sockets: [] };
  const clients = Array.from({ length: BURST_CONNECTIONS }, () => keepAliveClient(base, auth, { keepAlive }));

  /** Records a request's answer and checks it: `status`, and for a 4xx the OCI error `codes` (one of). */
  function expectAnswer(connection: number, what: string, res: KeepAliveResult, status: number, codes: string[] = []): void {
    let code: string | undefined;
    if (res.status >= 400) {
      try {
        code = res.json<{ errors: Array<{ code: string }> }>().errors[0]?.code;
      } catch { /* not JSON: reported below */ }
    }
    report.outcomes.push({ connection, what, status: res.status, ...(code ? { code } : {}), body: res.text().slice(0, 200) });
    if (res.status !== status) report.problems.push(`connection ${connection} ${what}: ${res.status} (expected ${status}) ${res.text().slice(0, 200)}`);
    else if (codes.length > 0 && !(code && codes.includes(code))) report.problems.push(`connection ${connection} ${what}: OCI error ${code ?? res.text().slice(0, 200)} (expected ${codes.join(' or ')})`);
    else if (status >= 400 && !/application\/json/.test(String(res.headers['content-type']))) report.problems.push(`connection ${connection} ${what}: content-type ${res.headers['content-type']}`);
  }

  async function session(connection: number, client: ReturnType<typeof keepAliveClient>): Promise<string | undefined> {
    const post = await client.request('POST', '/v2/team/app/blobs/uploads/');
    expectAnswer(connection, 'POST upload', post, 202);
    return post.status === 202 ? String(post.headers.location) : undefined;
  }

  await Promise.all(clients.map(async (client, connection) => {
    for (let round = 0; round < BURST_ROUNDS; round++) {
      const body = bodies[round % bodies.length]!;
      expectAnswer(connection, 'GET /v2/', await client.request('GET', '/v2/'), 200);
      const first = await session(connection, client);
      if (first) {
        expectAnswer(connection, 'PATCH Content-Range: 9-0', await client.request('PATCH', first, {
          headers: { 'content-range': '9-0', 'content-type': 'application/octet-stream' }, body,
        }), 416, ['BLOB_UPLOAD_INVALID', 'RANGE_INVALID']);
      }
      expectAnswer(connection, 'GET manifest', await client.request('GET', '/v2/team/app/manifests/v1', { headers: { accept: MANIFEST_ACCEPT } }), 200);
      const second = await session(connection, client);
      if (second) {
        expectAnswer(connection, 'PUT ?digest=sha257:', await client.request('PUT', withQuery(second, `digest=sha257:${'a'.repeat(64)}`), {
          headers: { 'content-type': 'application/octet-stream' }, body,
        }), 400, ['DIGEST_INVALID']);
      }
      expectAnswer(connection, 'PUT manifest with trailing garbage', await client.request('PUT', `/v2/team/app/manifests/bad-${connection}-${round}`, {
        headers: { 'content-type': image.manifest.mediaType }, body: badManifest,
      }), 400, ['MANIFEST_INVALID']);
      expectAnswer(connection, 'GET tags list', await client.request('GET', '/v2/team/app/tags/list'), 200);
      const third = await session(connection, client);
      if (third) {
        expectAnswer(connection, 'PUT completing an upload', await client.request('PUT', withQuery(third, `digest=${sha256(small)}`), {
          headers: { 'content-type': 'application/octet-stream' }, body: small,
        }), 201);
        expectAnswer(connection, 'PATCH after the upload completed', await client.request('PATCH', third, {
          headers: { 'content-type': 'application/octet-stream' }, body,
        }), 404, ['BLOB_UPLOAD_UNKNOWN']);
      }
      expectAnswer(connection, 'PUT manifest with layer digest sha256:..%2f..', await client.request('PUT', `/v2/team/app/manifests/trav-${connection}-${round}`, {
        headers: { 'content-type': image.manifest.mediaType }, body: traversalManifest,
      }), 400, ['MANIFEST_INVALID', 'DIGEST_INVALID']);
      expectAnswer(connection, 'HEAD layer', await client.request('HEAD', `/v2/team/app/blobs/${image.layers[0]!.digest}`), 200);
    }
  }).map((p, connection) => p.catch((err: Error) => { report.problems.push(`connection ${connection}: ${err.message}`); })));
  report.sockets = clients.map((c) => c.connections());
  for (const client of clients) client.close();
  return report;
}

/** Asserts a burst went as the worker answers: no 503, no problem, every request answered. */
function assertBurst(t: TestContext, report: BurstReport): void {
  const unavailable = report.outcomes.filter((o) => o.status === 503);
  t.diagnostic(`${report.outcomes.length} requests from ${BURST_CONNECTIONS} clients (sockets opened per client: ${report.sockets.join(', ')}); 503s: ${unavailable.length}`);
  if (unavailable.length) {
    const byKind = new Map<string, number>();
    for (const o of unavailable) byKind.set(o.what, (byKind.get(o.what) ?? 0) + 1);
    t.diagnostic(`503s by request: ${[...byKind].map(([what, n]) => `${what} ×${n}`).join('; ')}; first: ${unavailable[0]!.body}`);
  }
  assert.deepEqual(unavailable, [], 'no 503 while every worker is up');
  assert.deepEqual(report.problems, []);
  assert.equal(report.outcomes.length, BURST_CONNECTIONS * BURST_ROUNDS * BURST_REQUESTS_PER_ROUND);
}

describe('control: the same burst sent straight to a hosted worker (what the gateway must pass on)', () => {
  let root: string;
  let worker: RunningProcess;
  const image = buildImage({ layerSizes: [5000], seed: 'fault-gateway-control' });
  before(async () => {
    root = await tempDir('fault-gateway-control-');
    worker = await startStevedoreRegistry(['--root', root]);
    await pushImage(worker.url, 'team/app', 'v1', image);
  });
  after(async () => {
    await worker?.stop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('each refused request gets its 4xx and OCI error JSON: a connection per request', async (t) => {
    assertBurst(t, await badRequestBurst(worker.url, undefined, image, false));
  });

  it('each refused request gets its 4xx and OCI error JSON on keep-alive connections that stay usable', async (t) => {
    assertBurst(t, await badRequestBurst(worker.url, undefined, image, true));
  });
});
