import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import bcrypt from 'bcryptjs';
import type { Logger } from '../../../lib/log.js';

export interface AuthenticatedUser {
  name: string;
  admin: boolean;
}

/** Users are re-read from disk at most this often, so edits take effect without a restart. */
const RELOAD_CHECK_MS = 1_000;

/**
 * htpasswd users (bcrypt, as `htpasswd -B` writes them) and their roles: users listed in the
 * admins file (one name a line) may write; everyone else is read-only. bcrypt is slow by design,
 * so a successful check is remembered (by a hash of the password, never the password) until the
 * files change.
 */
export class UserDirectory {
  private users = new Map<string, string>();
  private admins = new Set<string>();
  private verified = new Map<string, boolean>();
  private stamp = '';
  private checkedAt = 0;

  constructor(private readonly htpasswdPath: string, private readonly adminsPath: string, private readonly log: Logger) {}

  private async refresh(): Promise<void> {
    const now = Date.now();
    if (now - this.checkedAt < RELOAD_CHECK_MS) return;
    this.checkedAt = now;
    const [users, admins] = await Promise.all([stat(this.htpasswdPath).catch(() => undefined), stat(this.adminsPath).catch(() => undefined)]);
    const stamp = `${users?.mtimeMs}:${users?.size}:${admins?.mtimeMs}:${admins?.size}`;
    if (stamp === this.stamp) return;
    this.stamp = stamp;
    this.users = parseHtpasswd(await readFile(this.htpasswdPath, 'utf8').catch(() => ''));
    this.admins = new Set((await readFile(this.adminsPath, 'utf8').catch(() => '')).split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#')));
    this.verified.clear();
    this.log.info({ users: this.users.size, admins: this.admins.size }, 'user files loaded');
  }

  /** Checks a Basic Authorization header; undefined when missing, malformed or wrong. */
  async authenticate(authorization: string | undefined): Promise<AuthenticatedUser | undefined> {
    // The scheme name is case-insensitive (RFC 7235 section 2.1).
    if (!authorization || !/^basic /i.test(authorization)) return undefined;
    await this.refresh();
    const decoded = Buffer.from(authorization.slice(6).trim(), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon <= 0) return undefined;
    const name = decoded.slice(0, colon);
    const password = decoded.slice(colon + 1);
    const hash = this.users.get(name);
    if (!hash) return undefined;
    const key = `${name}\0${createHash('sha256').update(hash).update('\0').update(password).digest('hex')}`;
    let ok = this.verified.get(key);
    if (ok === undefined) {
      ok = /^\$2[aby]\$/.test(hash) && (await bcrypt.compare(password, hash.replace(/^\$2y\$/, '$2b$')));
      if (this.verified.size > 10_000) this.verified.clear();
      this.verified.set(key, ok);
    }
    return ok ? { name, admin: this.admins.has(name) } : undefined;
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
