import { tryParseDigest } from '../oci/digest.js';
import { isStorageNotFound, type StorageDriver } from './driver/driver.js';
import type { EvictionPlan } from './eviction.js';
import { StorageLayout } from './layout.js';

/**
 * The last eviction plan's figures, kept in the store so a console (on any appliance) can show
 * storage use and what goes next at once, without listing 100,000 blobs first; written by whoever
 * made a plan (the cleaner each run, `stevedore clean`, the console after its own listing).
 */
export const INVENTORY_SNAPSHOT_KEY = '_state/inventory.json';
/** Planned evictions kept in the snapshot (the console pages through the first ones). */
const EVICT_KEPT = 1000;

export interface InventorySnapshot {
  /** When the plan was made, ms since the epoch. */
  at: number;
  usage: number;
  hosted: number;
  pinned: number;
  limit: number;
  trigger: number;
  blobCount: number;
  /** The first planned evictions, in order. */
  evict: Array<{ digest: string; size: number; lastServedMs: number; modifiedMs: number; reason: string }>;
}

export async function writeInventorySnapshot(driver: StorageDriver, plan: EvictionPlan, at = Date.now()): Promise<void> {
  const snapshot: InventorySnapshot = {
    at, usage: plan.usage, hosted: plan.hosted, pinned: plan.pinned, limit: plan.limit, trigger: plan.trigger, blobCount: plan.blobCount,
    evict: plan.evict.slice(0, EVICT_KEPT).map((b) => ({ digest: b.digest.value, size: b.size, lastServedMs: b.lastServedMs, modifiedMs: b.modifiedMs, reason: b.reason })),
  };
  await driver.putContent(INVENTORY_SNAPSHOT_KEY, JSON.stringify(snapshot));
}

/** The stored snapshot, or undefined when there is none (or it cannot be read). */
export async function readInventorySnapshot(driver: StorageDriver): Promise<InventorySnapshot | undefined> {
  try {
    const value = JSON.parse((await driver.getContent(INVENTORY_SNAPSHOT_KEY)).toString('utf8')) as InventorySnapshot;
    return typeof value.at === 'number' && Array.isArray(value.evict) ? value : undefined;
  } catch (err) {
    if (isStorageNotFound(err) || err instanceof SyntaxError) return undefined;
    throw err;
  }
}

/** A snapshot as an eviction plan (for display: its `stored` set is empty, never apply it). */
export function planOfSnapshot(snapshot: InventorySnapshot): EvictionPlan {
  const layout = new StorageLayout('');
  const evict: EvictionPlan['evict'] = [];
  for (const b of snapshot.evict) {
    const digest = tryParseDigest(b.digest);
    if (digest) evict.push({ digest, key: layout.blobKey(digest), size: b.size, lastServedMs: b.lastServedMs, modifiedMs: b.modifiedMs, reason: b.reason });
  }
  return {
    usage: snapshot.usage, hosted: snapshot.hosted, pinned: snapshot.pinned, limit: snapshot.limit, trigger: snapshot.trigger,
    blobCount: snapshot.blobCount, evict, stored: new Set(),
  };
}
