import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseDigest } from '../lib/oci/digest.js';
import { isStorageNotFound } from '../lib/storage/driver/driver.js';
import { StorageLayout } from '../lib/storage/layout.js';
import { readServedTimes } from '../lib/storage/served-index.js';
import { expected, layoutOf, MANIFEST_ACCEPT, mustRun, run, sha256, sleep } from './helpers/appliance.js';
import { haproxyInstalled, startCluster, type Cluster, type ClusterMember, type HaproxyServerState } from './helpers/cluster.js';
import { buildImage, readPulledLayout, type BuiltImage } from './helpers/oci-image.js';
import { distributionRequests, startDistribution, STEVEDORE_BIN, tempDir } from './helpers/processes.js';
import { startThrottledRelay } from './helpers/faults.js';
import { eventually } from './helpers/wait.js';
import { seed as seedUpstream } from './helpers/proxy-fixtures.js';
import { containerdUnavailable, startContainerd, writeHostsToml } from './helpers/containerd.js';
import { cephInstalled, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * Issue 12: three whole appliances on one S3 store (Ceph RGW), behind the Debian haproxy (TLS passed
 * through, round-robin, /healthz checks). Clients are skopeo, podman and containerd, through HAProxy or through
 * one chosen appliance; every read through one appliance follows a write through another at once.
 */

const containerdSkip = (await containerdUnavailable()) ?? false;
const skip = !haproxyInstalled() ? 'haproxy not installed (scripts/install.sh installs it)' : !cephInstalled() ? 'Ceph not installed' : false;

const imageDigests = (image: BuiltImage): string[] => [image.manifest.digest, image.config.digest, ...image.layers.map((l) => l.digest)];
const imageBytes = (image: BuiltImage): number => image.manifest.data.length + image.config.data.length + image.layers.reduce((n, l) => n + l.size, 0);

describe('three appliances on one S3 store behind HAProxy', { skip }, () => {
  let work: string;
  let storage: TestStorage;
  let cluster: Cluster;
  let upstream: Awaited<ReturnType<typeof startDistribution>>;
  let relay: Awaited<ReturnType<typeof startThrottledRelay>>;
  let A: ClusterMember, B: ClusterMember, C: ClusterMember;
  const startedAt = Date.now();

  const skopeo = (args: string[]) => mustRun('skopeo', ['--insecure-policy', ...args], { timeoutMs: 90_000 });
  /** skopeo copy of an OCI layout to `host` (HAProxy or one appliance), verifying the shared certificate. */
  const push = async (host: string, ref: string, images: BuiltImage[]) => {
    const layout = await layoutOf(work, images);
    await skopeo(['copy', '--quiet', '--dest-cert-dir', cluster.certDir, '--dest-creds', cluster.admin.creds, `oci:${layout.dir}:latest`, `docker://${host}/${ref}`]);
  };
  const pull = async (host: string, ref: string) => {
    const out = await mkdtemp(join(work, 'pull-'));
    await skopeo(['copy', '--quiet', '--src-cert-dir', cluster.certDir, '--src-creds', cluster.reader.creds, `docker://${host}/${ref}`, `oci:${out}:pulled`]);
    const pulled = await readPulledLayout(out);
    await rm(out, { recursive: true, force: true });
    return pulled;
  };
  const manifestDigest = async (member: ClusterMember, name: string, reference: string): Promise<string | number> => {
    const res = await member.call('GET', `/v2/${name}/manifests/${reference}`, { auth: cluster.reader.auth, headers: { accept: MANIFEST_ACCEPT } });
    if (res.status !== 200) return res.status;
    assert.equal(res.headers['docker-content-digest'], sha256(res.body));
    return sha256(res.body);
  };
  const blobDigest = async (member: ClusterMember, name: string, digest: string): Promise<string | number> => {
    const res = await member.call('GET', `/v2/${name}/blobs/${digest}`, { auth: cluster.reader.auth });
    return res.status === 200 ? sha256(res.body) : res.status;
  };
  /** A GET of `path` through one appliance, streamed (never buffered): bytes so far, then the outcome. */
  const streamOver = (member: ClusterMember, path: string) => {
    let received = 0;
    const hash = createHash('sha256');
    const done = new Promise<{ status: number; received: number; digest: string }>((resolve) => {
      let settled = false;
      const finish = (status: number) => {
        if (settled) return;
        settled = true;
        resolve({ status, received, digest: `sha256:${hash.digest('hex')}` });
      };
      const req = httpsRequest(`${member.url}${path}`, { headers: { authorization: cluster.reader.auth }, rejectUnauthorized: false, agent: false }, (res) => {
        res.on('data', (chunk: Buffer) => { received += chunk.length; hash.update(chunk); });
        res.on('close', () => finish(res.statusCode ?? 0));
        res.on('error', () => {});
      });
      req.on('error', () => finish(0));
      req.end();
    });
    return { received: () => received, done };
  };
  const tags = async (member: ClusterMember, name: string): Promise<string[]> => {
    const res = await member.call('GET', `/v2/${name}/tags/list`, { auth: cluster.reader.auth });
    assert.equal(res.status, 200, `${member.name} tags/list: ${res.text()}`);
    return res.json<{ tags: string[] }>().tags;
  };
  const assertPullable = async (member: ClusterMember, name: string, tag: string, image: BuiltImage) => {
    assert.equal(await manifestDigest(member, name, tag), image.manifest.digest, `${member.name} ${name}:${tag}`);
    for (const blob of [image.config, ...image.layers]) assert.equal(await blobDigest(member, name, blob.digest), blob.digest, `${member.name} ${name} blob`);
  };

  before(async () => {
    work = await tempDir('stevedore-cluster-test-');
    storage = await testStorage('s3');
    // The logger writes the served index every second (30 s by default on S3): the eviction test reads it.
    // The upstream is reached through a 20 MB/s link (per connection), so a fill lasts long enough to
    // kill its appliance mid-way; a fill lease of 3 s keeps the takeover quick.
    upstream = await startDistribution();
    relay = await startThrottledRelay(upstream.port!, 20_000_000);
    cluster = await startCluster({
      storage, upstream: { ...upstream, port: relay.port }, env: { LOGGER_FLUSH_TIME: '1s', STEVEDORE_FILL_LEASE_TIME: '3s' },
    });
    [A, B, C] = cluster.members as [ClusterMember, ClusterMember, ClusterMember];
    process.stdout.write(`# cluster of 3 appliances + haproxy ready in ${Date.now() - startedAt} ms\n`);
  });

  after(async () => {
    const stopping = Date.now();
    await cluster?.stop();
    await relay?.stop();
    await upstream?.stop();
    const stopped = Date.now();
    await storage?.cleanup();
    process.stdout.write(`# cluster stopped in ${stopped - stopping} ms, store emptied in ${Date.now() - stopped} ms\n`);
    if (work) await rm(work, { recursive: true, force: true });
    process.stdout.write(`# cluster.test total ${Date.now() - startedAt} ms\n`);
  });

  it('a push through HAProxy (skopeo) is pullable through each appliance at once, and through HAProxy (podman)', async () => {
    const image = buildImage({ layerSizes: [3000, 200_000], seed: 'cluster-lb-push' });
    await push(cluster.host, 'team/app:v1', [image]);
    await Promise.all(cluster.members.map(async (member) => {
      const pulled = await pull(member.host, 'team/app:v1');
      assert.equal(pulled.top, image.manifest.digest, member.name);
      assert.deepEqual(pulled.manifests, expected([image]));
      assert.deepEqual(await tags(member, 'team/app'), ['v1']);
    }));

    const podmanFound = await run('sh', ['-c', 'command -v podman']);
    if (podmanFound.code !== 0) return;
    const store = await mkdtemp(join(work, 'podman-'));
    // podman refuses a runroot path longer than 50 characters.
    const runroot = await mkdtemp('/tmp/pdm-');
    try {
      const args = ['--root', join(store, 'root'), '--runroot', runroot, '--storage-driver', 'vfs', '--events-backend', 'file'];
      await mustRun('podman', [...args, 'pull', '--quiet', '--cert-dir', cluster.certDir, '--creds', cluster.reader.creds, `${cluster.host}/team/app:v1`], { timeoutMs: 90_000 });
      const inspect = await mustRun('podman', [...args, 'image', 'inspect', '--format', '{{.Digest}}', `${cluster.host}/team/app:v1`]);
      assert.equal(inspect.stdout.trim(), image.manifest.digest);
    } finally {
      await rm(runroot, { recursive: true, force: true });
    }
  });

  it('a manifest deleted through one appliance is 404 through the others at once', async () => {
    const name = 'team/gone';
    const image = buildImage({ layerSizes: [2048], seed: 'cluster-delete' });
    await push(A.host, `${name}:v1`, [image]);
    // B and C serve it first (anything they keep in memory would now be stale after the delete).
    for (const member of [B, C]) await assertPullable(member, name, 'v1', image);
    const deleted = await A.call('DELETE', `/v2/${name}/manifests/${image.manifest.digest}`, { auth: cluster.admin.auth });
    assert.equal(deleted.status, 202, deleted.text());
    for (const member of [B, C]) {
      assert.equal(await manifestDigest(member, name, image.manifest.digest), 404, `${member.name} by digest`);
      assert.equal(await manifestDigest(member, name, 'v1'), 404, `${member.name} by tag`);
    }
  });

  it('a chunked upload whose POST, PATCHes and PUT land on different appliances completes with the right digest', async () => {
    const name = 'team/chunked';
    // The middle chunk is over the gateway's 4 MiB read-ahead, so it is streamed to the worker.
    const data = Buffer.concat([Buffer.alloc(1 << 20, 1), Buffer.from('middle'), Buffer.alloc(5 << 20, 2), Buffer.from('end')]);
    const digest = sha256(data);
    const auth = cluster.admin.auth;
    const post = await A.call('POST', `/v2/${name}/blobs/uploads/`, { auth });
    assert.equal(post.status, 202, post.text());
    let location = String(post.headers.location);
    const cuts = [0, 1 << 20, (6 << 20) + 6, data.length];
    for (const [member, i] of [[B, 0], [C, 1], [A, 2]] as const) {
      const [start, end] = [cuts[i]!, cuts[i + 1]!];
      const patch = await member.call('PATCH', location, {
        auth, body: data.subarray(start, end), timeoutMs: 60_000,
        headers: { 'content-type': 'application/octet-stream', 'content-range': `${start}-${end - 1}` },
      });
      assert.equal(patch.status, 202, `PATCH ${start}-${end - 1} on ${member.name}: ${patch.text()}`);
      assert.equal(patch.headers.range, `0-${end - 1}`);
      location = String(patch.headers.location);
    }
    const put = await B.call('PUT', `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`, { auth });
    assert.equal(put.status, 201, put.text());
    assert.equal(put.headers['docker-content-digest'], digest);
    for (const member of cluster.members) assert.equal(await blobDigest(member, name, digest), digest, member.name);
  });

  it('concurrent pushes (skopeo) of the same image and tags through the three appliances lose nothing', async () => {
    const name = 'team/race';
    const shared = buildImage({ layerSizes: [4096, 300_000], seed: 'cluster-race-shared' });
    const own = [0, 1, 2].map((i) => buildImage({ layerSizes: [4096, 150_000], seed: `cluster-race-${i}` }));
    await Promise.all(cluster.members.flatMap((member, i) => [
      push(member.host, `${name}:latest`, [shared]),
      push(member.host, `${name}:own-${i}`, [own[i]!]),
    ]));
    for (const member of cluster.members) {
      assert.deepEqual(await tags(member, name), ['latest', 'own-0', 'own-1', 'own-2']);
      await assertPullable(member, name, 'latest', shared);
      for (let i = 0; i < 3; i++) await assertPullable(member, name, `own-${i}`, own[i]!);
    }
  });

  it('eviction follows what every appliance served: the least recently served content across all goes, content served again through another appliance stays', async () => {
    // Three cached images, filled through A, B, A in that order; later img0 is served again through
    // B and img1 through C. By fill order (or by A's accesses alone) img0 is the oldest; by what the
    // appliances together served, img2 is.
    const images = [0, 1, 2].map((i) => buildImage({ layerSizes: [20_000, 60_000], seed: `cluster-evict-${i}` }));
    for (const [i, image] of images.entries()) {
      const layout = await layoutOf(work, [image]);
      await skopeo(['copy', '--quiet', '--dest-tls-verify=false', '--preserve-digests', `oci:${layout.dir}:latest`, `docker://${cluster.upHost}/mirror/evict${i}:v1`]);
    }
    const ref = (i: number) => `up/mirror/evict${i}:v1`;
    for (const [member, i] of [[A, 0], [B, 1], [A, 2]] as const) {
      assert.equal((await pull(member.host, ref(i))).top, images[i]!.manifest.digest);
      await sleep(20); // distinct milliseconds between the images' times
    }
    const servedAgainFrom = Date.now();
    await sleep(20);
    for (const [member, i] of [[B, 0], [C, 1]] as const) assert.equal((await pull(member.host, ref(i))).top, images[i]!.manifest.digest);

    // The loggers (one per appliance) write their batches into the store; wait for B's and C's.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const served = await readServedTimes(storage.driver);
      const recent = [images[0]!, images[1]!].flatMap(imageDigests).every((d) => (served.get(d) ?? 0) >= servedAgainFrom);
      if (recent && imageDigests(images[2]!).every((d) => served.has(d))) break;
      assert.ok(Date.now() < deadline, `served index not written within 20 s: ${JSON.stringify([...served])}`);
      await sleep(250);
    }

    // One cleaner run, from B's configuration; the limit holds exactly img0 and img1.
    const limit = imageBytes(images[0]!) + imageBytes(images[1]!);
    const env = { ...B.appliance.env, CLEANER_MAXSIZE: String(limit), CLEANER_THRESHOLD_PERCENTAGE: '0', CLEANER_GRACE_TIME: '0s', LOG_LEVEL: 'warn' };
    let clean = await run(process.execPath, [STEVEDORE_BIN, 'clean'], { env });
    // 75: an appliance's own cleaner service holds the lease right now; it lets go within seconds.
    for (let i = 0; i < 20 && clean.code === 75; i++) {
      await sleep(500);
      clean = await run(process.execPath, [STEVEDORE_BIN, 'clean'], { env });
    }
    assert.equal(clean.code, 0, `${clean.stdout}${clean.stderr}`);

    const layout = new StorageLayout('');
    const stored = async (digest: string) => storage.driver.stat(layout.blobKey(parseDigest(digest))).then(() => true, (err: unknown) => {
      if (isStorageNotFound(err)) return false;
      throw err;
    });
    for (const d of imageDigests(images[2]!)) assert.equal(await stored(d), false, `img2 ${d} (least recently served) evicted\n${clean.stdout}`);
    for (const i of [0, 1]) for (const d of imageDigests(images[i]!)) assert.equal(await stored(d), true, `img${i} ${d} (served again) kept\n${clean.stdout}`);

    // img0 keeps pulling through C from the store; img2 is fetched from the upstream again.
    const mark = cluster.upstream.output().length;
    assert.equal((await pull(C.host, ref(0))).top, images[0]!.manifest.digest);
    assert.equal((await pull(C.host, ref(2))).top, images[2]!.manifest.digest);
    const fetched = distributionRequests(cluster.upstream.output().slice(mark)).filter((r) => r.method === 'GET' && r.path.includes('/blobs/'));
    assert.deepEqual(fetched.filter((r) => r.path.startsWith('/v2/mirror/evict0/')), []);
    for (const layer of images[2]!.layers) assert.ok(fetched.some((r) => r.path === `/v2/mirror/evict2/blobs/${layer.digest}`), `img2 layer ${layer.digest} fetched again`);
  });

  it('8 concurrent cold pulls (skopeo) through HAProxy over the three appliances fetch each blob and manifest from the upstream once in total', async () => {
    // The 32 MiB layer takes ~1.7 s through the 20 MB/s link: the 8 skopeo processes, whose start-ups
    // spread over up to a second on 2 loaded cores, meet its fill in progress on another appliance
    // (with 2 MiB, and once in ~10 full runs with 12 MiB, the fill was over before another appliance
    // asked, which then read the blob from the store and no peer request happened).
    const image = buildImage({ layerSizes: [32 * 1024 * 1024, 1024 * 1024, 4096], seed: 'cluster-fetched-once' });
    await seedUpstream(cluster.upstream.url, 'team/fill:v1', [image]);
    const mark = cluster.upstream.output().length;
    const sessionsBefore = new Map((await cluster.haproxyServers()).map((server) => [server.name, server.sessions]));
    const pulled = await Promise.all(Array.from({ length: 8 }, () => pull(cluster.host, `up/team/fill:v1`)));
    for (const layout of pulled) assert.deepEqual(layout.manifests, expected([image]));
    const requests = distributionRequests(cluster.upstream.output().slice(mark)).filter((r) => r.method === 'GET');
    for (const digest of [image.config.digest, ...image.layers.map((l) => l.digest)]) {
      assert.equal(requests.filter((r) => r.path === `/v2/team/fill/blobs/${digest}`).length, 1, `upstream GETs of blob ${digest}: ${JSON.stringify(requests)}`);
    }
    const manifestGets = requests.filter((r) => r.path.startsWith('/v2/team/fill/manifests/'));
    assert.deepEqual(manifestGets.map((r) => r.path), ['/v2/team/fill/manifests/v1'], 'one upstream GET of the manifest');
    // Every appliance served some of the pulls (HAProxy's round-robin): the fills were shared, not all on one.
    const servers = await cluster.haproxyServers();
    assert.ok(servers.every((server) => server.sessions > (sessionsBefore.get(server.name) ?? 0)), JSON.stringify(servers));
    // The appliances that did not fill a blob streamed it from the one that did (its gateway logs the peers' GETs).
    // (The gateways write their access logs in batches: read until the lines are there.)
    const peerGets = async () => (await Promise.all(cluster.members.map((m) => m.appliance.accessLog())))
      .flat().filter((line) => line.includes('"user":"peer"') && line.includes('/blobs/') && line.includes('"status":200'));
    assert.ok(await eventually(async () => (await peerGets()).length > 0, 3_000), 'peer fill requests between the appliances');
  });

  it('containerd (ctr, hosts.toml mirror = HAProxy) pulls a cached image through the cluster', { skip: containerdSkip }, async () => {
    const image = buildImage({ layerSizes: [300_000, 4096], seed: 'cluster-containerd' });
    await seedUpstream(cluster.upstream.url, 'team/ctr:v1', [image]);
    const mark = cluster.upstream.output().length;
    const containerd = await startContainerd();
    try {
      const hostsDir = join(work, 'certs.d');
      // containerd asks the mirror with ?ns=<upstream host>: HAProxy passes it to any appliance.
      await writeHostsToml(hostsDir, cluster.upHost, cluster.url, join(cluster.certDir, 'ca.crt'));
      const pulled = await containerd.pull(`${cluster.upHost}/team/ctr:v1`, { hostsDir, creds: cluster.reader.creds });
      assert.equal(pulled.digest, image.manifest.digest);
      const content = await containerd.content();
      for (const blob of [image.config, ...image.layers]) assert.ok(content.includes(blob.digest), `${blob.digest} in containerd's content store`);
    } finally {
      await containerd.stop();
    }
    const gets = distributionRequests(cluster.upstream.output().slice(mark)).filter((r) => r.method === 'GET' && r.path.includes('/blobs/'));
    for (const blob of [image.config, ...image.layers]) assert.equal(gets.filter((r) => r.path.endsWith(blob.digest)).length, 1, `upstream GETs of ${blob.digest}`);
  });

  it('the appliance filling a blob is SIGKILLed mid-fill: the two streaming it from there finish it, verified, and the store has it whole', async () => {
    const image = buildImage({ layerSizes: [40 * 1024 * 1024], seed: 'cluster-kill-fill' });
    const layer = image.layers[0]!;
    await seedUpstream(cluster.upstream.url, 'team/killfill:v1', [image]);
    const mark = cluster.upstream.output().length;
    const path = `/v2/up/team/killfill/blobs/${layer.digest}`;
    // A misses first and fills (it holds the lease); B and C then stream A's fill through A's gateway.
    const a = streamOver(A, path);
    while (a.received() < 2 * 1024 * 1024) await sleep(20);
    const b = streamOver(B, path);
    const c = streamOver(C, path);
    while (b.received() < 1024 * 1024 || c.received() < 1024 * 1024) await sleep(20);
    assert.ok(a.received() < layer.size / 2, `A is mid-fill (${a.received()} of ${layer.size})`);
    await A.kill('SIGKILL');
    const [fromA, fromB, fromC] = await Promise.all([a.done, b.done, c.done]);
    assert.notEqual(fromA.received, layer.size, 'A\'s own client lost its transfer with A');
    for (const [who, t] of [['B', fromB], ['C', fromC]] as const) {
      assert.equal(t.status, 200, who);
      assert.equal(t.received, layer.size, `${who} got every byte`);
      assert.equal(t.digest, layer.digest, `${who} got the right bytes`);
    }
    // Whole and right in the store, served by an appliance that never filled it.
    assert.equal(await blobDigest(C, 'up/team/killfill', layer.digest), layer.digest);
    // A's GET (cut off with A) and one by whichever of B and C took the lease over.
    const gets = distributionRequests(cluster.upstream.output().slice(mark)).filter((r) => r.method === 'GET' && r.path.endsWith(layer.digest));
    assert.equal(gets.length, 2, JSON.stringify(gets));
    await A.restart();
    await cluster.waitServerStatus(A.name, 'UP');
  });

  it('one appliance SIGKILLed: connections HAProxy still sends it go to another, it leaves the rotation within ~1 s, and 10 consecutive pulls through HAProxy all succeed; restarted, it serves again', async () => {
    const image = buildImage({ layerSizes: [5000, 100_000], seed: 'cluster-failover' });
    await push(cluster.host, 'team/failover:v1', [image]);
    const sessions = (state: HaproxyServerState[], name: string) => state.find((s) => s.name === name)!;

    // The window between the death and the health check noticing it, held open: with its checks
    // paused HAProxy keeps B in the rotation, and every connection B refuses is retried on another.
    assert.match(await cluster.haproxyCommand(`disable health appliances/${B.name}`), /^\s*$/);
    await B.kill('SIGKILL');
    const blind = await cluster.haproxyServers();
    for (let i = 0; i < 4; i++) assert.equal((await pull(cluster.host, 'team/failover:v1')).top, image.manifest.digest, `pull ${i + 1} while B is dead but UP`);
    const redispatched = sessions(await cluster.haproxyServers(), B.name);
    assert.ok(redispatched.sessions > sessions(blind, B.name).sessions, 'HAProxy sent B connections while it was dead');
    assert.ok(redispatched.redispatches > 0, `refused connections were redispatched: ${JSON.stringify(redispatched)}`);

    await cluster.haproxyCommand(`enable health appliances/${B.name}`);
    const downMs = await cluster.waitServerStatus(B.name, 'DOWN');
    process.stdout.write(`# haproxy marked the killed appliance DOWN ${downMs} ms after its checks resumed (inter 500ms, fall 2)\n`);
    const before = await cluster.haproxyServers();
    for (let i = 0; i < 10; i++) {
      const pulled = await pull(cluster.host, 'team/failover:v1');
      assert.equal(pulled.top, image.manifest.digest, `pull ${i + 1}`);
    }
    const afterPulls = await cluster.haproxyServers();
    assert.equal(sessions(afterPulls, B.name).sessions, sessions(before, B.name).sessions, 'no connection went to the dead appliance');
    for (const member of [A, C]) assert.ok(sessions(afterPulls, member.name).sessions > sessions(before, member.name).sessions, `${member.name} served some of the pulls`);

    const restartedAt = Date.now();
    await B.restart();
    await cluster.waitServerStatus(B.name, 'UP');
    process.stdout.write(`# killed appliance restarted and back UP in haproxy after ${Date.now() - restartedAt} ms\n`);
    await assertPullable(B, 'team/failover', 'v1', image);
  });
});
