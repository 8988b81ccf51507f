import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseRateLimit, UpstreamStatus } from './upstream-status.js';

test('parses Docker Hub rate-limit headers', () => {
  assert.deepEqual(parseRateLimit('100;w=21600'), { value: 100, windowSeconds: 21600 });
  assert.deepEqual(parseRateLimit('76; w=21600'), { value: 76, windowSeconds: 21600 });
  assert.deepEqual(parseRateLimit('0'), { value: 0 });
  // The IETF draft's list form: the first (effective) limit counts.
  assert.deepEqual(parseRateLimit('100, 100;w=21600'), { value: 100 });
  assert.deepEqual(parseRateLimit(['200;w=3600', '1']), { value: 200, windowSeconds: 3600 });
});

test('ignores malformed rate-limit headers', () => {
  for (const bad of [undefined, '', 'abc', '-1;w=5', '1.5;w=10', ';w=10', '1e3']) assert.equal(parseRateLimit(bad), undefined, String(bad));
  assert.deepEqual(parseRateLimit('5;w=soon'), { value: 5 }, 'a bad window is left out, the count kept');
});

test('keeps the last error, the last answer and the last rate-limit headers seen', () => {
  const status = new UpstreamStatus();
  assert.deepEqual(status.view(), { lastError: null, lastSuccessAt: null, rateLimit: null });
  status.answered(200, { 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': '99;w=21600' });
  status.answered(200, {});
  const seen = status.view();
  assert.deepEqual(seen.rateLimit?.limit, { value: 100, windowSeconds: 21600 });
  assert.deepEqual(seen.rateLimit?.remaining, { value: 99, windowSeconds: 21600 }, 'an answer without the headers keeps the last ones');
  assert.ok(seen.lastSuccessAt);
  status.failed(`connect ECONNREFUSED 127.0.0.1:1 ${'x'.repeat(1000)}`);
  const failed = status.view();
  assert.match(failed.lastError!.message, /^connect ECONNREFUSED/);
  assert.equal(failed.lastError!.message.length, 500);
  status.answered(503, { 'ratelimit-remaining': '0;w=21600' });
  assert.equal(status.view().lastSuccessAt, seen.lastSuccessAt, 'a 5xx is not a success');
  assert.deepEqual(status.view().rateLimit?.remaining, { value: 0, windowSeconds: 21600 });
  assert.equal(status.view().rateLimit?.limit, null);
});
