/**
 * A costly value (a ranking over megabytes of log or every cached tag: seconds on a large store)
 * computed at most every `maxAgeMs`. Once it is older, callers get the last value at once while a
 * new one is computed (an overview refreshing every 30 s never waits for it); only the first call,
 * or the first after forget(), waits.
 */
export class ReusedValue<T> {
  private last: { at: number; value: T } | undefined;
  private pending: Promise<T> | undefined;
  /** Bumped by forget(): a computation started before it does not count. */
  private generation = 0;

  constructor(private readonly compute: () => Promise<T>, private readonly maxAgeMs: number) {}

  get(): Promise<T> {
    const fresh = this.last !== undefined && Date.now() - this.last.at <= this.maxAgeMs;
    if (!fresh && !this.pending) {
      const generation = this.generation;
      const pending = this.compute().then((value) => {
        if (generation === this.generation) this.last = { at: Date.now(), value };
        return value;
      }).finally(() => {
        if (this.pending === pending) this.pending = undefined;
      });
      pending.catch(() => {});
      this.pending = pending;
    }
    return this.last ? Promise.resolve(this.last.value) : this.pending!;
  }

  /** What it was computed from changed (a delete, an eviction): the next get() waits for a new value. */
  forget(): void {
    this.generation++;
    this.last = undefined;
    this.pending = undefined;
  }
}
