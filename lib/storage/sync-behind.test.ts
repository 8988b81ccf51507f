import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { FileHandle } from 'node:fs/promises';
import { MAX_SYNCS_IN_FLIGHT, SYNC_BEHIND_BYTES, SyncBehind } from './sync-behind.js';

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

  it('at most MAX_SYNCS_IN_FLIGHT run in the process; a writer over the cap starts its sync at a later write', async () => {
    const handles = Array.from({ length: MAX_SYNCS_IN_FLIGHT + 1 }, () => controlledHandle());
    const syncs = handles.map(({ handle }) => new SyncBehind(handle));
    for (const sync of syncs) sync.wrote(SYNC_BEHIND_BYTES);
    assert.deepEqual(handles.map(({ pending }) => pending.length), [...Array(MAX_SYNCS_IN_FLIGHT).fill(1), 0]);
    handles[0]!.pending[0]!.resolve();
    await syncs[0]!.settle();
    syncs.at(-1)!.wrote(1);
    assert.equal(handles.at(-1)!.pending.length, 1, 'the last writer starts once a slot is free');
    for (const { pending } of handles.slice(1)) pending[0]!.resolve();
    await Promise.all(syncs.map((sync) => sync.settle()));
  });
});
