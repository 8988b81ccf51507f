import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tempDir } from '../test/helpers/processes.js';

/**
 * What every benchmark needs around its measurements: everything it starts is stopped and every
 * temp dir removed at the end, on failure, on SIGINT/SIGTERM and when the run exceeds its limit.
 */

export const children = new Set<ChildProcess>();
export const tempDirs = new Set<string>();

/** A `[name HH:MM:SS] message` logger on stderr (stdout carries the results). */
export function logger(name: string): (message: string) => void {
  return (message) => process.stderr.write(`[${name} ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

export async function stopProcess(proc: ChildProcess, graceMs = 10_000): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = once(proc, 'exit');
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

let cleaning: Promise<void> | undefined;
/** Stops every tracked process and removes every tracked temp dir (once). */
export function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await Promise.all([...children].map((p) => stopProcess(p).catch(() => {})));
    for (const dir of tempDirs) await rm(dir, { recursive: true, force: true }).catch(() => {});
  })();
  return cleaning;
}

/** A temp dir removed by cleanup(). */
export async function newTempDir(prefix: string): Promise<string> {
  const dir = await tempDir(prefix);
  tempDirs.add(dir);
  return dir;
}

/** Runs a command to completion with a hard time limit; resolves with its output. */
export function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(proc);
    let stdout = '';
    let stderr = '';
    proc.stdout!.on('data', (c: Buffer) => { stdout += c.toString(); });
    proc.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    proc.on('error', (err) => { clearTimeout(timer); children.delete(proc); reject(err); });
    proc.on('close', (code) => {
      clearTimeout(timer);
      children.delete(proc);
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * Runs a benchmark's main(): a failure sets exit code 1; `stop` (default cleanup()) runs at the end
 * in every case, on SIGINT/SIGTERM (exit 130) and after `timeoutS` (exit 1).
 */
export async function runBenchmark(main: () => Promise<void>, options: { timeoutS: number; log: (message: string) => void; stop?: () => Promise<void> }): Promise<void> {
  const { log } = options;
  const stop = options.stop ?? cleanup;
  const watchdog = setTimeout(() => {
    log(`run exceeded ${options.timeoutS} s: stopping`);
    process.exitCode = 1;
    void stop().finally(() => process.exit(1));
  }, options.timeoutS * 1000);
  watchdog.unref();
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      log(`${signal}: stopping servers and removing temp data`);
      void stop().finally(() => process.exit(130));
    });
  }
  try {
    await main();
  } catch (err) {
    process.exitCode = 1;
    log(`failed: ${(err as Error).stack ?? String(err)}`);
  } finally {
    await stop();
    clearTimeout(watchdog);
  }
}

/** The fields of a /proc/<pid>/stat line after the command name, which may itself hold spaces and parentheses. */
function statFields(path: string): string[] {
  const stat = readFileSync(path, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/**
 * CPU time (ms) a process has used so far, user + system and system alone, from /proc (Linux clock
 * ticks are 10 ms); undefined once the process is gone.
 */
export function cpuTimeMs(pid: number): { total: number; sys: number } | undefined {
  try {
    const fields = statFields(`/proc/${pid}/stat`);
    const sys = Number(fields[12]) * 10;
    return { total: Number(fields[11]) * 10 + sys, sys };
  } catch {
    return undefined;
  }
}

/** A `kB` field of /proc/<pid>/status (VmRSS, VmHWM); undefined when the process is gone or has no such line. */
export function procStatusKb(pid: number, field: 'VmRSS' | 'VmHWM'): number | undefined {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Peak VmRSS (kB) of each process, sampled every `everyMs` until stop(); a process never read is absent. */
export function samplePeakRss(pids: number[], everyMs: number): { stop: () => Map<number, number> } {
  const peak = new Map<number, number>();
  const sample = () => {
    for (const pid of pids) {
      const kb = procStatusKb(pid, 'VmRSS');
      if (kb !== undefined) peak.set(pid, Math.max(peak.get(pid) ?? 0, kb));
    }
  };
  sample();
  const timer = setInterval(sample, everyMs);
  return {
    stop: () => {
      clearInterval(timer);
      sample();
      return peak;
    },
  };
}

/**
 * `items` in the order for round `round`: as given in even rounds, reversed in odd ones, so that
 * whatever the first measurement of a round pays (a colder store, another's writeback) is shared alike.
 */
export function roundOrder<T>(items: readonly T[], round: number): T[] {
  return round % 2 === 0 ? [...items] : [...items].reverse();
}

/** The middle finite value (the mean of the two middle ones for an even count); NaN for none. */
export function median(xs: number[]): number {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** CPU time (ms) of this process's children that exited and were waited for (cutime + cstime). */
export function childrenCpuTimeMs(): number {
  const fields = statFields('/proc/self/stat');
  return (Number(fields[13]) + Number(fields[14])) * 10;
}
