import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { isRegistryError } from '../lib/oci/errors.js';
import { digestOf } from '../lib/oci/digest.js';
import { createS3Client } from '../lib/storage/driver/s3-client.js';
import { S3Driver } from '../lib/storage/driver/s3.js';
import { startCephRgw, type CephRgw } from './helpers/ceph.js';
import { freePort } from './helpers/processes.js';
import { driverConformance } from './helpers/storage-driver-suite.js';

const PART_SIZE = 5 * 1024 * 1024;
let rgw: CephRgw;
before(async () => {
  rgw = await startCephRgw();
});
after(async () => {
  if (!rgw) return;
  await rgw.stop();
  await rgw.stop();
  // scripts/ceph-rgw.sh stop left none of the cluster's daemons running.
  const left = [];
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(rgw.dir)) left.push(`${pid}: ${cmdline.replace(/\0/g, ' ')}`);
  }
  assert.deepEqual(left, []);
});

function driverAt(prefix: string): S3Driver {
  return new S3Driver({ client: createS3Client({ endpoint: rgw.endpoint }), bucket: rgw.bucket, prefix, partSize: PART_SIZE });
}

driverConformance('s3 (Ceph RGW)', {
  open: async () => driverAt(`t-${randomUUID()}`),
  reopen: (driver) => driverAt((driver as S3Driver).prefix),
  locationOf: (driver) => `s3://${rgw.bucket}/${(driver as S3Driver).prefix}`,
  partSize: PART_SIZE,
});

function isUnavailable(err: unknown): boolean {
  return isRegistryError(err) && err.code === 'UNAVAILABLE' && err.status === 503 && err.headers['Retry-After'] !== undefined;
}

test('s3 driver: a dead endpoint answers UNAVAILABLE with Retry-After, quickly', async () => {
  const refused = new S3Driver({ client: createS3Client({ endpoint: `http://127.0.0.1:${await freePort()}` }), bucket: 'stevedore' });
  let started = Date.now();
  await assert.rejects(refused.getContent('blobs/x'), isUnavailable);
  await assert.rejects(refused.stat('blobs/x'), isUnavailable);
  await assert.rejects(refused.putIfAbsent('blobs/x', 'x'), isUnavailable);
  const writer = await refused.blobWriter('blobs/y');
  await writer.write(Buffer.from('y'));
  await assert.rejects(writer.commit(digestOf('y')), isUnavailable);
  assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);

  // A store that accepts connections and never answers: the idle timeout ends the wait.
  const sockets = new Set<Socket>();
  const silent = createServer((socket) => { sockets.add(socket); });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  try {
    const port = (silent.address() as { port: number }).port;
    const hanging = new S3Driver({ client: createS3Client({ endpoint: `http://127.0.0.1:${port}`, idleTimeoutMs: 300 }), bucket: 'stevedore' });
    started = Date.now();
    await assert.rejects(hanging.getContent('blobs/x'), isUnavailable);
    assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`);
  } finally {
    for (const socket of sockets) socket.destroy();
    silent.close();
  }
});

test('s3 driver: a prefix keeps stores on one bucket apart', async () => {
  const a = driverAt(`p-${randomUUID()}/registry`);
  const b = driverAt(`p-${randomUUID()}`);
  await a.putContent('tags/t', 'a');
  await b.putContent('tags/t', 'b');
  assert.equal((await a.getContent('tags/t')).toString(), 'a');
  assert.deepEqual((await a.list('')).keys.map((k) => k.key), ['tags/t']);
  assert.equal(a.location.startsWith(`s3://${rgw.bucket}/p-`), true);
});
