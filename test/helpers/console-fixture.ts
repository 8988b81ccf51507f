import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { layoutOf, mustRun, sleep, startAppliance, type Appliance } from './appliance.js';
import { buildImage, readPulledLayout, type BuiltImage, type PulledLayout } from './oci-image.js';
import { startRateLimitRelay } from './faults.js';
import { startRestartableDistribution, tempDir, type RestartableDistribution } from './processes.js';

/**
 * What the console tests look at: the appliance under PM2 with a docker-registry upstream, an
 * image pushed to the hosted registry and one pulled (twice: a miss, then hits) through the
 * cache by the read-only user. CLEANER_MAXSIZE is tiny and the grace period 0, so the cleaner's
 * plan (next to evict) holds the cached blobs; the cleaner service's own runs are an hour apart.
 */
export interface ConsoleFixture {
  work: string;
  /** docker-registry, stopped and restarted by the upstream-state tests. */
  upstream: RestartableDistribution;
  upHost: string;
  /** A second upstream: a relay in front of the same docker-registry that adds Docker Hub's rate-limit headers (alias `hub`). */
  hub: Awaited<ReturnType<typeof startRateLimitRelay>>;
  app: Appliance;
  hostedImage: BuiltImage;
  cachedImage: BuiltImage;
  /** A second cached image, purged by the tests. */
  purgeImage: BuiltImage;
  pullFromGateway(ref: string, creds: string): Promise<PulledLayout>;
  stop(): Promise<void>;
}

export async function startConsoleFixture(seed: string): Promise<ConsoleFixture> {
  const work = await tempDir(`console-${seed}-`);
  const upstream = await startRestartableDistribution();
  const upHost = `127.0.0.1:${upstream.port}`;
  const hub = await startRateLimitRelay(upstream.port);
  const hostedImage = buildImage({ layerSizes: [4000, 20_000], seed: `${seed}-hosted` });
  const cachedImage = buildImage({ layerSizes: [3000, 50_000], seed: `${seed}-cached` });
  const purgeImage = buildImage({ layerSizes: [2500], seed: `${seed}-purge` });
  const skopeo = (args: string[]) => mustRun('skopeo', ['--insecure-policy', ...args], { timeoutMs: 60_000 });
  for (const [ref, image] of [['mirror/tool:1.0', cachedImage], ['mirror/gone:2.0', purgeImage]] as const) {
    const layout = await layoutOf(work, [image]);
    await skopeo(['copy', '--quiet', '--dest-tls-verify=false', '--preserve-digests', `oci:${layout.dir}:latest`, `docker://${upHost}/${ref}`]);
  }
  let app: Appliance;
  try {
    app = await startAppliance({
      upstreams: [upHost, hub.host], aliases: `up=${upHost},hub=${hub.host}`,
      env: { CLEANER_MAXSIZE: '1k', CLEANER_THRESHOLD_PERCENTAGE: '10', CLEANER_GRACE_TIME: '0s', CLEANER_RUNEVERY_TIME: '1h' },
    });
  } catch (err) {
    await hub.stop();
    await upstream.stop();
    throw err;
  }
  const pullFromGateway = async (ref: string, creds: string): Promise<PulledLayout> => {
    const out = await mkdtemp(join(work, 'pull-'));
    await skopeo(['copy', '--quiet', '--src-cert-dir', app.certDir, '--src-creds', creds, `docker://${app.host}/${ref}`, `oci:${out}:pulled`]);
    return readPulledLayout(out);
  };
  try {
    // The cleaner collects garbage at start-up, and with a grace period of 0 a blob pushed while it
    // runs (after its mark, before its sweep) counts as garbage: the content goes in after it.
    for (let i = 0; i < 300 && !/garbage collection done|gc: skipped/.test(app.output()); i++) await sleep(100);
    assert.match(app.output(), /garbage collection done|gc: skipped/, 'the cleaner\'s start-up GC finished');
    const hostedLayout = await layoutOf(work, [hostedImage]);
    await skopeo(['copy', '--quiet', '--dest-cert-dir', app.certDir, '--dest-creds', app.admin.creds, `oci:${hostedLayout.dir}:latest`, `docker://${app.host}/team/app:v1`]);
    // A host with a port is not an image path segment: pulled through its alias.
    await pullFromGateway('up/mirror/tool:1.0', app.reader.creds);
    await pullFromGateway('up/mirror/tool:1.0', app.reader.creds);
    await pullFromGateway('up/mirror/gone:2.0', app.reader.creds);
  } catch (err) {
    await app.stop();
    await hub.stop();
    await upstream.stop();
    throw err;
  }
  return {
    work, upstream, upHost, hub, app, hostedImage, cachedImage, purgeImage, pullFromGateway,
    async stop() {
      await app.stop();
      await hub.stop();
      await upstream.stop();
      await rm(work, { recursive: true, force: true });
    },
  };
}

/** The value of one Prometheus sample line `name{labels} value` in /metrics text (0 when absent). */
export function metricValue(text: string, name: string, labels: Record<string, string>): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const close = line.lastIndexOf('}');
    const labelText = line.slice(name.length + 1, close);
    const found = Object.fromEntries([...labelText.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([k, v]) => found[k] === v)) total += Number(line.slice(close + 1).trim());
  }
  return total;
}
