import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentialsFor, parseAuths, parseUpstream, readAuthsFile, upstreamRepository } from './upstreams.js';

const b64 = (text: string) => Buffer.from(text).toString('base64');

test('parseUpstream maps every Docker Hub name to its registry endpoint', () => {
  for (const value of ['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com', 'https://index.docker.io/v1/', 'DOCKER.IO', 'http://docker.io']) {
    const endpoint = parseUpstream(value);
    assert.equal(endpoint.url.href, 'https://registry-1.docker.io/', value);
    assert.equal(endpoint.host, 'docker.io', value);
    assert.equal(endpoint.isDockerHub, true, value);
  }
});

test('parseUpstream: a bare host is https; a URL keeps its scheme and port; any path is dropped', () => {
  assert.deepEqual(
    { href: parseUpstream('quay.io').url.href, host: parseUpstream('quay.io').host, hub: parseUpstream('quay.io').isDockerHub },
    { href: 'https://quay.io/', host: 'quay.io', hub: false },
  );
  assert.equal(parseUpstream('registry.lan:5000').url.href, 'https://registry.lan:5000/');
  assert.equal(parseUpstream('registry.lan:5000').host, 'registry.lan:5000');
  const local = parseUpstream('http://127.0.0.1:5000');
  assert.equal(local.url.href, 'http://127.0.0.1:5000/');
  assert.equal(local.url.protocol, 'http:');
  assert.equal(local.host, '127.0.0.1:5000');
  assert.equal(parseUpstream('https://ghcr.io/some/path?x=1').url.href, 'https://ghcr.io/');
  assert.equal(parseUpstream('  Quay.IO  ').host, 'quay.io');
  // The default port is not part of the host (so it names the same cache namespace).
  assert.equal(parseUpstream('https://quay.io:443').host, 'quay.io');
});

test('parseUpstream refuses what is not an http(s) registry host', () => {
  for (const value of ['', 'ftp://quay.io', 'http://', 'not a host', 'https://user@', 'registry_lan:5000']) {
    assert.throws(() => parseUpstream(value), /invalid upstream/, JSON.stringify(value));
  }
});

test('upstreamRepository puts single-segment Docker Hub names under library/, and nothing else', () => {
  const hub = parseUpstream('docker.io');
  assert.equal(upstreamRepository(hub, 'nginx'), 'library/nginx');
  assert.equal(upstreamRepository(hub, 'library/nginx'), 'library/nginx');
  assert.equal(upstreamRepository(hub, 'bitnami/nginx'), 'bitnami/nginx');
  const quay = parseUpstream('quay.io');
  assert.equal(upstreamRepository(quay, 'nginx'), 'nginx');
  assert.equal(upstreamRepository(quay, 'org/app'), 'org/app');
});

test('parseAuths: base64 auth with ":" inside the password, username/password fields, entries without auth', () => {
  const entries = parseAuths(JSON.stringify({
    auths: {
      'quay.io': { auth: b64('robot+ci:pa:ss:word'), email: 'x@example.com' },
      'http://127.0.0.1:5000': { auth: b64('alice:secret') },
      'registry.lan:5001': { username: 'bob', password: 'hunter2' },
      'https://index.docker.io/v1/': {},
      'ghcr.io': { auth: '' },
    },
  }));
  assert.equal(entries.length, 5);
  const [quay, local, lan, hub, ghcr] = entries as [typeof entries[0], typeof entries[0], typeof entries[0], typeof entries[0], typeof entries[0]];
  assert.equal(quay.endpoint.host, 'quay.io');
  assert.deepEqual(quay.credentials, { username: 'robot+ci', password: 'pa:ss:word' });
  assert.equal(local.endpoint.url.href, 'http://127.0.0.1:5000/', 'an http:// key keeps http');
  assert.deepEqual(local.credentials, { username: 'alice', password: 'secret' });
  assert.deepEqual(lan.credentials, { username: 'bob', password: 'hunter2' });
  assert.equal(hub.endpoint.host, 'docker.io');
  assert.equal(hub.credentials, undefined, 'an entry without auth is anonymous');
  assert.equal(ghcr.credentials, undefined, 'an empty auth is anonymous');
  // Entries are matched by canonical host, however the key or --upstream spelled it.
  assert.deepEqual(credentialsFor(entries, parseUpstream('127.0.0.1:5000')), { username: 'alice', password: 'secret' });
  assert.deepEqual(credentialsFor(entries, parseUpstream('https://quay.io/')), quay.credentials);
  assert.equal(credentialsFor(entries, parseUpstream('docker.io')), undefined);
  assert.equal(credentialsFor(entries, parseUpstream('other.example')), undefined);
});

test('parseAuths rejects malformed files with a message naming the source', () => {
  assert.throws(() => parseAuths('{', 'pull-secret.json'), /pull-secret.json is not valid JSON/);
  assert.throws(() => parseAuths('{}', 'pull-secret.json'), /pull-secret.json has no "auths" object/);
  assert.throws(() => parseAuths('{"auths":[]}'), /no "auths" object/);
  assert.throws(() => parseAuths(JSON.stringify({ auths: { 'quay.io': { auth: b64('no-colon') } } })), /"auth" of quay.io is not base64 of user:password/);
  assert.throws(() => parseAuths(JSON.stringify({ auths: { 'quay.io': { auth: b64(':password-only') } } })), /not base64 of user:password/);
  assert.throws(() => parseAuths(JSON.stringify({ auths: { 'ftp://x': {} } })), /invalid upstream/);
});

test('readAuthsFile reads a pull secret from disk', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'upstreams-test-'));
  try {
    const path = join(dir, 'pull-secret.json');
    await writeFile(path, JSON.stringify({ auths: { 'registry.lan:5000': { auth: b64('u:p') } } }));
    const entries = await readAuthsFile(path);
    assert.deepEqual(entries.map((e) => [e.endpoint.host, e.credentials]), [['registry.lan:5000', { username: 'u', password: 'p' }]]);
    await writeFile(path, 'not json');
    await assert.rejects(readAuthsFile(path), new RegExp(`${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is not valid JSON`));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
