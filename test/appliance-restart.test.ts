import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import {
  isAlive, layoutOf, MANIFEST_ACCEPT, mustRun, ociError, sha256, sleep, startAppliance, type Appliance, type HttpResult,
} from './helpers/appliance.js';
import { buildImage } from './helpers/oci-image.js';
import { startDistribution, tempDir, type RunningProcess } from './helpers/processes.js';

/**
 * PM2 supervision under `stevedore start`: a worker killed with SIGKILL makes the gateway answer
 * 503 UNAVAILABLE (Retry-After) until PM2 has restarted it, then everything works again.
 */

describe('appliance: a killed worker is restarted by PM2; the gateway answers 503 meanwhile', () => {
  let work: string;
  let upstream: RunningProcess & { root: string };
  let upHost: string;
  let app: Appliance;
  let stopped: Awaited<ReturnType<Appliance['stop']>> | undefined;
  const image = buildImage({ layerSizes: [3000], seed: 'appliance-restart' });
  const upImage = buildImage({ layerSizes: [2000], seed: 'appliance-restart-upstream' });

  const getManifest = (path: string): Promise<HttpResult> =>
    app.call('GET', path, { auth: app.reader.auth, headers: { accept: MANIFEST_ACCEPT }, timeoutMs: 10_000 });
  /** A tag list: only the worker answers these (stored manifests and large blobs the gateway sends itself). */
  const getTags = (path: string): Promise<HttpResult> => app.call('GET', path, { auth: app.reader.auth, timeoutMs: 10_000 });

  /** SIGKILLs the PM2 app `name`; resolves with its old pid once the process is gone. */
  async function kill9(name: string): Promise<number> {
    const target = app.processes().find((p) => p.name === name);
    assert.ok(target, `process ${name} not found among ${JSON.stringify(app.processes())}`);
    process.kill(target.pid, 'SIGKILL');
    for (let i = 0; i < 100 && isAlive(target.pid); i++) await sleep(10);
    assert.ok(!isAlive(target.pid), `${name} (pid ${target.pid}) still alive`);
    return target.pid;
  }

  /** Polls until `path` (a worker's answer) is 200 again (bounded); returns the statuses seen on the way. */
  async function untilOk(path: string, ms = 20_000): Promise<number[]> {
    const seen: number[] = [];
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      const res = await getTags(path);
      seen.push(res.status);
      if (res.status === 200) return seen;
      assert.equal(res.status, 503, `unexpected ${res.status}: ${res.text()}`);
      await sleep(100);
    }
    throw new Error(`${path} not back within ${ms} ms; statuses: ${seen.join(',')}`);
  }

  function assertUnavailable(res: HttpResult): void {
    assert.equal(res.status, 503, res.text());
    assert.equal(res.headers['retry-after'], '1');
    assert.match(String(res.headers['content-type']), /application\/json/);
    const error = ociError(res);
    assert.equal(error.code, 'UNAVAILABLE');
    assert.match(error.message, /restarting/);
  }

  before(async () => {
    work = await tempDir('appliance-restart-');
    upstream = await startDistribution();
    upHost = `127.0.0.1:${upstream.port}`;
    const layout = await layoutOf(work, [upImage]);
    await mustRun('skopeo', ['--insecure-policy', 'copy', '--quiet', '--dest-tls-verify=false', `oci:${layout.dir}:latest`, `docker://${upHost}/mirror/tool:1.0`]);
    app = await startAppliance({ upstreams: [upHost], aliases: `up=${upHost}` });
    const hosted = await layoutOf(work, [image]);
    await mustRun('skopeo', ['--insecure-policy', 'copy', '--quiet', '--dest-cert-dir', app.certDir, '--dest-creds', app.admin.creds,
      `oci:${hosted.dir}:latest`, `docker://${app.host}/team/app:v1`]);
    // Cached once, so that the cache worker's restart is served from its disk.
    assert.equal((await getManifest('/v2/up/mirror/tool/manifests/1.0')).status, 200);
  });

  after(async () => {
    if (app && !stopped) await app.stop();
    await upstream?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('kill -9 of the hosted worker: 503 UNAVAILABLE with Retry-After during the gap for what needs the worker, then served again', async () => {
    const oldPid = await kill9('registry-hosted');
    // Right after the kill: the socket file is still there but nobody accepts on it.
    assertUnavailable(await getTags('/v2/team/app/tags/list'));
    const push = await app.call('POST', '/v2/team/app/blobs/uploads/', { auth: app.admin.auth });
    assert.equal(push.status, 503);
    assert.equal(push.headers['retry-after'], '1');
    // Stored manifests are answered by the gateway from disk: pulls go on during the gap.
    const stored = await getManifest('/v2/team/app/manifests/v1');
    assert.equal(stored.status, 200);
    assert.equal(sha256(stored.body), image.manifest.digest);
    const health = await app.call('GET', '/healthz');
    if (health.status === 503) {
      assert.deepEqual(health.json<{ workers: Record<string, string> }>().workers['registry-hosted'], 'down');
      assert.equal(health.json<{ status: string }>().status, 'degraded');
    }
    // The other worker is unaffected.
    assert.equal((await getTags('/v2/up/mirror/tool/tags/list')).status, 200);

    const statuses = await untilOk('/v2/team/app/tags/list');
    assert.equal(statuses.at(-1), 200);
    assert.deepEqual((await getTags('/v2/team/app/tags/list')).json(), { name: 'team/app', tags: ['v1'] });
    const restarted = app.processes().find((p) => p.name === 'registry-hosted');
    assert.ok(restarted && restarted.pid !== oldPid, 'a new hosted worker process');
    assert.equal((await app.waitHealthy(10_000))['registry-hosted'], 'ok');
    assert.match(app.output(), /registry-hosted.*(exited|restart)/i);
  });

  it('kill -9 of a cache worker: 503 on its prefix only for what needs it, then it serves from its cache again', async () => {
    const name = `registry-${upHost.replace(':', '_')}`;
    await kill9(name);
    assertUnavailable(await getTags('/v2/up/mirror/tool/tags/list'));
    assertUnavailable(await getTags(`/v2/mirror/tool/tags/list?ns=${upHost}`));
    // Its cached manifest (tag within its TTL) is still answered by the gateway.
    assert.equal((await getManifest('/v2/up/mirror/tool/manifests/1.0')).status, 200);
    assert.equal((await getTags('/v2/team/app/tags/list')).status, 200);
    await untilOk('/v2/up/mirror/tool/tags/list');
    const res = await getManifest('/v2/up/mirror/tool/manifests/1.0');
    assert.equal(res.headers['docker-content-digest'], upImage.manifest.digest);
    await app.waitHealthy(10_000);
  });

  it('kill -9 of the gateway: PM2 restarts it and it serves again', async () => {
    const oldPid = await kill9('gateway');
    await app.waitHealthy(20_000);
    const restarted = app.processes().find((p) => p.name === 'gateway');
    assert.ok(restarted && restarted.pid !== oldPid);
    const res = await getManifest('/v2/team/app/manifests/v1');
    assert.equal(res.status, 200);
    assert.equal(sha256(res.body), image.manifest.digest);
  });

  it('stops cleanly after the restarts', async () => {
    stopped = await app.stop();
    assert.deepEqual(stopped.survivors, []);
    assert.equal(stopped.code, 0);
  });
});
