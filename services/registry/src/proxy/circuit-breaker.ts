import { RegistryError } from '../../../../lib/oci/errors.js';

/**
 * Fails fast while an upstream is down: after `maxFailures` consecutive failures (network errors,
 * timeouts, 5xx) the circuit opens for `openMs`, and requests that would need the upstream get 503
 * at once instead of each waiting for a timeout. After that one trial request is let through.
 */
export class CircuitBreaker {
  private failures = 0;
  private openUntil = 0;
  private trialInFlight = false;

  constructor(private readonly upstream: string, private readonly maxFailures = 3, private readonly openMs = 30_000) {}

  /** Throws 503 UNAVAILABLE while open; lets one trial request through once the open period ends. */
  check(now = Date.now()): void {
    if (this.failures < this.maxFailures) return;
    if (now < this.openUntil || this.trialInFlight) {
      const retryAfter = Math.max(1, Math.ceil((this.openUntil - now) / 1000));
      throw new RegistryError('UNAVAILABLE', { upstream: this.upstream }, {
        message: `upstream ${this.upstream} is unreachable (${this.failures} consecutive failures); not retrying for ${retryAfter}s`,
        headers: { 'retry-after': String(retryAfter) },
      });
    }
    this.trialInFlight = true;
  }

  success(): void {
    this.failures = 0;
    this.trialInFlight = false;
  }

  failure(now = Date.now()): void {
    this.failures++;
    this.trialInFlight = false;
    if (this.failures >= this.maxFailures) this.openUntil = now + this.openMs;
  }

  /** Failures since the last success (the console's "failing"). */
  get consecutiveFailures(): number {
    return this.failures;
  }

  get isOpen(): boolean {
    return this.failures >= this.maxFailures && Date.now() < this.openUntil;
  }
}
