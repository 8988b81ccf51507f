import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { CircuitBreaker } from './circuit-breaker.js';

function openError(breaker: CircuitBreaker, now: number): RegistryError {
  try {
    breaker.check(now);
  } catch (err) {
    assert.ok(err instanceof RegistryError);
    return err;
  }
  assert.fail('expected the breaker to be open');
}

test('stays closed below the failure threshold; a success resets the count', () => {
  const breaker = new CircuitBreaker('registry.lan', 3, 30_000);
  const t = 1_000_000;
  breaker.failure(t);
  breaker.failure(t);
  breaker.check(t);
  breaker.success();
  breaker.failure(t);
  breaker.failure(t);
  breaker.check(t);
  assert.equal(breaker.isOpen, false);
});

test('opens after maxFailures consecutive failures: 503 UNAVAILABLE with Retry-After, naming the upstream', () => {
  const breaker = new CircuitBreaker('registry.lan:5000', 3, 30_000);
  const t = Date.now();
  for (let i = 0; i < 3; i++) breaker.failure(t);
  assert.equal(breaker.isOpen, true);
  const err = openError(breaker, t);
  assert.equal(err.code, 'UNAVAILABLE');
  assert.equal(err.status, 503);
  assert.equal(err.headers['retry-after'], '30');
  assert.match(err.message, /^upstream registry\.lan:5000 is unreachable \(3 consecutive failures\); not retrying for 30s$/);
  assert.deepEqual(err.detail, { upstream: 'registry.lan:5000' });
  // Retry-After counts down, never below 1 s.
  assert.equal(openError(breaker, t + 12_500).headers['retry-after'], '18');
  assert.equal(openError(breaker, t + 29_999).headers['retry-after'], '1');
});

test('after the open period one trial request goes through; others fail fast until it settles', () => {
  const breaker = new CircuitBreaker('u', 3, 10_000);
  const t = 5_000_000;
  for (let i = 0; i < 3; i++) breaker.failure(t);
  breaker.check(t + 10_000); // the trial
  const blocked = openError(breaker, t + 10_001);
  assert.equal(blocked.headers['retry-after'], '1');
  // The trial succeeds: closed again, everything goes through.
  breaker.success();
  breaker.check(t + 10_002);
  breaker.check(t + 10_003);
  assert.equal(breaker.isOpen, false);
});

test('a failed trial opens the circuit for another full period', () => {
  const breaker = new CircuitBreaker('u', 2, 10_000);
  const t = 7_000_000;
  breaker.failure(t);
  breaker.failure(t);
  openError(breaker, t + 9_999);
  breaker.check(t + 10_000); // trial
  breaker.failure(t + 10_500);
  assert.equal(openError(breaker, t + 10_600).headers['retry-after'], '10');
  openError(breaker, t + 20_499);
  breaker.check(t + 20_500); // the next trial
});

test('a custom threshold of 1 opens on the first failure', () => {
  const breaker = new CircuitBreaker('u', 1, 1_000);
  const t = 1_000;
  breaker.check(t);
  breaker.failure(t);
  assert.equal(openError(breaker, t + 1).code, 'UNAVAILABLE');
  breaker.check(t + 1_000);
});
