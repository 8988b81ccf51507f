import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { digestOf, type Digest } from '../../lib/oci/digest.js';
import { isRegistryError } from '../../lib/oci/errors.js';
import { isStorageNotFound, UploadOffsetError, type StorageDriver } from '../../lib/storage/driver/driver.js';
import { REPO_ROOT } from './processes.js';

/**
 * The one conformance suite every storage driver passes (distribution's driver/testsuites): the
 * filesystem driver in a temp dir, the S3 driver against a real Ceph RGW. Each test opens a fresh,
 * empty store (own directory or own key prefix).
 */
export interface DriverUnderTest {
  /** A fresh, empty store. */
  open(): Promise<StorageDriver>;
  /** A second driver on the same store, as a restarted process would create. */
  reopen(driver: StorageDriver): StorageDriver;
  /** The `--storage` text of the store, for a child process (which inherits AWS_* from this one). */
  locationOf(driver: StorageDriver): string;
  /** S3 part size used by open() and by children, so a few MiB exercise multipart uploads. */
  partSize: number;
}

const MiB = 1024 * 1024;

function sha256(data: Buffer): Digest {
  return digestOf(data, 'sha256');
}

async function read(driver: StorageDriver, key: string, range?: { offset?: number; length?: number }): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of await driver.reader(key, range)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function rejectsNotFound(promise: Promise<unknown>): Promise<void> {
  await assert.rejects(promise, (err) => isStorageNotFound(err));
}

async function listAll(driver: StorageDriver, prefix: string, options: { delimiter?: '/'; limit?: number; startAfter?: string } = {}) {
  const keys: string[] = [];
  const prefixes: string[] = [];
  let pages = 0;
  let cursor: string | undefined;
  do {
    const page = await driver.list(prefix, { ...options, ...(cursor ? { cursor } : {}) });
    keys.push(...page.keys.map((k) => k.key));
    prefixes.push(...page.prefixes);
    cursor = page.next;
    pages++;
  } while (cursor);
  return { keys, prefixes, pages };
}

async function incompleteWrites(driver: StorageDriver) {
  const writes = [];
  for await (const write of driver.listIncompleteWrites()) writes.push(write);
  return writes;
}

async function* chunksOf(data: Buffer, size: number): AsyncIterable<Buffer> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

export function driverConformance(name: string, under: DriverUnderTest): void {
  describe(`storage driver conformance: ${name}`, () => {
    test('putContent/getContent, empty keys, and NotFound for missing keys', async () => {
      const driver = await under.open();
      await driver.putContent('repositories/team/app/_manifests/tags/1.0', 'sha256:abc');
      await driver.putContent('repositories/team/app/_layers/sha256/abc', Buffer.alloc(0));
      assert.equal((await driver.getContent('repositories/team/app/_manifests/tags/1.0')).toString(), 'sha256:abc');
      assert.equal((await driver.getContent('repositories/team/app/_layers/sha256/abc')).length, 0);
      assert.equal((await driver.stat('repositories/team/app/_layers/sha256/abc')).size, 0);
      await driver.putContent('repositories/team/app/_manifests/tags/1.0', 'sha256:def');
      assert.equal((await driver.getContent('repositories/team/app/_manifests/tags/1.0')).toString(), 'sha256:def');
      await rejectsNotFound(driver.getContent('repositories/team/app/_manifests/tags/2.0'));
      await rejectsNotFound(driver.stat('repositories/team/app/_manifests/tags/2.0'));
      await rejectsNotFound(driver.reader('repositories/team/app/_manifests/tags/2.0'));
      // A "directory" is not a key.
      await rejectsNotFound(driver.getContent('repositories/team/app'));
      await rejectsNotFound(driver.stat('repositories/team/app'));
      await assert.rejects(driver.stat('../escape'), /invalid storage key/);
      await assert.rejects(driver.putContent('a//b', 'x'), /invalid storage key/);
    });

    test('redirectURL: a plain GET (with Range) fetches the key from the store; an expired URL is refused', async () => {
      const driver = await under.open();
      const data = randomBytes(64 * 1024 + 3);
      await driver.putContent('blobs/sha256/ab/redirected', data);
      const url = await driver.redirectURL('blobs/sha256/ab/redirected', 60);
      if (driver.kind === 'filesystem') {
        assert.equal(url, undefined, 'a directory has no URL');
        return;
      }
      assert.ok(url && /^https?:\/\//.test(url), String(url));
      const whole = await fetch(url);
      assert.equal(whole.status, 200);
      assert.ok(Buffer.from(await whole.arrayBuffer()).equals(data));
      const part = await fetch(url, { headers: { Range: 'bytes=10-19' } });
      assert.equal(part.status, 206);
      assert.ok(Buffer.from(await part.arrayBuffer()).equals(data.subarray(10, 20)));
      const short = await driver.redirectURL('blobs/sha256/ab/redirected', 1);
      await new Promise((resolve) => setTimeout(resolve, 2100));
      const expired = await fetch(short!);
      await expired.arrayBuffer();
      assert.equal(expired.status, 403, 'an expired presigned URL is refused');
    });

    test('ranged reads, including offsets at and near the end', async () => {
      const driver = await under.open();
      const data = randomBytes(3 * MiB + 17);
      await driver.putContent('blobs/data', data);
      assert.ok((await read(driver, 'blobs/data')).equals(data));
      assert.ok((await read(driver, 'blobs/data', { offset: 0, length: 10 })).equals(data.subarray(0, 10)));
      assert.ok((await read(driver, 'blobs/data', { offset: MiB + 3 })).equals(data.subarray(MiB + 3)));
      assert.ok((await read(driver, 'blobs/data', { offset: 12345, length: 2 * MiB })).equals(data.subarray(12345, 12345 + 2 * MiB)));
      assert.ok((await read(driver, 'blobs/data', { offset: data.length - 1, length: 1 })).equals(data.subarray(-1)));
      // A length past the end gives the bytes there are; an offset at the end gives none.
      assert.ok((await read(driver, 'blobs/data', { offset: data.length - 10, length: 100 })).equals(data.subarray(-10)));
      assert.equal((await read(driver, 'blobs/data', { offset: data.length })).length, 0);
      assert.equal((await read(driver, 'blobs/data', { offset: 5, length: 0 })).length, 0);
      await rejectsNotFound(driver.reader('blobs/other', { offset: 5, length: 0 }));
    });

    test('open: the whole key and its size in one call, streamed; NotFound for a missing key', async () => {
      const driver = await under.open();
      const data = randomBytes(2 * MiB + 5);
      await driver.putContent('blobs/whole', data);
      await driver.putContent('blobs/empty', Buffer.alloc(0));
      const before = Date.now() - 5000;
      const opened = await driver.open('blobs/whole');
      assert.equal(opened.size, data.length);
      assert.ok(opened.modifiedAt.getTime() >= before && opened.modifiedAt.getTime() <= Date.now() + 5000);
      const chunks: Buffer[] = [];
      for await (const chunk of opened.stream) chunks.push(chunk as Buffer);
      assert.ok(Buffer.concat(chunks).equals(data));
      const empty = await driver.open('blobs/empty');
      assert.equal(empty.size, 0);
      let emptyBytes = 0;
      for await (const chunk of empty.stream) emptyBytes += (chunk as Buffer).length;
      assert.equal(emptyBytes, 0);
      await rejectsNotFound(driver.open('blobs/missing'));
      // A stream the caller gives up on is released (destroy), not left holding a file or a connection.
      const abandoned = await driver.open('blobs/whole');
      abandoned.stream.destroy();
      const again = await driver.open('blobs/whole');
      assert.equal(again.size, data.length);
      again.stream.destroy();
    });

    test('stat gives sizes and a recent modification time', async () => {
      const driver = await under.open();
      const before = Date.now() - 5000;
      await driver.putContent('a/one', Buffer.alloc(1));
      await driver.putContent('a/big', Buffer.alloc(MiB + 1));
      const info = await driver.stat('a/big');
      assert.equal(info.key, 'a/big');
      assert.equal(info.size, MiB + 1);
      assert.equal((await driver.stat('a/one')).size, 1);
      assert.ok(info.modifiedAt.getTime() >= before && info.modifiedAt.getTime() <= Date.now() + 5000);
    });

    test('list: key order, delimiter roll-up, startAfter and pagination', async () => {
      const driver = await under.open();
      const keys = ['l/a/1', 'l/a/2', 'l/b', 'l/c/x/y', 'l/d', 'l/d-e', 'm/z'];
      await Promise.all(keys.map((k) => driver.putContent(k, k)));
      const flat = await listAll(driver, 'l/', { limit: 2 });
      assert.deepEqual(flat.keys, ['l/a/1', 'l/a/2', 'l/b', 'l/c/x/y', 'l/d', 'l/d-e']);
      assert.equal(flat.pages, 3);
      const dir = await listAll(driver, 'l/', { delimiter: '/', limit: 2 });
      assert.deepEqual(dir.keys, ['l/b', 'l/d', 'l/d-e']);
      assert.deepEqual(dir.prefixes, ['l/a/', 'l/c/']);
      assert.ok(dir.pages >= 3);
      const page = await driver.list('l/', { delimiter: '/' });
      assert.equal(page.next, undefined);
      assert.deepEqual((await driver.list('l/d', { delimiter: '/' })).keys.map((k) => k.key), ['l/d', 'l/d-e']);
      assert.deepEqual((await driver.list('l/a', { delimiter: '/' })).prefixes, ['l/a/']);
      assert.deepEqual((await listAll(driver, 'l/', { startAfter: 'l/b' })).keys, ['l/c/x/y', 'l/d', 'l/d-e']);
      assert.deepEqual((await listAll(driver, '', { delimiter: '/' })).prefixes, ['l/', 'm/']);
      assert.deepEqual((await listAll(driver, 'nothing/')).keys, []);
      const walked = [];
      for await (const info of driver.walk('l/')) walked.push(info.key);
      assert.deepEqual(walked.sort(), flat.keys);
      const sizes = (await driver.list('l/a/')).keys.map((k) => k.size);
      assert.deepEqual(sizes, [5, 5]);
    });

    test('delete and deletePrefix; an emptied "directory" is no longer listed', async () => {
      const driver = await under.open();
      await Promise.all(['d/a/1', 'd/a/2', 'd/b', 'd/c/x/1', 'd/c/x/2', 'd/c/y'].map((k) => driver.putContent(k, 'x')));
      await driver.delete('d/a/1');
      await driver.delete('d/a/1');
      await driver.delete('d/never');
      await rejectsNotFound(driver.stat('d/a/1'));
      await driver.delete('d/a/2');
      assert.deepEqual((await driver.list('d/', { delimiter: '/' })).prefixes, ['d/c/']);
      assert.equal(await driver.deletePrefix('d/c/'), 3);
      assert.deepEqual(await listAll(driver, 'd/', { delimiter: '/' }), { keys: ['d/b'], prefixes: [], pages: 1 });
      assert.equal(await driver.deletePrefix('d/nothing/'), 0);
      await assert.rejects(driver.deletePrefix('d/b'), /ending with/);
    });

    test('blob writer: streamed content is visible only after a verified commit', async () => {
      const driver = await under.open();
      const data = randomBytes(2 * under.partSize + 123);
      const digest = sha256(data);
      const key = `blobs/sha256/${digest.hex.slice(0, 2)}/${digest.hex}`;
      const writer = await driver.blobWriter(key);
      for await (const chunk of chunksOf(data, 700 * 1024)) {
        await writer.write(chunk);
        await rejectsNotFound(driver.stat(key));
      }
      assert.equal(writer.size, data.length);
      assert.deepEqual((await listAll(driver, 'blobs/')).keys, []);
      await writer.commit(digest, data.length);
      assert.equal((await driver.stat(key)).size, data.length);
      assert.equal(createHash('sha256').update(await read(driver, key)).digest('hex'), digest.hex);
      assert.deepEqual(await incompleteWrites(driver), []);
      // Small content: one request at commit.
      const small = Buffer.from('{"small":true}');
      const smallWriter = await driver.blobWriter('blobs/small');
      await smallWriter.write(small);
      await smallWriter.commit(sha256(small));
      assert.ok((await driver.getContent('blobs/small')).equals(small));
      const empty = await driver.blobWriter('blobs/empty');
      await empty.commit(sha256(Buffer.alloc(0)), 0);
      assert.equal((await driver.stat('blobs/empty')).size, 0);
    });

    test('blob writer: a wrong digest or size leaves nothing, not even in a listing', async () => {
      const driver = await under.open();
      for (const size of [1000, 2 * under.partSize + 5]) {
        const data = randomBytes(size);
        const writer = await driver.blobWriter(`wrong/${size}`);
        for await (const chunk of chunksOf(data, MiB)) await writer.write(chunk);
        await assert.rejects(writer.commit(sha256(Buffer.from('other'))), (err) => isRegistryError(err) && err.code === 'DIGEST_INVALID');
        await rejectsNotFound(driver.stat(`wrong/${size}`));
        const sized = await driver.blobWriter(`wrong/size-${size}`);
        for await (const chunk of chunksOf(data, MiB)) await sized.write(chunk);
        await assert.rejects(sized.commit(sha256(data), size + 1), (err) => isRegistryError(err) && err.code === 'SIZE_INVALID');
        await rejectsNotFound(driver.stat(`wrong/size-${size}`));
      }
      assert.deepEqual(await listAll(driver, ''), { keys: [], prefixes: [], pages: 1 });
      assert.deepEqual(await incompleteWrites(driver), []);
      // Cancel is the same, and idempotent.
      const cancelled = await driver.blobWriter('wrong/cancelled');
      await cancelled.write(randomBytes(under.partSize + 1));
      await cancelled.cancel();
      await cancelled.cancel();
      await rejectsNotFound(driver.stat('wrong/cancelled'));
      assert.deepEqual(await incompleteWrites(driver), []);
    });

    test('blob writer: a process killed mid-write leaves nothing visible, and an incomplete write for GC', async () => {
      const driver = await under.open();
      const key = 'blobs/sha256/ki/killed';
      const bytes = 2 * under.partSize + MiB;
      const child = spawn(process.execPath, [join(REPO_ROOT, 'dist/test/helpers/storage-writer-child.js'),
        JSON.stringify({ location: under.locationOf(driver), key, bytes, partSize: under.partSize })], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        await new Promise<void>((resolve, reject) => {
          child.stdout.on('data', (chunk: Buffer) => { if (chunk.toString().includes('written')) resolve(); });
          child.once('exit', (code) => reject(new Error(`writer child exited early (${code})`)));
        });
        // Until the store shows the write in progress (on S3 the multipart upload exists).
        const deadline = Date.now() + 10_000;
        while ((await incompleteWrites(driver)).length === 0) {
          assert.ok(Date.now() < deadline, 'no incomplete write appeared');
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      } finally {
        child.kill('SIGKILL');
        await new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(null) : child.once('exit', resolve)));
      }
      await rejectsNotFound(driver.stat(key));
      assert.deepEqual((await listAll(driver, '')).keys, []);
      const writes = await incompleteWrites(driver);
      assert.equal(writes.length, 1);
      if (writes[0]!.key !== undefined) assert.equal(writes[0]!.key, key);
      assert.ok(Date.now() - writes[0]!.startedAt.getTime() < 60_000);
      await driver.abortIncompleteWrite(writes[0]!);
      assert.deepEqual(await incompleteWrites(driver), []);
      await rejectsNotFound(driver.stat(key));
    });

    test('putIfAbsent: of concurrent creates (two drivers) exactly one wins', async () => {
      const driver = await under.open();
      const other = under.reopen(driver);
      for (let round = 0; round < 3; round++) {
        const key = `leases/lease-${round}`;
        const results = await Promise.all([0, 1, 2, 3].map((i) => (i % 2 ? other : driver).putIfAbsent(key, `writer-${i}`)));
        assert.equal(results.filter(Boolean).length, 1, `round ${round}: ${results}`);
        assert.equal((await driver.getContent(key)).toString(), `writer-${results.indexOf(true)}`);
        assert.equal(await driver.putIfAbsent(key, 'late'), false);
      }
    });

    test('replaceIfMatch: a stale version fails, exactly one of concurrent replacers wins', async () => {
      const driver = await under.open();
      const other = under.reopen(driver);
      await driver.putContent('tags/t', 'v1');
      const v1 = await driver.getVersioned('tags/t');
      assert.equal(v1.data.toString(), 'v1');
      // modifiedAt in the same answer is what stat() says (a tag's "validated at" is read this way).
      assert.equal(v1.modifiedAt.getTime(), (await driver.stat('tags/t')).modifiedAt.getTime());
      assert.ok(Math.abs(v1.modifiedAt.getTime() - Date.now()) < 60_000, String(v1.modifiedAt));
      const v2 = await driver.replaceIfMatch('tags/t', 'v2', v1.version);
      assert.ok(v2 && v2 !== v1.version);
      assert.equal(await other.replaceIfMatch('tags/t', 'stale', v1.version), undefined);
      assert.equal((await driver.getContent('tags/t')).toString(), 'v2');
      assert.equal((await other.getVersioned('tags/t')).version, v2);
      const results = await Promise.all([0, 1, 2, 3].map((i) => (i % 2 ? other : driver).replaceIfMatch('tags/t', `race-${i}`, v2)));
      assert.equal(results.filter((r) => r !== undefined).length, 1, String(results));
      assert.equal((await driver.getContent('tags/t')).toString(), `race-${results.findIndex((r) => r !== undefined)}`);
      assert.equal(await driver.replaceIfMatch('tags/missing', 'x', v2), undefined);
      await rejectsNotFound(driver.stat('tags/missing'));
    });

    test('upload sessions: appends of small and large chunks survive a restart, then commit verified', async () => {
      const driver = await under.open();
      const data = randomBytes(under.partSize + 3 * MiB + 4321);
      const cuts = [0, 1000, 1000 + 10, 1000 + 10 + under.partSize + 1, data.length];
      const session = await driver.uploads.create('5e7e1a2b-0000-4000-8000-000000000001', { name: 'team/app' });
      assert.equal(session.size, 0);
      let current = driver;
      for (let i = 0; i + 1 < cuts.length; i++) {
        // Every append through a new driver instance: nothing may live only in a process.
        current = under.reopen(current);
        const got = await current.uploads.get(session.id);
        assert.equal(got.size, cuts[i]);
        assert.deepEqual(got.meta, { name: 'team/app' });
        await assert.rejects(current.uploads.append(session.id, cuts[i]! + 1, chunksOf(Buffer.from('x'), 1)), UploadOffsetError);
        const size = await current.uploads.append(session.id, cuts[i]!, chunksOf(data.subarray(cuts[i], cuts[i + 1]), 256 * 1024));
        assert.equal(size, cuts[i + 1]);
      }
      assert.deepEqual((await listAll(driver, 'blobs/')).keys, []);
      const ids = [];
      for await (const s of driver.uploads.list()) ids.push(s.id);
      assert.deepEqual(ids, [session.id]);
      await assert.rejects(under.reopen(driver).uploads.finish(session.id, 'blobs/uploaded', sha256(Buffer.from('no'))),
        (err) => isRegistryError(err) && err.code === 'DIGEST_INVALID');
      await rejectsNotFound(driver.stat('blobs/uploaded'));
      assert.equal(await under.reopen(driver).uploads.finish(session.id, 'blobs/uploaded', sha256(data)), data.length);
      assert.ok((await read(driver, 'blobs/uploaded')).equals(data));
      await rejectsNotFound(driver.uploads.get(session.id));
      assert.deepEqual((await listAll(driver, '_uploads/')).keys, []);
      assert.deepEqual(await incompleteWrites(driver), []);
    });

    test('upload sessions: appends by one process finish verified, whatever the chunk sizes', async () => {
      const driver = await under.open();
      const big = 5 * MiB + 1;
      let n = 0;
      // A single chunk (one server-side copy), parts to copy, a small chunk first (re-read), small only.
      for (const sizes of [[big], [big, big, 100], [100, big], [300, 200]]) {
        const data = randomBytes(sizes.reduce((a, b) => a + b, 0));
        // A wrong digest once per way of finishing: before a copy, before a re-read.
        for (const right of sizes[0] === big ? [false, true] : [true]) {
          const id = `5e7e1a2b-0000-4000-8000-1000000000${String(n++).padStart(2, '0')}`;
          await driver.uploads.create(id, { name: 'team/app' });
          let offset = 0;
          for (const size of sizes) {
            offset = await driver.uploads.append(id, offset, chunksOf(data.subarray(offset, offset + size), MiB));
          }
          const key = `blobs/${sizes.join('-')}`;
          if (!right) {
            await assert.rejects(driver.uploads.finish(id, key, sha256(Buffer.from('no'))), (err) => isRegistryError(err) && err.code === 'DIGEST_INVALID');
            await rejectsNotFound(driver.stat(key));
            await driver.uploads.delete(id);
          } else {
            assert.equal(await driver.uploads.finish(id, key, sha256(data)), data.length);
            assert.ok((await read(driver, key)).equals(data), `content of ${key}`);
          }
        }
      }
      assert.deepEqual((await listAll(driver, '_uploads/')).keys, []);
      assert.deepEqual(await incompleteWrites(driver), []);
    });

    test('upload sessions: of two appends at one offset exactly one is taken; delete removes a session', async () => {
      const driver = await under.open();
      const other = under.reopen(driver);
      const id = '5e7e1a2b-0000-4000-8000-000000000002';
      await driver.uploads.create(id, { name: 'team/app' });
      await assert.rejects(driver.uploads.create(id, { name: 'again' }));
      const results = await Promise.allSettled([
        driver.uploads.append(id, 0, chunksOf(Buffer.alloc(3000, 1), 1000)),
        other.uploads.append(id, 0, chunksOf(Buffer.alloc(2000, 2), 1000)),
      ]);
      const won = results.filter((r) => r.status === 'fulfilled');
      assert.equal(won.length, 1, JSON.stringify(results));
      assert.ok((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason instanceof UploadOffsetError);
      assert.equal((await driver.uploads.get(id)).size, (won[0] as PromiseFulfilledResult<number>).value);
      // An empty append changes nothing.
      const size = (await driver.uploads.get(id)).size;
      assert.equal(await driver.uploads.append(id, size, chunksOf(Buffer.alloc(0), 1)), size);
      await driver.uploads.delete(id);
      await driver.uploads.delete(id);
      await rejectsNotFound(driver.uploads.get(id));
      await assert.rejects(driver.uploads.append(id, 0, chunksOf(Buffer.from('x'), 1)), (err) => isStorageNotFound(err));
      assert.deepEqual(await listAll(driver, ''), { keys: [], prefixes: [], pages: 1 });
    });

    test('a reader streams without buffering: the first bytes arrive before the whole key is read', async () => {
      const driver = await under.open();
      const data = randomBytes(8 * MiB);
      await driver.putContent('big', data);
      const stream = await driver.reader('big');
      const first = await new Promise<Buffer>((resolve) => stream.once('data', resolve));
      assert.ok(first.length < data.length);
      stream.destroy();
    });
  });
}
