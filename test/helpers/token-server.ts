import { execFile } from 'node:child_process';
import { createHash, createPrivateKey, randomBytes, sign, timingSafeEqual, X509Certificate, type KeyObject } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { tempDir } from './processes.js';

/**
 * A small Docker/OCI token issuer for tests (the "Docker Registry v2 authentication via central service" protocol),
 * good enough for the real CNCF distribution 2.8 (`docker-registry` with `auth.token`) to accept its tokens.
 *
 *   GET  /token?service=S&scope=repository:NAME:pull,push[&scope=...]   (optional Basic credentials)
 *   POST /token  (OAuth2 form: grant_type=password&username=..&password=..&service=..&scope=..)
 *   → 200 { token, access_token, expires_in, issued_at }
 *
 * Tokens are RS256 JWTs whose header carries either `x5c` (signing certificate + CA, verified by distribution
 * against `rootcertbundle`; the default) or `kid` (a libtrust fingerprint of the CA key, which then signs).
 * The RSA keys and certificates are made with the `openssl` CLI in a temp dir at start-up.
 */

const execFileP = promisify(execFile);

export interface TokenAccess {
  type: string;
  name: string;
  actions: string[];
}

export interface TokenRequest {
  /** Requested scopes joined by spaces (OAuth2 style); '' when none. */
  scope: string;
  scopes: string[];
  /** The authenticated user, or null for anonymous requests (including rejected ones: see `status`). */
  user: string | null;
  /** The username that was presented (even when the password was wrong). */
  presentedUser: string | null;
  service: string | null;
  method: string;
  status: number;
  /** What the issued token grants (empty when no token was issued). */
  granted: TokenAccess[];
}

export interface TokenServerOptions {
  /** username → password accepted for Basic auth (and OAuth2 password grant). */
  users?: Record<string, string>;
  /** Anonymous requests get pull-only tokens; without it they get 401. */
  anonymousPull?: boolean;
  /** Service name (the token's `aud`); must match distribution's `auth.token.service`. */
  service?: string;
  /** Issuer (the token's `iss`); must match distribution's `auth.token.issuer`. */
  issuer?: string;
  /** Token lifetime in seconds (default 300). */
  expiresIn?: number;
  /** How the token names its signing key: `x5c` chain (default) or libtrust `kid` of the root key. */
  keyMode?: 'x5c' | 'kid';
  /**
   * Access policy: which of the requested actions `user` (null = anonymous) gets on a resource.
   * Default: authenticated users get whatever they ask for; anonymous users get `pull` if `anonymousPull`.
   */
  authorize?: (user: string | null, resource: { type: string; name: string }, requested: string[]) => string[];
}

export interface MintOptions {
  sub?: string;
  access?: TokenAccess[];
  /** Overrides (or additions) to the standard claims, e.g. `{ exp: 0 }` or `{ aud: 'other' }`. */
  claims?: Record<string, unknown>;
  /** Overrides to the JOSE header. */
  header?: Record<string, unknown>;
  expiresIn?: number;
  /** Sign with this key instead of the server's (e.g. an untrusted key). */
  key?: KeyObject;
}

export interface TokenServer {
  /** Base URL, e.g. http://127.0.0.1:12345 */
  url: string;
  /** Token endpoint, `${url}/token` — distribution's `auth.token.realm`. */
  realm: string;
  service: string;
  issuer: string;
  /** PEM file with the root CA certificate — distribution's `auth.token.rootcertbundle`. */
  rootCertBundle: string;
  /** `{ realm, service, issuer, rootCertBundle }`, ready for `startDistribution({ token })`. */
  distributionConfig: { realm: string; service: string; issuer: string; rootCertBundle: string };
  /** Every request to the token endpoint, in order. */
  requests: TokenRequest[];
  /** Signs a token directly (bypassing the HTTP endpoint and the access policy). */
  mint(options?: MintOptions): string;
  /** Parses a token without verifying it. */
  decode(token: string): { header: Record<string, unknown>; claims: Record<string, unknown> };
  stop(): Promise<void>;
}

const b64url = (data: Buffer | string): string => Buffer.from(data).toString('base64url');

/** libtrust's key ID: SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits, base32, in colon-separated groups of 4. */
export function libtrustKeyId(spkiDer: Buffer): string {
  const hash = createHash('sha256').update(spkiDer).digest().subarray(0, 30);
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of hash) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  return out.match(/.{4}/g)!.join(':');
}

const OPENSSL_CONFIG = `
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[ v3_signer ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`;

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await execFileP('openssl', args, { cwd });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new Error('the openssl CLI is missing (apt-get install openssl)');
    throw new Error(`openssl ${args.join(' ')} failed: ${e.stderr ?? e.message}`);
  }
}

/** Root CA (self-signed) and a signing certificate issued by it, each with a 2048-bit RSA key. */
async function makePki(dir: string): Promise<{ caPem: string; caKey: KeyObject; signerPem: string; signerKey: KeyObject }> {
  await writeFile(join(dir, 'openssl.cnf'), OPENSSL_CONFIG);
  await openssl(['req', '-x509', '-config', 'openssl.cnf', '-extensions', 'v3_ca', '-newkey', 'rsa:2048', '-nodes',
    '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '7', '-subj', '/CN=Stevedore test token CA', '-sha256'], dir);
  await openssl(['req', '-new', '-config', 'openssl.cnf', '-newkey', 'rsa:2048', '-nodes',
    '-keyout', 'signer.key', '-out', 'signer.csr', '-subj', '/CN=Stevedore test token signer', '-sha256'], dir);
  await openssl(['x509', '-req', '-in', 'signer.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
    '-set_serial', `0x${randomBytes(8).toString('hex')}`, '-days', '7', '-sha256',
    '-extfile', 'openssl.cnf', '-extensions', 'v3_signer', '-out', 'signer.pem'], dir);
  const [caPem, caKey, signerPem, signerKey] = await Promise.all(
    ['ca.pem', 'ca.key', 'signer.pem', 'signer.key'].map((f) => readFile(join(dir, f), 'utf8')));
  return { caPem: caPem!, caKey: createPrivateKey(caKey!), signerPem: signerPem!, signerKey: createPrivateKey(signerKey!) };
}

/** `repository:library/nginx:pull,push` → type, name, actions (names may contain ':' e.g. a host:port prefix). */
export function parseScope(scope: string): { type: string; name: string; actions: string[] } | null {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first <= 0 || last === first) return null;
  return {
    type: scope.slice(0, first),
    name: scope.slice(first + 1, last),
    actions: scope.slice(last + 1).split(',').map((a) => a.trim()).filter(Boolean),
  };
}

function passwordMatches(expected: string, given: string): boolean {
  const a = createHash('sha256').update(expected).digest();
  const b = createHash('sha256').update(given).digest();
  return timingSafeEqual(a, b);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), ...headers });
  res.end(data);
}

export async function startTokenServer(options: TokenServerOptions = {}): Promise<TokenServer> {
  const users = options.users ?? {};
  const service = options.service ?? 'stevedore-test-registry';
  const issuer = options.issuer ?? 'stevedore-test-token-issuer';
  const expiresIn = options.expiresIn ?? 300;
  const keyMode = options.keyMode ?? 'x5c';

  const dir = await tempDir('token-server-');
  const pki = await makePki(dir);
  const rootCertBundle = join(dir, 'ca.pem');
  const caCert = new X509Certificate(pki.caPem);
  const signerCert = new X509Certificate(pki.signerPem);

  const signingKey = keyMode === 'kid' ? pki.caKey : pki.signerKey;
  const baseHeader: Record<string, unknown> = keyMode === 'kid'
    ? { kid: libtrustKeyId(caCert.publicKey.export({ type: 'spki', format: 'der' })) }
    : { x5c: [signerCert.raw.toString('base64'), caCert.raw.toString('base64')] };

  const mint = (m: MintOptions = {}): string => {
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: 'JWT', alg: 'RS256', ...baseHeader, ...m.header };
    const claims = {
      iss: issuer,
      sub: m.sub ?? '',
      aud: service, // distribution 2.8 wants a plain string here (no array)
      exp: now + (m.expiresIn ?? expiresIn),
      nbf: now - 1,
      iat: now,
      jti: randomBytes(16).toString('hex'),
      access: m.access ?? [],
      ...m.claims,
    };
    const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const signature = sign('sha256', Buffer.from(signingInput), m.key ?? signingKey); // RSASSA-PKCS1-v1_5 = RS256
    return `${signingInput}.${b64url(signature)}`;
  };

  const decode = (token: string) => {
    const [h, c] = token.split('.');
    return {
      header: JSON.parse(Buffer.from(h ?? '', 'base64url').toString('utf8')) as Record<string, unknown>,
      claims: JSON.parse(Buffer.from(c ?? '', 'base64url').toString('utf8')) as Record<string, unknown>,
    };
  };

  const authorize = options.authorize ?? ((user: string | null, resource: { type: string; name: string }, requested: string[]) => {
    if (user !== null) return requested;
    return options.anonymousPull && resource.type === 'repository' ? requested.filter((a) => a === 'pull') : [];
  });

  const requests: TokenRequest[] = [];

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://token.invalid');
    if (url.pathname !== '/token') return sendJson(res, 404, { errors: [{ code: 'NOT_FOUND', message: 'not found' }] });
    if (req.method !== 'GET' && req.method !== 'POST') return sendJson(res, 405, { errors: [{ code: 'UNSUPPORTED', message: 'method not allowed' }] });

    let params = url.searchParams;
    let presentedUser: string | null = null;
    let password: string | null = null;
    if (req.method === 'POST') {
      params = new URLSearchParams(await readBody(req));
      if (params.get('grant_type') === 'password') {
        presentedUser = params.get('username');
        password = params.get('password');
      } else {
        const record: TokenRequest = { scope: '', scopes: [], user: null, presentedUser: null, service: params.get('service'), method: 'POST', status: 400, granted: [] };
        requests.push(record);
        return sendJson(res, 400, { error: 'unsupported_grant_type' });
      }
    }
    const authz = req.headers.authorization;
    if (authz && /^basic /i.test(authz)) {
      const decoded = Buffer.from(authz.slice(6).trim(), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      presentedUser = colon >= 0 ? decoded.slice(0, colon) : decoded;
      password = colon >= 0 ? decoded.slice(colon + 1) : '';
    }

    // GET takes repeated `scope` params; OAuth2 POST takes one space-separated `scope`.
    const scopes = params.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean);
    const requestedService = params.get('service');
    const record: TokenRequest = {
      scope: scopes.join(' '), scopes, user: null, presentedUser, service: requestedService, method: req.method, status: 0, granted: [],
    };
    requests.push(record);

    if (requestedService !== null && requestedService !== service) {
      record.status = 400;
      return sendJson(res, 400, { errors: [{ code: 'DENIED', message: `unknown service ${requestedService}` }] });
    }
    let user: string | null = null;
    if (presentedUser !== null) {
      const expected = Object.hasOwn(users, presentedUser) ? users[presentedUser] : undefined;
      if (expected === undefined || !passwordMatches(expected, password ?? '')) {
        record.status = 401;
        return sendJson(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] },
          { 'www-authenticate': `Basic realm="${service}"` });
      }
      user = presentedUser;
    } else if (!options.anonymousPull) {
      record.status = 401;
      return sendJson(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] },
        { 'www-authenticate': `Basic realm="${service}"` });
    }
    record.user = user;

    const access: TokenAccess[] = [];
    for (const raw of scopes) {
      const parsed = parseScope(raw);
      if (!parsed) continue;
      const actions = authorize(user, { type: parsed.type, name: parsed.name }, parsed.actions);
      if (actions.length > 0) access.push({ type: parsed.type, name: parsed.name, actions });
    }
    record.granted = access;
    const token = mint({ sub: user ?? '', access });
    record.status = 200;
    sendJson(res, 200, { token, access_token: token, expires_in: expiresIn, issued_at: new Date().toISOString() });
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) sendJson(res, 500, { errors: [{ code: 'UNKNOWN', message: String(err) }] });
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as { port: number };
  const url = `http://127.0.0.1:${port}`;
  const realm = `${url}/token`;

  return {
    url, realm, service, issuer, rootCertBundle,
    distributionConfig: { realm, service, issuer, rootCertBundle },
    requests,
    mint,
    decode,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}
