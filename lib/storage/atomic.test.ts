import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { commitFile, removeStale, tempPath, writeFileAtomic } from './atomic.js';

async function scratch(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'stevedore-atomic-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('writeFileAtomic creates missing directories, replaces content and leaves no temp file behind', async (t) => {
  const dir = await scratch(t);
  const tmp = join(dir, '_tmp');
  const dest = join(dir, 'repositories', 'a', '_manifests', 'tags', 'latest');
  await writeFileAtomic(tmp, dest, 'sha256:1');
  assert.equal(await readFile(dest, 'utf8'), 'sha256:1');
  await writeFileAtomic(tmp, dest, Buffer.from('sha256:2'));
  assert.equal(await readFile(dest, 'utf8'), 'sha256:2');
  assert.deepEqual(await readdir(tmp), []);
  assert.equal((await stat(dest)).mode & 0o777, 0o644);
});

test('writeFileAtomic into a path whose parent is a file fails and removes its temp file', async (t) => {
  const dir = await scratch(t);
  const tmp = join(dir, '_tmp');
  await writeFile(join(dir, 'file'), 'x');
  await assert.rejects(writeFileAtomic(tmp, join(dir, 'file', 'child'), 'y'));
  assert.deepEqual(await readdir(tmp), []);
});

test('tempPath names are unique inside the temp dir', () => {
  const names = new Set(Array.from({ length: 1000 }, () => tempPath('/t')));
  assert.equal(names.size, 1000);
  for (const name of names) assert.ok(name.startsWith('/t/'));
});

test('commitFile moves a file into a directory that does not exist yet', async (t) => {
  const dir = await scratch(t);
  await writeFile(join(dir, 'temp'), 'blob');
  await commitFile(join(dir, 'temp'), join(dir, 'blobs', 'sha256', 'ab', 'abcd'));
  assert.equal(await readFile(join(dir, 'blobs', 'sha256', 'ab', 'abcd'), 'utf8'), 'blob');
  await assert.rejects(stat(join(dir, 'temp')), { code: 'ENOENT' });
});

test('removeStale removes entries (files and directories) older than the grace period only', async (t) => {
  const dir = await scratch(t);
  const now = Date.now();
  const old = new Date(now - 2 * 3_600_000);
  await mkdir(join(dir, 'old-session'));
  await writeFile(join(dir, 'old-session', 'data'), 'x');
  await utimes(join(dir, 'old-session'), old, old);
  await writeFile(join(dir, 'old-file'), 'x');
  await utimes(join(dir, 'old-file'), old, old);
  await mkdir(join(dir, 'fresh-session'));
  await writeFile(join(dir, 'fresh-file'), 'x');
  assert.equal(await removeStale(dir, 3_600_000, now), 2);
  assert.deepEqual((await readdir(dir)).sort(), ['fresh-file', 'fresh-session']);
  assert.equal(await removeStale(join(dir, 'missing'), 1000), 0);
});
