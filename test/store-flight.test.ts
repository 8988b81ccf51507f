import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { StorageDriver } from '../lib/storage/driver/driver.js';
import { isStorageNotFound } from '../lib/storage/driver/driver.js';
import { openConfiguredStorage } from '../lib/storage/driver/open.js';
import { leaseKey, readLeaseRecord } from '../lib/storage/lease.js';
import { storeFlight, type StoreFlightOptions } from '../lib/storage/store-flight.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * storeFlight (lib/storage/store-flight.ts) on both drivers, with two drivers on one store as two
 * appliances would have. The "work" writes a result key; tryLocal reads it from the store. Foreign
 * leases (a live holder that never answers, a dead one whose record expires) are written as records.
 */

async function readResult(driver: StorageDriver, key: string): Promise<string | undefined> {
  try {
    return (await driver.getContent(key)).toString('utf8');
  } catch (err) {
    if (isStorageNotFound(err)) return undefined;
    throw err;
  }
}

async function leaseExists(driver: StorageDriver, name: string): Promise<boolean> {
  return (await readLeaseRecord(driver, name)) !== undefined;
}

/** A lease record as another appliance would have written it. */
async function foreignLease(driver: StorageDriver, name: string, expiresInMs: number): Promise<void> {
  await driver.putContent(leaseKey(name), JSON.stringify({ holder: 'other-appliance/1/abcd', expiresAt: Date.now() + expiresInMs, renewedAt: Date.now() }));
}

for (const kind of STORAGE_KINDS) {
  describe(`store flight on ${kind}`, () => {
    let storage: TestStorage;
    let second: StorageDriver;
    let n = 0;
    /** A fresh lease name and result key per case. */
    const fresh = () => {
      n += 1;
      return { lease: `fills/test/case-${n}`, result: `results/case-${n}` };
    };
    /** Flight options whose fetch writes `value` to `result` after `delayMs`, counting calls. */
    const work = (driver: StorageDriver, result: string, counter: { fetches: number }, delayMs = 0, value = 'answer'): Pick<StoreFlightOptions<string>, 'tryLocal' | 'fetch'> => ({
      tryLocal: () => readResult(driver, result),
      fetch: async () => {
        counter.fetches += 1;
        await sleep(delayMs);
        await driver.putContent(result, value);
        return value;
      },
    });

    before(async () => {
      storage = await testStorage(kind);
      second = await openConfiguredStorage(storage.location, storage.settings);
    });
    after(async () => {
      await storage?.cleanup();
    });

    it('an answer in the store: no lease is read or written', async () => {
      const { lease, result } = fresh();
      await storage.driver.putContent(result, 'cached');
      // A live foreign lease would make any lease-taking flight wait: this one must not even look.
      await foreignLease(storage.driver, lease, 60_000);
      const counter = { fetches: 0 };
      const started = Date.now();
      const flight = await storeFlight(storage.driver, lease, { ...work(storage.driver, result, counter), ttlMs: 5000, maxWaitMs: 5000 });
      assert.deepEqual(flight, { value: 'cached', outcome: 'local' });
      assert.equal(counter.fetches, 0);
      assert.ok(Date.now() - started < 1000);
    });

    it('concurrent flights on two drivers: one fetch, the others wait for its result; the lease key is deleted after', async () => {
      const { lease, result } = fresh();
      const counter = { fetches: 0 };
      const drivers = [storage.driver, second, storage.driver, second, storage.driver, second];
      const flights = await Promise.all(drivers.map((driver) => storeFlight(driver, lease, { ...work(driver, result, counter, 300), ttlMs: 5000, maxWaitMs: 10_000 })));
      assert.equal(counter.fetches, 1);
      // 'local': a flight so slow to start (a loaded machine) that the answer was already there.
      assert.deepEqual(flights.filter((f) => f.outcome !== 'waited' && f.outcome !== 'local').map((f) => f.outcome), ['fetched']);
      for (const flight of flights) assert.equal(flight.value, 'answer');
      assert.equal(await leaseExists(storage.driver, lease), false, 'a finished flight leaves no lease key');
    });

    it('a live holder: the waiter polls until the answer appears, without fetching', async () => {
      const { lease, result } = fresh();
      await foreignLease(storage.driver, lease, 60_000);
      const counter = { fetches: 0 };
      setTimeout(() => void second.putContent(result, 'from-holder'), 400);
      const started = Date.now();
      const flight = await storeFlight(storage.driver, lease, { ...work(storage.driver, result, counter), ttlMs: 5000, maxWaitMs: 10_000 });
      assert.deepEqual(flight, { value: 'from-holder', outcome: 'waited' });
      assert.equal(counter.fetches, 0);
      const waited = Date.now() - started;
      assert.ok(waited >= 400 && waited < 5000, `answered ${waited} ms after start, by polling (maxWaitMs is 10 s)`);
    });

    it('a dead holder: once its record expires, exactly one of three waiters takes over; the others get its answer', async () => {
      const { lease, result } = fresh();
      await foreignLease(storage.driver, lease, 700);
      const counter = { fetches: 0 };
      const started = Date.now();
      const flights = await Promise.all([storage.driver, second, storage.driver].map((driver) => storeFlight(driver, lease, { ...work(driver, result, counter, 200), ttlMs: 5000, maxWaitMs: 10_000 })));
      assert.ok(Date.now() - started >= 700, 'nobody took the live lease');
      assert.equal(counter.fetches, 1);
      assert.deepEqual(flights.map((f) => f.outcome).sort(), ['took-over', 'waited', 'waited']);
      assert.equal(await leaseExists(storage.driver, lease), false);
    });

    it('a live holder that never answers: the waiter fetches after maxWaitMs and leaves the holder\'s lease alone', async () => {
      const { lease, result } = fresh();
      await foreignLease(storage.driver, lease, 60_000);
      const counter = { fetches: 0 };
      const started = Date.now();
      const flight = await storeFlight(storage.driver, lease, { ...work(storage.driver, result, counter), ttlMs: 5000, maxWaitMs: 500 });
      const waited = Date.now() - started;
      assert.deepEqual(flight, { value: 'answer', outcome: 'wait-timeout' });
      assert.equal(counter.fetches, 1);
      assert.ok(waited >= 500 && waited < 5000, `fetched after ${waited} ms`);
      assert.equal((await readLeaseRecord(storage.driver, lease))?.holder, 'other-appliance/1/abcd');
    });

    it('a holder that fails deletes its lease: waiters fetch for themselves at once (no chain of lease holders)', async () => {
      const { lease, result } = fresh();
      let failures = 0;
      const failing = storeFlight(storage.driver, lease, {
        tryLocal: () => readResult(storage.driver, result),
        fetch: async () => {
          failures += 1;
          await sleep(1000);
          throw new Error('upstream said 404');
        },
        ttlMs: 5000, maxWaitMs: 10_000,
      });
      await sleep(100);
      const counter = { fetches: 0 };
      const waiters = Promise.all([second, storage.driver].map((driver) => storeFlight(driver, lease, { ...work(driver, result, counter), ttlMs: 5000, maxWaitMs: 10_000 })));
      await assert.rejects(failing, /upstream said 404/);
      const flights = await waiters;
      assert.equal(failures, 1);
      // Each waiter saw the lease vanish with no answer and fetched itself, unless the other waiter's
      // answer was already in the store by then; neither waited for maxWaitMs or took a lease.
      const outcomes = flights.map((f) => f.outcome);
      assert.ok(outcomes.includes('holder-failed') && outcomes.every((o) => o === 'holder-failed' || o === 'waited'), outcomes.join());
      assert.equal(counter.fetches, outcomes.filter((o) => o === 'holder-failed').length);
      assert.equal(await leaseExists(storage.driver, lease), false);
    });

    it('whileHeld answers at once while another appliance holds the lease', async () => {
      const { lease, result } = fresh();
      await foreignLease(storage.driver, lease, 60_000);
      const counter = { fetches: 0 };
      const flight = await storeFlight(storage.driver, lease, { ...work(storage.driver, result, counter), whileHeld: async () => 'stale', ttlMs: 5000, maxWaitMs: 10_000 });
      assert.deepEqual(flight, { value: 'stale', outcome: 'held-answer' });
      assert.equal(counter.fetches, 0);
    });

    it('the lease is renewed while a fetch outlasts its ttl: no contender takes over', async () => {
      const { lease, result } = fresh();
      const counter = { fetches: 0 };
      // Generous times: a renew delayed by more than 2/3 of the ttl (a loaded CI machine) loses the lease.
      const holder = storeFlight(storage.driver, lease, { ...work(storage.driver, result, counter, 4000), ttlMs: 1000, maxWaitMs: 10_000 });
      await sleep(2500); // 2.5 ttl: the record would have expired without renewals
      const record = await readLeaseRecord(second, lease);
      assert.ok(record && record.expiresAt > Date.now(), 'the record is live');
      const waiter = await storeFlight(second, lease, { ...work(second, result, counter), ttlMs: 1000, maxWaitMs: 10_000 });
      assert.deepEqual(waiter, { value: 'answer', outcome: 'waited' });
      assert.deepEqual(await holder, { value: 'answer', outcome: 'fetched' });
      assert.equal(counter.fetches, 1);
      assert.equal(await leaseExists(storage.driver, lease), false);
    });
  });
}
