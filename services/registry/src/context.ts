import type { Logger } from '../../../lib/log.js';
import type { RegistryConfig } from '../../../lib/config.js';
import type { StorageLayout } from '../../../lib/storage/layout.js';
import type { BlobStore } from './store/blob-store.js';
import type { ManifestStore } from './store/manifest-store.js';
import type { UploadStore } from './store/upload-store.js';
import type { ProxyCache } from './proxy/proxy-cache.js';

/** What every route handler works with: the stores of one worker and its settings. */
export interface RegistryContext {
  config: Pick<RegistryConfig, 'readOnly' | 'manifestMaxSize'>;
  log: Logger;
  layout: StorageLayout;
  blobs: BlobStore;
  manifests: ManifestStore;
  uploads: UploadStore;
  /** Set on a pull-through cache worker. */
  proxy?: ProxyCache;
}
