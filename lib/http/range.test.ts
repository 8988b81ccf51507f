import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseRange, parseUploadContentRange } from './range.js';

const partial = (start: number, end: number) => ({ kind: 'partial', range: { start, end } });
const FULL = { kind: 'full' };
const UNSAT = { kind: 'unsatisfiable' };

test('no Range header: the whole blob', () => {
  assert.deepEqual(parseRange(undefined, 100), FULL);
});

test('bytes=a-b, a- and -n', () => {
  assert.deepEqual(parseRange('bytes=0-9', 100), partial(0, 9));
  assert.deepEqual(parseRange('bytes=10-10', 100), partial(10, 10));
  assert.deepEqual(parseRange('bytes=0-99', 100), partial(0, 99));
  assert.deepEqual(parseRange('bytes=90-', 100), partial(90, 99));
  assert.deepEqual(parseRange('bytes=0-', 100), partial(0, 99));
  assert.deepEqual(parseRange('bytes=-10', 100), partial(90, 99));
  assert.deepEqual(parseRange('bytes=-1', 100), partial(99, 99));
  // A last byte past the end is clamped; a suffix longer than the blob is the whole blob.
  assert.deepEqual(parseRange('bytes=50-1000', 100), partial(50, 99));
  assert.deepEqual(parseRange('bytes=-1000', 100), partial(0, 99));
  assert.deepEqual(parseRange('bytes=0-0', 1), partial(0, 0));
});

test('unit and whitespace are tolerated', () => {
  assert.deepEqual(parseRange('Bytes=0-9', 100), partial(0, 9));
  assert.deepEqual(parseRange('BYTES=0-9', 100), partial(0, 9));
  assert.deepEqual(parseRange('  bytes=0-9  ', 100), partial(0, 9));
  assert.deepEqual(parseRange('bytes= 0 - 9', 100), partial(0, 9));
});

test('unsatisfiable and malformed byte ranges are 416', () => {
  for (const header of ['bytes=100-', 'bytes=100-200', 'bytes=5-4', 'bytes=-0', 'bytes=-', 'bytes=', 'bytes=a-b', 'bytes=1-2-3',
    'bytes=0x1-2', 'bytes=1.5-2', 'bytes=-5-', `bytes=${'9'.repeat(30)}-`]) {
    assert.deepEqual(parseRange(header, 100), UNSAT, header);
  }
  // Nothing is satisfiable in an empty blob.
  assert.deepEqual(parseRange('bytes=0-0', 0), UNSAT);
  assert.deepEqual(parseRange('bytes=0-', 0), UNSAT);
  assert.deepEqual(parseRange('bytes=-1', 0), UNSAT);
});

test('huge numbers: a suffix longer than any blob is the whole blob, a last-byte-pos past the end is clamped', () => {
  assert.deepEqual(parseRange(`bytes=-${'9'.repeat(400)}`, 100), partial(0, 99));
  assert.deepEqual(parseRange(`bytes=0-${'9'.repeat(30)}`, 100), partial(0, 99));
  assert.deepEqual(parseRange(`bytes=7-${'9'.repeat(400)}`, 100), partial(7, 99));
});

test('multi-range requests and other units are ignored (full 200)', () => {
  assert.deepEqual(parseRange('bytes=0-1,5-6', 100), FULL);
  assert.deepEqual(parseRange('bytes=0-1, 5-6', 100), FULL);
  assert.deepEqual(parseRange('bytes=200-300,0-1', 100), FULL);
  assert.deepEqual(parseRange('items=0-1', 100), FULL);
  assert.deepEqual(parseRange('0-1', 100), FULL);
  assert.deepEqual(parseRange('', 100), FULL);
});

test('upload Content-Range: the spec form and the RFC form', () => {
  assert.deepEqual(parseUploadContentRange('0-9'), { start: 0, end: 9 });
  assert.deepEqual(parseUploadContentRange(' 10-19 '), { start: 10, end: 19 });
  assert.deepEqual(parseUploadContentRange('bytes 0-9/10'), { start: 0, end: 9 });
  assert.deepEqual(parseUploadContentRange('bytes 0-9/*'), { start: 0, end: 9 });
  assert.deepEqual(parseUploadContentRange('bytes=5-5'), { start: 5, end: 5 });
  assert.deepEqual(parseUploadContentRange('BYTES 0-0'), { start: 0, end: 0 });
  for (const bad of ['', '9-0', '-9', '0-', 'a-b', '0-9/', 'bytes */10', 'bytes 0-9/x', '0 - 9', '1.0-2', `0-${'9'.repeat(30)}`]) {
    assert.equal(parseUploadContentRange(bad), undefined, bad);
  }
});
