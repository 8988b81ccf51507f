import {
  APPLIANCE_OPTIONS, CLEANER_OPTIONS, LOGGER_OPTIONS, REGISTRY_OPTIONS, optionsHelp,
} from '../lib/config.js';

/**
 * The usage text of each command that does not print its own (mirror, seed and export do): what
 * `stevedore COMMAND --help` (or -h, or `stevedore help COMMAND`) writes to stdout.
 */
const ENV_NOTE = 'options (each also read from the environment variable in brackets):';

export const USER_USAGE = `usage: stevedore user ls | add NAME [--admin] | toggle NAME | rm NAME

  ls            list users and their role (admin or read-only)
  add NAME      add a user or change their password (read from stdin when it is not a terminal);
                --admin makes them an admin
  toggle NAME   switch a user between read-only and admin
  rm NAME       remove a user

files: REGISTRY_AUTH_HTPASSWD_PATH (default /auth/htpasswd), REGISTRY_AUTH_ADMINS_PATH (default: "admins" beside it)
`;

export const TLS_USAGE = `usage: stevedore tls print | cert < cert.pem | key < key.pem | generate ADDRESS...

  print              subject, names, validity and fingerprint of the gateway's certificate
  cert < cert.pem    install a certificate from stdin (empty input removes it)
  key < key.pem      install a private key from stdin (empty input removes it)
  generate ADDRESS   make a self-signed certificate (10 years) whose SANs are the given IPs or DNS names

files: TLS_CERTS_PATH (default /certs/certs.pem, certificate and key in one PEM), or TLS_CERT_PATH + TLS_KEY_PATH
`;

export const USAGES: Record<string, () => string> = {
  start: () => `usage: stevedore start

Runs the whole appliance in the foreground under pm2-runtime: the gateway, the hosted registry, one
cache worker per upstream of the pull secret, the logger and the cleaner. It takes no arguments: it is
configured with environment variables (see README "Configuration"), among them:
${optionsHelp(APPLIANCE_OPTIONS)}
`,
  registry: () => `usage: stevedore registry [options]

Runs one registry worker in the foreground: hosted, --read-only, or a pull-through cache (--upstream).

${ENV_NOTE}
${optionsHelp(REGISTRY_OPTIONS)}
`,
  gateway: () => `usage: stevedore gateway [options]

Runs the gateway (TLS, users, routing to the workers) in the foreground.

${ENV_NOTE}
${optionsHelp(APPLIANCE_OPTIONS)}
`,
  logger: () => `usage: stevedore logger [options]

Runs the logger service: tails the access log and sets the atime of served blobs and manifests.

${ENV_NOTE}
${optionsHelp(LOGGER_OPTIONS)}
`,
  cleaner: () => `usage: stevedore cleaner [options]

Runs the cleaner service: garbage collection at start-up, then an eviction run every --run-every.

${ENV_NOTE}
${optionsHelp(CLEANER_OPTIONS)}
`,
  clean: () => `usage: stevedore clean [--dry-run] [options]

One eviction run now (--dry-run: print what would be evicted and why). Exits 75 while another
cleaner holds the store lease (one cleaner/GC at a time across appliances; --dry-run needs none).

${ENV_NOTE}
${optionsHelp(CLEANER_OPTIONS)}
`,
  gc: () => `usage: stevedore gc [--dry-run] [options]

Garbage-collects blobs no manifest references and stale upload sessions (--dry-run: print only).
Exits 75 while another cleaner holds the store lease.

${ENV_NOTE}
${optionsHelp(CLEANER_OPTIONS)}
`,
  user: () => USER_USAGE,
  tls: () => TLS_USAGE,
  version: () => 'usage: stevedore version\n\nPrints the version.\n',
  help: () => 'usage: stevedore help [COMMAND]\n\nLists the commands, or prints the usage of COMMAND.\n',
};

export const isHelpFlag = (arg: string): boolean => arg === '--help' || arg === '-h';

/**
 * Checks a subcommand's arguments: options must be among `allowed`, and there must be `positional`
 * other arguments (a number, or [min, max]). Returns the message for stderr when they are not.
 */
export function checkArguments(command: string, args: readonly string[], allowed: readonly string[], positional: number | [number, number]): string | undefined {
  const [min, max] = typeof positional === 'number' ? [positional, positional] : positional;
  const options = args.filter((a) => a.startsWith('-'));
  const unknown = options.find((o) => !allowed.includes(o));
  if (unknown !== undefined) {
    const known = allowed.length > 0 ? ` (known: ${allowed.join(', ')})` : ' (it takes none)';
    return `stevedore ${command}: unknown option ${unknown}${known}`;
  }
  const rest = args.filter((a) => !a.startsWith('-'));
  if (rest.length > max) return `stevedore ${command}: unexpected argument "${rest[max]}"`;
  if (rest.length < min) return `stevedore ${command}: missing argument`;
  return undefined;
}
