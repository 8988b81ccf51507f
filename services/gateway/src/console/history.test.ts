import assert from 'node:assert/strict';
import { appendFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ConsoleHistory, historyPath, HISTORY_MAX_POINTS, type Totals } from './history.js';
import { recentPulls } from './recent-pulls.js';

describe('console history and recent pulls (files in the data directory)', () => {
  const dirs: string[] = [];
  const dir = async () => {
    const d = await mkdtemp(join(tmpdir(), 'console-history-'));
    dirs.push(d);
    return d;
  };
  after(async () => { await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))); });

  it('stores per-minute increases, survives a restart (counters back at 0) and stays bounded', async () => {
    const root = await dir();
    let totals: Totals = { hits: 3, misses: 1, hitBytes: 300, missBytes: 100, errors: 0 };
    const storage = async () => ({ cached: 1000, hosted: 50 });
    const first = new ConsoleHistory(root, async () => totals, storage);
    await first.sample();
    totals = { hits: 10, misses: 2, hitBytes: 1000, missBytes: 200, errors: 1 };
    await first.sample();
    const points = (await first.series()).map((p) => p.slice(1));
    assert.deepEqual(points, [[3, 1, 300, 100, 0, 1000, 50], [7, 1, 700, 100, 1, 1000, 50], [0, 0, 0, 0, 0, 1000, 50]]);

    // A new gateway: the file is read back, and its counters start again from 0.
    totals = { hits: 2, misses: 0, hitBytes: 20, missBytes: 0, errors: 0 };
    const second = new ConsoleHistory(root, async () => totals, storage);
    const series = await second.series();
    assert.equal(series.length, 3);
    assert.deepEqual(series.at(-1)!.slice(1), [2, 0, 20, 0, 0, 1000, 50], 'the minute in progress, from 0');
    assert.deepEqual((await second.series(series[1]![0])).length, 2, 'since filters');

    // A full file (as after 48 hours): one more point drops the oldest.
    const full = Array.from({ length: HISTORY_MAX_POINTS }, (_, i) => [i, 0, 0, 0, 0, 0, 0, 0]);
    await writeFile(historyPath(root), JSON.stringify({ points: full }));
    const third = new ConsoleHistory(root, async () => totals, storage);
    await third.sample();
    const stored = JSON.parse(await readFile(historyPath(root), 'utf8')) as { points: unknown[] };
    assert.equal(stored.points.length, HISTORY_MAX_POINTS);
    assert.deepEqual((stored.points[0] as number[])[0], 1, 'the oldest point went');
  });

  it('a corrupt history file is ignored, not fatal', async () => {
    const root = await dir();
    await mkdir(join(root, 'logs'), { recursive: true });
    await appendFile(historyPath(root), '{"points": [[1,2,3]], garbage');
    const history = new ConsoleHistory(root, async () => ({ hits: 0, misses: 0, hitBytes: 0, missBytes: 0, errors: 0 }), async () => ({ cached: 0, hosted: 0 }));
    assert.equal((await history.series()).length, 1);
  });

  it('recent pulls: newest first, filtered, from the end of a large log with a partial first line', async () => {
    const root = await dir();
    const log = join(root, 'access.log');
    const line = (i: number, extra: Record<string, unknown> = {}) => JSON.stringify({ level: 30, time: new Date(1_700_000_000_000 + i * 1000).toISOString(), msg: 'access', user: i % 2 ? 'alice' : 'bob', method: 'GET', path: `/v2/r${i % 3}/blobs/x`, upstream: '-', repository: `team/r${i % 3}`, kind: 'blob', status: i % 10 === 0 ? 404 : 200, bytes: i, durationMs: 1, ...extra });
    const lines: string[] = [];
    for (let i = 0; i < 20_000; i++) lines.push(line(i));
    lines.push('not json', line(20_000, { kind: 'tags' }));
    await appendFile(log, `${lines.join('\n')}\n`);
    const newest = await recentPulls(log, { limit: 3 });
    assert.deepEqual(newest.map((e) => e.bytes), [19_999, 19_998, 19_997], 'the tags request is not a pull');
    assert.equal((await recentPulls(log, { limit: 1, contentOnly: false }))[0]!.bytes, 20_000);
    const filtered = await recentPulls(log, { limit: 5, user: 'bob', status: '4xx', q: 'R1' });
    assert.equal(filtered.length, 5);
    assert.ok(filtered.every((e) => e.user === 'bob' && e.status === 404 && e.repository === 'team/r1'));
    assert.deepEqual(await recentPulls(log, { limit: 5, user: 'alice', status: '4xx' }), []);
    assert.deepEqual(await recentPulls(join(root, 'missing.log'), { limit: 5 }), []);
  });
});
