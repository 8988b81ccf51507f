import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { STEVEDORE_BIN, tempDir } from './helpers/processes.js';

/**
 * Every command and subcommand of the `stevedore` CLI answers --help and -h with its usage on stdout
 * and exit 0, doing nothing else; an unknown option is exit 2 with a message naming it.
 */

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

let dir: string;
let env: NodeJS.ProcessEnv;

function cli(args: string[]): Promise<Result> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [STEVEDORE_BIN, ...args], { env, cwd: dir, timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
    child.stdin?.end();
  });
}

/** Runs `jobs` at most `width` at a time (each is a node start-up). */
async function pooled<T>(jobs: Array<() => Promise<T>>, width = 4): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]!();
    }
  }));
  return results;
}

// Every command, and every subcommand of those that have them, as a user would type it.
const COMMANDS: string[][] = [
  ['start'], ['registry'], ['gateway'], ['logger'], ['cleaner'], ['clean'], ['gc'],
  ['user'], ['user', 'ls'], ['user', 'add'], ['user', 'add', 'bob'], ['user', 'toggle', 'bob'], ['user', 'rm', 'bob'],
  ['tls'], ['tls', 'print'], ['tls', 'cert'], ['tls', 'key'], ['tls', 'generate'], ['tls', 'generate', 'host.lan'],
  ['mirror'], ['seed'], ['export'], ['version'], ['help'],
];

before(async () => {
  dir = await tempDir('cli-help-');
  // Every file a command could write points into `dir`, which must stay empty.
  env = {
    ...process.env,
    STEVEDORE_ROOT: join(dir, 'root'),
    STEVEDORE_RUN_DIR: join(dir, 'run'),
    STEVEDORE_GATEWAY_LISTEN: '127.0.0.1:0',
    STEVEDORE_LISTEN: '127.0.0.1:0',
    PULLSECRETPATH: join(dir, 'pull-secret.json'),
    TLS_CERTS_PATH: join(dir, 'certs.pem'),
    REGISTRY_AUTH_HTPASSWD_PATH: join(dir, 'htpasswd'),
    PM2_HOME: join(dir, 'pm2'),
  };
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('stevedore CLI: --help, -h and unknown options', () => {
  it('every command and subcommand answers --help and -h with its usage on stdout, exit 0, and does nothing else', async () => {
    const jobs = COMMANDS.flatMap((command) => ['--help', '-h'].map((flag) => async () => ({ command, flag, result: await cli([...command, flag]) })));
    for (const { command, flag, result } of await pooled(jobs)) {
      const what = `stevedore ${command.join(' ')} ${flag}`;
      assert.equal(result.code, 0, `${what}: exit ${result.code}, stderr ${result.stderr}`);
      assert.equal(result.stderr, '', what);
      assert.match(result.stdout, new RegExp(`^usage: stevedore ${command[0]}\\b`), what);
    }
    assert.deepEqual(await readdir(dir), [], 'no command wrote anything (no certificate generated, no user added)');
  });

  it('`stevedore help COMMAND` prints the same usage as `COMMAND --help`', async () => {
    for (const command of ['start', 'tls', 'user', 'registry', 'mirror']) {
      const [help, flag] = await Promise.all([cli(['help', command]), cli([command, '--help'])]);
      assert.equal(help.code, 0, command);
      assert.equal(help.stdout, flag.stdout, command);
    }
  });

  it('an unknown option is exit 2 with a message naming it, and nothing is done', async () => {
    const jobs = COMMANDS.map((command) => async () => ({ command, result: await cli([...command, '--no-such-option']) }));
    for (const { command, result } of await pooled(jobs)) {
      const what = `stevedore ${command.join(' ')} --no-such-option`;
      assert.equal(result.code, 2, `${what}: exit ${result.code}, stdout ${result.stdout.slice(0, 200)}`);
      assert.match(result.stderr, /unknown option --no-such-option/, what);
      assert.equal(result.stdout, '', what);
    }
    assert.deepEqual(await readdir(dir), []);
  });
});
