import assert from 'node:assert/strict';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseAccessLogLine } from '../lib/access-log.js';
import {
  basic, layoutOf, MANIFEST_ACCEPT, mustRun, ociError, run, sha256, sleep, startAppliance, type Appliance, type HttpResult,
} from './helpers/appliance.js';
import { buildImage, type BuiltImage } from './helpers/oci-image.js';
import { startDistribution, tempDir, type RunningProcess } from './helpers/processes.js';

/**
 * The gateway's users and routing, end to end under PM2 with TLS: who may read and write, user
 * changes without a restart, upstream prefixes, and paths that try to escape a name.
 */

const REALM = 'Stevedore Test';

describe('appliance: users, roles and routing at the gateway', () => {
  let work: string;
  let upstream: RunningProcess & { root: string };
  let upHost: string;
  let app: Appliance;
  let stopped: Awaited<ReturnType<Appliance['stop']>> | undefined;
  const image = buildImage({ layerSizes: [2500], seed: 'appliance-auth' });
  const upImage = buildImage({ layerSizes: [1800], seed: 'appliance-auth-upstream' });
  const carol = { name: 'carol', pass: 'C4rol-pw-first-1a', pass2: 'C4rol-pw-second-2b' };
  const WRONG = 'Wr0ng-pw-never-logged';

  /** Pushes an image over the registry API: two blob uploads (POST, PUT ?digest=) and the manifest. */
  async function pushHttp(auth: string, repo: string, tag: string, img: BuiltImage): Promise<void> {
    for (const blob of [img.config, ...img.layers]) {
      const post = await app.call('POST', `/v2/${repo}/blobs/uploads/`, { auth });
      assert.equal(post.status, 202, post.text());
      const location = String(post.headers.location);
      const put = await app.call('PUT', `${location}${location.includes('?') ? '&' : '?'}digest=${blob.digest}`, {
        auth, body: blob.data, headers: { 'content-type': 'application/octet-stream' },
      });
      assert.equal(put.status, 201, put.text());
    }
    const manifest = await app.call('PUT', `/v2/${repo}/manifests/${tag}`, { auth, body: img.manifest.data, headers: { 'content-type': img.manifest.mediaType } });
    assert.equal(manifest.status, 201, manifest.text());
    assert.equal(manifest.headers['docker-content-digest'], img.manifest.digest);
  }

  function assertError(res: HttpResult, status: number, code: string, label = ''): void {
    assert.equal(res.status, status, `${label} ${res.status} ${res.text()}`);
    assert.match(String(res.headers['content-type']), /application\/json/, label);
    assert.equal(ociError(res).code, code, label);
  }

  /** Polls `probe` every 100 ms until it is true; returns how long it took (throws after `ms`). */
  async function within(ms: number, what: string, probe: () => Promise<boolean>): Promise<number> {
    const started = Date.now();
    while (Date.now() - started < ms) {
      if (await probe()) return Date.now() - started;
      await sleep(100);
    }
    throw new Error(`${what}: not within ${ms} ms`);
  }

  before(async () => {
    work = await tempDir('appliance-auth-');
    upstream = await startDistribution();
    upHost = `127.0.0.1:${upstream.port}`;
    const layout = await layoutOf(work, [upImage]);
    await mustRun('skopeo', ['--insecure-policy', 'copy', '--quiet', '--dest-tls-verify=false', `oci:${layout.dir}:latest`, `docker://${upHost}/mirror/tool:1.0`]);
    app = await startAppliance({ upstreams: [upHost], aliases: `up=${upHost}`, realm: REALM });
  });

  after(async () => {
    if (app && !stopped) await app.stop();
    await upstream?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('anonymous requests get 401 UNAUTHORIZED with a Basic challenge naming the realm', async () => {
    for (const [method, path] of [['GET', '/v2/'], ['GET', '/v2/team/app/manifests/v1'], ['HEAD', '/v2/team/app/manifests/v1'],
      ['GET', '/v2/up/mirror/tool/manifests/1.0'], ['POST', '/v2/team/app/blobs/uploads/'], ['DELETE', '/v2/team/app/manifests/v1'],
      ['GET', '/v2/_catalog']] as const) {
      const res = await app.call(method, path);
      assert.equal(res.status, 401, `${method} ${path}`);
      assert.equal(res.headers['www-authenticate'], `Basic realm="${REALM}"`);
      assert.equal(res.headers['docker-distribution-api-version'], 'registry/2.0');
      if (method === 'HEAD') assert.equal(res.body.length, 0);
      else assert.deepEqual(res.json(), { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] });
    }
    // Anything but valid Basic credentials is the same 401.
    for (const authorization of ['Bearer abc', 'Basic', 'Basic !!!', `Basic ${Buffer.from('nocolon').toString('base64')}`, `Basic ${Buffer.from(':x').toString('base64')}`]) {
      const res = await app.call('GET', '/v2/', { headers: { authorization } });
      assertError(res, 401, 'UNAUTHORIZED', authorization);
      assert.equal(res.headers['www-authenticate'], `Basic realm="${REALM}"`);
    }
  });

  it('a wrong password or an unknown user gets 401 UNAUTHORIZED', async () => {
    for (const auth of [basic('admin', WRONG), basic('reader', WRONG), basic('reader', ''), basic('nobody', WRONG), basic('Admin', app.admin.pass)]) {
      const res = await app.call('GET', '/v2/', { auth });
      assertError(res, 401, 'UNAUTHORIZED');
      assert.equal(ociError(res).message, 'invalid username or password');
      assert.equal(res.headers['www-authenticate'], `Basic realm="${REALM}"`);
    }
    for (const user of [app.admin, app.reader]) {
      const res = await app.call('GET', '/v2/', { auth: user.auth });
      assert.equal(res.status, 200);
      assert.equal(res.text(), '{}');
    }
  });

  it('the admin pushes; the read-only user pulls but every write is 403 DENIED', async () => {
    await pushHttp(app.admin.auth, 'team/app', 'v1', image);
    const r = app.reader.auth;
    const manifest = await app.call('GET', '/v2/team/app/manifests/v1', { auth: r, headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(manifest.status, 200);
    assert.equal(sha256(manifest.body), image.manifest.digest);
    assert.equal((await app.call('HEAD', `/v2/team/app/manifests/${image.manifest.digest}`, { auth: r, headers: { accept: MANIFEST_ACCEPT } })).status, 200);
    const layer = await app.call('GET', `/v2/team/app/blobs/${image.layers[0]!.digest}`, { auth: r });
    assert.equal(layer.status, 200);
    assert.equal(sha256(layer.body), image.layers[0]!.digest);
    assert.deepEqual((await app.call('GET', '/v2/team/app/tags/list', { auth: r })).json(), { name: 'team/app', tags: ['v1'] });
    assert.equal((await app.call('GET', '/v2/up/mirror/tool/manifests/1.0', { auth: r, headers: { accept: MANIFEST_ACCEPT } })).status, 200);

    const writes: Array<[string, string, Buffer | undefined]> = [
      ['POST', '/v2/team/app/blobs/uploads/', undefined],
      ['POST', `/v2/team/app/blobs/uploads/?digest=${image.config.digest}`, image.config.data],
      ['PUT', '/v2/team/app/manifests/v2', image.manifest.data],
      ['PATCH', '/v2/team/app/blobs/uploads/0123456789abcdef', Buffer.from('x')],
      ['DELETE', '/v2/team/app/manifests/v1', undefined],
      ['DELETE', `/v2/team/app/manifests/${image.manifest.digest}`, undefined],
      ['DELETE', `/v2/team/app/blobs/${image.layers[0]!.digest}`, undefined],
      ['DELETE', '/v2/up/mirror/tool/manifests/1.0', undefined],
      ['POST', '/v2/newrepo/blobs/uploads/', undefined],
    ];
    for (const [method, path, body] of writes) {
      const res = await app.call(method, path, { auth: r, ...(body ? { body, headers: { 'content-type': 'application/octet-stream' } } : {}) });
      assertError(res, 403, 'DENIED', `${method} ${path}`);
      assert.match(ociError(res).message, /reader is read-only/);
    }
    // Nothing changed.
    assert.equal((await app.call('HEAD', '/v2/team/app/manifests/v1', { auth: r, headers: { accept: MANIFEST_ACCEPT } })).status, 200);
    assert.equal((await app.call('GET', '/v2/team/app/manifests/v2', { auth: r })).status, 404);

    // skopeo push as the read-only user fails; as the admin it works.
    const layout = await layoutOf(work, [image]);
    const pushAs = (creds: string, ref: string) => run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--retry-times', '0', '--dest-cert-dir', app.certDir,
      '--dest-creds', creds, `oci:${layout.dir}:latest`, `docker://${app.host}/${ref}`], { timeoutMs: 60_000 });
    const denied = await pushAs(app.reader.creds, 'team/by-reader:v1');
    assert.notEqual(denied.code, 0);
    assert.match(denied.stderr, /denied|403|read-only/i);
    assert.equal((await pushAs(app.admin.creds, 'team/by-admin:v1')).code, 0);
  });

  it('the admin deletes manifests (hosted) and purges cached ones (cache worker)', async () => {
    const a = app.admin.auth;
    await pushHttp(a, 'team/doomed', 'v1', image);
    const del = await app.call('DELETE', `/v2/team/doomed/manifests/${image.manifest.digest}`, { auth: a });
    assert.equal(del.status, 202, del.text());
    assertError(await app.call('GET', '/v2/team/doomed/manifests/v1', { auth: a, headers: { accept: MANIFEST_ACCEPT } }), 404, 'MANIFEST_UNKNOWN');
    // team/app is untouched.
    assert.equal((await app.call('HEAD', '/v2/team/app/manifests/v1', { auth: a, headers: { accept: MANIFEST_ACCEPT } })).status, 200);

    const purge = await app.call('DELETE', `/v2/up/mirror/tool/manifests/${upImage.manifest.digest}`, { auth: a });
    assert.equal(purge.status, 202, purge.text());
    // Purged from the cache only: the next pull fetches it from the upstream again.
    const again = await app.call('GET', '/v2/up/mirror/tool/manifests/1.0', { auth: a, headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(again.status, 200);
    assert.equal(again.headers['docker-content-digest'], upImage.manifest.digest);
  });

  it('stevedore user add / toggle / rm take effect without a restart (within ~2 s)', async (t) => {
    const c1 = basic(carol.name, carol.pass);
    assertError(await app.call('GET', '/v2/', { auth: c1 }), 401, 'UNAUTHORIZED');

    assert.equal((await app.cli(['user', 'add', carol.name], `${carol.pass}\n`)).code, 0);
    const added = await within(6_000, 'new user accepted', async () => (await app.call('GET', '/v2/', { auth: c1 })).status === 200);
    // ~1 s reload check + one bcrypt (cost 12) verification; the bound leaves room for a loaded machine.
    assert.ok(added < 4_000, `took ${added} ms`);
    assertError(await app.call('POST', '/v2/team/carol/blobs/uploads/', { auth: c1 }), 403, 'DENIED');

    assert.equal((await app.cli(['user', 'toggle', carol.name])).code, 0);
    const promoted = await within(6_000, 'user promoted to admin', async () => (await app.call('POST', '/v2/team/carol/blobs/uploads/', { auth: c1 })).status === 202);
    assert.ok(promoted < 4_000, `took ${promoted} ms`);

    assert.equal((await app.cli(['user', 'toggle', carol.name])).code, 0);
    await within(5_000, 'user demoted to read-only', async () => (await app.call('POST', '/v2/team/carol/blobs/uploads/', { auth: c1 })).status === 403);

    // A new password replaces the old one.
    assert.equal((await app.cli(['user', 'add', carol.name], `${carol.pass2}\n`)).code, 0);
    const c2 = basic(carol.name, carol.pass2);
    await within(5_000, 'new password accepted', async () => (await app.call('GET', '/v2/', { auth: c2 })).status === 200);
    assertError(await app.call('GET', '/v2/', { auth: c1 }), 401, 'UNAUTHORIZED');

    assert.equal((await app.cli(['user', 'rm', carol.name])).code, 0);
    const removed = await within(6_000, 'removed user refused', async () => (await app.call('GET', '/v2/', { auth: c2 })).status === 401);
    assert.ok(removed < 4_000, `took ${removed} ms`);
    t.diagnostic(`user changes effective after: add ${added} ms, toggle ${promoted} ms, rm ${removed} ms`);
    // The others are unaffected.
    assert.equal((await app.call('GET', '/v2/', { auth: app.reader.auth })).status, 200);
    const ls = await app.cli(['user', 'ls']);
    assert.equal(ls.stdout, 'admin\tadmin\nreader\tread-only\n');
  });

  it('an unknown upstream host prefix is 404 NAME_UNKNOWN at once (no connection attempt)', async () => {
    for (const path of ['/v2/unknown.example/x/manifests/latest', '/v2/unknown.example/x/blobs/sha256:' + '0'.repeat(64),
      '/v2/10.255.255.1:5000/team/app/manifests/v1', '/v2/localhost/x/tags/list', '/v2/Unknown.Example/x/manifests/latest']) {
      const res = await app.call('GET', path, { auth: app.reader.auth, timeoutMs: 5_000 });
      assertError(res, 404, 'NAME_UNKNOWN', path);
      assert.match(ociError(res).message, /unknown upstream registry/);
      assert.match(ociError(res).message, new RegExp(`caches .*up`));
      // No hang: an attempt to reach such a host would take up to the upstream timeout (30 s).
      assert.ok(res.ms < 2_000, `${path} answered in ${res.ms} ms`);
      // Without credentials: 401 first, whatever the path.
      assertError(await app.call('GET', path), 401, 'UNAUTHORIZED', path);
    }
  });

  it('path tricks are 400 NAME_INVALID for users and 401 for everyone else; none reaches a worker', async () => {
    const tricks = [
      '/v2/..', '/v2/../v2/_catalog', '/v2/team/../team/app/manifests/v1', '/v2/team/./app/manifests/v1', '/v2/team/app/manifests/..',
      '/v2/up/..', '/v2/up/../team/app/manifests/v1', '/v2/up/..%2f..%2fteam/app/manifests/v1', '/v2/up/%2e%2e/team/app/manifests/v1',
      '/v2/%2E%2E/team/app/manifests/v1', '/v2/.%2e/_catalog', '/v2/team%2fapp/manifests/v1', '/v2/team%2Fapp/manifests/v1',
      '/v2/up%2fmirror/tool/manifests/1.0', '/v2//team/app/manifests/v1', '/v2/team//app/manifests/v1', '/v2/up//mirror/tool/manifests/1.0',
      '/v2/team\\app/manifests/v1', '/v2/team%5capp/manifests/v1', '/v2/team%00/app/manifests/v1',
      '/v2/team/app/blobs/uploads/..%2f..%2f..%2fetc%2fpasswd', `/v2/${'unknown.example'}/..%2f..%2fteam/app/manifests/v1`,
    ];
    const mark = (await app.accessLog()).length;
    for (const path of tricks) {
      for (const user of [app.reader, app.admin]) {
        const res = await app.call('GET', path, { auth: user.auth });
        assertError(res, 400, 'NAME_INVALID', `${user.name} GET ${path}`);
      }
      assertError(await app.call('DELETE', path, { auth: app.admin.auth }), 400, 'NAME_INVALID', `DELETE ${path}`);
      const anonymous = await app.call('GET', path);
      assertError(anonymous, 401, 'UNAUTHORIZED', `anonymous ${path}`);
    }
    // /healthz and /metrics are matched exactly: a path through them is a normal, authenticated request.
    for (const path of ['/healthz/../v2/_catalog', '/metrics/../v2/team/app/manifests/v1', '/healthz/', '/metrics%2f..%2fv2/_catalog']) {
      assertError(await app.call('GET', path), 401, 'UNAUTHORIZED', path);
    }
    // An encoded letter is no trick but no valid name either: the worker refuses it the same way.
    assertError(await app.call('GET', '/v2/%75p/mirror/tool/manifests/1.0', { auth: app.reader.auth }), 400, 'NAME_INVALID');

    // The gateway refused them itself: logged without an upstream, repository or worker.
    let entries: ReturnType<typeof parseAccessLogLine>[] = [];
    await within(3_000, 'access log written', async () => {
      entries = (await app.accessLog()).slice(mark).map(parseAccessLogLine);
      return entries.filter((e) => e?.status === 400).length >= tricks.length * 3;
    });
    for (const e of entries.filter((x) => x?.status === 400 && tricks.includes(x.path))) {
      assert.equal(e!.upstream, '-');
      assert.equal(e!.repository, undefined);
    }
    // Still serving the real thing.
    assert.equal((await app.call('HEAD', '/v2/team/app/manifests/v1', { auth: app.reader.auth, headers: { accept: MANIFEST_ACCEPT } })).status, 200);
  });

  it('no password (right or wrong) appears in the access log or the PM2 output', async () => {
    const secrets = [app.admin.pass, app.reader.pass, carol.pass, carol.pass2, WRONG];
    const encoded = [app.admin.auth, app.reader.auth, basic('admin', WRONG)].map((h) => h.slice(6));
    const logs = join(app.pm2Home, 'logs');
    const pm2Files = await readdir(logs).catch(() => [] as string[]);
    const texts: Array<[string, string]> = [
      ['access log', (await app.accessLog()).join('\n')],
      ['stevedore start output', app.output()],
      ...(await Promise.all(pm2Files.map(async (f) => [f, await readFile(join(logs, f), 'utf8')] as [string, string]))),
    ];
    assert.ok(texts[0]![1].includes('"user":"reader"') && texts[0]![1].includes('"user":"admin"'), 'user names are logged');
    for (const [name, text] of texts) {
      for (const secret of [...secrets, ...encoded]) assert.ok(!text.includes(secret), `a password leaked into ${name}`);
    }
  });

  it('stops cleanly', async () => {
    stopped = await app.stop();
    assert.deepEqual(stopped.survivors, []);
    assert.equal(stopped.code, 0);
  });
});
