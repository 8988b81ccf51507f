import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadSeedConfig, type SeedConfig, optionsHelp, SEED_OPTIONS } from '../lib/config.js';
import { isRegistryError } from '../lib/oci/errors.js';
import { openSeedInput, type SeedInput } from '../lib/airgap/archive.js';
import { openDockerArchive } from '../lib/airgap/docker-archive.js';
import { importSeedImage, type SeedSource } from '../lib/airgap/importer.js';
import { openOciLayout } from '../lib/airgap/oci-layout.js';
import { formatBytes, formatDuration } from '../lib/airgap/progress.js';
import { openRegistryDir } from '../lib/airgap/registry-dir.js';
import { openStoreExport } from '../lib/airgap/store-export.js';
import { AirgapError, StoreWriter } from '../lib/airgap/store-writer.js';
import type { StoreTarget } from '../lib/airgap/store-target.js';
import { openStoreTarget, openStoreWriter } from './store.js';

/**
 * `stevedore seed`: imports images into a store from an OCI image layout, a docker-archive (docker
 * save, K3s airgap images), a registry directory or a `stevedore export` archive. Every manifest and
 * blob is verified against its digest; an image with a corrupt or missing blob is refused whole
 * (nothing of it becomes visible) and named in the failures.
 */

/**
 * Where archives are extracted: in a directory store, inside it (same filesystem, so verified blobs
 * are renamed into place), apart from the temp dirs a restarting worker sweeps; for an S3 store, in
 * the OS temp dir (TMPDIR), from where verified blobs are streamed into the store.
 */
export function seedTempDir(target: StoreTarget): string {
  return target.extractionDir ?? join(tmpdir(), 'stevedore-seed');
}

async function openSource(input: SeedInput, config: SeedConfig): Promise<SeedSource> {
  const naming = { name: config.name, keepRegistry: config.keepRegistry };
  switch (input.format) {
    case 'docker-archive':
      return openDockerArchive(input.dir, input.extracted, naming);
    case 'oci-layout':
      return openOciLayout(input.dir, input.extracted, naming);
    case 'store':
      return openStoreExport(input.dir, input.extracted);
    case 'registry-dir':
      return openRegistryDir(input.dir, input.extracted);
  }
}

function describeError(err: unknown): string {
  if (err instanceof AirgapError || isRegistryError(err)) return err.message;
  return (err as Error)?.message ?? String(err);
}

export async function runSeed(argv: readonly string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`usage: stevedore seed --from PATH --store DIR|s3://BUCKET[/PREFIX] [--name REPO] [--keep-registry]\n\noptions (each also read from the environment variable in brackets):\n${optionsHelp(SEED_OPTIONS)}\n`);
    return 0;
  }
  const say = (line: string) => process.stderr.write(`${line}\n`);
  let config: SeedConfig;
  try {
    config = loadSeedConfig(argv);
  } catch (err) {
    say(`stevedore seed: ${(err as Error).message}`);
    return 2;
  }
  const target = await openStoreTarget(config.store, config);
  const storeDir = target.location;
  let writer: StoreWriter;
  try {
    writer = await openStoreWriter(target, [seedTempDir(target)]);
  } catch (err) {
    say(`stevedore seed: cannot use --store ${storeDir}: ${describeError(err)}`);
    return 2;
  }

  const started = Date.now();
  let input: SeedInput | undefined;
  // An interrupted seed removes what it extracted; stored blobs are complete, and no tag was written for a half-imported image.
  const onSignal = (signal: NodeJS.Signals) => {
    say(`stevedore seed: ${signal}: stopping`);
    void (input?.cleanup() ?? Promise.resolve()).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    say(`reading ${config.from}`);
    input = await openSeedInput(config.from, seedTempDir(target));
    const source = await openSource(input, config);
    say(`seeding ${source.images.filter((i) => i.tags.length > 0).length} tagged image(s) from ${source.kind} ${config.from} into ${storeDir}`);
    const failures: Array<{ label: string; reason: string }> = [...source.problems];
    let imported = 0;
    let bytes = 0;
    let present = 0;
    let untagged = 0;
    for (const image of source.images) {
      try {
        const result = await importSeedImage(writer, source, image);
        imported += result.blobsImported;
        bytes += result.bytesImported;
        present += result.blobsPresent;
        if (image.tags.length === 0) {
          untagged++;
          continue;
        }
        const notes = [`${result.blobsImported} blob(s) imported (${formatBytes(result.bytesImported)})`, `${result.blobsPresent} already present`];
        if (result.skippedChildren.length > 0) notes.push(`${result.skippedChildren.length} index entr${result.skippedChildren.length === 1 ? 'y' : 'ies'} not in the input (index kept whole)`);
        if (result.movedTags.length > 0) notes.push(`tag ${result.movedTags.join(', ')} moved`);
        say(`ok ${image.name}:${image.tags.join(',')} (${image.digest.value}): ${notes.join(', ')}`);
      } catch (err) {
        failures.push({ label: image.label, reason: describeError(err) });
        say(`FAILED ${image.label}: ${describeError(err)}`);
      }
    }
    const total = source.images.length + source.problems.length;
    say(`seeded ${total - failures.length} of ${total} manifest(s)${untagged ? ` (${untagged} untagged)` : ''} into ${storeDir}: ${imported} blob(s) imported (${formatBytes(bytes)}), ${present} already present, in ${formatDuration(Date.now() - started)}`);
    if (failures.length > 0) {
      say(`${failures.length} refused:`);
      for (const f of failures) say(`  ${f.label}: ${f.reason}`);
      return 1;
    }
    return 0;
  } catch (err) {
    say(`stevedore seed: ${describeError(err)}`);
    return 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await input?.cleanup();
  }
}
