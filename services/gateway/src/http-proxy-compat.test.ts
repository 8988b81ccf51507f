import assert from 'node:assert/strict';
import { test } from 'node:test';
import util from 'node:util';
import './http-proxy-compat.js';

test('http-proxy compat: util._extend copies like Object.assign and warns about nothing', async () => {
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.message);
  process.on('warning', onWarning);
  const extend = (util as unknown as { _extend: (a: object, b: unknown) => object })._extend;
  // Node's own is `_extend` (Node 20) or its `deprecated` wrapper (22+): this is the replacement.
  assert.equal(extend.name, 'extend');
  const target = { a: 1 };
  assert.equal(extend(target, { b: 2 }), target);
  assert.deepEqual(target, { a: 1, b: 2 });
  assert.deepEqual(extend({ a: 1 }, null), { a: 1 });
  await new Promise((resolve) => setImmediate(resolve));
  process.off('warning', onWarning);
  assert.deepEqual(warnings, []);
});
