import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { AppliancePlan } from '../../../lib/appliance.js';
import { RegistryError } from '../../../lib/oci/errors.js';
import { addPrefix, isHostLike, prefixIndex, routeRequest, type GatewayRoute } from './router.js';

const plan: AppliancePlan = {
  hosted: { name: 'registry-hosted', kind: 'hosted', prefixes: [], socketPath: '/run/s/hosted.sock' },
  proxies: [
    { name: 'registry-docker.io', kind: 'proxy', upstream: 'docker.io', upstreamUrl: 'https://registry-1.docker.io/', prefixes: ['docker.io', 'hub'], socketPath: '/run/s/docker.io.sock' },
    { name: 'registry-127.0.0.1_5000', kind: 'proxy', upstream: '127.0.0.1:5000', upstreamUrl: 'http://127.0.0.1:5000/', prefixes: ['127.0.0.1:5000', 'Up'], socketPath: '/run/s/127.0.0.1_5000.sock' },
  ],
};
const index = prefixIndex(plan);
const route = (url: string) => routeRequest(url, plan, index);

function worker(url: string): Extract<GatewayRoute, { kind: 'worker' }> {
  const r = route(url);
  assert.equal(r.kind, 'worker', url);
  return r as Extract<GatewayRoute, { kind: 'worker' }>;
}

function throwsCode(url: string, code: string, status: number): void {
  assert.throws(() => route(url), (err: unknown) => err instanceof RegistryError && err.code === code && err.status === status, url);
}

test('isHostLike: Docker\'s rule for a registry host as first path component', () => {
  for (const s of ['docker.io', 'quay.io', '127.0.0.1:5000', 'registry.lan:5000', 'localhost', 'localhost:5000', 'a.b']) assert.equal(isHostLike(s), true, s);
  for (const s of ['library', 'team', 'my-team', 'up', 'a_b', '', '_catalog']) assert.equal(isHostLike(s), false, s);
});

test('addPrefix re-prefixes relative /v2/ Location values and every <...> of a Link header', () => {
  assert.equal(addPrefix('/v2/a/b/blobs/uploads/123?_state=x', 'up'), '/v2/up/a/b/blobs/uploads/123?_state=x');
  assert.equal(addPrefix('/v2/a/blobs/sha256:00', '127.0.0.1:5000'), '/v2/127.0.0.1:5000/a/blobs/sha256:00');
  assert.equal(addPrefix('</v2/a/tags/list?n=1&last=x>; rel="next"', 'hub'), '</v2/hub/a/tags/list?n=1&last=x>; rel="next"');
  assert.equal(addPrefix('</v2/_catalog?n=1&last=a>; rel="next", </v2/_catalog?n=1>; rel="first"', 'up'),
    '</v2/up/_catalog?n=1&last=a>; rel="next", </v2/up/_catalog?n=1>; rel="first"');
  // Absolute URLs and other paths are left alone; /v2/ inside a path is not a prefix.
  assert.equal(addPrefix('https://elsewhere.example/v2/a/blobs/x', 'up'), 'https://elsewhere.example/v2/a/blobs/x');
  assert.equal(addPrefix('/other/v2/x', 'up'), '/other/v2/x');
});

test('prefixIndex maps every host and alias, lower-cased, to its worker', () => {
  assert.deepEqual([...index.keys()].sort(), ['127.0.0.1:5000', 'docker.io', 'hub', 'up']);
  assert.equal(index.get('up')!.name, 'registry-127.0.0.1_5000');
  assert.equal(index.get('hub')!.name, 'registry-docker.io');
});

test('routeRequest: /v2/ is the gateway\'s ping; no prefix is the hosted registry', () => {
  assert.deepEqual(route('/v2/'), { kind: 'ping' });
  assert.deepEqual(route('/v2'), { kind: 'ping' });
  assert.deepEqual(route('/v2/?x=1'), { kind: 'ping' });
  const r = worker('/v2/team/app/manifests/v1');
  assert.deepEqual(r, {
    kind: 'worker', worker: plan.hosted, url: '/v2/team/app/manifests/v1', prefix: undefined,
    repository: 'team/app', reference: 'v1', resource: 'manifest',
  });
  assert.equal(worker('/v2/_catalog?n=10').worker, plan.hosted);
  assert.equal(worker('/v2/_catalog?n=10').resource, 'catalog');
  assert.equal(worker('/v2/_catalog?n=10').url, '/v2/_catalog?n=10');
});

test('routeRequest: a host or alias prefix (any case) goes to that upstream\'s worker, stripped, query kept', () => {
  for (const prefix of ['up', 'UP', 'Up', '127.0.0.1:5000']) {
    const r = worker(`/v2/${prefix}/library/alpine/manifests/3.19?foo=bar&n=1`);
    assert.equal(r.worker.name, 'registry-127.0.0.1_5000');
    assert.equal(r.url, '/v2/library/alpine/manifests/3.19?foo=bar&n=1');
    assert.equal(r.prefix, prefix);
    assert.equal(r.repository, 'library/alpine');
    assert.equal(r.reference, '3.19');
  }
  const hub = worker('/v2/docker.io/library/busybox/blobs/sha256:abc');
  assert.equal(hub.worker.name, 'registry-docker.io');
  assert.equal(hub.url, '/v2/library/busybox/blobs/sha256:abc');
  assert.equal(hub.resource, 'blob');
  assert.equal(hub.reference, 'sha256:abc');
  assert.equal(worker('/v2/hub/x/blobs/uploads/').resource, 'upload');
  assert.equal(worker('/v2/hub/x/tags/list').resource, 'tags');
  assert.equal(worker('/v2/hub/x/tags/list').repository, 'x');
  assert.equal(worker('/v2/hub/x/referrers/sha256:ab').resource, 'referrers');
  assert.equal(worker('/v2/hub/x/referrers/sha256:ab').reference, 'sha256:ab');
  // The prefix alone is that upstream's base endpoint.
  assert.equal(worker('/v2/up/').url, '/v2/');
  assert.equal(worker('/v2/up').url, '/v2/');
  assert.equal(worker('/v2/up/_catalog').url, '/v2/_catalog');
  assert.equal(worker('/v2/up/_catalog').resource, 'catalog');
});

test('routeRequest: ?ns=<host or alias> picks the worker without a prefix; unknown ns is hosted', () => {
  const r = worker('/v2/library/alpine/manifests/3.19?ns=docker.io');
  assert.equal(r.worker.name, 'registry-docker.io');
  assert.equal(r.url, '/v2/library/alpine/manifests/3.19?ns=docker.io');
  assert.equal(r.prefix, undefined);
  assert.equal(worker('/v2/a/manifests/1?ns=127.0.0.1:5000').worker.name, 'registry-127.0.0.1_5000');
  assert.equal(worker('/v2/a/manifests/1?ns=DOCKER.IO').worker.name, 'registry-docker.io');
  assert.equal(worker('/v2/a/manifests/1?ns=quay.io').worker, plan.hosted);
  assert.equal(worker('/v2/a/manifests/1?ns=').worker, plan.hosted);
  // A prefix wins over ns.
  assert.equal(worker('/v2/up/a/manifests/1?ns=docker.io').worker.name, 'registry-127.0.0.1_5000');
});

test('routeRequest: an unknown host prefix is 404 NAME_UNKNOWN naming what is cached', () => {
  for (const url of ['/v2/quay.io/x/manifests/1', '/v2/unknown.example/x/manifests/latest', '/v2/localhost/x/tags/list', '/v2/127.0.0.1:5001/a/manifests/1']) {
    throwsCode(url, 'NAME_UNKNOWN', 404);
  }
  try {
    route('/v2/quay.io/x/manifests/1');
  } catch (err) {
    assert.match((err as Error).message, /unknown upstream registry "quay\.io": this appliance caches 127\.0\.0\.1:5000, docker\.io, hub, up/);
  }
  // Not a registry path at all.
  for (const url of ['/', '/v1/', '/v2x/a', '/healthz/x']) throwsCode(url, 'NAME_UNKNOWN', 404);
});

test('routeRequest: dot segments, encoded separators, backslashes, NUL and empty segments are 400 NAME_INVALID', () => {
  for (const url of [
    '/v2/..', '/v2/../etc/passwd', '/v2/a/../b/manifests/1', '/v2/a/./b/manifests/1', '/v2/a/manifests/..', '/v2/a/manifests/.',
    '/v2/up/../team/app/manifests/1', '/v2/up/..%2f..%2fteam/manifests/1', '/v2/%2e%2e/a/manifests/1', '/v2/%2E%2e/a/manifests/1',
    '/v2/a%2fb/manifests/1', '/v2/a%2Fb/manifests/1', '/v2/a%5cb/manifests/1', '/v2/a\\b/manifests/1', '/v2/a%00/manifests/1',
    '/v2//a/manifests/1', '/v2/a//b/manifests/1', '/v2/up//a/manifests/1', '//v2/a/manifests/1', '/v2/quay.io/..%2fx/manifests/1',
  ]) {
    throwsCode(url, 'NAME_INVALID', 400);
  }
  // The query is not part of the path check.
  assert.equal(worker('/v2/a/manifests/1?x=../..%2f').url, '/v2/a/manifests/1?x=../..%2f');
});

test('routeRequest: a malformed worker path is forwarded (the worker answers it) with less log detail', () => {
  const r = worker('/v2/a/b');
  assert.equal(r.worker, plan.hosted);
  assert.equal(r.resource, 'other');
  assert.equal(r.repository, undefined);
  const upper = worker('/v2/Team/app/manifests/1');
  assert.equal(upper.resource, 'other');
  assert.equal(upper.url, '/v2/Team/app/manifests/1');
});

test('routeRequest: a worker\'s internal status path (/_stevedore/status) is never forwarded, however written', () => {
  throwsCode('/_stevedore/status', 'NAME_UNKNOWN', 404);
  for (const url of ['/v2/../_stevedore/status', '/v2/%2e%2e/_stevedore/status', '/v2/hub/../../_stevedore/status', '/v2//_stevedore/status', '/v2/%2F_stevedore/status']) throwsCode(url, 'NAME_INVALID', 400);
  // Anything else under /v2/ reaches a worker as a /v2/ path: its registry API, never the status route.
  for (const url of ['/v2/_stevedore/status', '/v2/hub/_stevedore/status', '/v2/_catalog?x=/_stevedore/status']) assert.ok(worker(url).url.startsWith('/v2/'), url);
});
