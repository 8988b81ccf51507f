import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { FileHandle } from 'node:fs/promises';
import { SYNC_BEHIND_BYTES, SyncBehind } from './sync-behind.js';

/** A handle whose datasync() the test settles by hand, counting the calls. */
function controlledHandle() {
  const pending: Array<{ resolve: () => void; reject: (err: Error) => void }> = [];
  const handle = {
    datasync: () => new Promise<void>((resolve, reject) => { pending.push({ resolve, reject }); }),
  } as unknown as FileHandle;
  return { handle, pending };
}

describe('SyncBehind', () => {
  it('starts one background datasync per SYNC_BEHIND_BYTES written, never two at once', async () => {
    const { handle, pending } = controlledHandle();
    const sync = new SyncBehind(handle);
    sync.wrote(SYNC_BEHIND_BYTES - 1);
    assert.equal(pending.length, 0, 'not before SYNC_BEHIND_BYTES');
    sync.wrote(1);
    assert.equal(pending.length, 1);
    sync.wrote(3 * SYNC_BEHIND_BYTES);
    assert.equal(pending.length, 1, 'a second waits for the first');
    pending[0]!.resolve();
    await sync.settle();
    sync.wrote(1);
    assert.equal(pending.length, 2, 'the bytes written while one was in flight start the next');
    pending[1]!.resolve();
    await sync.settle();
  });

  it('settle() waits for the sync in flight and throws its error', async () => {
    const { handle, pending } = controlledHandle();
    const sync = new SyncBehind(handle);
    sync.wrote(SYNC_BEHIND_BYTES);
    let settled = false;
    const settling = sync.settle().then(() => { settled = true; }, (err: Error) => err);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(settled, false, 'settle() returned while a datasync was in flight');
    pending[0]!.reject(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    const error = await settling;
    assert.ok(error instanceof Error && /EIO/.test(error.message));
    await assert.rejects(sync.settle(), /EIO/, 'a failed background sync fails every later settle');
  });
});
