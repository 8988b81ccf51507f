import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { buildImage, writeOciLayout } from './helpers/oci-image.js';
import { startDistribution, tempDir, type RunningProcess } from './helpers/processes.js';
import { startTokenServer, type TokenServer } from './helpers/token-server.js';

/** Proves the test token issuer against the real CNCF distribution 2.8 (`docker-registry`) with `auth.token`. */

const execFileP = promisify(execFile);
const sha256 = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;
const basic = (user: string, pass: string) => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;

async function getToken(ts: TokenServer, scopes: string[], auth?: string): Promise<Response> {
  const url = new URL(ts.realm);
  url.searchParams.set('service', ts.service);
  for (const s of scopes) url.searchParams.append('scope', s);
  return fetch(url, auth ? { headers: { authorization: auth } } : {});
}

async function tokenFor(ts: TokenServer, scopes: string[], auth?: string): Promise<string> {
  const res = await getToken(ts, scopes, auth);
  assert.equal(res.status, 200, await res.clone().text());
  const body = await res.json() as { token: string; access_token: string; expires_in: number; issued_at: string };
  assert.equal(body.token, body.access_token);
  assert.equal(typeof body.expires_in, 'number');
  assert.ok(!Number.isNaN(Date.parse(body.issued_at)));
  return body.token;
}

/** Monolithic blob upload: POST with ?digest= and the body; if the registry answers 202 (distribution 2.8 does), PUT the body to the session. */
async function pushBlob(registry: string, repo: string, data: Buffer, token: string): Promise<{ status: number; path: string; res: Response }> {
  const digest = sha256(data);
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream' };
  const post = await fetch(`${registry}/v2/${repo}/blobs/uploads/?digest=${digest}`, { method: 'POST', headers, body: data });
  if (post.status !== 202) return { status: post.status, path: 'post', res: post };
  await post.arrayBuffer();
  const location = new URL(post.headers.get('location')!, registry);
  location.searchParams.set('digest', digest);
  const put = await fetch(location, { method: 'PUT', headers, body: data });
  return { status: put.status, path: 'post+put', res: put };
}

describe('token server with real docker-registry (x5c chain)', () => {
  let ts: TokenServer;
  let registry: RunningProcess;
  const cleanup: string[] = [];

  before(async () => {
    ts = await startTokenServer({ users: { alice: 's3cret' } });
    registry = await startDistribution({ token: ts.distributionConfig });
  });
  after(async () => {
    await registry?.stop();
    await ts?.stop();
    for (const dir of cleanup) await rm(dir, { recursive: true, force: true });
  });

  it('challenges anonymous /v2/ with a Bearer realm and service', async () => {
    const res = await fetch(`${registry.url}/v2/`);
    assert.equal(res.status, 401);
    assert.equal(res.headers.get('www-authenticate'), `Bearer realm="${ts.realm}",service="${ts.service}"`);
  });

  it('issues a push token that lets a blob be pushed and read back', async () => {
    const token = await tokenFor(ts, ['repository:x/y:pull,push'], basic('alice', 's3cret'));
    const { header, claims } = ts.decode(token);
    assert.equal(header.alg, 'RS256');
    assert.ok(Array.isArray(header.x5c));
    assert.equal(claims.iss, ts.issuer);
    assert.equal(claims.aud, ts.service);
    assert.equal(claims.sub, 'alice');
    assert.deepEqual(claims.access, [{ type: 'repository', name: 'x/y', actions: ['pull', 'push'] }]);

    const res = await fetch(`${registry.url}/v2/`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(res.status, 200);

    const data = randomBytes(2048);
    const pushed = await pushBlob(registry.url, 'x/y', data, token);
    assert.equal(pushed.status, 201, `${pushed.path}: ${await pushed.res.text()}`);
    const get = await fetch(`${registry.url}/v2/x/y/blobs/${sha256(data)}`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(get.status, 200);
    assert.deepEqual(Buffer.from(await get.arrayBuffer()), data);

    const last = ts.requests.at(-1)!;
    assert.equal(last.user, 'alice');
    assert.equal(last.scope, 'repository:x/y:pull,push');
    assert.equal(last.service, ts.service);
  });

  it('refuses wrong credentials and anonymous requests with 401', async () => {
    assert.equal((await getToken(ts, ['repository:x/y:pull'], basic('alice', 'wrong'))).status, 401);
    assert.equal((await getToken(ts, ['repository:x/y:pull'], basic('mallory', 's3cret'))).status, 401);
    const anon = await getToken(ts, ['repository:x/y:pull']);
    assert.equal(anon.status, 401);
    assert.match(anon.headers.get('www-authenticate') ?? '', /^Basic /);
    const rejected = ts.requests.filter((r) => r.status === 401);
    assert.equal(rejected.length, 3);
    assert.ok(rejected.every((r) => r.user === null));
  });

  it('a pull-only token can read but not push', async () => {
    const pushToken = await tokenFor(ts, ['repository:x/ro:pull,push'], basic('alice', 's3cret'));
    const existing = randomBytes(100);
    assert.equal((await pushBlob(registry.url, 'x/ro', existing, pushToken)).status, 201);

    const pullToken = await tokenFor(ts, ['repository:x/ro:pull'], basic('alice', 's3cret'));
    const get = await fetch(`${registry.url}/v2/x/ro/blobs/${sha256(existing)}`, { headers: { authorization: `Bearer ${pullToken}` } });
    assert.equal(get.status, 200);
    await get.arrayBuffer();

    const denied = await pushBlob(registry.url, 'x/ro', randomBytes(100), pullToken);
    assert.ok([401, 403].includes(denied.status), `got ${denied.status}`);
    const challenge = denied.res.headers.get('www-authenticate') ?? '';
    // distribution lists the actions the request needed, in its own order (2.8.2 says "push,pull").
    assert.match(challenge, /scope="repository:x\/ro:(pull,push|push,pull)"/);
    assert.match(challenge, /error="insufficient_scope"/);
    await denied.res.arrayBuffer();

    // A token for another repository does not carry over either.
    const other = await fetch(`${registry.url}/v2/x/y/blobs/${sha256(existing)}`, { headers: { authorization: `Bearer ${pullToken}` } });
    assert.equal(other.status, 401);
    await other.arrayBuffer();
  });

  it('distribution rejects tokens that break its validation rules', async () => {
    const access = [{ type: 'repository', name: 'x/y', actions: ['pull'] }];
    const now = Math.floor(Date.now() / 1000);
    const { privateKey: strangerKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const probe = async (token: string) => {
      const res = await fetch(`${registry.url}/v2/x/y/tags/list`, { headers: { authorization: `Bearer ${token}` } });
      await res.arrayBuffer();
      return res.status;
    };
    // The control: a well-formed minted token works (404: the repository has blobs but no tags).
    assert.equal(await probe(ts.mint({ sub: 'alice', access })), 404);
    const bad: Record<string, string> = {
      'expired beyond the 60 s leeway': ts.mint({ access, claims: { exp: now - 120 } }),
      'not yet valid beyond the leeway': ts.mint({ access, claims: { nbf: now + 3600 } }),
      'no exp claim': ts.mint({ access, claims: { exp: undefined } }),
      'wrong issuer': ts.mint({ access, claims: { iss: 'someone-else' } }),
      'wrong audience': ts.mint({ access, claims: { aud: 'other-service' } }),
      'audience as an array (2.8 wants a string)': ts.mint({ access, claims: { aud: [ts.service] } }),
      'signed by an untrusted key': ts.mint({ access, key: strangerKey }),
      'no x5c/kid/jwk': ts.mint({ access, header: { x5c: undefined } }),
      'garbage': 'not.a.jwt',
    };
    for (const [why, token] of Object.entries(bad)) assert.equal(await probe(token), 401, why);
  });

  it('skopeo pushes an image through the token flow', async () => {
    const dir = await tempDir('token-skopeo-');
    cleanup.push(dir);
    const image = buildImage({ layerSizes: [512, 1024], seed: 'token-server' });
    await writeOciLayout(join(dir, 'layout'), 'v1', [image]);
    const authFile = join(dir, 'auth.json');
    await writeFile(authFile, '{}');
    const before = ts.requests.length;
    await execFileP('skopeo', ['copy', '--insecure-policy', '--dest-creds', 'alice:s3cret', '--dest-tls-verify=false',
      `oci:${join(dir, 'layout')}:v1`, `docker://127.0.0.1:${registry.port}/sk/img:v1`],
    { env: { ...process.env, REGISTRY_AUTH_FILE: authFile }, timeout: 60_000 });

    const made = ts.requests.slice(before);
    assert.ok(made.length >= 1);
    assert.ok(made.every((r) => r.status === 200 && r.user === 'alice'), JSON.stringify(made));
    assert.ok(made.some((r) => r.scopes.includes('repository:sk/img:pull,push')), JSON.stringify(made));

    const token = await tokenFor(ts, ['repository:sk/img:pull'], basic('alice', 's3cret'));
    const res = await fetch(`${registry.url}/v2/sk/img/manifests/v1`, {
      headers: { authorization: `Bearer ${token}`, accept: image.manifest.mediaType },
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('docker-content-digest'), image.manifest.digest);
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), image.manifest.data);

    // And a real client reads it back through the same flow.
    const { stdout } = await execFileP('skopeo', ['inspect', '--raw', '--creds', 'alice:s3cret', '--tls-verify=false',
      `docker://127.0.0.1:${registry.port}/sk/img:v1`], { env: { ...process.env, REGISTRY_AUTH_FILE: authFile }, timeout: 60_000 });
    assert.equal(sha256(Buffer.from(stdout)), image.manifest.digest);
  });
});

describe('token server with anonymous pull and kid-identified keys', () => {
  let ts: TokenServer;
  let registry: RunningProcess;

  before(async () => {
    ts = await startTokenServer({ users: { bob: 'hunter2' }, anonymousPull: true, keyMode: 'kid', service: 'kid-registry', issuer: 'kid-issuer' });
    registry = await startDistribution({ token: ts.distributionConfig });
  });
  after(async () => {
    await registry?.stop();
    await ts?.stop();
  });

  it('anonymous users pull but cannot push; bob pushes', async () => {
    const bobToken = await tokenFor(ts, ['repository:pub/app:pull,push'], basic('bob', 'hunter2'));
    const { header } = ts.decode(bobToken);
    assert.match(String(header.kid), /^([A-Z2-7]{4}:){11}[A-Z2-7]{4}$/);
    assert.equal(header.x5c, undefined);
    const data = randomBytes(300);
    assert.equal((await pushBlob(registry.url, 'pub/app', data, bobToken)).status, 201);

    const anonToken = await tokenFor(ts, ['repository:pub/app:pull,push']);
    assert.deepEqual(ts.decode(anonToken).claims.access, [{ type: 'repository', name: 'pub/app', actions: ['pull'] }]);
    assert.equal(ts.requests.at(-1)!.user, null);
    const get = await fetch(`${registry.url}/v2/pub/app/blobs/${sha256(data)}`, { headers: { authorization: `Bearer ${anonToken}` } });
    assert.equal(get.status, 200);
    assert.deepEqual(Buffer.from(await get.arrayBuffer()), data);
    const denied = await pushBlob(registry.url, 'pub/app', randomBytes(10), anonToken);
    assert.equal(denied.status, 401);
    await denied.res.arrayBuffer();

    // Wrong credentials still fail even though anonymous access is allowed.
    assert.equal((await getToken(ts, ['repository:pub/app:pull'], basic('bob', 'nope'))).status, 401);
  });
});
