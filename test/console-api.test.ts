import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import { sleep } from './helpers/appliance.js';
import { metricValue, startConsoleFixture, type ConsoleFixture } from './helpers/console-fixture.js';

/**
 * The web console's JSON API (/api/v1/) on the real appliance under PM2, with a docker-registry
 * upstream and skopeo pulls: its numbers against /metrics and the cleaner's own dry run, its
 * users, its CSRF checks and its admin actions.
 */

describe('console API: /api/v1 on the appliance', () => {
  let f: ConsoleFixture;
  const get = (path: string, auth = f.app.reader.auth) => f.app.call('GET', path, { auth });
  const getJson = async <T = Record<string, unknown>>(path: string, auth = f.app.reader.auth): Promise<T> => {
    const res = await get(path, auth);
    assert.equal(res.status, 200, `${path}: ${res.text()}`);
    return res.json<T>();
  };

  before(async () => {
    f = await startConsoleFixture('api');
  });

  after(async () => {
    await f?.stop();
  });

  it('refuses requests without valid credentials with a Basic challenge, pages and API alike', async () => {
    for (const path of ['/', '/ui/app.js', '/api/v1/overview', '/api/v1/sources']) {
      const res = await f.app.call('GET', path);
      assert.equal(res.status, 401, path);
      assert.match(String(res.headers['www-authenticate']), /^Basic realm=/);
    }
    const wrong = await f.app.call('GET', '/api/v1/me', { auth: `Basic ${Buffer.from('reader:nope').toString('base64')}` });
    assert.equal(wrong.status, 401);
    assert.deepEqual(await getJson('/api/v1/me'), { user: 'reader', admin: false, auth: true });
    assert.deepEqual(await getJson('/api/v1/me', f.app.admin.auth), { user: 'admin', admin: true, auth: true });
  });

  it('sources: each upstream with its alias, the prefix a pull through the gateway starts with', async () => {
    const { items } = await getJson<{ items: Array<{ source: string; kind: string; alias: string | null; pullPrefix: string | null; prefixes: string[] }> }>('/api/v1/sources');
    assert.deepEqual(items.map((s) => [s.source, s.kind, s.alias, s.pullPrefix, s.prefixes]), [
      ['hosted', 'hosted', null, '', []],
      [f.upHost, 'proxy', 'up', 'up', [f.upHost, 'up']],
      [f.hub.host, 'proxy', 'hub', 'hub', [f.hub.host, 'hub']],
    ]);
    // The prefix routes: a pull through it is served by that upstream's cache.
    const manifest = await get(`/v2/${items[1]!.pullPrefix}/mirror/tool/manifests/1.0`);
    assert.equal(manifest.status, 200, manifest.text());
  });

  it('serves the page and its assets from the package with CSP and security headers', async () => {
    const page = await get('/');
    assert.equal(page.status, 200);
    assert.match(String(page.headers['content-type']), /^text\/html/);
    assert.match(String(page.headers['content-security-policy']), /script-src 'self'/);
    assert.equal(page.headers['x-content-type-options'], 'nosniff');
    assert.equal(page.headers['x-frame-options'], 'DENY');
    assert.doesNotMatch(page.text(), /<script>(?!<)/, 'no inline script');
    assert.doesNotMatch(page.text(), /https?:\/\//, 'nothing from another origin');
    for (const asset of ['/ui/app.js', '/ui/style.css', '/ui/vendor/uPlot.iife.min.js', '/ui/vendor/uPlot.min.css']) {
      const res = await get(asset);
      assert.equal(res.status, 200, asset);
      const again = await f.app.call('GET', asset, { auth: f.app.reader.auth, headers: { 'if-none-match': String(res.headers.etag) } });
      assert.equal(again.status, 304, `${asset} revalidates`);
    }
    const js = await get('/ui/vendor/uPlot.iife.min.js');
    const zipped = await f.app.call('GET', '/ui/vendor/uPlot.iife.min.js', { auth: f.app.reader.auth, headers: { 'accept-encoding': 'gzip, br' } });
    assert.equal(zipped.headers['content-encoding'], 'gzip');
    assert.deepEqual(gunzipSync(zipped.body), js.body);
    assert.ok(zipped.body.length < js.body.length / 2);
    assert.equal((await get('/ui/../package.json')).status, 404);
    assert.equal((await get('/ui/nope.js')).status, 404);
    assert.equal((await get('/api/v1/nope')).status, 404);
  });

  it('overview: per-upstream counters equal /metrics, storage against CLEANER_MAXSIZE and its trigger', async () => {
    const metrics = (await get('/metrics')).text();
    const overview = await getJson<{ upstreams: Array<Record<string, number | string | null>>; storage: Record<string, number> }>('/api/v1/overview');
    const up = overview.upstreams.find((u) => u.upstream === f.upHost)!;
    assert.ok(up, 'the cache upstream is listed');
    // Console requests are not registry traffic: /metrics is the same before and after.
    const after = (await get('/metrics')).text();
    for (const [field, name, labels] of [
      ['requests', 'stevedore_requests_total', {}], ['bytesServed', 'stevedore_response_bytes_total', {}],
      ['hits', 'stevedore_cache_requests_total', { result: 'hit' }], ['misses', 'stevedore_cache_requests_total', { result: 'miss' }],
      ['bytesFromCache', 'stevedore_cache_response_bytes_total', { result: 'hit' }], ['bytesFetched', 'stevedore_cache_response_bytes_total', { result: 'miss' }],
    ] as const) {
      const expected = metricValue(metrics, name, { upstream: f.upHost, ...labels });
      assert.equal(up[field], expected, `${field} = ${name}: ${JSON.stringify(up)}`);
      assert.equal(metricValue(after, name, { upstream: f.upHost, ...labels }), expected, `${name} unchanged by console requests`);
    }
    assert.ok((up.hits as number) > 0 && (up.misses as number) > 0, 'a miss then hits');
    assert.ok((up.bytesFromCache as number) >= f.cachedImage.layers.reduce((s, l) => s + l.size, 0), 'the second pull came from the cache');
    assert.equal(up.hitRatio, (up.hits as number) / ((up.hits as number) + (up.misses as number)));
    assert.equal(up.state, 'healthy');
    assert.equal(up.consecutiveFailures, 0, 'from the worker\'s /_stevedore/status');
    assert.equal(up.lastError, null);
    assert.equal(up.rateLimit, null, 'docker-registry sends no rate-limit headers');
    assert.equal(overview.storage.limitBytes, 1024);
    assert.equal(overview.storage.triggerBytes, Math.floor(1024 * 1.1));
    const cachedBlobs = [f.cachedImage, f.purgeImage].flatMap((i) => [i.manifest, i.config, ...i.layers]);
    assert.equal(overview.storage.cachedBytes, cachedBlobs.reduce((s, b) => s + b.size, 0));
    const hostedBlobs = [f.hostedImage.manifest, f.hostedImage.config, ...f.hostedImage.layers];
    assert.equal(overview.storage.hostedBytes, hostedBlobs.reduce((s, b) => s + b.size, 0));
  });

  it('repositories: hosted and cached, searchable and paginated', async () => {
    const all = await getJson<{ items: Array<{ source: string; name: string; tags: number }>; total: number; sources: string[] }>('/api/v1/repositories');
    assert.deepEqual(all.items.map((r) => `${r.source} ${r.name} ${r.tags}`), ['hosted team/app 1', `${f.upHost} mirror/gone 1`, `${f.upHost} mirror/tool 1`]);
    assert.deepEqual(all.sources, ['hosted', f.upHost, f.hub.host]);
    const search = await getJson<{ items: Array<{ name: string }> }>('/api/v1/repositories?q=TOOL');
    assert.deepEqual(search.items.map((r) => r.name), ['mirror/tool']);
    const page2 = await getJson<{ items: Array<{ name: string }>; total: number; page: number }>('/api/v1/repositories?per_page=1&page=2');
    assert.deepEqual([page2.items.map((r) => r.name), page2.total, page2.page], [['mirror/gone'], 3, 2]);
    assert.equal((await get('/api/v1/repositories?per_page=0')).status, 400);
  });

  it('tags and image: digest, size, platform, created, layers with their digests and sizes', async () => {
    const image = f.cachedImage;
    const tags = await getJson<{ items: Array<Record<string, unknown>>; pull: string }>(`/api/v1/tags?source=${f.upHost}&repository=mirror/tool`);
    assert.equal(tags.pull, 'up/mirror/tool', 'through the alias: a host with a port is not a path segment');
    assert.equal(tags.items.length, 1);
    const tag = tags.items[0]!;
    assert.equal(tag.tag, '1.0');
    assert.equal(tag.digest, image.manifest.digest);
    assert.equal(tag.size, [image.manifest, image.config, ...image.layers].reduce((s, b) => s + b.size, 0));
    assert.deepEqual(tag.platforms, ['linux/amd64']);
    assert.equal(tag.created, '2024-01-01T00:00:00Z');
    assert.ok(typeof tag.lastServed === 'string');
    const view = await getJson<{ config: { digest: string; size: number }; layers: Array<{ digest: string; size: number; stored: boolean }> }>(
      `/api/v1/image?source=${f.upHost}&repository=mirror/tool&digest=${image.manifest.digest}`);
    assert.deepEqual(view.config.digest, image.config.digest);
    assert.deepEqual(view.layers.map((l) => [l.digest, l.size, l.stored]), image.layers.map((l) => [l.digest, l.size, true]));
    assert.equal((await get('/api/v1/tags?source=hosted&repository=no/such')).status, 404);
    assert.equal((await get('/api/v1/tags?source=evil.example&repository=team/app')).status, 400);
    assert.equal((await get('/api/v1/tags?source=hosted&repository=../../etc')).status, 400);
  });

  it('next to evict is the plan `stevedore clean --dry-run` prints', async () => {
    // Both read the served index, which the logger updates every second: the fixture's last pulls
    // may land between the two reads, so they are compared again (at most twice) once it has settled.
    let dry: Awaited<ReturnType<typeof f.app.cli>>;
    let printed: string[];
    let api: { items: Array<{ digest: string }>; total: number };
    for (let attempt = 0; ; attempt++) {
      dry = await f.app.cli(['clean', '--dry-run']);
      assert.equal(dry.code, 0, dry.stderr);
      printed = dry.stdout.split('\n').filter((l) => l.startsWith('would evict ')).map((l) => l.split(' ')[2]!);
      api = await getJson<{ items: Array<{ digest: string }>; total: number }>('/api/v1/evictions?per_page=500&fresh=1');
      if (attempt === 2 || JSON.stringify(api.items.map((b) => b.digest)) === JSON.stringify(printed)) break;
      await new Promise((resolve) => setTimeout(resolve, 1500));
    }
    assert.ok(printed.length > 0, dry.stdout);
    assert.deepEqual(api.items.map((b) => b.digest), printed);
    assert.equal(api.total, printed.length);
  });

  it('recent pulls: the access log\'s last manifest and blob requests, filterable', async () => {
    const pulls = await getJson<{ items: Array<{ user: string; repository: string; status: number; kind: string }> }>('/api/v1/pulls?q=mirror/tool&limit=500');
    assert.ok(pulls.items.length >= 4);
    assert.ok(pulls.items.every((e) => e.repository === 'mirror/tool' && (e.kind === 'manifest' || e.kind === 'blob')));
    assert.ok(pulls.items.some((e) => e.user === 'reader'));
    const byAdmin = await getJson<{ items: Array<{ user: string }> }>('/api/v1/pulls?user=admin');
    assert.ok(byAdmin.items.length > 0 && byAdmin.items.every((e) => e.user === 'admin'), 'the push');
    const errors = await getJson<{ items: unknown[] }>('/api/v1/pulls?status=5xx');
    assert.equal(errors.items.length, 0);
    const top = await getJson<{ mostPulled: Array<{ upstream: string; repository: string; pulls: number; bytes: number }> }>('/api/v1/top');
    assert.deepEqual(top.mostPulled.map((i) => [i.upstream, i.repository]), [[f.upHost, 'mirror/tool'], [f.upHost, 'mirror/gone']], 'two pulls, then one (the push is not a pull)');
    assert.ok(top.mostPulled[0]!.pulls >= 2 && top.mostPulled[0]!.pulls > top.mostPulled[1]!.pulls);
  });

  it('largest cached images: one row per cached manifest, largest first, with the tag\'s size', async () => {
    const sizeOf = (i: typeof f.cachedImage) => [i.manifest, i.config, ...i.layers].reduce((s, b) => s + b.size, 0);
    const top = await getJson<{ largestCached: Array<{ upstream: string; repository: string; tags: string[]; digest: string; size: number; lastServed: string }> }>('/api/v1/top');
    assert.deepEqual(top.largestCached.map((i) => [i.upstream, i.repository, i.tags, i.digest, i.size]), [
      [f.upHost, 'mirror/tool', ['1.0'], f.cachedImage.manifest.digest, sizeOf(f.cachedImage)],
      [f.upHost, 'mirror/gone', ['2.0'], f.purgeImage.manifest.digest, sizeOf(f.purgeImage)],
    ], 'hosted images are not cached ones');
    assert.ok(top.largestCached.every((i) => typeof i.lastServed === 'string'));
    assert.equal((await getJson<{ largestCached: unknown[] }>('/api/v1/top?limit=1')).largestCached.length, 1);
  });

  it('admin actions: refused without the CSRF header, from another origin, and for read-only users; an admin purge takes effect', async () => {
    const path = `/api/v1/manifests?source=${f.upHost}&repository=mirror/gone&reference=${f.purgeImage.manifest.digest}`;
    const del = (auth: string, headers: Record<string, string>) => f.app.call('DELETE', path, { auth, headers });
    const noHeader = await del(f.app.admin.auth, {});
    assert.equal(noHeader.status, 403);
    assert.match(noHeader.json<{ error: { message: string } }>().error.message, /x-stevedore-console/);
    const crossOrigin = await del(f.app.admin.auth, { 'x-stevedore-console': '1', origin: 'https://evil.example' });
    assert.equal(crossOrigin.status, 403);
    const crossSite = await del(f.app.admin.auth, { 'x-stevedore-console': '1', 'sec-fetch-site': 'cross-site' });
    assert.equal(crossSite.status, 403);
    const reader = await del(f.app.reader.auth, { 'x-stevedore-console': '1', origin: f.app.url });
    assert.equal(reader.status, 403);
    assert.equal(reader.json<{ error: { message: string } }>().error.message, 'user reader is read-only: deleting a tag or manifest needs an admin');
    assert.equal((await f.app.call('POST', '/api/v1/cleaner/run', { auth: f.app.reader.auth, headers: { 'x-stevedore-console': '1' } })).status, 403);
    // Nothing happened so far.
    assert.equal((await getJson<{ items: unknown[] }>(`/api/v1/tags?source=${f.upHost}&repository=mirror/gone`)).items.length, 1);

    const missesBefore = metricValue((await get('/metrics')).text(), 'stevedore_cache_requests_total', { upstream: f.upHost, result: 'miss' });
    const ok = await del(f.app.admin.auth, { 'x-stevedore-console': '1', origin: f.app.url, 'sec-fetch-site': 'same-origin' });
    assert.equal(ok.status, 200, ok.text());
    assert.equal((await getJson<{ items: unknown[] }>(`/api/v1/tags?source=${f.upHost}&repository=mirror/gone`)).items.length, 0);
    // The purged image's repository (its links stay until GC) is no longer listed.
    const listed = await getJson<{ items: Array<{ source: string; name: string }> }>('/api/v1/repositories?per_page=500');
    assert.ok(!listed.items.some((r) => r.source === f.upHost && r.name === 'mirror/gone'), JSON.stringify(listed.items));
    assert.ok(listed.items.some((r) => r.source === f.upHost && r.name === 'mirror/tool'));
    // The next pull fetches the manifest from upstream again.
    const pulled = await f.pullFromGateway('up/mirror/gone:2.0', f.app.reader.creds);
    assert.equal(pulled.top, f.purgeImage.manifest.digest);
    const missesAfter = metricValue((await get('/metrics')).text(), 'stevedore_cache_requests_total', { upstream: f.upHost, result: 'miss' });
    assert.ok(missesAfter > missesBefore, `a miss after the purge (${missesBefore} → ${missesAfter})`);
    const again = await del(f.app.admin.auth, { 'x-stevedore-console': '1' });
    assert.equal(again.status, 200);
    const gone = await del(f.app.admin.auth, { 'x-stevedore-console': '1' });
    assert.equal(gone.status, 404);
  });

  it('deletes a single hosted tag: the manifest and its other tags stay', async () => {
    const m = f.hostedImage.manifest;
    const put = await f.app.call('PUT', '/v2/team/app/manifests/v1-copy', { auth: f.app.admin.auth, headers: { 'content-type': m.mediaType }, body: m.data });
    assert.equal(put.status, 201, put.text());
    const tagsPath = '/api/v1/tags?source=hosted&repository=team/app';
    assert.deepEqual((await getJson<{ items: Array<{ tag: string }> }>(tagsPath)).items.map((t) => t.tag), ['v1', 'v1-copy']);
    const path = '/api/v1/manifests?source=hosted&repository=team/app&reference=v1-copy';
    const reader = await f.app.call('DELETE', path, { auth: f.app.reader.auth, headers: { 'x-stevedore-console': '1' } });
    assert.equal(reader.status, 403);
    const del = await f.app.call('DELETE', path, { auth: f.app.admin.auth, headers: { 'x-stevedore-console': '1', origin: f.app.url } });
    assert.equal(del.status, 200, del.text());
    assert.deepEqual(del.json(), { deleted: { source: 'hosted', repository: 'team/app', reference: 'v1-copy' } });
    const left = await getJson<{ items: Array<{ tag: string; digest: string }> }>(tagsPath);
    assert.deepEqual(left.items.map((t) => [t.tag, t.digest]), [['v1', m.digest]]);
    assert.equal((await f.app.call('GET', `/v2/team/app/manifests/${m.digest}`, { auth: f.app.reader.auth })).status, 200, 'the manifest stays');
    assert.equal((await f.app.call('GET', '/v2/team/app/manifests/v1-copy', { auth: f.app.reader.auth })).status, 404);
    assert.equal((await f.app.call('DELETE', '/api/v1/manifests?source=hosted&repository=team/app&reference=bad%20tag', { auth: f.app.admin.auth, headers: { 'x-stevedore-console': '1' } })).status, 400);
  });

  it('run cleaner now: the cleaner\'s own eviction, recorded for the chart; history is kept in the data directory', async () => {
    // The run is compared with the plan just before it. The previous test's pull is recorded in the
    // served index by the logger (every second): landing between plan and run, it reorders the
    // least recently served and so how many blobs it takes to get under the limit (a CI run: 5
    // planned, 6 evicted). So the plan is taken once two plans 1.5 s apart agree.
    type Plan = { total: number; evictBytes: number; items: Array<{ digest: string; lastServed: string }> };
    let before = await getJson<Plan>('/api/v1/evictions?fresh=1&per_page=500');
    for (let i = 0; i < 10; i++) {
      await sleep(1500);
      const again = await getJson<Plan>('/api/v1/evictions?fresh=1&per_page=500');
      const same = JSON.stringify(again.items) === JSON.stringify(before.items);
      before = again;
      if (same) break;
    }
    assert.ok(before.total > 0);
    const res = await f.app.call('POST', '/api/v1/cleaner/run', { auth: f.app.admin.auth, headers: { 'x-stevedore-console': '1', origin: f.app.url } });
    assert.equal(res.status, 200, res.text());
    const { run } = res.json<{ run: { evictedBlobs: number; freedBytes: number } }>();
    assert.equal(run.evictedBlobs, before.total);
    assert.equal(run.freedBytes, before.evictBytes);
    const overview = await getJson<{ storage: { cachedBytes: number; limitBytes: number }; cleaner: { lastRun: { freedBytes: number } } }>('/api/v1/overview');
    assert.ok(overview.storage.cachedBytes <= overview.storage.limitBytes, `${overview.storage.cachedBytes} <= limit`);
    assert.equal(overview.cleaner.lastRun.freedBytes, run.freedBytes);
    const history = await getJson<{ points: number[][]; cleanerRuns: Array<{ freedBytes: number }> }>('/api/v1/history');
    assert.equal(history.cleanerRuns.at(-1)!.freedBytes, run.freedBytes);
    assert.ok(history.points.length >= 2, 'the point taken at start and the minute in progress');
    let stored: { points: unknown[] } | undefined;
    for (let i = 0; i < 50 && !stored; i++) {
      stored = await readFile(join(f.app.root, 'logs', 'console-history.json'), 'utf8').then((t) => JSON.parse(t) as { points: unknown[] }, () => undefined);
      if (!stored) await sleep(100);
    }
    assert.ok(stored && stored.points.length >= 1);
  });

  it('the workers\' status path is internal: the gateway never forwards it', async () => {
    for (const path of ['/_stevedore/status', '/v2/../_stevedore/status', '/v2/%2e%2e/_stevedore/status', '/v2/up/../../_stevedore/status', '//_stevedore/status']) {
      const res = await f.app.call('GET', path, { auth: f.app.admin.auth });
      assert.ok(res.status === 404 || res.status === 400, `${path}: ${res.status}`);
      assert.doesNotMatch(res.text(), /consecutiveFailures|circuitOpen/, path);
    }
    // Under /v2/ it is a repository path like any other (here an invalid name), answered by the registry API.
    const inside = await f.app.call('GET', '/v2/_stevedore/status/manifests/latest', { auth: f.app.admin.auth });
    assert.equal(inside.status, 400, inside.text());
    assert.equal(inside.json<{ errors: Array<{ code: string }> }>().errors[0]!.code, 'NAME_INVALID');
    assert.doesNotMatch(inside.text(), /consecutiveFailures/);
  });

  it('rate limits: the last ratelimit-remaining / ratelimit-limit an upstream sent (a relay adding Docker Hub\'s headers)', async () => {
    await f.pullFromGateway('hub/mirror/tool:1.0', f.app.reader.creds);
    const overview = await getJson<{ upstreams: Array<{ upstream: string; rateLimit: { limit: { value: number; windowSeconds: number }; remaining: { value: number; windowSeconds: number } } | null; state: string }> }>('/api/v1/overview');
    const hub = overview.upstreams.find((u) => u.upstream === f.hub.host)!;
    assert.equal(hub.state, 'healthy');
    assert.ok(f.hub.remaining() < 100, 'the relay counted the manifest GETs');
    assert.deepEqual(hub.rateLimit?.limit, { value: 100, windowSeconds: 21600 });
    assert.deepEqual(hub.rateLimit?.remaining, { value: f.hub.remaining(), windowSeconds: 21600 }, 'the last value sent');
    assert.equal(overview.upstreams.find((u) => u.upstream === f.upHost)!.rateLimit, null);
  });

  it('a worker that does not answer its status within 1.5 s is "worker down"; the overview still answers', async () => {
    const name = `registry-${f.hub.host.replace(':', '_')}`;
    const worker = f.app.processes().find((p) => p.name === name);
    assert.ok(worker, `${name} in ${JSON.stringify(f.app.processes().map((p) => p.name))}`);
    type Row = { upstream: string; state: string };
    const hubRow = async () => (await getJson<{ upstreams: Row[] }>('/api/v1/overview')).upstreams.find((u) => u.upstream === f.hub.host)!;
    // Stopped, not killed: its socket accepts but nothing answers (a stuck worker).
    process.kill(worker.pid, 'SIGSTOP');
    try {
      const started = Date.now();
      assert.equal((await hubRow()).state, 'worker down');
      const ms = Date.now() - started;
      assert.ok(ms < 4000, `the overview waited ${ms} ms`);
    } finally {
      process.kill(worker.pid, 'SIGCONT');
    }
    assert.equal((await hubRow()).state, 'healthy');
  });

  it('upstream state: failing, then circuit open with the last error while docker-registry is down; healthy once it is back', async () => {
    type Row = { upstream: string; state: string; consecutiveFailures: number; lastError: { at: string; message: string } | null; lastSuccessAt: string | null };
    const row = async () => (await getJson<{ upstreams: Row[] }>('/api/v1/overview')).upstreams.find((u) => u.upstream === f.upHost)!;
    // A cache miss needs the upstream: each one a new name (answers are negatively cached).
    let n = 0;
    const miss = () => f.app.call('GET', `/v2/up/mirror/absent-${n++}/manifests/1.0`, { auth: f.app.reader.auth, headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    const started = Date.now();
    await f.upstream.down();
    try {
      assert.equal((await miss()).status, 503);
      const failing = await row();
      assert.equal(failing.state, 'failing', JSON.stringify(failing));
      assert.equal(failing.consecutiveFailures, 1);
      assert.match(failing.lastError!.message, /ECONNREFUSED|unreachable|connect/i, failing.lastError!.message);
      assert.ok(Date.parse(failing.lastError!.at) >= started - 1000);
      assert.ok(Date.parse(failing.lastSuccessAt!) < started, 'the last success is from before the upstream went down');
      await miss();
      await miss();
      const open = await row();
      assert.equal(open.state, 'circuit open', JSON.stringify(open));
      assert.equal(open.consecutiveFailures, 3);
      assert.equal((await miss()).status, 503, 'refused at once while open');
      const stillOpen = await row();
      assert.match(stillOpen.lastError!.message, /ECONNREFUSED|unreachable|connect/i, 'the last error is the upstream\'s, not the circuit\'s own refusal');
    } finally {
      await f.upstream.up();
    }
    const restarted = Date.now();
    // The breaker probes the upstream while open (GET /v2/ every second) and closes on its first answer.
    let state = '';
    for (const deadline = Date.now() + 15_000; Date.now() < deadline;) {
      const now = await row();
      state = now.state;
      if (state === 'healthy') {
        assert.equal(now.consecutiveFailures, 0);
        assert.ok(now.lastError, 'the last error stays visible once healthy');
        // No request reached the upstream since it went down: only the breaker's probe answered.
        assert.ok(Date.parse(now.lastSuccessAt!) > Date.parse(now.lastError!.at), `the probe's answer is the last success: ${JSON.stringify(now)}`);
        break;
      }
      await sleep(250);
    }
    assert.equal(state, 'healthy', 'healthy again once docker-registry is back');
    process.stdout.write(`# the overview says healthy ${Date.now() - restarted} ms after docker-registry listens again\n`);
  });
});
