/**
 * Pull-through cache benchmark: a Stevedore proxy worker vs the Debian `docker-registry` (CNCF
 * distribution 2.8) configured as a proxy, both in front of the same upstream `docker-registry`,
 * all on loopback, in one run:
 *
 *   (a) cold pull of a multi-layer image through each proxy (fresh cache; best of --cold-runs),
 *   (b) warm pull of the same image (best of --warm-runs),
 *   (c) --concurrency simultaneous cold pulls against a fresh cache: wall time, and how many times
 *       the upstream was asked for each blob (its access log), the target being exactly once.
 *
 * Pulls are `skopeo copy docker://proxy/bench/app:latest dir:<fresh dir>`.
 *
 *   npm run bench:proxy
 *   BENCH_LAYER_MB=2 BENCH_COLD_RUNS=1 npm run bench:proxy      # quick run
 *   node dist/bench/proxy-bench.js --layers 10 --layer-mb 8 --json out.json
 *
 * Options (flag, else environment variable):
 *   --layers / BENCH_LAYERS            image layers, default 10
 *   --layer-mb / BENCH_LAYER_MB        MiB of random content per layer, default 8
 *   --cold-runs / BENCH_COLD_RUNS      cold pulls per proxy, each against a fresh cache (best kept), default 3
 *   --warm-runs / BENCH_WARM_RUNS      warm pulls per proxy (best kept), default 3
 *   --concurrency / BENCH_CONCURRENCY  simultaneous cold pulls in phase (c), default 8
 *   --json / BENCH_JSON                also write the results as JSON to this file
 *   --timeout / BENCH_TIMEOUT          whole-run limit in seconds, default 1200
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, writeFileSync } from 'node:fs';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import http from 'node:http';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildImage, writeOciLayout } from '../test/helpers/oci-image.js';
import { STEVEDORE_BIN, distributionRequests, freePort, startDistribution } from '../test/helpers/processes.js';
import { numberOption, option } from './options.js';
import { children, logger, newTempDir, run, runBenchmark, stopProcess, tempDirs } from './harness.js';

const MiB = 1024 * 1024;
const REPO = 'bench/app';
const TAG = 'latest';
const PULL_TIMEOUT_MS = 300_000;
/** The upstream's access log must be silent this long before a phase's requests are counted. */
const QUIET_MS = 2_000;
const QUIET_MAX_MS = 90_000;

// ---------------------------------------------------------------------------------------------
// Options



const OPTS = {
  layers: numberOption('layers', 'BENCH_LAYERS', 10, { min: 1, max: 100, integer: true }),
  layerMiB: numberOption('layer-mb', 'BENCH_LAYER_MB', 8, { min: 1, max: 1024, integer: true }),
  coldRuns: numberOption('cold-runs', 'BENCH_COLD_RUNS', 3, { min: 1, max: 20, integer: true }),
  warmRuns: numberOption('warm-runs', 'BENCH_WARM_RUNS', 3, { min: 1, max: 20, integer: true }),
  concurrency: numberOption('concurrency', 'BENCH_CONCURRENCY', 8, { min: 1, max: 64, integer: true }),
  json: option('json', 'BENCH_JSON', '') || undefined,
  timeoutS: numberOption('timeout', 'BENCH_TIMEOUT', 1200, { min: 10, max: 86_400, integer: true }),
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
  kind: 'stevedore' | 'distribution';
  url: string;
  /** host:port, for docker:// references. */
  hostPort: string;
  output(): string;
  stop(): Promise<void>;
  /** Resolves once the server has stored every one of `digests` (distribution fills in the background). */
  hasBlobs(digests: string[]): Promise<boolean>;
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
  };
}

/** `stevedore registry --upstream` at log level warn, ready once /v2/ answers. */
async function startStevedoreProxy(upstreamUrl: string): Promise<Server> {
  const dir = await newTempDir('stevedore-proxy-bench-');
  const root = join(dir, 'root');
  const port = await freePort();
  const proc = spawn(process.execPath, [STEVEDORE_BIN, 'registry', '--listen', `127.0.0.1:${port}`, '--root', root,
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
  };
}

// ---------------------------------------------------------------------------------------------
// Pulls and upstream accounting

/**
 * One `skopeo copy` of the image from `server`; resolves with its duration in seconds, or NaN if it
 * failed (the reason is added to `failures`: a failed pull is a result, not the end of the run).
 */
async function pull(server: Server, workDir: string, failures: string[]): Promise<number> {
  const dest = await mkdirUnique(workDir);
  try {
    const started = performance.now();
    const res = await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false',
      `docker://${server.hostPort}/${REPO}:${TAG}`, `dir:${dest}`], PULL_TIMEOUT_MS);
    const seconds = (performance.now() - started) / 1000;
    if (res.code !== 0) throw new Error(`skopeo exit ${res.code}: ${res.stderr.trim().split('\n').pop()?.slice(0, 500)}`);
    await verifyPulled(dest);
    return seconds;
  } catch (err) {
    const message = (err as Error).message;
    failures.push(message);
    log(`pull via ${server.kind} FAILED: ${message}`);
    if (server.kind === 'stevedore') log(`stevedore output tail:\n${server.output().slice(-3000)}`);
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

let expectedBlobs: Array<{ digest: string; size: number }> = [];

/** skopeo verifies digests; this checks that every layer and the config landed with the right size. */
async function verifyPulled(dest: string): Promise<void> {
  const names = new Set(await readdir(dest));
  for (const blob of expectedBlobs) {
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
async function settle(servers: Server[], proxy: Server, afterPull: boolean): Promise<void> {
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
    if (Date.now() - quietSince >= QUIET_MS && (!afterPull || await proxy.hasBlobs(expectedBlobs.map((b) => b.digest)))) return;
  }
  const stored = await proxy.hasBlobs(expectedBlobs.map((b) => b.digest));
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

function countUpstream(logSlice: string): UpstreamCounts {
  const requests = distributionRequests(logSlice);
  const blobGets: Record<string, number> = {};
  for (const b of expectedBlobs) blobGets[b.digest] = 0;
  let blobHeads = 0;
  let manifestGets = 0;
  let manifestHeads = 0;
  let non2xx = 0;
  const blobPath = new RegExp(`^/v2/${REPO}/blobs/(sha256:[0-9a-f]{64})$`);
  const manifestPath = new RegExp(`^/v2/${REPO}/manifests/`);
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

type Kind = 'stevedore' | 'distribution';
const KINDS: Kind[] = ['stevedore', 'distribution'];

interface KindResult {
  coldSeconds: number[];
  coldUpstream: UpstreamCounts[];
  warmSeconds: number[];
  concurrentWallSeconds: number;
  concurrentPullSeconds: number[];
  concurrentUpstream: UpstreamCounts | undefined;
  concurrentFailed: number;
  /** Why pulls failed, in every phase. */
  failures: string[];
  /** Lines distribution logged at level=error (its own log), or Stevedore's warn/error lines. */
  complaints: string[];
}

function emptyResult(): KindResult {
  return {
    coldSeconds: [], coldUpstream: [], warmSeconds: [], concurrentWallSeconds: NaN, concurrentPullSeconds: [],
    concurrentUpstream: undefined, concurrentFailed: 0, failures: [], complaints: [],
  };
}

async function main(): Promise<void> {
  const work = await newTempDir('proxy-bench-');
  const layerSize = OPTS.layerMiB * MiB;
  log(`building a ${OPTS.layers}-layer image (${OPTS.layers} x ${OPTS.layerMiB} MiB random content)`);
  const image = buildImage({ layerSizes: Array.from({ length: OPTS.layers }, () => layerSize), seed: 'proxy-bench' });
  const layout = join(work, 'oci');
  await writeOciLayout(layout, TAG, [image]);

  log('starting the upstream docker-registry and pushing the image');
  const upstream = await startUpstream();
  const push = await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--dest-tls-verify=false', '--preserve-digests',
    `oci:${layout}:${TAG}`, `docker://${upstream.hostPort}/${REPO}:${TAG}`], PULL_TIMEOUT_MS);
  if (push.code !== 0) throw new Error(`seeding the upstream failed: ${push.stderr}`);
  await rm(layout, { recursive: true, force: true });
  // The blobs the upstream serves for the tag (read back, not assumed).
  const manifestRes = await httpGet(`${upstream.url}/v2/${REPO}/manifests/${TAG}`, {
    accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json',
  });
  if (manifestRes.status !== 200) throw new Error(`upstream manifest GET answered ${manifestRes.status}`);
  const manifest = JSON.parse(manifestRes.body.toString('utf8')) as { config: { digest: string; size: number }; layers: Array<{ digest: string; size: number }> };
  expectedBlobs = [manifest.config, ...manifest.layers].map((d) => ({ digest: d.digest, size: d.size }));
  const imageBytes = expectedBlobs.reduce((a, b) => a + b.size, 0);
  log(`upstream ${upstream.url} holds ${REPO}:${TAG}: ${expectedBlobs.length} blobs, ${(imageBytes / MiB).toFixed(1)} MiB`);

  const start = (kind: Kind) => (kind === 'stevedore' ? startStevedoreProxy(upstream.url) : startDistributionProxy(upstream.url));
  const results: Record<Kind, KindResult> = {
    stevedore: emptyResult(),
    distribution: emptyResult(),
  };
  const noteComplaints = (server: Server) => {
    if (server.kind === 'stevedore') results.stevedore.complaints.push(...stevedoreComplaints(server.output()));
    else results.distribution.complaints.push(...server.output().split('\n').filter((l) => l.includes('level=error')));
  };

  // (a) cold pulls, each against a fresh cache; the last instances stay up for (b).
  const warmServers: Partial<Record<Kind, Server>> = {};
  for (let round = 0; round < OPTS.coldRuns; round++) {
    const order = round % 2 === 0 ? KINDS : [...KINDS].reverse();
    for (const kind of order) {
      const server = await start(kind);
      await settle([upstream, server], server, false);
      const mark = upstream.output().length;
      const failed = results[kind].failures.length;
      const seconds = await pull(server, work, results[kind].failures);
      await settle([upstream, server], server, results[kind].failures.length === failed);
      const counts = countUpstream(upstream.output().slice(mark));
      results[kind].coldSeconds.push(seconds);
      results[kind].coldUpstream.push(counts);
      log(`cold pull ${round + 1}/${OPTS.coldRuns} via ${kind}: ${seconds.toFixed(2)} s; upstream blob GETs ${counts.blobGetsTotal} `
        + `(per blob ${counts.blobGetsMin}..${counts.blobGetsMax}), blob HEADs ${counts.blobHeads}, manifest GET/HEAD ${counts.manifestGets}/${counts.manifestHeads}`);
      if (round === OPTS.coldRuns - 1) warmServers[kind] = server;
      else {
        noteComplaints(server);
        await server.stop();
      }
    }
  }

  // (b) warm pulls, interleaved.
  for (let i = 0; i < OPTS.warmRuns; i++) {
    for (const kind of i % 2 === 0 ? KINDS : [...KINDS].reverse()) {
      const server = warmServers[kind]!;
      const seconds = await pull(server, work, results[kind].failures);
      results[kind].warmSeconds.push(seconds);
      log(`warm pull ${i + 1}/${OPTS.warmRuns} via ${kind}: ${seconds.toFixed(2)} s`);
    }
  }
  for (const kind of KINDS) {
    noteComplaints(warmServers[kind]!);
    await warmServers[kind]!.stop();
  }

  // (c) concurrent cold pulls against a fresh cache.
  for (const kind of KINDS) {
    const server = await start(kind);
    await settle([upstream, server], server, false);
    const mark = upstream.output().length;
    const started = performance.now();
    const failed = results[kind].failures.length;
    const seconds = await Promise.all(Array.from({ length: OPTS.concurrency }, () => pull(server, work, results[kind].failures)));
    const wall = (performance.now() - started) / 1000;
    results[kind].concurrentFailed = results[kind].failures.length - failed;
    await settle([upstream, server], server, results[kind].concurrentFailed === 0);
    const counts = countUpstream(upstream.output().slice(mark));
    results[kind].concurrentWallSeconds = wall;
    results[kind].concurrentPullSeconds = seconds;
    results[kind].concurrentUpstream = counts;
    log(`${OPTS.concurrency} concurrent cold pulls via ${kind}: ${wall.toFixed(2)} s wall; upstream blob GETs ${counts.blobGetsTotal} `
      + `(per blob ${counts.blobGetsMin}..${counts.blobGetsMax}), blob HEADs ${counts.blobHeads}, manifest GET/HEAD ${counts.manifestGets}/${counts.manifestHeads}`);
    noteComplaints(server);
    await server.stop();
  }
  await upstream.stop();

  report(results, imageBytes);
}

// ---------------------------------------------------------------------------------------------
// Report

/** The smallest finite value (failed pulls are NaN), or NaN if none. */
const min = (xs: number[]) => {
  const ok = xs.filter(Number.isFinite);
  return ok.length > 0 ? Math.min(...ok) : NaN;
};
const fmtS = (s: number) => (Number.isFinite(s) ? `${s.toFixed(2)} s` : 'n/a');

function timeRatio(s: number, d: number): string {
  if (!Number.isFinite(s) || !Number.isFinite(d) || s <= 0) return 'n/a';
  return `${(s / d).toFixed(2)} (${(d / s).toFixed(2)}x speed)`;
}

function countRatio(s: number, d: number): string {
  if (!Number.isFinite(s) || !Number.isFinite(d) || d === 0) return 'n/a';
  return (s / d).toFixed(2);
}

function report(results: Record<Kind, KindResult>, imageBytes: number): void {
  const S = results.stevedore;
  const D = results.distribution;
  const n = expectedBlobs.length;
  const perBlob = (c: UpstreamCounts | undefined) => (c ? `${c.blobGetsTotal} (${c.blobGetsMin}..${c.blobGetsMax}/blob)` : 'n/a');
  const exactlyOnce = (c: UpstreamCounts | undefined) => c !== undefined && c.blobGetsMin === 1 && c.blobGetsMax === 1;
  const sColdWorst = S.coldUpstream.reduce((a, c) => (c.blobGetsMax > a.blobGetsMax || c.blobGetsMin < a.blobGetsMin ? c : a));
  const dColdWorst = D.coldUpstream.reduce((a, c) => (c.blobGetsMax > a.blobGetsMax || c.blobGetsMin < a.blobGetsMin ? c : a));
  const sColdOnce = S.coldUpstream.every(exactlyOnce);
  const totalPulls = OPTS.coldRuns + OPTS.warmRuns + OPTS.concurrency;
  const withFailed = (text: string, failed: number) => (failed > 0 ? `${text} (${failed} failed)` : text);
  const list = (xs: number[]) => xs.map((x) => (Number.isFinite(x) ? x.toFixed(2) : 'failed')).join(', ');
  const sWarm = min(S.warmSeconds);
  const dWarm = min(D.warmSeconds);
  const rows: Array<{ metric: string; stevedore: string; distribution: string; ratio: string; target: string; met: string }> = [
    {
      metric: `cold pull, best of ${OPTS.coldRuns} (fresh cache each)`,
      stevedore: fmtS(min(S.coldSeconds)), distribution: fmtS(min(D.coldSeconds)),
      ratio: timeRatio(min(S.coldSeconds), min(D.coldSeconds)), target: '-', met: '-',
    },
    {
      metric: `upstream blob GETs per cold pull (${n} blobs; worst run)`,
      stevedore: perBlob(sColdWorst), distribution: perBlob(dColdWorst),
      ratio: countRatio(sColdWorst.blobGetsTotal, dColdWorst.blobGetsTotal), target: 'exactly 1 per blob', met: sColdOnce ? 'yes' : 'NO',
    },
    {
      metric: `warm pull, best of ${OPTS.warmRuns}`,
      stevedore: fmtS(sWarm), distribution: fmtS(dWarm),
      ratio: timeRatio(sWarm, dWarm), target: '<= distribution',
      met: Number.isFinite(sWarm) && Number.isFinite(dWarm) ? (sWarm <= dWarm ? 'yes' : 'NO') : 'n/a',
    },
    {
      metric: `${OPTS.concurrency} concurrent cold pulls, wall`,
      stevedore: withFailed(fmtS(S.concurrentWallSeconds), S.concurrentFailed),
      distribution: withFailed(fmtS(D.concurrentWallSeconds), D.concurrentFailed),
      ratio: timeRatio(S.concurrentWallSeconds, D.concurrentWallSeconds), target: '-', met: '-',
    },
    {
      metric: `upstream blob GETs, ${OPTS.concurrency} concurrent cold pulls`,
      stevedore: perBlob(S.concurrentUpstream), distribution: perBlob(D.concurrentUpstream),
      ratio: countRatio(S.concurrentUpstream?.blobGetsTotal ?? NaN, D.concurrentUpstream?.blobGetsTotal ?? NaN),
      target: `exactly 1 per blob (${n})`, met: exactlyOnce(S.concurrentUpstream) ? 'yes' : 'NO',
    },
    {
      metric: `upstream manifest GET+HEAD, ${OPTS.concurrency} concurrent`,
      stevedore: String((S.concurrentUpstream?.manifestGets ?? 0) + (S.concurrentUpstream?.manifestHeads ?? 0)),
      distribution: String((D.concurrentUpstream?.manifestGets ?? 0) + (D.concurrentUpstream?.manifestHeads ?? 0)),
      ratio: countRatio((S.concurrentUpstream?.manifestGets ?? 0) + (S.concurrentUpstream?.manifestHeads ?? 0),
        (D.concurrentUpstream?.manifestGets ?? 0) + (D.concurrentUpstream?.manifestHeads ?? 0)),
      target: '-', met: '-',
    },
    {
      metric: `failed pulls (of ${totalPulls}, all phases)`,
      stevedore: String(S.failures.length), distribution: String(D.failures.length),
      ratio: '-', target: '0', met: S.failures.length === 0 ? 'yes' : 'NO',
    },
  ];
  const header = { metric: 'metric', stevedore: 'stevedore', distribution: 'distribution', ratio: 'ratio (s/d)', target: 'target', met: 'met?' };
  const cols = Object.keys(header) as Array<keyof typeof header>;
  const widths = cols.map((c) => Math.max(header[c].length, ...rows.map((r) => r[c].length)));
  const line = (r: typeof header) => `| ${cols.map((c, i) => r[c].padEnd(widths[i]!)).join(' | ')} |`;
  const out = [
    `Pull-through cache: ${REPO}:${TAG}, ${n} blobs (${OPTS.layers} layers x ${OPTS.layerMiB} MiB + config), ${(imageBytes / MiB).toFixed(1)} MiB; `
      + 'skopeo copy docker:// -> dir:, loopback, upstream = docker-registry 2.8.2',
    line(header),
    `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`,
    ...rows.map(line),
    '',
    `cold pulls (s): stevedore ${list(S.coldSeconds)}; distribution ${list(D.coldSeconds)}`,
    `warm pulls (s): stevedore ${list(S.warmSeconds)}; distribution ${list(D.warmSeconds)}`,
    `concurrent pulls, each (s): stevedore ${list(S.concurrentPullSeconds)}; distribution ${list(D.concurrentPullSeconds)}`,
    `upstream blob HEADs, ${OPTS.concurrency} concurrent: stevedore ${S.concurrentUpstream?.blobHeads ?? 'n/a'}; distribution ${D.concurrentUpstream?.blobHeads ?? 'n/a'}`,
  ];
  for (const kind of KINDS) {
    const r = results[kind];
    out.push(`${kind}: ${r.failures.length} failed pulls, ${r.complaints.length} ${kind === 'stevedore' ? 'warn/error log lines' : 'level=error log lines'}`);
    for (const failure of r.failures.slice(0, 5)) out.push(`  failed pull: ${failure.slice(0, 400)}`);
    for (const line of r.complaints.slice(0, 5)) out.push(`  log: ${line.slice(0, 400)}`);
  }
  process.stdout.write(`${out.join('\n')}\n`);
  if (OPTS.json) {
    writeFileSync(OPTS.json, `${JSON.stringify({
      image: { repo: REPO, tag: TAG, layers: OPTS.layers, layerMiB: OPTS.layerMiB, blobs: expectedBlobs, bytes: imageBytes },
      options: OPTS, rows, results,
    }, null, 2)}\n`);
    log(`wrote ${OPTS.json}`);
  }
}

// ---------------------------------------------------------------------------------------------

await runBenchmark(main, { timeoutS: OPTS.timeoutS, log });
