import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { ConfigError, isSharedStore, loadApplianceConfig, loadCleanerConfig, loadExportConfig, loadLoggerConfig, loadRegistryConfig, loadSeedConfig, parseBoolean, parseListen, storageLocationOf } from './config.js';

/** Asserts a ConfigError whose message names both the flag and the variable (and matches `also`). */
function configError(flag: string, env: string, also?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    assert.ok(err.message.includes(`--${flag}`), `message names --${flag}: ${err.message}`);
    assert.ok(err.message.includes(env), `message names ${env}: ${err.message}`);
    if (also) assert.match(err.message, also);
    return true;
  };
}

test('defaults with no flags and no variables', () => {
  const config = loadRegistryConfig([], {});
  assert.deepEqual(config.listen, { kind: 'tcp', host: '127.0.0.1', port: 5000 });
  assert.equal(config.root, '/var/lib/registry');
  assert.equal(config.readOnly, false);
  assert.equal(config.logLevel, 'info');
  assert.equal(config.uploadTtl, 24 * 3_600_000);
  assert.equal(config.manifestMaxSize, 4 * 1024 * 1024);
  assert.equal(config.upstream, undefined);
});

test('a flag beats its variable, which beats the default', () => {
  const env = { STEVEDORE_MANIFEST_MAX_SIZE: '2M', STEVEDORE_LISTEN: '127.0.0.1:6000', STEVEDORE_ROOT: '/srv/env', LOG_LEVEL: 'warn', STEVEDORE_UPLOAD_TTL: '2h' };
  const fromEnv = loadRegistryConfig([], env);
  assert.equal(fromEnv.manifestMaxSize, 2 * 1024 * 1024);
  assert.deepEqual(fromEnv.listen, { kind: 'tcp', host: '127.0.0.1', port: 6000 });
  assert.equal(fromEnv.root, '/srv/env');
  assert.equal(fromEnv.logLevel, 'warn');
  assert.equal(fromEnv.uploadTtl, 2 * 3_600_000);

  const fromFlags = loadRegistryConfig(['--manifest-max-size', '1M', '--listen=127.0.0.1:7000', '--root', '/srv/flag', '--log-level', 'DEBUG', '--upload-ttl=30m'], env);
  assert.equal(fromFlags.manifestMaxSize, 1024 * 1024);
  assert.deepEqual(fromFlags.listen, { kind: 'tcp', host: '127.0.0.1', port: 7000 });
  assert.equal(fromFlags.root, '/srv/flag');
  assert.equal(fromFlags.logLevel, 'debug');
  assert.equal(fromFlags.uploadTtl, 30 * 60_000);
});

test('a flag given twice: the last one wins', () => {
  assert.equal(loadRegistryConfig(['--root', '/a', '--root', '/b'], {}).root, '/b');
});

test('a flag wins even when its variable holds a bad value', () => {
  assert.equal(loadRegistryConfig(['--manifest-max-size', '1K'], { STEVEDORE_MANIFEST_MAX_SIZE: 'abc' }).manifestMaxSize, 1024);
});

test('--read-only is a bare flag; its variable takes true/false words', () => {
  assert.equal(loadRegistryConfig(['--read-only'], {}).readOnly, true);
  assert.equal(loadRegistryConfig(['--read-only', '--root', '/x'], {}).root, '/x');
  assert.equal(loadRegistryConfig(['--read-only=false'], { STEVEDORE_READ_ONLY: 'true' }).readOnly, false);
  for (const word of ['1', 'true', 'YES', 'on']) assert.equal(loadRegistryConfig([], { STEVEDORE_READ_ONLY: word }).readOnly, true, word);
  for (const word of ['0', 'false', 'No', 'off', '']) assert.equal(loadRegistryConfig([], { STEVEDORE_READ_ONLY: word }).readOnly, false, word);
  assert.throws(() => loadRegistryConfig([], { STEVEDORE_READ_ONLY: 'maybe' }), configError('read-only', 'STEVEDORE_READ_ONLY', /expected true or false/));
  assert.throws(() => parseBoolean('2'), /expected true or false/);
});

test('a bad value throws ConfigError naming the flag and the variable, and which one was used', () => {
  assert.throws(() => loadRegistryConfig([], { STEVEDORE_MANIFEST_MAX_SIZE: 'abc' }),
    configError('manifest-max-size', 'STEVEDORE_MANIFEST_MAX_SIZE', /^invalid STEVEDORE_MANIFEST_MAX_SIZE /));
  assert.throws(() => loadRegistryConfig(['--manifest-max-size', 'abc'], {}),
    configError('manifest-max-size', 'STEVEDORE_MANIFEST_MAX_SIZE', /^invalid --manifest-max-size /));
  assert.throws(() => loadRegistryConfig(['--manifest-max-size', '0'], {}), configError('manifest-max-size', 'STEVEDORE_MANIFEST_MAX_SIZE', /greater than zero/));
  assert.throws(() => loadRegistryConfig(['--listen', 'nope'], {}), configError('listen', 'STEVEDORE_LISTEN', /HOST:PORT/));
  assert.throws(() => loadRegistryConfig([], { STEVEDORE_LISTEN: '127.0.0.1:99999' }), configError('listen', 'STEVEDORE_LISTEN', /out of range/));
  assert.throws(() => loadRegistryConfig(['--upload-ttl', '0s'], {}), configError('upload-ttl', 'STEVEDORE_UPLOAD_TTL', /greater than zero/));
  assert.throws(() => loadRegistryConfig(['--upload-ttl', 'soon'], {}), configError('upload-ttl', 'STEVEDORE_UPLOAD_TTL', /invalid duration/));
  assert.throws(() => loadRegistryConfig(['--log-level', 'loud'], {}), configError('log-level', 'LOG_LEVEL', /expected one of fatal, error/));
  assert.throws(() => loadRegistryConfig(['--root', ''], {}), configError('root', 'STEVEDORE_ROOT', /directory path/));
  assert.throws(() => loadRegistryConfig([], { STEVEDORE_ROOT: 'a\0b' }), configError('root', 'STEVEDORE_ROOT', /directory path/));
});

test('unknown options, stray arguments and missing values are ConfigErrors', () => {
  assert.throws(() => loadRegistryConfig(['--bogus'], {}), (err: unknown) => err instanceof ConfigError && /unknown option --bogus/.test(err.message) && /--listen/.test(err.message));
  assert.throws(() => loadRegistryConfig(['registry'], {}), (err: unknown) => err instanceof ConfigError && /unexpected argument "registry"/.test(err.message));
  assert.throws(() => loadRegistryConfig(['-r'], {}), (err: unknown) => err instanceof ConfigError && /unexpected argument/.test(err.message));
  assert.throws(() => loadRegistryConfig(['--root'], {}), (err: unknown) => err instanceof ConfigError && /--root needs a value/.test(err.message));
  // A forgotten value is not silently the next flag.
  assert.throws(() => loadRegistryConfig(['--root', '--read-only'], {}), (err: unknown) => err instanceof ConfigError && /--root needs a value/.test(err.message));
  assert.equal(loadRegistryConfig(['--root=--odd'], {}).root, resolve('--odd'));
});

test('relative roots are resolved against the working directory', () => {
  assert.equal(loadRegistryConfig(['--root', 'data'], {}).root, resolve('data'));
});

test('parseListen: TCP addresses', () => {
  assert.deepEqual(parseListen('127.0.0.1:5000'), { kind: 'tcp', host: '127.0.0.1', port: 5000 });
  assert.deepEqual(parseListen('localhost:0'), { kind: 'tcp', host: 'localhost', port: 0 });
  assert.deepEqual(parseListen('0.0.0.0:65535'), { kind: 'tcp', host: '0.0.0.0', port: 65535 });
  assert.deepEqual(parseListen(':8080'), { kind: 'tcp', host: '127.0.0.1', port: 8080 });
  assert.deepEqual(parseListen('[::1]:5000'), { kind: 'tcp', host: '::1', port: 5000 });
  assert.deepEqual(parseListen(' [::]:5000 '), { kind: 'tcp', host: '::', port: 5000 });
  for (const bad of ['nope', '', '5000', '127.0.0.1', '127.0.0.1:', '127.0.0.1:abc', '::1:5000', '[::1]', 'host:123456', 'a:b:1', '[zz]:1']) {
    assert.throws(() => parseListen(bad), /expected HOST:PORT/, JSON.stringify(bad));
  }
  assert.throws(() => parseListen('127.0.0.1:65536'), /out of range/);
});

test('parseListen: unix socket paths', () => {
  assert.deepEqual(parseListen('/run/stevedore/hosted.sock'), { kind: 'socket', path: '/run/stevedore/hosted.sock' });
  assert.deepEqual(parseListen('/tmp/x'), { kind: 'socket', path: '/tmp/x' });
  assert.deepEqual(parseListen('unix:/tmp/x.sock'), { kind: 'socket', path: '/tmp/x.sock' });
  assert.deepEqual(parseListen('unix:rel/x'), { kind: 'socket', path: resolve('rel/x') });
  assert.deepEqual(parseListen('./w.sock'), { kind: 'socket', path: resolve('w.sock') });
  assert.deepEqual(parseListen('worker.sock'), { kind: 'socket', path: resolve('worker.sock') });
  // `unix:` alone would be the working directory.
  assert.throws(() => parseListen('unix:'), /socket path/);
  assert.throws(() => parseListen('unix:  '), /socket path/);
});

test('storage: --storage/STEVEDORE_STORAGE picks the store; without it the store is --root on disk', () => {
  const plain = loadRegistryConfig(['--root', '/srv/data'], {});
  assert.deepEqual(storageLocationOf(plain, plain.root), { kind: 'filesystem', root: '/srv/data' });
  const s3 = loadRegistryConfig(['--root', '/srv/state'], {
    STEVEDORE_STORAGE: 's3://team-cache/prod/stevedore', AWS_ENDPOINT_URL: 'https://rgw.lan:7480/', AWS_REGION: 'eu-west-1',
    STEVEDORE_S3_FORCE_PATH_STYLE: 'false', STEVEDORE_S3_PART_SIZE: '16MiB',
  });
  assert.deepEqual(storageLocationOf(s3, s3.root), { kind: 's3', bucket: 'team-cache', prefix: 'prod/stevedore' });
  assert.equal(s3.s3Endpoint, 'https://rgw.lan:7480');
  assert.equal(s3.s3Region, 'eu-west-1');
  assert.equal(s3.s3ForcePathStyle, false);
  assert.equal(s3.s3PartSize, 16 * 1024 * 1024);
  assert.equal(s3.root, '/srv/state', '--root stays the local state directory');
  for (const load of [loadApplianceConfig, loadCleanerConfig, loadLoggerConfig]) {
    assert.deepEqual(load(['--storage', 's3://b-1'], {}).storage, { kind: 's3', bucket: 'b-1', prefix: '' });
  }
});

test('shared store: off unless set, on a directory or S3', () => {
  assert.equal(isSharedStore(loadRegistryConfig([], {})), false);
  assert.equal(isSharedStore(loadRegistryConfig(['--storage', 's3://bucket/p'], {})), false);
  assert.equal(isSharedStore(loadRegistryConfig(['--storage', 's3://bucket/p'], { STEVEDORE_SHARED_STORE: 'true' })), true);
  assert.equal(isSharedStore(loadRegistryConfig(['--storage', 's3://bucket/p'], { STEVEDORE_SHARED_STORE: 'false' })), false);
  assert.equal(isSharedStore(loadRegistryConfig(['--shared-store', 'true'], {})), true);
  assert.equal(isSharedStore(loadApplianceConfig([], { STEVEDORE_STORAGE: 's3://bucket', STEVEDORE_SHARED_STORE: 'off' })), false);
});

test('storage: bad values name the option and its variable', () => {
  assert.throws(() => loadRegistryConfig([], { STEVEDORE_STORAGE: 's3://UPPER' }), configError('storage', 'STEVEDORE_STORAGE', /bucket/));
  assert.throws(() => loadRegistryConfig([], { STEVEDORE_STORAGE: 'gs://bucket' }), configError('storage', 'STEVEDORE_STORAGE', /unsupported/));
  assert.throws(() => loadRegistryConfig(['--storage', 's3://bucket/a/../b'], {}), configError('storage', 'STEVEDORE_STORAGE', /prefix/));
  assert.throws(() => loadRegistryConfig([], { AWS_ENDPOINT_URL: 'rgw.lan:7480' }), configError('s3-endpoint', 'AWS_ENDPOINT_URL', /http/));
  assert.throws(() => loadRegistryConfig([], { STEVEDORE_S3_PART_SIZE: '1MiB' }), configError('s3-part-size', 'STEVEDORE_S3_PART_SIZE', /5MiB/));
  assert.throws(() => loadRegistryConfig([], { STEVEDORE_S3_FORCE_PATH_STYLE: 'maybe' }), configError('s3-force-path-style', 'STEVEDORE_S3_FORCE_PATH_STYLE'));
});

test('storage: the air-gap commands take --store DIR or s3://, and --storage wins', () => {
  assert.deepEqual(loadExportConfig(['--store', '/srv/store', '--out', '/tmp/x.tar'], {}).store, { kind: 'filesystem', root: '/srv/store' });
  assert.deepEqual(loadExportConfig(['--store', 's3://b-2/p', '--out', '/tmp/x.tar'], {}).store, { kind: 's3', bucket: 'b-2', prefix: 'p' });
  assert.deepEqual(loadSeedConfig(['--from', '/tmp/in', '--store', '/srv/store'], { STEVEDORE_STORAGE: 's3://b-3' }).store, { kind: 's3', bucket: 'b-3', prefix: '' });
  assert.throws(() => loadExportConfig(['--out', '/tmp/x.tar'], {}), configError('store', 'STEVEDORE_ROOT'));
});

test('peer settings of appliances sharing a store: URL, token, lease time validated', () => {
  const config = loadRegistryConfig([], { STEVEDORE_PEER_URL: 'https://10.0.0.5:8443/', STEVEDORE_PEER_TOKEN: 'a'.repeat(32), STEVEDORE_FILL_LEASE_TIME: '20s' });
  assert.equal(config.peerUrl, 'https://10.0.0.5:8443');
  assert.equal(config.peerToken, 'a'.repeat(32));
  assert.equal(config.fillLeaseTime, 20_000);
  assert.equal(loadRegistryConfig([], {}).fillLeaseTime, 15_000);
  assert.throws(() => loadRegistryConfig([], { STEVEDORE_PEER_URL: 'ftp://x' }), configError('peer-url', 'STEVEDORE_PEER_URL', /http\(s\):\/\/ URL/));
  assert.throws(() => loadRegistryConfig([], { STEVEDORE_PEER_TOKEN: 'short' }), configError('peer-token', 'STEVEDORE_PEER_TOKEN', /at least 16/));
  assert.throws(() => loadRegistryConfig([], { STEVEDORE_FILL_LEASE_TIME: '200ms' }), configError('fill-lease-time', 'STEVEDORE_FILL_LEASE_TIME', /at least 1s/));
});
