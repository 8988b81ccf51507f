import { Agent, request, type Dispatcher } from 'undici';
import type { Readable } from 'node:stream';
import type { Logger } from '../../../../lib/log.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import type { UpstreamCredentials, UpstreamEndpoint } from '../../../../lib/upstreams.js';
import { CircuitBreaker } from './circuit-breaker.js';
import { UpstreamStatus } from './upstream-status.js';
import { parseChallenge, type Challenge } from './www-authenticate.js';

export interface UpstreamResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable & { dump(): Promise<void> };
}

/**
 * Reads an upstream response body (a manifest, a tag list) into memory, at most `limit` bytes: past
 * it the body is dropped and `tooLarge()` thrown, so a hostile or broken upstream cannot fill memory.
 */
export async function readBodyCapped(res: UpstreamResponse, limit: number, tooLarge: () => Error): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of res.body as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > limit) {
      res.body.destroy();
      throw tooLarge();
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, total);
}

interface CachedToken {
  token: string;
  expiresAt: number;
}

const MAX_REDIRECTS = 5;
/** Tokens are renewed this long before they expire, so none expires mid-request. */
const TOKEN_MARGIN_MS = 10_000;
/** A breaker probe waits at most this long for an answer (or the upstream timeout, if shorter). */
const PROBE_TIMEOUT_MS = 2_000;

/**
 * The upstream answered, but not as hoped (a token endpoint's error status, a redirect loop): it is
 * reachable, so only a 5xx counts against the circuit breaker.
 */
class UpstreamAnswerError extends Error {
  constructor(message: string, readonly status: number) {
    super(message);
  }
}

function header(headers: UpstreamResponse['headers'], name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * Talks to one upstream registry: anonymous, Basic, or the Docker/OCI token flow (challenge →
 * token endpoint → cached per scope until expiry), redirects (credentials never follow to another
 * host), timeouts, and a circuit breaker so a dead upstream fails fast.
 */
export class UpstreamClient {
  readonly breaker: CircuitBreaker;
  /** The last error and rate-limit headers seen, for the console (see statusView). */
  readonly status = new UpstreamStatus();
  private readonly agent: Agent;
  private readonly tokens = new Map<string, CachedToken>();
  private readonly tokenFetches = new Map<string, Promise<string>>();
  /** The upstream's auth scheme, learned from its first challenge. */
  private scheme: 'none' | 'basic' | 'bearer' = 'none';
  private bearerChallenge: Challenge | undefined;

  private readonly probeTimeoutMs: number;

  constructor(
    readonly endpoint: UpstreamEndpoint,
    private readonly credentials: UpstreamCredentials | undefined,
    private readonly log: Logger,
    timeoutMs: number,
    breakerOptions: { maxFailures?: number; probeIntervalMs?: number } = {},
  ) {
    this.agent = new Agent({ connectTimeout: timeoutMs, headersTimeout: timeoutMs, bodyTimeout: timeoutMs, keepAliveTimeout: 30_000 });
    this.probeTimeoutMs = Math.min(timeoutMs, PROBE_TIMEOUT_MS);
    this.breaker = new CircuitBreaker(endpoint.host, () => this.probe(), {
      ...breakerOptions,
      onChange: (state, { failures, openMs }) => {
        if (state === 'open') log.warn({ upstream: endpoint.host, failures }, 'upstream circuit open: failing fast, probing the upstream in the background');
        else log.info({ upstream: endpoint.host, downMs: openMs }, 'upstream answered a probe: circuit closed');
      },
    });
  }

  async close(): Promise<void> {
    this.breaker.stop();
    await this.agent.close();
  }

  /**
   * The circuit breaker's probe: `GET /v2/` without credentials. Any HTTP answer but a 5xx (a 401
   * challenge included) means the upstream is back; a connection error or timeout means it is not.
   * An answer counts for the console's status as any request's does (its last success).
   */
  private async probe(): Promise<boolean> {
    const res = await request(new URL('/v2/', this.endpoint.url), {
      method: 'GET', headers: { 'user-agent': 'stevedore' }, dispatcher: this.agent,
      headersTimeout: this.probeTimeoutMs, bodyTimeout: this.probeTimeoutMs,
      signal: AbortSignal.timeout(this.probeTimeoutMs),
    });
    await res.body.dump().catch(() => {});
    this.status.answered(res.statusCode, res.headers);
    return res.statusCode < 500;
  }

  /**
   * Sends GET or HEAD for `path` (under /v2/) with `scope` (`repository:<name>:pull`) for tokens.
   * Resolves with any HTTP status (callers map 404/429/...); throws 503 UNAVAILABLE when the upstream
   * cannot be reached, and 401 UNAUTHORIZED when it refuses our credentials.
   */
  async request(method: 'GET' | 'HEAD', path: string, scope: string, accept?: string): Promise<UpstreamResponse> {
    this.breaker.check();
    let response: UpstreamResponse;
    try {
      response = await this.send(method, path, scope, accept);
    } catch (err) {
      this.status.failed((err as Error).message);
      if (err instanceof RegistryError) {
        // Our credentials were refused: the upstream is up, so the breaker stays closed.
        if (err.code === 'UNAUTHORIZED' || err.code === 'DENIED') this.breaker.success();
        else this.breaker.failure();
        throw err;
      }
      this.log.warn({ upstream: this.endpoint.host, path, err: (err as Error).message }, 'upstream request failed');
      // Only a connection failure, a timeout or a 5xx counts against the upstream.
      if (err instanceof UpstreamAnswerError && err.status < 500) {
        this.breaker.success();
        throw new RegistryError('UNAVAILABLE', { upstream: this.endpoint.host, upstreamStatus: err.status }, {
          status: 502, message: `upstream ${this.endpoint.host} answered unexpectedly: ${err.message}`,
        });
      }
      this.breaker.failure();
      throw new RegistryError('UNAVAILABLE', { upstream: this.endpoint.host }, {
        message: `upstream ${this.endpoint.host} is unreachable: ${(err as Error).message}`,
      });
    }
    this.status.answered(response.status, response.headers);
    if (response.status >= 500) {
      this.breaker.failure();
      this.status.failed(`${method} ${path} answered ${response.status}`);
    } else this.breaker.success();
    return response;
  }

  /** What GET /_stevedore/status on the worker's socket answers (the console's upstream state). */
  statusView(): Record<string, unknown> {
    return { upstream: this.endpoint.host, circuitOpen: this.breaker.isOpen, consecutiveFailures: this.breaker.consecutiveFailures, ...this.status.view() };
  }

  private async send(method: 'GET' | 'HEAD', path: string, scope: string, accept?: string): Promise<UpstreamResponse> {
    let authorization = await this.authorizationFor(scope);
    for (let attempt = 0; ; attempt++) {
      const response = await this.follow(method, new URL(path, this.endpoint.url), accept, authorization);
      if (response.status !== 401) return response;
      await response.body.dump();
      const challenge = parseChallenge(header(response.headers, 'www-authenticate'));
      if (attempt > 0 || !challenge) throw this.refused();
      if (challenge.scheme === 'bearer') {
        this.scheme = 'bearer';
        this.bearerChallenge = challenge;
      } else if (challenge.scheme === 'basic') {
        this.scheme = 'basic';
        if (!this.credentials) {
          throw new RegistryError('UNAUTHORIZED', { upstream: this.endpoint.host }, {
            message: `upstream ${this.endpoint.host} requires credentials; add them to the auths file`,
          });
        }
      }
      const next = await this.authorizationFor(challenge.params.scope ?? scope, authorization);
      // Sending again what was just refused (the same Basic credentials) cannot succeed.
      if (next === authorization) throw this.refused();
      authorization = next;
    }
  }

  private refused(): RegistryError {
    return new RegistryError('UNAUTHORIZED', { upstream: this.endpoint.host }, {
      message: this.credentials
        ? `upstream ${this.endpoint.host} rejected the configured credentials`
        : `upstream ${this.endpoint.host} requires credentials; add them to the auths file`,
    });
  }

  /** Follows redirects (blob storage often redirects to a CDN); Authorization only goes to the upstream's own origin. */
  private async follow(method: 'GET' | 'HEAD', url: URL, accept: string | undefined, authorization: string | undefined): Promise<UpstreamResponse> {
    let current = url;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const headers: Record<string, string> = { 'user-agent': 'stevedore' };
      if (accept) headers.accept = accept;
      if (authorization && current.origin === this.endpoint.url.origin) headers.authorization = authorization;
      const res: Dispatcher.ResponseData = await request(current, { method, headers, dispatcher: this.agent });
      const location = header(res.headers, 'location');
      if ([301, 302, 303, 307, 308].includes(res.statusCode) && location) {
        await res.body.dump();
        current = new URL(location, current);
        continue;
      }
      return { status: res.statusCode, headers: res.headers, body: res.body as unknown as UpstreamResponse['body'] };
    }
    throw new UpstreamAnswerError(`more than ${MAX_REDIRECTS} redirects`, 310);
  }

  private basic(): string | undefined {
    if (!this.credentials) return undefined;
    return `Basic ${Buffer.from(`${this.credentials.username}:${this.credentials.password}`).toString('base64')}`;
  }

  /**
   * The Authorization header for `scope`. `rejected` is the header the upstream just answered 401 to
   * (or undefined if we sent none): a cached token is reused unless it is that one.
   */
  private async authorizationFor(scope: string, rejected?: string): Promise<string | undefined> {
    if (this.scheme === 'basic') return this.basic();
    if (this.scheme !== 'bearer' || !this.bearerChallenge) return undefined;
    const cached = this.tokens.get(scope);
    if (cached && cached.expiresAt > Date.now() && `Bearer ${cached.token}` !== rejected) return `Bearer ${cached.token}`;
    return `Bearer ${await this.token(this.bearerChallenge, scope)}`;
  }

  /** A new token for `scope`; concurrent requests that need one share a single token request. */
  private token(challenge: Challenge, scope: string): Promise<string> {
    let pending = this.tokenFetches.get(scope);
    if (!pending) {
      pending = this.fetchToken(challenge, scope).finally(() => this.tokenFetches.delete(scope));
      this.tokenFetches.set(scope, pending);
    }
    return pending;
  }

  private async fetchToken(challenge: Challenge, scope: string): Promise<string> {
    const realm = challenge.params.realm;
    if (!realm) throw new Error('bearer challenge without realm');
    const url = new URL(realm);
    if (challenge.params.service) url.searchParams.set('service', challenge.params.service);
    url.searchParams.set('scope', scope);
    const headers: Record<string, string> = { 'user-agent': 'stevedore' };
    const basic = this.basic();
    if (basic) headers.authorization = basic;
    const res = await request(url, { method: 'GET', headers, dispatcher: this.agent });
    if (res.statusCode === 401 || res.statusCode === 403) {
      await res.body.dump();
      throw new RegistryError('UNAUTHORIZED', { upstream: this.endpoint.host }, {
        message: `the token service of upstream ${this.endpoint.host} rejected ${basic ? 'the configured credentials' : 'an anonymous request'}`,
      });
    }
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new UpstreamAnswerError(`token endpoint answered ${res.statusCode}`, res.statusCode);
    }
    const body = (await res.body.json()) as { token?: string; access_token?: string; expires_in?: number };
    const token = body.token ?? body.access_token;
    if (!token) throw new Error('token endpoint answered without a token');
    const lifetimeMs = (typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 60) * 1000;
    this.tokens.set(scope, { token, expiresAt: Date.now() + Math.max(lifetimeMs - TOKEN_MARGIN_MS, 1000) });
    return token;
  }
}

export { header as responseHeader };
