import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { CircuitBreaker } from './circuit-breaker.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function openError(breaker: CircuitBreaker): RegistryError {
  try {
    breaker.check();
  } catch (err) {
    assert.ok(err instanceof RegistryError);
    return err;
  }
  assert.fail('expected the breaker to be open');
}

/** A probe whose answer the test sets; counts calls and how many ran at once. */
function scriptedProbe(delayMs = 0) {
  const state = { up: false, calls: 0, running: 0, maxRunning: 0, throws: false };
  const probe = async () => {
    state.calls++;
    state.running++;
    state.maxRunning = Math.max(state.maxRunning, state.running);
    await sleep(delayMs);
    state.running--;
    if (state.throws) throw new Error('ECONNREFUSED');
    return state.up;
  };
  return { state, probe };
}

test('stays closed below the failure threshold; a success resets the count; no probe while closed', async () => {
  const { state, probe } = scriptedProbe();
  const breaker = new CircuitBreaker('registry.lan', probe, { maxFailures: 3, probeIntervalMs: 10 });
  breaker.failure();
  breaker.failure();
  breaker.check();
  breaker.success();
  breaker.failure();
  breaker.failure();
  breaker.check();
  assert.equal(breaker.isOpen, false);
  await sleep(50);
  assert.equal(state.calls, 0);
  breaker.stop();
});

test('opens after maxFailures consecutive failures: 503 UNAVAILABLE with Retry-After, naming the upstream', () => {
  const { probe } = scriptedProbe();
  const breaker = new CircuitBreaker('registry.lan:5000', probe, { maxFailures: 3, probeIntervalMs: 1_000 });
  for (let i = 0; i < 3; i++) breaker.failure();
  assert.equal(breaker.isOpen, true);
  const err = openError(breaker);
  assert.equal(err.code, 'UNAVAILABLE');
  assert.equal(err.status, 503);
  assert.equal(err.headers['retry-after'], '1');
  assert.match(err.message, /^upstream registry\.lan:5000 is unreachable \(3 consecutive failures\); checking it every 1s$/);
  assert.deepEqual(err.detail, { upstream: 'registry.lan:5000' });
  breaker.stop();
});

test('while open it probes in the background, one probe at a time, and closes on the first answer', async () => {
  const { state, probe } = scriptedProbe(30);
  const changes: string[] = [];
  const breaker = new CircuitBreaker('u', probe, { maxFailures: 2, probeIntervalMs: 10, onChange: (s) => changes.push(s) });
  breaker.failure();
  breaker.failure();
  assert.deepEqual(changes, ['open']);
  await sleep(300);
  assert.ok(state.calls >= 2, `probed ${state.calls} times`);
  assert.equal(state.maxRunning, 1, 'never two probes at once');
  openError(breaker);
  state.up = true;
  const upAt = Date.now();
  while (breaker.isOpen && Date.now() - upAt < 1_000) await sleep(5);
  assert.equal(breaker.isOpen, false);
  assert.ok(Date.now() - upAt < 500, `closed ${Date.now() - upAt} ms after the upstream answered`);
  assert.deepEqual(changes, ['open', 'closed']);
  breaker.check();
  const calls = state.calls;
  await sleep(60);
  assert.equal(state.calls, calls, 'no probing once closed');
  breaker.stop();
});

test('a probe that throws (connection refused) keeps the circuit open and probing', async () => {
  const { state, probe } = scriptedProbe();
  state.throws = true;
  const breaker = new CircuitBreaker('u', probe, { maxFailures: 1, probeIntervalMs: 10 });
  breaker.failure();
  await sleep(100);
  assert.ok(state.calls >= 2);
  assert.equal(breaker.isOpen, true);
  state.throws = false;
  state.up = true;
  for (let i = 0; i < 100 && breaker.isOpen; i++) await sleep(10);
  assert.equal(breaker.isOpen, false);
  breaker.stop();
});

test('stop() ends probing, and an open breaker does not keep the process alive (timers unref\'d)', async () => {
  const { state, probe } = scriptedProbe();
  const breaker = new CircuitBreaker('u', probe, { maxFailures: 1, probeIntervalMs: 10 });
  breaker.failure();
  await sleep(35);
  breaker.stop();
  const calls = state.calls;
  await sleep(60);
  assert.equal(state.calls, calls);
  // A never-stopped open breaker, probing a dead upstream, must not hold a process open.
  const script = `import { CircuitBreaker } from ${JSON.stringify(new URL('./circuit-breaker.js', import.meta.url).href)};
    const breaker = new CircuitBreaker('v', async () => false, { maxFailures: 1, probeIntervalMs: 20 });
    breaker.failure();
    setTimeout(() => {}, 200);`;
  const started = Date.now();
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { timeout: 10_000 });
  assert.equal(child.status, 0, child.stderr.toString());
  assert.ok(Date.now() - started < 5_000);
});
