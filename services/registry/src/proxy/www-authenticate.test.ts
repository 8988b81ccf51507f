import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseChallenge } from './www-authenticate.js';

test('parses a Docker Hub style Bearer challenge', () => {
  assert.deepEqual(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"'), {
    scheme: 'bearer',
    params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/nginx:pull' },
  });
});

test('parses a Basic challenge (distribution with htpasswd)', () => {
  assert.deepEqual(parseChallenge('Basic realm="test-realm"'), { scheme: 'basic', params: { realm: 'test-realm' } });
  assert.deepEqual(parseChallenge('Basic'), { scheme: 'basic', params: {} });
});

test('scheme and parameter names are case-insensitive; values keep their case', () => {
  assert.deepEqual(parseChallenge('BEARER Realm="https://Auth.Example/Token", SERVICE="Reg"'), {
    scheme: 'bearer', params: { realm: 'https://Auth.Example/Token', service: 'Reg' },
  });
});

test('a quoted value may hold commas (several actions), spaces and escaped quotes', () => {
  const challenge = parseChallenge('Bearer realm="https://a.example/token", scope="repository:team/app:pull,push repository:x:pull", error="insufficient_scope", note="say \\"hi\\""');
  assert.equal(challenge?.params.scope, 'repository:team/app:pull,push repository:x:pull');
  assert.equal(challenge?.params.error, 'insufficient_scope');
  assert.equal(challenge?.params.note, 'say "hi"');
});

test('unquoted (token) values and spaces around "=" and ","', () => {
  assert.deepEqual(parseChallenge('Bearer realm = https://a.example/token , service=reg.example'), {
    scheme: 'bearer', params: { realm: 'https://a.example/token', service: 'reg.example' },
  });
});

test('only the first challenge counts when a header carries several', () => {
  assert.deepEqual(parseChallenge('Bearer realm="https://a.example/token",service="reg", Basic realm="other"'), {
    scheme: 'bearer', params: { realm: 'https://a.example/token', service: 'reg' },
  });
  assert.deepEqual(parseChallenge('Basic realm="first", Bearer realm="https://a.example/token",scope="s"'), {
    scheme: 'basic', params: { realm: 'first' },
  });
});

test('absent, empty or malformed headers give no challenge', () => {
  assert.equal(parseChallenge(undefined), undefined);
  assert.equal(parseChallenge(''), undefined);
  assert.equal(parseChallenge('   '), undefined);
  assert.equal(parseChallenge('"quoted"'), undefined);
});
