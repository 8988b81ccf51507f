import { mkdir } from 'node:fs/promises';
import { StoreWriter } from '../lib/airgap/store-writer.js';
import { removeStale } from '../lib/storage/atomic.js';
import { StorageLayout } from '../lib/storage/layout.js';
import { ConfigError } from '../lib/config.js';
import { formatStorageLocation, type StorageLocation } from '../lib/storage/driver/location.js';
import { BlobStore } from '../lib/storage/blob-store.js';
import { ManifestStore } from '../lib/storage/manifest-store.js';
import { FilesystemDriver } from '../lib/storage/driver/filesystem.js';

/**
 * The directory of a filesystem store. Transitional: the air-gap commands still write through file
 * paths, so an s3:// store is refused here with a clear message until they move onto the driver.
 */
export function storeDirectory(location: StorageLocation, flag = '--store'): string {
  if (location.kind === 'filesystem') return location.root;
  throw new ConfigError(`${flag} ${formatStorageLocation(location)}: this command does not support S3 stores yet`);
}

/** Temp files older than this in a store's temp dirs are left-overs of interrupted runs. */
const STALE_TEMP_MS = 24 * 3_600_000;

/**
 * A writer into the hosted store at `dir` (created if missing), through the registry's own blob
 * and manifest stores, with left-over temp files of interrupted runs removed from the store's temp
 * dir and from `moreTempDirs`. Used by `stevedore mirror` and `stevedore seed`.
 */
export async function openStoreWriter(dir: string, moreTempDirs: string[] = []): Promise<StoreWriter> {
  const layout = new StorageLayout(dir);
  const blobStore = new BlobStore(new FilesystemDriver(dir), layout);
  const writer = new StoreWriter(layout, blobStore, new ManifestStore(blobStore));
  await mkdir(dir, { recursive: true });
  await writer.ensureDirs();
  for (const temp of [layout.tmpDir, ...moreTempDirs]) await removeStale(temp, STALE_TEMP_MS);
  return writer;
}
