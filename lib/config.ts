import { dirname, isAbsolute, resolve } from 'node:path';
import { parseAliases } from './appliance.js';
import { parseDuration } from './duration.js';
import { parseSize } from './size.js';
import { parseUpstream, type UpstreamEndpoint } from './upstreams.js';
import { parsePlatforms, type Platform } from './airgap/platform.js';
import { isValidName } from './oci/reference.js';
import { parseStorageLocation, type StorageLocation } from './storage/driver/location.js';
import { DEFAULT_PART_SIZE, MIN_PART_SIZE } from './storage/driver/s3-part-size.js';

/**
 * The one place that reads configuration: command-line options and environment variables, with
 * defaults and validation. A bad value throws ConfigError naming the option and its variable.
 */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export type ListenAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'socket'; path: string };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** One option: its flag, its variable, its default and how a raw string becomes a value. */
interface OptionSpec<T> {
  flag: string;
  env: string;
  description: string;
  default: T;
  /** Boolean options are bare flags (`--read-only`). */
  boolean?: boolean;
  /** May be given more than once (`--platform a --platform b`); the values arrive comma-separated. */
  repeatable?: boolean;
  parse: (raw: string) => T;
}

function option<T>(spec: OptionSpec<T>): OptionSpec<T> {
  return spec;
}

export function parseListen(raw: string): ListenAddress {
  const value = raw.trim();
  if (value.startsWith('unix:')) {
    // resolve('') would be the working directory.
    if (value.slice(5).trim() === '') throw new Error('unix: needs a socket path');
    return { kind: 'socket', path: resolve(value.slice(5)) };
  }
  if (isAbsolute(value) || value.startsWith('./') || value.endsWith('.sock')) return { kind: 'socket', path: resolve(value) };
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(value);
  if (!match) throw new Error(`expected HOST:PORT, [IPv6]:PORT or a unix socket path, got "${raw}"`);
  const host = match[1] ?? match[2] ?? '';
  const port = Number(match[3]);
  if (port > 65535) throw new Error(`port ${port} is out of range (0-65535)`);
  return { kind: 'tcp', host: host === '' ? '127.0.0.1' : host, port };
}

export function parseBoolean(raw: string): boolean {
  const value = raw.trim().toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(value)) return true;
  if (['0', 'false', 'no', 'off', ''].includes(value)) return false;
  throw new Error(`expected true or false, got "${raw}"`);
}

function parseLogLevel(raw: string): LogLevel {
  const value = raw.trim().toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(value)) throw new Error(`expected one of ${LOG_LEVELS.join(', ')}`);
  return value as LogLevel;
}

function parsePositiveDuration(raw: string): number {
  const ms = parseDuration(raw);
  if (ms <= 0) throw new Error('must be greater than zero');
  return ms;
}

function parsePositiveSize(raw: string): number {
  const bytes = parseSize(raw);
  if (bytes <= 0) throw new Error('must be greater than zero');
  return bytes;
}

function parseHttpUrl(raw: string): string {
  const value = raw.trim();
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`expected an http(s):// URL, got "${raw}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`expected an http(s):// URL, got "${raw}"`);
  return value.replace(/\/+$/, '');
}

/**
 * Where the store lives, on every command that has one. `--root` stays the local directory of
 * state (logs, offsets, temp files) and, without `--storage`, the filesystem store itself.
 * The S3 settings use the AWS SDK's own variable names; credentials come from the SDK's chain.
 */
export const STORAGE_OPTIONS = {
  storage: option<StorageLocation | undefined>({
    flag: 'storage', env: 'STEVEDORE_STORAGE', default: undefined,
    description: 'the store: a directory or s3://BUCKET[/PREFIX] (default: the --root directory)', parse: (raw) => parseStorageLocation(raw),
  }),
  s3Endpoint: option<string | undefined>({
    flag: 's3-endpoint', env: 'AWS_ENDPOINT_URL', default: undefined,
    description: 'S3 endpoint URL of a non-AWS store (Ceph RGW, MinIO, R2); default: AWS', parse: parseHttpUrl,
  }),
  s3Region: option<string | undefined>({
    flag: 's3-region', env: 'AWS_REGION', default: undefined, description: 'S3 region (default us-east-1)',
    parse: (raw) => {
      if (!/^[a-z0-9-]{1,64}$/i.test(raw.trim())) throw new Error(`expected a region name like eu-west-1, got "${raw}"`);
      return raw.trim();
    },
  }),
  s3ForcePathStyle: option<boolean | undefined>({
    flag: 's3-force-path-style', env: 'STEVEDORE_S3_FORCE_PATH_STYLE', default: undefined,
    description: 'path-style S3 URLs (default: true when an endpoint is given)', parse: parseBoolean,
  }),
  s3PartSize: option<number>({
    flag: 's3-part-size', env: 'STEVEDORE_S3_PART_SIZE', default: DEFAULT_PART_SIZE,
    description: 'multipart upload part size (at least 5MiB)', parse: (raw) => {
      const bytes = parseSize(raw);
      if (bytes < MIN_PART_SIZE) throw new Error('must be at least 5MiB (S3\'s smallest part)');
      return bytes;
    },
  }),
  sharedStore: option<boolean | undefined>({
    flag: 'shared-store', env: 'STEVEDORE_SHARED_STORE', default: undefined,
    description: 'other appliances write to this store too (several behind a load balancer): read tags, revisions and links from it on every request', parse: parseBoolean,
  }),
} as const;

export type StorageConfig = OptionValues<typeof STORAGE_OPTIONS>;

/** How a process that serves blobs from a remote store (S3) serves them; ignored on the filesystem. */
export const BLOB_SERVING_OPTIONS = {
  s3Redirect: option<boolean>({
    flag: 's3-redirect', env: 'STEVEDORE_S3_REDIRECT', default: false, boolean: true,
    description: 'answer blob GETs with a 307 to a presigned S3 URL (clients must reach the store)', parse: parseBoolean,
  }),
  s3RedirectTtl: option<number>({
    flag: 's3-redirect-ttl', env: 'STEVEDORE_S3_REDIRECT_TTL', default: 10 * 60_000,
    description: 'how long a presigned blob URL is valid (at most 7d)', parse: (raw) => {
      const ms = parsePositiveDuration(raw);
      if (ms < 1000 || ms > 7 * 24 * 3_600_000) throw new Error('must be from 1s to 7d');
      return ms;
    },
  }),
  localCacheDir: option<string | undefined>({
    flag: 'local-cache-dir', env: 'STEVEDORE_LOCAL_CACHE_DIR', default: undefined,
    description: 'keep hot blobs of a remote store on this local directory (off when unset)', parse: parsePath,
  }),
  localCacheMaxSize: option<number>({
    flag: 'local-cache-max-size', env: 'STEVEDORE_LOCAL_CACHE_MAXSIZE', default: 10 * 1024 ** 3,
    description: 'bound of the local blob cache (10G = 10 GiB)', parse: parsePositiveSize,
  }),
} as const;

export type BlobServingConfig = OptionValues<typeof BLOB_SERVING_OPTIONS>;

/**
 * Several appliances on one store (issue 12): a cache fill takes a lease in the store naming this
 * appliance's peer URL, and the other appliances stream that fill from here instead of fetching the
 * blob from the upstream again. Worker (reads and writes leases, fetches from peers) and gateway
 * (admits peers with the token) both read these.
 */
export const PEER_OPTIONS = {
  peerUrl: option<string | undefined>({
    flag: 'peer-url', env: 'STEVEDORE_PEER_URL', default: undefined,
    description: 'this appliance\'s gateway as the other appliances on the store reach it (https://10.0.0.5:8443)', parse: parseHttpUrl,
  }),
  peerToken: option<string | undefined>({
    flag: 'peer-token', env: 'STEVEDORE_PEER_TOKEN', default: undefined,
    description: 'secret shared by the appliances on one store: admits their fill requests (16+ characters)', parse: (raw) => {
      if (raw.length < 16 || /[\s\0]/.test(raw)) throw new Error('must be at least 16 characters, without spaces');
      return raw;
    },
  }),
  peerCa: option<string | undefined>({
    flag: 'peer-ca', env: 'STEVEDORE_PEER_CA', default: undefined,
    description: 'PEM of the CA (or the shared certificate) that peers\' TLS certificates must chain to; unset: not verified (blobs are digest-checked either way)', parse: parsePath,
  }),
  fillLeaseTime: option<number>({
    flag: 'fill-lease-time', env: 'STEVEDORE_FILL_LEASE_TIME', default: 15_000,
    description: 'shared store: how long a cache fill\'s lease lasts without renewal (others take a dead filler\'s fill over after it)', parse: (raw) => {
      const ms = parsePositiveDuration(raw);
      if (ms < 1000) throw new Error('must be at least 1s');
      return ms;
    },
  }),
} as const;

export type PeerConfig = OptionValues<typeof PEER_OPTIONS>;

/** The storage settings when nothing is set: the store is --root on disk (for configs built in code). */
export function defaultStorageConfig(): StorageConfig {
  return resolveOptions(STORAGE_OPTIONS, [], {});
}

/**
 * Whether the store may be written by processes of OTHER appliances, which cannot tell this one: then
 * mutable facts (tag -> digest, revision and link existence) are read from the store on every request
 * instead of trusted for a second or more, so a push or delete acknowledged by any appliance is seen by
 * all at once. Off unless set: one appliance (on a directory or S3) has processes that tell each other,
 * and reading every tag from S3 costs ~100x in manifest GETs (bench/shared-store-bench.ts); running N
 * appliances on one bucket is a deliberate setup that sets it (deploy/, README).
 */
export function isSharedStore(config: Pick<StorageConfig, 'storage' | 'sharedStore'>): boolean {
  return config.sharedStore ?? false;
}

/** The store of a command: `--storage`, else the filesystem directory `fallbackRoot` (its --root/--store). */
export function storageLocationOf(config: Pick<StorageConfig, 'storage'>, fallbackRoot: string): StorageLocation {
  return config.storage ?? { kind: 'filesystem', root: fallbackRoot };
}

export const REGISTRY_OPTIONS = {
  listen: option<ListenAddress>({
    flag: 'listen', env: 'STEVEDORE_LISTEN', default: { kind: 'tcp', host: '127.0.0.1', port: 5000 },
    description: 'HOST:PORT or unix socket path to listen on', parse: parseListen,
  }),
  root: option<string>({
    flag: 'root', env: 'STEVEDORE_ROOT', default: '/var/lib/registry',
    description: 'local directory: the store (without --storage), logs and state', parse: (raw) => {
      if (raw.trim() === '' || raw.includes('\0')) throw new Error('must be a directory path');
      return resolve(raw);
    },
  }),
  readOnly: option<boolean>({
    flag: 'read-only', env: 'STEVEDORE_READ_ONLY', default: false, boolean: true,
    description: 'serve reads only; every write answers 405 UNSUPPORTED', parse: parseBoolean,
  }),
  logLevel: option<LogLevel>({
    flag: 'log-level', env: 'LOG_LEVEL', default: 'info', description: LOG_LEVELS.join('|'), parse: parseLogLevel,
  }),
  uploadTtl: option<number>({
    flag: 'upload-ttl', env: 'STEVEDORE_UPLOAD_TTL', default: 24 * 3_600_000,
    description: 'idle upload sessions older than this are removed at start-up', parse: parsePositiveDuration,
  }),
  manifestMaxSize: option<number>({
    flag: 'manifest-max-size', env: 'STEVEDORE_MANIFEST_MAX_SIZE', default: 4 * 1024 * 1024,
    description: 'largest manifest accepted on push (413 above)', parse: parsePositiveSize,
  }),
  upstream: option<UpstreamEndpoint | undefined>({
    flag: 'upstream', env: 'STEVEDORE_UPSTREAM', default: undefined,
    description: 'run as a pull-through cache of this registry (host or URL; docker.io maps to Docker Hub)', parse: parseUpstream,
  }),
  authFile: option<string | undefined>({
    flag: 'auth-file', env: 'STEVEDORE_AUTH_FILE', default: undefined,
    description: 'docker "auths" JSON (pull-secret.json) with the upstream credentials', parse: (raw) => resolve(raw),
  }),
  tagTtl: option<number>({
    flag: 'tag-ttl', env: 'STEVEDORE_TAG_TTL', default: 5 * 60_000,
    description: 'proxy: how long a cached tag is served before it is revalidated upstream (HEAD)', parse: parseDuration,
  }),
  negativeTtl: option<number>({
    flag: 'negative-ttl', env: 'STEVEDORE_NEGATIVE_TTL', default: 15_000,
    description: 'proxy: how long an upstream 404 is remembered', parse: parseDuration,
  }),
  upstreamTimeout: option<number>({
    flag: 'upstream-timeout', env: 'STEVEDORE_UPSTREAM_TIMEOUT', default: 30_000,
    description: 'proxy: connect, response-header and idle-body timeout for upstream requests', parse: parsePositiveDuration,
  }),
  fillTimeout: option<number>({
    flag: 'fill-timeout', env: 'STEVEDORE_FILL_TIMEOUT', default: 5 * 60_000,
    description: 'proxy: how long a blob download goes on after its last client left', parse: parsePositiveDuration,
  }),
  ...STORAGE_OPTIONS,
  ...BLOB_SERVING_OPTIONS,
  ...PEER_OPTIONS,
} as const;

type OptionValues<S extends Record<string, OptionSpec<unknown>>> = { [K in keyof S]: S[K] extends OptionSpec<infer T> ? T : never };

export type RegistryConfig = OptionValues<typeof REGISTRY_OPTIONS>;

/** Resolves options: command-line flag, else environment variable, else default. */
export function resolveOptions<S extends Record<string, OptionSpec<unknown>>>(
  specs: S,
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): OptionValues<S> {
  const byFlag = new Map<string, [string, OptionSpec<unknown>]>();
  for (const [key, spec] of Object.entries(specs)) byFlag.set(spec.flag, [key, spec]);
  const fromArgv = new Map<string, string>();
  const put = (key: string, spec: OptionSpec<unknown>, value: string) => {
    const previous = fromArgv.get(key);
    fromArgv.set(key, spec.repeatable && previous !== undefined ? `${previous},${value}` : value);
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) throw new ConfigError(`unexpected argument "${arg}"`);
    const eq = arg.indexOf('=');
    const flag = arg.slice(2, eq === -1 ? undefined : eq);
    const entry = byFlag.get(flag);
    if (!entry) throw new ConfigError(`unknown option --${flag} (known: ${[...byFlag.keys()].map((f) => `--${f}`).join(', ')})`);
    const [key, spec] = entry;
    if (eq !== -1) put(key, spec, arg.slice(eq + 1));
    else if (spec.boolean) fromArgv.set(key, 'true');
    else {
      const next = argv[++i];
      // `--root --read-only` is a forgotten value, not a root named "--read-only" (use --flag=VALUE for that).
      if (next === undefined || next.startsWith('--')) throw new ConfigError(`option --${flag} needs a value`);
      put(key, spec, next);
    }
  }
  const result: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(specs)) {
    const raw = fromArgv.get(key);
    const source = raw !== undefined ? `--${spec.flag}` : `${spec.env}`;
    const value = raw ?? env[spec.env];
    if (value === undefined) {
      result[key] = spec.default;
      continue;
    }
    try {
      result[key] = spec.parse(value);
    } catch (err) {
      throw new ConfigError(`invalid ${source} (option --${spec.flag}, variable ${spec.env}): ${(err as Error).message}`);
    }
  }
  return result as OptionValues<S>;
}

export function optionsHelp(specs: Record<string, OptionSpec<unknown>>): string {
  return Object.values(specs)
    .map((s) => `  --${s.flag}${s.boolean ? '' : ' VALUE'}${s.repeatable ? ' ...' : ''}  (${s.env})  ${s.description}`)
    .join('\n');
}

function parseList(raw: string): string[] {
  return raw.split(/[\s,]+/).map((s) => s.trim().toLowerCase()).filter(Boolean);
}

function parsePath(raw: string): string {
  if (raw.trim() === '' || raw.includes('\0')) throw new Error('must be a file path');
  return resolve(raw);
}

/** The appliance: gateway, worker layout and users. Variable names follow registry-cache and distribution. */
export const APPLIANCE_OPTIONS = {
  listen: option<ListenAddress>({
    flag: 'listen', env: 'STEVEDORE_GATEWAY_LISTEN', default: { kind: 'tcp', host: '0.0.0.0', port: 8443 },
    description: 'where the gateway listens (HOST:PORT)', parse: parseListen,
  }),
  root: REGISTRY_OPTIONS.root,
  runDir: option<string>({
    flag: 'run-dir', env: 'STEVEDORE_RUN_DIR', default: '/tmp/stevedore',
    description: 'directory of the workers\' unix sockets (only the gateway connects to them)', parse: parsePath,
  }),
  pullSecretPath: option<string>({
    flag: 'pull-secret', env: 'PULLSECRETPATH', default: '/pull-secret.json',
    description: 'docker "auths" JSON: one cache worker per upstream entry', parse: parsePath,
  }),
  ignoreRegistries: option<string[]>({
    flag: 'ignore-registries', env: 'IGNOREREGISTRYLIST', default: ['cloud.openshift.com'],
    description: 'space-separated upstream hosts of the pull secret to skip', parse: parseList,
  }),
  aliases: option<Record<string, string>>({
    flag: 'upstream-aliases', env: 'STEVEDORE_UPSTREAM_ALIASES', default: {},
    description: 'alias=host pairs: path prefixes for upstreams whose host has a port', parse: parseAliases,
  }),
  hostedReadOnly: option<boolean>({
    flag: 'hosted-read-only', env: 'STEVEDORE_HOSTED_READ_ONLY', default: false, boolean: true,
    description: 'serve the hosted store read-only (an air-gapped, pre-seeded store)', parse: parseBoolean,
  }),
  tlsCertsPath: option<string>({
    flag: 'tls-certs', env: 'TLS_CERTS_PATH', default: '/certs/certs.pem',
    description: 'PEM with certificate and key; HTTPS when it exists', parse: parsePath,
  }),
  tlsCertPath: option<string | undefined>({
    flag: 'tls-cert', env: 'TLS_CERT_PATH', default: undefined, description: 'certificate PEM (with --tls-key)', parse: parsePath,
  }),
  tlsKeyPath: option<string | undefined>({
    flag: 'tls-key', env: 'TLS_KEY_PATH', default: undefined, description: 'private key PEM (with --tls-cert)', parse: parsePath,
  }),
  auth: option<'none' | 'htpasswd'>({
    flag: 'auth', env: 'REGISTRY_AUTH', default: 'none', description: 'htpasswd to require users, or none', parse: (raw) => {
      const value = raw.trim().toLowerCase();
      if (value === '' || value === 'none') return 'none';
      if (value === 'htpasswd') return 'htpasswd';
      throw new Error('expected htpasswd or none');
    },
  }),
  realm: option<string>({
    flag: 'realm', env: 'REGISTRY_AUTH_HTPASSWD_REALM', default: 'Registry Realm', description: 'Basic auth realm',
    parse: (raw) => {
      if (/["\r\n]/.test(raw)) throw new Error('must not contain quotes or newlines');
      return raw;
    },
  }),
  htpasswdPath: option<string>({
    flag: 'htpasswd', env: 'REGISTRY_AUTH_HTPASSWD_PATH', default: '/auth/htpasswd', description: 'bcrypt htpasswd file', parse: parsePath,
  }),
  adminsPath: option<string | undefined>({
    flag: 'admins', env: 'REGISTRY_AUTH_ADMINS_PATH', default: undefined,
    description: 'file listing admin user names, one a line (default: "admins" beside the htpasswd file)', parse: parsePath,
  }),
  accessLogPath: option<string | undefined>({
    flag: 'access-log', env: 'ACCESS_LOG_PATH', default: undefined,
    description: 'JSON access log (default <root>/logs/access.log)', parse: parsePath,
  }),
  tagTtl: REGISTRY_OPTIONS.tagTtl,
  workerWait: option<number>({
    flag: 'worker-wait', env: 'STEVEDORE_WORKER_WAIT', default: 10_000,
    description: 'how long a request waits for a registry worker that is starting or restarting before 503', parse: parseDuration,
  }),
  logLevel: REGISTRY_OPTIONS.logLevel,
  ...STORAGE_OPTIONS,
  ...BLOB_SERVING_OPTIONS,
  ...PEER_OPTIONS,
} as const;

export type ApplianceConfig = OptionValues<typeof APPLIANCE_OPTIONS>;

export function loadApplianceConfig(argv: readonly string[] = [], env: NodeJS.ProcessEnv = process.env): ApplianceConfig {
  const config = resolveOptions(APPLIANCE_OPTIONS, argv, env);
  if ((config.tlsCertPath === undefined) !== (config.tlsKeyPath === undefined)) {
    throw new ConfigError('TLS_CERT_PATH and TLS_KEY_PATH (--tls-cert, --tls-key) must be given together');
  }
  return config;
}

export function accessLogPathOf(config: Pick<ApplianceConfig, 'accessLogPath' | 'root'>): string {
  return config.accessLogPath ?? resolve(config.root, 'logs', 'access.log');
}

export function adminsPathOf(config: Pick<ApplianceConfig, 'adminsPath' | 'htpasswdPath'>): string {
  return config.adminsPath ?? resolve(dirname(config.htpasswdPath), 'admins');
}

function parsePercentage(raw: string): number {
  const value = Number(raw.trim());
  if (raw.trim() === '' || !Number.isFinite(value) || value < 0 || value > 1000) throw new Error('expected a number of percent from 0 to 1000');
  return value;
}

/** The cleaner and garbage collector. Variable names and defaults as registry-cache's cleaner. */
export const CLEANER_OPTIONS = {
  root: REGISTRY_OPTIONS.root,
  maxSize: option<number>({
    flag: 'max-size', env: 'CLEANER_MAXSIZE', default: 10 * 1024 ** 3,
    description: 'keep cached content under this size (10G = 10 GiB; 10GB = 10^10 bytes)', parse: parsePositiveSize,
  }),
  thresholdPercentage: option<number>({
    flag: 'threshold', env: 'CLEANER_THRESHOLD_PERCENTAGE', default: 20,
    description: 'evict only once usage exceeds max-size by this many percent', parse: parsePercentage,
  }),
  runEvery: option<number>({
    flag: 'run-every', env: 'CLEANER_RUNEVERY_TIME', default: 30 * 60_000,
    description: 'time between runs (1h2m3s format)', parse: parsePositiveDuration,
  }),
  grace: option<number>({
    flag: 'grace', env: 'CLEANER_GRACE_TIME', default: 60 * 60_000,
    description: 'never evict or collect content written or served more recently than this', parse: parseDuration,
  }),
  uploadTtl: REGISTRY_OPTIONS.uploadTtl,
  leaseTime: option<number>({
    flag: 'lease-time', env: 'CLEANER_LEASE_TIME', default: 90_000,
    description: 'expiry of the store lease that lets one cleaner/GC run at a time across appliances (renewed every third of it)', parse: parsePositiveDuration,
  }),
  dryRun: option<boolean>({
    flag: 'dry-run', env: 'CLEANER_DRY_RUN', default: false, boolean: true,
    description: 'only print what would be removed', parse: parseBoolean,
  }),
  logLevel: REGISTRY_OPTIONS.logLevel,
  ...STORAGE_OPTIONS,
} as const;

export type CleanerConfig = OptionValues<typeof CLEANER_OPTIONS>;

export function loadCleanerConfig(argv: readonly string[] = [], env: NodeJS.ProcessEnv = process.env): CleanerConfig {
  return resolveOptions(CLEANER_OPTIONS, argv, env);
}

/** The logger: tails the gateway's access log and records when content was served (the store's served index). */
export const LOGGER_OPTIONS = {
  root: REGISTRY_OPTIONS.root,
  accessLogPath: APPLIANCE_OPTIONS.accessLogPath,
  statePath: option<string | undefined>({
    flag: 'state', env: 'LOGGER_STATE_PATH', default: undefined,
    description: 'where the read offset is kept (default <root>/logs/logger-state.json)', parse: parsePath,
  }),
  flushEvery: option<number | undefined>({
    flag: 'flush-every', env: 'LOGGER_FLUSH_TIME', default: undefined,
    description: 'how often a batch of served times is written (default 1s on disk, 30s on S3)', parse: parsePositiveDuration,
  }),
  logLevel: REGISTRY_OPTIONS.logLevel,
  ...STORAGE_OPTIONS,
} as const;

export type LoggerConfig = OptionValues<typeof LOGGER_OPTIONS>;

export function loadLoggerConfig(argv: readonly string[] = [], env: NodeJS.ProcessEnv = process.env): LoggerConfig {
  return resolveOptions(LOGGER_OPTIONS, argv, env);
}

export function loadRegistryConfig(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): RegistryConfig {
  return resolveOptions(REGISTRY_OPTIONS, argv, env);
}

/** The store an air-gap command writes or reads (the registry's --root; STEVEDORE_ROOT like the appliance). */
const STORE_OPTION = option<StorageLocation | undefined>({
  flag: 'store', env: 'STEVEDORE_ROOT', default: undefined,
  description: 'the store: a directory (the --root of the registry that serves it) or s3://BUCKET[/PREFIX]; required',
  parse: (raw) => parseStorageLocation(raw),
});

/** `--store` and `--storage` name the same thing on the air-gap commands; --storage (STEVEDORE_STORAGE) wins. */
function requireStore(config: { store: StorageLocation | undefined; storage: StorageLocation | undefined }, what: string): StorageLocation {
  return config.storage ?? requireOption(config.store, STORE_OPTION, what);
}

const KEEP_REGISTRY_OPTION = option<boolean>({
  flag: 'keep-registry', env: 'STEVEDORE_KEEP_REGISTRY', default: false, boolean: true,
  description: 'store docker.io/rancher/pause as docker.io/rancher/pause, not rancher/pause (a :port becomes _port)', parse: parseBoolean,
});

function parseHosts(raw: string): string[] {
  return raw.split(/[\s,]+/).filter(Boolean).map((item) => parseUpstream(item).host);
}

function parseJobs(raw: string): number {
  const value = Number(raw.trim());
  if (!Number.isInteger(value) || value < 1 || value > 64) throw new Error('expected a whole number from 1 to 64');
  return value;
}

function requireOption<T>(value: T | undefined, spec: { flag: string; env: string }, what: string): T {
  if (value === undefined) throw new ConfigError(`missing --${spec.flag} (${spec.env}): ${what}`);
  return value;
}

/** `stevedore mirror`: copies the images of a list from their registries into a store. */
export const MIRROR_OPTIONS = {
  list: option<string | undefined>({
    flag: 'list', env: 'STEVEDORE_MIRROR_LIST', default: undefined,
    description: 'file of image references, one a line (# comments and blank lines allowed); required', parse: parsePath,
  }),
  store: STORE_OPTION,
  platforms: option<Platform[]>({
    flag: 'platform', env: 'STEVEDORE_MIRROR_PLATFORMS', default: [{ os: 'linux', architecture: 'amd64', variant: undefined }], repeatable: true,
    description: 'OS/ARCH[/VARIANT] kept from multi-platform images (comma-separated or repeated; default linux/amd64)', parse: parsePlatforms,
  }),
  allPlatforms: option<boolean>({
    flag: 'all-platforms', env: 'STEVEDORE_MIRROR_ALL_PLATFORMS', default: false, boolean: true,
    description: 'keep every platform of multi-platform images (overrides --platform)', parse: parseBoolean,
  }),
  keepRegistry: KEEP_REGISTRY_OPTION,
  authFile: option<string | undefined>({
    ...REGISTRY_OPTIONS.authFile,
    description: 'docker "auths" JSON (pull-secret.json) with registry credentials; hosts keyed http://... are reached over plain HTTP',
  }),
  insecureRegistries: option<string[]>({
    flag: 'insecure-registry', env: 'STEVEDORE_INSECURE_REGISTRIES', default: [], repeatable: true,
    description: 'registry HOST[:PORT] reached over plain HTTP (comma-separated or repeated; loopback hosts always are)', parse: parseHosts,
  }),
  jobs: option<number>({
    flag: 'jobs', env: 'STEVEDORE_MIRROR_JOBS', default: 4, description: 'blobs downloaded at once (default 4)', parse: parseJobs,
  }),
  timeout: option<number>({
    flag: 'timeout', env: 'STEVEDORE_MIRROR_TIMEOUT', default: 60_000,
    description: 'connect, response-header and idle-body timeout of registry requests (default 60s)', parse: parsePositiveDuration,
  }),
  logLevel: option<LogLevel>({ ...REGISTRY_OPTIONS.logLevel, default: 'error' }),
  ...STORAGE_OPTIONS,
} as const;

export type MirrorConfig = Omit<OptionValues<typeof MIRROR_OPTIONS>, 'list' | 'store'> & { list: string; store: StorageLocation };

export function loadMirrorConfig(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): MirrorConfig {
  const config = resolveOptions(MIRROR_OPTIONS, argv, env);
  return {
    ...config,
    list: requireOption(config.list, MIRROR_OPTIONS.list, 'the file listing the images to mirror'),
    store: requireStore(config, 'the store to fill'),
  };
}

/** `stevedore seed`: imports an OCI layout, docker-archive, registry directory or export archive into a store. */
export const SEED_OPTIONS = {
  from: option<string | undefined>({
    flag: 'from', env: 'STEVEDORE_SEED_FROM', default: undefined,
    description: 'OCI image layout dir, docker-archive .tar[.gz], registry dir, or stevedore export .tar[.gz]; required', parse: parsePath,
  }),
  store: STORE_OPTION,
  name: option<string | undefined>({
    flag: 'name', env: 'STEVEDORE_SEED_NAME', default: undefined,
    description: 'repository for OCI layout entries named by a tag only (or not at all)', parse: (raw) => {
      const value = raw.trim();
      if (!isValidName(value)) {
        throw new Error(`"${raw}" is not a repository name (lower-case, components joined by /)`);
      }
      return value;
    },
  }),
  keepRegistry: KEEP_REGISTRY_OPTION,
  ...STORAGE_OPTIONS,
} as const;

export type SeedConfig = Omit<OptionValues<typeof SEED_OPTIONS>, 'from' | 'store'> & { from: string; store: StorageLocation };

export function loadSeedConfig(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): SeedConfig {
  const config = resolveOptions(SEED_OPTIONS, argv, env);
  return {
    ...config,
    from: requireOption(config.from, SEED_OPTIONS.from, 'what to import'),
    store: requireStore(config, 'the store to fill'),
  };
}

/** `stevedore export`: the hosted store's repositories and their blobs, as one tar (gzip for .gz/.tgz). */
export const EXPORT_OPTIONS = {
  store: STORE_OPTION,
  out: option<string | undefined>({
    flag: 'out', env: 'STEVEDORE_EXPORT_OUT', default: undefined,
    description: 'archive to write: FILE.tar, or FILE.tar.gz / FILE.tgz for gzip; required', parse: parsePath,
  }),
  ...STORAGE_OPTIONS,
} as const;

export type ExportConfig = Omit<OptionValues<typeof EXPORT_OPTIONS>, 'out' | 'store'> & { store: StorageLocation; out: string };

export function loadExportConfig(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): ExportConfig {
  const config = resolveOptions(EXPORT_OPTIONS, argv, env);
  return {
    ...config,
    store: requireStore(config, 'the store to export'),
    out: requireOption(config.out, EXPORT_OPTIONS.out, 'the archive to write'),
  };
}
