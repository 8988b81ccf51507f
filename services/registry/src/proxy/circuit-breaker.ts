import { RegistryError } from '../../../../lib/oci/errors.js';

/** Whether the upstream answered a probe (any HTTP answer but a 5xx); throws or resolves false when it did not. */
export type UpstreamProbe = () => Promise<boolean>;

export interface CircuitBreakerOptions {
  /** Consecutive failures (connection errors, timeouts, 5xx) that open the circuit. */
  maxFailures?: number;
  /** Time between the end of one probe and the start of the next while the circuit is open. */
  probeIntervalMs?: number;
  /** Told when the circuit opens and when it closes again (for the log). */
  onChange?: (state: 'open' | 'closed', detail: { failures: number; openMs: number }) => void;
}

/**
 * Fails fast while an upstream is down, and notices within about a second when it is back: after
 * `maxFailures` consecutive failures the circuit opens and requests that would need the upstream
 * get 503 at once, while one background probe at a time asks the upstream (`GET /v2/`) every
 * `probeIntervalMs`. The first probe the upstream answers closes the circuit. A fixed open period
 * instead would refuse content the upstream can serve for as long as that period, after every
 * blip. Probe timers are unref'd, and stop() ends them, so they never hold a worker's exit.
 */
export class CircuitBreaker {
  private failures = 0;
  private openedAt = 0;
  private probeTimer: NodeJS.Timeout | undefined;
  private probing = false;
  private stopped = false;
  private readonly maxFailures: number;
  private readonly probeIntervalMs: number;

  constructor(private readonly upstream: string, private readonly probe: UpstreamProbe, private readonly options: CircuitBreakerOptions = {}) {
    this.maxFailures = options.maxFailures ?? 3;
    this.probeIntervalMs = options.probeIntervalMs ?? 1_000;
  }

  /** Failures since the last success (the console's "failing"). */
  get consecutiveFailures(): number {
    return this.failures;
  }

  get isOpen(): boolean {
    return this.failures >= this.maxFailures;
  }

  /** Throws 503 UNAVAILABLE (Retry-After: the probe interval) while the circuit is open. */
  check(): void {
    if (!this.isOpen) return;
    const retryAfter = Math.max(1, Math.ceil(this.probeIntervalMs / 1000));
    throw new RegistryError('UNAVAILABLE', { upstream: this.upstream }, {
      message: `upstream ${this.upstream} is unreachable (${this.failures} consecutive failures); checking it every ${retryAfter}s`,
      headers: { 'retry-after': String(retryAfter) },
    });
  }

  /** The upstream answered (anything but a 5xx): the circuit closes. */
  success(): void {
    const wasOpen = this.isOpen;
    this.failures = 0;
    this.cancelProbe();
    if (wasOpen) this.options.onChange?.('closed', { failures: 0, openMs: Date.now() - this.openedAt });
  }

  /** A connection failure, timeout or 5xx. */
  failure(): void {
    const wasOpen = this.isOpen;
    this.failures++;
    if (!wasOpen && this.isOpen) {
      this.openedAt = Date.now();
      this.options.onChange?.('open', { failures: this.failures, openMs: 0 });
      this.scheduleProbe();
    }
  }

  /** Stops probing for good (the worker is shutting down). */
  stop(): void {
    this.stopped = true;
    this.cancelProbe();
  }

  private cancelProbe(): void {
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
  }

  private scheduleProbe(): void {
    if (this.stopped || this.probing || this.probeTimer || !this.isOpen) return;
    this.probeTimer = setTimeout(() => {
      this.probeTimer = undefined;
      void this.runProbe();
    }, this.probeIntervalMs);
    this.probeTimer.unref();
  }

  private async runProbe(): Promise<void> {
    if (this.stopped || !this.isOpen) return;
    this.probing = true;
    let up = false;
    try {
      up = await this.probe();
    } catch {
      up = false;
    } finally {
      this.probing = false;
    }
    if (this.stopped) return;
    if (up) this.success();
    else this.scheduleProbe();
  }
}
