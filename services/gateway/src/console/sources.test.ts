import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planAppliance } from '../../../../lib/appliance.js';
import { parseUpstream } from '../../../../lib/upstreams.js';
import { pullReference, sourceLabels } from './sources.js';

const plan = (aliases: Record<string, string>) => planAppliance(
  { runDir: '/run/s', pullSecretPath: '/ps.json', ignoreRegistries: [], aliases },
  ['quay.io', '127.0.0.1:5000', 'registry.lan:8443'].map((host) => ({ endpoint: parseUpstream(host), credentials: undefined })),
);

test('an upstream is labelled by its alias, and pulled through it; a host with a port and no alias has no pull prefix', () => {
  const p = plan({ q: 'quay.io', up: '127.0.0.1:5000', mirror: '127.0.0.1:5000' });
  assert.deepEqual(sourceLabels(p).map(({ source, alias, pullPrefix }) => [source, alias, pullPrefix]), [
    ['hosted', null, ''],
    ['quay.io', 'q', 'q'],
    ['127.0.0.1:5000', 'up', 'up'],
    ['registry.lan:8443', null, null],
  ]);
  const [quay, local, lan] = p.proxies;
  assert.equal(pullReference(p.hosted, 'team/app'), 'team/app');
  assert.equal(pullReference(quay!, 'prometheus/node-exporter'), 'q/prometheus/node-exporter', 'the alias the operator chose, though the host routes too');
  assert.equal(pullReference(local!, 'mirror/tool'), 'up/mirror/tool');
  assert.equal(pullReference(lan!, 'team/app'), null, '":" is not allowed in an image path');
  assert.equal(pullReference(plan({}).proxies[0]!, 'prometheus/node-exporter'), 'quay.io/prometheus/node-exporter', 'no alias: the host');
});
