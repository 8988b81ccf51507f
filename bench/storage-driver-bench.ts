/**
 * Storage driver benchmark: the same operations through the filesystem driver (temp dir) and the S3
 * driver (a throw-away Ceph RGW from scripts/ceph-rgw.sh, memstore), side by side.
 *
 *   npm run bench:drivers
 *   node dist/bench/storage-driver-bench.js --mib 64 --small 200      # quick run
 *
 * Options (flag, else environment variable):
 *   --mib / BENCH_MIB        size of the large blob written (blobWriter + verified commit) and read back, default 256
 *   --small / BENCH_SMALL    small keys (4 KiB) put then got, sequentially and 16 at a time, default 1000
 *   --chunk-mib / BENCH_CHUNK_MIB  chunk size of the upload session run (a quarter of --mib in such chunks), default 4
 *   --part-mib / BENCH_PART_MIB    S3 multipart part size, default 8 (the driver's default)
 *   --parts / BENCH_PARTS          S3 parts uploaded at once per writer, default 2 (the driver's default)
 */
import { createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { digestOf } from '../lib/oci/digest.js';
import type { StorageDriver } from '../lib/storage/driver/driver.js';
import { FilesystemDriver } from '../lib/storage/driver/filesystem.js';
import { createS3Client } from '../lib/storage/driver/s3-client.js';
import { S3Driver } from '../lib/storage/driver/s3.js';
import { startCephRgw } from '../test/helpers/ceph.js';
import { tempDir } from '../test/helpers/processes.js';
import { numberOption } from './options.js';

const MiB = 1024 * 1024;
const mib = numberOption('mib', 'BENCH_MIB', 256, { min: 1, integer: true });
const small = numberOption('small', 'BENCH_SMALL', 1000, { min: 1, integer: true });
const chunkMib = numberOption('chunk-mib', 'BENCH_CHUNK_MIB', 4, { min: 1, integer: true });
const partMib = numberOption('part-mib', 'BENCH_PART_MIB', 8, { min: 5, integer: true });
const parts = numberOption('parts', 'BENCH_PARTS', 2, { min: 1, integer: true });

// One random MiB repeated: generating 256 MiB of randomness would dominate the run, and the hash
// does not care that blocks repeat (each block position changes the digest).
const block = randomBytes(MiB);
const blob = Buffer.concat(Array.from({ length: mib }, () => block));
const blobDigest = digestOf(blob);

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const start = process.hrtime.bigint();
  const value = await fn();
  return [Number(process.hrtime.bigint() - start) / 1e9, value];
}

async function* chunks(data: Buffer, size: number): AsyncIterable<Buffer> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

async function pool(count: number, width: number, fn: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < count) await fn(next++);
  }));
}

async function run(name: string, driver: StorageDriver): Promise<Record<string, string>> {
  const row: Record<string, string> = { driver: name };
  const key = `blobs/sha256/${blobDigest.hex.slice(0, 2)}/${blobDigest.hex}`;
  const [write] = await timed(async () => {
    const writer = await driver.blobWriter(key);
    for await (const chunk of chunks(blob, MiB)) await writer.write(chunk);
    await writer.commit(blobDigest, blob.length);
  });
  row[`write ${mib} MiB`] = `${(mib / write).toFixed(0)} MiB/s`;
  const [readTime, hex] = await timed(async () => {
    const hash = createHash('sha256');
    for await (const chunk of await driver.reader(key)) hash.update(chunk as Buffer);
    return hash.digest('hex');
  });
  if (hex !== blobDigest.hex) throw new Error(`${name}: read back different content`);
  row[`read ${mib} MiB`] = `${(mib / readTime).toFixed(0)} MiB/s`;

  const payload = randomBytes(4096);
  const [putSeq] = await timed(() => pool(small, 1, (i) => driver.putContent(`small/seq/${i}`, payload)));
  const [putPar] = await timed(() => pool(small, 16, (i) => driver.putContent(`small/par/${i}`, payload)));
  const [getPar] = await timed(() => pool(small, 16, (i) => driver.getContent(`small/par/${i}`)));
  row[`${small}× 4 KiB put seq`] = `${putSeq.toFixed(2)} s`;
  row[`put ×16`] = `${putPar.toFixed(2)} s`;
  row[`get ×16`] = `${getPar.toFixed(2)} s`;

  const uploadBytes = blob.subarray(0, Math.max(MiB, Math.floor(mib / 4) * MiB));
  const [upload] = await timed(async () => {
    const id = randomUUID();
    await driver.uploads.create(id, { name: 'bench/app' });
    let offset = 0;
    for await (const chunk of chunks(uploadBytes, chunkMib * MiB)) {
      offset = await driver.uploads.append(id, offset, (async function* () { yield chunk; })());
    }
    await driver.uploads.finish(id, 'blobs/uploaded', digestOf(uploadBytes));
  });
  row[`upload ${uploadBytes.length / MiB} MiB in ${chunkMib} MiB chunks`] = `${(uploadBytes.length / MiB / upload).toFixed(0)} MiB/s`;
  return row;
}

/** The store's own ceiling on this machine, measured the same way by curl (one PUT, one GET). */
async function curlBaseline(rgw: Awaited<ReturnType<typeof startCephRgw>>, dir: string): Promise<Record<string, string>> {
  const file = join(dir, 'curl-blob');
  await writeFile(file, blob);
  const url = `${rgw.endpoint}/${rgw.bucket}/curl/blob`;
  const auth = ['--aws-sigv4', 'aws:amz:us-east-1:s3', '--user', `${rgw.accessKeyId}:${rgw.secretAccessKey}`, '-H', 'x-amz-content-sha256: UNSIGNED-PAYLOAD'];
  const curl = promisify(execFile);
  const [put] = await timed(() => curl('curl', ['-fsS', '-o', '/dev/null', '-T', file, ...auth, url]));
  const [get] = await timed(() => curl('curl', ['-fsS', '-o', '/dev/null', ...auth, url]));
  await rm(file);
  return { driver: 'curl to the same Ceph RGW (ceiling)', [`write ${mib} MiB`]: `${(mib / put).toFixed(0)} MiB/s`, [`read ${mib} MiB`]: `${(mib / get).toFixed(0)} MiB/s` };
}

const dir = await tempDir('stevedore-driver-bench-');
const rgw = await startCephRgw();
try {
  const rows = [
    await curlBaseline(rgw, dir),
    await run('filesystem', new FilesystemDriver(dir)),
    await run(`s3 (Ceph RGW memstore, ${partMib} MiB parts ×${parts})`, new S3Driver({ client: createS3Client({ endpoint: rgw.endpoint }), bucket: rgw.bucket, prefix: 'bench', partSize: partMib * MiB, partConcurrency: parts })),
  ];
  console.table(rows);
} finally {
  await rgw.stop();
  await rm(dir, { recursive: true, force: true });
}
