export interface BoundedMapOptions<V> {
  /** With `weigh`: the most the values may weigh together (e.g. bytes of cached bodies). */
  maxWeight?: number;
  weigh?: (value: V) => number;
}

/**
 * A Map that forgets its least recently used entries past `maxEntries` (and, if given, past
 * `maxWeight`): for in-memory caches of on-disk facts (links, tags, manifests), which are
 * re-derived from disk when forgotten.
 */
export class BoundedMap<K, V> {
  private readonly entries = new Map<K, V>();
  private weight = 0;
  private readonly maxWeight: number;
  private readonly weigh: ((value: V) => number) | undefined;

  constructor(private readonly maxEntries: number, options: BoundedMapOptions<V> = {}) {
    this.maxWeight = options.maxWeight ?? Infinity;
    this.weigh = options.weigh;
  }

  get size(): number {
    return this.entries.size;
  }

  get(key: K): V | undefined {
    const value = this.entries.get(key);
    if (value !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, value);
    }
    return value;
  }

  has(key: K): boolean {
    return this.entries.has(key);
  }

  set(key: K, value: V): void {
    this.delete(key);
    this.entries.set(key, value);
    if (this.weigh) this.weight += this.weigh(value);
    while (this.entries.size > this.maxEntries || (this.weight > this.maxWeight && this.entries.size > 1)) {
      this.delete(this.entries.keys().next().value as K);
    }
  }

  delete(key: K): void {
    if (this.weigh) {
      const old = this.entries.get(key);
      if (old !== undefined) this.weight -= this.weigh(old);
    }
    this.entries.delete(key);
  }

  clear(): void {
    this.entries.clear();
    this.weight = 0;
  }
}
