import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { Agent } from 'node:http';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';
import { STORAGE_KINDS, testStorage } from './helpers/storage-targets.js';
import { assertOciError, fetchText, fileSize, raw, sha256, slowPatch, spawnCli } from './helpers/hosted.js';
import { sleep } from './helpers/wait.js';

/**
 * The hosted worker as a process: crash safety of uploads (kill -9 mid-chunk), stale sessions
 * removed at start-up, graceful SIGTERM, unix sockets, and bad option values.
 */

let dir: string;
const running: Array<{ stop: (signal?: NodeJS.Signals) => Promise<unknown> }> = [];

before(async () => {
  dir = await tempDir('hosted-lifecycle-');
});

after(async () => {
  for (const proc of running.splice(0)) await proc.stop('SIGKILL').catch(() => {});
  await rm(dir, { recursive: true, force: true });
});

async function start(root: string, args: string[] = [], env: Record<string, string> = {}): Promise<RunningProcess> {
  const worker = await startStevedoreRegistry(['--root', root, ...args], env);
  running.push(worker);
  return worker;
}

const exists = (path: string): Promise<boolean> => stat(path).then(() => true, () => false);

async function waitUntil(what: string, check: () => Promise<boolean> | boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('crash safety of uploads', () => {
  it('kill -9 mid-PATCH: after a restart on the same root the blob is not visible, and the session resumes from its last whole chunk', async () => {
    const root = join(dir, 'crash');
    const w1 = await start(root);
    const post = await fetch(`${w1.url}/v2/crash/app/blobs/uploads/`, { method: 'POST' });
    const location = post.headers.get('location')!;
    const uuid = location.split('/').pop()!;
    const chunkA = randomBytes(1000);
    const first = await fetch(`${w1.url}${location}`, { method: 'PATCH', body: chunkA, headers: { 'content-range': '0-999' } });
    assert.equal(first.headers.get('range'), '0-999');

    // The second chunk never completes: the worker dies while its bytes are arriving.
    const partial = randomBytes(64 * 1024);
    const slow = slowPatch(w1.port, location, partial);
    const dataFile = join(root, '_uploads', uuid, 'data');
    await waitUntil('the chunk to reach the data file', async () => (await fileSize(dataFile)) >= 1000 + partial.length);
    assert.equal(await w1.stop('SIGKILL'), null);
    assert.equal(w1.proc.signalCode, 'SIGKILL');
    assert.match(String((await slow.failed).message), /socket hang up|ECONNRESET|EPIPE/);

    const w2 = await start(root);
    const wholeIfCommitted = sha256(Buffer.concat([chunkA, partial]));
    for (const digest of [wholeIfCommitted, sha256(partial), sha256(chunkA)]) {
      assertOciError(await fetchText(`${w2.url}/v2/crash/app/blobs/${digest}`), 404, 'BLOB_UNKNOWN', digest);
      assert.equal(await exists(join(root, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7))), false);
    }
    const status = await fetch(`${w2.url}${location}`);
    assert.equal(status.status, 204);
    assert.equal(status.headers.get('range'), '0-999');

    // Resuming after the restart: the bytes of the killed chunk past the committed offset are dropped.
    const chunkC = randomBytes(500);
    const resumed = await fetch(`${w2.url}${location}`, { method: 'PATCH', body: chunkC, headers: { 'content-range': '1000-1499' } });
    assert.equal(resumed.status, 202);
    assert.equal(resumed.headers.get('range'), '0-1499');
    const blob = Buffer.concat([chunkA, chunkC]);
    const put = await fetch(`${w2.url}${location}?digest=${sha256(blob)}`, { method: 'PUT' });
    assert.equal(put.status, 201, await put.text());
    assert.deepEqual(Buffer.from(await (await fetch(`${w2.url}/v2/crash/app/blobs/${sha256(blob)}`)).arrayBuffer()), blob);
    assertOciError(await fetchText(`${w2.url}/v2/crash/app/blobs/${wholeIfCommitted}`), 404, 'BLOB_UNKNOWN');
    await w2.stop();
  });

  for (const kind of STORAGE_KINDS) {
    it(`sessions and temp files older than --upload-ttl are removed at start-up; younger ones survive (${kind})`, async (t) => {
      const storage = await testStorage(kind);
      t.after(() => storage.cleanup());
      const root = storage.root;
      const startOn = (args: string[] = []) => start(root, [...storage.args, ...args], storage.env);
      const w1 = await startOn();
      const locations: string[] = [];
      for (let i = 0; i < 2; i++) {
        const res = await fetch(`${w1.url}/v2/stale/app/blobs/uploads/`, { method: 'POST' });
        locations.push(res.headers.get('location')!);
        assert.equal((await fetch(`${w1.url}${locations[i]}`, { method: 'PATCH', body: 'abc' })).status, 202);
      }
      assert.equal(await w1.stop(), 0);
      const [oldSession, freshSession] = locations.map((l) => `_uploads/${l.split('/').pop()!}/`) as [string, string];
      const threeHoursAgo = new Date(Date.now() - 3 * 3_600_000);
      // A session's age is its recorded start (the store's objects cannot be back-dated on S3).
      const oldState = `${oldSession}state.json`;
      const state = JSON.parse((await storage.driver.getContent(oldState)).toString('utf8')) as Record<string, unknown>;
      await storage.driver.putContent(oldState, JSON.stringify({ ...state, startedAt: threeHoursAgo.getTime() }));
      // The worker's local temp dir (cache fills spool there), on the local disk with either store.
      const tmp = join(root, '_tmp', '_hosted');
      await mkdir(tmp, { recursive: true });
      await writeFile(join(tmp, 'stale-temp'), 'x');
      await utimes(join(tmp, 'stale-temp'), threeHoursAgo, threeHoursAgo);
      await writeFile(join(tmp, 'fresh-temp'), 'x');

      const hasKeys = async (prefix: string) => (await storage.driver.list(prefix, { limit: 1 })).keys.length > 0;
      const w2 = await startOn(['--upload-ttl', '1h']);
      const purged = w2.logLines().find((l) => l.msg === 'removed stale upload sessions and temp files');
      assert.equal(purged?.purged, 2);
      assert.equal(await hasKeys(oldSession), false);
      assert.equal(await hasKeys(freshSession), true);
      assert.equal(await exists(join(tmp, 'stale-temp')), false);
      assert.equal(await exists(join(tmp, 'fresh-temp')), true);
      assertOciError(await fetchText(`${w2.url}${locations[0]}`), 404, 'BLOB_UPLOAD_UNKNOWN');
      const fresh = await fetch(`${w2.url}${locations[1]}`);
      assert.equal(fresh.status, 204);
      assert.equal(fresh.headers.get('range'), '0-2');
      await w2.stop();
    });
  }
});

describe('graceful stop', () => {
  it('SIGTERM during a slow request: new connections are refused, the request finishes, the process exits 0 promptly', async () => {
    const root = join(dir, 'graceful');
    const worker = await start(root);
    const post = await fetch(`${worker.url}/v2/graceful/app/blobs/uploads/`, { method: 'POST' });
    const location = post.headers.get('location')!;
    const dataFile = join(root, '_uploads', location.split('/').pop()!, 'data');
    // A keep-alive client, as real ones are: its idle connection must not hold the worker open.
    const agent = new Agent({ keepAlive: true });
    const slow = slowPatch(worker.port, location, Buffer.alloc(1000, 1), agent);
    await waitUntil('the first part to arrive', async () => (await fileSize(dataFile)) >= 1000);

    const stoppedAt = Date.now();
    worker.proc.kill('SIGTERM');
    await waitUntil('the shutdown log line', () => worker.output().includes('"shutting down: finishing in-flight requests"'));
    await assert.rejects(raw({ port: worker.port }, 'GET', '/v2/'), /ECONNREFUSED/);
    await sleep(200);
    assert.equal(worker.proc.exitCode, null, 'the worker waits for the in-flight request');

    slow.req.end(Buffer.alloc(1000, 2));
    const res = await slow.response;
    assert.equal(res.statusCode, 202, res.text);
    assert.equal(res.headers.range, '0-1999');
    const code = await new Promise<number | null>((resolve) => {
      if (worker.proc.exitCode !== null) resolve(worker.proc.exitCode);
      else worker.proc.once('exit', (c) => resolve(c));
    });
    assert.equal(code, 0, worker.output().slice(-2000));
    assert.ok(Date.now() - stoppedAt < 5_000, `exit took ${Date.now() - stoppedAt} ms`);
    agent.destroy();

    // The chunk that finished during the shutdown was committed.
    const again = await start(root);
    const status = await fetch(`${again.url}${location}`);
    assert.equal(status.status, 204);
    assert.equal(status.headers.get('range'), '0-1999');
    await again.stop();
  });
});

describe('unix socket', () => {
  it('--listen /path.sock serves the API; a stale socket of a killed worker is replaced; unix: works too', async () => {
    const root = join(dir, 'socket');
    const socketPath = join(dir, 'w.sock');
    const w1 = spawnCli(['registry', '--listen', socketPath, '--root', root]);
    running.push(w1);
    await w1.waitFor('"registry listening"');
    const line = w1.output().split('\n').find((l) => l.includes('"registry listening"'))!;
    assert.equal((JSON.parse(line) as { address: string }).address, socketPath);
    assert.equal((await stat(socketPath)).isSocket(), true);
    const target = { socketPath };
    const base = await raw(target, 'GET', '/v2/');
    assert.equal(base.status, 200);
    assert.equal(base.headers['docker-distribution-api-version'], 'registry/2.0');
    const data = randomBytes(3000);
    const push = await raw(target, 'POST', `/v2/sock/app/blobs/uploads/?digest=${sha256(data)}`, { body: data, headers: { 'content-type': 'application/octet-stream', 'content-length': data.length } });
    assert.equal(push.status, 201, push.text);
    assert.deepEqual((await raw(target, 'GET', `/v2/sock/app/blobs/${sha256(data)}`)).body, data);

    assert.equal(await w1.stop('SIGKILL'), null);
    assert.equal((await stat(socketPath)).isSocket(), true, 'a killed worker leaves its socket file');
    const w2 = spawnCli(['registry', '--listen', `unix:${socketPath}`, '--root', root]);
    running.push(w2);
    await w2.waitFor('"registry listening"');
    assert.deepEqual((await raw(target, 'GET', `/v2/sock/app/blobs/${sha256(data)}`)).body, data);
    assert.equal(await w2.stop(), 0);
  });

  it('--listen naming a file that is not a socket exits non-zero and leaves the file alone', async () => {
    const path = join(dir, 'precious.sock');
    await writeFile(path, 'do not delete');
    const worker = spawnCli(['registry', '--listen', path, '--root', join(dir, 'socket-file')]);
    running.push(worker);
    assert.equal(await worker.exited, 2);
    assert.match(worker.output(), /cannot listen on .*precious\.sock .*--listen.*not a unix socket/);
    assert.equal(await readFile(path, 'utf8'), 'do not delete');
  });
});

describe('bad option values', () => {
  it('exit with status 2 and a message naming the option, without listening', async () => {
    const root = join(dir, 'bad-options');
    const notADir = join(dir, 'not-a-dir');
    await writeFile(notADir, 'x');
    const busy = createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    const busyPort = (busy.address() as { port: number }).port;
    const cases: Array<[string[], NodeJS.ProcessEnv, RegExp]> = [
      [['--listen', 'nope'], {}, /invalid --listen \(option --listen, variable STEVEDORE_LISTEN\): expected HOST:PORT/],
      [['--listen', '127.0.0.1:70000'], {}, /invalid --listen .*out of range/],
      [[], { STEVEDORE_MANIFEST_MAX_SIZE: 'abc' }, /invalid STEVEDORE_MANIFEST_MAX_SIZE \(option --manifest-max-size, variable STEVEDORE_MANIFEST_MAX_SIZE\): invalid size "abc"/],
      [[], { STEVEDORE_LISTEN: 'nope' }, /invalid STEVEDORE_LISTEN \(option --listen/],
      [['--upload-ttl', '0s'], {}, /invalid --upload-ttl \(option --upload-ttl, variable STEVEDORE_UPLOAD_TTL\): must be greater than zero/],
      [['--log-level', 'loud'], {}, /invalid --log-level \(option --log-level, variable LOG_LEVEL\)/],
      [[], { STEVEDORE_READ_ONLY: 'maybe' }, /invalid STEVEDORE_READ_ONLY \(option --read-only/],
      [['--bogus'], {}, /unknown option --bogus/],
      [['--manifest-max-size'], {}, /option --manifest-max-size needs a value/],
      [['--root', join(notADir, 'sub')], {}, /cannot create --root/],
      [['--listen', `127.0.0.1:${busyPort}`], {}, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${busyPort} \\(--listen, STEVEDORE_LISTEN\\): .*EADDRINUSE`)],
    ];
    try {
      await Promise.all(cases.map(async ([args, env, message]) => {
        const proc = spawnCli(['registry', '--root', root, ...args], { STEVEDORE_LISTEN: '127.0.0.1:0', ...env });
        running.push(proc);
        const code = await proc.exited;
        assert.equal(code, 2, `${args.join(' ')} ${JSON.stringify(env)}: ${proc.output()}`);
        assert.match(proc.output(), message);
        assert.doesNotMatch(proc.output(), /registry listening|    at /, 'no listening, no stack trace');
      }));
    } finally {
      busy.close();
    }
  });
});
