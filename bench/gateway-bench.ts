/**
 * What the gateway costs: the whole appliance (`stevedore start` under PM2: gateway, hosted worker
 * on its unix socket, logger, cleaner) against the same hosted worker reached directly, and against
 * the Debian `docker-registry` (CNCF distribution 2.8), side by side on loopback, in one run:
 * large-blob GET MB/s (curl) and manifest GET by tag req/s (wrk, 16 and 64 connections).
 *
 *   npm run bench:gateway                                   # defaults (512 MiB blob, 10 s wrk runs)
 *   BENCH_BLOB_MB=64 BENCH_DURATION=3 BENCH_RUNS=1 npm run bench:gateway   # quick run
 *   node dist/bench/gateway-bench.js --variants plain --json out.json
 *
 * Targets, all serving the same content (pushed once through the plain gateway into one data root,
 * which every appliance and the direct worker share; distribution gets the same images):
 *   gateway plain   appliance, plain HTTP, REGISTRY_AUTH=none: the gateway's routing/proxy cost
 *   gateway auth    appliance, plain HTTP, REGISTRY_AUTH=htpasswd, requests as a read-only user
 *   gateway tls     appliance, HTTPS + htpasswd (informational: distribution and the worker are plain HTTP)
 *   direct worker   `stevedore registry --listen 127.0.0.1:PORT --root <the appliances' root>`
 *   distribution    docker-registry with the test helper's config (access log on)
 * Targets: gateway/direct >= 0.85 (the gateway costs < 15%) and gateway/distribution >= 1.0.
 * The last column gives gateway/direct within each round as well: the machine's capacity drifts by
 * ±25% over minutes here, so best/best alone can swing either way between runs.
 *
 * Options (flag, else environment variable):
 *   --blob-mb / BENCH_BLOB_MB        large blob size in MiB, default 512
 *   --runs / BENCH_RUNS              rounds per wrk measurement, targets interleaved (best is kept), default 3
 *   --get-runs / BENCH_GET_RUNS      rounds of large-blob GETs (a GET takes well under a second), default 7
 *   --duration / BENCH_DURATION      seconds per wrk measurement, default 10 (plus 2 s warm-up)
 *   --wrk-threads / BENCH_WRK_THREADS  wrk threads, default 1 (2 cores shared with the servers)
 *   --variants / BENCH_GATEWAY_VARIANTS  gateway variants to run, default "plain,auth,tls"
 *   --prof / BENCH_GATEWAY_PROF      directory: CPU profile of the plain appliance's gateway, whole run
 *                                    (.cpuprofile, through the inspector: NODE_OPTIONS may not carry --cpu-prof)
 *   --wait / BENCH_WAIT              seconds to wait for other benchmarks to finish first, default 600
 *   --json / BENCH_JSON              also write the results as JSON to this file
 *   --timeout / BENCH_TIMEOUT        whole-run limit in seconds, default 1800
 *
 * Throughput is MB/s (10^6 bytes per second). CPU is the processes' utime+stime from /proc.
 */
import { spawn } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildImage } from '../test/helpers/oci-image.js';
import { workerNodeArgs } from '../lib/ecosystem.js';
import { startAppliance, type Appliance } from '../test/helpers/appliance.js';
import { startStevedoreRegistry, tempDir } from '../test/helpers/processes.js';
import { children, cleanup, cpuTimeMs, logger, median, run, runBenchmark, samplePeakRss, stopProcess, tempDirs } from './harness.js';
import { numberOption, option } from './options.js';
import {
  MANIFEST_TYPE, MiB, REPO, curlGet, expectStatus, fmt, makeBlob,
  pushChunked, pushMonolithic, request, seedImage, settle, startDist, wrk, type GeneratedBlob, type Server, type WrkResult,
} from './registry-bench.js';

const VARIANTS = ['plain', 'auth', 'tls'] as const;
type Variant = typeof VARIANTS[number];

/** --quick (BENCH_QUICK=1): smaller blobs, short and single runs, plain gateway only: a few minutes. */
const QUICK = ['1', 'true', 'yes'].includes(option('quick', 'BENCH_QUICK', 'false').toLowerCase());

const OPTS = {
  blobMiB: numberOption('blob-mb', 'BENCH_BLOB_MB', QUICK ? 128 : 512, { min: 1 }),
  runs: Math.floor(numberOption('runs', 'BENCH_RUNS', QUICK ? 1 : 3, { min: 1 })),
  getRuns: Math.floor(numberOption('get-runs', 'BENCH_GET_RUNS', QUICK ? 3 : 7, { min: 1 })),
  duration: Math.floor(numberOption('duration', 'BENCH_DURATION', QUICK ? 3 : 10, { min: 1 })),
  pushMiB: numberOption('push-mb', 'BENCH_PUSH_MB', QUICK ? 64 : 256, { min: 0 }),
  pushRuns: Math.floor(numberOption('push-runs', 'BENCH_PUSH_RUNS', QUICK ? 1 : 3, { min: 1 })),
  chunkMiB: numberOption('chunk-mb', 'BENCH_CHUNK_MB', 16, { min: 1, integer: true }),
  wrkThreads: Math.floor(numberOption('wrk-threads', 'BENCH_WRK_THREADS', 1, { min: 1 })),
  variants: option('variants', 'BENCH_GATEWAY_VARIANTS', QUICK ? 'plain' : VARIANTS.join(',')).split(',').map((v) => v.trim()).filter(Boolean),
  prof: option('prof', 'BENCH_GATEWAY_PROF', '') || undefined,
  waitS: numberOption('wait', 'BENCH_WAIT', QUICK ? 0 : 600, { min: 0 }),
  json: option('json', 'BENCH_JSON', '') || undefined,
  timeoutS: numberOption('timeout', 'BENCH_TIMEOUT', 1800, { min: 10 }),
};
for (const v of OPTS.variants) {
  if (!(VARIANTS as readonly string[]).includes(v)) throw new Error(`--variants (BENCH_GATEWAY_VARIANTS): unknown variant "${v}" (known: ${VARIANTS.join(', ')})`);
}

/**
 * Preloaded into the profiled appliance's processes: in PM2's `gateway` app, records a CPU profile
 * from start to exit and writes it as <dir>/gateway.<pid>.cpuprofile (Chrome DevTools format).
 */
const CPU_PROFILE_PRELOAD = `
import { Session } from 'node:inspector';
import { writeFileSync } from 'node:fs';
if (process.env.pm_id !== undefined && process.env.name === 'gateway' && process.env.BENCH_CPU_PROFILE_DIR) {
  const session = new Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 200 });
  session.post('Profiler.start');
  process.once('exit', () => {
    session.post('Profiler.stop', (err, result) => {
      if (!err) writeFileSync(process.env.BENCH_CPU_PROFILE_DIR + '/gateway.' + process.pid + '.cpuprofile', JSON.stringify(result.profile));
    });
  });
}
`;

const MIN_DIRECT_RATIO = 0.85;
/** The issue's goal for small blobs: the gateway at >= 0.8x the worker alone (its distribution target stays). */
const MIN_SMALL_BLOB_RATIO = 0.8;
/** Pushes through the gateway: >= 0.9x a minimal hashing sink. */
const MIN_PUSH_SINK_RATIO = 0.9;
/** No process of the appliance above this RSS while serving the large blob. */
const MAX_PROCESS_RSS_MB = 120;
const MIN_DIST_RATIO = 1.0;
const OTHER_BENCHMARKS = 'registry-bench|proxy-bench|storage-bench';

const log = logger('gateway-bench');

// ---------------------------------------------------------------------------------------------
// Bookkeeping beyond registry-bench's (children, temp dirs): the appliances, stopped with stop().

const appliances = new Set<Appliance>();

async function stopAll(): Promise<void> {
  for (const appliance of appliances) {
    appliances.delete(appliance);
    const result = await appliance.stop().catch((err: unknown) => {
      log(`stopping appliance ${appliance.url} failed: ${(err as Error).message}`);
      return undefined;
    });
    if (result && result.survivors.length > 0) log(`appliance ${appliance.url}: killed ${result.survivors.length} survivor(s)`);
  }
  await cleanup();
}

/** Other benchmark processes (the 2 cores are shared): their command lines. */
async function otherBenchmarks(): Promise<string[]> {
  const { stdout } = await run('pgrep', ['-af', OTHER_BENCHMARKS], 10_000).catch(() => ({ stdout: '' }));
  return stdout.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith(`${process.pid} `));
}

async function waitForQuiet(): Promise<{ waitedS: number; stillRunning: string[] }> {
  const started = Date.now();
  let others = await otherBenchmarks();
  if (others.length > 0) log(`waiting up to ${OPTS.waitS} s for other benchmarks to finish:\n  ${others.join('\n  ')}`);
  while (others.length > 0 && Date.now() - started < OPTS.waitS * 1000) {
    await sleep(5_000);
    others = await otherBenchmarks();
  }
  const waitedS = Math.round((Date.now() - started) / 1000);
  if (others.length > 0) log(`other benchmarks still running after ${waitedS} s: measuring anyway (results will say so)`);
  return { waitedS, stillRunning: others };
}

/** CPU time of a process in ms, utime + stime and stime alone. */
function cpuMs(pid: number | undefined): { total: number; sys: number } | undefined {
  return pid === undefined ? undefined : cpuTimeMs(pid);
}

/** Peak VmRSS (MB) of each process, sampled every 20 ms until stop(). */
function sampleProcessesRss(processes: Array<{ pid: number; name: string }>): { stop: () => Array<{ name: string; pid: number; mb: number }> } {
  const sampler = samplePeakRss(processes.map((p) => p.pid), 20);
  return {
    stop: () => {
      const peak = sampler.stop();
      return processes.map((p) => ({ name: p.name, pid: p.pid, mb: ((peak.get(p.pid) ?? 0) * 1024) / 1e6 }));
    },
  };
}

/**
 * The push baseline: a minimal HTTP upload sink in its own process (node:http, no framework), doing
 * what a registry must at least do with the bytes: hash them and write them to a file, fsync at the
 * end, check the digest, and keep the file. POST answers 202 with a Location; PATCH appends; PUT
 * ?digest= finishes. It keeps its files as the registries keep their blobs (the scratch dir goes at
 * the end). On this VM, writing into memory the guest has not used for a while costs ~10x the system
 * time of writing into memory used a moment before (a Firecracker guest whose free pages go back to
 * the host, which then faults them in again): `dd` of 200 MiB into a new file took 0.46-0.61 s of
 * system time, and 0.05 s right after files of that size were deleted or once 10 GB had been touched
 * (until the host took them back, within minutes). So 256 MiB pushes to one worker spent 160-310 ms
 * of system time each while its blobs were deleted after each push, 570-720 ms once they were kept,
 * and a sink that deleted its file measured a cheaper machine than the one the registries ran on.
 */
const HASHING_SINK = `
const http = require('node:http'); const fs = require('node:fs'); const crypto = require('node:crypto'); const path = require('node:path');
const dir = process.argv[1]; const sessions = new Map(); let next = 0;
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (req.method === 'POST') { const id = String(++next); const file = path.join(dir, id); sessions.set(id, { hash: crypto.createHash('sha256'), fd: fs.openSync(file, 'w'), offset: 0 });
    req.resume(); req.on('end', () => { res.writeHead(202, { location: '/upload/' + id, 'content-length': 0 }); res.end(); }); return; }
  const id = url.pathname.split('/').pop(); const s = sessions.get(id);
  if (!s) { res.writeHead(404); res.end(); return; }
  const out = fs.createWriteStream('', { fd: s.fd, start: s.offset, autoClose: false, highWaterMark: 1 << 20 });
  req.on('data', (c) => { s.hash.update(c); s.offset += c.length; if (!out.write(c)) { req.pause(); out.once('drain', () => req.resume()); } });
  req.on('end', () => out.end(() => {
    if (req.method === 'PATCH') { res.writeHead(202, { location: '/upload/' + id, 'content-length': 0 }); res.end(); return; }
    fs.fsyncSync(s.fd); fs.closeSync(s.fd); sessions.delete(id);
    const ok = 'sha256:' + s.hash.digest('hex') === url.searchParams.get('digest');
    res.writeHead(ok ? 201 : 400, { 'content-length': 0 }); res.end();
  }));
});
server.listen(0, '127.0.0.1', () => process.stdout.write(server.address().port + '\\n'));
`;

async function startHashingSink(scratch: string): Promise<{ url: string; pid: number; stop: () => Promise<void> }> {
  const dir = join(scratch, 'sink');
  await mkdir(dir, { recursive: true });
  const proc = spawn(process.execPath, ['-e', HASHING_SINK, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(proc);
  const [line] = await once(proc.stdout!, 'data') as [Buffer];
  return {
    url: `http://127.0.0.1:${Number(line.toString().trim())}`, pid: proc.pid!,
    stop: async () => {
      await stopProcess(proc);
      children.delete(proc);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Targets

interface Target {
  key: 'gateway-plain' | 'gateway-auth' | 'gateway-tls' | 'direct' | 'distribution';
  label: string;
  url: string;
  /** Extra curl arguments (credentials, -k). */
  curl: string[];
  /** Extra request headers for wrk and the sanity checks. */
  headers: Record<string, string>;
  /** Processes whose CPU time is reported: the gateway (if any) and the process serving the content. */
  gatewayPid?: number;
  serverPid?: number;
  /** The appliance's other processes (logger, cleaner, PM2): their CPU is part of the appliance's cost. */
  otherPids?: number[];
}

function pidOf(appliance: Appliance, name: string): number | undefined {
  return appliance.processes().find((p) => p.name === name)?.pid;
}

/** A push target for registry-bench's helpers (they only use url and label). */
function asServer(label: string, url: string, pid: number): Server {
  return { label, url, pid, proc: undefined as never, output: () => '' };
}

/** Pushes a manifest REPO:large with the large blob as its layer, so that GC keeps the blob. */
async function pushLargeManifest(url: string, label: string, config: { digest: string; size: number; mediaType: string }, blob: GeneratedBlob): Promise<void> {
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: MANIFEST_TYPE,
    config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: blob.digest, size: blob.size }],
  }));
  expectStatus(await request('PUT', `${url}/v2/${REPO}/manifests/large`, {
    headers: { 'content-type': MANIFEST_TYPE, 'content-length': manifest.length }, body: manifest,
  }), 201, `${label} PUT manifest large`);
}

/** What the measurements fetch answers 200 with the expected bytes (and, with auth, 401 without credentials). */
async function check(target: Target, manifest: Buffer, blob: GeneratedBlob, auth: boolean): Promise<void> {
  const insecure = target.url.startsWith('https:');
  const get = (path: string, headers: Record<string, string>) => run('curl', [
    '-sS', ...(insecure ? ['-k'] : []), '-o', '-', '-w', '\n%{http_code}', ...Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]), `${target.url}${path}`,
  ], 30_000);
  const res = await get(`/v2/${REPO}/manifests/latest`, { accept: MANIFEST_TYPE, ...target.headers });
  const status = res.stdout.slice(res.stdout.lastIndexOf('\n') + 1);
  const body = res.stdout.slice(0, res.stdout.lastIndexOf('\n'));
  if (status !== '200' || body !== manifest.toString('utf8')) throw new Error(`${target.label}: GET manifest latest: ${status} ${body.slice(0, 300)} ${res.stderr}`);
  if (auth) {
    const anonymous = await get(`/v2/${REPO}/manifests/latest`, { accept: MANIFEST_TYPE });
    const anonStatus = anonymous.stdout.slice(anonymous.stdout.lastIndexOf('\n') + 1);
    if (anonStatus !== '401') throw new Error(`${target.label}: GET without credentials answered ${anonStatus}, expected 401`);
  }
  await curlGet(`${target.url}/v2/${REPO}/blobs/${blob.digest}`, blob.size, target.curl);
}

// ---------------------------------------------------------------------------------------------
// Results

interface Measurement {
  value: number;
  /** CPU ms used by the gateway and by the serving process during the measurement. */
  gatewayCpuMs?: number | undefined;
  serverCpuMs?: number | undefined;
  /** Of which in the kernel (stime). */
  gatewaySysMs?: number | undefined;
  serverSysMs?: number | undefined;
  /** CPU ms of the appliance's other processes (logger, cleaner, PM2). */
  otherCpuMs?: number | undefined;
  requests?: number;
  errors?: number;
  non2xx?: number;
  latencyP99?: string;
}

type Results = Record<string, Record<string, Measurement[]>>;

function best(list: Measurement[] | undefined): Measurement | undefined {
  if (!list || list.length === 0) return undefined;
  return list.reduce((a, b) => (b.value > a.value ? b : a));
}

interface Row {
  metric: string;
  unit: string;
  variant: string;
  gateway: number | undefined;
  direct: number | undefined;
  distribution: number | undefined;
  gatewayToDirect: number | undefined;
  gatewayToDistribution: number | undefined;
  /** gateway / direct within each round (measured minutes apart at most): less exposed to the machine's drift than best / best. */
  roundRatios: number[];
  judged: boolean;
  met: boolean | undefined;
  note?: string;
}

function printTable(rows: Row[]): string {
  const header = ['metric', 'gateway', 'direct worker', 'distribution', 'gw/direct', 'gw/dist', 'met?', 'gw/direct per round'];
  const body = rows.map((r) => [
    `${r.metric} [${r.variant}] (${r.unit})`,
    fmt(r.gateway),
    fmt(r.direct),
    fmt(r.distribution),
    r.gatewayToDirect === undefined ? '-' : fmt(r.gatewayToDirect, 2),
    r.gatewayToDistribution === undefined ? '-' : fmt(r.gatewayToDistribution, 2),
    !r.judged ? 'info' : r.met ? 'yes' : 'NO',
    r.roundRatios.map((x) => fmt(x, 2)).join(' '),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((line) => line[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 || i === cells.length - 1 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  const notes = rows.filter((r) => r.note).map((r) => `  note: ${r.metric} [${r.variant}]: ${r.note}`);
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line), ...notes].join('\n');
}

// ---------------------------------------------------------------------------------------------
// The run

async function main(): Promise<void> {
  log(`options: ${JSON.stringify(OPTS)}`);
  const quiet = await waitForQuiet();
  const loadAtStart = loadavg().map((l) => l.toFixed(1)).join(' ');
  const blobSize = Math.round(OPTS.blobMiB * MiB);

  const scratch = await tempDir('gateway-bench-');
  tempDirs.add(scratch);
  const root = join(scratch, 'root');
  await mkdir(root);
  const variants = VARIANTS.filter((v) => OPTS.variants.includes(v));
  // 'plain' is always started: the content is pushed through it.
  const started: Variant[] = variants.includes('plain') ? variants : ['plain', ...variants];

  // The appliances share one data root (each has its own run dir, access log, logger state, PM2 home).
  const applianceOf = new Map<Variant, Appliance>();
  let profiledGatewayPid: number | undefined;
  for (const variant of started) {
    const env: Record<string, string> = { STEVEDORE_ROOT: root, LOGGER_STATE_PATH: join(scratch, `logger-${variant}.json`) };
    if (variant === 'plain' && OPTS.prof) {
      // NODE_OPTIONS may not carry --cpu-prof: a preloaded module profiles the gateway app instead.
      await mkdir(OPTS.prof, { recursive: true });
      const preload = join(scratch, 'cpu-profile.mjs');
      await writeFile(preload, CPU_PROFILE_PRELOAD);
      env.NODE_OPTIONS = `--import ${pathToFileURL(preload).href}`;
      env.BENCH_CPU_PROFILE_DIR = OPTS.prof;
    }
    const appliance = await startAppliance({ tls: variant === 'tls', auth: variant !== 'plain', env });
    appliances.add(appliance);
    applianceOf.set(variant, appliance);
    if (variant === 'plain' && OPTS.prof) profiledGatewayPid = pidOf(appliance, 'gateway');
    log(`appliance ${variant}: ${appliance.url} (gateway pid ${pidOf(appliance, 'gateway')}, hosted worker pid ${pidOf(appliance, 'registry-hosted')})`);
  }
  const plain = applianceOf.get('plain')!;
  const dist = await startDist();
  log(`distribution ${dist.url} pid ${dist.pid}`);

  // The same content everywhere: one small image (REPO:latest, for wrk), a 4 KiB blob, the large blob (REPO:large).
  const image = buildImage({ layerSizes: [4096], seed: 'gateway-bench' });
  const smallBlob = randomBytes(4096);
  const smallDigest = `sha256:${createHash('sha256').update(smallBlob).digest('hex')}`;
  log(`generating the ${OPTS.blobMiB} MiB blob`);
  const largeBlob = makeBlob(1, blobSize);
  for (const [label, url, pid] of [['gateway plain', plain.url, pidOf(plain, 'gateway') ?? 0], ['distribution', dist.url, dist.pid]] as const) {
    const server = asServer(label, url, pid);
    await seedImage(server, smallBlob, smallDigest, image);
    const mbs = await pushMonolithic(server, REPO, largeBlob);
    await pushLargeManifest(url, label, image.config, largeBlob);
    log(`pushed to ${label} (large blob at ${fmt(mbs)} MB/s)`);
  }
  await settle();

  // The direct worker: the same data root, reachable over TCP (wrk cannot use unix sockets), with the
  // node options the appliance gives its workers.
  const direct = await startStevedoreRegistry(['--root', root], {}, workerNodeArgs());
  children.add(direct.proc);
  log(`direct worker ${direct.url} pid ${direct.proc.pid}`);

  const targets: Target[] = [];
  for (const variant of variants) {
    const appliance = applianceOf.get(variant)!;
    const auth = variant !== 'plain';
    targets.push({
      key: `gateway-${variant}`,
      label: `gateway ${variant}`,
      url: appliance.url,
      curl: [...(variant === 'tls' ? ['-k'] : []), ...(auth ? ['-u', appliance.reader.creds] : [])],
      headers: auth ? { authorization: appliance.reader.auth } : {},
      gatewayPid: pidOf(appliance, 'gateway'),
      serverPid: pidOf(appliance, 'registry-hosted'),
      otherPids: appliance.processes().filter((p) => p.name !== 'gateway' && p.name !== 'registry-hosted').map((p) => p.pid),
    });
  }
  targets.push({ key: 'direct', label: 'direct worker', url: direct.url, curl: [], headers: {}, serverPid: direct.proc.pid });
  targets.push({ key: 'distribution', label: 'distribution', url: dist.url, curl: [], headers: {}, serverPid: dist.pid });
  for (const target of targets) await check(target, image.manifest.data, largeBlob, target.key === 'gateway-auth' || target.key === 'gateway-tls');
  log(`every target serves the content (${targets.map((t) => t.label).join(', ')})`);

  const results: Results = {};
  const record = (metric: string, target: Target, m: Measurement) => {
    results[metric] ??= {};
    (results[metric]![target.key] ??= []).push(m);
  };
  const rotated = (r: number) => targets.map((_, i) => targets[(i + r) % targets.length]!);
  const cpu = (target: Target) => ({
    gateway: cpuMs(target.gatewayPid), server: cpuMs(target.serverPid),
    other: target.otherPids ? target.otherPids.reduce((sum, pid) => sum + (cpuMs(pid)?.total ?? 0), 0) : undefined,
  });
  const used = (target: Target, before: ReturnType<typeof cpu>): Partial<Measurement> => {
    const after = cpu(target);
    const d = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? undefined : a - b);
    return {
      gatewayCpuMs: d(after.gateway?.total, before.gateway?.total), gatewaySysMs: d(after.gateway?.sys, before.gateway?.sys),
      serverCpuMs: d(after.server?.total, before.server?.total), serverSysMs: d(after.server?.sys, before.server?.sys),
      otherCpuMs: d(after.other, before.other),
    };
  };

  // Large-blob GET: one curl per target per round, targets interleaved (rotating order); best kept.
  log(`large-blob GET: ${OPTS.blobMiB} MiB, best of ${OPTS.getRuns}`);
  const largeUrl = (t: Target) => `${t.url}/v2/${REPO}/blobs/${largeBlob.digest}`;
  for (const target of targets) await curlGet(largeUrl(target), blobSize, target.curl); // warm (page cache, connections)
  // Every process of the plain appliance, sampled while it serves the large blob (GETs through it).
  const rssSampler = sampleProcessesRss(plain.processes().map((p) => ({ pid: p.pid, name: p.name ?? (p.pid === plain.proc.pid ? 'stevedore start' : 'pm2') })));
  for (let r = 0; r < OPTS.getRuns; r++) {
    for (const target of rotated(r)) {
      const before = cpu(target);
      const value = await curlGet(largeUrl(target), blobSize, target.curl);
      record('large-get', target, { value, ...used(target, before) });
    }
    log(`  round ${r + 1}: ${targets.map((t) => `${t.label} ${fmt(results['large-get']![t.key]!.at(-1)!.value)}`).join(', ')} MB/s (load ${loadavg()[0]!.toFixed(1)})`);
  }
  const rss = rssSampler.stop();
  log(`peak RSS while serving ${OPTS.blobMiB} MiB: ${rss.map((p) => `${p.name} ${fmt(p.mb, 1)} MB`).join(', ')}`);

  // Manifest GET by tag with wrk.
  const luaDir = join(scratch, 'lua');
  await mkdir(luaDir);
  const scripts = new Map<string, string>();
  for (const target of targets) {
    const path = join(luaDir, `${target.key}.lua`);
    const headers = { Accept: MANIFEST_TYPE, ...target.headers };
    await writeFile(path, `wrk.method = "GET"\n${Object.entries(headers).map(([k, v]) => `wrk.headers["${k}"] = "${v}"`).join('\n')}\n`);
    scripts.set(target.key, path);
  }
  const blobScripts = new Map<string, string>();
  for (const target of targets) {
    const path = join(luaDir, `${target.key}-blob.lua`);
    await writeFile(path, `wrk.method = "GET"\n${Object.entries(target.headers).map(([k, v]) => `wrk.headers["${k}"] = "${v}"`).join('\n')}\n`);
    blobScripts.set(target.key, path);
  }
  const wrkCases = [
    { key: 'manifest-get-16', what: 'manifest GET by tag', connections: 16, path: `/v2/${REPO}/manifests/latest`, scripts },
    { key: 'manifest-get-64', what: 'manifest GET by tag', connections: 64, path: `/v2/${REPO}/manifests/latest`, scripts },
    { key: 'blob4k-get-16', what: '4 KiB blob GET', connections: 16, path: `/v2/${REPO}/blobs/${smallDigest}`, scripts: blobScripts },
  ];
  for (const c of wrkCases) {
    log(`${c.what}, ${c.connections} connections: ${OPTS.duration} s runs, best of ${OPTS.runs}`);
    for (let r = 0; r < OPTS.runs; r++) {
      for (const target of rotated(r)) {
        const url = `${target.url}${c.path}`;
        await wrk(url, c.scripts.get(target.key)!, c.connections, 2); // warm-up
        const before = cpu(target);
        const w: WrkResult = await wrk(url, c.scripts.get(target.key)!, c.connections, OPTS.duration);
        record(c.key, target, { value: w.rps, requests: w.requests, errors: w.errors, non2xx: w.non2xx, latencyP99: w.latencyP99, ...used(target, before) });
      }
      log(`  round ${r + 1}: ${targets.map((t) => `${t.label} ${fmt(results[c.key]![t.key]!.at(-1)!.value)}`).join(', ')} req/s (load ${loadavg()[0]!.toFixed(1)})`);
    }
  }

  // Pushes of a fresh blob through the plain gateway, straight to the worker, to distribution and
  // to a minimal hashing sink (hash + write + fsync, no framework): the limit of the machine.
  const pushes: Record<string, { mono: number[]; chunked: number[] }> = {};
  /** CPU ms per GiB pushed, per run, of each process that handles the push (gateway + worker for the appliance). */
  const pushCpu: Record<string, { mono: number[][]; chunked: number[][] }> = {};
  const pushMet: boolean[] = [];
  if (OPTS.pushMiB > 0) {
    const sink = await startHashingSink(scratch);
    const pushTargets: Array<{ key: string; server: Server; pids: number[] }> = [
      { key: 'gateway-plain', server: asServer('gateway plain', plain.url, pidOf(plain, 'gateway') ?? 0), pids: [pidOf(plain, 'gateway') ?? 0, pidOf(plain, 'registry-hosted') ?? 0] },
      { key: 'direct', server: asServer('direct worker', direct.url, direct.proc.pid!), pids: [direct.proc.pid!] },
      { key: 'distribution', server: asServer('distribution', dist.url, dist.pid), pids: [dist.pid] },
      { key: 'sink', server: asServer('hashing sink', sink.url, sink.pid), pids: [sink.pid] },
    ];
    const cpuPerGiB = async (pids: number[], push: () => Promise<number>): Promise<{ mbs: number; cpu: number[] }> => {
      const before = pids.map((pid) => cpuTimeMs(pid)?.total ?? NaN);
      const mbs = await push();
      return { mbs, cpu: pids.map((pid, k) => ((cpuTimeMs(pid)?.total ?? NaN) - before[k]!) / (OPTS.pushMiB / 1024)) };
    };
    const pushSize = Math.round(OPTS.pushMiB * MiB);
    log(`pushes: ${OPTS.pushMiB} MiB monolithic and chunked (${OPTS.chunkMiB} MiB PATCHes), best of ${OPTS.pushRuns}`);
    for (let r = 0; r < OPTS.pushRuns; r++) {
      for (const [i, t] of pushTargets.map((t, i) => [i, pushTargets[(i + r) % pushTargets.length]!] as const)) {
        const entry = (pushes[t.key] ??= { mono: [], chunked: [] });
        const cpuEntry = (pushCpu[t.key] ??= { mono: [], chunked: [] });
        await settle();
        const mono = await cpuPerGiB(t.pids, () => pushMonolithic(t.server, REPO, makeBlob(1000 + r * 10 + i, pushSize)));
        entry.mono.push(mono.mbs);
        cpuEntry.mono.push(mono.cpu);
        await settle();
        const chunked = await cpuPerGiB(t.pids, () => pushChunked(t.server, REPO, makeBlob(2000 + r * 10 + i, pushSize), Math.round(OPTS.chunkMiB * MiB)));
        entry.chunked.push(chunked.mbs);
        cpuEntry.chunked.push(chunked.cpu);
      }
      log(`  round ${r + 1}: ${pushTargets.map((t) => `${t.key} mono ${fmt(pushes[t.key]!.mono.at(-1))} chunked ${fmt(pushes[t.key]!.chunked.at(-1))}`).join(', ')} MB/s (load ${loadavg()[0]!.toFixed(1)})`);
    }
    await sink.stop();
  }

  // CPU per unit of work, from the best runs (diagnostics: where the gateway's cost goes).
  const cpuNotes: string[] = [];
  for (const target of targets) {
    const large = best(results['large-get']![target.key]);
    const m64 = best(results['manifest-get-64']![target.key]);
    const gib = blobSize / 2 ** 30;
    const perGiB = (ms: number | undefined, sys: number | undefined) => (ms === undefined ? '-' : `${fmt(ms / gib, 0)} ms/GiB (sys ${fmt((sys ?? 0) / gib, 0)})`);
    const perReq = (ms: number | undefined, sys: number | undefined, n: number | undefined) => (ms === undefined || !n ? '-' : `${fmt((ms * 1000) / n, 0)} µs/req (sys ${fmt(((sys ?? 0) * 1000) / n, 0)})`);
    const others = (ms: number | undefined, unit: (v: number) => string) => (ms === undefined ? '' : `, logger+cleaner+PM2 ${unit(ms)}`);
    cpuNotes.push(`  ${target.label.padEnd(14)} large GET: ${target.gatewayPid ? `gateway ${perGiB(large?.gatewayCpuMs, large?.gatewaySysMs)}, worker` : 'server'} ${perGiB(large?.serverCpuMs, large?.serverSysMs)}`
      + `${others(large?.otherCpuMs, (ms) => `${fmt(ms / gib, 0)} ms/GiB`)}\n  ${''.padEnd(14)} manifest c64: ${target.gatewayPid ? `gateway ${perReq(m64?.gatewayCpuMs, m64?.gatewaySysMs, m64?.requests)}, worker` : 'server'} ${perReq(m64?.serverCpuMs, m64?.serverSysMs, m64?.requests)}`
      + `${others(m64?.otherCpuMs, (ms) => `${fmt((ms * 1000) / (m64?.requests || 1), 0)} µs/req`)}`);
  }

  // Table.
  const rows: Row[] = [];
  const metrics: Array<{ key: string; metric: string; unit: string; minDirect?: number }> = [
    { key: 'large-get', metric: `large-blob GET ${OPTS.blobMiB} MiB, best of ${OPTS.getRuns}`, unit: 'MB/s' },
    { key: 'manifest-get-16', metric: `manifest GET by tag c16, best of ${OPTS.runs}`, unit: 'req/s' },
    { key: 'manifest-get-64', metric: `manifest GET by tag c64, best of ${OPTS.runs}`, unit: 'req/s' },
    { key: 'blob4k-get-16', metric: `4 KiB blob GET c16, best of ${OPTS.runs}`, unit: 'req/s', minDirect: MIN_SMALL_BLOB_RATIO },
  ];
  for (const m of metrics) {
    const directValue = best(results[m.key]!.direct)?.value;
    const distValue = best(results[m.key]!.distribution)?.value;
    for (const variant of variants) {
      const g = best(results[m.key]![`gateway-${variant}`]);
      const gatewayToDirect = g && directValue ? g.value / directValue : undefined;
      const gatewayToDistribution = g && distValue ? g.value / distValue : undefined;
      const problems = Object.entries(results[m.key]!).flatMap(([key, list]) => list.flatMap((x) => ((x.errors ?? 0) + (x.non2xx ?? 0) > 0 ? [`${key}: ${x.errors} socket errors, ${x.non2xx} non-2xx of ${x.requests}`] : [])));
      // TLS is informational: the worker and distribution are measured over plain HTTP.
      const judged = variant !== 'tls';
      const gatewayRounds = results[m.key]![`gateway-${variant}`] ?? [];
      const directRounds = results[m.key]!.direct ?? [];
      const roundRatios = gatewayRounds.flatMap((x, i) => (directRounds[i]?.value ? [x.value / directRounds[i]!.value] : []));
      const row: Row = {
        metric: m.metric, unit: m.unit, variant, gateway: g?.value, direct: directValue, distribution: distValue, gatewayToDirect, gatewayToDistribution, roundRatios, judged,
        met: judged ? (gatewayToDirect ?? 0) >= (m.minDirect ?? MIN_DIRECT_RATIO) && (gatewayToDistribution ?? 0) >= MIN_DIST_RATIO && problems.length === 0 : undefined,
      };
      if (problems.length > 0 && variant === variants[0]) row.note = problems.join('; ');
      rows.push(row);
    }
  }

  const pushLines: string[] = [];
  const sinkBest = (kind: 'mono' | 'chunked') => Math.max(...(pushes.sink?.[kind] ?? [NaN]));
  for (const kind of ['mono', 'chunked'] as const) {
    const sink = sinkBest(kind);
    const cells = Object.entries(pushes).map(([key, p]) => {
      const b = Math.max(...p[kind]);
      return `${key} ${fmt(b)}${key === 'sink' ? '' : ` (${fmt(b / sink, 2)}x sink)`}`;
    });
    const gw = Math.max(...(pushes['gateway-plain']?.[kind] ?? [NaN]));
    const ratio = gw / sink;
    const met = Number.isFinite(ratio) ? ratio >= MIN_PUSH_SINK_RATIO : undefined;
    if (met !== undefined) pushMet.push(met);
    pushLines.push(`  ${kind === 'mono' ? 'monolithic' : `chunked (${OPTS.chunkMiB} MiB PATCHes)`} push ${OPTS.pushMiB} MiB, best of ${OPTS.pushRuns}, MB/s: ${cells.join(', ')}; `
      + `gateway >= ${MIN_PUSH_SINK_RATIO}x sink: ${met === undefined ? 'n/a' : met ? 'yes' : 'NO'}; all runs: ${Object.entries(pushes).map(([k, p]) => `${k} ${p[kind].map((v) => fmt(v)).join('/')}`).join(', ')}`);
    // Medians over the runs: which process's CPU a push costs (on 2 cores shared with the client).
    const cpuCell = (key: string) => {
      const runs = pushCpu[key]?.[kind] ?? [];
      const parts = key === 'gateway-plain' ? ['gateway', 'worker'] : ['server'];
      return `${key} ${parts.map((part, k) => `${part} ${fmt(median(runs.map((run) => run[k]!)), 0)}`).join(' + ')}`;
    };
    pushLines.push(`    CPU per GiB pushed (ms, median of runs): ${Object.keys(pushCpu).map(cpuCell).join(', ')}`);
  }
  const rssMax = Math.max(...rss.map((p) => p.mb));
  const rssLine = `  peak RSS per process of the appliance while serving ${OPTS.blobMiB} MiB (MB): ${rss.map((p) => `${p.name} ${fmt(p.mb, 1)}`).join(', ')}; total ${fmt(rss.reduce((a, p) => a + p.mb, 0), 1)}; `
    + `no process > ${MAX_PROCESS_RSS_MB} MB: ${rssMax <= MAX_PROCESS_RSS_MB ? 'yes' : 'NO'}`;
  const quietAtEnd = await otherBenchmarks();
  const loadAtEnd = loadavg().map((l) => l.toFixed(1)).join(' ');
  process.stdout.write(`\nGateway cost: appliance (stevedore start, PM2) vs its hosted worker directly vs distribution 2.8.2 (docker-registry, access log on)\n`);
  process.stdout.write(`loopback, node ${process.version}, wrk -t${OPTS.wrkThreads} ${OPTS.duration}s, curl for the large GET\n\n${printTable(rows)}\n\n`);
  process.stdout.write(`  targets: gw/direct >= ${MIN_DIRECT_RATIO} (the gateway costs < ${Math.round((1 - MIN_DIRECT_RATIO) * 100)}%), gw/dist >= ${MIN_DIST_RATIO}; `
    + `[plain] no auth, [auth] htpasswd + read-only user, [tls] HTTPS + htpasswd (info only)\n`);
  if (pushLines.length > 0) process.stdout.write(`${pushLines.join('\n')}\n`);
  process.stdout.write(`${rssLine}\n`);
  process.stdout.write(`  CPU (utime+stime) in the best runs:\n${cpuNotes.join('\n')}\n`);
  process.stdout.write(`  load average at start ${loadAtStart}, at end ${loadAtEnd} (2 cores)`
    + `${quiet.waitedS > 0 ? `; waited ${quiet.waitedS} s for other benchmarks` : ''}`
    + `${quiet.stillRunning.length + quietAtEnd.length > 0 ? `; OTHER BENCHMARKS RAN DURING THE MEASUREMENT: ${[...quiet.stillRunning, ...quietAtEnd].join(' | ')}` : ''}\n\n`);
  const judged = [...rows.filter((r) => r.judged).map((r) => r.met === true), ...pushMet, rssMax <= MAX_PROCESS_RSS_MB];
  process.stdout.write(`${judged.filter(Boolean).length}/${judged.length} targets met\n`);

  if (OPTS.json) {
    await writeFile(OPTS.json, `${JSON.stringify({
      date: new Date().toISOString(), node: process.version, loadAverage: { start: loadAtStart, end: loadAtEnd },
      otherBenchmarks: { waitedS: quiet.waitedS, atStart: quiet.stillRunning, atEnd: quietAtEnd },
      options: OPTS, rows, results, pushes, rss,
    }, null, 2)}\n`);
    log(`wrote ${OPTS.json}`);
  }

  // Stop the direct worker before the appliances (it reads their data root).
  await direct.stop();
  children.delete(direct.proc);
  if (OPTS.prof && profiledGatewayPid !== undefined) {
    await stopAll();
    const profile = readdirSync(OPTS.prof).find((f) => f.includes(`.${profiledGatewayPid}.`) && f.endsWith('.cpuprofile'));
    log(profile ? `gateway CPU profile: ${join(OPTS.prof, profile)}` : `no CPU profile of gateway pid ${profiledGatewayPid} in ${OPTS.prof}`);
  }
}

await runBenchmark(main, { timeoutS: OPTS.timeoutS + OPTS.waitS, log, stop: stopAll });
