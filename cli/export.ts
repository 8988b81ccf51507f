import { openStoreTarget } from './store.js';
import { stat } from 'node:fs/promises';
import { loadExportConfig, type ExportConfig, optionsHelp, EXPORT_OPTIONS } from '../lib/config.js';
import { formatBytes, formatDuration } from '../lib/airgap/progress.js';
import { exportStore } from '../lib/airgap/store-export.js';
import { isRegistryError } from '../lib/oci/errors.js';

/**
 * `stevedore export`: writes the hosted store's repositories (tags, manifests, blob links) and the
 * blobs they reference into one tar (gzip for .gz/.tgz), written to a temp name and renamed when
 * complete. `stevedore seed --from FILE` on the other side verifies every blob.
 */
export async function runExport(argv: readonly string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`usage: stevedore export --store DIR|s3://BUCKET[/PREFIX] --out FILE.tar[.gz]\n\noptions (each also read from the environment variable in brackets):\n${optionsHelp(EXPORT_OPTIONS)}\n`);
    return 0;
  }
  const say = (line: string) => process.stderr.write(`${line}\n`);
  let config: ExportConfig;
  try {
    config = loadExportConfig(argv);
  } catch (err) {
    say(`stevedore export: ${(err as Error).message}`);
    return 2;
  }
  if (config.store.kind === 'filesystem' && !(await stat(config.store.root).then((s) => s.isDirectory(), () => false))) {
    say(`stevedore export: --store ${config.store.root} is not a directory`);
    return 2;
  }
  const target = await openStoreTarget(config.store, config);
  const started = Date.now();
  try {
    const summary = await exportStore(target, config.out);
    for (const digest of summary.missing) say(`warning: ${digest} is referenced but not in the store; left out`);
    const size = (await stat(config.out)).size;
    say(`exported ${summary.repositories} repositor${summary.repositories === 1 ? 'y' : 'ies'}, ${summary.tags} tag(s), ${summary.blobs} blob(s) (${formatBytes(summary.bytes)}) to ${config.out} (${formatBytes(size)}) in ${formatDuration(Date.now() - started)}`);
    return 0;
  } catch (err) {
    // A store error names no store (the same error serves the registry's clients): say which one.
    say(`stevedore export: ${isRegistryError(err) ? `cannot read ${target.location}: ` : ''}${(err as Error).message}`);
    return 1;
  }
}
