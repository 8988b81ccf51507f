/**
 * Stevedore hosted registry vs the Debian `docker-registry` (CNCF distribution 2.8), side by side on
 * loopback, in one run: large-blob GET, monolithic and chunked push, manifest GET/HEAD and small-blob
 * GET request rates (wrk), and the servers' peak RSS while streaming.
 *
 *   npm run bench                                   # defaults (512 MiB blob, 10 s wrk runs)
 *   BENCH_BLOB_MB=64 BENCH_DURATION=3 npm run bench # quick run
 *   node dist/bench/registry-bench.js --blob-mb 256 --json out.json
 *
 * Options (flag, else environment variable):
 *   --blob-mb / BENCH_BLOB_MB        large blob size in MiB (GET and push), default 512
 *   --huge-mb / BENCH_HUGE_MB        blob streamed for Stevedore's RSS check, MiB, default 1024 (0 skips)
 *   --runs / BENCH_RUNS              runs per throughput measurement (best is kept), default 3
 *   --duration / BENCH_DURATION      seconds per wrk measurement, default 10 (plus 2 s warm-up)
 *   --chunk-mb / BENCH_CHUNK_MB      PATCH chunk size for the chunked push, MiB, default 16
 *   --wrk-threads / BENCH_WRK_THREADS  wrk threads, default 1 (2 cores shared with the servers)
 *   --dist-quiet / BENCH_DIST_QUIET  run distribution without its access log, at log level warn
 *                                    (default: the test helper's config, access log on, level info)
 *   --json / BENCH_JSON              also write the results as JSON to this file
 *   --timeout / BENCH_TIMEOUT        whole-run limit in seconds, default 1800
 *
 * Sizes are MiB; throughput is MB/s (10^6 bytes per second); RSS is MB (10^6 bytes).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildImage } from '../test/helpers/oci-image.js';
import { workerNodeArgs } from '../lib/ecosystem.js';
import { DISTRIBUTION_BIN, STEVEDORE_BIN, distributionConfig, freePort, startDistribution, tempDir } from '../test/helpers/processes.js';
import { numberOption, option } from './options.js';
import { children, logger, procStatusKb, roundOrder, run, runBenchmark, tempDirs } from './harness.js';

export const MiB = 1024 * 1024;
const GEN_CHUNK = MiB;
export const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';
export const REPO = 'bench/app';

// ---------------------------------------------------------------------------------------------
// Options



const OPTS = {
  blobMiB: numberOption('blob-mb', 'BENCH_BLOB_MB', 512, { min: 1 }),
  hugeMiB: numberOption('huge-mb', 'BENCH_HUGE_MB', 1024, { min: 0 }),
  runs: Math.floor(numberOption('runs', 'BENCH_RUNS', 3, { min: 1 })),
  duration: Math.floor(numberOption('duration', 'BENCH_DURATION', 10, { min: 1 })),
  chunkMiB: numberOption('chunk-mb', 'BENCH_CHUNK_MB', 16, { min: 1 }),
  wrkThreads: Math.floor(numberOption('wrk-threads', 'BENCH_WRK_THREADS', 1, { min: 1 })),
  distQuiet: ['1', 'true', 'yes'].includes(option('dist-quiet', 'BENCH_DIST_QUIET', 'false').toLowerCase()),
  json: option('json', 'BENCH_JSON', '') || undefined,
  timeoutS: numberOption('timeout', 'BENCH_TIMEOUT', 1800, { min: 10 }),
};

const log = logger('bench');

// ---------------------------------------------------------------------------------------------
// HTTP client (no agent: each call is one request on a fresh loopback connection)

export interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export async function request(method: string, url: string, options: { headers?: Record<string, string | number>; body?: Buffer | Iterable<Buffer>; timeoutMs?: number } = {}): Promise<Response> {
  const req = http.request(url, { method, headers: options.headers, agent: false, signal: AbortSignal.timeout(options.timeoutMs ?? 120_000) });
  const response = new Promise<Response>((resolve, reject) => {
    req.on('error', reject);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
  });
  let answered = false;
  response.then(() => { answered = true; }, () => { answered = true; });
  const body = options.body;
  if (body === undefined) req.end();
  else if (Buffer.isBuffer(body)) req.end(body);
  else {
    for (const chunk of body) {
      // An early answer (an error status) or a failed connection ends the upload.
      if (answered) break;
      if (!req.write(chunk)) await Promise.race([once(req, 'drain'), response]).catch(() => {});
    }
    req.end();
  }
  return response;
}

export function expectStatus(res: Response, expected: number, what: string): void {
  if (res.status !== expected) {
    throw new Error(`${what}: expected HTTP ${expected}, got ${res.status}: ${res.body.toString('utf8').slice(0, 500)}`);
  }
}

export function locationOf(res: Response, base: string): URL {
  const location = res.headers.location;
  if (!location) throw new Error('upload response has no Location header');
  return new URL(location, base);
}

// ---------------------------------------------------------------------------------------------
// Blob contents: deterministic and unique per seed, generated on the fly (no source files on disk)

const PATTERN = randomBytes(GEN_CHUNK);

export function* generate(seed: number, size: number, from = 0, to = size): Generator<Buffer> {
  for (let offset = from; offset < to; offset += GEN_CHUNK) {
    const length = Math.min(GEN_CHUNK, to - offset);
    const chunk = Buffer.allocUnsafe(length);
    PATTERN.copy(chunk, 0, 0, length);
    // Stamps make every MiB of every seed distinct; offsets stay MiB-aligned (chunk sizes are whole MiB).
    if (length >= 8) {
      chunk.writeUInt32LE(seed, 0);
      chunk.writeUInt32LE(offset / GEN_CHUNK, 4);
    }
    yield chunk;
  }
}

export interface GeneratedBlob {
  seed: number;
  size: number;
  digest: string;
}

export function makeBlob(seed: number, size: number): GeneratedBlob {
  const hash = createHash('sha256');
  for (const chunk of generate(seed, size)) hash.update(chunk);
  return { seed, size, digest: `sha256:${hash.digest('hex')}` };
}

// ---------------------------------------------------------------------------------------------
// Servers

export interface Server {
  /** 'stevedore' and 'distribution' here; other benchmarks name their own servers. */
  label: string;
  url: string;
  pid: number;
  proc: ChildProcess;
  output: () => string;
}

export async function waitReady(url: string, proc: ChildProcess, output: () => string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}:\n${output().slice(-3000)}`);
    try {
      const res = await request('GET', `${url}/v2/`, { timeoutMs: 2_000 });
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  throw new Error(`server at ${url} not ready after ${timeoutMs} ms:\n${output().slice(-3000)}`);
}

export function capture(proc: ChildProcess): () => string {
  let text = '';
  const keep = (c: Buffer) => {
    text += c.toString('utf8');
    if (text.length > 1_000_000) text = text.slice(-200_000);
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  return () => text;
}

/**
 * The Stevedore worker at `--log-level warn` (so logging does not skew results). Started here rather
 * than with startStevedoreRegistry, which waits for the info-level "registry listening" line.
 */
async function startStevedore(): Promise<Server> {
  const root = await tempDir('stevedore-bench-');
  tempDirs.add(root);
  const port = await freePort();
  // The node options the appliance gives its workers (PM2's node_args), so this measures what it runs.
  const proc = spawn(process.execPath, [...workerNodeArgs(), STEVEDORE_BIN, 'registry', '--listen', `127.0.0.1:${port}`, '--root', join(root, 'data'), '--log-level', 'warn'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(proc);
  const output = capture(proc);
  const url = `http://127.0.0.1:${port}`;
  await waitReady(url, proc, output, 15_000);
  return { label: 'stevedore', url, pid: proc.pid!, proc, output };
}

/** distribution with the test helper's config, or (--dist-quiet) without access log at level warn. */
export async function startDist(): Promise<Server> {
  if (!OPTS.distQuiet) {
    const dist = await startDistribution();
    children.add(dist.proc);
    tempDirs.add(dirname(dist.root));
    return { label: 'distribution', url: dist.url, pid: dist.proc.pid!, proc: dist.proc, output: dist.output };
  }
  const dir = await tempDir('distribution-bench-');
  tempDirs.add(dir);
  const port = await freePort();
  const config = distributionConfig({ root: join(dir, 'data'), port, quiet: true });
  await writeFile(join(dir, 'config.yml'), config);
  const proc = spawn(DISTRIBUTION_BIN, ['serve', join(dir, 'config.yml')], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(proc);
  const output = capture(proc);
  const url = `http://127.0.0.1:${port}`;
  await waitReady(url, proc, output, 15_000);
  return { label: 'distribution', url, pid: proc.pid!, proc, output };
}

// ---------------------------------------------------------------------------------------------
// RSS sampling from /proc/<pid>/status

/** Samples VmRSS every 20 ms (and resets VmHWM first, where the kernel allows) until stopped; result in MB. */
function sampleRss(pid: number): { before: number; stop: () => number } {
  let hwmReset = false;
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    hwmReset = true;
  } catch {
    // older kernels / restricted /proc: samples only
  }
  let peakKb = procStatusKb(pid, 'VmRSS') ?? 0;
  const before = (peakKb * 1024) / 1e6;
  const timer = setInterval(() => {
    peakKb = Math.max(peakKb, procStatusKb(pid, 'VmRSS') ?? 0);
  }, 20);
  timer.unref();
  return {
    before,
    stop: () => {
      clearInterval(timer);
      peakKb = Math.max(peakKb, procStatusKb(pid, 'VmRSS') ?? 0);
      if (hwmReset) peakKb = Math.max(peakKb, procStatusKb(pid, 'VmHWM') ?? 0);
      return (peakKb * 1024) / 1e6;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Measurements

/** POST then PUT ?digest= with the whole body; returns MB/s. */
export async function pushMonolithic(server: Server, name: string, blob: GeneratedBlob): Promise<number> {
  const started = process.hrtime.bigint();
  const post = await request('POST', `${server.url}/v2/${name}/blobs/uploads/`, { headers: { 'content-length': 0 } });
  expectStatus(post, 202, `${server.label} POST upload`);
  const put = locationOf(post, server.url);
  put.searchParams.set('digest', blob.digest);
  const res = await request('PUT', put.href, {
    headers: { 'content-type': 'application/octet-stream', 'content-length': blob.size },
    body: generate(blob.seed, blob.size),
    timeoutMs: 300_000,
  });
  expectStatus(res, 201, `${server.label} PUT monolithic`);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return blob.size / 1e6 / seconds;
}

/** POST, PATCH chunks with Content-Range, then PUT ?digest= without a body; returns MB/s. */
export async function pushChunked(server: Server, name: string, blob: GeneratedBlob, chunkSize: number): Promise<number> {
  const started = process.hrtime.bigint();
  const post = await request('POST', `${server.url}/v2/${name}/blobs/uploads/`, { headers: { 'content-length': 0 } });
  expectStatus(post, 202, `${server.label} POST upload`);
  let location = locationOf(post, server.url);
  for (let offset = 0; offset < blob.size; offset += chunkSize) {
    const end = Math.min(blob.size, offset + chunkSize);
    const res = await request('PATCH', location.href, {
      headers: { 'content-type': 'application/octet-stream', 'content-length': end - offset, 'content-range': `${offset}-${end - 1}` },
      body: generate(blob.seed, blob.size, offset, end),
      timeoutMs: 120_000,
    });
    expectStatus(res, 202, `${server.label} PATCH ${offset}-${end - 1}`);
    location = locationOf(res, server.url);
  }
  location.searchParams.set('digest', blob.digest);
  const res = await request('PUT', location.href, { headers: { 'content-length': 0 }, timeoutMs: 300_000 });
  expectStatus(res, 201, `${server.label} PUT finish chunked`);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return blob.size / 1e6 / seconds;
}

/** Flushes dirty pages so that one server's writeback does not land in the next measurement. */
export async function settle(): Promise<void> {
  await run('sync', [], 120_000).catch(() => {});
  await sleep(200);
}

/** One GET of the whole blob with curl discarding the body; returns MB/s. `curlArgs`: e.g. `-k`, `-u user:pass`. */
export async function curlGet(url: string, size: number, curlArgs: string[] = []): Promise<number> {
  const maxTime = Math.max(60, Math.ceil(size / 50e6));
  const { code, stdout, stderr } = await run('curl', ['-sS', ...curlArgs, '-o', '/dev/null', '--max-time', String(maxTime), '-w', '%{http_code} %{size_download} %{time_total}', url], (maxTime + 10) * 1000);
  const [status, bytes, seconds] = stdout.trim().split(' ');
  if (code !== 0 || status !== '200' || Number(bytes) !== size) {
    throw new Error(`curl GET ${url}: exit ${code}, status ${status}, ${bytes}/${size} bytes [${stdout}] ${stderr.trim()}`);
  }
  return size / 1e6 / Number(seconds);
}

export interface WrkResult {
  rps: number;
  requests: number;
  errors: number;
  non2xx: number;
  latencyP99: string;
}

const HTTP_LOAD = fileURLToPath(new URL('./http-load.js', import.meta.url));

/** HEAD load with bench/http-load (wrk 4.1 cannot parse bodyless HEAD responses that carry Content-Length). */
async function headLoad(url: string, accept: string, connections: number, seconds: number): Promise<WrkResult> {
  const { code, stdout, stderr } = await run(process.execPath, [HTTP_LOAD, url, String(connections), String(seconds), `Accept: ${accept}`], (seconds + 30) * 1000);
  if (code !== 0) throw new Error(`http-load ${url} failed (exit ${code}):\n${stdout}\n${stderr}`);
  const r = JSON.parse(stdout.trim()) as { requests: number; rps: number; errors: number; non2xx: number; p99Ms: number };
  return { rps: r.rps, requests: r.requests, errors: r.errors, non2xx: r.non2xx, latencyP99: `${r.p99Ms.toFixed(2)}ms` };
}

export async function wrk(url: string, script: string, connections: number, seconds: number): Promise<WrkResult> {
  const args = [`-t${Math.min(OPTS.wrkThreads, connections)}`, `-c${connections}`, `-d${seconds}s`, '--latency', '--timeout', '5s', '-s', script, url];
  const { code, stdout, stderr } = await run('wrk', args, (seconds + 30) * 1000);
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(stdout);
  if (code !== 0 || !rps) throw new Error(`wrk ${args.join(' ')} failed (exit ${code}):\n${stdout}\n${stderr}`);
  const requests = Number(/(\d+) requests in/.exec(stdout)?.[1] ?? 0);
  const errorsMatch = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(stdout);
  const errors = errorsMatch ? errorsMatch.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0;
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(stdout)?.[1] ?? 0);
  const p99 = /\s99%\s+(\S+)/.exec(stdout)?.[1] ?? '?';
  return { rps: Number(rps[1]), requests, errors, non2xx, latencyP99: p99 };
}

// ---------------------------------------------------------------------------------------------
// Results

interface Row {
  metric: string;
  unit: string;
  stevedore: number | undefined;
  distribution: number | undefined;
  ratio: number | undefined;
  target: string;
  met: boolean | undefined;
  note?: string;
}

const rows: Row[] = [];
let loadAtStart = '';

function ratioRow(metric: string, unit: string, s: number, d: number, minRatio: number, note?: string): void {
  const ratio = s / d;
  const row: Row = { metric, unit, stevedore: s, distribution: d, ratio, target: `>= ${minRatio}x`, met: ratio >= minRatio };
  if (note) row.note = note;
  rows.push(row);
}

export function fmt(value: number | undefined, digits = 0): string {
  if (value === undefined || !Number.isFinite(value)) return '-';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function printTable(): string {
  const header = ['metric', 'stevedore', 'distribution', 'ratio', 'target', 'met?'];
  const body = rows.map((r) => [
    `${r.metric} (${r.unit})`,
    fmt(r.stevedore, r.unit === 'MB' ? 1 : 0),
    fmt(r.distribution, r.unit === 'MB' ? 1 : 0),
    r.ratio === undefined ? '-' : `${fmt(r.ratio, 2)}x`,
    r.target,
    r.met === undefined ? '-' : r.met ? 'yes' : 'NO',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((line) => line[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  const out = [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)];
  const notes = rows.filter((r) => r.note).map((r) => `  note: ${r.metric}: ${r.note}`);
  return [...out, ...notes].join('\n');
}

// ---------------------------------------------------------------------------------------------
// The run

/** Pushes `image` (default: a new one, one 4 KiB layer) as REPO:latest, and `smallBlob`; then checks what wrk will fetch. */
export async function seedImage(server: Server, smallBlob: Buffer, smallDigest: string, image = buildImage({ layerSizes: [4096], seed: 'bench' })): Promise<void> {
  for (const blob of [image.config, ...image.layers]) {
    const post = await request('POST', `${server.url}/v2/${REPO}/blobs/uploads/`, { headers: { 'content-length': 0 } });
    expectStatus(post, 202, `${server.label} POST upload`);
    const put = locationOf(post, server.url);
    put.searchParams.set('digest', blob.digest);
    expectStatus(await request('PUT', put.href, { headers: { 'content-type': 'application/octet-stream', 'content-length': blob.size }, body: blob.data }), 201, `${server.label} PUT ${blob.digest}`);
  }
  const post = await request('POST', `${server.url}/v2/${REPO}/blobs/uploads/`, { headers: { 'content-length': 0 } });
  const put = locationOf(post, server.url);
  put.searchParams.set('digest', smallDigest);
  expectStatus(await request('PUT', put.href, { headers: { 'content-type': 'application/octet-stream', 'content-length': smallBlob.length }, body: smallBlob }), 201, `${server.label} PUT 4 KiB blob`);
  expectStatus(await request('PUT', `${server.url}/v2/${REPO}/manifests/latest`, {
    headers: { 'content-type': MANIFEST_TYPE, 'content-length': image.manifest.size }, body: image.manifest.data,
  }), 201, `${server.label} PUT manifest`);

  // Sanity: the endpoints wrk will hammer answer 200 with the expected lengths.
  const get = await request('GET', `${server.url}/v2/${REPO}/manifests/latest`, { headers: { accept: MANIFEST_TYPE } });
  expectStatus(get, 200, `${server.label} GET manifest`);
  if (!get.body.equals(image.manifest.data)) throw new Error(`${server.label}: manifest body differs`);
  const head = await request('HEAD', `${server.url}/v2/${REPO}/manifests/latest`, { headers: { accept: MANIFEST_TYPE } });
  expectStatus(head, 200, `${server.label} HEAD manifest`);
  if (Number(head.headers['content-length']) !== image.manifest.size) throw new Error(`${server.label}: HEAD Content-Length ${head.headers['content-length']}`);
  const small = await request('GET', `${server.url}/v2/${REPO}/blobs/${smallDigest}`);
  expectStatus(small, 200, `${server.label} GET 4 KiB blob`);
  if (!small.body.equals(smallBlob)) throw new Error(`${server.label}: 4 KiB blob body differs`);
}

async function main(): Promise<void> {
  const blobSize = Math.round(OPTS.blobMiB * MiB);
  const chunkSize = Math.round(OPTS.chunkMiB * MiB);
  if (chunkSize % GEN_CHUNK !== 0) throw new Error('--chunk-mb must be a whole number of MiB');
  log(`options: ${JSON.stringify(OPTS)}`);
  loadAtStart = loadavg().map((l) => l.toFixed(1)).join(' ');

  const scratch = await tempDir('registry-bench-');
  tempDirs.add(scratch);
  const servers = [await startStevedore(), await startDist()];
  const [stevedore, distribution] = servers as [Server, Server];
  log(`stevedore ${stevedore.url} pid ${stevedore.pid}; distribution ${distribution.url} pid ${distribution.pid}${OPTS.distQuiet ? ' (quiet)' : ''}`);

  // Small image and 4 KiB blob for the request-rate measurements.
  const smallBlob = randomBytes(4096);
  const smallDigest = `sha256:${createHash('sha256').update(smallBlob).digest('hex')}`;
  for (const server of servers) await seedImage(server, smallBlob, smallDigest);

  // Pushes: every run pushes fresh content (distinct seeds) to both servers, alternating who goes first.
  log(`pushing ${OPTS.runs}x ${OPTS.blobMiB} MiB monolithic and chunked (${OPTS.chunkMiB} MiB PATCHes) to each server`);
  const mono: Record<string, number[]> = { stevedore: [], distribution: [] };
  const chunked: Record<string, number[]> = { stevedore: [], distribution: [] };
  const largeBlob = makeBlob(1, blobSize);
  const pushRss: Record<string, number> = {};
  for (let r = 0; r < OPTS.runs; r++) {
    const monoBlob = r === 0 ? largeBlob : makeBlob(100 + r, blobSize);
    const chunkBlob = makeBlob(200 + r, blobSize);
    for (const server of roundOrder(servers, r)) {
      await settle();
      let sampler = sampleRss(server.pid);
      mono[server.label]!.push(await pushMonolithic(server, REPO, monoBlob));
      pushRss[server.label] = Math.max(pushRss[server.label] ?? 0, sampler.stop());
      await settle();
      sampler = sampleRss(server.pid);
      chunked[server.label]!.push(await pushChunked(server, REPO, chunkBlob, chunkSize));
      pushRss[server.label] = Math.max(pushRss[server.label] ?? 0, sampler.stop());
    }
    log(`  push run ${r + 1}: mono ${servers.map((s) => `${s.label} ${fmt(mono[s.label]!.at(-1))}`).join(', ')} MB/s; chunked ${servers.map((s) => `${s.label} ${fmt(chunked[s.label]!.at(-1))}`).join(', ')} MB/s`);
  }
  // The blob for the streaming-RSS check is pushed now and streamed last, after the request-rate
  // runs: what is measured then is a worker that has been busy, streaming a stored blob.
  const hugeSize = Math.round(OPTS.hugeMiB * MiB);
  const hugeBlob = OPTS.hugeMiB > 0 ? makeBlob(300, hugeSize) : undefined;
  if (hugeBlob) {
    log(`stevedore: pushing a ${OPTS.hugeMiB} MiB blob for the streaming RSS check`);
    await settle();
    await pushChunked(stevedore, REPO, hugeBlob, chunkSize);
  }
  await settle();

  // Large-blob GET, with RSS sampled while serving.
  log(`large-blob GET: ${OPTS.blobMiB} MiB, best of ${OPTS.runs}`);
  const getMBs: Record<string, number> = {};
  const getRss: Record<string, number> = {};
  for (const server of servers) {
    const url = `${server.url}/v2/${REPO}/blobs/${largeBlob.digest}`;
    const sampler = sampleRss(server.pid);
    const results: number[] = [];
    for (let r = 0; r < OPTS.runs; r++) results.push(await curlGet(url, blobSize));
    getRss[server.label] = sampler.stop();
    getMBs[server.label] = Math.max(...results);
    log(`  ${server.label}: ${results.map((v) => fmt(v)).join(', ')} MB/s; peak RSS ${fmt(getRss[server.label], 1)} MB (${fmt(sampler.before, 1)} MB just before)`);
  }

  // Request rates with wrk.
  const luaDir = join(scratch, 'lua');
  await mkdir(luaDir);
  const scripts = {
    get: join(luaDir, 'get.lua'),
    blob: join(luaDir, 'blob.lua'),
  };
  await writeFile(scripts.get, `wrk.method = "GET"\nwrk.headers["Accept"] = "${MANIFEST_TYPE}"\n`);
  await writeFile(scripts.blob, 'wrk.method = "GET"\n');
  const wrkCases: Array<{ key: string; label: string; script: string | undefined; path: string; connections: number; minRatio: number }> = [
    { key: 'manifest-get-16', label: 'manifest GET by tag c16', script: scripts.get, path: `/v2/${REPO}/manifests/latest`, connections: 16, minRatio: 10 },
    { key: 'manifest-get-64', label: 'manifest GET by tag c64', script: scripts.get, path: `/v2/${REPO}/manifests/latest`, connections: 64, minRatio: 10 },
    { key: 'manifest-head-16', label: 'manifest HEAD by tag c16 (node client)', script: undefined, path: `/v2/${REPO}/manifests/latest`, connections: 16, minRatio: 10 },
    { key: 'manifest-head-64', label: 'manifest HEAD by tag c64 (node client)', script: undefined, path: `/v2/${REPO}/manifests/latest`, connections: 64, minRatio: 10 },
    { key: 'blob4k-get-16', label: '4 KiB blob GET c16', script: scripts.blob, path: `/v2/${REPO}/blobs/${smallDigest}`, connections: 16, minRatio: 5 },
  ];
  const wrkResults: Record<string, Record<string, WrkResult>> = {};
  for (const c of wrkCases) {
    wrkResults[c.key] = {};
    for (const server of servers) {
      const measure = (seconds: number) => (c.script === undefined
        ? headLoad(server.url + c.path, MANIFEST_TYPE, c.connections, seconds)
        : wrk(server.url + c.path, c.script, c.connections, seconds));
      await measure(2); // warm-up
      const result = await measure(OPTS.duration);
      wrkResults[c.key]![server.label] = result;
      log(`  ${c.label} ${server.label}: ${fmt(result.rps)} req/s (p99 ${result.latencyP99}, errors ${result.errors}, non-2xx ${result.non2xx})`);
    }
  }

  // Stevedore's RSS while streaming a 1 GiB blob.
  let hugeRss: number | undefined;
  let hugeBefore: number | undefined;
  let hugeMBs: number | undefined;
  if (hugeBlob) {
    log(`stevedore: streaming the ${OPTS.hugeMiB} MiB blob`);
    const sampler = sampleRss(stevedore.pid);
    hugeBefore = sampler.before;
    hugeMBs = await curlGet(`${stevedore.url}/v2/${REPO}/blobs/${hugeBlob.digest}`, hugeSize);
    hugeRss = sampler.stop();
    log(`  ${fmt(hugeMBs)} MB/s, peak RSS ${fmt(hugeRss, 1)} MB (${fmt(hugeBefore, 1)} MB just before)`);
  }

  // Table.
  ratioRow(`large-blob GET ${OPTS.blobMiB} MiB, best of ${OPTS.runs}`, 'MB/s', getMBs.stevedore!, getMBs.distribution!, 1);
  ratioRow(`monolithic push ${OPTS.blobMiB} MiB, best of ${OPTS.runs}`, 'MB/s', Math.max(...mono.stevedore!), Math.max(...mono.distribution!), 1);
  ratioRow(`chunked push ${OPTS.blobMiB} MiB in ${OPTS.chunkMiB} MiB PATCHes, best of ${OPTS.runs}`, 'MB/s', Math.max(...chunked.stevedore!), Math.max(...chunked.distribution!), 1);
  for (const c of wrkCases) {
    const s = wrkResults[c.key]!.stevedore!;
    const d = wrkResults[c.key]!.distribution!;
    const problems = [s, d].flatMap((r, i) => (r.errors + r.non2xx > 0 ? [`${i === 0 ? 'stevedore' : 'distribution'}: ${r.errors} socket errors, ${r.non2xx} non-2xx of ${r.requests}`] : []));
    ratioRow(c.label, 'req/s', s.rps, d.rps, c.minRatio, problems.length > 0 ? problems.join('; ') : undefined);
    if (problems.length > 0) rows.at(-1)!.met = false;
  }
  rows.push({
    metric: `peak RSS serving the ${OPTS.blobMiB} MiB blob (GETs above)`, unit: 'MB',
    stevedore: getRss.stevedore, distribution: getRss.distribution, ratio: getRss.stevedore! / getRss.distribution!,
    target: '< 150 MB', met: getRss.stevedore! < 150,
  });
  if (hugeRss !== undefined) {
    rows.push({
      metric: `stevedore peak RSS streaming ${OPTS.hugeMiB} MiB`, unit: 'MB',
      stevedore: hugeRss, distribution: undefined, ratio: undefined, target: '< 150 MB', met: hugeRss < 150,
      note: `streamed at ${fmt(hugeMBs)} MB/s; RSS just before the transfer ${fmt(hugeBefore, 1)} MB`,
    });
  }
  rows.push({
    metric: `peak RSS receiving ${OPTS.blobMiB} MiB pushes (info)`, unit: 'MB',
    stevedore: pushRss.stevedore, distribution: pushRss.distribution, ratio: pushRss.stevedore! / pushRss.distribution!,
    target: '-', met: undefined,
  });

  const table = printTable();
  const load = loadavg().map((l) => l.toFixed(1)).join(' ');
  process.stdout.write(`\nStevedore vs distribution 2.8.2 (docker-registry${OPTS.distQuiet ? ', quiet' : ', access log on'}), loopback, node ${process.version}, wrk -t${OPTS.wrkThreads} ${OPTS.duration}s\n\n${table}\n`);
  process.stdout.write('  HEAD rates come from bench/http-load (wrk 4.1 cannot parse bodyless HEAD responses); GET rates from wrk.\n');
  process.stdout.write('  RSS: highest VmRSS sampled every 20 ms, and VmHWM after resetting it (/proc/PID/clear_refs) just before the transfer.\n');
  process.stdout.write(`  load average at start ${loadAtStart}, at end ${load} (2 cores: numbers above ~2 mean other work competed)\n\n`);
  const met = rows.filter((r) => r.met === true).length;
  const judged = rows.filter((r) => r.met !== undefined).length;
  process.stdout.write(`${met}/${judged} targets met\n`);

  if (OPTS.json) {
    const json = {
      date: new Date().toISOString(),
      node: process.version,
      loadAverage: { start: loadAtStart, end: loadavg().map((l) => l.toFixed(1)).join(' ') },
      options: OPTS,
      rows,
      wrk: wrkResults,
      pushes: { monolithic: mono, chunked },
    };
    await writeFile(OPTS.json, `${JSON.stringify(json, null, 2)}\n`);
    log(`wrote ${OPTS.json}`);
  }

  // A server that logged warnings/errors during the run is worth a look.
  const warnings = stevedore.output().split('\n').filter((l) => l.trim() !== '');
  if (warnings.length > 0) log(`stevedore logged ${warnings.length} line(s) at warn or above, e.g.:\n${warnings.slice(0, 5).join('\n')}`);
}

// Other benchmarks (bench/gateway-bench.ts) import the pieces above: the run starts only when this
// file is the program.
const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (isMain) await runBenchmark(main, { timeoutS: OPTS.timeoutS, log });
