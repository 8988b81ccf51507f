#!/usr/bin/env node
// Runs every compiled test file (dist/**/*.test.js) with Node's built-in test runner.
// Node 20's runner takes no globs, so the files are listed here.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const dist = join(root, 'dist');
const filter = process.argv.slice(2);

function walk(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === 'node_modules' ? [] : walk(path);
    return entry.name.endsWith('.test.js') ? [path] : [];
  });
}

const files = walk(dist)
  .filter((file) => filter.length === 0 || filter.some((f) => relative(dist, file).includes(f)))
  .sort();
if (files.length === 0) {
  console.error('no test files found under dist/ (did the build run?)');
  process.exit(1);
}
// One Ceph RGW for the whole run (the S3 suites each use their own prefix in its bucket), instead of
// one cluster per test file: test/helpers/storage-targets.ts finds it through STEVEDORE_TEST_RGW_DIR.
const env = { ...process.env };
let rgwDir;
if (!env.STEVEDORE_TEST_RGW_DIR && existsSync('/usr/bin/radosgw')) {
  rgwDir = mkdtempSync(join(tmpdir(), 'stevedore-run-rgw-'));
  const started = spawnSync('bash', [join(root, 'scripts', 'ceph-rgw.sh'), 'start', rgwDir], { encoding: 'utf8', timeout: 120_000 });
  if (started.status !== 0) {
    console.error(`could not start Ceph RGW for the S3 suites:\n${started.stderr}`);
    process.exit(1);
  }
  env.STEVEDORE_TEST_RGW_DIR = rgwDir;
}
const stopRgw = () => {
  if (!rgwDir) return;
  spawnSync('bash', [join(root, 'scripts', 'ceph-rgw.sh'), 'stop', rgwDir]);
  rmSync(rgwDir, { recursive: true, force: true });
  rgwDir = undefined;
};
for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => { stopRgw(); process.exit(130); });
const result = spawnSync(process.execPath, ['--test', '--test-reporter=spec', '--test-concurrency=2', ...files], { stdio: 'inherit', cwd: root, env });
stopRgw();
process.exit(result.status ?? 1);
