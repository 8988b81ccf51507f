import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import {
  isAlive, layoutOf, MANIFEST_ACCEPT, mustRun, sha256, sleep, startAppliance, type Appliance, type HttpResult,
} from './helpers/appliance.js';
import { buildImage } from './helpers/oci-image.js';
import { startDistribution, tempDir, type RunningProcess } from './helpers/processes.js';

/**
 * PM2 supervision under `stevedore start`: a worker killed with SIGKILL is restarted by PM2, and
 * the gateway holds the requests that need it meanwhile instead of failing them.
 */

describe('appliance: a killed worker is restarted by PM2; the gateway holds its requests meanwhile', () => {
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

  it('kill -9 of the hosted worker: requests that need it wait for PM2\'s restart and are served (no 503)', async () => {
    const oldPid = await kill9('registry-hosted');
    // Right after the kill the socket file is still there but nobody accepts on it: the gateway holds
    // the requests until the restarted worker listens (STEVEDORE_WORKER_WAIT, 10 s by default).
    const [tags, push, stored, other] = await Promise.all([
      getTags('/v2/team/app/tags/list'),
      app.call('POST', '/v2/team/app/blobs/uploads/', { auth: app.admin.auth, timeoutMs: 15_000 }),
      // Stored manifests are answered by the gateway from disk, without waiting.
      getManifest('/v2/team/app/manifests/v1'),
      // The other worker is unaffected.
      getTags('/v2/up/mirror/tool/tags/list'),
    ]);
    assert.equal(tags.status, 200, tags.text());
    assert.deepEqual(tags.json(), { name: 'team/app', tags: ['v1'] });
    assert.equal(push.status, 202, push.text());
    assert.equal(stored.status, 200);
    assert.equal(sha256(stored.body), image.manifest.digest);
    assert.ok(stored.ms < tags.ms, `the stored manifest (${stored.ms} ms) did not wait for the worker (${tags.ms} ms)`);
    assert.equal(other.status, 200);
    const restarted = app.processes().find((p) => p.name === 'registry-hosted');
    assert.ok(restarted && restarted.pid !== oldPid, 'a new hosted worker process');
    assert.equal((await app.waitHealthy(10_000))['registry-hosted'], 'ok');
    assert.match(app.output(), /registry-hosted.*(exited|restart)/i);
  });

  it('kill -9 of a cache worker: requests on its prefix wait and are served; the others are not held', async () => {
    const name = `registry-${upHost.replace(':', '_')}`;
    await kill9(name);
    const [byPrefix, byNs, cached, hosted] = await Promise.all([
      getTags('/v2/up/mirror/tool/tags/list'),
      getTags(`/v2/mirror/tool/tags/list?ns=${upHost}`),
      // Its cached manifest (tag within its TTL) is still answered by the gateway.
      getManifest('/v2/up/mirror/tool/manifests/1.0'),
      getTags('/v2/team/app/tags/list'),
    ]);
    for (const res of [byPrefix, byNs, cached, hosted]) assert.equal(res.status, 200, res.text());
    assert.deepEqual(byPrefix.json<{ tags: string[] }>().tags, ['1.0']);
    assert.ok(hosted.ms < byPrefix.ms, `the hosted worker's answer (${hosted.ms} ms) was not held by the cache worker's restart (${byPrefix.ms} ms)`);
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
