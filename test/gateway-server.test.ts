import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import { parseAccessLogLine, type AccessLogEntry } from '../lib/access-log.js';
import { createLogger } from '../lib/log.js';
import { AccessLogWriter } from '../services/gateway/src/access-log.js';
import { UserDirectory } from '../services/gateway/src/auth.js';
import { GatewayMetrics } from '../services/gateway/src/metrics.js';
import { CACHE_RESULT_HEADER } from '../lib/appliance.js';
import { createGateway } from '../services/gateway/src/server.js';
import { basic, call, ociError, sleep } from './helpers/appliance.js';
import { testPlan } from './helpers/gateway.js';
import { tempDir } from './helpers/processes.js';

/**
 * The gateway in-process, in front of fake workers on unix sockets (they echo what reached them):
 * what it forwards, which headers it rewrites or strips, its 503, access log and metrics.
 */

interface Echo {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  bodySha256: string;
  bodyBytes: number;
  worker: string;
}

function fakeWorker(name: string, socketPath: string): Promise<Server> {
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const hash = createHash('sha256');
    let bytes = 0;
    req.on('data', (c: Buffer) => { hash.update(c); bytes += c.length; });
    req.on('end', () => {
      const echo: Echo = { method: req.method!, url: req.url!, headers: req.headers, bodySha256: hash.digest('hex'), bodyBytes: bytes, worker: name };
      const body = JSON.stringify(echo);
      const headers: Record<string, string | number> = {
        'content-type': 'application/json', 'content-length': Buffer.byteLength(body),
        location: '/v2/some/repo/blobs/uploads/abc?_state=x',
        link: '</v2/some/repo/tags/list?n=1&last=a>; rel="next"',
      };
      if (req.url!.includes('/blobs/sha256:')) headers[CACHE_RESULT_HEADER] = req.url!.includes('hit') ? 'hit' : 'miss';
      if (req.url === '/v2/') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{}');
        return;
      }
      if (req.url!.includes('/refused/')) {
        // As a cache worker answers when its upstream refuses the configured credentials: no challenge of its own.
        const refused = JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'upstream rejected the configured credentials' }] });
        res.writeHead(401, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(refused) });
        res.end(req.method === 'HEAD' ? undefined : refused);
        return;
      }
      res.writeHead(req.method === 'POST' ? 202 : 200, headers);
      res.end(req.method === 'HEAD' ? undefined : body);
    });
  });
  // As the real worker's (app.ts): long, since only the gateway's pooled connections idle on it.
  server.keepAliveTimeout = 72_000;
  return new Promise((resolve) => server.listen(socketPath, () => resolve(server)));
}

describe('gateway (in-process, fake workers on unix sockets)', () => {
  let dir: string;
  let gateway: Server;
  let url: string;
  let metrics: GatewayMetrics;
  let accessLog: AccessLogWriter;
  let accessLogPath: string;
  const workers: Server[] = [];
  const admin = basic('ada', 'ada-password-1');
  const reader = basic('rita', 'rita-password-1');

  before(async () => {
    dir = await tempDir('gateway-server-');
    const run = join(dir, 'run');
    await mkdir(run, { mode: 0o700 });
    const plan = testPlan(run, [
      { name: 'registry-down.example', kind: 'proxy', upstream: 'down.example', upstreamUrl: 'https://down.example/', prefixes: ['down.example'], socketPath: join(run, 'down.sock') },
    ]);
    workers.push(await fakeWorker('hosted', plan.hosted.socketPath), await fakeWorker('up', plan.proxies[0]!.socketPath));
    // bcryptjs writes $2b$; htpasswd -B (and `stevedore user add`) write $2y$.
    const hash = (pass: string) => bcrypt.hashSync(pass, 4).replace(/^\$2b\$/, '$2y$');
    await writeFile(join(dir, 'htpasswd'), `ada:${hash('ada-password-1')}\nrita:${hash('rita-password-1')}\n`);
    await writeFile(join(dir, 'admins'), 'ada\n');
    const log = createLogger('gateway', 'silent');
    accessLogPath = join(dir, 'logs', 'access.log');
    accessLog = new AccessLogWriter(accessLogPath);
    metrics = new GatewayMetrics(join(dir, 'blobs'));
    gateway = createGateway({ plan, log, users: new UserDirectory(join(dir, 'htpasswd'), join(dir, 'admins'), log), realm: 'Test Realm', accessLog, metrics, workerWaitMs: 1_000 });
    await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(gateway.address() as AddressInfo).port}`;
  });

  after(async () => {
    await new Promise<void>((resolve) => { gateway?.close(() => resolve()); gateway?.closeAllConnections(); });
    accessLog?.close();
    for (const w of workers) await new Promise<void>((resolve) => { w.close(() => resolve()); w.closeAllConnections(); });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function logEntries(): Promise<AccessLogEntry[]> {
    accessLog.flush();
    await sleep(50);
    const text = await readFile(accessLogPath, 'utf8').catch(() => '');
    return text.split('\n').filter(Boolean).map((l) => parseAccessLogLine(l)!);
  }

  it('strips the alias or host prefix, keeps the query, and re-adds the prefix to Location and Link', async () => {
    for (const prefix of ['up', 'UP', 'up.example:5000']) {
      const res = await call(url, 'GET', `/v2/${prefix}/some/repo/tags/list?n=1&last=a`, { auth: reader });
      assert.equal(res.status, 200);
      const echo = res.json<Echo>();
      assert.equal(echo.worker, 'up');
      assert.equal(echo.url, '/v2/some/repo/tags/list?n=1&last=a');
      assert.equal(res.headers.location, `/v2/${prefix}/some/repo/blobs/uploads/abc?_state=x`);
      assert.equal(res.headers.link, `</v2/${prefix}/some/repo/tags/list?n=1&last=a>; rel="next"`);
    }
    // Hosted: untouched URL and headers.
    const hosted = await call(url, 'POST', '/v2/some/repo/blobs/uploads/', { auth: admin });
    assert.equal(hosted.status, 202);
    assert.equal(hosted.json<Echo>().worker, 'hosted');
    assert.equal(hosted.json<Echo>().url, '/v2/some/repo/blobs/uploads/');
    assert.equal(hosted.headers.location, '/v2/some/repo/blobs/uploads/abc?_state=x');
    assert.equal(hosted.headers.link, '</v2/some/repo/tags/list?n=1&last=a>; rel="next"');
  });

  it('tells keep-alive clients the gateway\'s own idle timeout, not the worker\'s', async () => {
    const res = await fetch(`${url}/v2/some/repo/tags/list`, { headers: { authorization: reader } });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    assert.equal(res.headers.get('keep-alive'), `timeout=${Math.round(gateway.keepAliveTimeout / 1000)}`);
  });

  it('routes ?ns= to the named upstream\'s worker (query kept), an unknown ns to the hosted one', async () => {
    const res = await call(url, 'GET', '/v2/lib/x/manifests/1?ns=up.example:5000', { auth: reader });
    assert.equal(res.json<Echo>().worker, 'up');
    assert.equal(res.json<Echo>().url, '/v2/lib/x/manifests/1?ns=up.example:5000');
    // No prefix came from the client: headers are not rewritten.
    assert.equal(res.headers.location, '/v2/some/repo/blobs/uploads/abc?_state=x');
    const other = await call(url, 'GET', '/v2/lib/x/manifests/1?ns=elsewhere.example', { auth: reader });
    assert.equal(other.json<Echo>().worker, 'hosted');
  });

  it('never forwards the client\'s Authorization; streams request bodies intact', async () => {
    const body = Buffer.alloc(3 * 1024 * 1024 + 7, 0x5a);
    const res = await call(url, 'PATCH', '/v2/some/repo/blobs/uploads/abc', { auth: admin, body, headers: { 'content-type': 'application/octet-stream' } });
    const echo = res.json<Echo>();
    assert.equal(echo.headers.authorization, undefined);
    assert.equal(echo.bodyBytes, body.length);
    assert.equal(echo.bodySha256, createHash('sha256').update(body).digest('hex'));
    assert.equal(echo.method, 'PATCH');
  });

  it('reads and strips the workers\' cache header, counting hits and misses per upstream', async () => {
    const hit = await call(url, 'GET', '/v2/up/r/blobs/sha256:hit', { auth: reader });
    const miss = await call(url, 'GET', '/v2/up/r/blobs/sha256:miss', { auth: reader });
    for (const res of [hit, miss]) assert.equal(res.headers[CACHE_RESULT_HEADER], undefined);
    const text = await metrics.registry.metrics();
    assert.match(text, /^stevedore_cache_requests_total\{upstream="up.example:5000",result="hit"\} 1$/m);
    assert.match(text, /^stevedore_cache_requests_total\{upstream="up.example:5000",result="miss"\} 1$/m);
  });

  it('a worker that is not listening: waited for (workerWaitMs), then 503 UNAVAILABLE with Retry-After, counted as an upstream error; /healthz degraded', async () => {
    const res = await call(url, 'GET', '/v2/down.example/r/manifests/1', { auth: reader });
    assert.equal(res.status, 503);
    assert.ok(res.ms >= 900 && res.ms < 5_000, `waited ${res.ms} ms for the worker`);
    assert.equal(res.headers['retry-after'], '1');
    assert.equal(ociError(res).code, 'UNAVAILABLE');
    assert.deepEqual(ociError(res).detail, { worker: 'registry-down.example' });
    const health = await call(url, 'GET', '/healthz');
    assert.equal(health.status, 503);
    assert.deepEqual(health.json(), {
      status: 'degraded', gateway: 'ok',
      workers: { 'registry-hosted': 'ok', 'registry-up.example_5000': 'ok', 'registry-down.example': 'down' },
    });
    assert.match(await metrics.registry.metrics(), /^stevedore_upstream_errors_total\{upstream="down.example"\} 1$/m);
  });

  it('answers 401 with the challenge (no body on HEAD), 403 DENIED to read-only writers, 404 off /v2/', async () => {
    const head = await call(url, 'HEAD', '/v2/some/repo/manifests/1');
    assert.equal(head.status, 401);
    assert.equal(head.headers['www-authenticate'], 'Basic realm="Test Realm"');
    assert.equal(head.body.length, 0);
    for (const method of ['POST', 'PUT', 'PATCH', 'DELETE']) {
      const res = await call(url, method, '/v2/some/repo/blobs/uploads/', { auth: reader });
      assert.equal(res.status, 403, method);
      assert.equal(ociError(res).code, 'DENIED');
    }
    // Every upload-session endpoint is write-side, reads included.
    for (const method of ['GET', 'HEAD']) {
      const res = await call(url, method, '/v2/some/repo/blobs/uploads/0b7e2cf4-5f3c-4d8a-9a62-7e0d8b3f1c11', { auth: reader });
      assert.equal(res.status, 403, method);
      if (method === 'GET') assert.equal(ociError(res).code, 'DENIED');
    }
    // Methods outside the API are 405 with OCI error JSON, for anyone.
    for (const method of ['TRACE', 'OPTIONS', 'PROPFIND']) {
      const res = await call(url, method, '/v2/', { auth: reader });
      assert.equal(res.status, 405, method);
      assert.equal(ociError(res).code, 'UNSUPPORTED');
    }
    for (const path of ['/', '/v1/', '/v2x/a/manifests/b', '/favicon.ico']) {
      const res = await call(url, 'GET', path, { auth: reader });
      assert.equal(res.status, 404, path);
      assert.equal(ociError(res).code, 'NAME_UNKNOWN');
    }
    // A worker's 401 leaves with the gateway's challenge too.
    const refused = await call(url, 'GET', '/v2/up/refused/img/manifests/v1', { auth: reader });
    assert.equal(refused.status, 401);
    assert.equal(refused.headers['www-authenticate'], 'Basic realm="Test Realm"');
    assert.equal(ociError(refused).code, 'UNAUTHORIZED');
    const ping = await call(url, 'HEAD', '/v2/', { auth: reader });
    assert.equal(ping.status, 200);
    assert.equal(ping.headers['docker-distribution-api-version'], 'registry/2.0');
  });

  it('logs each request once, with the user, the client\'s path, the upstream, name, reference and response bytes', async () => {
    const res = await call(url, 'GET', '/v2/up/team/img/manifests/v9?x=1', { auth: reader });
    assert.equal(res.status, 200);
    let entry: AccessLogEntry | undefined;
    for (let i = 0; i < 40 && !entry; i++) entry = (await logEntries()).find((e) => e.path === '/v2/up/team/img/manifests/v9');
    assert.ok(entry);
    assert.deepEqual({ ...entry, time: undefined, durationMs: undefined }, {
      level: 30, time: undefined, msg: 'access', user: 'rita', method: 'GET', path: '/v2/up/team/img/manifests/v9', upstream: 'up.example:5000',
      repository: 'team/img', reference: 'v9', kind: 'manifest', status: 200, bytes: res.body.length, durationMs: undefined,
    });
    const all = await logEntries();
    assert.equal(all.filter((e) => e.path === '/v2/up/team/img/manifests/v9').length, 1);
    const denied = all.find((e) => e.status === 403);
    assert.equal(denied?.user, 'rita');
    const anonymous = all.find((e) => e.status === 401);
    assert.equal(anonymous?.user, '-');
    // /healthz and /metrics are not registry requests: not logged.
    assert.ok(!all.some((e) => e.path === '/healthz' || e.path === '/metrics'));
  });
});
