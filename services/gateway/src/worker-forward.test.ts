import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer as createHttpServer, request, type Server } from 'node:http';
import { createServer as createNetServer, type Server as NetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { WorkerPlan } from '../../../lib/appliance.js';
import { createLogger } from '../../../lib/log.js';
import { readForwardBody, WorkerForwarder } from './worker-forward.js';

const listen = (server: Server | NetServer, path: string) => new Promise<void>((resolve) => server.listen(path, resolve));
const close = (server: Server | NetServer) => new Promise<void>((resolve) => server.close(() => resolve()));

/**
 * A worker socket that accepts connections and resets the first `resets` of them before any answer
 * (a worker killed a moment ago, whose listening socket the kernel has not torn down yet), then
 * hands the socket to a real HTTP server that answers.
 */
async function resettingWorker(socketPath: string, resets: number): Promise<{ server: NetServer; accepted: () => number; answered: () => number }> {
  let accepted = 0;
  let answered = 0;
  const http = createHttpServer((req, res) => {
    answered += 1;
    req.resume();
    req.on('end', () => res.end(`${req.method} ${req.url}`));
  });
  // Paused: a reset connection's request stays unread, and closing a unix socket with unread data
  // resets the peer's end (ECONNRESET), as the kernel does for a killed process.
  const server = createNetServer({ pauseOnConnect: true }, (socket) => {
    accepted += 1;
    if (accepted <= resets) {
      setTimeout(() => socket.destroy(), 5);
    } else {
      http.emit('connection', socket);
      socket.resume();
    }
  });
  await listen(server, socketPath);
  return { server, accepted: () => accepted, answered: () => answered };
}

describe('WorkerForwarder: connections lost before an answer', () => {
  let dir: string;
  let gateway: Server;
  let forwarder: WorkerForwarder;
  let worker: WorkerPlan;
  let gatewaySocket: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'stevedore-forward-'));
    worker = { name: 'registry-hosted', kind: 'hosted', prefixes: [], socketPath: join(dir, 'worker.sock') };
    forwarder = new WorkerForwarder({
      log: createLogger('gateway-test', 'silent'),
      workers: [worker],
      workerWaitMs: 2_000,
      onResponse: () => {},
      onForwarded: () => {},
    });
    gateway = createHttpServer((req, res) => {
      void readForwardBody(req).then((body) => body && forwarder.forward(req, res, worker, body));
    });
    gatewaySocket = join(dir, 'gateway.sock');
    await listen(gateway, gatewaySocket);
  });

  after(async () => {
    forwarder.close();
    await close(gateway);
    await rm(dir, { recursive: true, force: true });
  });

  function call(method: string, body?: string): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const req = request({ socketPath: gatewaySocket, method, path: '/v2/team/app/tags/list', agent: false }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (c: string) => { text += c; }).on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on('error', reject);
      req.end(body);
    });
  }

  it('a request whose fresh connections are reset three times in a row is sent again and answered', async () => {
    const w = await resettingWorker(worker.socketPath, 3);
    try {
      const res = await call('GET');
      assert.equal(res.status, 200, res.text);
      assert.equal(res.text, 'GET /v2/team/app/tags/list');
      assert.equal(w.accepted(), 4);
      assert.equal(w.answered(), 1);
    } finally {
      await close(w.server);
    }
  });

  it('a buffered body is sent again whole; a worker that keeps resetting gets a 503 UNAVAILABLE after a bounded number of tries', async () => {
    const w = await resettingWorker(worker.socketPath, 2);
    try {
      const res = await call('POST', 'x'.repeat(1000));
      assert.equal(res.status, 200, res.text);
      assert.equal(w.answered(), 1);
    } finally {
      await close(w.server);
    }
    const dead = await resettingWorker(worker.socketPath, Infinity);
    try {
      const started = Date.now();
      const res = await call('GET');
      assert.equal(res.status, 503);
      assert.equal(JSON.parse(res.text).errors[0].code, 'UNAVAILABLE');
      assert.match(res.text, /ECONNRESET|socket hang up/);
      assert.equal(dead.accepted(), 5, 'the first try and four more');
      assert.ok(Date.now() - started < 2_000);
    } finally {
      await close(dead.server);
    }
  });
});
