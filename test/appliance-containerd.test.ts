import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseAccessLogLine, type AccessLogEntry } from '../lib/access-log.js';
import { layoutOf, mustRun, sleep, startAppliance, type Appliance } from './helpers/appliance.js';
import { containerdUnavailable, startContainerd, writeHostsToml, type Containerd } from './helpers/containerd.js';
import { buildImage, buildIndex, type BuiltImage } from './helpers/oci-image.js';
import { startDistribution, tempDir, type RunningProcess } from './helpers/processes.js';
import { accessLog as distributionAccessLog } from './helpers/proxy-fixtures.js';

/**
 * containerd 1.6 — the K3s node's client — pulling through the whole appliance (`stevedore start`,
 * TLS, htpasswd users) with hosts.toml mirrors, as K3s configures it from registries.yaml:
 * containerd sends each request to the mirror with `?ns=<registry of the reference>`, and the
 * gateway routes by it. A read-only user pulls; the image digests and the gateway's access log show
 * what was served and by whom.
 */

const unavailable = await containerdUnavailable();

describe('appliance: containerd (ctr, hosts.toml mirrors) pulls through the gateway over TLS as a read-only user', { skip: unavailable }, () => {
  let work: string;
  let upstream: RunningProcess & { root: string };
  let upHost: string;
  let app: Appliance;
  let containerd: Containerd;
  let hostsDir: string;
  const toolImage = buildImage({ layerSizes: [150_000, 3000], seed: 'containerd-upstream-tool' });
  const upAmd = buildImage({ layerSizes: [120_000], seed: 'containerd-upstream-amd64' });
  const upArm = buildImage({ layerSizes: [110_000], architecture: 'arm64', seed: 'containerd-upstream-arm64' });
  const hostedImage = buildImage({ layerSizes: [200_000, 2000], seed: 'containerd-hosted' });
  const hostedAmd = buildImage({ layerSizes: [90_000], seed: 'containerd-hosted-amd64' });
  const hostedArm = buildImage({ layerSizes: [80_000], architecture: 'arm64', seed: 'containerd-hosted-arm64' });

  const skopeo = (args: string[]) => mustRun('skopeo', ['--insecure-policy', ...args], { timeoutMs: 60_000 });
  async function pushTo(registry: 'upstream' | 'appliance', ref: string, images: BuiltImage[]): Promise<void> {
    const layout = await layoutOf(work, images, images.length > 1);
    const dest = registry === 'upstream'
      ? ['--dest-tls-verify=false', `docker://${upHost}/${ref}`]
      : ['--dest-cert-dir', app.certDir, '--dest-creds', app.admin.creds, `docker://${app.host}/${ref}`];
    await skopeo(['copy', '--quiet', '--preserve-digests', ...(images.length > 1 ? ['--all'] : []), ...dest.slice(0, -1), `oci:${layout.dir}:latest`, dest.at(-1)!]);
  }

  /** The gateway's access-log entries of the reader so far (waits for `until` to hold, bounded). */
  async function readerEntries(until: (entries: AccessLogEntry[]) => boolean): Promise<AccessLogEntry[]> {
    let entries: AccessLogEntry[] = [];
    for (let i = 0; i < 50; i++) {
      entries = (await app.accessLog()).map(parseAccessLogLine).filter((e): e is AccessLogEntry => e !== undefined && e.user === app.reader.name);
      if (until(entries)) break;
      await sleep(100);
    }
    return entries;
  }
  const served = (entries: AccessLogEntry[], upstreamName: string, request: string) =>
    entries.some((e) => `${e.method} ${e.path}` === request && e.upstream === upstreamName && e.status === 200);

  /**
   * Asserts the gateway served a containerd pull of `repo:tag` to the reader, routed to `upstreamName`:
   * containerd resolves the tag with a HEAD, then GETs the manifest(s) by digest (`topDigest`, and
   * `image.manifest` when the top is an index), the config and the layers.
   */
  async function assertServedByGateway(upstreamName: string, repo: string, tag: string, topDigest: string, image: BuiltImage): Promise<void> {
    const requests = [
      `HEAD /v2/${repo}/manifests/${tag}`,
      ...new Set([topDigest, image.manifest.digest].map((d) => `GET /v2/${repo}/manifests/${d}`)),
      ...[image.config, ...image.layers].map((b) => `GET /v2/${repo}/blobs/${b.digest}`),
    ];
    const entries = await readerEntries((es) => requests.every((r) => served(es, upstreamName, r)));
    for (const request of requests) {
      assert.ok(served(entries, upstreamName, request), `the gateway served ${request} (upstream ${upstreamName}) to the reader; got:\n${
        entries.filter((e) => e.path.startsWith(`/v2/${repo}/`)).map((e) => `${e.method} ${e.path} ${e.upstream} ${e.status}`).join('\n')}`);
    }
  }

  before(async () => {
    work = await tempDir('appliance-containerd-');
    upstream = await startDistribution();
    upHost = `127.0.0.1:${upstream.port}`;
    app = await startAppliance({ upstreams: [upHost], aliases: `up=${upHost}` });
    containerd = await startContainerd();
    await pushTo('upstream', 'mirror/tool:1.0', [toolImage]);
    await pushTo('upstream', 'mirror/multi:1.0', [upAmd, upArm]);
    await pushTo('appliance', 'team/app:v1', [hostedImage]);
    await pushTo('appliance', 'team/multi:v1', [hostedAmd, hostedArm]);
    // The mirrors K3s would write for registries.yaml `mirrors: {docker.io: ..., "127.0.0.1:PORT": ...}`.
    hostsDir = join(work, 'certs.d');
    const ca = join(app.certDir, 'ca.crt');
    await writeHostsToml(hostsDir, 'docker.io', app.url, ca);
    await writeHostsToml(hostsDir, upHost, app.url, ca);
  });

  after(async () => {
    await containerd?.stop();
    await app?.stop();
    await upstream?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('a cached image of a host:port upstream: 127.0.0.1:PORT/mirror/tool:1.0 via its mirror (?ns=127.0.0.1:PORT), fetched by the cache worker', async () => {
    const mark = upstream.output().length;
    const pulled = await containerd.pull(`${upHost}/mirror/tool:1.0`, { hostsDir, creds: app.reader.creds });
    assert.equal(pulled.digest, toolImage.manifest.digest);
    const content = await containerd.content();
    for (const blob of [toolImage.config, ...toolImage.layers]) assert.ok(content.includes(blob.digest), `${blob.digest} in containerd's content store`);
    await assertServedByGateway(upHost, 'mirror/tool', '1.0', toolImage.manifest.digest, toolImage);
    // The upstream saw the cache worker, never containerd itself (no fallback to `server`).
    const upstreamSaw = distributionAccessLog(upstream.output().slice(mark));
    assert.ok(upstreamSaw.some((r) => r.path === '/v2/mirror/tool/manifests/1.0' && r.userAgent === 'stevedore'), 'the cache worker fetched the manifest');
    assert.deepEqual(upstreamSaw.filter((r) => r.userAgent !== 'stevedore'), []);
  });

  it('a cached multi-platform image with --platform linux/arm64: the index, then only the arm64 child and its blobs', async () => {
    const pulled = await containerd.pull(`${upHost}/mirror/multi:1.0`, { hostsDir, creds: app.reader.creds, platform: 'linux/arm64' });
    assert.equal(pulled.digest, buildIndex([upAmd, upArm]).digest);
    assert.equal(pulled.mediaType, 'application/vnd.oci.image.index.v1+json');
    const content = await containerd.content();
    for (const blob of [upArm.manifest, upArm.config, ...upArm.layers]) assert.ok(content.includes(blob.digest), `arm64 ${blob.digest} pulled`);
    for (const blob of upAmd.layers) assert.ok(!content.includes(blob.digest), `amd64 layer ${blob.digest} not pulled`);
    await assertServedByGateway(upHost, 'mirror/multi', '1.0', pulled.digest, upArm);
    const entries = await readerEntries(() => true);
    assert.ok(!entries.some((e) => e.path.endsWith(upAmd.manifest.digest)), 'the amd64 manifest was not asked for');
  });

  it('a hosted image as docker.io/team/app:v1 through docker.io\'s mirror (?ns=docker.io with no docker.io upstream goes to hosted)', async () => {
    const pulled = await containerd.pull('docker.io/team/app:v1', { hostsDir, creds: app.reader.creds });
    assert.equal(pulled.digest, hostedImage.manifest.digest);
    const content = await containerd.content();
    for (const blob of hostedImage.layers) assert.ok(content.includes(blob.digest), `${blob.digest} in containerd's content store`);
    await assertServedByGateway('-', 'team/app', 'v1', hostedImage.manifest.digest, hostedImage);
  });

  it('a hosted multi-platform image as docker.io/team/multi:v1 with --platform linux/arm64', async () => {
    const pulled = await containerd.pull('docker.io/team/multi:v1', { hostsDir, creds: app.reader.creds, platform: 'linux/arm64' });
    assert.equal(pulled.digest, buildIndex([hostedAmd, hostedArm]).digest);
    const content = await containerd.content();
    for (const blob of [hostedArm.manifest, hostedArm.config, ...hostedArm.layers]) assert.ok(content.includes(blob.digest), `arm64 ${blob.digest} pulled`);
    for (const blob of hostedAmd.layers) assert.ok(!content.includes(blob.digest), `amd64 layer ${blob.digest} not pulled`);
    await assertServedByGateway('-', 'team/multi', 'v1', pulled.digest, hostedArm);
  });

  it('wrong credentials: containerd\'s pull fails with 401 from the gateway', async () => {
    const result = await containerd.ctr(['images', 'pull', '--snapshotter', 'native', '--hosts-dir', hostsDir, '--user', `${app.reader.name}:wrong-password`,
      'docker.io/team/app:v1'], 60_000);
    assert.notEqual(result.code, 0);
    assert.match(`${result.stderr}${result.stdout}`, /401|unauthorized/i);
  });
});
