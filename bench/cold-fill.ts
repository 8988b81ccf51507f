/**
 * One cold blob through the cache: MB/s of a single big blob (default 200 MiB) fetched with curl
 * from a cache that does not hold it yet, side by side in one run on loopback:
 *
 *   upstream direct       curl from the upstream docker-registry itself (the wire's limit here)
 *   stevedore worker      `stevedore registry --upstream` (cold: the blob file is removed between runs)
 *   stevedore appliance   `stevedore start` under PM2 (gateway + cache worker), plain HTTP, no auth
 *   distribution proxy    docker-registry as a pull-through cache (a fresh instance per run: it
 *                         streams the upstream response to the client and fetches the blob again to store it)
 *
 * plus the upstream GETs each cache made for the blob (the target is exactly one per fill).
 *
 * Two kinds of "cold", each measured in its own pass (BENCH_FILL_CONTENT=both, the default):
 *   same   one blob, removed from the caches before every run. The cache's last copy was just
 *          deleted, so the next fill can write into the page-cache pages that deletion freed.
 *   new    a new blob every round (all targets fetch that round's blob), as a cache meets content it
 *          never saw. On this VM (its host takes back guest memory that sat unused) writing into
 *          memory the guest has not used lately costs several times the system time, and a cache
 *          whose clients wait for its disk writes pays that; distribution's proxy does not (it
 *          streams the upstream's answer to the client and stores the blob from a second GET).
 *
 *   npm run bench:fill                                  # 200 MiB, best of 5, both passes
 *   BENCH_FILL_MB=64 BENCH_FILL_RUNS=2 npm run bench:fill   # quick
 *
 * Options (flag, else environment variable):
 *   --fill-mb / BENCH_FILL_MB        blob size in MiB, default 200
 *   --fill-runs / BENCH_FILL_RUNS    cold fetches per target (best kept; all printed), default 5
 *   --fill-targets / BENCH_FILL_TARGETS  default "direct,worker,appliance,distribution"
 *   --fill-content / BENCH_FILL_CONTENT  same, new or both (default): see above
 *   --prof / BENCH_FILL_PROF         directory: the worker runs with --cpu-prof there
 *   --json / BENCH_JSON              also write the results as JSON to this file
 *   --timeout / BENCH_TIMEOUT        whole-run limit in seconds, default 900
 *   --fill-storage / BENCH_FILL_STORAGE  the worker target's store: filesystem (default) or s3 (a Ceph RGW
 *                                    started for the run, as the tests do; the blob key is deleted between runs)
 */
import { spawn } from 'node:child_process';
import { rm, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { workerNodeArgs } from '../lib/ecosystem.js';
import { startAppliance, type Appliance } from '../test/helpers/appliance.js';
import { STEVEDORE_BIN, distributionRequests, freePort, startDistribution } from '../test/helpers/processes.js';
import { testStorage, type StorageKind, type TestStorage } from '../test/helpers/storage-targets.js';
import { children, cleanup, cpuTimeMs, logger, median, newTempDir, runBenchmark, stopProcess, tempDirs } from './harness.js';
import { numberOption, option } from './options.js';
import { MiB, capture, curlGet, fmt, makeBlob, pushMonolithic, waitReady, type GeneratedBlob, type Server } from './registry-bench.js';

const REPO = 'bench/fill';
const TARGETS = ['direct', 'worker', 'appliance', 'distribution'] as const;
type TargetKey = typeof TARGETS[number];
const CONTENTS = ['same', 'new'] as const;
type ContentKind = typeof CONTENTS[number];

const log = logger('cold-fill');

export interface ColdFillResult {
  sizeMiB: number;
  /** The same blob every run (removed from the caches before it), or a new blob every round. */
  content: ContentKind;
  /** MB/s of every run, per target. */
  runs: Partial<Record<TargetKey, number[]>>;
  /** CPU ms the serving Stevedore processes (worker; appliance: gateway + cache worker) spent per fill. */
  cpuMs: Partial<Record<TargetKey, number[]>>;
  /** Of the appliance's CPU ms per fill, what its gateway spent (the hop to the worker and the client's TCP/TLS). */
  gatewayCpuMs: number[];
  /** Upstream GETs of the blob per cold fetch (worst run), per cache. */
  upstreamGets: Partial<Record<TargetKey, number>>;
  loadStart: string;
  loadEnd: string;
  /** The worker target's store. */
  storage: StorageKind;
}

/** CPU time (utime + stime, ms) of a process, from /proc. */
function cpuMs(pid: number | undefined): number {
  return (pid === undefined ? undefined : cpuTimeMs(pid))?.total ?? NaN;
}

/** Appliances still running: stopped by stopAll() on a signal, a failure or the time limit too. */
const runningAppliances = new Set<Appliance>();

/** Stops what a run left behind (for runBenchmark). */
export async function stopAll(): Promise<void> {
  for (const appliance of [...runningAppliances]) {
    runningAppliances.delete(appliance);
    await appliance.stop().catch(() => {});
  }
  await cleanup();
}

const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');

/** The blob's cache path under a Stevedore root (lib/storage/layout.ts). */
const blobFile = (root: string, digest: string) => join(root, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));

export async function measureColdFill(options: {
  sizeMiB: number; runs: number; targets: TargetKey[]; content: ContentKind; prof?: string | undefined; storage?: StorageKind;
}): Promise<ColdFillResult> {
  const loadStart = load();
  const upstream = await startDistribution();
  children.add(upstream.proc);
  tempDirs.add(dirname(upstream.root));
  const upstreamServer: Server = { label: 'upstream', url: upstream.url, pid: upstream.proc.pid!, proc: upstream.proc, output: upstream.output };
  /** The blob the next fetches are of. */
  let blob: GeneratedBlob = makeBlob(7, Math.round(options.sizeMiB * MiB));
  await pushMonolithic(upstreamServer, REPO, blob);
  log(`upstream ${upstream.url} holds a ${options.sizeMiB} MiB blob ${blob.digest.slice(0, 19)}; content: ${options.content}`);
  const gets = (since: number) => distributionRequests(upstream.output().slice(since))
    .filter((r) => r.method === 'GET' && r.path.split('?')[0] === `/v2/${REPO}/blobs/${blob.digest}`).length;

  // The caches (started once; made cold again before every run).
  let worker: (Server & { root: string }) | undefined;
  let workerStore: TestStorage | undefined;
  let appliance: Appliance | undefined;
  if (options.targets.includes('worker')) {
    const dir = await newTempDir('cold-fill-worker-');
    const port = await freePort();
    if (options.storage === 's3') workerStore = await testStorage('s3');
    const args = [STEVEDORE_BIN, 'registry', '--listen', `127.0.0.1:${port}`, '--root', join(dir, 'root'), ...(workerStore?.args ?? []), '--upstream', upstream.url, '--log-level', 'warn'];
    // The node options the appliance gives its workers (PM2's node_args), so this measures what it runs.
    const nodeArgs = [...workerNodeArgs(), ...(options.prof ? ['--cpu-prof', `--cpu-prof-dir=${options.prof}`] : [])];
    const proc = spawn(process.execPath, [...nodeArgs, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...(workerStore?.env ?? {}) },
    });
    children.add(proc);
    const output = capture(proc);
    const url = `http://127.0.0.1:${port}`;
    await waitReady(url, proc, output, 15_000);
    worker = { label: 'worker', url, pid: proc.pid!, proc, output, root: join(dir, 'root') };
  }
  if (options.targets.includes('appliance')) {
    appliance = await startAppliance({ tls: false, auth: false, upstreams: [new URL(upstream.url).host], env: { LOG_LEVEL: 'warn' } });
    runningAppliances.add(appliance);
  }
  const upstreamHost = new URL(upstream.url).host;

  const runs: ColdFillResult['runs'] = {};
  const cpu: ColdFillResult['cpuMs'] = {};
  const pidsOf = (target: TargetKey): number[] => (target === 'worker' ? [worker!.pid]
    : target === 'appliance' ? appliance!.processes().filter((p) => p.name === 'gateway' || (p.name !== 'registry-hosted' && p.name?.startsWith('registry-'))).map((p) => p.pid) : []);
  const upstreamGets: ColdFillResult['upstreamGets'] = {};
  const gatewayCpu: number[] = [];
  const gatewayPid = (): number | undefined => appliance?.processes().find((p) => p.name === 'gateway')?.pid;
  const fetchOnce = async (target: TargetKey): Promise<number> => {
    const mark = upstream.output().length;
    const pids = pidsOf(target);
    const cpuBefore = pids.reduce((sum, pid) => sum + cpuMs(pid), 0);
    const gatewayBefore = target === 'appliance' ? cpuMs(gatewayPid()) : 0;
    let mbs: number;
    if (target === 'direct') {
      mbs = await curlGet(`${upstream.url}/v2/${REPO}/blobs/${blob.digest}`, blob.size);
    } else if (target === 'worker') {
      if (workerStore) await workerStore.driver.delete(`blobs/sha256/${blob.digest.slice(7, 9)}/${blob.digest.slice(7)}`);
      else await rm(blobFile(worker!.root, blob.digest), { force: true });
      mbs = await curlGet(`${worker!.url}/v2/${REPO}/blobs/${blob.digest}`, blob.size);
    } else if (target === 'appliance') {
      await rm(blobFile(appliance!.root, blob.digest), { force: true });
      mbs = await curlGet(`${appliance!.url}/v2/${upstreamHost}/${REPO}/blobs/${blob.digest}`, blob.size);
    } else {
      // A fresh distribution proxy: it remembers blobs it served in memory, whatever is on disk.
      const proxy = await startDistribution({ proxy: { remoteurl: upstream.url } });
      children.add(proxy.proc);
      try {
        const before = cpuMs(proxy.proc.pid);
        mbs = await curlGet(`${proxy.url}/v2/${REPO}/blobs/${blob.digest}`, blob.size);
        // It stores the blob with a second upstream GET after answering: wait for it to count it.
        await sleep(1_500);
        (cpu[target] ??= []).push(cpuMs(proxy.proc.pid) - before);
      } finally {
        await proxy.stop();
        children.delete(proxy.proc);
      }
    }
    if (pids.length > 0) (cpu[target] ??= []).push(pids.reduce((sum, pid) => sum + cpuMs(pid), 0) - cpuBefore);
    if (target === 'appliance') gatewayCpu.push(cpuMs(gatewayPid()) - gatewayBefore);
    if (target !== 'direct') {
      await sleep(300);
      upstreamGets[target] = Math.max(upstreamGets[target] ?? 0, gets(mark));
    }
    return mbs;
  };

  for (const target of options.targets) await fetchOnce(target); // warm-up: page cache, connections, JIT
  for (let r = 0; r < options.runs; r++) {
    if (options.content === 'new') {
      blob = makeBlob(100 + r, Math.round(options.sizeMiB * MiB));
      await pushMonolithic(upstreamServer, REPO, blob);
    }
    const order = options.targets.map((_, i) => options.targets[(i + r) % options.targets.length]!);
    for (const target of order) (runs[target] ??= []).push(await fetchOnce(target));
    log(`round ${r + 1}: ${options.targets.map((t) => `${t} ${fmt(runs[t]!.at(-1))}`).join(', ')} MB/s (load ${load()})`);
  }

  if (worker) {
    await stopProcess(worker.proc);
    children.delete(worker.proc);
    await workerStore?.cleanup();
  }
  if (appliance) {
    runningAppliances.delete(appliance);
    await appliance.stop();
  }
  await upstream.stop();
  children.delete(upstream.proc);
  return { sizeMiB: options.sizeMiB, content: options.content, runs, cpuMs: cpu, gatewayCpuMs: gatewayCpu, upstreamGets, loadStart, loadEnd: load(), storage: options.storage ?? 'filesystem' };
}

/** The table: best and median MB/s per target, ratios against distribution's proxy and the upstream direct. */
export function coldFillReport(result: ColdFillResult): string {
  const { runs } = result;
  const best = (t: TargetKey) => (runs[t]?.length ? Math.max(...runs[t]!) : NaN);
  const med = (t: TargetKey) => (runs[t]?.length ? median(runs[t]!) : NaN);
  const ratio = (a: number, b: number) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${fmt(a / b, 2)}x` : '-');
  const lines = [
    `One cold ${result.sizeMiB} MiB blob through the cache (curl, loopback; upstream = docker-registry 2.8.2; worker's store: ${result.storage}); `
      + (result.content === 'same' ? 'the same blob every run, removed from the caches before it' : 'a new blob every round'),
    `${'target'.padEnd(20)} ${'best MB/s'.padStart(10)} ${'median'.padStart(8)} ${'vs dist proxy (best/median)'.padStart(28)} ${'vs direct'.padStart(10)} ${'upstream GETs/fill'.padStart(19)}  runs`,
  ];
  for (const t of TARGETS) {
    if (!runs[t]) continue;
    lines.push(`${t.padEnd(20)} ${fmt(best(t)).padStart(10)} ${fmt(med(t)).padStart(8)} ${`${ratio(best(t), best('distribution'))} / ${ratio(med(t), med('distribution'))}`.padStart(28)} `
      + `${ratio(best(t), best('direct')).padStart(10)} ${String(result.upstreamGets[t] ?? '-').padStart(19)}  ${runs[t]!.map((v) => fmt(v)).join(' ')}`
      + `${result.cpuMs[t] ? `; CPU ms/fill ${result.cpuMs[t]!.map((v) => fmt(v)).join(' ')}` : ''}`
      + `${t === 'appliance' && result.gatewayCpuMs.length > 0 ? ` (gateway ${result.gatewayCpuMs.map((v) => fmt(v)).join(' ')})` : ''}`);
  }
  const w = best('worker');
  const d = best('distribution');
  if (Number.isFinite(w) && Number.isFinite(d)) lines.push(`target: worker >= 0.6x distribution's proxy (stretch 1.0x): ${w / d >= 0.6 ? 'met' : 'NOT met'} (${fmt(w / d, 2)}x); one upstream GET per fill: ${result.upstreamGets.worker === 1 ? 'met' : 'NOT met'}`);
  lines.push(`load average at start ${result.loadStart}, at end ${result.loadEnd} (2 cores)`);
  return lines.join('\n');
}

const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (isMain) {
  const OPTS = {
    sizeMiB: numberOption('fill-mb', 'BENCH_FILL_MB', 200, { min: 1 }),
    runs: numberOption('fill-runs', 'BENCH_FILL_RUNS', 5, { min: 1, integer: true }),
    targets: option('fill-targets', 'BENCH_FILL_TARGETS', TARGETS.join(',')).split(',').map((t) => t.trim()).filter(Boolean) as TargetKey[],
    prof: option('prof', 'BENCH_FILL_PROF', '') || undefined,
    json: option('json', 'BENCH_JSON', '') || undefined,
    timeoutS: numberOption('timeout', 'BENCH_TIMEOUT', 900, { min: 10 }),
    storage: option('fill-storage', 'BENCH_FILL_STORAGE', 'filesystem') as StorageKind,
    content: option('fill-content', 'BENCH_FILL_CONTENT', 'both'),
  };
  const contents: ContentKind[] = OPTS.content === 'both' ? [...CONTENTS] : [OPTS.content as ContentKind];
  if (!contents.every((c) => (CONTENTS as readonly string[]).includes(c))) throw new Error(`--fill-content: same, new or both, not "${OPTS.content}"`);
  if (OPTS.storage !== 'filesystem' && OPTS.storage !== 's3') throw new Error(`--fill-storage: filesystem or s3, not "${OPTS.storage}"`);
  for (const t of OPTS.targets) if (!(TARGETS as readonly string[]).includes(t)) throw new Error(`--fill-targets: unknown target "${t}"`);
  await runBenchmark(async () => {
    const results: ColdFillResult[] = [];
    for (const content of contents) results.push(await measureColdFill({ ...OPTS, content }));
    for (const result of results) process.stdout.write(`\n${coldFillReport(result)}\n`);
    if (OPTS.json) await writeFile(OPTS.json, `${JSON.stringify(results.length === 1 ? results[0] : results, null, 2)}\n`);
  }, { timeoutS: OPTS.timeoutS, log, stop: stopAll });
}
