import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { isStorageNotFound, type StorageDriver, type VersionedContent } from './driver/driver.js';

/**
 * A lease in the store: one holder at a time for work that must not run twice at once across the
 * appliances sharing a store (the cleaner and GC). The store's conditional writes are the only
 * coordination: acquire = putIfAbsent (S3 `If-None-Match: *`), or take over an expired record with
 * replaceIfMatch on the version read (S3 `If-Match`), so of two contenders that read the same expired
 * record only one replace succeeds. Renew = replaceIfMatch on the version we wrote: it fails once
 * someone took the lease over, and that is how a holder learns it lost it.
 *
 * Clock skew: `expiresAt` is written by the holder's clock and judged by the contender's. The holder
 * renews every ttl/3, so a lease it keeps renewing has at least 2/3 of its ttl left on its own clock;
 * a contender whose clock runs ahead by less than that never takes a live lease. Appliances are
 * expected to run NTP (skew of well under a second); the default ttl (90 s) leaves a minute of margin.
 */

export interface LeaseRecord {
  /** Who holds it: `host/pid/random` (unique per acquisition attempt's process). */
  holder: string;
  /** Epoch ms, holder's clock; a record whose expiresAt has passed is free (released records have 0). */
  expiresAt: number;
  renewedAt: number;
  /** Where the holder serves the work in progress to the other appliances (a cache fill's peer URL). */
  source?: string;
}

export type LeaseAttempt =
  | { acquired: true; lease: HeldLease }
  | { acquired: false; heldBy: LeaseRecord };

export function leaseKey(name: string): string {
  return `_state/leases/${name}`;
}

/** A holder identity for this process: host and pid for people, a random part so two attempts never match. */
export function leaseHolderId(): string {
  return `${hostname()}/${process.pid}/${randomUUID().slice(0, 8)}`;
}

function parseRecord(content: VersionedContent): LeaseRecord | undefined {
  try {
    const value = JSON.parse(content.data.toString('utf8')) as Partial<LeaseRecord>;
    if (typeof value.holder === 'string' && typeof value.expiresAt === 'number') {
      return {
        holder: value.holder, expiresAt: value.expiresAt, renewedAt: typeof value.renewedAt === 'number' ? value.renewedAt : 0,
        ...(typeof value.source === 'string' ? { source: value.source } : {}),
      };
    }
  } catch {
    // A torn or foreign record counts as expired: the next acquire replaces it (still conditionally).
  }
  return undefined;
}

async function readLease(driver: StorageDriver, key: string): Promise<VersionedContent | undefined> {
  try {
    return await driver.getVersioned(key);
  } catch (err) {
    if (isStorageNotFound(err)) return undefined;
    throw err;
  }
}

/** The lease record as stored now (undefined when there is none), for status output. */
export async function readLeaseRecord(driver: StorageDriver, name: string): Promise<LeaseRecord | undefined> {
  const content = await readLease(driver, leaseKey(name));
  return content ? parseRecord(content) : undefined;
}

/** Tries once to take lease `name` for `ttlMs`; never waits for a live holder. */
export async function acquireLease(driver: StorageDriver, name: string, options: { ttlMs: number; holder?: string; source?: string; now?: () => number }): Promise<LeaseAttempt> {
  const key = leaseKey(name);
  const now = options.now ?? Date.now;
  const holder = options.holder ?? leaseHolderId();
  const record = (): string => {
    const at = now();
    return JSON.stringify({ holder, expiresAt: at + options.ttlMs, renewedAt: at, ...(options.source ? { source: options.source } : {}) } satisfies LeaseRecord);
  };
  // Two rounds: a lease that vanished between our failed create and our read (a release by delete,
  // a cleanup) is worth one more create; after that, whoever is there holds it.
  for (let round = 0; round < 2; round += 1) {
    const data = record();
    if (await driver.putIfAbsent(key, data)) {
      const created = await driver.getVersioned(key);
      return { acquired: true, lease: new HeldLease(driver, name, holder, options.ttlMs, created.version, now, options.source) };
    }
    const current = await readLease(driver, key);
    if (!current) continue;
    const existing = parseRecord(current);
    if (existing && existing.expiresAt > now()) return { acquired: false, heldBy: existing };
    const takeover = record();
    const version = await driver.replaceIfMatch(key, takeover, current.version);
    if (version !== undefined) return { acquired: true, lease: new HeldLease(driver, name, holder, options.ttlMs, version, now, options.source) };
    // Another contender replaced it first: report what it wrote.
    const winner = await readLease(driver, key);
    const winnerRecord = winner ? parseRecord(winner) : undefined;
    if (winnerRecord && winnerRecord.expiresAt > now()) return { acquired: false, heldBy: winnerRecord };
  }
  const last = await readLease(driver, key);
  return { acquired: false, heldBy: (last && parseRecord(last)) ?? { holder: 'unknown', expiresAt: now() + options.ttlMs, renewedAt: 0 } };
}

/** A lease we hold: renew it while working, release it when done. */
export class HeldLease {
  private timer: NodeJS.Timeout | undefined;
  private lostReported = false;
  /** A renew in flight (release waits for it: its write would otherwise race release's). */
  private renewing: Promise<boolean> | undefined;
  private releasing = false;
  /** Set once a renew found the lease taken over (or unreadable): stop doing work that needs it. */
  lost = false;
  expiresAt: number;

  constructor(
    private readonly driver: StorageDriver,
    readonly name: string,
    readonly holder: string,
    readonly ttlMs: number,
    private version: string,
    private readonly now: () => number,
    readonly source?: string,
  ) {
    this.expiresAt = now() + ttlMs;
  }

  /** Extends the lease by ttl; false (and `lost`) when someone else took it over meanwhile. */
  async renew(): Promise<boolean> {
    if (this.lost) return false;
    const at = this.now();
    const record: LeaseRecord = { holder: this.holder, expiresAt: at + this.ttlMs, renewedAt: at, ...(this.source ? { source: this.source } : {}) };
    const version = await this.driver.replaceIfMatch(leaseKey(this.name), JSON.stringify(record), this.version);
    if (version === undefined) {
      this.lost = true;
      return false;
    }
    this.version = version;
    this.expiresAt = record.expiresAt;
    return true;
  }

  /**
   * Renews every ttl/3 until release(); `onLost` once if a renew fails. A renew that errors (store
   * unreachable) is retried at the next tick: the lease only counts as lost once someone took it.
   */
  keepRenewed(onLost: (err?: unknown) => void): void {
    const tick = () => {
      this.timer = setTimeout(() => {
        if (this.releasing) return;
        this.renewing = this.renew();
        this.renewing.then((held) => {
          if (held) tick();
          else this.reportLost(onLost);
        }, (err: unknown) => {
          if (this.now() >= this.expiresAt) this.reportLost(onLost, err);
          else tick();
        });
      }, Math.max(10, Math.floor(this.ttlMs / 3)));
      this.timer.unref();
    };
    tick();
  }

  private reportLost(onLost: (err?: unknown) => void, err?: unknown): void {
    this.lost = true;
    if (this.lostReported) return;
    this.lostReported = true;
    onLost(err);
  }

  /**
   * Gives the lease up if it is still ours: replaceIfMatch to an expired record (expiresAt 0) rather
   * than getVersioned + delete, because a delete is not conditional: between our read and our delete
   * another appliance may have taken an expired lease over, and we would delete ITS lease. The
   * conditional replace cannot touch a record someone else wrote; the expired record costs one small key.
   */
  async release(): Promise<void> {
    clearTimeout(this.timer);
    this.releasing = true;
    await this.renewing?.catch(() => {});
    if (this.lost) return;
    const record: LeaseRecord = { holder: this.holder, expiresAt: 0, renewedAt: this.now() };
    // Undefined: someone took it over after it expired; theirs now, nothing to give up.
    await this.driver.replaceIfMatch(leaseKey(this.name), JSON.stringify(record), this.version);
    this.lost = true;
  }

  /**
   * Gives the lease up by deleting its key: for leases named after one piece of work (a blob's fill)
   * that would otherwise leave a key per blob behind. A delete is not conditional, so this is only
   * for a holder that kept renewing (not `lost`): a lease renewed every ttl/3 cannot have expired and
   * been taken over, short of a clock jump or a store outage longer than 2/3 of the ttl.
   */
  async releaseByDelete(): Promise<void> {
    clearTimeout(this.timer);
    this.releasing = true;
    await this.renewing?.catch(() => {});
    if (this.lost || this.now() >= this.expiresAt) return;
    this.lost = true;
    await this.driver.delete(leaseKey(this.name));
  }
}
