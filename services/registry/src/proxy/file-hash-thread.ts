import { createHash, type Hash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import type { HasherReply, HasherRequest } from './file-hasher.js';

/**
 * The hashing thread of FileHasher: reads each job's file up to what the main thread says is
 * written and hashes it, a slice per job per turn, so that new messages (more bytes, new jobs) are
 * taken between slices.
 */

const SLICE = 4 * 1024 * 1024;

interface Job {
  hash: Hash;
  fd: number;
  hashed: number;
  upTo: number;
  size: number | undefined;
}

const port = parentPort!;
const jobs = new Map<number, Job>();
const buffer = Buffer.allocUnsafe(SLICE);
let scheduled = false;

function reply(message: HasherReply): void {
  port.postMessage(message);
}

function drop(id: number): void {
  const job = jobs.get(id);
  if (!job) return;
  jobs.delete(id);
  try {
    closeSync(job.fd);
  } catch { /* already closed */ }
}

function work(): void {
  scheduled = false;
  for (const [id, job] of jobs) {
    try {
      if (job.hashed < job.upTo) {
        const bytes = readSync(job.fd, buffer, 0, Math.min(SLICE, job.upTo - job.hashed), job.hashed);
        if (bytes === 0) throw new Error(`file ended at ${job.hashed}, expected ${job.upTo} bytes`);
        job.hash.update(buffer.subarray(0, bytes));
        job.hashed += bytes;
      }
      if (job.size !== undefined && job.hashed === job.size) {
        reply({ id, hex: job.hash.digest('hex') });
        drop(id);
      }
    } catch (err) {
      reply({ id, error: (err as Error).message });
      drop(id);
    }
  }
  schedule();
}

function schedule(): void {
  if (scheduled) return;
  for (const job of jobs.values()) {
    if (job.hashed < job.upTo || (job.size !== undefined && job.hashed === job.size)) {
      scheduled = true;
      setImmediate(work);
      return;
    }
  }
}

port.on('message', (message: HasherRequest) => {
  switch (message.type) {
    case 'start':
      try {
        jobs.set(message.id, { hash: createHash(message.algorithm), fd: openSync(message.path, 'r'), hashed: 0, upTo: 0, size: undefined });
      } catch (err) {
        reply({ id: message.id, error: (err as Error).message });
      }
      break;
    case 'extend': {
      const job = jobs.get(message.id);
      if (job) job.upTo = Math.max(job.upTo, message.upTo);
      break;
    }
    case 'finish': {
      const job = jobs.get(message.id);
      if (job) {
        job.size = message.size;
        job.upTo = Math.max(job.upTo, message.size);
        if (job.hashed > message.size) {
          reply({ id: message.id, error: `hashed ${job.hashed} bytes, more than the ${message.size} expected` });
          drop(message.id);
        }
      }
      break;
    }
    case 'cancel':
      drop(message.id);
      break;
  }
  schedule();
});
