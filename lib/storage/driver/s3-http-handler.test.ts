import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { HttpRequest } from '@smithy/core/protocols';
import { isStoreUnavailable } from './s3-client.js';
import { UndiciHttpHandler } from './s3-http-handler.js';

/** What the loopback server saw of the last request. */
interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

describe('UndiciHttpHandler (the S3 client transport) against a loopback HTTP server', () => {
  let server: http.Server;
  let port: number;
  let seen: Seen | undefined;
  const handler = new UndiciHttpHandler({ connectTimeoutMs: 1000, idleTimeoutMs: 300, connections: 4 });

  before(async () => {
    server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        seen = { method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks) };
        if (req.url === '/hang') return; // never answers: the idle timeout must end the wait
        if (req.url === '/cut') {
          res.writeHead(200, { 'content-length': 1000 });
          res.write(Buffer.alloc(10));
          setTimeout(() => res.destroy(), 20);
          return;
        }
        const body = Buffer.from('answer body');
        res.setHeader('x-amz-meta-many', ['a', 'b']);
        res.writeHead(206, { 'Content-Length': body.length, ETag: '"abc"' });
        res.end(body);
      });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as AddressInfo).port;
  });

  after(() => {
    handler.destroy();
    server.closeAllConnections();
    server.close();
  });

  const request = (path: string, extra: Partial<HttpRequest> = {}) => new HttpRequest({
    protocol: 'http:', hostname: '127.0.0.1', port, method: 'GET', path, headers: { host: `127.0.0.1:${port}` }, ...extra,
  });

  it('sends method, path, query (flags without a value too), headers and body as the SDK built them; drops Expect', async () => {
    const { response } = await handler.handle(request('/bucket/some%2Fkey', {
      method: 'PUT',
      query: { uploads: null, 'part-number': '2', prefix: 'a/b c' },
      headers: { host: `127.0.0.1:${port}`, 'x-amz-date': '20261204T000000Z', Expect: '100-continue', 'content-length': '5' },
      body: Buffer.from('hello'),
    }));
    for await (const chunk of response.body as AsyncIterable<Buffer>) void chunk;
    assert.equal(seen?.method, 'PUT');
    assert.equal(seen?.url, '/bucket/some%2Fkey?part-number=2&prefix=a%2Fb%20c&uploads');
    assert.equal(seen?.headers['x-amz-date'], '20261204T000000Z');
    assert.equal(seen?.headers.expect, undefined);
    assert.equal(seen?.body.toString(), 'hello');
  });

  it('answers with the status, lower-cased headers (repeated ones joined) and the body as a stream', async () => {
    const { response } = await handler.handle(request('/bucket/key'));
    assert.equal(response.statusCode, 206);
    assert.equal(response.headers.etag, '"abc"');
    assert.equal(response.headers['x-amz-meta-many'], 'a, b');
    const chunks: Buffer[] = [];
    for await (const chunk of response.body as AsyncIterable<Buffer>) chunks.push(chunk);
    assert.equal(Buffer.concat(chunks).toString(), 'answer body');
  });

  it('a store that never answers: a TimeoutError after the idle timeout, which counts as the store being unavailable', async () => {
    const started = Date.now();
    const err = await handler.handle(request('/hang')).then(() => undefined, (e: unknown) => e);
    assert.equal((err as Error | undefined)?.name, 'TimeoutError');
    assert.ok(isStoreUnavailable(err));
    assert.ok(Date.now() - started < 5000, `${Date.now() - started} ms`);
  });

  it('a connection cut mid-body: the body stream fails (never ends as if complete), as unavailable', async () => {
    const { response } = await handler.handle(request('/cut'));
    let received = 0;
    const err = await (async () => {
      for await (const chunk of response.body as AsyncIterable<Buffer>) received += chunk.length;
    })().then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof Error, `ended after ${received} bytes without an error`);
    assert.ok(received < 1000);
    assert.ok(isStoreUnavailable(err), String(err));
  });

  it('a body dropped unread (destroy() without an error, e.g. an unlinked blob\'s read) raises no uncaught error', async () => {
    const { response } = await handler.handle(request('/bucket/key'));
    const body = response.body as Readable;
    const uncaught: unknown[] = [];
    const onUncaught = (err: unknown) => uncaught.push(err);
    process.on('uncaughtException', onUncaught);
    try {
      // The whole answer has arrived (the request is over for undici) but nobody read it.
      await new Promise((resolve) => setTimeout(resolve, 50));
      body.destroy();
      await new Promise((resolve) => setTimeout(resolve, 50));
    } finally {
      process.off('uncaughtException', onUncaught);
    }
    assert.deepEqual(uncaught, []);
  });

  it('a refused connection: ECONNREFUSED, as unavailable', async () => {
    const closed = http.createServer();
    closed.listen(0, '127.0.0.1');
    await once(closed, 'listening');
    const deadPort = (closed.address() as AddressInfo).port;
    closed.close();
    const err = await handler.handle(request('/x', { port: deadPort, headers: { host: `127.0.0.1:${deadPort}` } })).then(() => undefined, (e: unknown) => e);
    assert.equal((err as NodeJS.ErrnoException | undefined)?.code, 'ECONNREFUSED');
    assert.ok(isStoreUnavailable(err));
  });
});
