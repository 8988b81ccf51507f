import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseAccessLogLine, type AccessLogEntry } from '../lib/access-log.js';
import {
  expected, layoutOf, MANIFEST_ACCEPT, mustRun, ociError, run, sha256, sleep, startAppliance, tcpListenPorts, type Appliance,
} from './helpers/appliance.js';
import { buildImage, readPulledLayout } from './helpers/oci-image.js';
import { distributionRequests, startDistribution, tempDir, type RunningProcess } from './helpers/processes.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * The appliance end to end under PM2 (`stevedore start`): a docker-registry upstream on loopback,
 * TLS with a generated certificate, htpasswd users. skopeo pushes and pulls through the gateway.
 */

for (const kind of STORAGE_KINDS) describe(`appliance: hosted registry and pull-through cache behind the gateway (TLS, users), store on ${kind}`, () => {
  let work: string;
  let storage: TestStorage;
  let upstream: RunningProcess & { root: string };
  let upHost: string;
  let app: Appliance;
  let stopped: Awaited<ReturnType<Appliance['stop']>> | undefined;
  const hostedImage = buildImage({ layerSizes: [4000, 30_000], seed: 'appliance-hosted' });
  const armImage = buildImage({ layerSizes: [2000], architecture: 'arm64', seed: 'appliance-arm' });
  const toolImage = buildImage({ layerSizes: [3000, 5000], seed: 'appliance-upstream-tool' });
  const nsImage = buildImage({ layerSizes: [1500], seed: 'appliance-upstream-ns' });

  const skopeo = (args: string[]) => mustRun('skopeo', ['--insecure-policy', ...args], { timeoutMs: 60_000 });
  /** Pushes to the plain-HTTP upstream directly (not through the appliance). */
  const seedUpstream = async (ref: string, images: typeof toolImage[]) => {
    const layout = await layoutOf(work, images);
    await skopeo(['copy', '--quiet', '--dest-tls-verify=false', '--preserve-digests', `oci:${layout.dir}:latest`, `docker://${upHost}/${ref}`]);
  };
  /** skopeo copy from the gateway, verifying its certificate against the generated one. */
  const pullFromGateway = async (ref: string, creds: string, all = false) => {
    const out = await mkdtemp(join(work, 'pull-'));
    await skopeo(['copy', '--quiet', ...(all ? ['--all'] : []), '--src-cert-dir', app.certDir, '--src-creds', creds,
      `docker://${app.host}/${ref}`, `oci:${out}:pulled`]);
    return readPulledLayout(out);
  };

  before(async () => {
    work = await tempDir('appliance-registry-');
    upstream = await startDistribution();
    upHost = `127.0.0.1:${upstream.port}`;
    await seedUpstream('mirror/tool:1.0', [toolImage]);
    await seedUpstream('mirror/nsonly:3.0', [nsImage]);
    // More tags of mirror/tool (same manifest) so that tags/list paginates.
    for (const tag of ['1.1', '1.2']) {
      const res = await fetch(`${upstream.url}/v2/mirror/tool/manifests/${tag}`, {
        method: 'PUT', headers: { 'content-type': toolImage.manifest.mediaType }, body: toolImage.manifest.data,
      });
      assert.equal(res.status, 201);
    }
    storage = await testStorage(kind);
    app = await startAppliance({ upstreams: [upHost], aliases: `up=${upHost}`, env: storage.env });
  });

  after(async () => {
    if (app && !stopped) await app.stop();
    await upstream?.stop();
    if (work) await rm(work, { recursive: true, force: true });
    await storage?.cleanup();
  });

  it('skopeo pushes to the hosted registry over verified TLS (admin) and pulls back the same digests (read-only user)', async () => {
    const layout = await layoutOf(work, [hostedImage]);
    await skopeo(['copy', '--quiet', '--dest-cert-dir', app.certDir, '--dest-creds', app.admin.creds,
      `oci:${layout.dir}:latest`, `docker://${app.host}/team/app:v1`]);
    const pulled = await pullFromGateway('team/app:v1', app.reader.creds);
    assert.equal(pulled.top, hostedImage.manifest.digest);
    assert.deepEqual(pulled.manifests, expected([hostedImage]));
    const raw = await skopeo(['inspect', '--raw', '--cert-dir', app.certDir, '--creds', app.reader.creds, `docker://${app.host}/team/app:v1`]);
    assert.equal(sha256(raw.stdout), hostedImage.manifest.digest);

    // A multi-platform index (skopeo --all) round-trips too.
    const multi = await layoutOf(work, [hostedImage, armImage], true);
    await skopeo(['copy', '--quiet', '--all', '--dest-cert-dir', app.certDir, '--dest-creds', app.admin.creds,
      `oci:${multi.dir}:latest`, `docker://${app.host}/team/multi:v1`]);
    const pulledMulti = await pullFromGateway('team/multi:v1', app.reader.creds, true);
    assert.equal(pulledMulti.top, multi.digest);
    assert.deepEqual(pulledMulti.manifests, expected([hostedImage, armImage]));
  });

  it('without the certificate, skopeo refuses the gateway (TLS is really on)', async () => {
    const out = await mkdtemp(join(work, 'pull-'));
    const result = await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--src-creds', app.reader.creds,
      `docker://${app.host}/team/app:v1`, `oci:${out}:pulled`], { timeoutMs: 30_000 });
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /certificate|x509/i);
  });

  it('pulls an upstream image through the alias prefix (GATEWAY/up/repo:tag), fetched by the cache worker', async () => {
    const mark = upstream.output().length;
    const pulled = await pullFromGateway('up/mirror/tool:1.0', app.reader.creds);
    assert.equal(pulled.top, toolImage.manifest.digest);
    assert.deepEqual(pulled.manifests, expected([toolImage]));
    const fetched = distributionRequests(upstream.output().slice(mark));
    assert.ok(fetched.some((r) => r.path === '/v2/mirror/tool/manifests/1.0' && r.status === 200), JSON.stringify(fetched));
    for (const layer of toolImage.layers) {
      assert.ok(fetched.some((r) => r.method === 'GET' && r.path === `/v2/mirror/tool/blobs/${layer.digest}`), `layer ${layer.digest} fetched upstream`);
    }
    // Not stored in the hosted registry: without the prefix the name is unknown there.
    const hosted = await app.call('GET', '/v2/mirror/tool/manifests/1.0', { auth: app.reader.auth, headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(hosted.status, 404);
    assert.equal(ociError(hosted).code, 'MANIFEST_UNKNOWN');
  });

  it('routes ?ns=<upstream host> (containerd mirror) and the host prefix itself to the cache worker', async () => {
    const path = '/v2/mirror/nsonly/manifests/3.0';
    const mark = upstream.output().length;
    const res = await app.call('GET', `${path}?ns=${upHost}`, { auth: app.reader.auth, headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(res.status, 200, res.text());
    assert.equal(res.headers['docker-content-digest'], nsImage.manifest.digest);
    assert.equal(sha256(res.body), nsImage.manifest.digest);
    assert.ok(distributionRequests(upstream.output().slice(mark)).some((r) => r.path === path && r.status === 200),
      'the upstream served the manifest to the cache worker');

    const byHost = await app.call('GET', `/v2/${upHost}/mirror/nsonly/manifests/3.0`, { auth: app.reader.auth, headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(byHost.status, 200);
    assert.equal(byHost.headers['docker-content-digest'], nsImage.manifest.digest);

    // ns naming no upstream of this appliance, or none at all: the hosted registry, which has no such image.
    for (const query of ['', '?ns=other.example.com']) {
      const hosted = await app.call('GET', `${path}${query}`, { auth: app.reader.auth, headers: { accept: MANIFEST_ACCEPT } });
      assert.equal(hosted.status, 404, query);
      assert.equal(ociError(hosted).code, 'MANIFEST_UNKNOWN');
    }
  });

  it('re-adds the client\'s prefix to Link headers from the cache worker; hosted upload Locations are /v2/<name>/blobs/uploads/<id>', async () => {
    // The cache worker's catalog (what it has cached) paginates: its Link comes back under the prefix used.
    for (const prefix of ['up', upHost]) {
      const res = await app.call('GET', `/v2/${prefix}/_catalog?n=1`, { auth: app.reader.auth });
      assert.equal(res.status, 200, res.text());
      assert.deepEqual(res.json(), { repositories: ['mirror/nsonly'] });
      const link = String(res.headers.link);
      assert.equal(link, `</v2/${prefix}/_catalog?n=1&last=mirror%2Fnsonly>; rel="next"`);
      // Following the Link through the gateway gives the next page.
      const next = await app.call('GET', link.slice(1, link.indexOf('>')), { auth: app.reader.auth });
      assert.equal(next.status, 200);
      assert.deepEqual(next.json(), { repositories: ['mirror/tool'] });
    }
    // Tags come from the upstream (distribution 2.8 does not paginate them).
    const tags = await app.call('GET', '/v2/up/mirror/tool/tags/list', { auth: app.reader.auth });
    assert.equal(tags.status, 200);
    assert.deepEqual(tags.json<{ tags: string[] }>().tags.sort(), ['1.0', '1.1', '1.2']);
    // The hosted registry's catalog is its own.
    const hostedCatalog = await app.call('GET', '/v2/_catalog', { auth: app.reader.auth });
    assert.deepEqual(hostedCatalog.json(), { repositories: ['team/app', 'team/multi'] });

    const post = await app.call('POST', '/v2/team/app/blobs/uploads/', { auth: app.admin.auth });
    assert.equal(post.status, 202, post.text());
    const location = String(post.headers.location);
    assert.match(location, /^\/v2\/team\/app\/blobs\/uploads\/[^/?]+/);
    const session = await app.call('GET', location, { auth: app.admin.auth });
    assert.equal(session.status, 204);
    const cancel = await app.call('DELETE', location, { auth: app.admin.auth });
    assert.equal(cancel.status, 204);

    // The cache takes no pushes, through either prefix.
    const proxied = await app.call('POST', '/v2/up/mirror/tool/blobs/uploads/', { auth: app.admin.auth });
    assert.equal(proxied.status, 405);
    assert.equal(ociError(proxied).code, 'UNSUPPORTED');
  });

  it('writes one access-log line per request: user, method, path, upstream, repository, reference, status, bytes, durationMs', async () => {
    const missing = `absent-${Date.now()}`;
    for (let i = 0; i < 3; i++) {
      const res = await app.call('GET', `/v2/team/app/manifests/${missing}`, { auth: app.reader.auth });
      assert.equal(res.status, 404);
    }
    const get = await app.call('GET', '/v2/up/mirror/tool/manifests/1.0', { auth: app.reader.auth, headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(get.status, 200);
    const anonymous = await app.call('GET', `/v2/team/app/manifests/${missing}`);
    assert.equal(anonymous.status, 401);

    let entries: AccessLogEntry[] = [];
    for (let i = 0; i < 50; i++) {
      const lines = await app.accessLog();
      entries = lines.map((line) => {
        const entry = parseAccessLogLine(line);
        assert.ok(entry, `not an access-log entry: ${line}`);
        return entry;
      });
      if (entries.filter((e) => e.reference === missing).length >= 3 && entries.some((e) => e.status === 401 && e.path.endsWith(missing))) break;
      await sleep(100);
    }
    const mine = entries.filter((e) => e.path === `/v2/team/app/manifests/${missing}`);
    assert.equal(mine.length, 4, JSON.stringify(mine));
    for (const e of mine.slice(0, 3)) {
      assert.equal(e.user, 'reader');
      assert.equal(e.method, 'GET');
      assert.equal(e.upstream, '-');
      assert.equal(e.repository, 'team/app');
      assert.equal(e.reference, missing);
      assert.equal(e.kind, 'manifest');
      assert.equal(e.status, 404);
      assert.ok(e.bytes > 0);
      assert.equal(typeof e.durationMs, 'number');
      assert.ok(e.durationMs >= 0 && e.durationMs < 10_000);
      assert.match(e.time, /^\d{4}-\d\d-\d\dT/);
    }
    assert.equal(mine[3]!.user, '-');
    assert.equal(mine[3]!.status, 401);

    const cached = entries.filter((e) => e.path === '/v2/up/mirror/tool/manifests/1.0' && e.method === 'GET' && e.user === 'reader');
    assert.ok(cached.length >= 1);
    const last = cached.at(-1)!;
    assert.equal(last.upstream, upHost);
    assert.equal(last.repository, 'mirror/tool');
    assert.equal(last.reference, '1.0');
    assert.equal(last.status, 200);
    assert.equal(last.bytes, toolImage.manifest.size);

    // skopeo's push of team/app:v1 by the admin: blob uploads and the manifest PUT, by name.
    const push = entries.find((e) => e.method === 'PUT' && e.path === '/v2/team/app/manifests/v1');
    assert.ok(push, 'manifest PUT logged');
    assert.equal(push.user, 'admin');
    assert.equal(push.status, 201);
    assert.equal(push.kind, 'manifest');
    assert.ok(entries.some((e) => e.user === 'admin' && e.kind === 'upload' && e.method === 'PUT' && e.status === 201));
    // ?ns= is routed by query; the path is logged without it.
    assert.ok(entries.some((e) => e.path === '/v2/mirror/nsonly/manifests/3.0' && e.upstream === upHost && e.status === 200));

    const raw = (await app.accessLog()).join('\n');
    for (const secret of [app.admin.pass, app.reader.pass, app.admin.auth.slice(6), app.reader.auth.slice(6)]) {
      assert.ok(!raw.includes(secret), 'no password or Authorization value in the access log');
    }
  });

  it('/healthz reports every worker ok; /metrics is Prometheus text with request counts and storage bytes', async () => {
    const health = await app.call('GET', '/healthz');
    assert.equal(health.status, 200);
    assert.match(String(health.headers['content-type']), /application\/json/);
    assert.deepEqual(health.json(), {
      status: 'ok', gateway: 'ok', workers: { 'registry-hosted': 'ok', [`registry-${upHost.replace(':', '_')}`]: 'ok' },
    });

    const metrics = await app.call('GET', '/metrics');
    assert.equal(metrics.status, 200);
    assert.match(String(metrics.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    const text = metrics.text();
    assert.match(text, /^# TYPE stevedore_requests_total counter$/m);
    const count = (labels: string) => {
      const m = new RegExp(`^stevedore_requests_total\\{${labels}\\} (\\d+)$`, 'm').exec(text);
      return m ? Number(m[1]) : 0;
    };
    assert.ok(count(`upstream="${upHost}",method="GET",status="200"`) >= 3, text);
    assert.ok(count('upstream="-",method="PUT",status="201"') >= 2);
    assert.ok(count('upstream="-",method="GET",status="401"') >= 1);
    // The cache worker reports hits and misses (x-stevedore-cache): the first pull missed, later reads hit.
    const cache = (result: string) => Number(new RegExp(`^stevedore_cache_requests_total\\{upstream="${upHost}",result="${result}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
    assert.ok(cache('miss') >= 1 + toolImage.layers.length, `misses: ${cache('miss')}`);
    assert.ok(cache('hit') >= 1, `hits: ${cache('hit')}`);
    assert.match(text, /^# TYPE stevedore_storage_bytes gauge$/m);
    const stored = /^stevedore_storage_bytes (\d+)$/m.exec(text);
    assert.ok(stored, 'stevedore_storage_bytes sample');
    // The pushed layers are stored (first measurement after the pushes).
    assert.ok(Number(stored[1]) >= hostedImage.layers.reduce((n, l) => n + l.size, 0), `storage ${stored[1]}`);
  });

  it('workers listen only on unix sockets in STEVEDORE_RUN_DIR (mode 0700); only the gateway has a TCP port', async () => {
    const dirMode = (await stat(app.runDir)).mode & 0o777;
    assert.equal(dirMode.toString(8), '700');
    const procs = app.processes();
    const names = procs.map((p) => p.name).filter(Boolean).sort();
    for (const name of ['gateway', 'registry-hosted', `registry-${upHost.replace(':', '_')}`]) assert.ok(names.includes(name), `${name} in ${names.join(', ')}`);
    const workers = procs.filter((p) => p.listen);
    assert.equal(workers.length, 2);
    for (const worker of workers) {
      assert.equal(join(worker.listen!, '..'), app.runDir);
      assert.ok((await stat(worker.listen!)).isSocket(), `${worker.listen} is a socket`);
    }
    assert.deepEqual((await readdir(app.runDir)).sort(), workers.map((w) => w.listen!.slice(app.runDir.length + 1)).sort());
    // PM2 starts the workers with the ecosystem's node options (a larger old generation); each logs its own.
    const started = app.output().split('\n').filter((l) => l.includes('"msg":"registry listening"'));
    assert.equal(started.length >= 2, true, `workers' start lines:\n${started.join('\n')}`);
    for (const line of started) {
      const { nodeOptions } = JSON.parse(line.slice(line.indexOf('{'))) as { nodeOptions: string[] };
      assert.ok(nodeOptions.includes('--initial-old-space-size=64'), line);
    }
    // The gateway gets its larger old generation on every store (gatewayNodeArgs).
    const gatewayStart = app.output().split('\n').find((l) => l.includes('"msg":"gateway listening"'));
    assert.ok(gatewayStart, 'the gateway logged its start');
    assert.ok((JSON.parse(gatewayStart.slice(gatewayStart.indexOf('{'))) as { nodeOptions: string[] }).nodeOptions.includes('--initial-old-space-size=64'), gatewayStart);
    for (const p of procs) {
      const ports = tcpListenPorts(p.pid);
      if (p.name === 'gateway') assert.deepEqual(ports, [app.port]);
      else assert.deepEqual(ports, [], `${p.name ?? 'pm2'} (pid ${p.pid}) listens on TCP ${ports.join(', ')}`);
    }
  });

  it('podman pulls and pushes through the gateway', async (t) => {
    const which = await run('sh', ['-c', 'command -v podman']);
    if (which.code !== 0) {
      t.skip('podman is not installed here');
      return;
    }
    const store = await mkdtemp(join(work, 'podman-'));
    // podman refuses a runroot path longer than 50 characters.
    const runroot = await mkdtemp('/tmp/pdm-');
    t.after(() => rm(runroot, { recursive: true, force: true }));
    const storeArgs = ['--root', join(store, 'root'), '--runroot', runroot, '--storage-driver', 'vfs', '--events-backend', 'file'];
    const podman = (args: string[]) => mustRun('podman', [...storeArgs, ...args], { timeoutMs: 90_000 });
    const tls = ['--cert-dir', app.certDir];
    await podman(['pull', '--quiet', ...tls, '--creds', app.reader.creds, `${app.host}/team/app:v1`]);
    await podman(['pull', '--quiet', ...tls, '--creds', app.reader.creds, `${app.host}/up/mirror/tool:1.0`]);
    await podman(['tag', `${app.host}/team/app:v1`, `${app.host}/team/podman:v1`]);
    const denied = await run('podman', [...storeArgs, 'push', ...tls, '--creds', app.reader.creds, `${app.host}/team/podman:v1`], { timeoutMs: 90_000 });
    assert.notEqual(denied.code, 0);
    await podman(['push', ...tls, '--creds', app.admin.creds, `${app.host}/team/podman:v1`]);
    const res = await app.call('HEAD', '/v2/team/podman/manifests/v1', { auth: app.reader.auth, headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(res.status, 200);
  });

  it('no password appears in the PM2 output or the PM2 logs', async () => {
    const secrets = [app.admin.pass, app.reader.pass, app.admin.auth.slice(6), app.reader.auth.slice(6)];
    const output = app.output();
    assert.match(output, /gateway listening/);
    const logs = join(app.pm2Home, 'logs');
    const files = await readdir(logs).catch(() => [] as string[]);
    const texts = [output, ...(await Promise.all(files.map((f) => readFile(join(logs, f), 'utf8'))))];
    for (const text of texts) for (const secret of secrets) assert.ok(!text.includes(secret), 'a password leaked into the PM2 output');
  });

  it('SIGTERM to `stevedore start` stops every process of the appliance', async () => {
    const before = app.processes();
    assert.ok(before.length >= 4, JSON.stringify(before));
    stopped = await app.stop();
    assert.deepEqual(stopped.survivors, []);
    assert.equal(stopped.code, 0, `exit ${stopped.code} / ${stopped.signal}`);
    assert.ok(stopped.ms < 20_000, `stopped in ${stopped.ms} ms`);
    for (const p of before) assert.ok(!app.processes().some((q) => q.pid === p.pid));
    // And the upstream docker-registry of this test.
    await upstream.stop();
    assert.ok(upstream.proc.exitCode !== null || upstream.proc.signalCode !== null, 'docker-registry exited');
  });
});
