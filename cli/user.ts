import { readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createInterface } from 'node:readline';
import bcrypt from 'bcryptjs';
import { adminsPathOf, loadApplianceConfig } from '../lib/config.js';
import { writeFileAtomic } from '../lib/storage/atomic.js';
import { parseHtpasswd } from '../services/gateway/src/auth.js';
import { checkArguments, USER_USAGE } from './usage.js';

/** bcrypt cost: as `htpasswd -B -C 12`; the gateway remembers verified logins, so this costs once. */
const BCRYPT_COST = 12;
const USER_NAME = /^[A-Za-z0-9._@-]{1,128}$/;

/** Verbs and their aliases, as minimal-oci-registry's manage-user accepts them. */
const VERBS: Record<string, 'ls' | 'add' | 'toggle' | 'rm'> = {
  ls: 'ls', list: 'ls', l: 'ls',
  add: 'add', a: 'add', new: 'add', n: 'add',
  toggle: 'toggle', t: 'toggle',
  rm: 'rm', del: 'rm', d: 'rm', r: 'rm',
};

async function readLines(path: string): Promise<string> {
  return readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return '';
    throw err;
  });
}

/** The password: typed at a prompt (not echoed) on a terminal, else the first line of stdin. */
async function readPassword(user: string): Promise<string> {
  if (!process.stdin.isTTY) {
    let input = '';
    for await (const chunk of process.stdin) input += chunk;
    return input.split('\n')[0]!.replace(/\r$/, '');
  }
  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: true });
  const ask = (q: string) => new Promise<string>((resolve) => {
    process.stdout.write(q);
    (rl as unknown as { _writeToOutput: (s: string) => void })._writeToOutput = () => {};
    rl.question('', (answer) => { process.stdout.write('\n'); resolve(answer); });
  });
  const first = await ask(`password for ${user}: `);
  const second = await ask('again: ');
  rl.close();
  if (first !== second) throw new Error('passwords do not match');
  return first;
}

/** `stevedore user ls|add|toggle|rm`: htpasswd users and the admins list (see README "Users"). */
export async function runUser(argv: readonly string[]): Promise<number> {
  const [rawVerb, ...args] = argv;
  const verb = rawVerb ? VERBS[rawVerb.toLowerCase()] : undefined;
  if (!verb) {
    const what = rawVerb === undefined ? 'a subcommand is required' : rawVerb.startsWith('-') ? `unknown option ${rawVerb}` : `unknown subcommand "${rawVerb}"`;
    process.stderr.write(`stevedore user: ${what}\n\n${USER_USAGE}`);
    return 2;
  }
  const refused = checkArguments(`user ${verb}`, args, verb === 'add' ? ['--admin'] : [], verb === 'ls' ? 0 : 1);
  if (refused) {
    process.stderr.write(`${refused}\n\n${USER_USAGE}`);
    return 2;
  }
  const name = args.find((a) => !a.startsWith('-'));
  const flags = args.filter((a) => a.startsWith('-'));
  const config = loadApplianceConfig([]);
  const htpasswdPath = config.htpasswdPath;
  const adminsPath = adminsPathOf(config);
  const users = parseHtpasswd(await readLines(htpasswdPath));
  const admins = new Set((await readLines(adminsPath)).split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#')));

  const save = async () => {
    const htpasswd = [...users].map(([u, h]) => `${u}:${h}\n`).join('');
    await writeFileAtomic(dirname(htpasswdPath), htpasswdPath, htpasswd);
    await writeFileAtomic(dirname(adminsPath), adminsPath, [...admins].filter((a) => users.has(a)).map((a) => `${a}\n`).join(''));
  };

  if (verb === 'ls') {
    for (const user of [...users.keys()].sort()) process.stdout.write(`${user}\t${admins.has(user) ? 'admin' : 'read-only'}\n`);
    return 0;
  }
  if (!name || !USER_NAME.test(name)) {
    process.stderr.write(`stevedore user ${verb}: a user name is required (letters, digits, . _ @ -)\n`);
    return 2;
  }
  switch (verb) {
    case 'add': {
      const password = await readPassword(name);
      if (password.length < 8) {
        process.stderr.write('stevedore user add: the password must have at least 8 characters\n');
        return 2;
      }
      const existed = users.has(name);
      users.set(name, (await bcrypt.hash(password, BCRYPT_COST)).replace(/^\$2b\$/, '$2y$'));
      if (flags.includes('--admin')) admins.add(name);
      await save();
      process.stdout.write(`${existed ? 'updated' : 'added'} ${name} (${admins.has(name) ? 'admin' : 'read-only'})\n`);
      return 0;
    }
    case 'toggle': {
      if (!users.has(name)) {
        process.stderr.write(`stevedore user toggle: no user ${name}\n`);
        return 1;
      }
      if (admins.has(name)) admins.delete(name);
      else admins.add(name);
      await save();
      process.stdout.write(`${name} is now ${admins.has(name) ? 'admin' : 'read-only'}\n`);
      return 0;
    }
    case 'rm': {
      if (!users.delete(name)) {
        process.stderr.write(`stevedore user rm: no user ${name}\n`);
        return 1;
      }
      admins.delete(name);
      await save();
      process.stdout.write(`removed ${name}\n`);
      return 0;
    }
  }
}
