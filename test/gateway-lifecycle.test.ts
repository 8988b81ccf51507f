import assert from 'node:assert/strict';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { Agent } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseAccessLogLine } from '../lib/access-log.js';
import { fileSize, slowPatch, spawnCli, type CliProcess } from './helpers/hosted.js';
import { freePort, tempDir } from './helpers/processes.js';
import { sleep } from './helpers/wait.js';

/**
 * `stevedore gateway` as a process (no PM2): on SIGTERM it stops accepting, lets an in-flight
 * request through to its worker and back, closes keep-alive connections (it keeps idle ones for
 * 120 s otherwise), writes the access log and exits 0 promptly.
 */


describe('gateway process: graceful stop', () => {
  let dir: string;
  const procs: CliProcess[] = [];

  before(async () => { dir = await tempDir('gateway-lifecycle-'); });
  after(async () => {
    for (const p of procs) await p.stop('SIGKILL').catch(() => {});
    await rm(dir, { recursive: true, force: true });
  });

  it('SIGTERM during a slow upload through the gateway: the request finishes, keep-alive clients do not hold it, the log is written, exit 0', async () => {
    const runDir = join(dir, 'run');
    const root = join(dir, 'root');
    await mkdir(runDir, { mode: 0o700 });
    const port = await freePort();
    const accessLog = join(dir, 'access.log');
    const worker = spawnCli(['registry', '--listen', join(runDir, 'hosted.sock'), '--root', root]);
    procs.push(worker);
    await worker.waitFor('"registry listening"');
    const gateway = spawnCli(['gateway'], {
      STEVEDORE_ROOT: root, STEVEDORE_RUN_DIR: runDir, PULLSECRETPATH: join(dir, 'none.json'), STEVEDORE_GATEWAY_LISTEN: `127.0.0.1:${port}`,
      TLS_CERTS_PATH: join(dir, 'none.pem'), ACCESS_LOG_PATH: accessLog, REGISTRY_AUTH: 'none',
    });
    procs.push(gateway);
    await gateway.waitFor('"gateway listening"');

    const agent = new Agent({ keepAlive: true });
    const post = await fetch(`http://127.0.0.1:${port}/v2/graceful/app/blobs/uploads/`, { method: 'POST' });
    assert.equal(post.status, 202);
    const location = post.headers.get('location')!;
    const dataFile = join(root, '_uploads', location.split('/').pop()!, 'data');
    const slow = slowPatch(port, location, Buffer.alloc(1000, 1), agent);
    for (let i = 0; i < 100 && (await fileSize(dataFile)) < 1000; i++) await sleep(50);
    assert.equal(await fileSize(dataFile), 1000, 'the first part reached the worker');

    const stoppedAt = Date.now();
    gateway.proc.kill('SIGTERM');
    await gateway.waitFor('"shutting down: finishing in-flight requests"');
    await assert.rejects(fetch(`http://127.0.0.1:${port}/v2/`), 'no new connections');
    await sleep(200);
    assert.equal(gateway.proc.exitCode, null, 'the gateway waits for the in-flight request');

    slow.req.end(Buffer.alloc(1000, 2));
    const res = await slow.response;
    assert.equal(res.statusCode, 202, res.text);
    assert.equal(res.headers.range, '0-1999');
    assert.equal(await gateway.exited, 0, gateway.output().slice(-2000));
    assert.ok(Date.now() - stoppedAt < 5_000, `exit took ${Date.now() - stoppedAt} ms`);
    agent.destroy();

    const lines = (await readFile(accessLog, 'utf8')).trim().split('\n').map((l) => parseAccessLogLine(l));
    assert.deepEqual(lines.map((e) => e && `${e.method} ${e.status}`), ['POST 202', 'PATCH 202']);
    await worker.stop();
  });
});
