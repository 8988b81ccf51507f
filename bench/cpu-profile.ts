import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

/** The parts of a V8 `.cpuprofile` (node --cpu-prof) this summary reads. */
interface CpuProfile {
  nodes: Array<{ id: number; callFrame: { functionName: string; url: string; lineNumber: number } }>;
  samples: number[];
  timeDeltas: number[];
}

/**
 * For each profile in `dir` (`CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile`), the functions that
 * used the most CPU (self time), as text: where a Stevedore worker spent its time during a benchmark,
 * for the lead to act on. `roles` names the processes by pid.
 */
export async function summarizeCpuProfiles(dir: string, top: number, roles: Map<number, string>): Promise<string> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.cpuprofile')).sort();
  if (files.length === 0) return `no CPU profiles in ${dir} (did the workers exit cleanly?)`;
  const out: string[] = [];
  for (const file of files) {
    const [, , , pid, thread] = file.split('.');
    const role = `${roles.get(Number(pid)) ?? 'process'} pid ${pid}${thread === '0' ? '' : ` thread ${thread}`}`;
    out.push(summarize(JSON.parse(await readFile(join(dir, file), 'utf8')) as CpuProfile, role, top));
  }
  return out.join('\n\n');
}

function summarize(profile: CpuProfile, role: string, top: number): string {
  const names = new Map<number, string>();
  for (const node of profile.nodes) {
    const { functionName, url, lineNumber } = node.callFrame;
    const where = url ? `${url.replace(/^file:\/\/.*?\/(node_modules|dist)\//, '$1/')}:${lineNumber + 1}` : '';
    names.set(node.id, `${functionName || '(anonymous)'} ${where}`.trim());
  }
  const selfUs = new Map<string, number>();
  let totalUs = 0;
  let idleUs = 0;
  profile.samples.forEach((id, i) => {
    const us = profile.timeDeltas[i] ?? 0;
    const name = names.get(id) ?? '?';
    totalUs += us;
    if (name === '(idle)') idleUs += us;
    else selfUs.set(name, (selfUs.get(name) ?? 0) + us);
  });
  const busyUs = totalUs - idleUs;
  const lines = [...selfUs.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)
    .map(([name, us]) => `  ${(us / 1e6).toFixed(2).padStart(7)} s  ${((100 * us) / Math.max(1, busyUs)).toFixed(1).padStart(5)} %  ${name}`);
  return [`CPU profile of the Stevedore ${role}: ${(busyUs / 1e6).toFixed(1)} s busy of ${(totalUs / 1e6).toFixed(1)} s; hottest functions by self time:`, ...lines].join('\n');
}
