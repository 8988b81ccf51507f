import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { appendFile, mkdir, mkdtemp, readFile, rename, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { ACCESS_LOG_MESSAGE, type AccessLogEntry } from '../../../lib/access-log.js';
import { defaultStorageConfig, type LoggerConfig } from '../../../lib/config.js';
import { createLogger } from '../../../lib/log.js';
import { digestOf, type Digest } from '../../../lib/oci/digest.js';
import { StorageLayout } from '../../../lib/storage/layout.js';
import { followAccessLog, type AccessLogFollower } from './main.js';
import { FilesystemDriver } from '../../../lib/storage/driver/filesystem.js';
import { readServedTimes, SERVED_BATCHES_PREFIX, SERVED_PREFIX } from '../../../lib/storage/served-index.js';
import { ServedRecorder } from './served.js';

const log = createLogger('logger-test', 'silent');
const OLD = Date.parse('2024-01-01T00:00:00Z');
const NS = 'registry.example:5000';

function line(fields: Partial<AccessLogEntry>): string {
  const entry: AccessLogEntry = {
    level: 30, time: new Date().toISOString(), msg: ACCESS_LOG_MESSAGE, user: '-', method: 'GET', path: '/v2/x', upstream: '-',
    status: 200, bytes: 1, durationMs: 1, ...fields,
  };
  return JSON.stringify(entry);
}

const blobLine = (digest: Digest, time: Date, extra: Partial<AccessLogEntry> = {}): string =>
  line({ upstream: NS, repository: 'team/app', kind: 'blob', reference: digest.value, time: time.toISOString(), ...extra });

describe('logger: access log → served index of blobs and manifests', () => {
  let root: string;
  let driver: FilesystemDriver;
  let layout: StorageLayout;
  let logPath: string;
  let statePath: string;
  let config: LoggerConfig;
  const blobs: Digest[] = [];
  const followers: AccessLogFollower[] = [];

  async function storeBlob(data: Buffer): Promise<Digest> {
    const digest = digestOf(data);
    const path = layout.blobPath(digest);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, data);
    return digest;
  }

  /** Last served as the index says; OLD when it has no entry (never served). */
  const atime = async (d: Digest): Promise<number> => (await readServedTimes(driver)).get(d.value) ?? OLD;
  const mtime = async (d: Digest): Promise<number> => (await stat(layout.blobPath(d))).mtimeMs;

  async function follow(): Promise<AccessLogFollower> {
    const follower = await followAccessLog(config, log);
    followers.push(follower);
    return follower;
  }

  /** Reads everything new and writes the batch, without waiting for the flush timer or the poll. */
  async function catchUp(f: AccessLogFollower): Promise<void> {
    await f.tailer.drain();
    await f.flush();
  }

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'logger-test-'));
    layout = new StorageLayout(root);
    driver = new FilesystemDriver(root);
    for (let i = 0; i < 220; i++) blobs.push(await storeBlob(randomBytes(64)));
  });

  beforeEach(async () => {
    for (const f of followers.splice(0)) await f.stop();
    const dir = join(root, `case-${randomBytes(4).toString('hex')}`);
    logPath = join(dir, 'access.log');
    statePath = join(dir, 'state.json');
    config = { ...defaultStorageConfig(), root, accessLogPath: logPath, statePath, flushEvery: 600_000, logLevel: 'silent' };
    await mkdir(dir, { recursive: true });
    for (const d of blobs) await utimes(layout.blobPath(d), new Date(OLD), new Date(OLD));
    await driver.deletePrefix(SERVED_PREFIX).catch(() => {});
  });

  after(async () => {
    for (const f of followers.splice(0)) await f.stop();
    await rm(root, { recursive: true, force: true });
  });

  it('10,000 lines for one blob cost one batch with one entry: the latest serve time; the blob is not touched', async () => {
    const base = Date.parse('2025-03-01T12:00:00Z');
    const many = Array.from({ length: 10_000 }, (_, i) => blobLine(blobs[0]!, new Date(base + i * 1000)));
    await writeFile(logPath, `${many.join('\n')}\n`);
    const f = await follow();
    await catchUp(f);
    assert.equal(f.recorder.recorded, 1);
    assert.equal(f.recorder.batches, 1);
    assert.equal(await atime(blobs[0]!), base + 9_999 * 1000);
    assert.equal(await mtime(blobs[0]!), OLD);
    assert.equal(f.malformed(), 0);
    // The saved position is the end of the log.
    const state = JSON.parse(await readFile(statePath, 'utf8')) as { offset: number; ino: number };
    assert.equal(state.offset, (await stat(logPath)).size);
    assert.equal(state.ino, (await stat(logPath)).ino);
  });

  it('only served reads count: failed requests, pushes and deletes touch nothing; a malformed line is counted and skipped', async () => {
    const t = new Date('2025-03-02T00:00:00Z');
    await writeFile(logPath, [
      blobLine(blobs[1]!, t, { status: 404 }),
      blobLine(blobs[2]!, t, { method: 'PUT', status: 201 }),
      blobLine(blobs[3]!, t, { method: 'DELETE', status: 202 }),
      '{"this is": "not an access-log entry"',
      'plain text garbage',
      JSON.stringify({ msg: 'something else', level: 30 }),
      '',
      blobLine(blobs[4]!, t, { method: 'HEAD' }),
      blobLine(blobs[5]!, t, { status: 206 }),
      blobLine(blobs[6]!, t, { status: 304, kind: 'manifest' }),
      line({ upstream: '../../etc', kind: 'blob', reference: blobs[7]!.value, time: t.toISOString() }),
    ].join('\n') + '\n');
    const f = await follow();
    await catchUp(f);
    assert.equal(f.malformed(), 3);
    for (const i of [1, 2, 3, 7]) assert.equal(await atime(blobs[i]!), OLD, `blob ${i} must not be touched`);
    for (const i of [4, 5, 6]) assert.equal(await atime(blobs[i]!), t.getTime(), `blob ${i} must be touched`);
    // The logger goes on after malformed lines.
    await appendFile(logPath, `${blobLine(blobs[8]!, t)}\n`);
    await catchUp(f);
    assert.equal(await atime(blobs[8]!), t.getTime());
  });

  it('a manifest served by tag touches the manifest blob the tag points at (hosted and cache namespaces)', async () => {
    const manifest = blobs[10]!;
    const cacheLayout = new StorageLayout(root, { namespace: NS });
    await mkdir(cacheLayout.tagsDir('library/alpine'), { recursive: true });
    await writeFile(cacheLayout.tagPath('library/alpine', '3.20'), manifest.value);
    await mkdir(layout.tagsDir('team/app'), { recursive: true });
    await writeFile(layout.tagPath('team/app', 'v1'), blobs[11]!.value);
    const t = new Date('2025-03-03T00:00:00Z');
    await writeFile(logPath, [
      line({ upstream: NS, repository: 'library/alpine', kind: 'manifest', reference: '3.20', time: t.toISOString() }),
      line({ upstream: '-', repository: 'team/app', kind: 'manifest', reference: 'v1', time: t.toISOString() }),
      line({ upstream: NS, repository: 'library/alpine', kind: 'manifest', reference: 'no-such-tag', time: t.toISOString() }),
    ].join('\n') + '\n');
    const f = await follow();
    await catchUp(f);
    assert.equal(await atime(manifest), t.getTime());
    assert.equal(await atime(blobs[11]!), t.getTime());
  });

  it('restart in the middle of the log: lines written while stopped are processed, none is replayed', async () => {
    const t1 = new Date('2025-04-01T00:00:00Z');
    const t2 = new Date('2025-04-02T00:00:00Z');
    const first = blobs.slice(20, 40);
    const second = blobs.slice(40, 60);
    await writeFile(logPath, `${first.map((d) => blobLine(d, t1)).join('\n')}\n`);
    const one = await follow();
    await catchUp(one);
    assert.equal(one.recorder.recorded, first.length);
    await one.stop();
    followers.splice(followers.indexOf(one), 1);
    // While the logger is down: more traffic.
    await appendFile(logPath, `${second.map((d) => blobLine(d, t2)).join('\n')}\n`);

    const two = await follow();
    await catchUp(two);
    assert.equal(two.recorder.recorded, second.length);
    // recorded counts only the second part: nothing of the first was replayed.
    for (const d of first) assert.equal(await atime(d), t1.getTime());
    for (const d of second) assert.equal(await atime(d), t2.getTime());
  });

  it('the saved position never runs ahead of the atimes written (a crash right after a save loses nothing)', async () => {
    const t1 = new Date('2025-05-01T00:00:00Z');
    const t2 = new Date('2025-05-02T00:00:00Z');
    // Many distinct blobs: the flush of the first batch takes a while ...
    const first = blobs.slice(0, 200);
    await writeFile(logPath, `${first.map((d) => blobLine(d, t1)).join('\n')}\n`);
    const f = await follow();
    await f.tailer.drain();
    // ... and a second batch is read while it runs.
    await appendFile(logPath, `${blobLine(blobs[210]!, t2)}\n`);
    await Promise.all([f.flush(), f.tailer.drain()]);
    const state = JSON.parse(await readFile(statePath, 'utf8')) as { offset: number };
    const size = (await stat(logPath)).size;
    if (state.offset === size) {
      assert.equal(await atime(blobs[210]!), t2.getTime(), 'the state covers a line whose atime was not written yet');
    } else {
      assert.ok(state.offset < size);
    }
    await f.stop();
    followers.splice(followers.indexOf(f), 1);
    assert.equal(await atime(blobs[210]!), t2.getTime());
  });

  it('rotation and copytruncate while following: the lines of both files are all processed', async () => {
    const t = (n: number) => new Date(Date.parse('2025-06-01T00:00:00Z') + n * 60_000);
    await writeFile(logPath, `${blobLine(blobs[100]!, t(1))}\n`);
    const f = await follow();
    await catchUp(f);
    assert.equal(await atime(blobs[100]!), t(1).getTime());

    // Rotation: the old file is renamed (and still written a moment), a new one is created.
    await rename(logPath, `${logPath}.1`);
    await appendFile(`${logPath}.1`, `${blobLine(blobs[101]!, t(2))}\n`);
    await writeFile(logPath, `${blobLine(blobs[102]!, t(3))}\n`);
    await catchUp(f);
    assert.equal(await atime(blobs[101]!), t(2).getTime());
    assert.equal(await atime(blobs[102]!), t(3).getTime());

    // copytruncate: the file is copied away and emptied in place; writing goes on from 0.
    await appendFile(logPath, `${blobLine(blobs[103]!, t(4))}\n`);
    await catchUp(f);
    await truncate(logPath, 0);
    await appendFile(logPath, `${blobLine(blobs[104]!, t(5))}\n`);
    await catchUp(f);
    for (const [i, n] of [[103, 4], [104, 5]] as const) assert.equal(await atime(blobs[i]!), t(n).getTime());
    assert.equal(f.malformed(), 0);
  });

  it('without explicit calls: file events and the flush timer do the work', async () => {
    config = { ...config, flushEvery: 100 };
    await follow();
    const t = new Date('2025-07-01T00:00:00Z');
    await writeFile(logPath, `${blobLine(blobs[120]!, t)}\n`);
    const until = Date.now() + 5_000;
    while ((await atime(blobs[120]!)) !== t.getTime()) {
      assert.ok(Date.now() < until, 'the logger did not pick the line up within 5 s');
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  it('a serve time in the future (skewed clock) counts as now, so it cannot pin a blob', async () => {
    const recorder = new ServedRecorder(driver);
    const before = Date.now();
    await recorder.record(JSON.parse(line({ kind: 'blob', reference: blobs[131]!.value, time: '2099-01-01T00:00:00Z' })) as AccessLogEntry);
    await recorder.flush();
    const set = await atime(blobs[131]!);
    assert.ok(set >= before - 1000 && set <= Date.now() + 1000, `served ${new Date(set).toISOString()}`);
  });

  it('several loggers (appliances) write their own batches, never overwriting; the latest time wins', async () => {
    const entry = (d: string, time: string): AccessLogEntry => JSON.parse(line({ kind: 'blob', reference: d, time })) as AccessLogEntry;
    const one = new ServedRecorder(driver, 'appliance-1');
    const two = new ServedRecorder(driver, 'appliance-2');
    await one.record(entry(blobs[130]!.value, '2025-08-02T00:00:00Z'));
    await two.record(entry(blobs[130]!.value, '2025-08-01T00:00:00Z'));
    await two.record(entry(blobs[132]!.value, '2025-08-03T00:00:00Z'));
    await Promise.all([one.flush(), two.flush()]);
    await one.flush(); // nothing served since: no batch
    assert.equal(await atime(blobs[130]!), Date.parse('2025-08-02T00:00:00Z'));
    assert.equal(await atime(blobs[132]!), Date.parse('2025-08-03T00:00:00Z'));
    const keys = (await driver.list(SERVED_BATCHES_PREFIX, { delimiter: '/' })).prefixes;
    assert.deepEqual(keys, [`${SERVED_BATCHES_PREFIX}appliance-1/`, `${SERVED_BATCHES_PREFIX}appliance-2/`]);
    assert.equal(one.batches + two.batches, 2);
  });
});
