/**
 * Latency of one small S3 request, sequential on a kept-alive connection, on a throw-away Ceph RGW
 * (scripts/ceph-rgw.sh): through the driver's own S3 client (lib/storage/driver/s3-client.ts, as
 * every service uses it) and through curl (one curl process, one connection, signed with
 * --aws-sigv4), next to the time RGW itself logged for the driver's requests. Run once with RGW's
 * beast frontend as radosgw ships it (tcp_nodelay=0) and once with tcp_nodelay=1: where a small
 * request's time goes (client, server, or the TCP stack between them).
 *
 *   npm run bench:s3-latency
 *   node dist/bench/s3-latency.js --requests 500 --nodelay 1
 *
 * Options (flag, else environment variable):
 *   --requests / BENCH_REQUESTS   requests per operation and client, default 200 (after 10 warm-up)
 *   --nodelay / BENCH_NODELAY     `both` (default), `0` or `1`: the RGW frontend's tcp_nodelay
 */
import { writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import type { S3Driver } from '../lib/storage/driver/s3.js';
import { openStorageDriver } from '../lib/storage/driver/open.js';
import { startCephRgw, type CephRgw } from '../test/helpers/ceph.js';
import { cleanup, logger, run, runBenchmark } from './harness.js';
import { numberOption, option } from './options.js';
import { RgwLog } from '../test/helpers/rgw-log.js';

const OPTS = {
  requests: numberOption('requests', 'BENCH_REQUESTS', 200, { min: 10, max: 10_000, integer: true }),
  nodelay: option('nodelay', 'BENCH_NODELAY', 'both'),
};
if (!['both', '0', '1'].includes(OPTS.nodelay)) throw new Error(`--nodelay (BENCH_NODELAY): "${OPTS.nodelay}" is not both, 0 or 1`);

const log = logger('s3-latency');
const WARMUP = 10;
let rgw: CephRgw | undefined;

interface Timing {
  median: number;
  p90: number;
  /** CPU time of this process per request (ms): what the SDK's request path costs the client. */
  cpu?: number;
}

function summarize(ms: number[]): Timing {
  const sorted = [...ms].sort((a, b) => a - b);
  return { median: sorted[Math.floor(sorted.length / 2)]!, p90: sorted[Math.floor(sorted.length * 0.9)]! };
}

async function timeEach(fn: () => Promise<unknown>): Promise<Timing> {
  for (let i = 0; i < WARMUP; i++) await fn();
  const ms: number[] = [];
  const cpuStart = process.cpuUsage();
  for (let i = 0; i < OPTS.requests; i++) {
    const started = performance.now();
    await fn();
    ms.push(performance.now() - started);
  }
  const cpu = process.cpuUsage(cpuStart);
  return { ...summarize(ms), cpu: (cpu.user + cpu.system) / 1000 / OPTS.requests };
}

/** curl fetching the same URL `requests` times over one kept-alive connection: per-transfer times. */
async function curlTimes(url: string, head: boolean): Promise<Timing> {
  // `-o` applies to the URL after it: one per URL, so only the timings reach stdout.
  const urls = Array.from({ length: WARMUP + OPTS.requests }, () => ['-o', '/dev/null', url]).flat();
  const res = await run('curl', ['-s', ...(head ? ['-I'] : []), '-w', '%{time_total}\\n',
    '--aws-sigv4', `aws:amz:${rgw!.region}:s3`, '--user', `${rgw!.accessKeyId}:${rgw!.secretAccessKey}`,
    '-H', 'x-amz-content-sha256: UNSIGNED-PAYLOAD', ...urls], 300_000);
  if (res.code !== 0) throw new Error(`curl exit ${res.code}: ${res.stderr.slice(0, 300)}`);
  const seconds = res.stdout.trim().split('\n').map(Number).filter(Number.isFinite);
  return summarize(seconds.slice(WARMUP).map((s) => s * 1000));
}

const fmt = (t: Timing | undefined) => (t ? `${t.median.toFixed(2)} / ${t.p90.toFixed(2)}` : '-');
const fmtCpu = (t: Timing) => (t.cpu === undefined ? '-' : t.cpu.toFixed(2));

async function measure(nodelay: '0' | '1'): Promise<string[]> {
  process.env.CEPH_RGW_TCP_NODELAY = nodelay;
  rgw = await startCephRgw();
  try {
    const rgwLog = new RgwLog(rgw.dir);
    const driver = await openStorageDriver({ kind: 's3', bucket: rgw.bucket, prefix: 'latency' }, {
      s3: { endpoint: rgw.endpoint, region: rgw.region, forcePathStyle: true },
    }) as S3Driver;
    const small = Buffer.alloc(200, 'x');
    await driver.putContent('small', small);
    const url = `${rgw.endpoint}/${rgw.bucket}/latency/small`;
    const rows: Array<[string, Timing, Timing | undefined, number]> = [];
    for (const [operation, fn, head] of [
      ['GetObject 200 B', () => driver.getContent('small'), false],
      ['HeadObject', () => driver.stat('small'), true],
      ['PutObject 200 B', () => driver.putContent('small', small), undefined],
    ] as const) {
      const mark = await rgwLog.mark();
      const sdk = await timeEach(fn);
      const stats = [...(await rgwLog.since(mark)).values()][0];
      const rgwMs = stats ? (stats.latencySum / stats.requests) * 1000 : NaN;
      const curl = head === undefined ? undefined : await curlTimes(url, head);
      rows.push([operation, sdk, curl, rgwMs]);
      log(`tcp_nodelay=${nodelay} ${operation}: SDK ${fmt(sdk)} ms (CPU ${fmtCpu(sdk)} ms), curl ${fmt(curl)} ms, RGW ${rgwMs.toFixed(2)} ms`);
    }
    return rows.map(([op, sdk, curl, rgwMs]) => `${`tcp_nodelay=${nodelay}`.padEnd(14)}${op.padEnd(18)}${fmt(sdk).padStart(16)}${fmtCpu(sdk).padStart(10)}${fmt(curl).padStart(16)}${rgwMs.toFixed(2).padStart(12)}`);
  } finally {
    await rgw.stop();
    rgw = undefined;
  }
}

async function main(): Promise<void> {
  const load = loadavg().map((l) => l.toFixed(1)).join(' ');
  const lines = [
    '',
    `Small S3 requests on Ceph RGW (memstore, loopback), sequential, ${OPTS.requests} each after ${WARMUP} warm-up; node ${process.version}`,
    'median / p90 in ms; CPU = this process\'s CPU per driver request; RGW = the mean latency RGW logged for the driver\'s requests',
    '',
    `${'RGW beast'.padEnd(14)}${'operation'.padEnd(18)}${'driver (SDK)'.padStart(16)}${'CPU'.padStart(10)}${'curl'.padStart(16)}${'RGW'.padStart(12)}`,
  ];
  for (const nodelay of OPTS.nodelay === 'both' ? (['0', '1'] as const) : [OPTS.nodelay as '0' | '1']) lines.push(...(await measure(nodelay)));
  lines.push('', `load average at start ${load}, at end ${loadavg().map((l) => l.toFixed(1)).join(' ')} (2 cores)`);
  process.stdout.write(`${lines.join('\n')}\n`);
  const json = option('json', 'BENCH_JSON', '');
  if (json) await writeFile(json, `${JSON.stringify({ date: new Date().toISOString(), lines }, null, 2)}\n`);
}

await runBenchmark(main, {
  timeoutS: 900, log,
  stop: async () => {
    await cleanup();
    await rgw?.stop().catch(() => {});
  },
});
