/**
 * Stevedore vs distribution (the Debian `docker-registry` 2.8.2 with its `s3` driver), side by side on
 * the SAME throw-away Ceph RGW (scripts/ceph-rgw.sh, memstore), each under its own key prefix:
 *
 *   - push and pull of an image (default 10 x 20 MiB layers), skopeo oci: -> docker:// and back to dir:,
 *     with each server's own CPU seconds per pull (/proc: unlike the wall time, not moved by the load)
 *     and the store's (radosgw + OSD) per pull,
 *   - the same pull from a second worker with the optional local read cache (STEVEDORE_LOCAL_CACHE_DIR)
 *     once it holds the image: an info row, next to the default pull,
 *   - large-blob GET throughput (curl; the RGW itself, signed curl, as the ceiling),
 *   - manifest GET req/s (wrk),
 *   - N concurrent cold pulls through a pull-through cache (a Stevedore worker with --upstream and
 *     distribution with proxy.remoteurl, both on S3) of an image on a third, plain docker-registry on
 *     disk: wall time, and upstream GETs per blob counted in that upstream's access log,
 *   - the cleaner's scan of 100,000 blobs (quick: 10,000): bench/storage-bench.ts --storage s3
 *     on the same RGW, when this tree's storage bench has that option.
 * For every phase it prints the S3 requests each side made (from RGW's access log: operations,
 * summed RGW latency), which is where a slow side's time goes.
 *
 *   npm run bench:s3                    # full run (~8 minutes, plus the cleaner store's build)
 *   BENCH_QUICK=1 npm run bench:s3      # quick run (10 x 4 MiB, 32 MiB blob, 3 s wrk; ~2 minutes)
 *   node dist/bench/s3-bench.js --image 10x20 --blob-mb 200 --runs 3 --json out.json
 *
 * Options (flag, else environment variable):
 *   --quick / BENCH_QUICK            smaller sizes, one run each (below)
 *   --image / BENCH_IMAGE            LAYERSxMIB of the pushed, pulled and cached image, default 10x20 (quick 10x4)
 *   --blob-mb / BENCH_BLOB_MB        large blob for the GET, MiB, default 200 (quick 32)
 *   --runs / BENCH_RUNS              push/pull and GET runs (best kept), default 3 (quick 1)
 *   --duration / BENCH_DURATION      seconds per wrk measurement, default 10 (quick 3), after a 2 s warm-up
 *   --connections / BENCH_CONNECTIONS  wrk connections, default 16
 *   --concurrency / BENCH_CONCURRENCY  simultaneous cold pulls through the caches, default 8
 *   --cleaner-blobs / BENCH_CLEANER_BLOBS  blobs in the cleaner-scan store, default 100000 (quick 10000; 0 skips);
 *                                    building it on RGW takes minutes (tens of minutes on a busy machine)
 *   --cleaner-timeout / BENCH_CLEANER_TIMEOUT  limit for that step in seconds, default 1800 (quick 300)
 *   --dist-redirect / BENCH_DIST_REDIRECT  let distribution answer blob GETs with a redirect to RGW (its
 *                                    default); off by default, so both sides serve the bytes themselves
 *   --profile / BENCH_PROFILE        run the Stevedore workers with --cpu-prof; print their hottest functions
 *   --json / BENCH_JSON              also write the results as JSON to this file
 *   --timeout / BENCH_TIMEOUT        whole-run limit in seconds, default 3600
 *
 * Needs the Debian packages of scripts/install.sh (ceph, docker-registry, skopeo, wrk, curl).
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import type { StorageDriver } from '../lib/storage/driver/driver.js';
import { openStorageDriver } from '../lib/storage/driver/open.js';
import { StorageLayout } from '../lib/storage/layout.js';
import { parseDigest } from '../lib/oci/digest.js';
import { startCephRgw, type CephRgw } from '../test/helpers/ceph.js';
import { buildImage, writeOciLayout } from '../test/helpers/oci-image.js';
import { DISTRIBUTION_BIN, REPO_ROOT, STEVEDORE_BIN, distributionConfig, distributionRequests, freePort, startDistribution } from '../test/helpers/processes.js';
import { children, cleanup, cpuTimeMs, logger, median, newTempDir, roundOrder, run, runBenchmark, stopProcess } from './harness.js';
import { numberOption, option } from './options.js';
import { capture, curlGet, fmt, makeBlob, MANIFEST_TYPE, pushMonolithic, REPO, seedImage, waitReady, wrk, type Server } from './registry-bench.js';
import { describeS3Requests, describeS3Shapes, RgwLog, type S3RequestStats } from '../test/helpers/rgw-log.js';
import { summarizeCpuProfiles } from './cpu-profile.js';
import { workerNodeArgs } from '../lib/ecosystem.js';

const MiB = 1024 * 1024;
const flag = (name: string, env: string) => ['1', 'true', 'yes'].includes(option(name, env, 'false').toLowerCase());
const QUICK = flag('quick', 'BENCH_QUICK');

function parseShape(text: string): { layers: number; layerMiB: number } {
  const m = /^(\d+)x(\d+)$/.exec(text.trim());
  if (!m || Number(m[1]) < 1 || Number(m[2]) < 1) throw new Error(`--image (BENCH_IMAGE): "${text}" is not LAYERSxMIB, e.g. 10x20`);
  return { layers: Number(m[1]), layerMiB: Number(m[2]) };
}

const OPTS = {
  quick: QUICK,
  image: parseShape(option('image', 'BENCH_IMAGE', QUICK ? '10x4' : '10x20')),
  blobMiB: numberOption('blob-mb', 'BENCH_BLOB_MB', QUICK ? 32 : 200, { min: 1, integer: true }),
  runs: numberOption('runs', 'BENCH_RUNS', QUICK ? 1 : 3, { min: 1, max: 10, integer: true }),
  duration: numberOption('duration', 'BENCH_DURATION', QUICK ? 3 : 10, { min: 1, integer: true }),
  connections: numberOption('connections', 'BENCH_CONNECTIONS', 16, { min: 1, integer: true }),
  concurrency: numberOption('concurrency', 'BENCH_CONCURRENCY', 8, { min: 1, max: 64, integer: true }),
  cleanerBlobs: numberOption('cleaner-blobs', 'BENCH_CLEANER_BLOBS', QUICK ? 10_000 : 100_000, { min: 0, integer: true }),
  cleanerTimeoutS: numberOption('cleaner-timeout', 'BENCH_CLEANER_TIMEOUT', QUICK ? 300 : 1800, { min: 10, integer: true }),
  distRedirect: flag('dist-redirect', 'BENCH_DIST_REDIRECT'),
  profile: flag('profile', 'BENCH_PROFILE'),
  json: option('json', 'BENCH_JSON', '') || undefined,
  timeoutS: numberOption('timeout', 'BENCH_TIMEOUT', 3600, { min: 10, integer: true }),
};

const log = logger('s3-bench');
const PULL_TIMEOUT_MS = 600_000;
const SIDES = ['stevedore', 'distribution'] as const;
type Side = (typeof SIDES)[number];

// ---------------------------------------------------------------------------------------------
// The store, and the servers on it

let rgw: CephRgw | undefined;
let rgwLog: RgwLog;
const runId = randomBytes(3).toString('hex');

/** A driver on `prefix` of the bench bucket: to see what a server stored. */
function storeAt(prefix: string): Promise<StorageDriver> {
  return openStorageDriver({ kind: 's3', bucket: rgw!.bucket, prefix }, { s3: { endpoint: rgw!.endpoint, region: rgw!.region, forcePathStyle: true } });
}

interface S3Server extends Server {
  side: Side;
  /** The key prefix in the bucket everything of this server is under. */
  prefix: string;
  /** Its local --root (Stevedore): where it would have written if it does not use the store. */
  localRoot?: string;
  stop(): Promise<void>;
}

let profileDir: string | undefined;
/** What each Stevedore worker process was, by pid: for the profiles. */
const roles = new Map<number, string>();

/** `stevedore registry --storage s3://BUCKET/PREFIX` (AWS_* from startCephRgw) at log level warn. */
async function startStevedore(prefix: string, role: string, upstream?: string, extraEnv: Record<string, string> = {}): Promise<S3Server> {
  const dir = await newTempDir('s3-bench-stevedore-');
  const port = await freePort();
  // The node options the appliance gives its workers (PM2's node_args), so this measures what it runs.
  const nodeArgs = [...workerNodeArgs(), ...(OPTS.profile ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [])];
  const args = [...nodeArgs, STEVEDORE_BIN, 'registry', '--listen', `127.0.0.1:${port}`, '--root', join(dir, 'root'),
    '--storage', `s3://${rgw!.bucket}/${prefix}`, '--log-level', process.env.BENCH_STEVEDORE_LOG_LEVEL || 'warn',
    ...(upstream ? ['--upstream', upstream] : [])];
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...rgw!.env, ...extraEnv } });
  children.add(proc);
  const output = capture(proc);
  const url = `http://127.0.0.1:${port}`;
  await waitReady(url, proc, output, 20_000);
  roles.set(proc.pid!, role);
  return {
    side: 'stevedore', label: 'stevedore', url, pid: proc.pid!, proc, output, prefix, localRoot: join(dir, 'root'),
    stop: async () => { await stopProcess(proc); children.delete(proc); },
  };
}

/** distribution's config: the s3 driver on the bench's RGW under `/PREFIX`, quiet (warn, no access log). */
function distributionS3Config(port: number, prefix: string, upstream?: string): string {
  return distributionConfig({
    port, quiet: true, ...(upstream ? { proxy: { remoteurl: upstream } } : {}),
    storage: [
      '  s3:',
      `    accesskey: ${rgw!.accessKeyId}`,
      `    secretkey: ${rgw!.secretAccessKey}`,
      `    region: ${rgw!.region}`,
      `    regionendpoint: ${rgw!.endpoint}`,
      '    forcepathstyle: true',
      `    bucket: ${rgw!.bucket}`,
      `    rootdirectory: /${prefix}`,
      '    secure: false',
      '    v4auth: true',
      '  redirect:',
      `    disable: ${OPTS.distRedirect ? 'false' : 'true'}`,
    ],
  });
}

async function startDistributionS3(prefix: string, upstream?: string): Promise<S3Server> {
  const dir = await newTempDir('s3-bench-distribution-');
  const config = join(dir, 'config.yml');
  const port = await freePort();
  await writeFile(config, distributionS3Config(port, prefix, upstream));
  // distribution 2.8's AWS SDK panics (LoadCustomCABundleError) on AWS_CA_BUNDLE; its S3 settings are in the config.
  const env = { ...process.env };
  delete env.AWS_CA_BUNDLE;
  const proc = spawn(DISTRIBUTION_BIN, ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'], env });
  children.add(proc);
  const output = capture(proc);
  const url = `http://127.0.0.1:${port}`;
  await waitReady(url, proc, output, 20_000);
  return {
    side: 'distribution', label: 'distribution', url, pid: proc.pid!, proc, output, prefix,
    stop: async () => { await stopProcess(proc); children.delete(proc); },
  };
}

// ---------------------------------------------------------------------------------------------
// Measurements

const timedS = async (fn: () => Promise<unknown>): Promise<number> => {
  const started = performance.now();
  await fn();
  return (performance.now() - started) / 1000;
};

async function skopeo(args: string[], what: string): Promise<void> {
  const res = await run('skopeo', ['--insecure-policy', 'copy', '--quiet', ...args], PULL_TIMEOUT_MS);
  if (res.code !== 0) throw new Error(`${what}: skopeo exit ${res.code}: ${res.stderr.trim().split('\n').slice(-3).join(' | ').slice(0, 800)}`);
}

function hostOf(server: Server): string {
  return new URL(server.url).host;
}

/** Checks a `dir:` pull holds every blob with its size (skopeo verified the digests). */
async function verifyPulled(dest: string, blobs: Array<{ digest: string; size: number }>): Promise<void> {
  const names = new Set(await readdir(dest));
  for (const blob of blobs) {
    if (!names.has(blob.digest.slice(7))) throw new Error(`pull into ${dest} lacks blob ${blob.digest}`);
  }
}

/** S3 requests per side made since `mark` (a side's requests are those under its prefix). */
async function s3Since(mark: number, servers: S3Server[]): Promise<Record<string, S3RequestStats | undefined>> {
  const stats = await rgwLog.since(mark);
  return Object.fromEntries(servers.map((s) => [s.side, stats.get(s.prefix)]));
}

/** How many objects (and bytes) are under a server's prefix: proof that it used the store. */
async function storedOnS3(prefix: string): Promise<{ objects: number; bytes: number }> {
  let objects = 0;
  let bytes = 0;
  for await (const key of (await storeAt(prefix)).walk('')) {
    objects++;
    bytes += key.size;
  }
  return { objects, bytes };
}

/** Regular files under a Stevedore worker's local root other than its logs/state: a store left on disk. */
async function localStoreFiles(root: string): Promise<number> {
  let count = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      if (entry.isDirectory()) await walk(join(dir, entry.name));
      else if (/^(data|link)$/.test(entry.name) || /^[0-9a-f]{64}$/.test(entry.name)) count++;
    }
  };
  await walk(root);
  return count;
}

// ---------------------------------------------------------------------------------------------
// Results

interface Row {
  metric: string;
  unit: string;
  stevedore: number | string | undefined;
  distribution: number | string | undefined;
  /** stevedore / distribution */
  ratio?: number;
  target: string;
  met?: boolean;
}

const rows: Row[] = [];
/** Set when a Stevedore worker kept its store on local disk (the worker not yet on the driver). */
let stevedoreOnDisk = false;
const breakdown: string[] = [];
const notes: string[] = [];

function compare(metric: string, unit: string, s: number, d: number, target: { max?: number; min?: number } | undefined): void {
  const ratio = s / d;
  const row: Row = { metric, unit, stevedore: s, distribution: d, ratio, target: '(info)' };
  if (target?.max !== undefined) {
    row.target = `<= ${target.max}x`;
    row.met = ratio <= target.max;
  } else if (target?.min !== undefined) {
    row.target = `>= ${target.min}x`;
    row.met = ratio >= target.min;
  }
  rows.push(row);
}

function addBreakdown(phase: string, stats: Record<string, S3RequestStats | undefined>): void {
  for (const side of SIDES) {
    breakdown.push(`${phase}, ${side}: ${describeS3Requests(stats[side])}`);
    breakdown.push(...describeS3Shapes(stats[side], 6).map((line) => `    ${line}`));
  }
}

function table(): string {
  const cell = (v: number | string | undefined, unit: string) => (typeof v === 'number' ? fmt(v, unit === 's' || unit === 'MB/s' ? 2 : 0) : v ?? '-');
  const header = ['metric', stevedoreOnDisk ? 'stevedore (LOCAL DISK)' : 'stevedore', 'distribution', 's / d', 'target', 'met?'];
  const body = rows.map((r) => [`${r.metric} (${r.unit})`, cell(r.stevedore, r.unit), cell(r.distribution, r.unit),
    r.ratio === undefined ? '-' : `${fmt(r.ratio, 2)}x`, r.target, r.met === undefined ? '-' : r.met ? 'yes' : 'NO']);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((line) => line[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

// ---------------------------------------------------------------------------------------------
// Phases

const imageLabel = `${OPTS.image.layers} x ${OPTS.image.layerMiB} MiB`;

function newImage(seed: string) {
  return buildImage({ layerSizes: Array.from({ length: OPTS.image.layers }, () => OPTS.image.layerMiB * MiB), seed });
}

function blobsOf(image: ReturnType<typeof buildImage>): Array<{ digest: string; size: number }> {
  return [image.config, ...image.layers].map((b) => ({ digest: b.digest, size: b.size }));
}

/** CPU seconds (user + system) a process has used so far, from /proc: what a phase cost a server whatever the load. */
function cpuSeconds(pid: number): number {
  return (cpuTimeMs(pid)?.total ?? NaN) / 1000;
}

/**
 * CPU seconds the object store itself (radosgw + the OSD, by the cluster's pid files) has used so far:
 * a store that works harder for one side (its object layout, its requests) shows here, whatever the
 * load. Measured here, RGW's CPU per byte varies ±20 % from run to run: compare over several runs.
 */
function storeCpuSeconds(): number {
  let total = 0;
  const runDir = join(rgw!.dir, 'run');
  for (const name of readdirSync(runDir).filter((n) => /^(radosgw|osd\.\d+)\.pid$/.test(n))) {
    const pid = Number.parseInt(readFileSync(join(runDir, name), 'utf8'), 10);
    total += cpuTimeMs(pid)?.total ?? NaN;
  }
  return total / 1000;
}

/** Push then pull of a fresh image per run, on both sides in alternating order; best of --runs. */
async function pushAndPull(servers: S3Server[], work: string): Promise<{ distributionPulls: number[]; run0Blobs: Array<{ digest: string; size: number }> }> {
  const push: Record<Side, number[]> = { stevedore: [], distribution: [] };
  const pull: Record<Side, number[]> = { stevedore: [], distribution: [] };
  /** The server's own CPU seconds per pull: independent of how much else runs on the machine. */
  const pullCpu: Record<Side, number[]> = { stevedore: [], distribution: [] };
  const pullStoreCpu: Record<Side, number[]> = { stevedore: [], distribution: [] };
  const pushMark = { stats: {} as Record<string, S3RequestStats | undefined> };
  const pullMark = { stats: {} as Record<string, S3RequestStats | undefined> };
  let run0Blobs: Array<{ digest: string; size: number }> = [];
  for (let r = 0; r < OPTS.runs; r++) {
    const image = newImage(`push-${runId}-${r}`);
    const blobs = blobsOf(image);
    if (r === 0) run0Blobs = blobs;
    const layout = join(work, `layout-${r}`);
    await writeOciLayout(layout, 'latest', [image]);
    for (const server of roundOrder(servers, r)) {
      const ref = `docker://${hostOf(server)}/${REPO}:run${r}`;
      let mark = await rgwLog.mark();
      push[server.side].push(await timedS(() => skopeo(['--dest-tls-verify=false', `oci:${layout}:latest`, ref], `push to ${server.side}`)));
      if (r === 0) Object.assign(pushMark.stats, await s3Since(mark, [server]));
      const dest = join(work, `pull-${server.side}-${r}`);
      mark = await rgwLog.mark();
      const cpuBefore = cpuSeconds(server.pid);
      const storeCpuBefore = storeCpuSeconds();
      pull[server.side].push(await timedS(() => skopeo(['--src-tls-verify=false', ref, `dir:${dest}`], `pull from ${server.side}`)));
      pullCpu[server.side].push(cpuSeconds(server.pid) - cpuBefore);
      pullStoreCpu[server.side].push(storeCpuSeconds() - storeCpuBefore);
      if (r === 0) Object.assign(pullMark.stats, await s3Since(mark, [server]));
      await verifyPulled(dest, blobs);
      await rm(dest, { recursive: true, force: true });
      log(`run ${r + 1}/${OPTS.runs} ${server.side}: push ${push[server.side].at(-1)!.toFixed(2)} s, pull ${pull[server.side].at(-1)!.toFixed(2)} s`);
    }
    await rm(layout, { recursive: true, force: true });
  }
  const best = (xs: number[]) => Math.min(...xs);
  compare(`push ${imageLabel} (skopeo oci: -> registry), best of ${OPTS.runs}`, 's', best(push.stevedore), best(push.distribution), { max: 1.0 });
  compare(`pull ${imageLabel} (skopeo registry -> dir:), best of ${OPTS.runs}`, 's', best(pull.stevedore), best(pull.distribution), { max: 1.0 });
  notes.push(`push runs (s): ${SIDES.map((s) => `${s} ${push[s].map((x) => x.toFixed(2)).join(', ')}`).join('; ')}`);
  notes.push(`pull runs (s): ${SIDES.map((s) => `${s} ${pull[s].map((x) => x.toFixed(2)).join(', ')} (median ${median(pull[s]).toFixed(2)})`).join('; ')}`);
  notes.push(`server CPU per pull (s): ${SIDES.map((s) => `${s} ${pullCpu[s].map((x) => x.toFixed(2)).join(', ')}`).join('; ')}`);
  compare(`server CPU per pull of ${imageLabel}, best of ${OPTS.runs}`, 's', best(pullCpu.stevedore), best(pullCpu.distribution), undefined);
  notes.push(`RGW CPU per pull (s, radosgw + OSD): ${SIDES.map((s) => `${s} ${pullStoreCpu[s].map((x) => x.toFixed(2)).join(', ')}`).join('; ')}`);
  compare(`RGW CPU per pull of ${imageLabel}, best of ${OPTS.runs}`, 's', best(pullStoreCpu.stevedore), best(pullStoreCpu.distribution), undefined);
  addBreakdown(`push ${imageLabel} (run 1)`, pushMark.stats);
  addBreakdown(`pull ${imageLabel} (run 1)`, pullMark.stats);
  return { distributionPulls: pull.distribution, run0Blobs };
}

/**
 * The optional local read cache (STEVEDORE_LOCAL_CACHE_DIR, off by default): a second worker on the
 * same store with it on pulls the first image pushAndPull pushed (tag run0), once to fill the cache from
 * RGW, then --runs times from it, each pull checked like the others. An info row against
 * distribution's best pull of that phase: what the option buys a hot image, not the default pull.
 */
async function localCachePulls(prefix: string, distributionPulls: number[], blobs: Array<{ digest: string; size: number }>, work: string): Promise<void> {
  const cacheDir = join(work, 'local-read-cache');
  const server = await startStevedore(prefix, 'hosted worker, local read cache', undefined, { STEVEDORE_LOCAL_CACHE_DIR: cacheDir });
  const pullOnce = async (label: string): Promise<number> => {
    const dest = join(work, `pull-local-cache-${label}`);
    const mark = await rgwLog.mark();
    const seconds = await timedS(() => skopeo(['--src-tls-verify=false', `docker://${hostOf(server)}/${REPO}:run0`, `dir:${dest}`], `pull (${label}) with the local read cache`));
    const stats = (await s3Since(mark, [server])).stevedore;
    await verifyPulled(dest, blobs);
    await rm(dest, { recursive: true, force: true });
    log(`local read cache, ${label} pull: ${seconds.toFixed(2)} s; S3 requests ${stats?.requests ?? 0}, of them GetObject ${stats?.byOperation.GetObject ?? 0}`);
    return seconds;
  };
  try {
    const filling = await pullOnce('filling');
    const hot: number[] = [];
    for (let r = 0; r < OPTS.runs; r++) hot.push(await pullOnce(`hot ${r + 1}`));
    compare(`pull ${imageLabel} with STEVEDORE_LOCAL_CACHE_DIR (off by default), hot, best of ${OPTS.runs}`, 's', Math.min(...hot), Math.min(...distributionPulls), undefined);
    notes.push(`pulls with the local read cache (s): filling it ${filling.toFixed(2)}, hot ${hot.map((x) => x.toFixed(2)).join(', ')}`);
  } finally {
    await server.stop();
  }
}

/** A large blob pushed monolithically to both, then GET with curl in alternating order (best of --runs), and RGW directly. */
async function largeBlob(servers: S3Server[]): Promise<void> {
  const size = OPTS.blobMiB * MiB;
  const blob = makeBlob(7_000 + Number.parseInt(runId, 16) % 1000, size);
  const pushMBs: Record<string, number> = {};
  const getMBs: Record<string, number> = {};
  /** RGW + OSD CPU seconds per GET, by side. */
  const storeCpu: Record<string, number> = Object.fromEntries(servers.map((s) => [s.side, 0]));
  for (const server of servers) pushMBs[server.side] = await pushMonolithic(server, REPO, blob);
  // Both pushed before any GET, and the GETs alternate (roundOrder), as the pulls do: the store's
  // aftermath of a push (its writeback) lands on both sides alike, not on whoever is first.
  const results: Record<string, number[]> = Object.fromEntries(servers.map((s) => [s.side, []]));
  const mark = await rgwLog.mark();
  for (let r = 0; r < OPTS.runs; r++) {
    for (const server of roundOrder(servers, r)) {
      const curlArgs = server.side === 'distribution' && OPTS.distRedirect ? ['-L'] : [];
      const storeCpuBefore = storeCpuSeconds();
      results[server.side]!.push(await curlGet(`${server.url}/v2/${REPO}/blobs/${blob.digest}`, size, curlArgs));
      storeCpu[server.side]! += (storeCpuSeconds() - storeCpuBefore) / OPTS.runs;
    }
  }
  const stats = await s3Since(mark, servers);
  for (const server of servers) {
    getMBs[server.side] = Math.max(...results[server.side]!);
    log(`${server.side}: ${OPTS.blobMiB} MiB monolithic push ${fmt(pushMBs[server.side])} MB/s; GET ${results[server.side]!.map((v) => fmt(v)).join(', ')} MB/s`);
  }
  // The ceiling: the same object straight from RGW (distribution's copy; its key layout is known).
  const dist = servers.find((s) => s.side === 'distribution')!;
  const hex = blob.digest.slice(7);
  const objectUrl = `${rgw!.endpoint}/${rgw!.bucket}/${dist.prefix}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
  const signed = ['--aws-sigv4', `aws:amz:${rgw!.region}:s3`, '--user', `${rgw!.accessKeyId}:${rgw!.secretAccessKey}`, '-H', 'x-amz-content-sha256: UNSIGNED-PAYLOAD'];
  const direct: number[] = [];
  for (let r = 0; r < OPTS.runs; r++) direct.push(await curlGet(objectUrl, size, signed));
  // Stevedore's copy straight from RGW too: shows whether its object layout (multipart parts) reads slower.
  const stevedore = servers.find((s) => s.side === 'stevedore')!;
  const stevedoreKey = new StorageLayout('').blobKey(parseDigest(blob.digest));
  const stevedoreObjectUrl = `${rgw!.endpoint}/${rgw!.bucket}/${stevedore.prefix}/${stevedoreKey}`;
  const directOwn: number[] = [];
  for (let r = 0; r < OPTS.runs; r++) directOwn.push(await curlGet(stevedoreObjectUrl, size, signed));
  // The AWS SDK alone (the driver's reader, consumed in this node process): separates the SDK's
  // throughput from what the worker's route adds on top of it.
  const sdk: number[] = [];
  for (let r = 0; r < OPTS.runs; r++) {
    const seconds = await timedS(async () => {
      let bytes = 0;
      for await (const chunk of await (await storeAt(stevedore.prefix)).reader(stevedoreKey)) bytes += (chunk as Buffer).length;
      if (bytes !== size) throw new Error(`SDK read ${bytes} of ${size} bytes`);
    }).catch(() => NaN);
    sdk.push(size / 1e6 / seconds);
  }
  compare(`large-blob GET ${OPTS.blobMiB} MiB (curl), best of ${OPTS.runs}`, 'MB/s', getMBs.stevedore!, getMBs.distribution!, undefined);
  rows.at(-1)!.target = `(info; RGW direct ${fmt(Math.max(...direct))}, SDK read ${sdk.some(Number.isFinite) ? fmt(Math.max(...sdk.filter(Number.isFinite))) : 'n/a'})`;
  notes.push(`large-blob GET: RGW CPU per GET (radosgw + OSD) stevedore ${storeCpu.stevedore!.toFixed(2)} s, distribution ${storeCpu.distribution!.toFixed(2)} s`);
  notes.push(`large-blob GET (MB/s): RGW direct by curl, distribution's object ${direct.map((v) => fmt(v)).join(', ')}, Stevedore's object ${directOwn.map((v) => fmt(v)).join(', ')}; the driver's reader (AWS SDK) in the bench's node process ${sdk.map((v) => fmt(v)).join(', ')}`);
  compare(`monolithic PUT ${OPTS.blobMiB} MiB (POST + PUT ?digest=)`, 'MB/s', pushMBs.stevedore!, pushMBs.distribution!, undefined);
  addBreakdown(`large-blob GET x${OPTS.runs}`, stats);
}

/** Manifest GET by tag, wrk with --connections after a 2 s warm-up. */
async function manifestRate(servers: S3Server[], work: string): Promise<void> {
  const smallBlob = randomBytes(4096);
  const smallDigest = `sha256:${createHash('sha256').update(smallBlob).digest('hex')}`;
  const image = buildImage({ layerSizes: [4096], seed: `manifest-${runId}` });
  const script = join(work, 'get.lua');
  await writeFile(script, `wrk.method = "GET"\nwrk.headers["Accept"] = "${MANIFEST_TYPE}"\n`);
  const rps: Record<string, number> = {};
  const stats: Record<string, S3RequestStats | undefined> = {};
  const problems: string[] = [];
  for (const server of servers) {
    await seedImage(server, smallBlob, smallDigest, image);
    const url = `${server.url}/v2/${REPO}/manifests/latest`;
    await wrk(url, script, OPTS.connections, 2);
    const mark = await rgwLog.mark();
    const result = await wrk(url, script, OPTS.connections, OPTS.duration);
    Object.assign(stats, await s3Since(mark, [server]));
    rps[server.side] = result.rps;
    if (result.errors + result.non2xx > 0) problems.push(`${server.side}: ${result.errors} socket errors, ${result.non2xx} non-2xx of ${result.requests}`);
    log(`${server.side}: manifest GET ${fmt(result.rps)} req/s (p99 ${result.latencyP99})`);
  }
  compare(`manifest GET by tag, wrk c${OPTS.connections} ${OPTS.duration} s`, 'req/s', rps.stevedore!, rps.distribution!, { min: 10 });
  if (problems.length > 0) {
    rows.at(-1)!.met = false;
    notes.push(`manifest GET: ${problems.join('; ')}`);
  }
  addBreakdown(`manifest GET, ${OPTS.duration} s`, stats);
}

/**
 * A cold image on a plain docker-registry (disk) pulled --concurrency times at once through each
 * cache on S3; the upstream's access log counts GETs per blob (the target: exactly one).
 */
async function coldPulls(work: string): Promise<void> {
  const upstream = await startDistribution();
  children.add(upstream.proc);
  try {
    const image = newImage(`cache-${runId}`);
    const layout = join(work, 'layout-cache');
    await writeOciLayout(layout, 'latest', [image]);
    await skopeo(['--dest-tls-verify=false', `oci:${layout}:latest`, `docker://127.0.0.1:${upstream.port}/${REPO}:latest`], 'seeding the upstream');
    await rm(layout, { recursive: true, force: true });
    const blobs = blobsOf(image);
    log(`upstream ${upstream.url} holds ${REPO}:latest (${blobs.length} blobs)`);

    const wall: Record<string, number> = {};
    const perBlob: Record<string, { min: number; max: number; total: number }> = {};
    const failures: Record<string, number> = {};
    const stats: Record<string, S3RequestStats | undefined> = {};
    const stored: Record<string, string> = {};
    for (const side of SIDES) {
      const prefix = `${side}-cache-${runId}`;
      const server = side === 'stevedore' ? await startStevedore(prefix, 'cache worker, cold pulls', upstream.url) : await startDistributionS3(prefix, upstream.url);
      try {
        const logMark = upstream.output().length;
        const s3Mark = await rgwLog.mark();
        const ref = `docker://${hostOf(server)}/${REPO}:latest`;
        const started = performance.now();
        const results = await Promise.allSettled(Array.from({ length: OPTS.concurrency }, async (_, i) => {
          const dest = join(work, `cold-${side}-${i}`);
          await skopeo(['--src-tls-verify=false', ref, `dir:${dest}`], `cold pull ${i + 1} via ${side}`);
          await verifyPulled(dest, blobs);
          await rm(dest, { recursive: true, force: true });
        }));
        wall[side] = (performance.now() - started) / 1000;
        failures[side] = results.filter((r) => r.status === 'rejected').length;
        for (const r of results) if (r.status === 'rejected') log(`  ${(r.reason as Error).message}`);
        // distribution fills its store in the background after answering: wait until every blob is on S3.
        await waitStored(server, blobs);
        await quiet(upstream.output, 2_000);
        Object.assign(stats, await s3Since(s3Mark, [server]));
        const requests = distributionRequests(upstream.output().slice(logMark));
        const counts = blobs.map((b) => requests.filter((q) => q.method === 'GET' && q.path.split('?')[0] === `/v2/${REPO}/blobs/${b.digest}`).length);
        perBlob[side] = { min: Math.min(...counts), max: Math.max(...counts), total: counts.reduce((a, b) => a + b, 0) };
        const onS3 = await storedOnS3(prefix);
        stored[side] = `${onS3.objects} objects, ${(onS3.bytes / MiB).toFixed(1)} MiB`;
        log(`${OPTS.concurrency} concurrent cold pulls via ${side}: ${wall[side]!.toFixed(2)} s wall, ${failures[side]} failed; `
          + `upstream blob GETs ${perBlob[side]!.total} (${perBlob[side]!.min}..${perBlob[side]!.max} per blob); on S3: ${stored[side]}`);
        if (server.localRoot && (await localStoreFiles(server.localRoot)) > 0) {
          stevedoreOnDisk = true;
          notes.push(`WARNING: the Stevedore cache worker wrote its store to local disk (${server.localRoot}), not to S3: its cache figures are not S3 figures`);
        }
      } finally {
        await server.stop();
      }
    }
    compare(`${OPTS.concurrency} concurrent cold pulls of ${imageLabel} through the cache, wall`, 's', wall.stevedore!, wall.distribution!, undefined);
    const describe = (side: string) => `${perBlob[side]!.min}..${perBlob[side]!.max} (${perBlob[side]!.total} for ${blobs.length})`;
    rows.push({ metric: 'upstream GETs per blob in those pulls', unit: 'min..max', stevedore: describe('stevedore'), distribution: describe('distribution'),
      target: 'exactly 1', met: perBlob.stevedore!.min === 1 && perBlob.stevedore!.max === 1 });
    if (failures.stevedore! + failures.distribution! > 0) notes.push(`failed cold pulls: stevedore ${failures.stevedore}, distribution ${failures.distribution}`);
    notes.push(`stored on S3 after the cold pulls: stevedore ${stored.stevedore}; distribution ${stored.distribution}`);
    addBreakdown(`${OPTS.concurrency} concurrent cold pulls`, stats);
  } finally {
    await upstream.stop();
    children.delete(upstream.proc);
  }
}

/** Waits (at most 120 s) until a cache holds every blob on S3 (distribution: its known key layout). */
async function waitStored(server: S3Server, blobs: Array<{ digest: string }>): Promise<void> {
  if (server.side !== 'distribution') return;
  const store = await storeAt(server.prefix);
  const deadline = Date.now() + 120_000;
  for (;;) {
    let missing = 0;
    for (const b of blobs) {
      const hex = b.digest.slice(7);
      await store.stat(`docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`).catch(() => { missing++; });
    }
    if (missing === 0) return;
    if (Date.now() > deadline) {
      notes.push(`distribution's cache still lacked ${missing} blobs on S3 120 s after the pulls`);
      return;
    }
    await sleep(250);
  }
}

/** Waits until `output` has not grown for `ms` (at most 60 s). */
async function quiet(output: () => string, ms: number): Promise<void> {
  const deadline = Date.now() + 60_000;
  let length = output().length;
  let since = Date.now();
  while (Date.now() < deadline && Date.now() - since < ms) {
    await sleep(200);
    if (output().length !== length) {
      length = output().length;
      since = Date.now();
    }
  }
}

/**
 * The cleaner's scan of a 100,000-blob cache on this run's RGW: bench/storage-bench.ts --storage s3
 * (the storage-control work), when this tree's storage bench has that option; skipped otherwise.
 */
async function cleanerScan(): Promise<void> {
  const script = fileURLToPath(new URL('./storage-bench.js', import.meta.url));
  const blobs = OPTS.cleanerBlobs;
  const metric = `cleaner scan of ${blobs.toLocaleString('en-US')} blobs (bench:storage --storage s3)`;
  if (blobs === 0) {
    rows.push({ metric: 'cleaner scan', unit: 's', stevedore: 'skipped', distribution: '-', target: '< 30 s for 100,000' });
    notes.push('cleaner scan: skipped (--cleaner-blobs 0)');
    return;
  }
  if (!existsSync(script) || !readFileSync(script, 'utf8').includes('BENCH_STORAGE')) {
    rows.push({ metric, unit: 's', stevedore: 'skipped', distribution: '-', target: '< 30 s' });
    notes.push('cleaner scan: skipped, this tree\'s bench/storage-bench.ts has no --storage s3 (the storage-control branch)');
    return;
  }
  log(`cleaner scan: bench/storage-bench.js --storage s3 --blobs ${blobs} on this run's RGW`);
  // STEVEDORE_TEST_RGW_DIR: the storage bench uses this run's RGW (a fresh prefix) instead of starting its own.
  const env = { ...process.env, ...rgw!.env, STEVEDORE_TEST_RGW_DIR: rgw!.dir };
  const res = await new Promise<{ code: number | null; out: string }>((resolve) => {
    const proc = spawn(process.execPath, [script, '--storage', 's3', '--blobs', String(blobs), '--lines', '1000'], { env, cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(proc);
    let out = '';
    proc.stdout!.on('data', (c: Buffer) => { out += c.toString(); });
    proc.stderr!.on('data', (c: Buffer) => { out += c.toString(); });
    // Past its limit the step is stopped (the rest of the results are already measured).
    const timer = setTimeout(() => { out += `\n[stopped after ${OPTS.cleanerTimeoutS} s]`; proc.kill('SIGTERM'); }, OPTS.cleanerTimeoutS * 1000);
    proc.on('close', (code) => { clearTimeout(timer); children.delete(proc); resolve({ code, out }); });
  });
  const scan = /cleaner: scan of \d+ blobs \(plan\) ([\d.]+)\s*(ms|s)\b/.exec(res.out);
  const seconds = scan ? Number(scan[1]) / (scan[2] === 'ms' ? 1000 : 1) : undefined;
  rows.push({
    metric, unit: 's', stevedore: seconds ?? (res.code === 0 ? 'see notes' : `exit ${res.code}`), distribution: '-',
    target: blobs >= 100_000 ? '< 30 s' : '(info; < 30 s at 100,000)',
    ...(seconds !== undefined && blobs >= 100_000 ? { met: seconds < 30 } : {}),
  });
  notes.push(`bench:storage --storage s3 --blobs ${blobs} (exit ${res.code}):\n${res.out.split('\n').filter((l) => /^(storage bench|store built|cleaner|gc|logger)/.test(l) || res.code !== 0).join('\n').slice(-3000)}`);
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  log(`options: ${JSON.stringify(OPTS)}`);
  const loadStart = loadavg().map((l) => l.toFixed(1)).join(' ');
  const work = await newTempDir('s3-bench-');
  if (OPTS.profile) {
    profileDir = join(work, 'profiles');
    await mkdir(profileDir);
  }
  const rgwStarted = performance.now();
  rgw = await startCephRgw();
  rgwLog = new RgwLog(rgw.dir);
  log(`Ceph RGW ${rgw.endpoint} bucket ${rgw.bucket} up in ${((performance.now() - rgwStarted) / 1000).toFixed(1)} s; run ${runId}`);

  const servers = [await startStevedore(`stevedore-${runId}`, OPTS.profile ? 'hosted worker, push and pull' : 'hosted worker'), await startDistributionS3(`distribution-${runId}`)];
  // With --profile, a fresh worker on the same store for each phase: one profile per phase.
  const nextPhase = async (role: string) => {
    if (!OPTS.profile) return;
    await servers[0]!.stop();
    servers[0] = await startStevedore(`stevedore-${runId}`, `hosted worker, ${role}`);
  };
  log(`stevedore ${servers[0]!.url}, distribution ${servers[1]!.url} (blob GETs ${OPTS.distRedirect ? 'redirected to RGW' : 'served by itself'})`);
  try {
    const { distributionPulls, run0Blobs } = await pushAndPull(servers, work);
    const onS3 = await storedOnS3(servers[0]!.prefix);
    if (onS3.objects === 0 || (await localStoreFiles(servers[0]!.localRoot!)) > 0) {
      stevedoreOnDisk = true;
      notes.push(`WARNING: the Stevedore worker stored ${onS3.objects} objects on S3 and its blobs on local disk (${servers[0]!.localRoot}): `
        + 'the worker is not on the storage driver in this tree, so its hosted figures are local-disk figures');
    }
    await localCachePulls(servers[0]!.prefix, distributionPulls, run0Blobs, work);
    await nextPhase('large-blob PUT and GET');
    await largeBlob(servers);
    await nextPhase('manifest GET');
    await manifestRate(servers, work);
  } finally {
    for (const server of servers) await server.stop();
  }
  await coldPulls(work);
  await cleanerScan();

  const loadEnd = loadavg().map((l) => l.toFixed(1)).join(' ');
  const judged = rows.filter((r) => r.met !== undefined);
  const out = [
    '',
    `Stevedore vs distribution 2.8.2 (docker-registry, s3 driver, quiet), both on one Ceph RGW (memstore) on loopback, node ${process.version}`,
    `image ${imageLabel} + config; ${OPTS.quick ? 'QUICK run' : 'full run'}; distribution blob GETs ${OPTS.distRedirect ? 'redirected to RGW' : 'proxied (storage.redirect.disable)'}`,
    '',
    table(),
    '',
    `${judged.filter((r) => r.met).length}/${judged.length} targets met`,
    '',
    'S3 requests per phase (RGW access log; latency sum overlaps for parallel requests):',
    ...breakdown.map((l) => `  ${l}`),
    '',
    ...notes.map((n) => `  ${n}`),
    `  load average at start ${loadStart}, at end ${loadEnd} (2 cores: above ~2 means other work competed)`,
  ];
  process.stdout.write(`${out.join('\n')}\n`);

  if (OPTS.profile) {
    process.stdout.write(`\n${await summarizeCpuProfiles(profileDir!, 20, roles)}\n`);
  }
  if (OPTS.json) {
    await writeFile(OPTS.json, `${JSON.stringify({ date: new Date().toISOString(), options: OPTS, rows, breakdown, notes, loadStart, loadEnd }, null, 2)}\n`);
    log(`wrote ${OPTS.json}`);
  }
}

await runBenchmark(main, {
  timeoutS: OPTS.timeoutS, log,
  stop: async () => {
    await cleanup();
    await rgw?.stop().catch(() => {});
  },
});
