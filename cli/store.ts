import { DriverStoreTarget, type StoreTarget } from '../lib/airgap/store-target.js';
import { StoreWriter } from '../lib/airgap/store-writer.js';
import { removeStale } from '../lib/storage/atomic.js';
import { openConfiguredStorage, type StorageSettings } from '../lib/storage/driver/open.js';
import type { StorageLocation } from '../lib/storage/driver/location.js';

/** Blob writes and extracted inputs older than this are left-overs of interrupted runs. */
const STALE_TEMP_MS = 24 * 3_600_000;

/** The store of an air-gap command (`--store` / `--storage`: a directory or s3://…), on its driver. */
export async function openStoreTarget(location: StorageLocation, settings: StorageSettings): Promise<StoreTarget> {
  return new DriverStoreTarget(await openConfiguredStorage(location, settings));
}

/**
 * A writer into the hosted store, with left-over blob writes of interrupted runs aborted (temp
 * files on disk, multipart uploads on S3) and stale entries of the local `moreTempDirs` removed.
 * Used by `stevedore mirror` and `stevedore seed`.
 */
export async function openStoreWriter(target: StoreTarget, moreTempDirs: string[] = []): Promise<StoreWriter> {
  await target.abortStaleWrites(STALE_TEMP_MS);
  for (const temp of moreTempDirs) await removeStale(temp, STALE_TEMP_MS);
  return new StoreWriter(target);
}
