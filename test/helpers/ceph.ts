import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT, tempDir } from './processes.js';

const run = promisify(execFile);
const SCRIPT = join(REPO_ROOT, 'scripts', 'ceph-rgw.sh');

/** A throw-away Ceph RADOS Gateway (scripts/ceph-rgw.sh): a real S3 endpoint on loopback, one bucket. */
export interface CephRgw {
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  /** AWS_* variables for a child process (the SDK's own names). */
  env: Record<string, string>;
  /** The cluster's directory: its conf, data, logs and pid files. */
  dir: string;
  /** Kills the daemons and removes the directory; safe to call twice. */
  stop(): Promise<void>;
}

/** The `export NAME=value` lines scripts/ceph-rgw.sh prints (start, env), as a map. */
export function parseCephEnv(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const match = /^export ([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (match) env[match[1]!] = match[2]!;
  }
  return env;
}

/**
 * Starts a cluster for one test file (~3-5 s) and sets AWS_* in this process, so createS3Client()
 * finds it as a deployed service would. Call stop() in after(): it kills the daemons by pid file.
 */
export async function startCephRgw(): Promise<CephRgw> {
  // A start that fails (a daemon losing a race for its port to a cluster another test file starts at
  // the same moment) is retried once in a fresh directory with fresh ports.
  try {
    return await startCephRgwOnce();
  } catch {
    return startCephRgwOnce();
  }
}

async function startCephRgwOnce(): Promise<CephRgw> {
  const dir = await tempDir('stevedore-ceph-');
  let stdout: string;
  try {
    ({ stdout } = await run('bash', [SCRIPT, 'start', dir], { timeout: 60_000 }));
  } catch (err) {
    await run('bash', [SCRIPT, 'stop', dir]).catch(() => {});
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const env = parseCephEnv(stdout);
  const { CEPH_RGW_BUCKET: bucket, ...awsEnv } = env;
  Object.assign(process.env, awsEnv);
  return {
    endpoint: env.AWS_ENDPOINT_URL!,
    bucket: bucket!,
    accessKeyId: env.AWS_ACCESS_KEY_ID!,
    secretAccessKey: env.AWS_SECRET_ACCESS_KEY!,
    region: env.AWS_REGION!,
    env: awsEnv,
    dir,
    stop: async () => {
      await run('bash', [SCRIPT, 'stop', dir]);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
