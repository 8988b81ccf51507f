import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseAccessLogLine } from '../../../lib/access-log.js';
import { AccessLogWriter } from './access-log.js';

const record = (i: number) => ({
  user: 'reader', method: 'GET', path: `/v2/team/app/manifests/v${i}`, upstream: '-', repository: 'team/app', reference: `v${i}`,
  kind: 'manifest' as const, status: 200, bytes: i, durationMs: 0.5,
});

test('AccessLogWriter: pino-format lines, in order, batched; flush() and close() write what is buffered', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'access-log-'));
  try {
    const path = join(dir, 'logs', 'access.log');
    const writer = new AccessLogWriter(path);
    const before = Date.now();
    // More than one batch, written while the event loop runs (asynchronous writes in flight).
    for (let i = 0; i < 3000; i++) {
      writer.write(record(i));
      if (i % 100 === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    writer.write(record(3000));
    writer.flush();
    const lines = (await readFile(path, 'utf8')).split('\n');
    assert.equal(lines.pop(), '', 'ends with a newline');
    assert.equal(lines.length, 3001);
    lines.forEach((line, i) => {
      const entry = parseAccessLogLine(line);
      assert.ok(entry, line);
      assert.deepEqual({ ...entry, time: undefined }, { level: 30, time: undefined, msg: 'access', ...record(i) });
      assert.ok(Date.parse(entry.time) >= before - 1 && Date.parse(entry.time) <= Date.now(), entry.time);
      assert.match(entry.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    });
    writer.write(record(3001));
    writer.close();
    writer.write(record(3002));
    const after = (await readFile(path, 'utf8')).trimEnd().split('\n');
    assert.equal(after.length, 3002, 'close() wrote the buffered line; nothing after it');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
