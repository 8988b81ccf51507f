import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from './atomic.js';

/** One eviction run of the cleaner (service or `stevedore clean`, or the console's "run now"). */
export interface CleanerRun {
  /** When the run ended, ms since the epoch. */
  at: number;
  /** Cached bytes before the run. */
  usageBefore: number;
  evictedBlobs: number;
  freedBytes: number;
}

/** What the console shows of the cleaner: its last runs and when the service runs next. */
export interface CleanerRuns {
  runs: CleanerRun[];
  /** Set by the cleaner service after each run (undefined when it is not running). */
  nextRunAt?: number;
}

/** Runs kept (one a CLEANER_RUNEVERY_TIME: 200 runs of 30 min are four days). */
const MAX_RUNS = 200;

export function cleanerRunsPath(root: string): string {
  return join(root, 'logs', 'cleaner-runs.json');
}

export async function readCleanerRuns(root: string): Promise<CleanerRuns> {
  try {
    const value = JSON.parse(await readFile(cleanerRunsPath(root), 'utf8')) as Partial<CleanerRuns>;
    return { runs: Array.isArray(value.runs) ? value.runs : [], ...(typeof value.nextRunAt === 'number' ? { nextRunAt: value.nextRunAt } : {}) };
  } catch {
    return { runs: [] };
  }
}

/**
 * Appends a run (bounded). Written by whichever process ran it; two runs finishing in the same
 * instant may lose one record, which only thins the chart.
 */
export async function recordCleanerRun(root: string, run: CleanerRun, nextRunAt?: number): Promise<void> {
  const state = await readCleanerRuns(root);
  state.runs.push(run);
  if (state.runs.length > MAX_RUNS) state.runs.splice(0, state.runs.length - MAX_RUNS);
  if (nextRunAt !== undefined) state.nextRunAt = nextRunAt;
  await writeFileAtomic(join(root, '_tmp', '_cleaner'), cleanerRunsPath(root), JSON.stringify(state));
}
