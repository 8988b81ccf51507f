/**
 * The gateway hop alone, for a large proxied answer (a cold fill streaming through the gateway):
 * a worker stand-in serves a body from memory on a unix socket; the real gateway (createGateway)
 * runs in its own process in front of it, plain HTTP and TLS. curl fetches the body from the
 * stand-in directly and through the gateway; printed: MB/s (best, median) and the CPU the gateway
 * and curl spent per transfer (from /proc: steadier than MB/s on a shared machine).
 *
 *   npm run bench:hop                          # 200 MiB, 6 transfers per target
 *   node dist/bench/gateway-hop.js --hop-mb 64 --hop-runs 3
 *
 * Options (flag, else environment variable):
 *   --hop-mb / BENCH_HOP_MB      body size in MiB, default 200
 *   --hop-runs / BENCH_HOP_RUNS  transfers per target, default 6
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AppliancePlan } from '../lib/appliance.js';
import { createLogger } from '../lib/log.js';
import { AccessLogWriter } from '../services/gateway/src/access-log.js';
import { GatewayMetrics } from '../services/gateway/src/metrics.js';
import { createGateway } from '../services/gateway/src/server.js';
import { freePort } from '../test/helpers/processes.js';
import { children, cleanup, cpuTimeMs, logger, newTempDir, runBenchmark, stopProcess } from './harness.js';
import { numberOption } from './options.js';

const execFileP = promisify(execFile);
const SELF = fileURLToPath(import.meta.url);
const PATH = `/v2/bench/hop/blobs/sha256:${'0'.repeat(64)}`;
const log = logger('gateway-hop');

/** The worker stand-in: every GET answers `size` bytes from memory, written 1 MiB at a time. */
function serveWorker(socketPath: string, size: number): void {
  const chunk = Buffer.alloc(1024 * 1024, 7);
  createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
    let left = size;
    const pump = (): void => {
      while (left > 0) {
        const n = Math.min(left, chunk.length);
        left -= n;
        if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return void res.once('drain', pump);
      }
      res.end();
    };
    pump();
  }).listen(socketPath);
}

function serveGateway(socketPath: string, dir: string, port: number, tls: boolean): void {
  const plan: AppliancePlan = { hosted: { name: 'registry-hosted', kind: 'hosted', prefixes: [], socketPath }, proxies: [] };
  const gateway = createGateway({
    plan, log: createLogger('gateway', 'warn'), users: undefined, realm: 'hop',
    accessLog: new AccessLogWriter(join(dir, 'access.log')), metrics: new GatewayMetrics(join(dir, 'blobs')),
    ...(tls ? { tls: { cert: readFileSync(join(dir, 'cert.pem')), key: readFileSync(join(dir, 'key.pem')) } } : {}),
  });
  gateway.listen(port, '127.0.0.1');
}

/** CPU time (utime + stime, ms) of a process. */
function cpuMs(pid: number): number {
  const used = cpuTimeMs(pid);
  if (!used) throw new Error(`process ${pid} is gone: no CPU time to read`);
  return used.total;
}

/** One curl transfer: MB/s and curl's own CPU ms. */
async function curl(args: string[], size: number): Promise<{ mbs: number; cpuMs: number }> {
  const { stdout, stderr } = await execFileP('/usr/bin/time', ['-f', '%U %S', 'curl', '-ksS', '-o', '/dev/null', '-w', '%{http_code} %{size_download} %{time_total}\n', ...args], { timeout: 120_000 });
  const [status, bytes, seconds] = stdout.trim().split(' ');
  if (status !== '200' || Number(bytes) !== size) throw new Error(`curl ${args.join(' ')}: status ${status}, ${bytes}/${size} bytes ${stderr}`);
  const [user, sys] = stderr.trim().split('\n').pop()!.split(' ').map(Number);
  return { mbs: size / 1e6 / Number(seconds), cpuMs: (user! + sys!) * 1000 };
}

function spawnSelf(args: string[]): ChildProcess {
  const proc = spawn(process.execPath, [SELF, ...args], { stdio: ['ignore', 'inherit', 'inherit'] });
  children.add(proc);
  return proc;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const sizeMiB = numberOption('hop-mb', 'BENCH_HOP_MB', 200, { min: 1, integer: true });
  const runs = numberOption('hop-runs', 'BENCH_HOP_RUNS', 6, { min: 1, integer: true });
  const size = sizeMiB * 1024 * 1024;
  const dir = await newTempDir('gateway-hop-');
  await execFileP('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'key.pem', '-out', 'cert.pem', '-days', '1', '-subj', '/CN=127.0.0.1'], { cwd: dir });
  const socketPath = join(dir, 'worker.sock');
  const [httpPort, tlsPort] = [await freePort(), await freePort()];
  const worker = spawnSelf(['worker', socketPath, String(size)]);
  const plain = spawnSelf(['gateway', socketPath, dir, String(httpPort)]);
  const tls = spawnSelf(['gateway', socketPath, dir, String(tlsPort), 'tls']);
  await sleep(1500);
  const targets = [
    { name: 'worker direct (unix socket)', pid: worker.pid!, args: ['--unix-socket', socketPath, `http://worker${PATH}`] },
    { name: 'through the gateway, HTTP', pid: plain.pid!, args: [`http://127.0.0.1:${httpPort}${PATH}`] },
    { name: 'through the gateway, TLS', pid: tls.pid!, args: [`https://127.0.0.1:${tlsPort}${PATH}`] },
  ];
  const loadStart = loadavg().map((l) => l.toFixed(2)).join(' ');
  const results = targets.map(() => ({ mbs: [] as number[], serverCpu: 0, curlCpu: 0 }));
  // Interleaved, so that a burst of load elsewhere hits every target alike.
  for (let run = 0; run < runs; run++) {
    for (const [i, target] of targets.entries()) {
      const before = cpuMs(target.pid);
      const t = await curl(target.args, size);
      results[i]!.serverCpu += cpuMs(target.pid) - before;
      results[i]!.curlCpu += t.cpuMs;
      results[i]!.mbs.push(t.mbs);
    }
    log(`run ${run + 1}/${runs} done`);
  }
  console.log(`\nOne ${sizeMiB} MiB answer through the gateway hop (best of ${runs}; server = the stand-in or the gateway)`);
  console.log('target                          best MB/s  median  server CPU ms/transfer  curl CPU ms/transfer');
  for (const [i, target] of targets.entries()) {
    const r = results[i]!;
    console.log(`${target.name.padEnd(30)} ${Math.round(Math.max(...r.mbs)).toString().padStart(10)} ${Math.round(median(r.mbs)).toString().padStart(7)} ${Math.round(r.serverCpu / runs).toString().padStart(23)} ${Math.round(r.curlCpu / runs).toString().padStart(21)}`);
  }
  console.log(`load average at start ${loadStart}, at end ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  for (const proc of [worker, plain, tls]) await stopProcess(proc);
  await cleanup();
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === 'worker') serveWorker(rest[0]!, Number(rest[1]));
else if (mode === 'gateway') serveGateway(rest[0]!, rest[1]!, Number(rest[2]), rest[3] === 'tls');
else await runBenchmark(main, { timeoutS: 600, log });
