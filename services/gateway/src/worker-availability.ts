import { connect } from 'node:net';
import type { WorkerPlan } from '../../../lib/appliance.js';

const PROBE_INTERVAL_MS = 100;
const PROBE_TIMEOUT_MS = 1_000;

/** Whether something accepts connections on the unix socket (a worker that is listening). */
function accepts(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ path: socketPath });
    const done = (up: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(up);
    };
    const timer = setTimeout(() => done(false), PROBE_TIMEOUT_MS);
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

/**
 * Which workers accept connections. A worker that is starting (right after `stevedore start`) or
 * restarting (PM2 brings it back in ~0.3 s) is waited for instead of failing the request: requests
 * for it share one probe loop and go on as soon as its socket accepts, or give up after `waitMs`.
 */
export class WorkerAvailability {
  private readonly down = new Set<string>();
  private readonly waits = new Map<string, Promise<boolean>>();
  private readonly unknown: Set<string>;

  constructor(workers: readonly WorkerPlan[], private readonly waitMs: number) {
    // Not known to be up until the first probe or answer: at start-up the workers may still be starting.
    this.unknown = new Set(workers.map((w) => w.socketPath));
  }

  /** Resolves true once the worker accepts connections (at once when it is known to), false after the wait. */
  ready(worker: WorkerPlan): boolean | Promise<boolean> {
    const key = worker.socketPath;
    if (!this.down.has(key) && !this.unknown.has(key)) return true;
    let wait = this.waits.get(key);
    if (!wait) {
      wait = this.probeUntilUp(key).finally(() => this.waits.delete(key));
      this.waits.set(key, wait);
    }
    return wait;
  }

  /** The worker refused a connection (not listening): the next requests wait for it. */
  markDown(worker: WorkerPlan): void {
    this.down.add(worker.socketPath);
  }

  /** The worker answered a request. */
  markUp(worker: WorkerPlan): void {
    this.down.delete(worker.socketPath);
    this.unknown.delete(worker.socketPath);
  }

  private async probeUntilUp(socketPath: string): Promise<boolean> {
    const deadline = Date.now() + this.waitMs;
    for (;;) {
      if (await accepts(socketPath)) {
        this.down.delete(socketPath);
        this.unknown.delete(socketPath);
        return true;
      }
      if (Date.now() + PROBE_INTERVAL_MS > deadline) return false;
      await sleep(PROBE_INTERVAL_MS);
    }
  }
}
