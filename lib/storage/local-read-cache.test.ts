import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import { digestOf } from '../oci/digest.js';
import { LocalReadCache } from './local-read-cache.js';

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function cacheOf(maxBytes: number): Promise<LocalReadCache> {
  const dir = await mkdtemp(join(tmpdir(), 'stevedore-read-cache-'));
  dirs.push(dir);
  return new LocalReadCache({ dir, maxBytes }).open();
}

async function drain(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function chunked(data: Buffer, size = 1000): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) parts.push(data.subarray(i, i + size));
  return Readable.from(parts);
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 50));

test('local read cache: a blob streamed through is kept only when it verified; a hit gives the local file', async () => {
  const cache = await cacheOf(1024 * 1024);
  const data = randomBytes(50_000);
  const digest = digestOf(data);
  assert.equal(await cache.lookup(digest), undefined);
  assert.ok((await drain(cache.tee(digest, data.length, chunked(data)))).equals(data), 'the client gets every byte');
  await settle();
  const hit = await cache.lookup(digest);
  assert.ok(hit);
  assert.equal(hit.size, data.length);
  assert.ok((await readFile(hit.path)).equals(data));

  // Bytes that do not hash to the digest (a store returning something else) never enter the cache.
  const other = randomBytes(50_000);
  const claimed = digestOf(randomBytes(10));
  await drain(cache.tee(claimed, other.length, chunked(other)));
  await settle();
  assert.equal(await cache.lookup(claimed), undefined);
  // A short stream neither.
  const short = randomBytes(40_000);
  await drain(cache.tee(digestOf(short), short.length + 1, chunked(short)));
  await settle();
  assert.equal(await cache.lookup(digestOf(short)), undefined);
  assert.deepEqual(await readdir(join(cache.dir, '.tmp')), [], 'no temp files left');
});

test('local read cache: a client leaving early stops the read and keeps nothing', async () => {
  const cache = await cacheOf(64 * 1024 * 1024);
  // A store that sends as fast as it is read (more than the pass-through buffers), as S3 does.
  const data = randomBytes(8 * 1024 * 1024);
  const digest = digestOf(data);
  let sent = 0;
  const slow = Readable.from((async function* () {
    for (let i = 0; i < data.length; i += 64 * 1024) {
      await new Promise((resolve) => setImmediate(resolve));
      sent += 64 * 1024;
      yield data.subarray(i, i + 64 * 1024);
    }
  })());
  const out = cache.tee(digest, data.length, slow);
  for await (const chunk of out) {
    assert.ok((chunk as Buffer).length > 0);
    break; // the client goes away after its first chunk
  }
  await settle();
  assert.ok(sent < data.length, `the store read stopped (${sent} of ${data.length} bytes)`);
  assert.equal(await cache.lookup(digest), undefined);
  assert.deepEqual(await readdir(join(cache.dir, '.tmp')), []);
});

test('local read cache: bounded; the least recently used blobs go first, and big blobs are not kept', async () => {
  const cache = await cacheOf(100_000);
  const blobs = [0, 1, 2, 3].map(() => randomBytes(20_000));
  for (const [i, data] of blobs.entries()) {
    await drain(cache.tee(digestOf(data), data.length, chunked(data)));
    await settle();
    // Distinct mtimes, oldest first; blob 0 is then used again, so blob 1 is the least recently used.
    await utimes(join(cache.dir, `sha256-${digestOf(data).hex}`), new Date(1e12 + i * 1e6), new Date(1e12 + i * 1e6));
  }
  await utimes(join(cache.dir, `sha256-${digestOf(blobs[0]!).hex}`), new Date(2e12), new Date(2e12));
  const fifth = randomBytes(20_000);
  await drain(cache.tee(digestOf(fifth), fifth.length, chunked(fifth)));
  const sixth = randomBytes(20_000);
  await drain(cache.tee(digestOf(sixth), sixth.length, chunked(sixth)));
  await settle();
  await cache.evict();
  assert.ok(await cache.lookup(digestOf(blobs[0]!)), 'recently used: kept');
  assert.equal(await cache.lookup(digestOf(blobs[1]!)), undefined, 'least recently used: evicted');
  assert.ok(await cache.lookup(digestOf(sixth)), 'newest: kept');
  const names = (await readdir(cache.dir)).filter((n) => !n.startsWith('.'));
  assert.ok(names.length * 20_000 <= 100_000, `${names.length} files within the bound`);

  const big = randomBytes(30_000); // over a quarter of the cache
  assert.ok((await drain(cache.tee(digestOf(big), big.length, chunked(big)))).equals(big));
  await settle();
  assert.equal(await cache.lookup(digestOf(big)), undefined);
});
