import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { STEVEDORE_BIN, tempDir } from './helpers/processes.js';
import { accessLogLine, exists, runStevedore, sleep, writeLines } from './helpers/storage-fixtures.js';
import { SyntheticStore } from './helpers/synthetic-store.js';
import { readServedTimes } from '../lib/storage/served-index.js';

/**
 * The storage services as PM2 runs them (`stevedore logger`, `stevedore cleaner`): real processes
 * that do their work, stop cleanly on SIGTERM, and refuse bad configuration with a message naming
 * the variable.
 */

const HOUR = 3_600_000;
const NS = 'registry.example:5000';

function startService(args: string[], env: NodeJS.ProcessEnv): { proc: ChildProcess; output: () => string; exited: Promise<number | null> } {
  const clean: NodeJS.ProcessEnv = { ...process.env };
  for (const key of Object.keys(clean)) if (/^(CLEANER_|STEVEDORE_|LOGGER_)/.test(key)) delete clean[key];
  const proc = spawn(process.execPath, [STEVEDORE_BIN, ...args], { env: { ...clean, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  proc.stdout!.on('data', (c: Buffer) => { text += c.toString('utf8'); });
  proc.stderr!.on('data', (c: Buffer) => { text += c.toString('utf8'); });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return { proc, output: () => text, exited };
}

async function until(check: () => Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

describe('storage services as processes', () => {
  let root: string;
  const running: ChildProcess[] = [];

  before(async () => { root = await tempDir('storage-services-'); });
  after(async () => {
    for (const proc of running) if (proc.exitCode === null) proc.kill('SIGKILL');
    await rm(root, { recursive: true, force: true });
  });

  it('invalid configuration: non-zero exit and a message naming the variable', async () => {
    const cases: Array<[string[], Record<string, string>, RegExp]> = [
      [['clean'], { CLEANER_MAXSIZE: 'lots' }, /CLEANER_MAXSIZE/],
      [['clean'], { CLEANER_MAXSIZE: '10 parsecs' }, /CLEANER_MAXSIZE/],
      [['clean', '--max-size', '0'], {}, /--max-size.*CLEANER_MAXSIZE.*greater than zero/],
      [['cleaner'], { CLEANER_RUNEVERY_TIME: 'hourly' }, /CLEANER_RUNEVERY_TIME/],
      [['gc'], { CLEANER_GRACE_TIME: 'a while' }, /CLEANER_GRACE_TIME/],
      [['cleaner'], { CLEANER_THRESHOLD_PERCENTAGE: '-5' }, /CLEANER_THRESHOLD_PERCENTAGE/],
      [['logger'], { LOGGER_FLUSH_TIME: 'often' }, /LOGGER_FLUSH_TIME/],
    ];
    await Promise.all(cases.map(async ([args, env, message]) => {
      const result = await runStevedore(args, { STEVEDORE_ROOT: root, ...env });
      assert.notEqual(result.code, 0, `${args.join(' ')} ${JSON.stringify(env)} should fail`);
      assert.match(result.stderr, message);
    }));
  });

  it('`stevedore logger` follows the access log into the served index, saves its position and stops on SIGTERM', async () => {
    const store = new SyntheticStore(root);
    const blob = await store.blob(1000, { atimeMs: Date.now() - 10 * HOUR });
    const servedAt = Math.floor(Date.now() / 1000) * 1000 - 60_000;
    const logPath = join(root, 'logs', 'access.log');
    await writeLines(logPath, [accessLogLine({ upstream: NS, repository: 'library/x', kind: 'blob', reference: blob.digest.value, time: new Date(servedAt).toISOString() })]);
    const service = startService(['logger'], { STEVEDORE_ROOT: root, LOGGER_FLUSH_TIME: '100ms', LOG_LEVEL: 'info' });
    running.push(service.proc);
    const atime = async () => (await readServedTimes(store.driver)).get(blob.digest.value);
    await until(async () => (await atime()) === servedAt, 'the logger to record the serve');
    // A line written while it runs is picked up too.
    const later = servedAt + 30_000;
    await writeLines(logPath, [accessLogLine({ upstream: NS, repository: 'library/x', kind: 'blob', reference: blob.digest.value, time: new Date(later).toISOString() })]);
    await until(async () => (await atime()) === later, 'the logger to pick up an appended line');
    service.proc.kill('SIGTERM');
    assert.equal(await service.exited, 0, service.output());
    const state = JSON.parse(await readFile(join(root, 'logs', 'logger-state.json'), 'utf8')) as { offset: number };
    assert.equal(state.offset, (await stat(logPath)).size);
  });

  it('`stevedore cleaner` with CLEANER_DRY_RUN=true only logs what it would remove', async () => {
    const store = new SyntheticStore(join(root, 'dry'));
    const old = { atimeMs: Date.now() - 5 * HOUR };
    const cached = await store.image(store.cache(NS), 'library/big', [200_000], { tag: 'v1', times: old });
    const garbage = await store.blob(1000, old);
    const service = startService(['cleaner'], {
      STEVEDORE_ROOT: store.root, CLEANER_MAXSIZE: '100KiB', CLEANER_THRESHOLD_PERCENTAGE: '0', CLEANER_RUNEVERY_TIME: '100ms', CLEANER_DRY_RUN: 'true', LOG_LEVEL: 'info',
    });
    running.push(service.proc);
    await until(async () => service.output().includes('would evict'), 'a dry eviction run');
    service.proc.kill('SIGTERM');
    assert.equal(await service.exited, 0, service.output());
    for (const b of [...cached.all, garbage]) assert.ok(await exists(store.hosted.blobPath(b.digest)), 'a dry run removed a blob');
    assert.match(service.output(), /"dryRun":true/);
  });

  it('`stevedore cleaner` collects garbage at start, evicts every CLEANER_RUNEVERY_TIME and stops on SIGTERM', async () => {
    const store = new SyntheticStore(root);
    const old = { atimeMs: Date.now() - 5 * HOUR };
    const cached = await store.image(store.cache(NS), 'library/big', [200_000], { tag: 'v1', times: old });
    const hosted = await store.image(store.hosted, 'team/app', [200_000], { tag: 'v1', times: old });
    const garbage = await store.blob(1000, old);
    const service = startService(['cleaner'], {
      STEVEDORE_ROOT: root, CLEANER_MAXSIZE: '100KiB', CLEANER_THRESHOLD_PERCENTAGE: '0', CLEANER_RUNEVERY_TIME: '200ms', CLEANER_GRACE_TIME: '1h', LOG_LEVEL: 'info',
    });
    running.push(service.proc);
    const present = (d: { digest: { algorithm: 'sha256' | 'sha512'; hex: string; value: string } }) => exists(store.hosted.blobPath(d.digest));
    await until(async () => !(await present(garbage)), 'garbage collection at start');
    await until(async () => !(await present(cached.layers[0]!)), 'eviction of the cached image');
    for (const b of hosted.all) assert.ok(await present(b), 'hosted content was removed');
    // It keeps running: content cached later is evicted by a later run.
    // Written as new (within the grace period, so the running cleaner leaves it alone while it is
    // half-written), then aged; a blob already evicted by the time it is aged is fine.
    const more = await store.image(store.cache(NS), 'library/later', [200_000]);
    for (const b of [...more.layers, more.config, more.manifest]) {
      await store.setTimes(b.digest, old.atimeMs).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err; });
    }
    await until(async () => !(await present(more.layers[0]!)), 'a later eviction run');
    service.proc.kill('SIGTERM');
    assert.equal(await service.exited, 0, service.output());
    assert.match(service.output(), /garbage collection done/);
    assert.match(service.output(), /cleaner evicted least recently served cached content/);
  });
});
