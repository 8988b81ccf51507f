/**
 * The Kubernetes manifests in deploy/ against the config module: every variable they set is one the
 * appliance reads (or the AWS SDK's), every value passes its validation, and the files the appliance
 * looks for by default (pull secret, htpasswd, admins, certificate) are where the manifests mount
 * them. Catches a renamed variable, a bad value or a moved mount before an operator's pod does.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { describe, it } from 'node:test';
import { parseAllDocuments } from 'yaml';
import {
  adminsPathOf, APPLIANCE_OPTIONS, CLEANER_OPTIONS, loadApplianceConfig, loadCleanerConfig, loadLoggerConfig, LOGGER_OPTIONS, REGISTRY_OPTIONS,
} from '../lib/config.js';
import { REPO_ROOT } from './helpers/processes.js';

/** What the AWS SDK reads itself (lib/config.ts reads AWS_ENDPOINT_URL and AWS_REGION too). */
const SDK_VARIABLES = new Set(['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE', 'AWS_ROLE_ARN', 'AWS_WEB_IDENTITY_TOKEN_FILE', 'NODE_EXTRA_CA_CERTS']);
const CONFIG_VARIABLES = new Set([APPLIANCE_OPTIONS, REGISTRY_OPTIONS, CLEANER_OPTIONS, LOGGER_OPTIONS].flatMap((specs) => Object.values(specs).map((spec) => spec.env)));
/** Stand-ins for what the cluster fills in: the pod's IP (downward API) and the secrets' values. */
const POD_IP = '10.42.0.7';
const SECRET_VALUES: Record<string, string> = { STEVEDORE_PEER_TOKEN: 'a'.repeat(64), AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE', AWS_SECRET_ACCESS_KEY: 'secret' };
/** Kubernetes' dependent-variable syntax in an env value: `$(POD_IP)`. */
const REFERENCE = /\$\(([A-Z0-9_]+)\)/g;

type Node = Record<string, unknown>;
const asNode = (value: unknown): Node => (value ?? {}) as Node;
const asList = (value: unknown): Node[] => (Array.isArray(value) ? value : []) as Node[];

interface Manifest {
  file: string;
  deployment: Node;
  container: Node;
  /** Secret name -> its keys (stringData / data). */
  secrets: Map<string, string[]>;
}

function readManifest(file: string): Manifest {
  const docs = parseAllDocuments(readFileSync(join(REPO_ROOT, 'deploy', file), 'utf8')).map((doc) => {
    assert.equal(doc.errors.length, 0, `${file}: ${doc.errors.join('; ')}`);
    return asNode(doc.toJS());
  });
  const secrets = new Map(docs.filter((d) => d.kind === 'Secret').map((d) => [String(asNode(d.metadata).name), Object.keys({ ...asNode(d.stringData), ...asNode(d.data) })] as const));
  const deployments = docs.filter((d) => d.kind === 'Deployment');
  assert.equal(deployments.length, 1, `${file}: one Deployment`);
  const deployment = deployments[0]!;
  const containers = asList(asNode(asNode(asNode(deployment.spec).template).spec).containers);
  assert.equal(containers.length, 1, `${file}: one container`);
  return { file, deployment, container: containers[0]!, secrets };
}

/** The container's environment as the kubelet builds it: values, the downward API, envFrom secrets, $(VAR) references. */
function environmentOf(m: Manifest): Record<string, string> {
  const env: Record<string, string> = {};
  for (const from of asList(m.container.envFrom)) {
    const name = String(asNode(from.secretRef).name);
    const keys = m.secrets.get(name);
    assert.ok(keys, `${m.file}: envFrom names secret ${name}, which the file does not define`);
    for (const key of keys) env[key] = SECRET_VALUES[key] ?? 'x';
  }
  for (const entry of asList(m.container.env)) {
    const name = String(entry.name);
    if (entry.valueFrom !== undefined) {
      assert.equal(asNode(asNode(entry.valueFrom).fieldRef).fieldPath, 'status.podIP', `${m.file}: ${name} from an unexpected source`);
      env[name] = POD_IP;
    } else {
      env[name] = String(entry.value).replace(REFERENCE, (_, ref: string) => {
        assert.ok(ref in env, `${m.file}: ${name} refers to $(${ref}), defined after it or not at all`);
        return env[ref]!;
      });
    }
  }
  return env;
}

/** Files the container sees from secret volumes: mountPath (with subPath) or mountPath/<key>. */
function secretFilesOf(m: Manifest): Set<string> {
  const volumes = new Map(asList(asNode(asNode(asNode(m.deployment.spec).template).spec).volumes).map((v) => [String(v.name), v] as const));
  const files = new Set<string>();
  for (const mount of asList(m.container.volumeMounts)) {
    const volume = volumes.get(String(mount.name));
    assert.ok(volume, `${m.file}: mount of undefined volume ${String(mount.name)}`);
    if (volume.secret === undefined) continue;
    const keys = m.secrets.get(String(asNode(volume.secret).secretName)) ?? [];
    if (mount.subPath !== undefined) {
      assert.ok(keys.includes(String(mount.subPath)), `${m.file}: subPath ${String(mount.subPath)} is not a key of its secret`);
      files.add(String(mount.mountPath));
    } else for (const key of keys) files.add(posix.join(String(mount.mountPath), key));
  }
  return files;
}

const manifests = readdirSync(join(REPO_ROOT, 'deploy')).filter((f) => f.endsWith('.yaml')).sort();

describe('deploy/ manifests', () => {
  it('there are manifests to check', () => {
    assert.ok(manifests.includes('stevedore-s3-replicas.yaml'), manifests.join(', '));
  });

  for (const file of manifests) {
    it(`${file}: every variable is one the appliance or the AWS SDK reads, and every value passes validation`, () => {
      const m = readManifest(file);
      const env = environmentOf(m);
      const referenced = new Set(asList(m.container.env).flatMap((e) => [...String(e.value ?? '').matchAll(REFERENCE)].map((x) => x[1]!)));
      for (const name of Object.keys(env)) {
        assert.ok(CONFIG_VARIABLES.has(name) || SDK_VARIABLES.has(name) || referenced.has(name), `${file}: ${name} is read by nothing`);
      }
      // Throws a ConfigError naming the variable on a bad value.
      loadApplianceConfig([], env);
      loadCleanerConfig([], env);
      loadLoggerConfig([], env);
    });

    it(`${file}: the pull secret, users, admins, certificate and data directory are where the appliance looks`, () => {
      const m = readManifest(file);
      const config = loadApplianceConfig([], environmentOf(m));
      const files = secretFilesOf(m);
      assert.ok(files.has(config.pullSecretPath), `${file}: pull secret at ${config.pullSecretPath}; mounted: ${[...files].join(', ')}`);
      if (config.auth === 'htpasswd') {
        assert.ok(files.has(config.htpasswdPath), `${file}: htpasswd at ${config.htpasswdPath}`);
        assert.ok(files.has(adminsPathOf(config)), `${file}: admins at ${adminsPathOf(config)}`);
      }
      const mounts = asList(m.container.volumeMounts).map((v) => String(v.mountPath));
      if (mounts.includes(posix.dirname(config.tlsCertsPath))) assert.ok(files.has(config.tlsCertsPath), `${file}: certificate at ${config.tlsCertsPath}`);
      assert.ok(mounts.includes(config.root), `${file}: a volume at the data directory ${config.root}`);
      if (config.localCacheDir !== undefined) assert.ok(mounts.includes(config.localCacheDir), `${file}: a volume at the local cache ${config.localCacheDir}`);
    });
  }

  it('stevedore-s3-replicas.yaml: several replicas on one bucket, peers configured, ready only while /healthz answers', () => {
    const m = readManifest('stevedore-s3-replicas.yaml');
    const config = loadApplianceConfig([], environmentOf(m));
    assert.ok(Number(asNode(m.deployment.spec).replicas) >= 2, 'replicas');
    assert.equal(config.storage?.kind, 's3');
    assert.equal(config.sharedStore, true);
    assert.equal(config.peerUrl, `https://${POD_IP}:${config.listen.kind === 'tcp' ? config.listen.port : '?'}`);
    assert.ok(config.peerToken, 'peer token from a secret');
    assert.ok(secretFilesOf(m).has(config.tlsCertsPath), 'one certificate for every pod');
    for (const probe of ['readinessProbe', 'livenessProbe']) {
      const get = asNode(asNode(m.container[probe]).httpGet);
      assert.equal(get.path, '/healthz', probe);
      assert.equal(get.scheme, 'HTTPS', probe);
      assert.equal(Number(get.port), config.listen.kind === 'tcp' ? config.listen.port : NaN, probe);
    }
  });
});
