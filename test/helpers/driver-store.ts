import type { StorageDriver } from '../../lib/storage/driver/driver.js';
import { parseDigest } from '../../lib/oci/digest.js';
import { StorageLayout } from '../../lib/storage/layout.js';
import type { BuiltImage } from './oci-image.js';

/**
 * Writes images into a store through the storage driver, in the layout the registry workers write
 * (blobs, revision, tag, layer links): the same on disk and on S3, for the storage-control suites.
 */
export class DriverStore {
  readonly hosted = new StorageLayout('');

  constructor(readonly driver: StorageDriver) {}

  cache(namespace: string): StorageLayout {
    return new StorageLayout('', { namespace });
  }

  async blob(data: Buffer, digest: string): Promise<void> {
    await this.driver.putContent(this.hosted.blobKey(parseDigest(digest)), data);
  }

  /** Stores `image` in `repository` of `layout` (hosted, or a cache namespace), tagged `tag`. */
  async image(layout: StorageLayout, repository: string, tag: string, image: BuiltImage): Promise<void> {
    for (const b of [image.manifest, image.config, ...image.layers]) await this.blob(b.data, b.digest);
    const manifest = parseDigest(image.manifest.digest);
    await this.driver.putContent(layout.manifestRevisionKey(repository, manifest), image.manifest.mediaType);
    await this.driver.putContent(layout.tagKey(repository, tag), image.manifest.digest);
    for (const b of [image.config, ...image.layers]) await this.driver.putContent(layout.layerLinkKey(repository, parseDigest(b.digest)), '');
  }

  async has(digest: string): Promise<boolean> {
    return this.driver.stat(this.hosted.blobKey(parseDigest(digest))).then(() => true, () => false);
  }

  /** Every key under `prefix`. */
  async keys(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const info of this.driver.walk(prefix)) keys.push(info.key);
    return keys.sort();
  }
}
