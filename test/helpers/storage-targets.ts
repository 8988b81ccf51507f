import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { defaultStorageConfig, type StorageConfig } from '../../lib/config.js';
import { formatStorageLocation, type StorageLocation } from '../../lib/storage/driver/location.js';
import { openConfiguredStorage } from '../../lib/storage/driver/open.js';
import type { StorageDriver } from '../../lib/storage/driver/driver.js';
import { parseCephEnv } from './ceph.js';
import { REPO_ROOT, tempDir } from './processes.js';

/** The drivers every end-to-end suite runs on ("parameterize, don't copy"). */
export const STORAGE_KINDS = ['filesystem', 's3'] as const;
export type StorageKind = (typeof STORAGE_KINDS)[number];

/** One test's store: a fresh directory, or a fresh prefix in the run's Ceph RGW bucket. */
export interface TestStorage {
  kind: StorageKind;
  /** The local directory (--root): the store itself on the filesystem; logs and state with S3. */
  root: string;
  location: StorageLocation;
  /** The store as --storage / STEVEDORE_STORAGE text. */
  storage: string;
  /** Arguments that point a command at this store, besides --root: `--storage s3://…`, or none. */
  args: string[];
  /** Environment for a child process: STEVEDORE_STORAGE and the AWS_* of the store (none on the filesystem). */
  env: Record<string, string>;
  /** The storage settings for a config built in code (spread into it). */
  settings: StorageConfig;
  /** A driver on the same store, for a test to look at what was written. */
  driver: StorageDriver;
  /** S3: the Ceph RGW cluster's directory, whose access log (test/helpers/rgw-log.ts) counts a test's S3 requests. */
  rgwDir?: string;
  /** Removes the directory (and, on S3, every key under the prefix). */
  cleanup(): Promise<void>;
}

interface RgwEnv {
  dir: string;
  endpoint: string;
  bucket: string;
  /** AWS_* variables: endpoint, region, credentials. */
  aws: Record<string, string>;
}

const SCRIPT = join(REPO_ROOT, 'scripts', 'ceph-rgw.sh');
let rgw: RgwEnv | undefined;

/**
 * The run's Ceph RGW: scripts/run-tests.js starts one for the whole run and names its directory in
 * STEVEDORE_TEST_RGW_DIR. A test file run alone starts its own (~3 s), stopped when the process exits.
 * The AWS_* credentials go into this process's environment, where the SDK's credential chain finds
 * them as it would in a deployed service.
 */
function sharedRgw(): RgwEnv {
  if (rgw) return rgw;
  let dir = process.env.STEVEDORE_TEST_RGW_DIR;
  let text: string;
  if (dir) {
    text = execFileSync('bash', [SCRIPT, 'env', dir], { encoding: 'utf8' });
  } else {
    dir = join('/tmp', `stevedore-test-rgw-${process.pid}`);
    text = execFileSync('bash', [SCRIPT, 'start', dir], { encoding: 'utf8', timeout: 90_000 });
    const own = dir;
    process.once('exit', () => {
      try {
        execFileSync('bash', [SCRIPT, 'stop', own]);
        execFileSync('rm', ['-rf', own]);
      } catch {
        // Best effort: the daemons are killed by pid file; a left-over dir in /tmp is harmless.
      }
    });
  }
  const { CEPH_RGW_BUCKET: bucket, ...aws } = parseCephEnv(text);
  if (!bucket || !aws.AWS_ENDPOINT_URL) throw new Error(`ceph-rgw.sh printed no endpoint for ${dir}:\n${text}`);
  for (const [key, value] of Object.entries(aws)) {
    if (key !== 'AWS_ENDPOINT_URL' && key !== 'AWS_REGION') process.env[key] = value;
  }
  rgw = { dir, endpoint: aws.AWS_ENDPOINT_URL, bucket, aws };
  return rgw;
}

/** A fresh store of the given kind for one test. */
export async function testStorage(kind: StorageKind): Promise<TestStorage> {
  const root = await tempDir(`stevedore-${kind}-`);
  if (kind === 'filesystem') {
    const location: StorageLocation = { kind: 'filesystem', root };
    const settings = defaultStorageConfig();
    return {
      kind, root, location, storage: root, args: [], env: {}, settings,
      driver: await openConfiguredStorage(location, settings),
      cleanup: () => rm(root, { recursive: true, force: true }),
    };
  }
  const store = sharedRgw();
  const location: StorageLocation = { kind: 's3', bucket: store.bucket, prefix: `t-${randomUUID()}` };
  const storage = formatStorageLocation(location);
  const settings: StorageConfig = { ...defaultStorageConfig(), storage: location, s3Endpoint: store.endpoint, s3Region: store.aws.AWS_REGION };
  const driver = await openConfiguredStorage(location, settings);
  return {
    kind, root, location, storage, settings, driver, rgwDir: store.dir,
    args: ['--storage', storage],
    env: { STEVEDORE_STORAGE: storage, ...store.aws },
    cleanup: async () => {
      // Memstore keeps objects in RAM: empty the prefix (and abort its unfinished multipart uploads).
      await emptyStore(driver).catch(() => {});
      await rm(root, { recursive: true, force: true });
    },
  };
}

async function emptyStore(driver: StorageDriver): Promise<void> {
  const top = await driver.list('', { delimiter: '/' });
  for (const prefix of top.prefixes) await driver.deletePrefix(prefix);
  for (const key of top.keys) await driver.delete(key.key);
  for await (const write of driver.listIncompleteWrites()) await driver.abortIncompleteWrite(write);
}

/** Whether this machine can run the S3 suites (the install command installs Ceph). */
export function cephInstalled(): boolean {
  return existsSync('/usr/bin/radosgw');
}
