import assert from 'node:assert/strict';
import { mkdir, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { parse as parseLegacyUrl } from 'node:url';
import { after, before, describe, it } from 'node:test';
import type { AppliancePlan } from '../lib/appliance.js';
import { createLogger } from '../lib/log.js';
import { AccessLogWriter } from '../services/gateway/src/access-log.js';
import { GatewayMetrics } from '../services/gateway/src/metrics.js';
import { createGateway } from '../services/gateway/src/server.js';
import { REPLAYABLE_BODY_MAX } from '../services/gateway/src/worker-forward.js';
import { call, sleep } from './helpers/appliance.js';
import { rawSocket } from './helpers/hosted.js';
import { tempDir } from './helpers/processes.js';

/**
 * The gateway's forwarding to a worker keeps what http-proxy (which it replaced) did on the wire:
 * DELETE gets Content-Length 0, the path as url.parse() gives it, HTTP/1.0 clients get
 * Connection: close, the worker's status line and headers pass through, a client that goes away
 * mid-upload ends the worker's request.
 */

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  complete: boolean;
  closed: boolean;
  bytes: number;
}

describe('gateway forwarding (as http-proxy did)', () => {
  let dir: string;
  let worker: Server;
  let gateway: Server;
  let port: number;
  const seen: Seen[] = [];

  before(async () => {
    dir = await tempDir('gateway-forward-');
    const run = join(dir, 'run');
    await mkdir(run, { mode: 0o700 });
    const plan: AppliancePlan = { hosted: { name: 'registry-hosted', kind: 'hosted', prefixes: [], socketPath: join(run, 'hosted.sock') }, proxies: [] };
    worker = createServer((req, res) => {
      const entry: Seen = { method: req.method!, url: req.url!, headers: req.headers, complete: false, closed: false, bytes: 0 };
      seen.push(entry);
      req.on('data', (c: Buffer) => { entry.bytes += c.length; });
      req.on('close', () => { entry.closed = true; });
      req.on('end', () => {
        entry.complete = true;
        const body = JSON.stringify({ url: req.url });
        res.writeHead(202, 'Accepted For Real', { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-worker': 'hosted' });
        res.end(body);
      });
    });
    await new Promise<void>((resolve) => worker.listen(plan.hosted.socketPath, resolve));
    const log = createLogger('gateway', 'silent');
    gateway = createGateway({ plan, log, users: undefined, realm: 'Test Realm', accessLog: new AccessLogWriter(join(dir, 'access.log')), metrics: new GatewayMetrics(join(dir, 'blobs')) });
    await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));
    port = (gateway.address() as AddressInfo).port;
  });

  after(async () => {
    await new Promise<void>((resolve) => { gateway?.close(() => resolve()); gateway?.closeAllConnections(); });
    await new Promise<void>((resolve) => { worker?.close(() => resolve()); worker?.closeAllConnections(); });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('passes the worker\'s status line and headers; DELETE without a body gets Content-Length: 0', async () => {
    const res = await call(`http://127.0.0.1:${port}`, 'DELETE', '/v2/team/app/manifests/v1');
    assert.equal(res.status, 202);
    assert.equal(res.headers['x-worker'], 'hosted');
    // The client (no agent) asked for Connection: close, which goes to the worker and comes back.
    assert.equal(res.headers.connection, 'close');
    const entry = seen.find((s) => s.method === 'DELETE')!;
    assert.equal(entry.headers['content-length'], '0');
    assert.equal(entry.url, '/v2/team/app/manifests/v1');
  });

  it('sends the path as url.parse() gives it; HTTP/1.0 clients get Connection: close', async () => {
    const raw = await new Promise<string>((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => socket.write('GET /v2/team/app/tags/list?last={a}"b HTTP/1.0\r\nHost: x\r\n\r\n'));
      let text = '';
      socket.setEncoding('latin1');
      socket.on('data', (d: string) => { text += d; });
      socket.on('end', () => resolve(text));
      socket.on('error', reject);
    });
    assert.match(raw, /^HTTP\/1\.1 202 Accepted For Real\r\n/);
    assert.match(raw, /\r\nconnection: close\r\n/i);
    assert.equal(seen.at(-1)!.url, parseLegacyUrl('/v2/team/app/tags/list?last={a}"b').path);
  });

  it('accepts an absolute-form request target (RFC 9112 §3.2.2) as its origin-form path', async () => {
    const tags = await rawSocket(port, 'GET http://stevedore.lan:8443/v2/team/app/tags/list?n=1 HTTP/1.1\r\nHost: stevedore.lan:8443\r\nConnection: close\r\n\r\n');
    assert.equal(tags.status, 202);
    assert.equal(seen.at(-1)!.url, '/v2/team/app/tags/list?n=1');
    const ping = await rawSocket(port, 'GET http://stevedore.lan:8443/v2/ HTTP/1.1\r\nHost: stevedore.lan:8443\r\nConnection: close\r\n\r\n');
    assert.equal(ping.status, 200);
  });

  it('a client that goes away mid-upload of a small body never reaches the worker (the body is read first)', async () => {
    const before = seen.length;
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    socket.write('PATCH /v2/team/app/blobs/uploads/abc HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n');
    socket.write(Buffer.alloc(1000));
    await sleep(300);
    socket.destroy();
    await sleep(200);
    assert.equal(seen.length, before);
  });

  it('a client that goes away mid-upload of a streamed (large) body ends the worker\'s request', async () => {
    const before = seen.length;
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    socket.write(`PATCH /v2/team/app/blobs/uploads/abc HTTP/1.1\r\nHost: x\r\nContent-Length: ${REPLAYABLE_BODY_MAX + 1}\r\n\r\n`);
    socket.write(Buffer.alloc(1000));
    for (let i = 0; i < 50 && seen.length === before; i++) await sleep(20);
    const entry = seen.at(-1)!;
    assert.equal(entry.method, 'PATCH');
    socket.destroy();
    for (let i = 0; i < 50 && !entry.closed; i++) await sleep(20);
    assert.equal(entry.closed, true);
    assert.equal(entry.complete, false);
    // The worker's request is gone: a new request on the gateway is served normally.
    const res = await call(`http://127.0.0.1:${port}`, 'GET', '/v2/team/app/tags/list');
    assert.equal(res.status, 202);
  });
});
