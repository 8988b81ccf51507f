import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { WRITE_BUFFER, writeBatched } from './write-batched.js';

async function* chunks(count: number, size: number, everyMs = 0): AsyncIterable<Buffer> {
  for (let i = 0; i < count; i++) {
    if (everyMs > 0) await sleep(everyMs);
    yield Buffer.alloc(size, i % 251);
  }
}

describe('writeBatched', () => {
  it('a fast source: chunks arriving during a write go out together, in order, never more than WRITE_BUFFER behind', async () => {
    const writes: Buffer[] = [];
    const chunk = 64 * 1024;
    await writeBatched({ write: async (data) => { writes.push(data); await sleep(5); } }, chunks(100, chunk));
    const expected: Buffer[] = [];
    for await (const c of chunks(100, chunk)) expected.push(c);
    assert.deepEqual(Buffer.concat(writes), Buffer.concat(expected));
    assert.ok(writes.length < 30, `${writes.length} writes for 100 chunks`);
    assert.ok(writes.every((w) => w.length <= WRITE_BUFFER + chunk));
  });

  it('a writer with writev gets each batch as the chunks that came, uncopied, in order', async () => {
    const source: Buffer[] = [];
    for await (const c of chunks(100, 64 * 1024)) source.push(c);
    const written: Buffer[] = [];
    let batches = 0;
    await writeBatched({
      write: async (data) => { written.push(data); await sleep(5); },
      writev: async (batch) => { batches++; written.push(...batch); await sleep(5); },
    }, (async function* () { yield* source; })());
    assert.ok(batches > 0 && batches < 30, `${batches} writev calls`);
    assert.equal(written.length, source.length);
    // The very buffers the source yielded: nothing was concatenated.
    assert.ok(written.every((b, i) => b === source[i]));
  });

  it('a slow source: each chunk is written as it comes, not held back for a batch', async () => {
    const writtenAt: number[] = [];
    const started = Date.now();
    await writeBatched({ write: async () => { writtenAt.push(Date.now() - started); } }, chunks(3, 100, 40));
    assert.equal(writtenAt.length, 3);
    assert.ok(writtenAt[0]! < 100, `first write after ${writtenAt[0]} ms`);
  });

  it('a failed write fails the whole call, and reading stops', async () => {
    let read = 0;
    async function* counted(): AsyncIterable<Buffer> {
      for (let i = 0; i < 1000; i++) {
        read++;
        await sleep(1);
        yield Buffer.alloc(64 * 1024);
      }
    }
    await assert.rejects(writeBatched({ write: async () => { throw new Error('disk full'); } }, counted()), /disk full/);
    assert.ok(read < 10, `${read} chunks read after the failure`);
  });
});
