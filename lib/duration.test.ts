import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatDuration, parseDuration } from './duration.js';

test('Go-style units, alone and combined', () => {
  assert.equal(parseDuration('500ms'), 500);
  assert.equal(parseDuration('30s'), 30_000);
  assert.equal(parseDuration('30m'), 1_800_000);
  assert.equal(parseDuration('1h'), 3_600_000);
  assert.equal(parseDuration('2d'), 172_800_000);
  assert.equal(parseDuration('1h2m3s'), 3_723_000);
  assert.equal(parseDuration('1h 30m'), 5_400_000);
  assert.equal(parseDuration('1m30s500ms'), 90_500);
  assert.equal(parseDuration('1.5h'), 5_400_000);
  assert.equal(parseDuration('0s'), 0);
  assert.equal(parseDuration(' 5m '), 300_000);
});

test('a bare number is seconds', () => {
  assert.equal(parseDuration('30'), 30_000);
  assert.equal(parseDuration('0.25'), 250);
  assert.equal(parseDuration('0'), 0);
});

test('ms is milliseconds, m is minutes', () => {
  assert.equal(parseDuration('1ms'), 1);
  assert.equal(parseDuration('1m'), 60_000);
  assert.equal(parseDuration('1m1ms'), 60_001);
});

test('junk throws', () => {
  for (const bad of ['', '  ', 'abc', '5x', '5sx', 's', 'm5', '-5s', '+5s', '5 5', '1h-2m', '5S', '5H', '1w', '1y', '1us', '.5s', '5.s', 'Infinity']) {
    assert.throws(() => parseDuration(bad), /duration/, JSON.stringify(bad));
  }
});

test('formatDuration picks the largest whole unit and round-trips', () => {
  assert.equal(formatDuration(3_600_000), '1h');
  assert.equal(formatDuration(90 * 60_000), '90m');
  assert.equal(formatDuration(45_000), '45s');
  assert.equal(formatDuration(1500), '1500ms');
  for (const ms of [1, 999, 1000, 61_000, 3_600_000, 86_400_000, 5_400_000]) assert.equal(parseDuration(formatDuration(ms)), ms);
});
