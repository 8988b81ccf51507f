import assert from 'node:assert/strict';
import { appendFile, mkdtemp, rename, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LogTailer, type TailPosition } from './tail.js';

const lines = (prefix: string, n: number, from = 0): string[] => Array.from({ length: n }, (_, i) => `${prefix}-${from + i}`);
const text = (ls: string[]): string => ls.map((l) => `${l}\n`).join('');

/** A tailer that collects what it reads; `drain()` is called directly so the tests never wait for the poll. */
function collector(path: string, start?: TailPosition): { tailer: LogTailer; seen: string[]; positions: TailPosition[] } {
  const seen: string[] = [];
  const positions: TailPosition[] = [];
  const tailer = new LogTailer(path, start, (batch, position) => {
    seen.push(...batch);
    positions.push({ ...position });
  });
  return { tailer, seen, positions };
}

async function waitFor(check: () => boolean, ms = 5_000): Promise<void> {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('LogTailer', () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'tail-test-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  it('reads existing lines, then lines appended later (file events, no explicit drain)', async () => {
    const path = join(dir, 'events.log');
    await writeFile(path, text(lines('a', 3)));
    const { tailer, seen } = collector(path);
    await tailer.start();
    try {
      assert.deepEqual(seen, lines('a', 3));
      await appendFile(path, text(lines('b', 2)));
      await waitFor(() => seen.length === 5);
      assert.deepEqual(seen, [...lines('a', 3), ...lines('b', 2)]);
    } finally {
      await tailer.stop();
    }
  });

  it('starts on a log that does not exist yet and follows it once it is created', async () => {
    const path = join(dir, 'later.log');
    const { tailer, seen } = collector(path);
    await tailer.start();
    try {
      assert.deepEqual(seen, []);
      await writeFile(path, text(lines('x', 2)));
      await tailer.drain();
      assert.deepEqual(seen, lines('x', 2));
    } finally {
      await tailer.stop();
    }
  });

  it('rotation: lines still written to the renamed file and lines of the new file are all read, in order', async () => {
    const path = join(dir, 'rotate.log');
    await writeFile(path, text(lines('old', 3)));
    const { tailer, seen } = collector(path);
    await tailer.start();
    try {
      assert.equal(seen.length, 3);
      // logrotate's default: rename, the writer keeps its descriptor a moment, then a new file appears.
      await rename(path, `${path}.1`);
      await appendFile(`${path}.1`, text(lines('old', 2, 3)));
      await writeFile(path, text(lines('new', 4)));
      await tailer.drain();
      assert.deepEqual(seen, [...lines('old', 5), ...lines('new', 4)]);
      // And the new file goes on being followed.
      await appendFile(path, text(lines('new', 1, 4)));
      await tailer.drain();
      assert.deepEqual(seen.slice(-5), lines('new', 5));
      assert.equal(tailer.current.offset, Buffer.byteLength(text(lines('new', 5))));
    } finally {
      await tailer.stop();
    }
  });

  it('truncation (copytruncate): starts over at the beginning of the file', async () => {
    const path = join(dir, 'truncate.log');
    await writeFile(path, text(lines('before-truncation', 10)));
    const { tailer, seen } = collector(path);
    await tailer.start();
    try {
      assert.equal(seen.length, 10);
      await truncate(path, 0);
      await appendFile(path, text(lines('after', 3)));
      await tailer.drain();
      assert.deepEqual(seen.slice(10), lines('after', 3));
      assert.equal(tailer.current.offset, Buffer.byteLength(text(lines('after', 3))));
    } finally {
      await tailer.stop();
    }
  });

  it('restart from a saved position: lines written while stopped are read once, nothing is replayed', async () => {
    const path = join(dir, 'restart.log');
    await writeFile(path, text(lines('first', 100)));
    const one = collector(path);
    await one.tailer.start();
    await one.tailer.stop();
    assert.equal(one.seen.length, 100);
    const saved = one.tailer.current;

    await appendFile(path, text(lines('while-down', 50)));
    const two = collector(path, saved);
    await two.tailer.start();
    try {
      assert.deepEqual(two.seen, lines('while-down', 50));
    } finally {
      await two.tailer.stop();
    }
  });

  it('a saved position never counts an unfinished line: a restart reads the whole line', async () => {
    const path = join(dir, 'partial.log');
    await writeFile(path, 'complete\nhalf-a-li');
    const one = collector(path);
    await one.tailer.start();
    await one.tailer.stop();
    assert.deepEqual(one.seen, ['complete']);
    const saved = one.positions.at(-1)!;
    assert.equal(saved.offset, 'complete\n'.length);

    await appendFile(path, 'ne\nnext\n');
    const two = collector(path, saved);
    await two.tailer.start();
    try {
      assert.deepEqual(two.seen, ['half-a-line', 'next']);
    } finally {
      await two.tailer.stop();
    }
  });

  it('a saved position of a file that was rotated while stopped starts the new file from 0', async () => {
    const path = join(dir, 'rotated-while-down.log');
    await writeFile(path, text(lines('gen1', 5)));
    const one = collector(path);
    await one.tailer.start();
    await one.tailer.stop();
    await rename(path, `${path}.1`);
    await writeFile(path, text(lines('gen2', 2)));
    const two = collector(path, one.tailer.current);
    await two.tailer.start();
    try {
      assert.deepEqual(two.seen, lines('gen2', 2));
    } finally {
      await two.tailer.stop();
    }
  });

  it('a UTF-8 character split by a read boundary stays whole, and saved offsets are byte offsets', async () => {
    const path = join(dir, 'utf8.log');
    // The first line ends so that "€" (3 bytes) straddles the 1 MiB read boundary; the second line is unfinished.
    const first = `${'a'.repeat(1024 * 1024 - 2)}€ünïcödé`;
    await writeFile(path, `${first}\nsecond-€-line\nunfinished-€`);
    const one = collector(path);
    await one.tailer.start();
    await one.tailer.stop();
    assert.deepEqual(one.seen, [first, 'second-€-line']);
    const saved = one.positions.at(-1)!;
    assert.equal(saved.offset, Buffer.byteLength(`${first}\nsecond-€-line\n`));
    await appendFile(path, '-done\n');
    const two = collector(path, saved);
    await two.tailer.start();
    await two.tailer.stop();
    assert.deepEqual(two.seen, ['unfinished-€-done']);
  });

  it('reads a log larger than one read chunk without splitting or losing lines', async () => {
    const path = join(dir, 'big.log');
    const many = Array.from({ length: 40_000 }, (_, i) => `{"n":${i},"pad":"${'x'.repeat(40 + (i % 17))}"}`);
    await writeFile(path, text(many));
    const { tailer, seen } = collector(path);
    await tailer.start();
    await tailer.stop();
    assert.equal(seen.length, many.length);
    assert.deepEqual(seen, many);
  });
});
