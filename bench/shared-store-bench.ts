/**
 * What the shared-store mode (STEVEDORE_SHARED_STORE, default on S3) costs a worker on S3: manifest
 * GET by tag and small blob GET req/s with the mode off (tags, revisions, links trusted from memory
 * for 1-5 s) and on (read from the store per request: a tag GET + revision GET per manifest, a link
 * HEAD per blob), on a throw-away Ceph RGW (memstore), measured with wrk.
 *
 *   node dist/bench/shared-store-bench.js [SECONDS=5] [CONNECTIONS=8]
 */
import { rm } from 'node:fs/promises';
import { buildImage } from '../test/helpers/oci-image.js';
import { pushImage } from '../test/helpers/hosted.js';
import { startStevedoreRegistry, tempDir } from '../test/helpers/processes.js';
import { testStorage } from '../test/helpers/storage-targets.js';
import { run } from './harness.js';

const seconds = Number(process.argv[2] ?? 5);
const connections = Number(process.argv[3] ?? 8);
const ACCEPT = 'Accept: application/vnd.oci.image.manifest.v1+json';

async function wrk(url: string, headers: string[]): Promise<{ rps: number; non2xx: number; p99: string }> {
  const args = ['-t2', `-c${connections}`, `-d${seconds}s`, '--latency', ...headers.flatMap((h) => ['-H', h]), url];
  const { code, stdout } = await run('wrk', args, (seconds + 30) * 1000);
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(stdout);
  if (code !== 0 || !rps) throw new Error(`wrk failed:\n${stdout}`);
  return { rps: Number(rps[1]), non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(stdout)?.[1] ?? 0), p99: /\s99%\s+(\S+)/.exec(stdout)?.[1] ?? '?' };
}

const storage = await testStorage('s3');
const image = buildImage({ layerSizes: [4096] });
const results: Record<string, unknown>[] = [];
try {
  for (const shared of ['false', 'true']) {
    const root = await tempDir('stevedore-shared-bench-');
    const worker = await startStevedoreRegistry(['--root', root, '--storage', storage.storage], { ...storage.env, STEVEDORE_SHARED_STORE: shared });
    try {
      await pushImage(worker.url, 'bench/app', 'latest', image);
      const manifest = await wrk(`${worker.url}/v2/bench/app/manifests/latest`, [ACCEPT]);
      const blob = await wrk(`${worker.url}/v2/bench/app/blobs/${image.config.digest}`, []);
      results.push({ sharedStore: shared, manifestByTagRps: manifest.rps, manifestP99: manifest.p99, smallBlobRps: blob.rps, blobP99: blob.p99, non2xx: manifest.non2xx + blob.non2xx });
    } finally {
      await worker.stop();
      await rm(root, { recursive: true, force: true });
    }
  }
} finally {
  await storage.cleanup();
}
for (const row of results) console.log(JSON.stringify(row));
process.exit(0);
