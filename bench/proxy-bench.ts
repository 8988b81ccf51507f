/**
 * Pull-through cache benchmark: a Stevedore cache worker, the whole appliance (`stevedore start`
 * under PM2: gateway + cache worker) and the Debian `docker-registry` (CNCF distribution 2.8)
 * configured as a proxy, all in front of the same upstream `docker-registry`, and pulls from that
 * upstream directly as the baseline, on loopback, in one run, for each image shape:
 *
 *   (a) cold pull through each, a freshly started cache each time (best of --cold-runs), and from
 *       the upstream directly: the cold/direct ratio is what a cache costs a first pull,
 *   (b) warm pull of the same image (best of --warm-runs),
 *   (c) --concurrency simultaneous cold pulls through a freshly started cache: wall time, and how
 *       many times the upstream was asked for each blob (its access log), the target being once,
 *   (d) and (e): (a) and (c) again through a running cache, one process per proxy that has already
 *       served a pull of another image of the shape, each pull of an image new to it. A cache is
 *       up for days; a fresh Node process pays JIT compilation and first heap growth in its first
 *       fill (about half the fill's CPU here), which (a) and (c) measure and (d) and (e) do not.
 * The appliance's per-process peak RSS during its cold pulls is printed too, and the load average,
 * and the CPU time of every party of a cold pull (skopeo, the upstream, the cache) with the floor
 * that total puts under the cold/direct ratio on this machine's cores.
 *
 * Pulls are `skopeo copy docker://proxy/bench/<image>:latest dir:<fresh dir>`.
 *
 *   npm run bench:proxy                                 # shapes 1x200 and 10x20 (MiB)
 *   BENCH_QUICK=1 npm run bench:proxy                   # quick run (a few minutes)
 *   node dist/bench/proxy-bench.js --shapes 10x8 --kinds stevedore,distribution --json out.json
 *
 * Options (flag, else environment variable):
 *   --shapes / BENCH_SHAPES            image shapes LAYERSxMIB, comma-separated, default 1x200,10x20
 *                                      (--layers/--layer-mb, BENCH_LAYERS/BENCH_LAYER_MB: one shape, as before)
 *   --kinds / BENCH_PROXY_KINDS        default stevedore,appliance,distribution
 *   --cold-runs / BENCH_COLD_RUNS      cold pulls per proxy in (a) and in (d) (best kept), default 3
 *   --warm-runs / BENCH_WARM_RUNS      warm pulls per proxy (best kept), default 3
 *   --concurrency / BENCH_CONCURRENCY  simultaneous cold pulls in phases (c) and (e), default 8
 *   --quick / BENCH_QUICK              shapes 1x64,10x8, one cold and warm run, 4 concurrent pulls
 *   --json / BENCH_JSON                also write the reports as JSON to this file
 *   --timeout / BENCH_TIMEOUT          whole-run limit in seconds, default 2400
 *
 * One cold big blob by curl (MB/s vs distribution's proxy and the upstream direct) is
 * bench/cold-fill.ts (npm run bench:fill).
 */
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import http from 'node:http';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { workerNodeArgs } from '../lib/ecosystem.js';
import { buildImage, writeOciLayout } from '../test/helpers/oci-image.js';
import { STEVEDORE_BIN, distributionRequests, freePort, startDistribution } from '../test/helpers/processes.js';
import { startAppliance } from '../test/helpers/appliance.js';
import { numberOption, option } from './options.js';
import { children, childrenCpuTimeMs, cleanup, cpuTimeMs, logger, median, newTempDir, roundOrder, run, runBenchmark, samplePeakRss, stopProcess, tempDirs } from './harness.js';

const MiB = 1024 * 1024;
/** The image of the fresh-start phases; the running-cache phases pull images of their own (runShape). */
const REPO = 'bench/app';
const TAG = 'latest';
const PULL_TIMEOUT_MS = 300_000;
/** The upstream's access log must be silent this long before a phase's requests are counted. */
const QUIET_MS = 2_000;
const QUIET_MAX_MS = 90_000;

// ---------------------------------------------------------------------------------------------
// Options

/** --quick (BENCH_QUICK=1): one cold and one warm run, 4 concurrent pulls, smaller shapes: a few minutes. */
const QUICK = ['1', 'true', 'yes'].includes(option('quick', 'BENCH_QUICK', 'false').toLowerCase());

/** `LxM` image shapes: L layers of M MiB each. */
function parseShapes(text: string): Array<{ layers: number; layerMiB: number }> {
  return text.split(',').map((t) => t.trim()).filter(Boolean).map((t) => {
    const m = /^(\d+)x(\d+)$/.exec(t);
    if (!m || Number(m[1]) < 1 || Number(m[2]) < 1) throw new Error(`--shapes (BENCH_SHAPES): "${t}" is not LAYERSxMIB, e.g. 1x200`);
    return { layers: Number(m[1]), layerMiB: Number(m[2]) };
  });
}

const legacyShape = option('layers', 'BENCH_LAYERS', '') || option('layer-mb', 'BENCH_LAYER_MB', '')
  ? `${numberOption('layers', 'BENCH_LAYERS', 10, { min: 1, max: 100, integer: true })}x${numberOption('layer-mb', 'BENCH_LAYER_MB', 8, { min: 1, max: 1024, integer: true })}`
  : undefined;

const OPTS = {
  shapes: parseShapes(option('shapes', 'BENCH_SHAPES', legacyShape ?? (QUICK ? '1x64,10x8' : '1x200,10x20'))),
  kinds: option('kinds', 'BENCH_PROXY_KINDS', 'stevedore,appliance,distribution').split(',').map((k) => k.trim()),
  coldRuns: numberOption('cold-runs', 'BENCH_COLD_RUNS', QUICK ? 1 : 3, { min: 1, max: 20, integer: true }),
  warmRuns: numberOption('warm-runs', 'BENCH_WARM_RUNS', QUICK ? 1 : 3, { min: 1, max: 20, integer: true }),
  concurrency: numberOption('concurrency', 'BENCH_CONCURRENCY', QUICK ? 4 : 8, { min: 1, max: 64, integer: true }),
  json: option('json', 'BENCH_JSON', '') || undefined,
  timeoutS: numberOption('timeout', 'BENCH_TIMEOUT', 2400, { min: 10, max: 86_400, integer: true }),
};

const log = logger('proxy-bench');

function httpGet(url: string, headers: Record<string, string> = {}, timeoutMs = 5_000): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers, signal: AbortSignal.timeout(timeoutMs) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
  });
}

// ---------------------------------------------------------------------------------------------
// Servers

interface Server {
  kind: 'stevedore' | 'appliance' | 'distribution';
  /** Path prefix of the image in this server (the appliance: the upstream's host). */
  prefix?: string;
  url: string;
  /** host:port, for docker:// references. */
  hostPort: string;
  output(): string;
  stop(): Promise<void>;
  /** Resolves once the server has stored every one of `digests` (distribution fills in the background). */
  hasBlobs(digests: string[]): Promise<boolean>;
  /** The processes serving (the appliance's): for RSS. */
  processes?: () => Array<{ pid: number; name: string }>;
  /** Every process doing the server's work: for CPU time. */
  pids: () => number[];
}

function hostPortOf(url: string): string {
  return new URL(url).host;
}

async function startUpstream(): Promise<Server> {
  const d = await startDistribution();
  children.add(d.proc);
  tempDirs.add(dirname(d.root));
  return {
    kind: 'distribution', url: d.url, hostPort: hostPortOf(d.url), output: d.output,
    stop: async () => { await d.stop(); children.delete(d.proc); },
    hasBlobs: async () => true,
    pids: () => [d.proc.pid!],
  };
}

async function startDistributionProxy(upstreamUrl: string): Promise<Server> {
  const d = await startDistribution({ proxy: { remoteurl: upstreamUrl } });
  children.add(d.proc);
  tempDirs.add(dirname(d.root));
  return {
    kind: 'distribution', url: d.url, hostPort: hostPortOf(d.url), output: d.output,
    stop: async () => {
      await d.stop();
      children.delete(d.proc);
      await rm(dirname(d.root), { recursive: true, force: true });
      tempDirs.delete(dirname(d.root));
    },
    hasBlobs: async (digests) => digests.every((digest) => {
      const hex = digest.slice('sha256:'.length);
      return existsSync(join(d.root, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data'));
    }),
    pids: () => [d.proc.pid!],
  };
}

/** `stevedore registry --upstream` at log level warn, ready once /v2/ answers. */
async function startStevedoreProxy(upstreamUrl: string): Promise<Server> {
  const dir = await newTempDir('stevedore-proxy-bench-');
  const root = join(dir, 'root');
  const port = await freePort();
  // The node options the appliance gives its workers (PM2's node_args), so this measures what it runs.
  const proc = spawn(process.execPath, [...workerNodeArgs(), STEVEDORE_BIN, 'registry', '--listen', `127.0.0.1:${port}`, '--root', root,
    '--upstream', upstreamUrl, '--log-level', process.env.BENCH_STEVEDORE_LOG_LEVEL || 'warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(proc);
  let text = '';
  proc.stdout!.on('data', (c: Buffer) => { text += c.toString(); });
  proc.stderr!.on('data', (c: Buffer) => { text += c.toString(); });
  proc.on('exit', (code, signal) => { text += `[stevedore exited: code ${code}, signal ${signal}]\n`; });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`stevedore exited with ${proc.exitCode}:\n${text.slice(-3000)}`);
    const res = await httpGet(`${url}/v2/`, {}, 1_000).catch(() => undefined);
    if (res && res.status === 200) break;
    if (Date.now() > deadline) throw new Error(`stevedore did not answer /v2/ within 15 s:\n${text.slice(-3000)}`);
    await sleep(100);
  }
  return {
    kind: 'stevedore', url, hostPort: hostPortOf(url), output: () => text,
    stop: async () => {
      await stopProcess(proc);
      children.delete(proc);
      await rm(dir, { recursive: true, force: true });
      tempDirs.delete(dir);
    },
    hasBlobs: async () => true,
    pids: () => [proc.pid!],
  };
}

/** Appliances still running: stopped at the end of the run, on a signal or on failure (runBenchmark). */
const runningAppliances = new Set<() => Promise<void>>();

/** The whole appliance (`stevedore start` under PM2, plain HTTP, no auth) with a cache worker for the upstream. */
async function startApplianceProxy(upstreamUrl: string): Promise<Server> {
  const host = hostPortOf(upstreamUrl);
  // A host with a port cannot be a path segment of an image reference (skopeo refuses it): an alias.
  const appliance = await startAppliance({ tls: false, auth: false, upstreams: [host], aliases: `up=${host}`, env: { LOG_LEVEL: process.env.BENCH_STEVEDORE_LOG_LEVEL || 'warn' } });
  const stop = async () => {
    runningAppliances.delete(stop);
    await appliance.stop();
  };
  runningAppliances.add(stop);
  return {
    kind: 'appliance', prefix: 'up', url: appliance.url, hostPort: appliance.host, output: () => appliance.output(),
    stop,
    hasBlobs: async () => true,
    processes: () => appliance.processes().map((p) => ({ pid: p.pid, name: p.name ?? (p.pid === appliance.proc.pid ? 'stevedore start' : 'pm2') })),
    pids: () => appliance.processes().map((p) => p.pid),
  };
}

// ---------------------------------------------------------------------------------------------
// Pulls and upstream accounting

/**
 * One `skopeo copy` of the image from `server`; resolves with its duration in seconds, or NaN if it
 * failed (the reason is added to `failures`: a failed pull is a result, not the end of the run).
 */
async function pull(server: Server, image: BenchImage, workDir: string, failures: string[]): Promise<number> {
  const dest = await mkdirUnique(workDir);
  try {
    const started = performance.now();
    const res = await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false',
      `docker://${server.hostPort}/${server.prefix ? `${server.prefix}/` : ''}${image.repo}:${TAG}`, `dir:${dest}`], PULL_TIMEOUT_MS);
    const seconds = (performance.now() - started) / 1000;
    if (res.code !== 0) throw new Error(`skopeo exit ${res.code}: ${res.stderr.trim().split('\n').pop()?.slice(0, 500)}`);
    await verifyPulled(dest, image);
    return seconds;
  } catch (err) {
    const message = (err as Error).message;
    failures.push(message);
    log(`pull via ${server.kind} FAILED: ${message}`);
    if (server.kind !== 'distribution') log(`${server.kind} output tail:\n${server.output().slice(-3000)}`);
    return NaN;
  } finally {
    await rm(dest, { recursive: true, force: true });
  }
}

let pullCounter = 0;
async function mkdirUnique(parent: string): Promise<string> {
  const dir = join(parent, `pull-${++pullCounter}`);
  await mkdir(dir, { recursive: true });
  return dir;
}

/** An image the upstream holds: its repository and the blobs its manifest lists (read back from the upstream). */
interface BenchImage {
  repo: string;
  blobs: Array<{ digest: string; size: number }>;
}

/** skopeo verifies digests; this checks that every layer and the config landed with the right size. */
async function verifyPulled(dest: string, image: BenchImage): Promise<void> {
  const names = new Set(await readdir(dest));
  for (const blob of image.blobs) {
    const hex = blob.digest.slice('sha256:'.length);
    if (!names.has(hex)) throw new Error(`pull into ${dest} lacks blob ${blob.digest}`);
    const info = await stat(join(dest, hex));
    if (info.size !== blob.size) throw new Error(`pulled blob ${blob.digest} has ${info.size} bytes, expected ${blob.size}`);
  }
}

/**
 * Waits until none of `servers` has written to its log for QUIET_MS and (after a pull) `proxy`
 * holds every blob: distribution's proxy keeps filling its store in the background after it answered.
 */
async function settle(servers: Server[], proxy: Server, image: BenchImage, afterPull: boolean): Promise<void> {
  const deadline = Date.now() + QUIET_MAX_MS;
  let lengths = servers.map((s) => s.output().length);
  let quietSince = Date.now();
  while (Date.now() < deadline) {
    await sleep(250);
    const now = servers.map((s) => s.output().length);
    if (now.some((n, i) => n !== lengths[i])) {
      lengths = now;
      quietSince = Date.now();
      continue;
    }
    if (Date.now() - quietSince >= QUIET_MS && (!afterPull || await proxy.hasBlobs(image.blobs.map((b) => b.digest)))) return;
  }
  const stored = await proxy.hasBlobs(image.blobs.map((b) => b.digest));
  log(`warning: ${proxy.kind} did not settle within ${QUIET_MAX_MS / 1000} s (last log write ${((Date.now() - quietSince) / 1000).toFixed(1)} s ago, `
    + `all blobs stored: ${stored}); counting what was logged`);
}

interface UpstreamCounts {
  /** Upstream GETs of each expected blob (every digest present, 0 if never fetched). */
  blobGets: Record<string, number>;
  blobGetsTotal: number;
  blobGetsMax: number;
  blobGetsMin: number;
  blobHeads: number;
  manifestGets: number;
  manifestHeads: number;
  non2xx: number;
  requests: number;
}

function countUpstream(logSlice: string, image: BenchImage): UpstreamCounts {
  const requests = distributionRequests(logSlice);
  const blobGets: Record<string, number> = {};
  for (const b of image.blobs) blobGets[b.digest] = 0;
  let blobHeads = 0;
  let manifestGets = 0;
  let manifestHeads = 0;
  let non2xx = 0;
  const blobPath = new RegExp(`^/v2/${image.repo}/blobs/(sha256:[0-9a-f]{64})$`);
  const manifestPath = new RegExp(`^/v2/${image.repo}/manifests/`);
  for (const r of requests) {
    if (r.status >= 300) non2xx++;
    const blob = blobPath.exec(r.path.split('?')[0]!);
    if (blob) {
      if (r.method === 'GET') blobGets[blob[1]!] = (blobGets[blob[1]!] ?? 0) + 1;
      else if (r.method === 'HEAD') blobHeads++;
    } else if (manifestPath.test(r.path)) {
      if (r.method === 'GET') manifestGets++;
      else if (r.method === 'HEAD') manifestHeads++;
    }
  }
  const counts = Object.values(blobGets);
  return {
    blobGets,
    blobGetsTotal: counts.reduce((a, b) => a + b, 0),
    blobGetsMax: Math.max(...counts),
    blobGetsMin: Math.min(...counts),
    blobHeads, manifestGets, manifestHeads, non2xx, requests: requests.length,
  };
}

/** Lines a Stevedore worker logged at warn or above, anything not JSON (a crash), and its exit. */
function stevedoreComplaints(output: string): string[] {
  return output.split('\n').filter((line) => {
    if (line.trim() === '') return false;
    // The appliance: PM2's own lines, and the gateway's expected warnings about plain HTTP without auth.
    if (/PM2 log:|no TLS certificate found|REGISTRY_AUTH is not htpasswd/.test(line)) return false;
    try {
      const entry = JSON.parse(line) as { level?: number };
      return typeof entry.level !== 'number' || entry.level >= 40;
    } catch {
      // Stack traces, and the exit marker: complaints are collected before a server is stopped.
      return true;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Phases

type Kind = 'stevedore' | 'appliance' | 'distribution';
const ALL_KINDS: Kind[] = ['stevedore', 'appliance', 'distribution'];
const KINDS: Kind[] = ALL_KINDS.filter((k) => OPTS.kinds.includes(k));

/**
 * Cold pulls (empty cache for the image) in one of two process states:
 *  - fresh: each pull through a newly started cache, the first work the process does (the only
 *    phase of earlier versions of this bench): a Node process pays its JIT and first heap growth there;
 *  - running: pulls of images new to a cache that has already served one pull (of another image of
 *    the same shape), the state a cache that has been up for a while is in.
 */
interface ColdResult {
  seconds: number[];
  upstream: UpstreamCounts[];
  /** CPU seconds per cold pull: the client (skopeo), the upstream, the cache (until it settled). */
  cpu: PullCpu[];
  /** Peak RSS (MB) per process during the cold pulls (the appliance's processes). */
  rss: Record<string, number>;
  concurrentWallSeconds: number;
  concurrentPullSeconds: number[];
  concurrentUpstream: UpstreamCounts | undefined;
  concurrentFailed: number;
}

interface KindResult {
  fresh: ColdResult;
  running: ColdResult;
  warmSeconds: number[];
  /** Why pulls failed, in every phase. */
  failures: string[];
  /** Lines distribution logged at level=error (its own log), or Stevedore's warn/error lines. */
  complaints: string[];
}

interface PullCpu {
  client: number;
  upstream: number;
  cache: number;
}

/** CPU seconds (user + system) used so far by `pids` (a process that is gone counts 0). */
function cpuSeconds(pids: number[]): number {
  return pids.reduce((sum, pid) => sum + (cpuTimeMs(pid)?.total ?? 0), 0) / 1000;
}

/** CPU seconds of this process's children that exited and were waited for (skopeo, after its pull). */
const childrenCpuSeconds = () => childrenCpuTimeMs() / 1000;

function emptyCold(): ColdResult {
  return { seconds: [], upstream: [], cpu: [], rss: {}, concurrentWallSeconds: NaN, concurrentPullSeconds: [], concurrentUpstream: undefined, concurrentFailed: 0 };
}

function emptyResult(): KindResult {
  return { fresh: emptyCold(), running: emptyCold(), warmSeconds: [], failures: [], complaints: [] };
}

const load = () => loadavg().map((l) => l.toFixed(1)).join(' ');

/** Peak VmRSS (MB) by process name (the highest of the processes sharing one), sampled every 50 ms until stop(). */
function sampleRss(processes: Array<{ pid: number; name: string }>): () => Record<string, number> {
  const sampler = samplePeakRss(processes.map((p) => p.pid), 50);
  return () => {
    const peakKb = sampler.stop();
    const peak: Record<string, number> = {};
    for (const p of processes) {
      const kb = peakKb.get(p.pid);
      if (kb !== undefined) peak[p.name] = Math.max(peak[p.name] ?? 0, (kb * 1024) / 1e6);
    }
    return peak;
  };
}

/** Builds an image of the shape (random layers), pushes it to the upstream as `repo:TAG`, and reads its blobs back. */
async function pushImage(upstream: Server, work: string, repo: string, layers: number, layerMiB: number): Promise<BenchImage> {
  const built = buildImage({ layerSizes: Array.from({ length: layers }, () => layerMiB * MiB), seed: `proxy-bench-${repo}-${layers}x${layerMiB}` });
  const layout = join(work, `oci-${repo.replaceAll('/', '-')}-${layers}x${layerMiB}`);
  await writeOciLayout(layout, TAG, [built]);
  const push = await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--dest-tls-verify=false', '--preserve-digests',
    `oci:${layout}:${TAG}`, `docker://${upstream.hostPort}/${repo}:${TAG}`], PULL_TIMEOUT_MS);
  if (push.code !== 0) throw new Error(`seeding the upstream with ${repo} failed: ${push.stderr}`);
  await rm(layout, { recursive: true, force: true });
  // The blobs the upstream serves for the tag (read back, not assumed).
  const manifestRes = await httpGet(`${upstream.url}/v2/${repo}/manifests/${TAG}`, {
    accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json',
  });
  if (manifestRes.status !== 200) throw new Error(`upstream manifest GET of ${repo} answered ${manifestRes.status}`);
  const manifest = JSON.parse(manifestRes.body.toString('utf8')) as { config: { digest: string; size: number }; layers: Array<{ digest: string; size: number }> };
  return { repo, blobs: [manifest.config, ...manifest.layers].map((d) => ({ digest: d.digest, size: d.size })) };
}

/** One cold pull of `image` through `server`: its time, upstream GETs, CPU and (the appliance) peak RSS, into `cold`. */
async function coldPull(upstream: Server, server: Server, image: BenchImage, work: string, result: KindResult, cold: ColdResult, label: string): Promise<void> {
  await settle([upstream, server], server, image, false);
  const mark = upstream.output().length;
  const failed = result.failures.length;
  const stopRss = server.processes ? sampleRss(server.processes()) : undefined;
  const cpu0 = { client: childrenCpuSeconds(), upstream: cpuSeconds(upstream.pids()), cache: cpuSeconds(server.pids()) };
  const seconds = await pull(server, image, work, result.failures);
  const client = childrenCpuSeconds() - cpu0.client;
  if (stopRss) for (const [name, mb] of Object.entries(stopRss())) cold.rss[name] = Math.max(cold.rss[name] ?? 0, mb);
  await settle([upstream, server], server, image, result.failures.length === failed);
  // The cache's and upstream's CPU until it settled: distribution's proxy goes on storing after it answered.
  cold.cpu.push({ client, upstream: cpuSeconds(upstream.pids()) - cpu0.upstream, cache: cpuSeconds(server.pids()) - cpu0.cache });
  const counts = countUpstream(upstream.output().slice(mark), image);
  cold.seconds.push(seconds);
  cold.upstream.push(counts);
  log(`${label} via ${server.kind}: ${seconds.toFixed(2)} s; upstream blob GETs ${counts.blobGetsTotal} `
    + `(per blob ${counts.blobGetsMin}..${counts.blobGetsMax}), blob HEADs ${counts.blobHeads}, manifest GET/HEAD ${counts.manifestGets}/${counts.manifestHeads} (load ${load()})`);
}

/** --concurrency simultaneous pulls of `image`, new to `server`'s cache: wall time and upstream GETs, into `cold`. */
async function concurrentPulls(upstream: Server, server: Server, image: BenchImage, work: string, result: KindResult, cold: ColdResult, label: string): Promise<void> {
  await settle([upstream, server], server, image, false);
  const mark = upstream.output().length;
  const started = performance.now();
  const failed = result.failures.length;
  const seconds = await Promise.all(Array.from({ length: OPTS.concurrency }, () => pull(server, image, work, result.failures)));
  const wall = (performance.now() - started) / 1000;
  cold.concurrentFailed = result.failures.length - failed;
  await settle([upstream, server], server, image, cold.concurrentFailed === 0);
  const counts = countUpstream(upstream.output().slice(mark), image);
  cold.concurrentWallSeconds = wall;
  cold.concurrentPullSeconds = seconds;
  cold.concurrentUpstream = counts;
  log(`${OPTS.concurrency} concurrent cold pulls (${label}) via ${server.kind}: ${wall.toFixed(2)} s wall; upstream blob GETs ${counts.blobGetsTotal} `
    + `(per blob ${counts.blobGetsMin}..${counts.blobGetsMax}), blob HEADs ${counts.blobHeads}, manifest GET/HEAD ${counts.manifestGets}/${counts.manifestHeads} (load ${load()})`);
}

/** A pull of `image` from the upstream directly: the baseline of a round. */
async function directPull(upstream: Server, image: BenchImage, work: string, direct: DirectResult, into: DirectRuns, label: string): Promise<void> {
  const [client0, upstream0] = [childrenCpuSeconds(), cpuSeconds(upstream.pids())];
  const seconds = await pull(upstream, image, work, direct.failures);
  into.seconds.push(seconds);
  into.cpu.push({ client: childrenCpuSeconds() - client0, upstream: cpuSeconds(upstream.pids()) - upstream0, cache: 0 });
  log(`${label} from the upstream: ${seconds.toFixed(2)} s (load ${load()})`);
}

/** One image shape, every phase, every kind; returns the report. */
async function runShape(layers: number, layerMiB: number, work: string): Promise<string> {
  const loadStart = load();
  log('starting the upstream docker-registry');
  const upstream = await startUpstream();
  // The fresh-start phases pull REPO through a new cache each time. A running cache holds every
  // image it has pulled, so its phases need one new image per pull: a warm-up, one per cold run,
  // one for the concurrent pulls. All have the same shape and random content of their own.
  const runningRepos = ['bench/warmup', ...Array.from({ length: OPTS.coldRuns }, (_, i) => `bench/cold-${i + 1}`), 'bench/concurrent'];
  const images = new Map<string, BenchImage>();
  for (const repo of [REPO, ...runningRepos]) {
    log(`building ${repo} (${layers} x ${layerMiB} MiB random content) and pushing it to the upstream`);
    images.set(repo, await pushImage(upstream, work, repo, layers, layerMiB));
  }
  const image = images.get(REPO)!;
  const imageBytes = image.blobs.reduce((a, b) => a + b.size, 0);
  log(`upstream ${upstream.url} holds ${images.size} images of ${image.blobs.length} blobs, ${(imageBytes / MiB).toFixed(1)} MiB each`);

  const start = (kind: Kind) => (kind === 'stevedore' ? startStevedoreProxy(upstream.url)
    : kind === 'appliance' ? startApplianceProxy(upstream.url) : startDistributionProxy(upstream.url));
  const results = Object.fromEntries(KINDS.map((k) => [k, emptyResult()])) as Record<Kind, KindResult>;
  const direct: DirectResult = { fresh: { seconds: [], cpu: [] }, running: { seconds: [], cpu: [] }, failures: [] };
  const noteComplaints = (server: Server) => {
    if (server.kind !== 'distribution') results[server.kind].complaints.push(...stevedoreComplaints(server.output()));
    else results.distribution.complaints.push(...server.output().split('\n').filter((l) => l.includes('level=error')));
  };

  // (a) cold pulls, each through a freshly started cache, and a pull from the upstream directly in
  // each round; the last instances stay up for (b).
  const warmServers: Partial<Record<Kind, Server>> = {};
  for (let round = 0; round < OPTS.coldRuns; round++) {
    await directPull(upstream, image, work, direct, direct.fresh, `direct pull ${round + 1}/${OPTS.coldRuns}`);
    for (const kind of roundOrder(KINDS, round)) {
      const server = await start(kind);
      await coldPull(upstream, server, image, work, results[kind], results[kind].fresh, `cold pull ${round + 1}/${OPTS.coldRuns} (fresh start)`);
      if (round === OPTS.coldRuns - 1) warmServers[kind] = server;
      else {
        noteComplaints(server);
        await server.stop();
      }
    }
  }

  // (b) warm pulls, interleaved.
  for (let i = 0; i < OPTS.warmRuns; i++) {
    for (const kind of roundOrder(KINDS, i)) {
      const server = warmServers[kind]!;
      const seconds = await pull(server, image, work, results[kind].failures);
      results[kind].warmSeconds.push(seconds);
      log(`warm pull ${i + 1}/${OPTS.warmRuns} via ${kind}: ${seconds.toFixed(2)} s (load ${load()})`);
    }
  }
  for (const kind of KINDS) {
    noteComplaints(warmServers[kind]!);
    await warmServers[kind]!.stop();
  }

  // (c) concurrent cold pulls through a freshly started cache.
  for (const kind of KINDS) {
    const server = await start(kind);
    await concurrentPulls(upstream, server, image, work, results[kind], results[kind].fresh, 'fresh start');
    noteComplaints(server);
    await server.stop();
  }

  // (d) cold pulls into running caches: each cache first pulls the warm-up image (not counted), then
  // each round pulls an image it has never seen, interleaved with a direct pull of that image.
  const running: Partial<Record<Kind, Server>> = {};
  for (const kind of KINDS) {
    const server = await start(kind);
    running[kind] = server;
    // Measured like any cold pull, into a result that is thrown away (a failure still counts).
    await coldPull(upstream, server, images.get('bench/warmup')!, work, results[kind], emptyCold(), 'warm-up pull (not counted)');
  }
  for (let round = 0; round < OPTS.coldRuns; round++) {
    const cold = images.get(`bench/cold-${round + 1}`)!;
    await directPull(upstream, cold, work, direct, direct.running, `direct pull of ${cold.repo}`);
    for (const kind of roundOrder(KINDS, round)) {
      await coldPull(upstream, running[kind]!, cold, work, results[kind], results[kind].running, `cold pull ${round + 1}/${OPTS.coldRuns} (running cache)`);
    }
  }

  // (e) concurrent cold pulls of one more new image into the running caches.
  for (const kind of KINDS) {
    await concurrentPulls(upstream, running[kind]!, images.get('bench/concurrent')!, work, results[kind], results[kind].running, 'running cache');
    noteComplaints(running[kind]!);
    await running[kind]!.stop();
  }
  await upstream.stop();

  return report(results, direct, image.blobs.length, imageBytes, layers, layerMiB, loadStart);
}

async function main(): Promise<void> {
  const work = await newTempDir('proxy-bench-');
  const reports: string[] = [];
  for (const shape of OPTS.shapes) {
    reports.push(await runShape(shape.layers, shape.layerMiB, work));
    process.stdout.write(`\n${reports.at(-1)}\n`);
  }
  if (OPTS.json) {
    writeFileSync(OPTS.json, `${JSON.stringify({ options: OPTS, reports }, null, 2)}\n`);
    log(`wrote ${OPTS.json}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Report

/** The smallest finite value (failed pulls are NaN), or NaN if none. */
const min = (xs: number[]) => {
  const ok = xs.filter(Number.isFinite);
  return ok.length > 0 ? Math.min(...ok) : NaN;
};
const fmtS = (s: number) => (Number.isFinite(s) ? `${s.toFixed(2)} s` : 'n/a');
const ratio = (a: number, b: number) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? (a / b).toFixed(2) : 'n/a');

interface DirectRuns {
  seconds: number[];
  cpu: PullCpu[];
}

/** Pulls from the upstream directly: one per round of each cold phase, of the image that round pulls. */
interface DirectResult {
  fresh: DirectRuns;
  running: DirectRuns;
  failures: string[];
}

/** Median CPU seconds per pull, by party, and their sum. */
function cpuOf(list: PullCpu[]): PullCpu & { total: number } {
  const [client, upstream, cache] = [median(list.map((c) => c.client)), median(list.map((c) => c.upstream)), median(list.map((c) => c.cache))];
  return { client, upstream, cache, total: client + upstream + cache };
}

function report(results: Record<Kind, KindResult>, direct: DirectResult, n: number, imageBytes: number, layers: number, layerMiB: number, loadStart: string): string {
  const perBlob = (c: UpstreamCounts | undefined) => (c ? `${c.blobGetsTotal} (${c.blobGetsMin}..${c.blobGetsMax}/blob)` : 'n/a');
  const exactlyOnce = (c: UpstreamCounts | undefined) => c !== undefined && c.blobGetsMin === 1 && c.blobGetsMax === 1;
  const worst = (list: UpstreamCounts[]) => list.reduce((a, c) => (c.blobGetsMax > a.blobGetsMax || c.blobGetsMin < a.blobGetsMin ? c : a));
  const list = (xs: number[]) => xs.map((x) => (Number.isFinite(x) ? x.toFixed(2) : 'failed')).join(', ');
  const withFailed = (text: string, failed: number) => (failed > 0 ? `${text} (${failed} failed)` : text);
  const dist = results.distribution;
  const cores = availableParallelism();
  const cpuCell = (c: PullCpu & { total: number }) => (Number.isFinite(c.total) ? `${c.client.toFixed(2)}+${c.upstream.toFixed(2)}+${c.cache.toFixed(2)}=${c.total.toFixed(2)}` : 'n/a');
  const header = ['metric', ...KINDS, 'direct from upstream'];
  /** The rows of one cold phase. */
  const coldRows = (phase: 'fresh' | 'running', title: string): string[][] => {
    const directBest = min(direct[phase].seconds);
    const cold = (k: Kind) => results[k][phase];
    // With every process's CPU perfectly spread over the cores, a pull cannot take less than total/cores:
    // that floor over the direct pull's time is the best ratio this machine allows.
    const floor = (c: PullCpu & { total: number }) => ratio(c.total / cores, directBest);
    return [
      [`${title}, best of ${OPTS.coldRuns}`, ...KINDS.map((k) => fmtS(min(cold(k).seconds))), fmtS(directBest)],
      ['  cold / direct (goal <= 1.2 for 1 big layer, <= 1.10 for 10)', ...KINDS.map((k) => ratio(min(cold(k).seconds), directBest)), '1.00'],
      ['  cold / distribution\'s proxy', ...KINDS.map((k) => ratio(min(cold(k).seconds), min(dist?.[phase].seconds ?? []))), '-'],
      [`  CPU s per cold pull, median: skopeo+upstream+cache=total`, ...KINDS.map((k) => cpuCell(cpuOf(cold(k).cpu))), cpuCell(cpuOf(direct[phase].cpu))],
      [`  CPU-bound floor: (total / ${cores} cores) / direct wall`, ...KINDS.map((k) => floor(cpuOf(cold(k).cpu))), floor(cpuOf(direct[phase].cpu))],
      [`  upstream blob GETs per cold pull (${n} blobs; worst run)`, ...KINDS.map((k) => perBlob(worst(cold(k).upstream))), '-'],
      [`  ${OPTS.concurrency} concurrent cold pulls, wall`, ...KINDS.map((k) => withFailed(fmtS(cold(k).concurrentWallSeconds), cold(k).concurrentFailed)), '-'],
      ['    / distribution\'s proxy (goal <= 0.9)', ...KINDS.map((k) => ratio(cold(k).concurrentWallSeconds, dist?.[phase].concurrentWallSeconds ?? NaN)), '-'],
      [`    upstream blob GETs (goal ${n})`, ...KINDS.map((k) => perBlob(cold(k).concurrentUpstream)), '-'],
    ];
  };
  const rows: string[][] = [
    ...coldRows('fresh', 'cold pull, fresh start (a new cache process each, its first pull)'),
    ...coldRows('running', 'cold pull, running cache (a new image; the process has served one pull)'),
    [`warm pull, best of ${OPTS.warmRuns}`, ...KINDS.map((k) => fmtS(min(results[k].warmSeconds))), '-'],
    [`failed pulls (all phases)`, ...KINDS.map((k) => String(results[k].failures.length)), String(direct.failures.length)],
  ];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  const out = [
    `Pull-through cache: images of ${n} blobs (${layers} layers x ${layerMiB} MiB + config), ${(imageBytes / MiB).toFixed(1)} MiB; `
      + 'skopeo copy docker:// -> dir:, loopback, upstream = docker-registry 2.8.2; stevedore = one cache worker, appliance = stevedore start (PM2, gateway, plain HTTP)',
    line(header),
    `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`,
    ...rows.map(line),
    '',
    ...(['fresh', 'running'] as const).flatMap((phase) => [
      `cold pulls, ${phase} (s): ${KINDS.map((k) => `${k} ${list(results[k][phase].seconds)}`).join('; ')}; direct ${list(direct[phase].seconds)}`,
      `concurrent pulls, ${phase}, each (s): ${KINDS.map((k) => `${k} ${list(results[k][phase].concurrentPullSeconds)}`).join('; ')}`,
    ]),
    `warm pulls (s): ${KINDS.map((k) => `${k} ${list(results[k].warmSeconds)}`).join('; ')}`,
    `exactly one upstream GET per blob: ${KINDS.filter((k) => k !== 'distribution').map((k) => `${k} ${(['fresh', 'running'] as const).every((p) => results[k][p].upstream.every(exactlyOnce) && exactlyOnce(results[k][p].concurrentUpstream)) ? 'yes' : 'NO'}`).join(', ')}`,
  ];
  for (const phase of ['fresh', 'running'] as const) {
    if (results.appliance) out.push(`appliance peak RSS per process during cold pulls, ${phase} (MB): ${Object.entries(results.appliance[phase].rss).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}`);
  }
  for (const kind of KINDS) {
    const r = results[kind];
    out.push(`${kind}: ${r.failures.length} failed pulls, ${r.complaints.length} ${kind === 'distribution' ? 'level=error log lines' : 'warn/error log lines'}`);
    for (const failure of r.failures.slice(0, 5)) out.push(`  failed pull: ${failure.slice(0, 400)}`);
    for (const l of r.complaints.slice(0, 5)) out.push(`  log: ${l.slice(0, 400)}`);
  }
  out.push(`load average at start ${loadStart}, at end ${load()} (2 cores: above ~2 other work competed)`);
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------

await runBenchmark(main, {
  timeoutS: OPTS.timeoutS, log,
  stop: async () => {
    for (const stop of [...runningAppliances]) await stop().catch(() => {});
    await cleanup();
  },
});
