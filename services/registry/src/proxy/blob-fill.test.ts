import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { createServer, get, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { parseDigest } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { createLogger } from '../../../../lib/log.js';
import { StorageLayout } from '../../../../lib/storage/layout.js';
import { isStorageNotFound } from '../../../../lib/storage/driver/driver.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from '../../../../test/helpers/storage-targets.js';
import { BlobFill } from './blob-fill.js';

/**
 * BlobFill on each storage driver, fed by a real HTTP upstream on loopback: the blob is committed to
 * its key before any client gets its last byte, a client behind the memory window reads the local
 * spool, and a blob that does not hash to its digest leaves nothing in the store (no key, no
 * incomplete multipart upload, no spool).
 */

const MiB = 1024 * 1024;
const log = createLogger('test', 'silent');
const sha256 = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;

/** Serves `blobs` by path, in 256 KiB writes, so a fill runs long enough to join. */
async function startUpstream(blobs: Map<string, Buffer>): Promise<{ url: string; gets: Map<string, number>; server: Server }> {
  const gets = new Map<string, number>();
  const server = createServer((req, res) => {
    const data = blobs.get(req.url ?? '');
    gets.set(req.url ?? '', (gets.get(req.url ?? '') ?? 0) + 1);
    if (!data) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-length': data.length });
    let offset = 0;
    const next = () => {
      if (offset >= data.length) return void res.end();
      const chunk = data.subarray(offset, offset + 256 * 1024);
      offset += chunk.length;
      if (res.write(chunk)) setImmediate(next);
      else res.once('drain', next);
    };
    next();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, gets, server };
}

function openUpstream(url: string): () => Promise<{ body: Readable; size: number | undefined }> {
  return () => new Promise((resolve, reject) => {
    get(url, (res: IncomingMessage) => resolve({ body: res, size: Number(res.headers['content-length']) })).on('error', reject);
  });
}

/** Reads a fill's reader to its end or its failure; `onEnd` runs the moment the last byte arrived. */
function drain(stream: Readable, onEnd?: () => Promise<unknown>): Promise<{ bytes: Buffer; error?: Error; atEnd?: unknown }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      const bytes = Buffer.concat(chunks);
      if (!onEnd) return resolve({ bytes });
      onEnd().then((atEnd) => resolve({ bytes, atEnd }), (err: Error) => resolve({ bytes, atEnd: err }));
    });
    stream.on('error', (error) => resolve({ bytes: Buffer.concat(chunks), error }));
  });
}

for (const kind of STORAGE_KINDS) {
  describe(`BlobFill on ${kind}`, () => {
    let storage: TestStorage;
    let upstream: Awaited<ReturnType<typeof startUpstream>>;
    const good = randomBytes(12 * MiB);
    const goodDigest = parseDigest(sha256(good));
    const bad = randomBytes(6 * MiB);
    const badDigest = parseDigest(sha256(Buffer.concat([bad.subarray(0, bad.length - 1), Buffer.from([bad[bad.length - 1]! ^ 0xff])])));

    before(async () => {
      storage = await testStorage(kind);
      upstream = await startUpstream(new Map([['/good', good], ['/bad', bad]]));
    });
    after(async () => {
      upstream?.server.close();
      await storage?.cleanup();
    });

    const layout = () => new StorageLayout(storage.root, { namespace: 'upstream.test' });
    const target = (digest: typeof goodDigest) => ({ driver: storage.driver, key: layout().blobKey(digest), spoolDir: layout().tmpDir });
    const spoolFiles = async () => (await readdir(layout().tmpDir).catch(() => [] as string[])).filter((f) => f.startsWith('spool-'));
    const incompleteWrites = async () => {
      const writes = [];
      for await (const write of storage.driver.listIncompleteWrites()) writes.push(write);
      return writes;
    };

    it('commits before the last byte; a client behind the window reads the spool; the spool goes afterwards', async () => {
      const fill = new BlobFill(goodDigest, 60_000);
      let linked = 0;
      const running = fill.run(openUpstream(`${upstream.url}/good`), target(goodDigest), async () => { linked++; }, 'team/app', log);
      await fill.ready;
      assert.equal(fill.size, good.length);
      const key = target(goodDigest).key;
      // The moment a client has the last byte, the blob is in the store.
      const fast = drain(fill.createReader(0, good.length - 1), () => storage.driver.stat(key));
      const slowStream = fill.createReader(0, good.length - 1);
      slowStream.pause();
      await fill.finished;
      await running;
      assert.equal(fill.done, true);
      assert.equal(linked, 1);
      const fastResult = await fast;
      assert.equal(fastResult.error, undefined);
      assert.equal(sha256(fastResult.bytes), goodDigest.value);
      assert.equal((fastResult.atEnd as { size?: number }).size, good.length, `stat at the client's last byte: ${String(fastResult.atEnd)}`);
      if (kind === 's3') assert.equal((await spoolFiles()).length, 1, 'the slow client still holds the spool');
      // The slow client starts reading only now, from the spool (or, on the filesystem, the committed file).
      const slow = drain(slowStream);
      slowStream.resume();
      const slowResult = await slow;
      assert.equal(slowResult.error, undefined);
      assert.equal(sha256(slowResult.bytes), goodDigest.value);
      const stored = await storage.driver.getContent(key);
      assert.equal(sha256(stored), goodDigest.value);
      assert.equal(upstream.gets.get('/good'), 1);
      // The spool is removed once no client reads it.
      for (let i = 0; i < 50 && (await spoolFiles()).length > 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(await spoolFiles(), []);
      assert.deepEqual(await incompleteWrites(), []);
    });

    it('a blob that does not match its digest: no client gets the last byte, nothing in the store, no incomplete write, no spool', async () => {
      const fill = new BlobFill(badDigest, 60_000);
      let linked = 0;
      const running = fill.run(openUpstream(`${upstream.url}/bad`), target(badDigest), async () => { linked++; }, 'team/app', log);
      await fill.ready;
      const whole = drain(fill.createReader(0, bad.length - 1));
      const tail = drain(fill.createReader(bad.length - 10, bad.length - 1));
      await running;
      assert.equal(linked, 0);
      assert.ok(fill.error instanceof RegistryError && fill.error.code === 'DIGEST_INVALID' && fill.error.status === 502, String(fill.error));
      for (const [what, result, length] of [['whole', await whole, bad.length], ['tail', await tail, 10]] as const) {
        assert.ok(result.error, `${what}: the transfer breaks`);
        assert.ok(result.bytes.length < length, `${what}: got ${result.bytes.length} of ${length}`);
      }
      assert.equal((await whole).bytes.length, bad.length - 1, 'everything but the last byte arrived before the digest was known');
      await assert.rejects(storage.driver.stat(target(badDigest).key), (err) => isStorageNotFound(err));
      assert.deepEqual(await incompleteWrites(), []);
      for (let i = 0; i < 50 && (await spoolFiles()).length > 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(await spoolFiles(), []);
    });
  });
}
