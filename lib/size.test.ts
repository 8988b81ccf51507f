import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { loadCleanerConfig, ConfigError } from './config.js';
import { parseDuration } from './duration.js';
import { parseSize } from './size.js';

const KiB = 1024;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

describe('parseSize (CLEANER_MAXSIZE)', () => {
  it('bare prefixes and iB are powers of 1024 (registry-cache\'s 10G = 10 GiB)', () => {
    assert.equal(parseSize('10G'), 10 * GiB);
    assert.equal(parseSize('10Gi'), 10 * GiB);
    assert.equal(parseSize('10GiB'), 10 * GiB);
    assert.equal(parseSize('500M'), 500 * MiB);
    assert.equal(parseSize('10KiB'), 10 * KiB);
    assert.equal(parseSize('2T'), 2 * 1024 ** 4);
  });

  it('kB, MB, GB are powers of 1000', () => {
    assert.equal(parseSize('10GB'), 10_000_000_000);
    assert.equal(parseSize('800MB'), 800_000_000);
    assert.equal(parseSize('10kB'), 10_000);
  });

  it('is case-insensitive, accepts decimals and spaces, rounds to whole bytes', () => {
    for (const v of ['10g', '10gib', '10GIB', '10 G', ' 10G ']) assert.equal(parseSize(v), 10 * GiB, v);
    assert.equal(parseSize('10gb'), 10_000_000_000);
    assert.equal(parseSize('1.5G'), 1.5 * GiB);
    assert.equal(parseSize('1.5GB'), 1_500_000_000);
    assert.equal(parseSize('0.5KiB'), 512);
    assert.equal(parseSize('.5M'), 512 * KiB);
    assert.equal(parseSize('1.0001K'), 1024);
  });

  it('plain numbers and B are bytes', () => {
    assert.equal(parseSize('100'), 100);
    assert.equal(parseSize('100B'), 100);
    assert.equal(parseSize('100b'), 100);
  });

  it('rejects anything else', () => {
    for (const v of ['', 'G', 'ten', '10X', '10 GiBs', '-1G', '1e3', '10i', '10iB', '1,5G', '10G10M', '0x10', 'Infinity']) {
      assert.throws(() => parseSize(v), /invalid size/, v);
    }
    assert.throws(() => parseSize(`1${'0'.repeat(400)}E`), /too large|invalid size/);
  });
});

describe('parseDuration (CLEANER_RUNEVERY_TIME, CLEANER_GRACE_TIME)', () => {
  it('Go-style units, combined', () => {
    assert.equal(parseDuration('1h2m3s'), 3_723_000);
    assert.equal(parseDuration('30m'), 1_800_000);
    assert.equal(parseDuration('1h 30m'), 5_400_000);
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('1m500ms'), 60_500);
    assert.equal(parseDuration('2d'), 172_800_000);
    assert.equal(parseDuration('1.5h'), 5_400_000);
    assert.equal(parseDuration('0s'), 0);
    assert.equal(parseDuration('90'), 90_000);
  });

  it('rejects anything else', () => {
    for (const v of ['', 'h', '1x', '1h2', 'one hour', '-5m', '5 minutes']) assert.throws(() => parseDuration(v), Error, v);
  });
});

describe('cleaner configuration', () => {
  it('reads the registry-cache variables', () => {
    const config = loadCleanerConfig([], {
      STEVEDORE_ROOT: '/srv/registry', CLEANER_MAXSIZE: '10G', CLEANER_THRESHOLD_PERCENTAGE: '15', CLEANER_RUNEVERY_TIME: '1h2m3s', CLEANER_GRACE_TIME: '0s',
    });
    assert.equal(config.root, '/srv/registry');
    assert.equal(config.maxSize, 10 * GiB);
    assert.equal(config.thresholdPercentage, 15);
    assert.equal(config.runEvery, 3_723_000);
    assert.equal(config.grace, 0);
    assert.equal(config.dryRun, false);
  });

  it('defaults: 10 GiB, 20 %, every 30 min, 1 h grace', () => {
    const config = loadCleanerConfig([], {});
    assert.equal(config.maxSize, 10 * GiB);
    assert.equal(config.thresholdPercentage, 20);
    assert.equal(config.runEvery, 30 * 60_000);
    assert.equal(config.grace, 60 * 60_000);
  });

  it('flags win over variables', () => {
    const config = loadCleanerConfig(['--max-size', '2GB', '--dry-run'], { CLEANER_MAXSIZE: '10G' });
    assert.equal(config.maxSize, 2_000_000_000);
    assert.equal(config.dryRun, true);
  });

  it('an invalid value is a ConfigError naming the variable', () => {
    const cases: Array<[NodeJS.ProcessEnv, RegExp]> = [
      [{ CLEANER_MAXSIZE: 'lots' }, /CLEANER_MAXSIZE/],
      [{ CLEANER_MAXSIZE: '0' }, /CLEANER_MAXSIZE.*greater than zero/],
      [{ CLEANER_RUNEVERY_TIME: 'hourly' }, /CLEANER_RUNEVERY_TIME/],
      [{ CLEANER_RUNEVERY_TIME: '0s' }, /CLEANER_RUNEVERY_TIME/],
      [{ CLEANER_THRESHOLD_PERCENTAGE: 'x' }, /CLEANER_THRESHOLD_PERCENTAGE/],
      [{ CLEANER_GRACE_TIME: 'soon' }, /CLEANER_GRACE_TIME/],
    ];
    for (const [env, message] of cases) {
      assert.throws(() => loadCleanerConfig([], env), (err: unknown) => err instanceof ConfigError && message.test((err as Error).message), JSON.stringify(env));
    }
  });
});
