/**
 * What a cache worker last saw of its upstream, for the gateway's console (GET /_stevedore/status on
 * the worker's socket): the last error and the last Docker Hub-style rate-limit headers.
 */

/** One `ratelimit-limit` / `ratelimit-remaining` value: `100;w=21600` = 100 requests per 21,600 s window. */
export interface RateLimitValue {
  value: number;
  /** The window in seconds (`w=`), when given. */
  windowSeconds?: number;
}

/**
 * Parses a Docker Hub rate-limit header (`100;w=21600`, `100`, or the IETF draft's list form
 * `100, 100;w=21600`: the first item counts). Undefined for anything else.
 */
export function parseRateLimit(raw: string | string[] | undefined): RateLimitValue | undefined {
  const text = (Array.isArray(raw) ? raw[0] : raw)?.split(',')[0]?.trim();
  if (!text) return undefined;
  const [count, ...params] = text.split(';').map((p) => p.trim());
  if (!count || !/^\d{1,15}$/.test(count)) return undefined;
  const result: RateLimitValue = { value: Number(count) };
  for (const param of params) {
    const match = /^w\s*=\s*(\d{1,15})$/i.exec(param);
    if (match) result.windowSeconds = Number(match[1]);
  }
  return result;
}

export interface UpstreamStatusView {
  lastError: { at: string; message: string } | null;
  lastSuccessAt: string | null;
  rateLimit: { limit: RateLimitValue | null; remaining: RateLimitValue | null; at: string } | null;
}

export class UpstreamStatus {
  private lastError: { at: number; message: string } | undefined;
  private lastSuccessAt: number | undefined;
  private rateLimit: { limit: RateLimitValue | undefined; remaining: RateLimitValue | undefined; at: number } | undefined;

  failed(message: string): void {
    // Error texts can be long (undici's causes): the console shows one line.
    this.lastError = { at: Date.now(), message: message.slice(0, 500) };
  }

  /** An answer from the upstream (any status): keeps its rate-limit headers if it sent any. */
  answered(status: number, headers: Record<string, string | string[] | undefined>): void {
    if (status < 500) this.lastSuccessAt = Date.now();
    const limit = parseRateLimit(headers['ratelimit-limit']);
    const remaining = parseRateLimit(headers['ratelimit-remaining']);
    if (limit || remaining) this.rateLimit = { limit, remaining, at: Date.now() };
  }

  view(): UpstreamStatusView {
    const iso = (ms: number | undefined) => (ms === undefined ? null : new Date(ms).toISOString());
    return {
      lastError: this.lastError ? { at: iso(this.lastError.at)!, message: this.lastError.message } : null,
      lastSuccessAt: iso(this.lastSuccessAt),
      rateLimit: this.rateLimit ? { limit: this.rateLimit.limit ?? null, remaining: this.rateLimit.remaining ?? null, at: iso(this.rateLimit.at)! } : null,
    };
  }
}
