import type { Logger } from '../../../lib/log.js';
import type { RegistryConfig } from '../../../lib/config.js';
import type { StorageDriver } from '../../../lib/storage/driver/driver.js';
import type { StorageLayout } from '../../../lib/storage/layout.js';
import type { BlobStore } from '../../../lib/storage/blob-store.js';
import type { ManifestStore } from '../../../lib/storage/manifest-store.js';
import type { UploadStore } from '../../../lib/storage/upload-store.js';
import type { ProxyCache } from './proxy/proxy-cache.js';
import type { RemoteBlobSource } from '../../../lib/storage/remote-blob-source.js';

/** What every route handler works with: the stores of one worker and its settings. */
export interface RegistryContext {
  config: Pick<RegistryConfig, 'readOnly' | 'manifestMaxSize'>;
  log: Logger;
  /** The store (a directory or an S3 bucket): every read and write of the stores goes through it. */
  driver: StorageDriver;
  layout: StorageLayout;
  blobs: BlobStore;
  manifests: ManifestStore;
  uploads: UploadStore;
  /** How blob GETs are served from a store that is not a directory (S3): redirect, local read cache, stream. */
  remoteBlobs?: RemoteBlobSource;
  /** Set on a pull-through cache worker. */
  proxy?: ProxyCache;
}
