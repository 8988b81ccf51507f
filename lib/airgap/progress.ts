import { filesize } from 'filesize';

export function formatBytes(bytes: number): string {
  return filesize(bytes, { base: 2, standard: 'iec' }) as string;
}

export function formatDuration(ms: number): string {
  return ms < 10_000 ? `${(ms / 1000).toFixed(1)}s` : `${Math.round(ms / 1000)}s`;
}

/**
 * Progress of one image at a time. On a terminal, one line per image, redrawn in place (bytes,
 * total, rate) and left as a summary when the image is done; otherwise plain log lines, one when
 * the transfer starts and one when it ends.
 */
export class ImageProgress {
  private label = '';
  private total = 0;
  private done = 0;
  private started = 0;
  private lastDraw = 0;

  constructor(private readonly out: NodeJS.WritableStream & { isTTY?: boolean }, private readonly tty = Boolean(out.isTTY)) {}

  start(label: string): void {
    this.label = label;
    this.total = 0;
    this.done = 0;
    this.started = Date.now();
    if (this.tty) this.draw(true);
  }

  /** The transfer is known: `bytes` to fetch in `blobs` blobs, `present` blobs already stored. */
  planned(bytes: number, blobs: number, present: number): void {
    this.total = bytes;
    if (this.tty) this.draw(true);
    else this.line(`${this.label}: ${blobs} blob(s) to fetch (${formatBytes(bytes)}), ${present} already in the store`);
  }

  bytes(n: number): void {
    this.done += n;
    if (this.tty) this.draw(false);
  }

  finish(summary: string): void {
    if (this.tty) this.clear();
    this.line(`${this.label}: ${summary}`);
  }

  fail(reason: string): void {
    if (this.tty) this.clear();
    this.line(`${this.label}: FAILED: ${reason}`);
  }

  rate(): number {
    const seconds = (Date.now() - this.started) / 1000;
    return seconds > 0 ? this.done / seconds : 0;
  }

  private draw(force: boolean): void {
    const now = Date.now();
    if (!force && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const amount = this.total > 0 ? `${formatBytes(this.done)} / ${formatBytes(this.total)}` : formatBytes(this.done);
    const text = `${this.label}  ${amount}  ${formatBytes(this.rate())}/s`;
    const columns = (this.out as { columns?: number }).columns;
    const width = columns !== undefined && columns >= 40 ? columns : 120;
    this.out.write(`\r\x1b[K${text.length > width - 1 ? `${text.slice(0, width - 2)}…` : text}`);
  }

  private clear(): void {
    this.out.write('\r\x1b[K');
  }

  private line(text: string): void {
    this.out.write(`${text}\n`);
  }
}
