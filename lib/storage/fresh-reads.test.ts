import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FreshReads } from './fresh-reads.js';

test('a caller never gets a read that began before it asked; callers arriving meanwhile share the next read', async () => {
  const reads = new FreshReads<number>();
  let value = 1;
  let started = 0;
  const releases: Array<() => void> = [];
  const load = () => {
    started++;
    const seen = value; // the store's state when the read begins
    return new Promise<number>((resolve) => releases.push(() => resolve(seen)));
  };
  const first = reads.read('tag', load);
  await new Promise((r) => setImmediate(r));
  value = 2; // a write acknowledged after the first read began
  const second = reads.read('tag', load);
  const third = reads.read('tag', load);
  await new Promise((r) => setImmediate(r));
  assert.equal(started, 1, 'the later callers wait for the read in flight to end');
  releases.shift()!();
  assert.equal(await first, 1);
  await new Promise((r) => setImmediate(r));
  assert.equal(started, 2, 'one new read for both later callers');
  releases.shift()!();
  assert.equal(await second, 2);
  assert.equal(await third, 2);
  // Nothing in flight: the next caller starts its own read.
  const fourth = reads.read('tag', load);
  await new Promise((r) => setImmediate(r));
  assert.equal(started, 3);
  releases.shift()!();
  assert.equal(await fourth, 2);
});

test('a failed read fails its callers only; the next read is fresh', async () => {
  const reads = new FreshReads<string>();
  let fail = true;
  const load = async () => {
    if (fail) throw new Error('store down');
    return 'ok';
  };
  await assert.rejects(reads.read('k', load), /store down/);
  fail = false;
  assert.equal(await reads.read('k', load), 'ok');
});
