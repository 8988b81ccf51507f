#!/usr/bin/env node
// Thin launcher: the CLI is TypeScript compiled to dist/ by the install command (npm run build).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write('stevedore: dist/ is missing; run "npm run build" (part of the install command) first\n');
  process.exit(1);
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
