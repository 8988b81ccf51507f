import { X509Certificate } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { isIP } from 'node:net';
import { generate } from 'selfsigned';
import { loadApplianceConfig } from '../lib/config.js';
import { writeFileAtomic } from '../lib/storage/atomic.js';
import { checkArguments, TLS_USAGE } from './usage.js';

const CERT_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g;
const KEY_BLOCK = /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]+?-----END [A-Z ]*PRIVATE KEY-----\n?/g;

async function readText(path: string): Promise<string> {
  return readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return '';
    throw err;
  });
}

async function readStdin(): Promise<string> {
  let input = '';
  for await (const chunk of process.stdin) input += chunk;
  return input.trim() === '' ? '' : `${input.trim()}\n`;
}

/** Where certificate and key live: TLS_CERT_PATH + TLS_KEY_PATH, else both in TLS_CERTS_PATH. */
interface TlsFiles {
  read(): Promise<{ cert: string; key: string }>;
  write(cert: string, key: string): Promise<void>;
}

function tlsFiles(): TlsFiles {
  const config = loadApplianceConfig([]);
  const save = async (path: string, text: string) => {
    if (text === '') await rm(path, { force: true });
    else {
      await writeFileAtomic(dirname(path), path, text);
    }
  };
  if (config.tlsCertPath && config.tlsKeyPath) {
    const certPath = config.tlsCertPath;
    const keyPath = config.tlsKeyPath;
    return {
      read: async () => ({ cert: await readText(certPath), key: await readText(keyPath) }),
      write: async (cert, key) => { await save(certPath, cert); await save(keyPath, key); },
    };
  }
  const path = config.tlsCertsPath;
  return {
    read: async () => {
      const pem = await readText(path);
      return { cert: (pem.match(CERT_BLOCK) ?? []).join(''), key: (pem.match(KEY_BLOCK) ?? []).join('') };
    },
    write: async (cert, key) => save(path, cert && key ? cert + key : cert + key),
  };
}

/**
 * `stevedore tls print | cert | key | generate ADDRESS...`: inspect the gateway's certificate,
 * replace the certificate or key from stdin (empty input removes it), or make a self-signed one
 * whose SANs cover the given addresses (IP or DNS). The gateway reads them at start.
 */
export async function runTls(argv: readonly string[]): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb === undefined || !['print', 'cert', 'key', 'generate'].includes(verb)) {
    const what = verb === undefined ? 'a subcommand is required' : verb.startsWith('-') ? `unknown option ${verb}` : `unknown subcommand "${verb}"`;
    process.stderr.write(`stevedore tls: ${what}\n\n${TLS_USAGE}`);
    return 2;
  }
  // Addresses never start with "-": anything that does is an option, and tls has none.
  const refused = checkArguments(`tls ${verb}`, rest, [], verb === 'generate' ? [1, Number.MAX_SAFE_INTEGER] : 0);
  if (refused) {
    process.stderr.write(`${refused}\n\n${TLS_USAGE}`);
    return 2;
  }
  const files = tlsFiles();
  switch (verb) {
    case 'print': {
      const { cert, key } = await files.read();
      if (!cert) {
        process.stdout.write('no certificate configured: the gateway serves plain HTTP\n');
        return 1;
      }
      const x509 = new X509Certificate(cert);
      process.stdout.write(`subject: ${x509.subject.replace(/\n/g, ', ')}\nissuer: ${x509.issuer.replace(/\n/g, ', ')}\n`
        + `names: ${x509.subjectAltName ?? '-'}\nvalid: ${x509.validFrom} .. ${x509.validTo}\n`
        + `sha256: ${x509.fingerprint256}\nkey: ${key ? 'present' : 'MISSING'}\n`);
      return 0;
    }
    case 'cert':
    case 'key': {
      const input = await readStdin();
      const pattern = verb === 'cert' ? CERT_BLOCK : KEY_BLOCK;
      if (input && !(input.match(pattern)?.length)) {
        process.stderr.write(`stevedore tls ${verb}: stdin is not a PEM ${verb === 'cert' ? 'certificate' : 'private key'}\n`);
        return 2;
      }
      const current = await files.read();
      await files.write(verb === 'cert' ? input : current.cert, verb === 'key' ? input : current.key);
      process.stdout.write(input ? `${verb} saved; restart the gateway to use it\n` : `${verb} removed\n`);
      return 0;
    }
    case 'generate': {
      const altNames = rest.map((address) => (isIP(address) ? { type: 7 as const, ip: address } : { type: 2 as const, value: address }));
      const notAfterDate = new Date(Date.now() + 3650 * 86_400_000);
      const pems = await generate([{ name: 'commonName', value: rest[0]! }], {
        keySize: 3072, algorithm: 'sha256', notAfterDate,
        extensions: [
          { name: 'basicConstraints', cA: false },
          { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
          { name: 'extKeyUsage', serverAuth: true },
          { name: 'subjectAltName', altNames },
        ],
      });
      await files.write(pems.cert.endsWith('\n') ? pems.cert : `${pems.cert}\n`, pems.private.endsWith('\n') ? pems.private : `${pems.private}\n`);
      process.stdout.write(`generated a self-signed certificate for ${rest.join(', ')} (valid 10 years); restart the gateway to use it\n`);
      return 0;
    }
    default:
      return 2;
  }
}
