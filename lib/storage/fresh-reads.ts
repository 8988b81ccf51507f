/**
 * Coalesces concurrent reads of one key WITHOUT ever answering a caller with a read that began
 * before the caller asked: a caller that finds a read in flight waits for the next one (started
 * after it arrived), which every caller arriving meanwhile shares. So a write another appliance
 * acknowledged before a request arrived is always seen, and N concurrent requests for one tag
 * cost at most two store reads at a time instead of N.
 */
export class FreshReads<T> {
  private readonly flights = new Map<string, { promise: Promise<T>; next?: Promise<T> }>();

  read(key: string, load: () => Promise<T>): Promise<T> {
    const current = this.flights.get(key);
    if (!current) return this.start(key, load);
    current.next ??= current.promise.then(noop, noop).then(() => this.start(key, load));
    return current.next;
  }

  private start(key: string, load: () => Promise<T>): Promise<T> {
    const flight: { promise: Promise<T>; next?: Promise<T> } = { promise: Promise.resolve().then(load) };
    this.flights.set(key, flight);
    const done = () => {
      if (this.flights.get(key) === flight) this.flights.delete(key);
    };
    flight.promise.then(done, done);
    return flight.promise;
  }
}

function noop(): void {}
