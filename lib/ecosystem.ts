import { chmodSync, mkdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadApplianceConfig, type ApplianceConfig, type BlobServingConfig, type PeerConfig, type StorageConfig } from './config.js';
import { formatStorageLocation } from './storage/driver/location.js';
import { planAppliance, readPullSecret, type WorkerPlan } from './appliance.js';

/** The subset of PM2's app options the appliance uses (see PM2's StartOptions). */
export interface PM2App {
  name: string;
  script: string;
  args: string[];
  interpreter: string;
  exec_mode: 'fork';
  env: Record<string, string>;
  /** Time to finish in-flight requests (large blobs) before SIGKILL. */
  kill_timeout: number;
  wait_ready: boolean;
  listen_timeout: number;
  exp_backoff_restart_delay: number;
  autorestart: boolean;
  /**
   * Off: PM2's injected metrics agent (pm2-io-bpm: heap/event-loop probes, IPC pushes) made the
   * gateway collect garbage ~3x as often while streaming a cold fill (major GCs per 200 MiB fill
   * ~17 -> ~6); the appliance's own metrics are at /metrics.
   */
  pmx: boolean;
  /** Arguments to node itself (V8 settings), before the script. */
  node_args: string[];
}

const STEVEDORE_BIN = fileURLToPath(new URL('../../bin/stevedore.js', import.meta.url));

function app(name: string, args: string[], env: Record<string, string>, nodeArgs: string[] = []): PM2App {
  return {
    name, script: STEVEDORE_BIN, args, interpreter: process.execPath, exec_mode: 'fork', env,
    kill_timeout: 60_000, wait_ready: true, listen_timeout: 15_000, exp_backoff_restart_delay: 100, autorestart: true, pmx: false,
    node_args: nodeArgs,
  };
}

/**
 * Node options of the registry workers and the gateway: V8's old generation starting at 64 MB.
 *
 * Every blob byte a process receives from a socket arrives in a fresh Buffer, and V8 counts those
 * buffers against the old generation's limit, which for these processes' small heaps (~20 MB) is
 * reached after a few MB: full collections then follow one another all through a transfer, their
 * marking on V8's helper threads. Measured, without -> with:
 * - a cache worker's fill (the upstream's socket), a cold skopeo pull of 1 x 200 MiB through a worker
 *   that had served one pull: 16-20 full collections in most runs -> 0-1, worker CPU 1.18-1.35 ->
 *   0.71-0.78 s, pull 1.58-1.83 -> 1.34-1.42 s (peak RSS 145-151 -> 140-160 MB in the same runs);
 * - a hosted worker's pushes (the gateway's socket), 256 MiB straight to the worker: median
 *   monolithic 246-340 -> 336-454 MB/s, 16 MiB PATCHes 247-260 -> 275-403 MB/s (3 A/B runs), CPU per GiB
 *   ~4,000 -> ~2,500 ms, peak RSS ~105 MB both (npm run bench, same build: 143.5 vs 142.9 MB after its
 *   pushes and request-rate runs);
 * - on S3 (a socket read of the store's answer, a multipart part): a push of 10 x 20 MiB cost 13-27
 *   full collections and the pull right after it 7-10 more; 0-1 each, worker CPU per push 1.3-1.9 ->
 *   1.0-1.1 s and per pull 0.40-0.54 -> 0.20-0.25 s;
 * - the gateway (every pushed byte on its way to the worker; bench:gateway, 256 MiB pushes): CPU per
 *   GiB 3,160-3,600 -> 1,480-1,820 ms (monolithic), 3,200-4,560 -> 1,600-2,320 ms (16 MiB PATCHes),
 *   for 5-23 MB more peak RSS.
 * Blobs served from files use reused buffers and are unaffected.
 */
const LARGER_OLD_GENERATION = '--initial-old-space-size=64';

/** Node options of every registry worker (hosted and cache, any store): see LARGER_OLD_GENERATION. */
export function workerNodeArgs(): string[] {
  return [LARGER_OLD_GENERATION];
}

/** Node options of the gateway: see LARGER_OLD_GENERATION. */
export function gatewayNodeArgs(): string[] {
  return [LARGER_OLD_GENERATION];
}

/**
 * The store's settings, validated once here and passed to every service, so all of them use the same
 * store. Credentials (AWS_ACCESS_KEY_ID, a profile, web identity) are not copied: each service inherits
 * the environment and finds them through the AWS SDK's own chain, and they stay out of PM2's dump file.
 */
export function storageEnv(config: Pick<ApplianceConfig, 'root'> & StorageConfig): Record<string, string> {
  const env: Record<string, string> = { STEVEDORE_ROOT: config.root };
  if (config.storage) env.STEVEDORE_STORAGE = formatStorageLocation(config.storage);
  if (config.s3Endpoint !== undefined) env.AWS_ENDPOINT_URL = config.s3Endpoint;
  if (config.s3Region !== undefined) env.AWS_REGION = config.s3Region;
  if (config.s3ForcePathStyle !== undefined) env.STEVEDORE_S3_FORCE_PATH_STYLE = String(config.s3ForcePathStyle);
  env.STEVEDORE_S3_PART_SIZE = String(config.s3PartSize);
  if (config.sharedStore !== undefined) env.STEVEDORE_SHARED_STORE = String(config.sharedStore);
  return env;
}

/** How the processes that serve blobs (gateway, workers) serve them from a remote store. */
function servingEnv(config: BlobServingConfig): Record<string, string> {
  const env: Record<string, string> = {
    STEVEDORE_S3_REDIRECT: String(config.s3Redirect),
    STEVEDORE_S3_REDIRECT_TTL: `${config.s3RedirectTtl}ms`,
    STEVEDORE_LOCAL_CACHE_MAXSIZE: String(config.localCacheMaxSize),
  };
  if (config.localCacheDir !== undefined) env.STEVEDORE_LOCAL_CACHE_DIR = config.localCacheDir;
  return env;
}

/**
 * How fills are shared with the other appliances on the store. The token is not copied (like the
 * store's credentials): gateway and workers inherit STEVEDORE_PEER_TOKEN from the environment.
 */
function peerEnv(config: PeerConfig): Record<string, string> {
  const env: Record<string, string> = { STEVEDORE_FILL_LEASE_TIME: `${config.fillLeaseTime}ms` };
  if (config.peerUrl !== undefined) env.STEVEDORE_PEER_URL = config.peerUrl;
  if (config.peerCa !== undefined) env.STEVEDORE_PEER_CA = config.peerCa;
  return env;
}

function workerEnv(worker: WorkerPlan, config: ApplianceConfig, readOnly: boolean): Record<string, string> {
  const env: Record<string, string> = { ...storageEnv(config), ...servingEnv(config), ...peerEnv(config), STEVEDORE_LISTEN: worker.socketPath };
  if (worker.kind === 'proxy') {
    env.STEVEDORE_UPSTREAM = worker.upstreamUrl!;
    env.STEVEDORE_AUTH_FILE = config.pullSecretPath;
    // The gateway answers cached tags itself within this TTL: both must use the same one.
    env.STEVEDORE_TAG_TTL = `${config.tagTtl}ms`;
    env.STEVEDORE_READ_ONLY = 'false';
  } else {
    env.STEVEDORE_READ_ONLY = String(readOnly);
  }
  return env;
}

/**
 * The PM2 apps of the appliance, derived from its configuration (environment and pull secret):
 * the gateway, the hosted registry, one cache worker per upstream, the logger and the cleaner. ecosystem.config.js exports
 * exactly this. Synchronous, because PM2 loads the ecosystem file with require().
 */
export function buildEcosystem(env: NodeJS.ProcessEnv = process.env): { apps: PM2App[] } {
  const config = loadApplianceConfig([], env);
  const plan = planAppliance(config, readPullSecret(config.pullSecretPath));
  // Only the gateway (same user) may reach the workers' sockets.
  mkdirSync(config.runDir, { recursive: true, mode: 0o700 });
  // mkdir's mode applies only when it creates the directory: an existing one (the image's
  // `mkdir -p /run/stevedore`, 0755) is made private here, unless it is a shared one like /tmp.
  const runDirMode = statSync(config.runDir).mode;
  if (runDirMode & 0o1000) throw new Error(`STEVEDORE_RUN_DIR ${config.runDir} is a shared (sticky) directory: use a directory of its own, e.g. ${config.runDir.replace(/\/$/, '')}/stevedore`);
  if ((runDirMode & 0o777) !== 0o700) chmodSync(config.runDir, 0o700);
  mkdirSync(config.root, { recursive: true });
  const apps: PM2App[] = [app('gateway', ['gateway'], { ...storageEnv(config), ...servingEnv(config), ...peerEnv(config) }, gatewayNodeArgs())];
  apps.push(app(plan.hosted.name, ['registry'], workerEnv(plan.hosted, config, config.hostedReadOnly), workerNodeArgs()));
  for (const proxy of plan.proxies) apps.push(app(proxy.name, ['registry'], workerEnv(proxy, config, false), workerNodeArgs()));
  apps.push(app('logger', ['logger'], storageEnv(config)));
  apps.push(app('cleaner', ['cleaner'], storageEnv(config)));
  return { apps };
}
