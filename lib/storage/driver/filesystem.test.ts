import assert from 'node:assert/strict';
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { digestOf } from '../../oci/digest.js';
import { StorageLayout } from '../layout.js';
import { driverConformance } from '../../../test/helpers/storage-driver-suite.js';
import { tempDir } from '../../../test/helpers/processes.js';
import { FilesystemDriver } from './filesystem.js';

const dirs: string[] = [];
after(async () => {
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

async function fresh(): Promise<FilesystemDriver> {
  const dir = await tempDir('stevedore-fsdriver-');
  dirs.push(dir);
  return new FilesystemDriver(dir);
}

driverConformance('filesystem', {
  open: fresh,
  reopen: (driver) => new FilesystemDriver((driver as FilesystemDriver).root),
  locationOf: (driver) => (driver as FilesystemDriver).root,
  partSize: 5 * 1024 * 1024,
});

test('filesystem driver: layout keys are today\'s files, byte for byte', async () => {
  const driver = await fresh();
  const layout = new StorageLayout(driver.root);
  const content = Buffer.from('{"schemaVersion":2}');
  const digest = digestOf(content);
  const blobKey = `blobs/sha256/${digest.hex.slice(0, 2)}/${digest.hex}`;
  const writer = await driver.blobWriter(blobKey);
  await writer.write(content);
  await writer.commit(digest);
  assert.ok((await readFile(layout.blobPath(digest))).equals(content));
  await driver.putContent('repositories/team/app/_manifests/tags/1.0', digest.value);
  assert.equal(await readFile(layout.tagPath('team/app', '1.0'), 'utf8'), digest.value);
  // Upload sessions: _uploads/<id>/data and state.json {name, offset, startedAt}, as the upload store writes them.
  const id = '5e7e1a2b-0000-4000-8000-00000000000a';
  await driver.uploads.create(id, { name: 'team/app' });
  await driver.uploads.append(id, 0, (async function* () { yield Buffer.from('hello'); })());
  assert.equal(await readFile(layout.uploadDataPath(id), 'utf8'), 'hello');
  const state = JSON.parse(await readFile(layout.uploadStatePath(id), 'utf8')) as Record<string, unknown>;
  assert.deepEqual(Object.keys(state), ['name', 'offset', 'startedAt']);
  assert.equal(state.name, 'team/app');
  assert.equal(state.offset, 5);
  // Temp files stay in _tmp/, which listings never show; a delete prunes emptied directories.
  assert.deepEqual((await driver.list('', { delimiter: '/' })).prefixes, ['_uploads/', 'blobs/', 'repositories/']);
  await driver.delete('repositories/team/app/_manifests/tags/1.0');
  await assert.rejects(stat(join(driver.root, 'repositories')), { code: 'ENOENT' });
  assert.deepEqual(await readdir(join(driver.root, '_tmp', '_storage')).then((e) => e.filter((n) => !n.startsWith('.'))), []);
});
