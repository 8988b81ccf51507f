import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { ReusedValue } from './reused-value.js';

test('ReusedValue: computed once while fresh; once old, the last value at once while a new one is computed; forget() waits', async () => {
  let computed = 0;
  let release: (() => void) | undefined;
  const value = new ReusedValue(async () => {
    const n = ++computed;
    if (n === 2) await new Promise<void>((resolve) => { release = resolve; });
    return n;
  }, 50);
  assert.equal(await value.get(), 1);
  assert.equal(await value.get(), 1);
  assert.equal(computed, 1, 'fresh: not computed again');
  await sleep(80);
  assert.equal(await value.get(), 1, 'old: the last value, without waiting for the new one');
  assert.equal(computed, 2);
  assert.equal(await value.get(), 1, 'one computation at a time');
  assert.equal(computed, 2);
  release!();
  await sleep(10);
  assert.equal(await value.get(), 2, 'the new value once computed');
  value.forget();
  assert.equal(await value.get(), 3, 'after forget(), the next call waits for a new value');
});

test('ReusedValue: a failed computation is not kept; the next call tries again', async () => {
  let calls = 0;
  const value = new ReusedValue(async () => {
    if (++calls === 1) throw new Error('walk failed');
    return 'ok';
  }, 1000);
  await assert.rejects(value.get(), /walk failed/);
  assert.equal(await value.get(), 'ok');
});
