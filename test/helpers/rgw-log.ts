import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * The S3 requests a server made, read from the Ceph RGW's own log (scripts/ceph-rgw.sh's
 * `log/client.rgw.a.log`, whose beast frontend writes one access line per request with its latency):
 * where a side's time went on the store, per phase, without instrumenting either server.
 */

export interface S3RequestStats {
  requests: number;
  /** Requests by S3 operation (`GetObject`, `UploadPart`, ...). */
  byOperation: Record<string, number>;
  /** Requests and summed latency by operation and key shape (`HeadObject blobs/sha256/<xx>/<hex>`). */
  byShape: Record<string, { requests: number; latency: number }>;
  /** Sum of the latencies RGW logged (seconds): store time, overlapping when requests run in parallel. */
  latencySum: number;
  /** Response bytes RGW sent (GET bodies). */
  bytesOut: number;
  /** Answers >= 400 (a 404 on HEAD is an ordinary "not there yet"). */
  errors: number;
}

// `"PUT /bucket/prefix/key?query HTTP/1.1" 200 123 - "agent" - latency=0.004000000s`
const ACCESS_LINE = /beast: 0x[0-9a-f]+: \S+ - \S+ \[[^\]]+\] "([A-Z]+) \/([^/ ?]+)\/?([^ ]*) HTTP\/[\d.]+" (\d{3}) (\d+|-) .*latency=([\d.]+)s/;

/** The S3 operation a request line stands for: the SDK's `x-id`, else from method and query. */
function operationOf(method: string, keyAndQuery: string): string {
  const question = keyAndQuery.indexOf('?');
  const query = new URLSearchParams(question === -1 ? '' : keyAndQuery.slice(question + 1));
  const id = query.get('x-id');
  if (id) return id;
  if (method === 'PUT' && query.has('partNumber')) return 'UploadPart';
  if (method === 'POST' && query.has('uploads')) return 'CreateMultipartUpload';
  if (method === 'POST' && query.has('uploadId')) return 'CompleteMultipartUpload';
  if (method === 'DELETE' && query.has('uploadId')) return 'AbortMultipartUpload';
  if (method === 'GET' && query.has('uploadId')) return 'ListParts';
  if (method === 'POST' && query.has('delete')) return 'DeleteObjects';
  if (method === 'GET' && query.has('uploads')) return 'ListMultipartUploads';
  if (method === 'GET' && (query.has('list-type') || query.has('prefix') || query.has('delimiter'))) return 'ListObjects';
  return ({ GET: 'GetObject', HEAD: 'HeadObject', PUT: 'PutObject', DELETE: 'DeleteObject' } as Record<string, string>)[method] ?? method;
}

/** A key without its server prefix, digests and ids replaced by placeholders: what kind of thing it is. */
function shapeOf(keyAndQuery: string): string {
  const question = keyAndQuery.indexOf('?');
  const key = decodeURIComponent(question === -1 ? keyAndQuery : keyAndQuery.slice(0, question));
  if (key === '') {
    const listed = new URLSearchParams(question === -1 ? '' : keyAndQuery.slice(question + 1)).get('prefix') ?? '';
    return `list ${shapeOf(listed.replace(/^[^/]*\/?/, 'x/'))}`;
  }
  return key.split('/').slice(1).join('/')
    .replace(/[0-9a-f]{64}/g, '<hex>')
    .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, '<uuid>')
    .replace(/\/[0-9a-f]{2}\//g, '/<xx>/')
    .replace(/\/\d+$/, '/<n>');
}

/** The first key segment: of the key, or (a bucket-level listing) of its `prefix=` parameter. */
function prefixOf(keyAndQuery: string): string {
  const question = keyAndQuery.indexOf('?');
  const key = question === -1 ? keyAndQuery : keyAndQuery.slice(0, question);
  if (key !== '') return decodeURIComponent(key.split('/')[0]!);
  const listed = new URLSearchParams(question === -1 ? '' : keyAndQuery.slice(question + 1)).get('prefix') ?? '';
  return listed.split('/')[0]!;
}

export class RgwLog {
  private readonly file: string;

  constructor(clusterDir: string) {
    this.file = join(clusterDir, 'log', 'client.rgw.a.log');
  }

  /** The log's current end: requests after it are the next phase's. */
  async mark(): Promise<number> {
    return (await stat(this.file)).size;
  }

  /** Requests logged since `mark`, per key prefix (the first path segment under the bucket). */
  async since(mark: number): Promise<Map<string, S3RequestStats>> {
    // RGW writes the access line just after answering: give the last one a moment to land.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const handle = await open(this.file, 'r');
    let text: string;
    try {
      const { size } = await handle.stat();
      const buffer = Buffer.alloc(Math.max(0, size - mark));
      await handle.read(buffer, 0, buffer.length, mark);
      text = buffer.toString('utf8');
    } finally {
      await handle.close();
    }
    const stats = new Map<string, S3RequestStats>();
    for (const line of text.split('\n')) {
      const match = ACCESS_LINE.exec(line);
      if (!match) continue;
      const [, method, , keyAndQuery, status, bytes, latency] = match;
      const prefix = prefixOf(keyAndQuery!);
      let entry = stats.get(prefix);
      if (!entry) {
        entry = { requests: 0, byOperation: {}, byShape: {}, latencySum: 0, bytesOut: 0, errors: 0 };
        stats.set(prefix, entry);
      }
      const operation = operationOf(method!, keyAndQuery!);
      entry.requests++;
      entry.byOperation[operation] = (entry.byOperation[operation] ?? 0) + 1;
      entry.latencySum += Number(latency);
      const shape = `${operation} ${shapeOf(keyAndQuery!)}`;
      const byShape = (entry.byShape[shape] ??= { requests: 0, latency: 0 });
      byShape.requests++;
      byShape.latency += Number(latency);
      if (bytes !== '-' && method === 'GET') entry.bytesOut += Number(bytes);
      if (Number(status) >= 400) entry.errors++;
    }
    return stats;
  }
}

/** The `top` most frequent operation + key shapes, one per line: what a side asked the store for. */
export function describeS3Shapes(stats: S3RequestStats | undefined, top: number): string[] {
  if (!stats) return [];
  return Object.entries(stats.byShape).sort((a, b) => b[1].requests - a[1].requests).slice(0, top)
    .map(([shape, s]) => `${String(s.requests).padStart(6)} x  ${s.latency.toFixed(2).padStart(6)} s  ${shape}`);
}

/** One line: `123 S3 requests (PUT part 40, GET 12, ...), RGW latency sum 4.20 s, 0 errors`. */
export function describeS3Requests(stats: S3RequestStats | undefined): string {
  if (!stats || stats.requests === 0) return 'no S3 requests';
  const ops = Object.entries(stats.byOperation).sort((a, b) => b[1] - a[1]).map(([op, n]) => `${op} ${n}`).join(', ');
  return `${stats.requests} S3 requests (${ops}), RGW latency sum ${stats.latencySum.toFixed(2)} s, `
    + `${(stats.bytesOut / 1e6).toFixed(1)} MB read, ${stats.errors} answers >= 400`;
}
