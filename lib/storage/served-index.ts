import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { gunzipSync, gzipSync } from 'node:zlib';
import { isStorageNotFound, type StorageDriver } from './driver/driver.js';

/**
 * "Last served" times of blobs (manifests are blobs too), kept in the store itself because S3 cannot
 * set an object's times. Written in batches, never one request per served blob:
 *
 *   _state/served/batches/<instance>/<ms>-<seq>-<rand>.gz    one object per logger flush (never overwritten)
 *   _state/served/snapshot.gz                                 the compacted index (the cleaner folds batches in)
 *
 * Each logger process (one per appliance) writes only new keys under its own instance directory, so
 * several appliances on one bucket never overwrite each other. The cleaner folds every batch into the
 * snapshot with a conditional write (replaceIfMatch / putIfAbsent: a concurrent compaction retries) and
 * only then deletes the batches it folded. Merging takes the latest time per digest, which is
 * idempotent and order-free: a batch folded twice, or read both from the snapshot and as a batch,
 * changes nothing. Readers list the batches before reading the snapshot, so a compaction running in
 * between cannot hide a batch from them.
 *
 * Content: gzip of lines `<ms since epoch> <digest>`.
 */
export const SERVED_PREFIX = '_state/served/';
export const SERVED_BATCHES_PREFIX = `${SERVED_PREFIX}batches/`;
export const SERVED_SNAPSHOT_KEY = `${SERVED_PREFIX}snapshot.gz`;

/** Digest (`sha256:…`) → last served, ms since the epoch. */
export type ServedTimes = Map<string, number>;

/** Small reads run this many at a time (S3 round trips overlap). */
const CONCURRENCY = 16;

export function encodeServed(times: ReadonlyMap<string, number>): Buffer {
  let text = '';
  for (const [digest, ms] of times) text += `${ms} ${digest}\n`;
  return gzipSync(text);
}

export function decodeServed(data: Buffer, into: ServedTimes = new Map()): ServedTimes {
  let text: string;
  try {
    text = gunzipSync(data).toString('utf8');
  } catch {
    return into; // a damaged object holds nothing we can use; times fall back to the blob's own
  }
  for (const line of text.split('\n')) {
    const space = line.indexOf(' ');
    if (space <= 0) continue;
    const ms = Number(line.slice(0, space));
    if (!Number.isFinite(ms)) continue;
    mergeTime(into, line.slice(space + 1), ms);
  }
  return into;
}

function mergeTime(into: ServedTimes, digest: string, ms: number): void {
  const known = into.get(digest);
  if (known === undefined || ms > known) into.set(digest, ms);
}

/** A name for this process's batch directory: host, pid and a random part (unique per start). */
export function servedInstanceId(): string {
  const host = hostname().toLowerCase().replace(/[^a-z0-9.-]+/g, '-').slice(0, 40) || 'host';
  return `${host}-${process.pid}-${randomBytes(3).toString('hex')}`;
}

/** One logger's writer of batches: every write is a new key (a PUT; no read, no overwrite). */
export class ServedBatchWriter {
  private seq = 0;

  constructor(private readonly driver: StorageDriver, readonly instanceId: string = servedInstanceId()) {}

  async write(times: ReadonlyMap<string, number>): Promise<string | undefined> {
    if (times.size === 0) return undefined;
    const key = `${SERVED_BATCHES_PREFIX}${this.instanceId}/${String(Date.now()).padStart(13, '0')}-${this.seq++}-${randomBytes(2).toString('hex')}.gz`;
    await this.driver.putContent(key, encodeServed(times));
    return key;
  }
}

async function listBatches(driver: StorageDriver): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of driver.walk(SERVED_BATCHES_PREFIX)) if (info.key.endsWith('.gz')) keys.push(info.key);
  return keys;
}

async function readBatches(driver: StorageDriver, keys: string[], into: ServedTimes): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < keys.length) {
      const key = keys[next++]!;
      // Folded and deleted by a compaction since it was listed: its times are in the snapshot read after the listing.
      const data = await driver.getContent(key).catch((err: unknown) => (isStorageNotFound(err) ? undefined : Promise.reject(err)));
      if (data) decodeServed(data, into);
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, keys.length) }, worker));
}

/** Every last-served time the store knows: the snapshot plus every batch not folded yet. */
export async function readServedTimes(driver: StorageDriver): Promise<ServedTimes> {
  const batches = await listBatches(driver);
  const times = new Map<string, number>();
  const snapshot = await driver.getContent(SERVED_SNAPSHOT_KEY).catch((err: unknown) => (isStorageNotFound(err) ? undefined : Promise.reject(err)));
  if (snapshot) decodeServed(snapshot, times);
  await readBatches(driver, batches, times);
  return times;
}

export interface CompactionResult {
  /** Batches folded into the snapshot (and deleted). */
  folded: number;
  /** Entries in the snapshot written. */
  entries: number;
  /** Entries dropped because their blob is no longer stored. */
  dropped: number;
}

/**
 * Folds every batch into the snapshot, then deletes the folded batches. `isStored` (the cleaner's
 * listing of blobs) drops entries of blobs that are gone, so the snapshot does not grow forever;
 * a blob stored after that listing only falls back to its own modification time (a fresh fill).
 */
export async function compactServedIndex(driver: StorageDriver, options: { isStored?: (digest: string) => boolean } = {}): Promise<CompactionResult> {
  for (let attempt = 0; ; attempt++) {
    const batches = await listBatches(driver);
    const current = await driver.getVersioned(SERVED_SNAPSHOT_KEY).catch((err: unknown) => (isStorageNotFound(err) ? undefined : Promise.reject(err)));
    if (batches.length === 0 && !options.isStored) return { folded: 0, entries: current ? decodeServed(current.data).size : 0, dropped: 0 };
    const times = current ? decodeServed(current.data) : new Map<string, number>();
    await readBatches(driver, batches, times);
    let dropped = 0;
    if (options.isStored) {
      for (const digest of times.keys()) {
        if (!options.isStored(digest)) {
          times.delete(digest);
          dropped++;
        }
      }
    }
    const data = encodeServed(times);
    const written = current ? (await driver.replaceIfMatch(SERVED_SNAPSHOT_KEY, data, current.version)) !== undefined : await driver.putIfAbsent(SERVED_SNAPSHOT_KEY, data);
    if (!written) {
      // Another cleaner compacted meanwhile: merge again on top of its snapshot.
      if (attempt >= 4) throw new Error('served index: the snapshot kept changing during compaction (5 attempts)');
      continue;
    }
    for (let i = 0; i < batches.length; i += CONCURRENCY) await Promise.all(batches.slice(i, i + CONCURRENCY).map((key) => driver.delete(key)));
    return { folded: batches.length, entries: times.size, dropped };
  }
}
