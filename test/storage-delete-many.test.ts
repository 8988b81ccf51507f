import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * StorageDriver.deleteMany (the cleaner's eviction and link pruning remove keys with it; on S3 one
 * DeleteObjects request per 1,000 keys) and deletePrefix, on both drivers: exactly the keys named
 * go, missing keys are no error, a batch boundary loses nothing.
 */
for (const kind of STORAGE_KINDS) {
  describe(`deleteMany on ${kind}`, () => {
    let storage: TestStorage;
    before(async () => {
      storage = await testStorage(kind);
    });
    after(async () => {
      await storage?.cleanup();
    });

    const keysUnder = async (prefix: string): Promise<string[]> => {
      const keys: string[] = [];
      for await (const info of storage.driver.walk(prefix)) keys.push(info.key);
      return keys.sort();
    };

    it('removes exactly the keys named, across more than one 1,000-key batch; missing keys are no error', async () => {
      const keys = Array.from({ length: 1_050 }, (_, i) => `blobs/sha256/${String(i % 7).padStart(2, '0')}/k${String(i).padStart(5, '0')}`);
      for (let i = 0; i < keys.length; i += 50) {
        await Promise.all(keys.slice(i, i + 50).map((key) => storage.driver.putContent(key, `content of ${key}`)));
      }
      const doomed = keys.filter((_, i) => i % 3 !== 0);
      await storage.driver.deleteMany([...doomed, 'blobs/sha256/99/never-written']);
      const kept = keys.filter((_, i) => i % 3 === 0).sort();
      assert.deepEqual(await keysUnder('blobs/'), kept);
      assert.equal((await storage.driver.getContent(kept[0]!)).toString('utf8'), `content of ${kept[0]}`);
      await storage.driver.deleteMany([]);
      assert.equal(await storage.driver.deletePrefix('blobs/'), kept.length);
      assert.deepEqual(await keysUnder('blobs/'), []);
    });
  });
}
