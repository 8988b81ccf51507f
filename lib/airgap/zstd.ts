import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import { AirgapError } from './store-writer.js';

/** Whether this Node has zstd in zlib (Node >= 22.15; the container image's Node LTS does). */
export function nodeHasZstd(): boolean {
  return typeof (zlib as unknown as { createZstdCompress?: unknown }).createZstdCompress === 'function';
}

/** Runs the `zstd` command (Debian package zstd), for Nodes without zstd in zlib. */
function zstdCommand(args: string[], input?: Readable): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('zstd', args, { stdio: [input ? 'pipe' : 'ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
    child.on('error', (err: NodeJS.ErrnoException) => reject(new AirgapError(err.code === 'ENOENT'
      ? `zstd archives need Node >= 22.15 or the zstd command (apt-get install zstd); neither is here`
      : `zstd failed: ${err.message}`)));
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new AirgapError(`zstd exited with ${code}: ${stderr.trim()}`))));
    if (input) input.pipe(child.stdin!).on('error', reject);
  });
}

/** Writes `source` (a tar stream) zstd-compressed to `file`. */
export async function writeZstd(source: Readable, file: string): Promise<void> {
  if (nodeHasZstd()) {
    const create = (zlib as unknown as { createZstdCompress: () => NodeJS.ReadWriteStream }).createZstdCompress;
    await pipeline(source, create(), createWriteStream(file));
    return;
  }
  await zstdCommand(['-q', '-f', '-o', file], source);
}

/** Decompresses a .zst file to `output` with the zstd command (used only where zlib has no zstd). */
export async function decompressZstdFile(file: string, output: string): Promise<void> {
  await zstdCommand(['-q', '-d', '-f', '-o', output, file]);
}
