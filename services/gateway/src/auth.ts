import { readFile, stat } from 'node:fs/promises';
import bcrypt from 'bcryptjs';
import type { Logger } from '../../../lib/log.js';

export interface AuthenticatedUser {
  name: string;
  admin: boolean;
}

/** Users are re-read from disk at most this often, so edits take effect without a restart. */
const RELOAD_CHECK_MS = 1_000;
/** Credential checks remembered at most (then all are forgotten and checked again). */
const MAX_REMEMBERED = 10_000;

/**
 * htpasswd users (bcrypt, as `htpasswd -B` writes them) and their roles: users listed in the
 * admins file (one name a line) may write; everyone else is read-only. bcrypt is slow by design,
 * so a check's outcome is remembered in memory (by the Authorization header) until the files change.
 */
export class UserDirectory {
  private users = new Map<string, string>();
  private admins = new Set<string>();
  /** Checks by Authorization header: the user name once known (null: refused), and the check itself. */
  private verified = new Map<string, { name?: string | null; pending: Promise<string | undefined> }>();
  private stamp = '';
  private checkedAt = 0;
  private refreshing: Promise<void> | undefined;

  constructor(private readonly htpasswdPath: string, private readonly adminsPath: string, private readonly log: Logger) {}

  /** Re-reads the files if they changed, at most every RELOAD_CHECK_MS; concurrent callers wait for the same read. */
  private fresh(): Promise<void> | undefined {
    if (!this.refreshing && Date.now() - this.checkedAt >= RELOAD_CHECK_MS) {
      this.refreshing = this.refresh().finally(() => {
        this.checkedAt = Date.now();
        this.refreshing = undefined;
      });
    }
    return this.refreshing;
  }

  private async refresh(): Promise<void> {
    const [users, admins] = await Promise.all([stat(this.htpasswdPath).catch(() => undefined), stat(this.adminsPath).catch(() => undefined)]);
    const stamp = `${users?.mtimeMs}:${users?.size}:${admins?.mtimeMs}:${admins?.size}`;
    if (stamp === this.stamp) return;
    this.stamp = stamp;
    this.users = parseHtpasswd(await readFile(this.htpasswdPath, 'utf8').catch(() => ''));
    this.admins = new Set((await readFile(this.adminsPath, 'utf8').catch(() => '')).split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#')));
    this.verified.clear();
    this.log.info({ users: this.users.size, admins: this.admins.size }, 'user files loaded');
  }

  /**
   * Checks a Basic Authorization header; undefined when missing, malformed or wrong. Answers at
   * once (no promise) when the same header was checked before and the files have not changed.
   */
  authenticate(authorization: string | undefined): AuthenticatedUser | undefined | Promise<AuthenticatedUser | undefined> {
    // The scheme name is case-insensitive (RFC 7235 section 2.1).
    if (!authorization || !/^basic /i.test(authorization)) return undefined;
    const loading = this.fresh();
    if (loading) return loading.then(() => this.check(authorization));
    return this.check(authorization);
  }

  private check(authorization: string): AuthenticatedUser | undefined | Promise<AuthenticatedUser | undefined> {
    // Requests arriving together with the same new credentials share one bcrypt check (each takes
    // tens of milliseconds of CPU). Keyed by the header itself: hashing it (crypto.hash, sha256) on
    // every request made the whole gateway measurably slower (bench/gateway-bench.ts, auth variant:
    // ~2x CPU per request under a profiler, 10-30% in plain A/B runs). The accepted headers stay in
    // this process's memory only (bounded, dropped when the user files change); never in a log.
    const key = authorization;
    let check = this.verified.get(key);
    if (!check) {
      const pending = this.verify(authorization);
      check = { pending };
      const entry = check;
      void pending.then((name) => { entry.name = name ?? null; });
      if (this.verified.size >= MAX_REMEMBERED) this.verified.clear();
      this.verified.set(key, check);
    }
    if (check.name === undefined) return check.pending.then((name) => this.user(name));
    return this.user(check.name ?? undefined);
  }

  private user(name: string | undefined): AuthenticatedUser | undefined {
    return name === undefined ? undefined : { name, admin: this.admins.has(name) };
  }

  /** The user name if the header's credentials match the htpasswd file. */
  private async verify(authorization: string): Promise<string | undefined> {
    const decoded = Buffer.from(authorization.slice(6).trim(), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon <= 0) return undefined;
    const name = decoded.slice(0, colon);
    const stored = this.users.get(name);
    if (!stored || !/^\$2[aby]\$/.test(stored)) return undefined;
    // A malformed hash is a refusal, not an error.
    const ok = await bcrypt.compare(decoded.slice(colon + 1), stored.replace(/^\$2y\$/, '$2b$')).catch(() => false);
    return ok ? name : undefined;
  }
}

export function parseHtpasswd(text: string): Map<string, string> {
  const users = new Map<string, string>();
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (!trimmed || trimmed.startsWith('#')) continue;
    const colon = trimmed.indexOf(':');
    if (colon > 0) users.set(trimmed.slice(0, colon), trimmed.slice(colon + 1));
  }
  return users;
}
