/**
 * A minimal keep-alive HTTP/1.1 load generator for requests whose responses carry no body (HEAD),
 * which wrk 4.1 cannot measure: its response parser does not know the request was HEAD and waits
 * for Content-Length bytes of body that never come.
 *
 *   node dist/bench/http-load.js URL CONNECTIONS SECONDS [Header: value ...]
 *
 * Each connection has one request in flight; a response is complete at the blank line ending its
 * headers. Prints one JSON line: { requests, seconds, rps, errors, non2xx, p99Ms }.
 */
import { connect, type Socket } from 'node:net';

interface Result {
  requests: number;
  seconds: number;
  rps: number;
  errors: number;
  non2xx: number;
  p99Ms: number;
}

export async function loadHead(url: string, connections: number, seconds: number, headers: Record<string, string>): Promise<Result> {
  const target = new URL(url);
  if (target.protocol !== 'http:') throw new Error('only http: URLs');
  const host = target.hostname;
  const port = Number(target.port || 80);
  const lines = [`HEAD ${target.pathname}${target.search} HTTP/1.1`, `Host: ${target.host}`];
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  const request = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');

  let requests = 0;
  let errors = 0;
  let non2xx = 0;
  // Latency histogram in 10 µs buckets up to 1 s (the rest lands in the last bucket).
  const histogram = new Uint32Array(100_001);
  let measuring = false;
  let stopped = false;

  const runConnection = (): Promise<void> => new Promise((resolve) => {
    let socket: Socket;
    let pending = '';
    let sentAt = 0n;
    const send = () => {
      sentAt = process.hrtime.bigint();
      socket.write(request);
    };
    const open = () => {
      pending = '';
      socket = connect({ host, port, noDelay: true });
      socket.setEncoding('latin1');
      socket.on('connect', send);
      socket.on('data', (data: string) => {
        pending += data;
        let end: number;
        while ((end = pending.indexOf('\r\n\r\n')) !== -1) {
          const status = pending.charCodeAt(9);
          pending = pending.slice(end + 4);
          if (measuring) {
            requests++;
            if (status !== 50) non2xx++; // '2'
            const us = Number(process.hrtime.bigint() - sentAt) / 1000;
            histogram[Math.min(histogram.length - 1, Math.floor(us / 10))]!++;
          }
          if (stopped) {
            socket.destroy();
            resolve();
            return;
          }
          send();
        }
      });
      socket.on('error', () => {
        if (measuring) errors++;
      });
      socket.on('close', () => {
        if (stopped) resolve();
        else setTimeout(open, 10);
      });
    };
    open();
  });

  const all = Array.from({ length: connections }, runConnection);
  measuring = true;
  const started = process.hrtime.bigint();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  measuring = false;
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  stopped = true;
  await Promise.race([Promise.all(all), new Promise((r) => setTimeout(r, 5_000))]);

  let p99Ms = 0;
  const threshold = requests * 0.99;
  let seen = 0;
  for (let i = 0; i < histogram.length; i++) {
    seen += histogram[i]!;
    if (seen >= threshold) {
      p99Ms = (i * 10) / 1000;
      break;
    }
  }
  return { requests, seconds: elapsed, rps: requests / elapsed, errors, non2xx, p99Ms };
}

const isMain = process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href;
if (isMain) {
  const [url, connections, seconds, ...rawHeaders] = process.argv.slice(2);
  if (!url || !connections || !seconds) {
    process.stderr.write('usage: http-load URL CONNECTIONS SECONDS [Header: value ...]\n');
    process.exit(2);
  }
  const headers: Record<string, string> = {};
  for (const raw of rawHeaders) {
    const colon = raw.indexOf(':');
    if (colon > 0) headers[raw.slice(0, colon).trim()] = raw.slice(colon + 1).trim();
  }
  const result = await loadHead(url, Number(connections), Number(seconds), headers);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}
