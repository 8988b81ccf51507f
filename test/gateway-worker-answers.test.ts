import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { Agent, createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { AppliancePlan } from '../lib/appliance.js';
import { createLogger } from '../lib/log.js';
import { AccessLogWriter } from '../services/gateway/src/access-log.js';
import { GatewayMetrics } from '../services/gateway/src/metrics.js';
import { createGateway } from '../services/gateway/src/server.js';
import { REPLAYABLE_BODY_MAX } from '../services/gateway/src/worker-forward.js';
import { startGatewayWithHostedWorker, type InProcessGateway } from './helpers/gateway.js';
import { tempDir } from './helpers/processes.js';

/**
 * A worker's own answer reaches the client unchanged through the gateway: early 4xx answers to
 * bad requests (before the worker read the body) on kept-alive connections, and requests whose
 * pooled worker connection was closed under them. The gateway's 503 means the worker is really
 * unreachable.
 */

interface Answer { status: number; body: string; error?: string }

function send(agent: Agent, base: string, method: string, path: string, headers: Record<string, string> = {}, body: Buffer = Buffer.alloc(0)): Promise<Answer> {
  const url = new URL(base);
  return new Promise((resolve) => {
    const req = request({ host: url.hostname, port: url.port, method, path, agent, headers: { ...headers, 'content-length': String(body.length) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', (err) => resolve({ status: -1, body: '', error: err.message }));
    });
    req.setTimeout(10_000, () => req.destroy(new Error(`${method} ${path}: no answer within 10 s`)));
    req.on('error', (err) => resolve({ status: -1, body: '', error: err.message }));
    req.end(body);
  });
}

const sha256 = (data: Buffer): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
const errorCode = (answer: Answer): string => (JSON.parse(answer.body) as { errors: Array<{ code: string }> }).errors[0]!.code;

describe('gateway: a worker\'s early answers to bad requests reach the client (no false 503)', () => {
  let dir: string;
  let gw: InProcessGateway;

  before(async () => {
    dir = await tempDir('gateway-worker-answers-');
    gw = await startGatewayWithHostedWorker(dir);
  });
  after(async () => {
    await gw?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('interleaves bad requests (small and streamed bodies) with good ones on several keep-alive connections', async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 4 });
    const blob = Buffer.from('a small blob pushed between bad requests');
    const digest = sha256(blob);
    const big = REPLAYABLE_BODY_MAX * 2; // streamed to the worker, not buffered by the gateway
    const statuses: Record<string, number[]> = {};
    const record = (name: string, answer: Answer) => { (statuses[name] ??= []).push(answer.status); return answer; };
    for (let round = 0; round < 4; round++) {
      const started = await send(agent, gw.url, 'POST', '/v2/team/faults/blobs/uploads/');
      assert.equal(started.status, 202, started.body);
      const results = await Promise.all([
        send(agent, gw.url, 'PATCH', '/v2/team/faults/blobs/uploads/6a1d8f0e-0b8c-4f43-9d35-1f0c1b2a3c4d', { 'content-range': '9-0', 'content-type': 'application/octet-stream' }, Buffer.alloc(1 << 20)).then((a) => record('PATCH Content-Range 9-0 (1 MiB)', a)),
        send(agent, gw.url, 'PATCH', '/v2/team/faults/blobs/uploads/6a1d8f0e-0b8c-4f43-9d35-1f0c1b2a3c4d', { 'content-range': '9-0', 'content-type': 'application/octet-stream' }, Buffer.alloc(big)).then((a) => record('PATCH Content-Range 9-0 (streamed)', a)),
        send(agent, gw.url, 'PUT', '/v2/team/faults/blobs/uploads/6a1d8f0e-0b8c-4f43-9d35-1f0c1b2a3c4d?digest=sha257:abc', { 'content-type': 'application/octet-stream' }, Buffer.alloc(big)).then((a) => record('PUT ?digest=sha257 (streamed)', a)),
        send(agent, gw.url, 'PUT', '/v2/team/faults/manifests/v1', { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, Buffer.from('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"} trailing garbage')).then((a) => record('manifest with trailing garbage', a)),
        send(agent, gw.url, 'PUT', '/v2/team/faults/manifests/v2', { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, Buffer.from(JSON.stringify({
          schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: 'sha256:..%2f..', size: 2 }, layers: [],
        }))).then((a) => record('manifest with digest sha256:..%2f..', a)),
        send(agent, gw.url, 'POST', `/v2/team/faults/blobs/uploads/?digest=${digest}`, { 'content-type': 'application/octet-stream' }, blob).then((a) => record('monolithic push', a)),
        send(agent, gw.url, 'GET', '/v2/').then((a) => record('ping', a)),
        send(agent, gw.url, 'GET', '/v2/_catalog').then((a) => record('catalog', a)),
      ]);
      for (const answer of results) {
        assert.notEqual(answer.status, 503, answer.body);
        assert.ok(answer.status > 0, `transport error: ${answer.error}`);
        if (answer.status >= 400) assert.match(errorCode(answer), /^[A-Z_]+$/);
      }
    }
    assert.deepEqual(statuses['PATCH Content-Range 9-0 (1 MiB)'], [404, 404, 404, 404]);
    assert.deepEqual(statuses['PATCH Content-Range 9-0 (streamed)'], [404, 404, 404, 404]);
    assert.deepEqual(statuses['PUT ?digest=sha257 (streamed)'], [400, 400, 400, 400]);
    assert.deepEqual(statuses['manifest with trailing garbage'], [400, 400, 400, 400]);
    assert.deepEqual(statuses['manifest with digest sha256:..%2f..'], [400, 400, 400, 400]);
    assert.deepEqual(statuses['monolithic push'], [201, 201, 201, 201]);
    assert.deepEqual(statuses.ping, [200, 200, 200, 200]);
    agent.destroy();
  });

  it('a chunk sent after the upload completed gets the worker\'s 404 BLOB_UPLOAD_UNKNOWN, and the connection goes on', async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const started = await new Promise<string>((resolve, reject) => {
      const url = new URL(gw.url);
      request({ host: url.hostname, port: url.port, method: 'POST', path: '/v2/team/faults/blobs/uploads/', agent }, (res) => {
        res.resume();
        resolve(String(res.headers.location));
      }).on('error', reject).end();
    });
    const chunk = Buffer.from('the only chunk');
    const done = await send(agent, gw.url, 'PUT', `${started}${started.includes('?') ? '&' : '?'}digest=${sha256(chunk)}`, { 'content-type': 'application/octet-stream' }, chunk);
    assert.equal(done.status, 201, done.body);
    for (const size of [100, REPLAYABLE_BODY_MAX + 1]) {
      const startedAt = Date.now();
      const late = await send(agent, gw.url, 'PATCH', started, { 'content-type': 'application/octet-stream' }, Buffer.alloc(size));
      assert.equal(late.status, 404, late.body);
      assert.equal(errorCode(late), 'BLOB_UPLOAD_UNKNOWN');
      const next = await send(agent, gw.url, 'GET', '/v2/team/faults/tags/list');
      assert.notEqual(next.status, 503);
      assert.ok(next.status > 0, next.error);
      // Not stalled behind the unread rest of the late chunk until an idle timeout.
      assert.ok(Date.now() - startedAt < 5_000, `the connection stalled for ${Date.now() - startedAt} ms`);
    }
    agent.destroy();
  });
});

describe('gateway: a pooled worker connection closed under a request', () => {
  let dir: string;
  let worker: Server;
  let gateway: Server;
  let base: string;
  /** Requests the worker answered, by connection; the second request on a connection is dropped unanswered. */
  const answeredOn = new Map<unknown, number>();
  let dropped = 0;

  before(async () => {
    dir = await tempDir('gateway-stale-pool-');
    const run = join(dir, 'run');
    await mkdir(run, { mode: 0o700 });
    const plan: AppliancePlan = { hosted: { name: 'registry-hosted', kind: 'hosted', prefixes: [], socketPath: join(run, 'hosted.sock') }, proxies: [] };
    // A worker that, like any keep-alive server at its idle timeout, closes a connection just as the
    // gateway reuses it: the request gets no answer on that connection.
    worker = createServer((req, res) => {
      const count = answeredOn.get(req.socket) ?? 0;
      if (count >= 1) {
        dropped++;
        req.socket.destroy();
        return;
      }
      answeredOn.set(req.socket, count + 1);
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = JSON.stringify({ method: req.method, bytes: Buffer.concat(chunks).length });
        res.writeHead(req.method === 'PUT' ? 201 : 200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      });
    });
    await new Promise<void>((resolve) => worker.listen(plan.hosted.socketPath, resolve));
    gateway = createGateway({ plan, log: createLogger('gateway', 'silent'), users: undefined, realm: 'Test', accessLog: new AccessLogWriter(join(dir, 'access.log')), metrics: new GatewayMetrics(join(dir, 'blobs')) });
    await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(gateway.address() as AddressInfo).port}`;
  });
  after(async () => {
    await new Promise<void>((resolve) => { gateway?.close(() => resolve()); gateway?.closeAllConnections(); });
    await new Promise<void>((resolve) => { worker?.close(() => resolve()); worker?.closeAllConnections(); });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('sends an idempotent request or a buffered body again on a fresh connection; a streamed body gets 503', async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const first = await send(agent, base, 'GET', '/v2/a/tags/list');
    assert.equal(first.status, 200);
    // The gateway's pooled connection now carries a second request, which the worker drops.
    const get = await send(agent, base, 'GET', '/v2/a/tags/list');
    assert.equal(get.status, 200, get.body);
    const manifest = Buffer.alloc(300_000, 'm');
    await send(agent, base, 'GET', '/v2/a/tags/list');
    const put = await send(agent, base, 'PUT', '/v2/a/manifests/1', { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, manifest);
    assert.equal(put.status, 201, put.body);
    assert.deepEqual(JSON.parse(put.body), { method: 'PUT', bytes: manifest.length });
    assert.ok(dropped >= 2, `the worker dropped ${dropped} requests`);
    // A streamed body can't be sent twice: the client is told the worker was unreachable.
    await send(agent, base, 'GET', '/v2/a/tags/list');
    const before = dropped;
    const streamed = await send(agent, base, 'PATCH', '/v2/a/blobs/uploads/x', { 'content-type': 'application/octet-stream' }, Buffer.alloc(REPLAYABLE_BODY_MAX + 1));
    if (dropped > before) {
      assert.equal(streamed.status, 503);
      assert.equal(errorCode(streamed), 'UNAVAILABLE');
    }
    agent.destroy();
  });
});

describe('gateway: a request for a worker that is still starting waits for it', () => {
  let dir: string;
  let worker: Server | undefined;
  let gateway: Server;
  let base: string;
  let socketPath: string;

  before(async () => {
    dir = await tempDir('gateway-worker-start-');
    const run = join(dir, 'run');
    await mkdir(run, { mode: 0o700 });
    socketPath = join(run, 'hosted.sock');
    const plan: AppliancePlan = { hosted: { name: 'registry-hosted', kind: 'hosted', prefixes: [], socketPath }, proxies: [] };
    gateway = createGateway({ plan, log: createLogger('gateway', 'silent'), users: undefined, realm: 'Test', accessLog: new AccessLogWriter(join(dir, 'access.log')), metrics: new GatewayMetrics(join(dir, 'blobs')), workerWaitMs: 5_000 });
    await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(gateway.address() as AddressInfo).port}`;
  });
  after(async () => {
    await new Promise<void>((resolve) => { gateway?.close(() => resolve()); gateway?.closeAllConnections(); });
    if (worker) await new Promise<void>((resolve) => { worker!.close(() => resolve()); worker!.closeAllConnections(); });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('holds GETs and a buffered PUT until the worker listens (not 503), then answers them', async () => {
    const agent = new Agent({ keepAlive: true });
    const started = Date.now();
    const pending = Promise.all([
      send(agent, base, 'GET', '/v2/a/tags/list'),
      send(agent, base, 'PUT', '/v2/a/manifests/1', { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, Buffer.from('{}')),
    ]);
    await new Promise((resolve) => setTimeout(resolve, 800));
    worker = createServer((req, res) => {
      req.resume();
      req.on('end', () => res.end(JSON.stringify({ method: req.method })));
    });
    await new Promise<void>((resolve) => worker!.listen(socketPath, resolve));
    const [get, put] = await pending;
    assert.equal(get.status, 200, get.body);
    assert.equal(put.status, 200, put.body);
    assert.deepEqual(JSON.parse(put.body), { method: 'PUT' });
    const waited = Date.now() - started;
    assert.ok(waited >= 700 && waited < 3_000, `answered after ${waited} ms`);
    agent.destroy();
  });
});
