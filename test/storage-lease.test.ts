import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { StorageDriver } from '../lib/storage/driver/driver.js';
import { openConfiguredStorage } from '../lib/storage/driver/open.js';
import { acquireLease, leaseKey, readLeaseRecord, type HeldLease } from '../lib/storage/lease.js';
import { REPO_ROOT, STEVEDORE_BIN } from './helpers/processes.js';
import { runStevedore, sleep } from './helpers/storage-fixtures.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * The store lease (lib/storage/lease.ts) on both drivers, with two drivers on one store as two
 * appliances would have: one winner among concurrent acquirers, renew keeps it, an expired lease is
 * taken over by exactly one, a holder that lost it finds out at renew. Then real processes: two
 * `stevedore cleaner` services never run at once, `stevedore gc` refuses while another holds the
 * lease, and a SIGKILLed holder's lease is taken over by a running cleaner once it expired.
 */

const LEASE_TIME_MS = 1500;

/** A long-running child with its output, and its JSON log lines. */
function startChild(args: string[], env: NodeJS.ProcessEnv): { proc: ChildProcess; output: () => string; logs: () => Array<Record<string, unknown>>; waitFor: (test: (text: string) => boolean, ms?: number) => Promise<void> } {
  const clean: NodeJS.ProcessEnv = { ...process.env };
  for (const key of Object.keys(clean)) if (key.startsWith('CLEANER_') || key.startsWith('STEVEDORE_') || key.startsWith('LOGGER_')) delete clean[key];
  const proc = spawn(process.execPath, args, { env: { ...clean, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  proc.stdout!.on('data', (c: Buffer) => { text += c.toString('utf8'); });
  proc.stderr!.on('data', (c: Buffer) => { text += c.toString('utf8'); });
  return {
    proc,
    output: () => text,
    logs: () => text.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>),
    waitFor: async (test, ms = 15_000) => {
      const deadline = Date.now() + ms;
      while (!test(text)) {
        if (proc.exitCode !== null) throw new Error(`process exited with ${proc.exitCode}:\n${text.slice(-3000)}`);
        if (Date.now() > deadline) throw new Error(`timed out waiting for output:\n${text.slice(-3000)}`);
        await sleep(20);
      }
    },
  };
}

function killed(proc: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
    proc.once('exit', () => resolve());
    proc.kill(signal);
  });
}

for (const kind of STORAGE_KINDS) {
  describe(`store lease on ${kind}`, () => {
    let storage: TestStorage;
    let second: StorageDriver;
    const children: ChildProcess[] = [];
    const env = (extra: Record<string, string> = {}) => ({ STEVEDORE_ROOT: storage.root, ...storage.env, ...extra });

    before(async () => {
      storage = await testStorage(kind);
      second = await openConfiguredStorage(storage.location, storage.settings);
    });
    after(async () => {
      for (const proc of children) await killed(proc, 'SIGKILL');
      await storage?.cleanup();
    });

    it('one of concurrent acquirers wins; renew keeps it; a lost holder finds out at renew; release frees it', async () => {
      const drivers = [storage.driver, second, storage.driver, second, storage.driver, second];
      const attempts = await Promise.all(drivers.map((driver, i) => acquireLease(driver, 'unit', { ttlMs: 60_000, holder: `contender-${i}` })));
      const winners = attempts.filter((a) => a.acquired);
      assert.equal(winners.length, 1, 'exactly one acquirer wins');
      const lease = (winners[0] as { lease: HeldLease }).lease;
      for (const attempt of attempts) if (!attempt.acquired) assert.equal(attempt.heldBy.holder, lease.holder);

      assert.equal(await lease.renew(), true);
      const after = await acquireLease(second, 'unit', { ttlMs: 60_000, holder: 'late' });
      assert.equal(after.acquired, false);
      assert.equal((await readLeaseRecord(second, 'unit'))?.holder, lease.holder);

      // Expired (a clock an hour ahead sees it so): exactly one of the contenders takes it over.
      const later = () => Date.now() + 3_600_000;
      const takeovers = await Promise.all(drivers.map((driver, i) => acquireLease(driver, 'unit', { ttlMs: 60_000, holder: `taker-${i}`, now: later })));
      const taken = takeovers.filter((a) => a.acquired);
      assert.equal(taken.length, 1, 'exactly one takes the expired lease over');
      const taker = (taken[0] as { lease: HeldLease }).lease;
      assert.equal(await lease.renew(), false, 'the old holder finds out at renew');
      assert.equal(lease.lost, true);
      await lease.release();
      assert.equal((await readLeaseRecord(storage.driver, 'unit'))?.holder, taker.holder, "a lost holder's release leaves the new holder's lease alone");

      await taker.release();
      const free = await acquireLease(second, 'unit', { ttlMs: 60_000, holder: 'next' });
      assert.equal(free.acquired, true, 'a released lease is free at once');
      if (free.acquired) await free.lease.release();
    });

    it('an unrenewed lease expires and is taken over; keepRenewed holds it past its ttl', async () => {
      const short = await acquireLease(storage.driver, 'expiry', { ttlMs: 300, holder: 'short' });
      assert.ok(short.acquired);
      assert.equal((await acquireLease(second, 'expiry', { ttlMs: 300, holder: 'waiting' })).acquired, false);
      await sleep(400);
      const next = await acquireLease(second, 'expiry', { ttlMs: 300, holder: 'waiting' });
      assert.ok(next.acquired, 'taken over after expiry');
      let lost = false;
      next.lease.keepRenewed(() => { lost = true; });
      await sleep(900);
      assert.equal((await acquireLease(storage.driver, 'expiry', { ttlMs: 300, holder: 'again' })).acquired, false, 'a renewed lease stays held past its ttl');
      assert.equal(lost, false);
      await next.lease.release();
    });

    it('two cleaner services never run at once; gc refuses while another holds the lease; a SIGKILLed holder is taken over after expiry', async () => {
      const cleanerArgs = [STEVEDORE_BIN, 'cleaner', '--root', storage.root, '--run-every', '200ms', '--lease-time', `${LEASE_TIME_MS}ms`];
      const a = startChild(cleanerArgs, env({ LOG_LEVEL: 'info' }));
      const b = startChild(cleanerArgs, env({ LOG_LEVEL: 'info' }));
      children.push(a.proc, b.proc);
      const acquisitions = (c: typeof a) => c.logs().filter((l) => String(l['msg']).endsWith('cleaner lease acquired'));
      await a.waitFor(() => acquisitions(a).length >= 2);
      await b.waitFor(() => acquisitions(b).length >= 2);
      await Promise.all([killed(a.proc, 'SIGTERM'), killed(b.proc, 'SIGTERM')]);
      // Each logged [acquired, released] lies within the time it held the lease: they must not overlap.
      const intervals: Array<{ from: number; to: number; who: string }> = [];
      for (const [who, c] of [['a', a], ['b', b]] as const) {
        let from: number | undefined;
        for (const line of c.logs()) {
          const msg = String(line['msg']);
          if (msg.endsWith('cleaner lease acquired')) from = Date.parse(String(line['time']));
          if (msg.endsWith('cleaner lease released') && from !== undefined) {
            intervals.push({ from, to: Date.parse(String(line['time'])), who });
            from = undefined;
          }
        }
      }
      intervals.sort((x, y) => x.from - y.from);
      for (let i = 1; i < intervals.length; i += 1) {
        assert.ok(intervals[i]!.from >= intervals[i - 1]!.to, `runs overlap: ${JSON.stringify(intervals.slice(i - 1, i + 1))}`);
      }
      assert.ok(intervals.some((x) => x.who === 'a') && intervals.some((x) => x.who === 'b'));

      // A holder process (as an appliance mid-run) takes the lease and keeps renewing it.
      const holderScript = `
        import { loadCleanerConfig, storageLocationOf } from ${JSON.stringify(join(REPO_ROOT, 'dist/lib/config.js'))};
        import { openConfiguredStorage } from ${JSON.stringify(join(REPO_ROOT, 'dist/lib/storage/driver/open.js'))};
        import { acquireLease } from ${JSON.stringify(join(REPO_ROOT, 'dist/lib/storage/lease.js'))};
        const config = loadCleanerConfig(['--root', ${JSON.stringify(storage.root)}]);
        const driver = await openConfiguredStorage(storageLocationOf(config, config.root), config);
        const attempt = await acquireLease(driver, 'cleaner', { ttlMs: ${LEASE_TIME_MS}, holder: 'killed-holder' });
        if (!attempt.acquired) { console.log('not acquired'); process.exit(1); }
        attempt.lease.keepRenewed(() => console.log('lost'));
        console.log('holding');
        setInterval(() => {}, 1000);
      `;
      const holder = startChild(['--input-type=module', '-e', holderScript], env());
      children.push(holder.proc);
      await holder.waitFor((t) => t.includes('holding'));

      const refused = await runStevedore(['gc'], env({ LOG_LEVEL: 'warn' }));
      assert.equal(refused.code, 75, refused.stderr);
      assert.match(refused.stderr, /another cleaner is running on this store \(lease "cleaner" held by killed-holder until /);
      const cleanRefused = await runStevedore(['clean'], env({ LOG_LEVEL: 'warn' }));
      assert.equal(cleanRefused.code, 75, cleanRefused.stderr);
      const dry = await runStevedore(['gc', '--dry-run'], env({ LOG_LEVEL: 'warn' }));
      assert.equal(dry.code, 0, 'a dry run needs no lease');

      const c = startChild(cleanerArgs, env({ LOG_LEVEL: 'info' }));
      children.push(c.proc);
      await c.waitFor(() => c.logs().some((l) => String(l['msg']).includes('skipped, another cleaner holds the lease') && l['holder'] === 'killed-holder'));
      // Still renewed after more than its ttl: the holder keeps it while it lives.
      await sleep(LEASE_TIME_MS + 300);
      assert.equal(c.logs().some((l) => String(l['msg']).endsWith('cleaner lease acquired')), false, 'no takeover of a live, renewed lease');

      const lastRecord = await readLeaseRecord(storage.driver, 'cleaner');
      await killed(holder.proc, 'SIGKILL');
      const killedAt = Date.now();
      await c.waitFor(() => c.logs().some((l) => String(l['msg']).endsWith('cleaner lease acquired')), 10_000);
      const takenAt = Date.parse(String(c.logs().find((l) => String(l['msg']).endsWith('cleaner lease acquired'))!['time']));
      assert.ok(lastRecord && takenAt >= lastRecord.expiresAt - 50, `taken over only after expiry (${takenAt} vs ${lastRecord?.expiresAt})`);
      console.log(`[${kind}] lease taken over ${takenAt - killedAt} ms after SIGKILL of the holder (lease time ${LEASE_TIME_MS} ms)`);
      await killed(c.proc, 'SIGTERM');
      const record = await storage.driver.getVersioned(leaseKey('cleaner'));
      assert.equal(JSON.parse(record.data.toString('utf8')).expiresAt, 0, 'a stopped cleaner left a released lease');
    });
  });
}
