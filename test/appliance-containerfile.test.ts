import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { call, isAlive, mustRun, processesOf, run, sleep, tcpListenPorts } from './helpers/appliance.js';
import { freePort, REPO_ROOT } from './helpers/processes.js';

/**
 * The Containerfile cannot be built here (no base images), so: its COPY sources must exist, and
 * its runtime stage is simulated — the files it copies, production dependencies only, its ENV
 * (paths moved into a temp dir) and its CMD — and must come up healthy by its own HEALTHCHECK.
 */

interface Instruction {
  op: string;
  args: string;
  stage: number;
}

/** Instructions of a Containerfile, continuation lines joined, comments dropped; `stage` counts FROMs. */
function parseContainerfile(text: string): Instruction[] {
  const logical: string[] = [];
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (current === '' && (line === '' || line.startsWith('#'))) continue;
    if (line.startsWith('#')) continue;
    if (line.endsWith('\\')) {
      current += `${line.slice(0, -1)} `;
      continue;
    }
    logical.push(current + line);
    current = '';
  }
  if (current) logical.push(current);
  let stage = -1;
  return logical.map((line) => {
    const m = /^(\S+)\s*([\s\S]*)$/.exec(line)!;
    const op = m[1]!.toUpperCase();
    if (op === 'FROM') stage += 1;
    return { op, args: m[2]!.trim(), stage };
  });
}

interface Copy {
  from: string | undefined;
  sources: string[];
  dest: string;
  stage: number;
}

function copies(instructions: Instruction[]): Copy[] {
  return instructions.filter((i) => i.op === 'COPY').map((i) => {
    const words = i.args.startsWith('[') ? JSON.parse(i.args) as string[] : i.args.split(/\s+/);
    const flags = words.filter((w) => w.startsWith('--'));
    const rest = words.filter((w) => !w.startsWith('--'));
    const from = flags.find((f) => f.startsWith('--from='))?.slice('--from='.length);
    return { from, sources: rest.slice(0, -1), dest: rest.at(-1)!, stage: i.stage };
  });
}

/** `ENV A=1 B=2` (and the legacy `ENV A 1`) of one stage. */
function envOf(instructions: Instruction[], stage: number): Record<string, string> {
  const env: Record<string, string> = {};
  for (const i of instructions.filter((x) => x.op === 'ENV' && x.stage === stage)) {
    if (!i.args.includes('=')) {
      const [key, ...value] = i.args.split(/\s+/);
      env[key!] = value.join(' ');
      continue;
    }
    for (const m of i.args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)/g)) env[m[1]!] = m[2]!.replace(/^"|"$/g, '');
  }
  return env;
}

describe('Containerfile', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  after(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn().catch(() => {});
  });

  let text: string;
  let instructions: Instruction[];
  const load = async () => {
    text ??= await readFile(join(REPO_ROOT, 'Containerfile'), 'utf8');
    instructions ??= parseContainerfile(text);
    return instructions;
  };

  it('every COPY source from the build context exists in the repository; copies from the build stage exist after a build', async () => {
    const all = copies(await load());
    assert.ok(all.length >= 5, 'COPY instructions parsed');
    for (const copy of all) {
      for (const source of copy.sources) {
        if (copy.from) {
          // Made in the build stage (/app is its WORKDIR): npm ci makes node_modules, npm run build makes dist.
          const local = source.replace(/^\/app\//, '');
          assert.ok(['node_modules', 'dist'].includes(local), `COPY --from=${copy.from} ${source}: unexpected build-stage path`);
          assert.ok(existsSync(join(REPO_ROOT, local)), `${local} exists after npm ci and npm run build`);
          continue;
        }
        assert.ok(!source.includes('..') && !source.startsWith('/'), `COPY source ${source} stays in the build context`);
        assert.ok(existsSync(join(REPO_ROOT, source)), `COPY ${source}: missing from the repository`);
      }
    }
    // What the build stage needs to run `npm run build`: tsconfig.json's "include" directories.
    const tsconfig = JSON.parse(await readFile(join(REPO_ROOT, 'tsconfig.json'), 'utf8')) as { include: string[] };
    const buildSources = new Set(all.filter((c) => c.stage === 0 && !c.from).flatMap((c) => c.sources));
    for (const dir of tsconfig.include) assert.ok(buildSources.has(dir), `build stage copies ${dir} (tsconfig include)`);
    // The bin the image links to /usr/local/bin must be executable (COPY keeps the mode).
    assert.ok(statSync(join(REPO_ROOT, 'bin', 'stevedore.js')).mode & 0o100, 'bin/stevedore.js is executable');
    // The CMD and HEALTHCHECK are there in the expected form.
    assert.match(text, /^CMD \[.*pm2-runtime.*ecosystem\.config\.js.*\]$/m);
    assert.match(text, /^HEALTHCHECK .*\/healthz/m);
  });

  it('the runtime stage (its files, production dependencies, its ENV and CMD) starts the appliance and passes its HEALTHCHECK', async () => {
    const ins = await load();
    const runtime = Math.max(...ins.map((i) => i.stage));
    const sim = await mkdtemp('/tmp/stv-image-');
    cleanups.push(() => rm(sim, { recursive: true, force: true }));
    const appDir = join(sim, 'app');
    await mkdir(appDir);

    // The runtime stage's COPYs: the build context ones as they are, the build stage's dist as built here.
    for (const copy of copies(ins).filter((c) => c.stage === runtime)) {
      for (const source of copy.sources) {
        const local = source.replace(/^\/app\//, '');
        if (local === 'node_modules') continue; // npm ci --omit=dev below, as the build stage's npm prune --omit=dev
        const target = copy.dest.endsWith('/') ? join(appDir, copy.dest, basename(local)) : join(appDir, copy.dest);
        await cp(join(REPO_ROOT, local), target, { recursive: true });
      }
    }
    for (const path of ['package.json', 'package-lock.json', 'ecosystem.config.js', 'bin/stevedore.js', 'dist/lib/ecosystem.js', 'dist/cli/main.js']) {
      assert.ok(existsSync(join(appDir, path)), `${path} in the runtime stage`);
    }
    const baseEnv: NodeJS.ProcessEnv = {};
    for (const [key, value] of Object.entries(process.env)) {
      if (!/^(PM2_|STEVEDORE_|REGISTRY_|TLS_|CLEANER_|LOGGER_|NODE_TEST|NODE_TLS_)/.test(key) && !['ACCESS_LOG_PATH', 'PULLSECRETPATH', 'NODE_ENV'].includes(key)) baseEnv[key] = value;
    }
    const npm = await run('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund', '--prefer-offline'], { cwd: appDir, env: baseEnv, timeoutMs: 120_000 });
    assert.equal(npm.code, 0, `npm ci --omit=dev failed: ${npm.stderr}`);
    assert.ok(existsSync(join(appDir, 'node_modules', 'pm2', 'bin', 'pm2-runtime')));
    assert.ok(!existsSync(join(appDir, 'node_modules', 'typescript')), 'no dev dependencies in the runtime stage');

    // The image's ENV with its absolute paths moved under the temp dir and the listener on loopback.
    const port = await freePort();
    const imageEnv = envOf(ins, runtime);
    assert.equal(imageEnv.STEVEDORE_GATEWAY_LISTEN, '0.0.0.0:8443');
    const env: NodeJS.ProcessEnv = { ...baseEnv };
    for (const [key, value] of Object.entries(imageEnv)) env[key] = value.startsWith('/') ? join(sim, value) : value;
    env.STEVEDORE_GATEWAY_LISTEN = `127.0.0.1:${port}`;
    // RUN mkdir -p ...: the image's directories exist (mode 0755) before the appliance starts.
    const mkdirRun = ins.find((i) => i.op === 'RUN' && i.stage === runtime && i.args.startsWith('mkdir -p'));
    assert.ok(mkdirRun, 'RUN mkdir -p of the volumes');
    for (const dir of mkdirRun.args.split('&&')[0]!.split(/\s+/).slice(2)) await mkdir(join(sim, dir), { recursive: true, mode: 0o755 });
    for (const key of ['STEVEDORE_ROOT', 'STEVEDORE_RUN_DIR', 'PM2_HOME', 'TLS_CERTS_PATH', 'REGISTRY_AUTH_HTPASSWD_PATH']) {
      assert.ok(env[key]?.startsWith(sim), `${key} is set by the image (${env[key]})`);
    }
    // A certificate, as `stevedore tls generate` makes it inside the container.
    await mustRun(process.execPath, ['bin/stevedore.js', 'tls', 'generate', '127.0.0.1'], { cwd: appDir, env });
    assert.ok(existsSync(env.TLS_CERTS_PATH!));

    // The image's CMD, run from its WORKDIR.
    const cmd = /^CMD (\[.*\])$/m.exec(text)![1]!;
    const [exe, ...args] = JSON.parse(cmd) as string[];
    assert.equal(exe, 'node');
    const proc = spawn(process.execPath, args, { cwd: appDir, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let output = '';
    proc.stdout!.on('data', (c: Buffer) => { output += c.toString('utf8'); });
    proc.stderr!.on('data', (c: Buffer) => { output += c.toString('utf8'); });
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    const pm2Home = env.PM2_HOME!;
    let stopped = false;
    const stop = async () => {
      if (stopped) return;
      stopped = true;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => { try { process.kill(-proc.pid!, 'SIGKILL'); } catch { /* gone */ } }, 20_000);
      await exited;
      clearTimeout(timer);
      for (let i = 0; i < 30 && processesOf(pm2Home).some((p) => isAlive(p.pid)); i++) await sleep(100);
      for (const p of processesOf(pm2Home)) { try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ } }
    };
    cleanups.push(stop);

    let health = '';
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      assert.equal(proc.exitCode, null, `pm2-runtime exited:\n${output.slice(-3000)}`);
      const res = await call(`https://127.0.0.1:${port}`, 'GET', '/healthz', { timeoutMs: 3_000 }).catch(() => undefined);
      if (res?.status === 200) {
        health = res.text();
        break;
      }
      await sleep(200);
    }
    assert.ok(health, `/healthz did not answer 200 within 30 s:\n${output.slice(-3000)}`);
    assert.deepEqual(JSON.parse(health), { status: 'ok', gateway: 'ok', workers: { 'registry-hosted': 'ok' } });

    // The image's own HEALTHCHECK command (plain HTTP first, then HTTPS) passes against it.
    const healthcheck = /^HEALTHCHECK .*? CMD (.*)$/m.exec(text)![1]!.replaceAll('8443', String(port));
    const checked = await run('sh', ['-c', healthcheck], { env, timeoutMs: 20_000 });
    assert.equal(checked.code, 0, `HEALTHCHECK failed: ${checked.stderr}`);

    // Workers on unix sockets in a private run dir, even though the image created it 0755; only the gateway on TCP.
    const runDir = env.STEVEDORE_RUN_DIR!;
    assert.ok((await stat(join(runDir, 'hosted.sock'))).isSocket());
    assert.equal(((await stat(runDir)).mode & 0o777).toString(8), '700', 'STEVEDORE_RUN_DIR is private');
    for (const p of processesOf(pm2Home)) {
      assert.deepEqual(tcpListenPorts(p.pid), p.name === 'gateway' ? [port] : [], `${p.name ?? 'pm2-runtime'} TCP listeners`);
    }
    // No users were added and REGISTRY_AUTH is unset in the image: auth is off unless configured.
    const ping = await call(`https://127.0.0.1:${port}`, 'GET', '/v2/');
    assert.equal(ping.status, 200);

    await stop();
    assert.equal(await exited, 0, output.slice(-2000));
    assert.deepEqual(processesOf(pm2Home).filter((p) => isAlive(p.pid)), []);
  });
});
