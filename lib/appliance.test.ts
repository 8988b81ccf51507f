import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parseAliases, planAppliance, readPullSecret } from './appliance.js';
import { ConfigError, loadApplianceConfig } from './config.js';
import { buildEcosystem } from './ecosystem.js';
import { parseAuths } from './upstreams.js';

let dir: string;
before(async () => { dir = await mkdtemp(join(tmpdir(), 'appliance-plan-')); });
after(async () => { await rm(dir, { recursive: true, force: true }); });

const AUTHS = JSON.stringify({
  auths: {
    'https://index.docker.io/v1/': { auth: Buffer.from('hubuser:hubpass').toString('base64') },
    'quay.io': {},
    'http://127.0.0.1:5000': {},
    'cloud.openshift.com': { auth: Buffer.from('x:y').toString('base64') },
    // Another name of Docker Hub: the same worker, not a second one.
    'registry-1.docker.io': {},
    'Registry.LAN:8443': {},
  },
});

function plan(env: Record<string, string>) {
  const config = loadApplianceConfig([], { STEVEDORE_RUN_DIR: '/run/s', PULLSECRETPATH: '/ps.json', ...env });
  return planAppliance(config, parseAuths(AUTHS));
}

test('parseAliases: alias=host pairs, space or comma separated; hosts canonical, aliases lower-cased', () => {
  assert.deepEqual(parseAliases(''), {});
  assert.deepEqual(parseAliases('up=127.0.0.1:5000'), { up: '127.0.0.1:5000' });
  assert.deepEqual(parseAliases(' up=127.0.0.1:5000,  lan=Registry.LAN:8443 hub=https://index.docker.io/v1/ q=quay.io '),
    { up: '127.0.0.1:5000', lan: 'registry.lan:8443', hub: 'docker.io', q: 'quay.io' });
  assert.deepEqual(parseAliases('My-Mirror=quay.io'), { 'my-mirror': 'quay.io' });
  assert.deepEqual(parseAliases('a.b_c-d=quay.io'), { 'a.b_c-d': 'quay.io' });
});

test('parseAliases: malformed pairs, invalid alias names and invalid hosts are errors', () => {
  for (const [raw, message] of [
    ['up', /expected alias=host, got "up"/], ['=quay.io', /expected alias=host/], ['up:127.0.0.1:5000', /expected alias=host/],
    ['bad!=quay.io', /alias "bad!" is not a valid image path segment/], ['-up=quay.io', /not a valid image path segment/],
    ['up-=quay.io', /not a valid image path segment/], ['a..b=quay.io', /not a valid image path segment/],
    ['up=', /invalid upstream/], ['up=ftp://quay.io', /only http and https/], ['up=bad_host!', /invalid upstream/],
  ] as const) {
    assert.throws(() => parseAliases(raw), message, raw);
  }
  // Through the configuration, the error names the variable.
  assert.throws(() => loadApplianceConfig([], { STEVEDORE_UPSTREAM_ALIASES: 'nonsense' }),
    (err: unknown) => err instanceof ConfigError && /STEVEDORE_UPSTREAM_ALIASES/.test(err.message));
});

test('planAppliance: one cache worker per upstream host of the pull secret; cloud.openshift.com ignored by default', () => {
  const p = plan({});
  assert.deepEqual(p.hosted, { name: 'registry-hosted', kind: 'hosted', prefixes: [], socketPath: '/run/s/hosted.sock' });
  assert.deepEqual(p.proxies, [
    { name: 'registry-docker.io', kind: 'proxy', upstream: 'docker.io', upstreamUrl: 'https://registry-1.docker.io/', prefixes: ['docker.io'], socketPath: '/run/s/docker.io.sock' },
    { name: 'registry-quay.io', kind: 'proxy', upstream: 'quay.io', upstreamUrl: 'https://quay.io/', prefixes: ['quay.io'], socketPath: '/run/s/quay.io.sock' },
    { name: 'registry-127.0.0.1_5000', kind: 'proxy', upstream: '127.0.0.1:5000', upstreamUrl: 'http://127.0.0.1:5000/', prefixes: ['127.0.0.1:5000'], socketPath: '/run/s/127.0.0.1_5000.sock' },
    { name: 'registry-registry.lan_8443', kind: 'proxy', upstream: 'registry.lan:8443', upstreamUrl: 'https://registry.lan:8443/', prefixes: ['registry.lan:8443'], socketPath: '/run/s/registry.lan_8443.sock' },
  ]);
});

test('planAppliance: IGNOREREGISTRYLIST (space or comma separated, any case) replaces the default list', () => {
  const p = plan({ IGNOREREGISTRYLIST: 'QUAY.IO, registry.lan:8443' });
  assert.deepEqual(p.proxies.map((w) => w.upstream), ['docker.io', '127.0.0.1:5000', 'cloud.openshift.com']);
  assert.deepEqual(plan({ IGNOREREGISTRYLIST: '' }).proxies.map((w) => w.upstream), ['docker.io', 'quay.io', '127.0.0.1:5000', 'cloud.openshift.com', 'registry.lan:8443']);
  // Compared by canonical host: every name of Docker Hub is docker.io, a URL names its host.
  assert.deepEqual(plan({ IGNOREREGISTRYLIST: 'index.docker.io https://cloud.openshift.com/' }).proxies.map((w) => w.upstream), ['quay.io', '127.0.0.1:5000', 'registry.lan:8443']);
});

test('planAppliance: aliases become extra prefixes of their upstream; an alias of no upstream is an error', () => {
  const p = plan({ STEVEDORE_UPSTREAM_ALIASES: 'up=127.0.0.1:5000 lan=registry.lan:8443 hub=docker.io mirror=127.0.0.1:5000' });
  assert.deepEqual(Object.fromEntries(p.proxies.map((w) => [w.upstream, w.prefixes])), {
    'docker.io': ['docker.io', 'hub'],
    'quay.io': ['quay.io'],
    '127.0.0.1:5000': ['127.0.0.1:5000', 'up', 'mirror'],
    'registry.lan:8443': ['registry.lan:8443', 'lan'],
  });
  assert.throws(() => plan({ STEVEDORE_UPSTREAM_ALIASES: 'gcr=gcr.io' }), /alias gcr names gcr\.io, which is not an upstream in \/ps\.json/);
  // Nor one whose upstream is ignored.
  assert.throws(() => plan({ STEVEDORE_UPSTREAM_ALIASES: 'q=quay.io', IGNOREREGISTRYLIST: 'quay.io' }), /alias q names quay\.io/);
});

test('readPullSecret: an absent file means no upstreams; a malformed one is an error', async () => {
  assert.deepEqual(readPullSecret(join(dir, 'absent.json')), []);
  const bad = join(dir, 'bad.json');
  await writeFile(bad, '{"nope":1}');
  assert.throws(() => readPullSecret(bad), /has no "auths" object/);
  await writeFile(bad, 'not json');
  assert.throws(() => readPullSecret(bad), /is not valid JSON/);
});

test('buildEcosystem: the run dir is made private (0700) even when it exists; a sticky shared dir is refused', async () => {
  const env = (runDir: string): NodeJS.ProcessEnv => ({
    STEVEDORE_RUN_DIR: runDir, STEVEDORE_ROOT: join(dir, 'root'), PULLSECRETPATH: join(dir, 'ps.json'),
  });
  await writeFile(join(dir, 'ps.json'), JSON.stringify({ auths: { 'http://127.0.0.1:5000': {} } }));
  const fresh = join(dir, 'run-fresh');
  const { apps } = buildEcosystem(env(fresh));
  assert.equal((await stat(fresh)).mode & 0o777, 0o700);
  const worker = apps.find((a) => a.name === 'registry-127.0.0.1_5000');
  assert.ok(worker);
  // The gateway and every registry worker get a larger old generation (gatewayNodeArgs, workerNodeArgs);
  // the logger and cleaner no node options.
  for (const a of apps) assert.deepEqual(a.node_args, a.name === 'gateway' || a.name.startsWith('registry-') ? ['--initial-old-space-size=64'] : [], a.name);
  assert.deepEqual(worker.env, {
    STEVEDORE_LISTEN: join(fresh, '127.0.0.1_5000.sock'), STEVEDORE_ROOT: join(dir, 'root'), STEVEDORE_UPSTREAM: 'http://127.0.0.1:5000/',
    STEVEDORE_AUTH_FILE: join(dir, 'ps.json'), STEVEDORE_TAG_TTL: '300000ms', STEVEDORE_READ_ONLY: 'false',
    STEVEDORE_S3_PART_SIZE: String(10 * 1024 * 1024),
    STEVEDORE_S3_REDIRECT: 'false', STEVEDORE_S3_REDIRECT_TTL: '600000ms', STEVEDORE_LOCAL_CACHE_MAXSIZE: String(10 * 1024 ** 3),
    STEVEDORE_FILL_LEASE_TIME: '15000ms',
  });
  assert.equal(apps.find((a) => a.name === 'registry-hosted')?.env.STEVEDORE_LISTEN, join(fresh, 'hosted.sock'));
  assert.equal(apps.find((a) => a.name === 'gateway')?.args[0], 'gateway');

  // As the image creates it: mkdir -p, 0755.
  const existing = join(dir, 'run-existing');
  await mkdir(existing, { mode: 0o755 });
  await chmod(existing, 0o755);
  buildEcosystem(env(existing));
  assert.equal((await stat(existing)).mode & 0o777, 0o700);

  const shared = join(dir, 'shared');
  await mkdir(shared);
  await chmod(shared, 0o1777);
  assert.throws(() => buildEcosystem(env(shared)), /shared \(sticky\) directory/);
  assert.equal((await stat(shared)).mode & 0o7777, 0o1777, 'left as it was');
});

test('buildEcosystem: every service gets the same validated store settings, never the credentials', async () => {
  await writeFile(join(dir, 'ps.json'), JSON.stringify({ auths: { 'http://127.0.0.1:5000': {} } }));
  const { apps } = buildEcosystem({
    STEVEDORE_RUN_DIR: join(dir, 'run-s3'), STEVEDORE_ROOT: join(dir, 'root'), PULLSECRETPATH: join(dir, 'ps.json'),
    STEVEDORE_STORAGE: 's3://stevedore-cache/site-a/', AWS_ENDPOINT_URL: 'http://127.0.0.1:7480/', AWS_REGION: 'eu-west-1',
    AWS_ACCESS_KEY_ID: 'AKIA', AWS_SECRET_ACCESS_KEY: 'secret', STEVEDORE_S3_PART_SIZE: '16MiB', STEVEDORE_SHARED_STORE: 'no',
  });
  assert.deepEqual(apps.map((a) => a.name).sort(), ['cleaner', 'gateway', 'logger', 'registry-127.0.0.1_5000', 'registry-hosted']);
  for (const app of apps) {
    assert.equal(app.env.STEVEDORE_STORAGE, 's3://stevedore-cache/site-a', app.name);
    assert.equal(app.env.AWS_ENDPOINT_URL, 'http://127.0.0.1:7480', app.name);
    assert.equal(app.env.AWS_REGION, 'eu-west-1', app.name);
    assert.equal(app.env.STEVEDORE_S3_PART_SIZE, String(16 * 1024 * 1024), app.name);
    assert.equal(app.env.STEVEDORE_SHARED_STORE, 'false', app.name);
    assert.equal(app.env.STEVEDORE_ROOT, join(dir, 'root'), app.name);
    assert.equal(app.env.AWS_ACCESS_KEY_ID, undefined, app.name);
    assert.equal(app.env.AWS_SECRET_ACCESS_KEY, undefined, app.name);
    // On S3 too the registry workers and the gateway start with a larger old generation (workerNodeArgs).
    assert.deepEqual(app.node_args, app.name.startsWith('registry-') || app.name === 'gateway' ? ['--initial-old-space-size=64'] : [], app.name);
  }
  assert.throws(() => buildEcosystem({ STEVEDORE_RUN_DIR: join(dir, 'run-s3'), PULLSECRETPATH: join(dir, 'ps.json'), STEVEDORE_STORAGE: 's3://Bad_Bucket' }),
    /STEVEDORE_STORAGE.*invalid S3 bucket name/);
});
