import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import bcrypt from 'bcryptjs';
import { createLogger } from '../../../lib/log.js';
import { parseHtpasswd, UserDirectory } from './auth.js';

const log = createLogger('test', 'silent');
const basic = (user: string, pass: string) => `Basic ${Buffer.from(`${user}:${pass}`, 'utf8').toString('base64')}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let dir: string;
before(async () => { dir = await mkdtemp(join(tmpdir(), 'gateway-auth-')); });
after(async () => { await rm(dir, { recursive: true, force: true }); });

test('parseHtpasswd: user:hash lines; comments, blank lines, CRLF and lines without a name are skipped', () => {
  const users = parseHtpasswd('# comment\n\nalice:$2y$05$abc\r\nbob:$2b$05$def:extra\n  carol:hash  \nnocolon\n:nouser\n');
  assert.deepEqual([...users], [['alice', '$2y$05$abc'], ['bob', '$2b$05$def:extra'], ['carol', 'hash']]);
  assert.equal(parseHtpasswd('').size, 0);
  // A later line for the same user wins.
  assert.equal(parseHtpasswd('a:1\na:2\n').get('a'), '2');
});

test('UserDirectory: real bcrypt hashes ($2y$ as htpasswd -B writes, $2a$, $2b$), roles from the admins file', async () => {
  const y = bcrypt.hashSync('pw-for-yves', 5).replace(/^\$2b\$/, '$2y$');
  const a = bcrypt.hashSync('pw-for-anna', 5).replace(/^\$2b\$/, '$2a$');
  const b = bcrypt.hashSync('pw:with:colons ünïcode', 5);
  assert.match(y, /^\$2y\$05\$/);
  const htpasswd = join(dir, 'htpasswd-1');
  const admins = join(dir, 'admins-1');
  await writeFile(htpasswd, `yves:${y}\nanna:${a}\nbert:${b}\nmd5:$apr1$abc$def\nsha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n`);
  await writeFile(admins, '# admins\nyves\n  bert  \nghost\n');
  const users = new UserDirectory(htpasswd, admins, log);
  assert.deepEqual(await users.authenticate(basic('yves', 'pw-for-yves')), { name: 'yves', admin: true });
  assert.deepEqual(await users.authenticate(basic('anna', 'pw-for-anna')), { name: 'anna', admin: false });
  assert.deepEqual(await users.authenticate(basic('bert', 'pw:with:colons ünïcode')), { name: 'bert', admin: true });
  // The scheme is case-insensitive.
  assert.deepEqual(await users.authenticate(basic('anna', 'pw-for-anna').replace('Basic', 'basic')), { name: 'anna', admin: false });
  // Remembered: the same answer again (without bcrypt).
  assert.deepEqual(await users.authenticate(basic('yves', 'pw-for-yves')), { name: 'yves', admin: true });

  for (const header of [
    undefined, '', 'Bearer x', 'Basic', 'Basic ', basic('yves', 'wrong'), basic('yves', ''), basic('YVES', 'pw-for-yves'),
    basic('ghost', 'anything'), basic('', 'pw-for-yves'), `Basic ${Buffer.from('yves').toString('base64')}`,
    // Only bcrypt is accepted: MD5 (apr1) and SHA1 entries never match.
    basic('md5', 'x'), basic('sha', 'password'),
  ]) {
    assert.equal(await users.authenticate(header), undefined, String(header));
  }
  // A wrong password stays wrong on the second try (the remembered result is per password).
  assert.equal(await users.authenticate(basic('yves', 'wrong')), undefined);
});

test('UserDirectory: missing files mean nobody; edits are picked up within about a second', async () => {
  const htpasswd = join(dir, 'htpasswd-2');
  const admins = join(dir, 'admins-2');
  const users = new UserDirectory(htpasswd, admins, log);
  assert.equal(await users.authenticate(basic('zoe', 'pw-for-zoe')), undefined);

  await writeFile(htpasswd, `zoe:${bcrypt.hashSync('pw-for-zoe', 5).replace(/^\$2b\$/, '$2y$')}\n`);
  await sleep(1_100);
  assert.deepEqual(await users.authenticate(basic('zoe', 'pw-for-zoe')), { name: 'zoe', admin: false });

  await writeFile(admins, 'zoe\n');
  await sleep(1_100);
  assert.deepEqual(await users.authenticate(basic('zoe', 'pw-for-zoe')), { name: 'zoe', admin: true });

  // A changed password: the old one no longer works even though it was remembered.
  await writeFile(htpasswd, `zoe:${bcrypt.hashSync('new-pw-for-zoe', 5)}\n`);
  await sleep(1_100);
  assert.equal(await users.authenticate(basic('zoe', 'pw-for-zoe')), undefined);
  assert.deepEqual(await users.authenticate(basic('zoe', 'new-pw-for-zoe')), { name: 'zoe', admin: true });

  await rm(htpasswd);
  await sleep(1_100);
  assert.equal(await users.authenticate(basic('zoe', 'new-pw-for-zoe')), undefined);
});

test('UserDirectory: requests arriving together before the files are read all get the right answer', async () => {
  const htpasswd = join(dir, 'htpasswd-burst');
  await writeFile(htpasswd, `dora:${bcrypt.hashSync('pw-for-dora', 5)}\n`);
  const users = new UserDirectory(htpasswd, join(dir, 'admins-burst'), log);
  const right = await Promise.all(Array.from({ length: 12 }, () => users.authenticate(basic('dora', 'pw-for-dora'))));
  assert.deepEqual(right, Array.from({ length: 12 }, () => ({ name: 'dora', admin: false })));
  const wrong = await Promise.all(Array.from({ length: 4 }, () => users.authenticate(basic('dora', 'wrong'))));
  assert.deepEqual(wrong, [undefined, undefined, undefined, undefined]);
  assert.deepEqual(await users.authenticate(basic('dora', 'pw-for-dora')), { name: 'dora', admin: false });
});
