import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import type { Logger } from '../../../../lib/log.js';

/** The console's HTTP pieces: its errors, security headers, JSON answers, the page's files, the CSRF check. */

/** Header every state-changing API request must carry: a cross-site form or image can't set it (see checkCsrf). */
export const CSRF_HEADER = 'x-stevedore-console';

export class ConsoleError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly headers: Record<string, string> = {}) {
    super(message);
  }
}

export const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'permissions-policy': 'camera=(), microphone=(), geolocation=()',
};

export interface Asset {
  body: Buffer;
  /** The body gzipped once at start-up (the page is about 80 KB, 32 KB gzipped). */
  gzipped: Buffer;
  type: string;
  etag: string;
}

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml', '.png': 'image/png', '.ico': 'image/x-icon',
};

/**
 * The page's files: services/gateway/console-ui/ (shipped beside dist/ in the package and image)
 * and uPlot from node_modules; read once at start-up (about 100 KB), never from a CDN.
 */
export function loadAssets(log: Logger): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  const add = (urlPath: string, file: string) => {
    const body = readFileSync(file);
    const ext = file.slice(file.lastIndexOf('.'));
    assets.set(urlPath, { body, gzipped: gzipSync(body, { level: 9 }), type: CONTENT_TYPES[ext] ?? 'application/octet-stream', etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` });
  };
  // dist/services/gateway/src/console/ → the checkout or /app root.
  const uiDir = fileURLToPath(new URL('../../../../../services/gateway/console-ui/', import.meta.url));
  try {
    for (const name of readdirSync(uiDir)) if (/^[\w.-]+\.(html|js|css|svg|png|ico)$/.test(name)) add(`/ui/${name}`, join(uiDir, name));
    const require = createRequire(import.meta.url);
    const uplotDir = join(require.resolve('uplot/package.json'), '..', 'dist');
    add('/ui/vendor/uPlot.iife.min.js', join(uplotDir, 'uPlot.iife.min.js'));
    add('/ui/vendor/uPlot.min.css', join(uplotDir, 'uPlot.min.css'));
  } catch (err) {
    // The registry must not go down for a missing page: the API still answers.
    log.error({ err, uiDir }, 'console: the page\'s files are missing (an incomplete install?): only /api/v1/ is served');
  }
  return assets;
}

export function intParam(query: URLSearchParams, name: string, fallback: number, min: number, max: number): number {
  const raw = query.get(name);
  if (raw === null || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) throw new ConsoleError(400, 'BAD_REQUEST', `${name} must be an integer from ${min} to ${max}`);
  return value;
}

/** `page` (1-based) and `per_page` (default 50, at most 500) of a list. */
export function paginate<T>(items: T[], query: URLSearchParams): { items: T[]; page: number; perPage: number; total: number } {
  const perPage = intParam(query, 'per_page', 50, 1, 500);
  const page = intParam(query, 'page', 1, 1, 1_000_000);
  return { items: items.slice((page - 1) * perPage, page * perPage), page, perPage, total: items.length };
}

/** A page file (index.html for `/`), gzipped when the browser takes it, revalidated by ETag. */
export function servePage(assets: Map<string, Asset>, req: IncomingMessage, res: ServerResponse, path: string): void {
  if (req.method !== 'GET' && req.method !== 'HEAD') throw new ConsoleError(405, 'METHOD_NOT_ALLOWED', 'the console pages are read with GET');
  const asset = assets.get(path === '/' || path === '/ui' || path === '/ui/' ? '/ui/index.html' : path);
  if (!asset) throw new ConsoleError(404, 'NOT_FOUND', `no console page ${path}`);
  const gzip = /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
  const etag = gzip ? `${asset.etag.slice(0, -1)}-gz"` : asset.etag;
  const headers: Record<string, string> = { ...SECURITY_HEADERS, 'content-type': asset.type, etag, 'cache-control': 'no-cache', vary: 'authorization, accept-encoding' };
  if (req.headers['if-none-match'] === etag) {
    res.writeHead(304, headers);
    res.end();
    return;
  }
  const body = gzip ? asset.gzipped : asset.body;
  res.writeHead(200, { ...headers, ...(gzip ? { 'content-encoding': 'gzip' } : {}), 'content-length': String(body.length) });
  res.end(req.method === 'HEAD' ? undefined : body);
}

export function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify(value);
  res.writeHead(status, { ...SECURITY_HEADERS, ...headers, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), 'cache-control': 'no-store' });
  res.end(body);
}

/**
 * Browsers send Basic credentials with any request to this origin, a cross-site one included,
 * so a write must prove it comes from the console's own script: a custom header (which a
 * cross-origin page can only send after a CORS preflight, which is never granted) and, when the
 * browser says where the request comes from, this very origin.
 */
export function checkCsrf(req: IncomingMessage, tls: boolean): void {
  if (req.headers[CSRF_HEADER] !== '1') throw new ConsoleError(403, 'CSRF', `admin actions need the ${CSRF_HEADER}: 1 header (sent by the console page)`);
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') throw new ConsoleError(403, 'CSRF', 'cross-site request refused');
  const origin = req.headers.origin;
  if (origin !== undefined && origin !== `${tls ? 'https' : 'http'}://${req.headers.host ?? ''}`) throw new ConsoleError(403, 'CSRF', `cross-origin request refused (Origin ${origin})`);
}
