import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ERROR_CODES, RegistryError, isRegistryError, type ErrorCode } from './errors.js';

test('every spec error code has its distribution status', () => {
  const expected: Record<ErrorCode, number> = {
    BLOB_UNKNOWN: 404, BLOB_UPLOAD_INVALID: 400, BLOB_UPLOAD_UNKNOWN: 404, DIGEST_INVALID: 400,
    MANIFEST_BLOB_UNKNOWN: 400, MANIFEST_INVALID: 400, MANIFEST_UNKNOWN: 404, NAME_INVALID: 400, NAME_UNKNOWN: 404,
    SIZE_INVALID: 400, UNAUTHORIZED: 401, DENIED: 403, UNSUPPORTED: 405, TOOMANYREQUESTS: 429, UNAVAILABLE: 503, UNKNOWN: 500,
  };
  assert.deepEqual(Object.keys(ERROR_CODES).sort(), Object.keys(expected).sort());
  for (const [code, status] of Object.entries(expected) as Array<[ErrorCode, number]>) {
    const err = new RegistryError(code);
    assert.equal(err.status, status, code);
    assert.equal(err.message, ERROR_CODES[code].message);
    assert.ok(err.message.length > 0);
  }
});

test('toBody is the OCI error envelope; detail is omitted when there is none', () => {
  assert.deepEqual(new RegistryError('BLOB_UNKNOWN').toBody(), { errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown to registry' }] });
  assert.equal('detail' in new RegistryError('BLOB_UNKNOWN').toBody().errors[0]!, false);
  assert.deepEqual(new RegistryError('NAME_INVALID', { name: 'X' }).toBody(), {
    errors: [{ code: 'NAME_INVALID', message: 'invalid repository name', detail: { name: 'X' } }],
  });
  // A falsy detail is still a detail.
  assert.deepEqual(new RegistryError('SIZE_INVALID', 0).toBody().errors[0], { code: 'SIZE_INVALID', message: 'provided length did not match content length', detail: 0 });
  const json = JSON.parse(JSON.stringify(new RegistryError('DENIED', { why: 'read-only' }).toBody())) as unknown;
  assert.deepEqual(json, { errors: [{ code: 'DENIED', message: 'requested access to the resource is denied', detail: { why: 'read-only' } }] });
});

test('status, message and headers can be overridden per call site', () => {
  const err = new RegistryError('SIZE_INVALID', { size: 10 }, { status: 416, message: 'nope', headers: { 'content-range': 'bytes */10' } });
  assert.equal(err.status, 416);
  assert.equal(err.code, 'SIZE_INVALID');
  assert.equal(err.message, 'nope');
  assert.deepEqual(err.headers, { 'content-range': 'bytes */10' });
  assert.deepEqual(err.toBody(), { errors: [{ code: 'SIZE_INVALID', message: 'nope', detail: { size: 10 } }] });
  assert.deepEqual(new RegistryError('UNKNOWN').headers, {});
});

test('isRegistryError tells registry errors from others', () => {
  const err = new RegistryError('UNKNOWN');
  assert.equal(isRegistryError(err), true);
  assert.ok(err instanceof Error);
  assert.equal(err.name, 'RegistryError');
  assert.equal(isRegistryError(new Error('x')), false);
  assert.equal(isRegistryError({ code: 'BLOB_UNKNOWN', status: 404 }), false);
  assert.equal(isRegistryError(undefined), false);
});
