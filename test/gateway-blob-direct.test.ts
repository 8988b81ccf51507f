import assert from 'node:assert/strict';
import { readFile, rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import type { AppliancePlan } from '../lib/appliance.js';
import { parseAccessLogLine } from '../lib/access-log.js';
import { digestOf } from '../lib/oci/digest.js';
import { StorageLayout } from '../lib/storage/layout.js';
import type { AccessLogWriter } from '../services/gateway/src/access-log.js';
import type { GatewayMetrics } from '../services/gateway/src/metrics.js';
import { call, sleep } from './helpers/appliance.js';
import { callSocket, contentHeaders, startGatewayWithHostedWorker, type InProcessGateway } from './helpers/gateway.js';
import { tempDir } from './helpers/processes.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * The gateway sends stored blobs itself (services/gateway/src/blob-direct.ts), large ones from the store (a file, or
 * S3's ranged read), small ones from memory, on each storage driver:
 * the answer must be the worker's, header for header, and everything else must still reach the worker.
 * A real hosted worker on a unix socket; a cache worker's store written by hand (its worker never runs).
 */

async function push(url: string, name: string, data: Buffer): Promise<string> {
  const digest = digestOf(data).value;
  const post = await call(url, 'POST', `/v2/${name}/blobs/uploads/`);
  assert.equal(post.status, 202, post.text());
  const location = new URL(post.headers.location!, url);
  location.searchParams.set('digest', digest);
  const put = await call(url, 'PUT', `${location.pathname}${location.search}`, { body: data, headers: { 'content-type': 'application/octet-stream' } });
  assert.equal(put.status, 201, put.text());
  return digest;
}

for (const kind of STORAGE_KINDS) {
  describe(`gateway: stored blobs sent from the store (${kind}), as the worker would send them`, () => {
    let dir: string;
    let storage: TestStorage;
    let plan: AppliancePlan;
    let env: InProcessGateway;
    let url: string;
    let metrics: GatewayMetrics;
    let accessLog: AccessLogWriter;
    let accessLogPath: string;
    const large = Buffer.alloc(300 * 1024 + 17);
    for (let i = 0; i < large.length; i++) large[i] = (i * 7 + (i >> 10)) & 0xff;
    const small = Buffer.alloc(4096, 0x3c);
    let largeDigest: string;
    let smallDigest: string;

    /** The gateway's answer to a GET is the worker's: status, content headers and bytes. */
    const assertAnsweredAsWorker = async (c: { path: string; headers?: Record<string, string> }) => {
      const viaGateway = await call(url, 'GET', c.path, { headers: c.headers ?? {} });
      const fromWorker = await callSocket(plan.hosted.socketPath, 'GET', c.path, c.headers);
      assert.equal(viaGateway.status, fromWorker.status, c.path);
      assert.deepEqual(contentHeaders(viaGateway.headers), contentHeaders(fromWorker.headers), `${c.path} ${JSON.stringify(c.headers)}`);
      assert.ok(viaGateway.body.equals(fromWorker.body), `${c.path}: same bytes`);
    };

    before(async () => {
      dir = await tempDir('gateway-blob-direct-');
      storage = await testStorage(kind);
      env = await startGatewayWithHostedWorker(dir, { storage });
      ({ plan, url, metrics, accessLog, accessLogPath } = env);
      largeDigest = await push(url, 'team/app', large);
      smallDigest = await push(url, 'team/app', small);
    });

    after(async () => {
      await env?.close();
      await storage?.cleanup();
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it('answers a GET, a Range and a ?ns= GET of a stored blob with the worker\'s status, headers and bytes', async () => {
      const cases: Array<{ path: string; headers?: Record<string, string> }> = [
        { path: `/v2/team/app/blobs/${largeDigest}` },
        { path: `/v2/team/app/blobs/${largeDigest}`, headers: { range: 'bytes=1000-70999' } },
        { path: `/v2/team/app/blobs/${largeDigest}`, headers: { range: 'bytes=-10' } },
        { path: `/v2/team/app/blobs/${largeDigest}?ns=elsewhere.example` },
      ];
      for (const c of cases) {
        await assertAnsweredAsWorker(c);
      }
      const full = await call(url, 'GET', `/v2/team/app/blobs/${largeDigest}`);
      assert.ok(full.body.equals(large));
    });

    it('leaves to the worker what it answers otherwise: other repositories, unknown blobs, 416, HEAD, If-None-Match', async () => {
      const cases: Array<{ method: string; path: string; headers?: Record<string, string>; status: number }> = [
        { method: 'GET', path: `/v2/other/app/blobs/${largeDigest}`, status: 404 },
        { method: 'GET', path: `/v2/team/app/blobs/${digestOf('absent').value}`, status: 404 },
        { method: 'GET', path: `/v2/team/app/blobs/${largeDigest}`, headers: { range: `bytes=${large.length}-` }, status: 416 },
        { method: 'HEAD', path: `/v2/team/app/blobs/${largeDigest}`, status: 200 },
        { method: 'GET', path: `/v2/team/app/blobs/${largeDigest}`, headers: { 'if-none-match': `"${largeDigest}"` }, status: 304 },
        { method: 'GET', path: `/v2/team/app/blobs/${smallDigest}`, status: 200 },
      ];
      for (const c of cases) {
        const viaGateway = await call(url, c.method, c.path, { headers: c.headers ?? {} });
        const fromWorker = await callSocket(plan.hosted.socketPath, c.method, c.path, c.headers);
        assert.equal(viaGateway.status, c.status, `${c.method} ${c.path} ${JSON.stringify(c.headers)}: ${viaGateway.text()}`);
        assert.equal(fromWorker.status, c.status);
        assert.deepEqual(contentHeaders(viaGateway.headers), contentHeaders(fromWorker.headers), `${c.method} ${c.path}`);
        assert.ok(viaGateway.body.equals(fromWorker.body));
      }
    });

    it('logs a blob sent from the store like a proxied one', async () => {
      const res = await call(url, 'GET', `/v2/team/app/blobs/${largeDigest}?x=1`);
      assert.equal(res.status, 200);
      let entry;
      for (let i = 0; i < 40 && !entry; i++) {
        accessLog.flush();
        await sleep(50);
        const lines = (await readFile(accessLogPath, 'utf8').catch(() => '')).split('\n').filter(Boolean);
        entry = lines.map((l) => parseAccessLogLine(l)).find((e) => e?.path === `/v2/team/app/blobs/${largeDigest}` && e.method === 'GET' && e.bytes === large.length);
      }
      assert.ok(entry, 'access-log entry');
      assert.deepEqual({ ...entry, time: undefined, durationMs: undefined }, {
        level: 30, time: undefined, msg: 'access', user: '-', method: 'GET', path: `/v2/team/app/blobs/${largeDigest}`, upstream: '-',
        repository: 'team/app', reference: largeDigest, kind: 'blob', status: 200, bytes: large.length, durationMs: undefined,
      });
    });

    it('a cache worker\'s stored and linked blob: sent from its namespace, counted as a cache hit', async () => {
      const layout = new StorageLayout(storage.root, { namespace: 'up.example:5000' });
      const digest = digestOf(large);
      await storage.driver.putContent(layout.layerLinkKey('team/img', digest), '');
      // The blob file is shared with the hosted store (one copy per digest).
      const res = await call(url, 'GET', `/v2/up/team/img/blobs/${digest.value}`);
      assert.equal(res.status, 200);
      assert.ok(res.body.equals(large));
      assert.equal(res.headers['docker-content-digest'], digest.value);
      assert.match(await metrics.registry.metrics(), /^stevedore_cache_requests_total\{upstream="up.example:5000",result="hit"\} 1$/m);
      // Not linked in the cache's namespace: the (absent) cache worker must answer.
      const unlinked = await call(url, 'GET', `/v2/up/team/other/blobs/${digest.value}`);
      assert.equal(unlinked.status, 503);
    });

    it('answers small blobs from memory with the worker\'s headers and bytes (GET, Range, ?ns=), and logs them', async () => {
      const cases: Array<{ path: string; headers?: Record<string, string> }> = [
        { path: `/v2/team/app/blobs/${smallDigest}` },
        { path: `/v2/team/app/blobs/${smallDigest}`, headers: { range: 'bytes=100-199' } },
        { path: `/v2/team/app/blobs/${smallDigest}`, headers: { range: 'bytes=-10' } },
        { path: `/v2/team/app/blobs/${smallDigest}?ns=elsewhere.example` },
      ];
      for (let round = 0; round < 2; round++) { // read from disk, then from memory
        for (const c of cases) {
          await assertAnsweredAsWorker(c);
        }
      }
      let entry;
      for (let i = 0; i < 40 && !entry; i++) {
        accessLog.flush();
        await sleep(50);
        const lines = (await readFile(accessLogPath, 'utf8').catch(() => '')).split('\n').filter(Boolean);
        entry = lines.map((l) => parseAccessLogLine(l)).find((e) => e?.path === `/v2/team/app/blobs/${smallDigest}` && e.status === 206 && e.bytes === 100);
      }
      assert.ok(entry, 'access-log entry of the 206');
      assert.equal(entry.kind, 'blob');
      assert.equal(entry.repository, 'team/app');
    });

    it('a small blob of a cache worker is served without it; a link removed in the store stops being served within about a second', async () => {
      const layout = new StorageLayout(storage.root, { namespace: 'up.example:5000' });
      const data = Buffer.from('a small cached layer\n'.repeat(100));
      const digest = digestOf(data);
      await storage.driver.putContent(layout.blobKey(digest), data);
      await storage.driver.putContent(layout.layerLinkKey('team/small', digest), '');
      for (let i = 0; i < 3; i++) {
        // The cache worker of up.example:5000 never runs: only the gateway can answer 200.
        const res = await call(url, 'GET', `/v2/up/team/small/blobs/${digest.value}`);
        assert.equal(res.status, 200, res.text());
        assert.ok(res.body.equals(data));
        assert.equal(res.headers['docker-content-digest'], digest.value);
        assert.equal(res.headers['content-length'], String(data.length));
      }
      await storage.driver.delete(layout.layerLinkKey('team/small', digest));
      await sleep(1_100);
      const gone = await call(url, 'GET', `/v2/up/team/small/blobs/${digest.value}`);
      assert.equal(gone.status, 503, 'the (absent) worker must answer once the link is gone');
    });

    it('a blob deleted through the gateway is not served from memory afterwards', async () => {
      const data = Buffer.alloc(2048, 0x5a);
      const digest = await push(url, 'team/del', data);
      assert.equal((await call(url, 'GET', `/v2/team/del/blobs/${digest}`)).status, 200);
      assert.equal((await call(url, 'GET', `/v2/team/del/blobs/${digest}`)).status, 200);
      const deleted = await call(url, 'DELETE', `/v2/team/del/blobs/${digest}`);
      assert.equal(deleted.status, 202, deleted.text());
      const after = await call(url, 'GET', `/v2/team/del/blobs/${digest}`);
      assert.equal(after.status, 404);
    });
  });
}
