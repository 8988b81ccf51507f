import { readFileSync } from 'node:fs';
import { optionsHelp, REGISTRY_OPTIONS } from '../lib/config.js';
import { runRegistry } from '../services/registry/src/main.js';
import { runGateway } from '../services/gateway/src/main.js';
import { runStart } from './start.js';
import { runLoggerService } from '../services/logger/src/main.js';
import { runClean, runCleanerService, runGc } from '../services/cleaner/src/main.js';
import { runTls } from './tls.js';
import { runUser } from './user.js';
import { runMirror } from './mirror.js';
import { runSeed } from './seed.js';
import { runExport } from './export.js';

const USAGE = `usage: stevedore <command> [options]

commands:
  start      run the whole appliance (gateway + workers) in the foreground under pm2-runtime
  registry   run one registry worker in the foreground (hosted, --read-only, or --upstream cache)
  gateway    run the gateway (TLS, users, routing to the workers) in the foreground
  logger     run the logger service (access log → atime of served blobs and manifests)
  cleaner    run the cleaner service (GC at start, then LRU eviction every CLEANER_RUNEVERY_TIME)
  clean      one eviction run now (--dry-run: print what would be evicted and why)
  gc         garbage-collect unreferenced blobs and stale uploads (--dry-run)
  user       manage users: ls | add NAME [--admin] | toggle NAME | rm NAME
  tls        manage the gateway certificate: print | cert | key | generate ADDRESS...
  mirror     copy the images of a list from their registries into a store (air gap; --help for options)
  seed       import an OCI layout, docker-archive, registry dir or export archive into a store (--help)
  export     write a store's repositories and blobs to one .tar[.gz] to carry across (--help)
  version    print the version

stevedore registry options (each also read from the environment variable in brackets):
${optionsHelp(REGISTRY_OPTIONS)}
`;

/** Entry point of the `stevedore` command; resolves with the process exit code. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'registry':
      return runRegistry(rest);
    case 'gateway':
      return runGateway(rest);
    case 'start':
      return runStart(rest);
    case 'logger':
      return runLoggerService(rest);
    case 'cleaner':
      return runCleanerService(rest);
    case 'clean':
      return runClean(rest);
    case 'gc':
      return runGc(rest);
    case 'user':
      return runUser(rest);
    case 'tls':
      return runTls(rest);
    case 'mirror':
      return runMirror(rest);
    case 'seed':
      return runSeed(rest);
    case 'export':
      return runExport(rest);
    case 'version':
    case '--version': {
      const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
      process.stdout.write(`${pkg.version}\n`);
      return 0;
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`stevedore: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}
