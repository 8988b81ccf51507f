// PM2 process list of the Stevedore appliance. Not hand-listed: the apps (gateway, hosted registry,
// one cache worker per upstream of the pull secret) are derived from the environment by
// lib/ecosystem.ts, so this file never needs editing. PM2 loads it with require() (require(esm)).
import { buildEcosystem } from './dist/lib/ecosystem.js';

export const apps = buildEcosystem(process.env).apps;
