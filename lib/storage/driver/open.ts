import { FilesystemDriver, type FilesystemDriverOptions } from './filesystem.js';
import type { StorageDriver } from './driver.js';
import type { StorageLocation } from './location.js';
import { createS3Client, type S3ClientOptions } from './s3-client.js';
import { S3Driver, type S3DriverOptions } from './s3.js';

export interface OpenStorageOptions {
  filesystem?: FilesystemDriverOptions;
  s3?: S3ClientOptions & Pick<S3DriverOptions, 'partSize' | 'partConcurrency'>;
}

/** The driver for a parsed location (see parseStorageLocation). */
export function openStorageDriver(location: StorageLocation, options: OpenStorageOptions = {}): StorageDriver {
  if (location.kind === 'filesystem') return new FilesystemDriver(location.root, options.filesystem);
  const { partSize, partConcurrency, ...client } = options.s3 ?? {};
  return new S3Driver({
    client: createS3Client(client),
    bucket: location.bucket,
    prefix: location.prefix,
    ...(partSize !== undefined ? { partSize } : {}),
    ...(partConcurrency !== undefined ? { partConcurrency } : {}),
  });
}
