import { readFileSync } from 'node:fs';
import { optionsHelp, REGISTRY_OPTIONS } from '../lib/config.js';
import { checkArguments, isHelpFlag, USAGES } from './usage.js';

/**
 * Each command loads only its own modules: a registry worker process does not carry the gateway,
 * the cleaner or the air-gap tooling in memory.
 */
const COMMANDS: Record<string, () => Promise<(argv: string[]) => Promise<number>>> = {
  registry: async () => (await import('../services/registry/src/main.js')).runRegistry,
  gateway: async () => (await import('../services/gateway/src/main.js')).runGateway,
  start: async () => (await import('./start.js')).runStart,
  logger: async () => (await import('../services/logger/src/main.js')).runLoggerService,
  cleaner: async () => (await import('../services/cleaner/src/main.js')).runCleanerService,
  clean: async () => (await import('../services/cleaner/src/main.js')).runClean,
  gc: async () => (await import('../services/cleaner/src/main.js')).runGc,
  user: async () => (await import('./user.js')).runUser,
  tls: async () => (await import('./tls.js')).runTls,
  mirror: async () => (await import('./mirror.js')).runMirror,
  seed: async () => (await import('./seed.js')).runSeed,
  export: async () => (await import('./export.js')).runExport,
};

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
  help       this list; \`stevedore help COMMAND\` or \`stevedore COMMAND --help\`: a command's usage

stevedore registry options (each also read from the environment variable in brackets):
${optionsHelp(REGISTRY_OPTIONS)}
`;

/** Entry point of the `stevedore` command; resolves with the process exit code. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  // `COMMAND --help` / `-h` anywhere among its arguments: its usage on stdout, and nothing else is
  // done (mirror, seed and export print their own).
  const usage = command === undefined ? undefined : USAGES[command];
  if (usage && rest.some(isHelpFlag)) {
    process.stdout.write(usage());
    return 0;
  }
  const load = command === undefined ? undefined : COMMANDS[command];
  if (load) return (await load())(rest);
  switch (command) {
    case 'version':
    case '--version': {
      const refused = checkArguments('version', rest, [], 0);
      if (refused) {
        process.stderr.write(`${refused}\n`);
        return 2;
      }
      const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
      process.stdout.write(`${pkg.version}\n`);
      return 0;
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h': {
      const refused = checkArguments('help', rest, [], [0, 1]);
      if (refused) {
        process.stderr.write(`${refused}\n`);
        return 2;
      }
      const topic = rest[0];
      if (topic !== undefined) {
        if (USAGES[topic]) {
          process.stdout.write(USAGES[topic]!());
          return 0;
        }
        if (COMMANDS[topic]) return (await COMMANDS[topic]!())(['--help']);
        process.stderr.write(`stevedore help: unknown command "${topic}"\n\n${USAGE}`);
        return 2;
      }
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    }
    default:
      process.stderr.write(`stevedore: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}
