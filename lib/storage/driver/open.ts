import { FilesystemDriver, type FilesystemDriverOptions } from './filesystem.js';
import type { StorageDriver } from './driver.js';
import type { StorageLocation } from './location.js';
import type { S3ClientOptions } from './s3-client.js';
import type { S3DriverOptions } from './s3.js';

export interface OpenStorageOptions {
  filesystem?: FilesystemDriverOptions;
  s3?: S3ClientOptions & Pick<S3DriverOptions, 'partSize' | 'partConcurrency'>;
}

/**
 * The driver for a parsed location (see parseStorageLocation). The S3 driver and the AWS SDK are
 * loaded only for an S3 location: on a directory store every process is ~16 MB smaller without them.
 */
export async function openStorageDriver(location: StorageLocation, options: OpenStorageOptions = {}): Promise<StorageDriver> {
  if (location.kind === 'filesystem') return new FilesystemDriver(location.root, options.filesystem);
  const [{ createS3Client }, { S3Driver }] = await Promise.all([import('./s3-client.js'), import('./s3.js')]);
  const { partSize, partConcurrency, ...client } = options.s3 ?? {};
  return new S3Driver({
    client: createS3Client(client),
    bucket: location.bucket,
    prefix: location.prefix,
    ...(partSize !== undefined ? { partSize } : {}),
    ...(partConcurrency !== undefined ? { partConcurrency } : {}),
  });
}

/** The S3 settings of lib/config.ts's STORAGE_OPTIONS (a command's config has them all). */
export interface StorageSettings {
  s3Endpoint: string | undefined;
  s3Region: string | undefined;
  s3ForcePathStyle: boolean | undefined;
  s3PartSize: number;
}

/** The driver of a command's store, from its configuration (see storageLocationOf in lib/config.ts). */
export function openConfiguredStorage(location: StorageLocation, settings: StorageSettings): Promise<StorageDriver> {
  return openStorageDriver(location, {
    s3: {
      ...(settings.s3Endpoint !== undefined ? { endpoint: settings.s3Endpoint } : {}),
      ...(settings.s3Region !== undefined ? { region: settings.s3Region } : {}),
      ...(settings.s3ForcePathStyle !== undefined ? { forcePathStyle: settings.s3ForcePathStyle } : {}),
      partSize: settings.s3PartSize,
    },
  });
}
