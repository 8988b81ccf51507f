/**
 * The most bytes gathered while a write is in flight before reading stops (backpressure): writes
 * stay big when the disk is slower than the client, bounded in memory per request.
 */
export const WRITE_BUFFER = 1024 * 1024;

/**
 * Writes `source` to `writer`, one write in flight at a time; the chunks that arrive meanwhile go
 * out together in the next write. A fast client's bytes are written in big batches (one thread-pool
 * round trip per batch rather than per 64 KiB socket chunk) and reading overlaps writing; a slow
 * client's bytes are written as they come, not held back until a batch fills.
 */
export async function writeBatched(writer: { write(data: Buffer): Promise<void> }, source: AsyncIterable<Buffer>): Promise<void> {
  let batch: Buffer[] = [];
  let batched = 0;
  let failure: { error: unknown } | undefined;
  let writing: Promise<void> | undefined;
  const drain = async () => {
    try {
      while (batched > 0) {
        const data = batch.length === 1 ? batch[0]! : Buffer.concat(batch, batched);
        batch = [];
        batched = 0;
        await writer.write(data);
      }
    } catch (error) {
      failure = { error };
    } finally {
      writing = undefined;
    }
  };
  for await (const chunk of source) {
    if (failure) throw failure.error;
    batch.push(chunk);
    batched += chunk.length;
    if (!writing) writing = drain();
    else if (batched >= WRITE_BUFFER) await writing;
  }
  if (writing) await writing;
  if (failure) throw failure.error;
}
