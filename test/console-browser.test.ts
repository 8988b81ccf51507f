import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { layoutOf, mustRun } from './helpers/appliance.js';
import { metricValue, startConsoleFixture, type ConsoleFixture } from './helpers/console-fixture.js';
import { buildImage } from './helpers/oci-image.js';
import { REPO_ROOT } from './helpers/processes.js';

/**
 * The web console in a real browser: Debian's chromium, headless, driven by puppeteer-core (which
 * downloads no browser), against the appliance under PM2 with a docker-registry upstream and
 * skopeo pulls. Screenshots (light and dark, desktop and phone) go to test-artifacts/console/.
 */

// Functions passed to page.evaluate run in the page; the project compiles without the DOM library.
declare const document: any, location: any, window: any, getComputedStyle: any, navigator: any; // eslint-disable-line @typescript-eslint/no-explicit-any
type HTMLCanvasElement = any; // eslint-disable-line @typescript-eslint/no-explicit-any

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARTIFACTS = join(REPO_ROOT, 'test-artifacts', 'console');

describe('console in chromium: the appliance\'s page, as a read-only user and as an admin', { skip: existsSync(CHROMIUM) ? false : `no browser at ${CHROMIUM} (apt-get install chromium)` }, () => {
  let f: ConsoleFixture;
  let browser: Browser;
  const problems: string[] = [];
  /** Every confirmation the page asked for (all accepted). */
  const dialogs: string[] = [];

  /** A page in its own browser context (own credentials), logged in through the Basic challenge. */
  async function login(user: { name: string; pass: string }, viewport = { width: 1280, height: 900 }): Promise<Page> {
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    await page.setViewport(viewport);
    await page.authenticate({ username: user.name, password: user.pass });
    page.on('pageerror', (err) => problems.push(`${user.name}: page error ${String(err)}`));
    // 401 (before the login) and the read-only user's refused purge (403) are expected.
    page.on('console', (msg) => { if (msg.type() === 'error' && !/status of 40[13]/.test(msg.text())) problems.push(`${user.name}: console ${msg.text()}`); });
    page.on('dialog', (dialog) => { dialogs.push(dialog.message()); void dialog.accept(); });
    return page;
  }

  async function show(page: Page, hash: string, ready: string): Promise<void> {
    const url = `${f.app.url}/${hash}`;
    if (page.url().startsWith(f.app.url)) await page.evaluate((h) => { document.body.removeAttribute('data-ready'); location.hash = h; }, hash);
    else await page.goto(url, { waitUntil: 'load' });
    await page.waitForSelector(`body[data-ready="${ready}"]`, { timeout: 10_000 });
    const text: string = await page.evaluate(() => document.body.innerText);
    assert.doesNotMatch(text, /\[object |undefined|NaN/, `${hash} renders every value`);
  }

  async function screenshot(page: Page, name: string): Promise<void> {
    const path = join(ARTIFACTS, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    process.stdout.write(`# screenshot: ${path}\n`);
  }

  before(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    f = await startConsoleFixture('browser');
    browser = await puppeteer.launch({
      executablePath: CHROMIUM, headless: true,
      // As root, chromium needs --no-sandbox; the gateway's certificate is self-signed.
      args: ['--no-sandbox', '--ignore-certificate-errors', '--disable-dev-shm-usage', '--disable-gpu'],
    });
  });

  after(async () => {
    await browser?.close();
    await f?.stop();
  });

  it('overview shows what /metrics shows, draws its charts, and lists the cleaner\'s plan (light and dark)', async () => {
    const page = await login(f.app.reader);
    await show(page, '#/overview', 'overview');
    const shown = await page.$$eval(`#upstreams tr[data-upstream="${f.upHost}"] td[data-field] span[data-value]`, (spans) => Object.fromEntries(spans.map((s) => [s.parentElement!.dataset.field!, Number(s.getAttribute('data-value'))])));
    const metrics = (await f.app.call('GET', '/metrics')).text();
    const m = (name: string, labels: Record<string, string> = {}) => metricValue(metrics, name, { upstream: f.upHost, ...labels });
    assert.deepEqual(shown, {
      requests: m('stevedore_requests_total'), bytesServed: m('stevedore_response_bytes_total'),
      hitRatio: m('stevedore_cache_requests_total', { result: 'hit' }) / (m('stevedore_cache_requests_total', { result: 'hit' }) + m('stevedore_cache_requests_total', { result: 'miss' })),
      bytesFromCache: m('stevedore_cache_response_bytes_total', { result: 'hit' }), bytesFetched: m('stevedore_cache_response_bytes_total', { result: 'miss' }),
      upstreamErrors: m('stevedore_upstream_errors_total'),
    });
    assert.ok(shown.hitRatio! > 0 && shown.hitRatio! < 1);
    assert.equal(await page.$eval(`#upstreams tr[data-upstream="${f.upHost}"] [data-state]`, (e) => e.textContent), 'healthy');
    // Labelled by its alias (the prefix users type), the host beside it.
    assert.equal(await page.$eval(`#upstreams tr[data-upstream="${f.upHost}"] td:first-child`, (e) => e.textContent), `up (${f.upHost})`);
    assert.equal(await page.$eval('#upstreams tr[data-upstream="-"] td:first-child', (e) => e.textContent), 'hosted registry');
    assert.equal(await page.$eval(`#upstreams tr[data-upstream="${f.upHost}"] td[data-field="quota"]`, (e) => e.textContent), '–');
    const largest = await page.$$eval('#largest tbody tr', (rows) => rows.map((r) => [r.querySelector('a')!.textContent, Number(r.querySelector('[data-bytes]')!.getAttribute('data-bytes'))]));
    const sizeOf = (i: typeof f.cachedImage) => [i.manifest, i.config, ...i.layers].reduce((sum, b) => sum + b.size, 0);
    assert.deepEqual(largest, [['up/mirror/tool:1.0', sizeOf(f.cachedImage)], ['up/mirror/gone:2.0', sizeOf(f.purgeImage)]], 'named as pulled: through the alias');
    const pulled = await page.$$eval('#top tbody tr a', (links) => links.map((a) => a.textContent));
    assert.deepEqual(pulled, ['up/mirror/tool', 'up/mirror/gone']);

    // Four charts, each drawn (uPlot's canvas has non-transparent pixels beyond a blank frame).
    const painted = await page.$$eval('#charts canvas', (canvases) => canvases.map((c) => {
      const data = (c as HTMLCanvasElement).getContext('2d')!.getImageData(0, 0, (c as HTMLCanvasElement).width, (c as HTMLCanvasElement).height).data;
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i]! > 0) n++;
      return n;
    }));
    assert.equal(painted.length, 4, 'four charts');
    for (const n of painted) assert.ok(n > 200, `a chart has ${n} painted pixels`);

    const dry = await f.app.cli(['clean', '--dry-run']);
    const planned = dry.stdout.split('\n').filter((l) => l.startsWith('would evict ')).map((l) => l.split(' ')[2]);
    assert.ok(planned.length > 0 && planned.length <= 20, dry.stdout);
    const listed = await page.$$eval('#evictions tbody code', (cells) => cells.map((c) => c.textContent));
    assert.deepEqual(listed, planned);

    // One pull through the upstream that sends Docker Hub's rate-limit headers (a relay in front of
    // docker-registry): the overview shows what it last sent.
    await f.pullFromGateway('hub/mirror/tool:1.0', f.app.reader.creds);
    await page.reload({ waitUntil: 'load' });
    await page.waitForSelector('body[data-ready="overview"]');
    const quota = await page.$eval(`#upstreams tr[data-upstream="${f.hub.host}"] td[data-field="quota"] span[data-value]`, (e) => [Number(e.getAttribute('data-value')), e.firstChild!.textContent]);
    assert.ok(f.hub.remaining() < 100);
    assert.deepEqual(quota, [f.hub.remaining(), `${f.hub.remaining()} of 100 per 6 h`]);
    // Charts follow the data directory's history; give uPlot's layout a frame before the picture.
    await screenshot(page, 'overview-light');
    await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: 'dark' }]);
    await page.reload({ waitUntil: 'load' });
    await page.waitForSelector('body[data-ready="overview"]');
    const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    assert.equal(background, 'rgb(13, 17, 23)', 'dark mode follows the system');
    await screenshot(page, 'overview-dark');
    await page.browserContext().close();
  });

  it('on a phone (390×844) no page is wider than the screen: wide tables scroll inside their box, by keyboard too', async () => {
    const phone = { width: 390, height: 844, isMobile: true, hasTouch: true };
    const page = await login(f.app.reader, phone);
    const image = f.cachedImage;
    let scrolled = 0;
    for (const [hash, ready, shot] of [
      ['#/overview', 'overview', 'overview-phone'], ['#/repositories', 'repositories', undefined],
      [`#/repository?source=${encodeURIComponent(f.upHost)}&name=mirror%2Ftool`, 'repository', 'repository-phone'],
      [`#/image?source=${encodeURIComponent(f.upHost)}&repository=mirror%2Ftool&digest=${image.manifest.digest}&tag=1.0`, 'image', undefined],
      ['#/repository?source=hosted&name=team%2Fapp', 'repository', undefined],
      ['#/pulls', 'pulls', 'pulls-phone'],
    ] as const) {
      await show(page, hash, ready);
      // The layout viewport, not innerWidth: a mobile browser widens that to fit a too-wide page.
      const width = await page.evaluate(() => document.scrollingElement.scrollWidth);
      assert.ok(width <= phone.width, `${hash} is ${width}px wide on a ${phone.width}px phone`);
      if (shot) await screenshot(page, shot);
      if (ready === 'pulls') assert.ok((await page.$$eval('#main tbody tr', (rows) => rows.map((r) => r.children[2]!.textContent))).includes('up/mirror/tool'), 'pulls named through the alias');
      // A table wider than its box scrolls sideways inside it: the box takes the keyboard's focus
      // (a named region), and the arrow keys scroll it.
      const boxes = await page.$$eval('.table-wrap', (wraps) => wraps.map((w, i) => ({ i, wide: w.scrollWidth > w.clientWidth, tabindex: w.getAttribute('tabindex'), role: w.getAttribute('role'), name: w.getAttribute('aria-labelledby') && document.getElementById(w.getAttribute('aria-labelledby'))?.textContent })));
      for (const box of boxes.filter((b) => b.wide)) {
        assert.deepEqual([box.tabindex, box.role, Boolean(box.name)], ['0', 'region', true], `${hash}: table box ${box.i} is focusable and named`);
        await page.$$eval('.table-wrap', (wraps, i) => wraps[i].focus(), box.i);
        await page.keyboard.press('ArrowRight');
        await page.keyboard.press('ArrowRight');
        const left = await page.waitForFunction((i) => document.querySelectorAll('.table-wrap')[i].scrollLeft > 0, { timeout: 2000 }, box.i).then(() => true, () => false);
        assert.ok(left, `${hash}: table box ${box.i} scrolls with the arrow keys`);
        scrolled++;
      }
    }
    assert.ok(scrolled > 0, 'at least one table is wider than a phone (the check above ran)');
    // On a wide screen the same tables fit: no extra tab stops.
    await page.setViewport({ width: 1280, height: 900 });
    await page.waitForFunction(() => [...document.querySelectorAll('.table-wrap')].every((w) => w.scrollWidth <= w.clientWidth && !w.hasAttribute('tabindex')), { timeout: 5000 });
    await page.browserContext().close();
  });

  it('repository and image pages list the pulled image\'s tags and layers with the right digests and sizes', async () => {
    const page = await login(f.app.reader);
    await show(page, '#/repositories?q=tool', 'repositories');
    await page.click('#main table a');
    await page.waitForSelector('body[data-ready="repository"]');
    const image = f.cachedImage;
    const tags = await page.$$eval('#tags tbody tr', (rows) => rows.map((r) => [r.querySelector('a')!.textContent, r.querySelector('[data-testid="tag-digest"]')!.textContent, Number(r.querySelector('[data-bytes]')!.getAttribute('data-bytes'))]));
    assert.deepEqual(tags, [['1.0', image.manifest.digest, [image.manifest, image.config, ...image.layers].reduce((s, b) => s + b.size, 0)]]);
    const pull = await page.$eval('#main p code', (c) => c.textContent);
    assert.equal(pull, `podman pull ${f.app.host}/up/mirror/tool:1.0`, 'through the alias: the host has a port');
    assert.equal(await page.$eval('#main h1', (e) => e.textContent), `cache of up (${f.upHost}) / mirror/tool`);
    // The copy button puts exactly that command on the clipboard.
    await page.browserContext().overridePermissions(f.app.url, ['clipboard-read', 'clipboard-write', 'clipboard-sanitized-write']);
    await page.click('#main p.pull button');
    await page.waitForSelector('#status .msg.ok', { timeout: 5000 });
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), pull);
    // Nodes mirror the upstream by its host (containerd asks the gateway with ?ns=<host>).
    const snippets = await page.$$eval('#main pre', (pres) => pres.map((p) => p.textContent));
    assert.deepEqual(snippets, [
      `# /etc/rancher/k3s/registries.yaml\nmirrors:\n  ${f.upHost}:\n    endpoint: ["https://${f.app.host}"]`,
      `# /etc/containerd/certs.d/${f.upHost}/hosts.toml\n[host."https://${f.app.host}"]\n  capabilities = ["pull", "resolve"]`,
    ]);
    await page.click('#tags tbody a');
    await page.waitForSelector('body[data-ready="image"]');
    const layers = await page.$$eval('#layers tbody tr', (rows) => rows.map((r) => [r.querySelector('[data-testid="layer-digest"]')!.textContent, Number(r.querySelector('[data-testid="layer-size"]')!.getAttribute('data-bytes'))]));
    assert.deepEqual(layers, image.layers.map((l) => [l.digest, l.size]));
    assert.equal(await page.$eval('[data-testid="config-digest"]', (c) => c.textContent), image.config.digest);
    assert.equal(await page.$eval('#main p.pull code', (c) => c.textContent), `podman pull ${f.app.host}/up/mirror/tool@${image.manifest.digest}`);
    await page.browserContext().close();
  });

  it('a read-only user\'s purge is refused with a clear message; an admin\'s takes effect', async () => {
    const tagsOf = async () => (await f.app.call('GET', `/api/v1/tags?source=${f.upHost}&repository=mirror/gone`, { auth: f.app.reader.auth })).json<{ items: unknown[] }>().items.length;
    const hash = `#/repository?source=${encodeURIComponent(f.upHost)}&name=mirror%2Fgone`;
    const reader = await login(f.app.reader);
    await show(reader, hash, 'repository');
    await reader.click('#tags tbody button.danger');
    const refusal = await reader.waitForSelector('#status .msg.error', { timeout: 10_000 });
    assert.equal(await refusal!.evaluate((e) => e.textContent), 'user reader is read-only: deleting a tag or manifest needs an admin');
    assert.equal(await tagsOf(), 1, 'nothing purged');
    await reader.browserContext().close();

    const admin = await login(f.app.admin);
    await show(admin, hash, 'repository');
    assert.match(await admin.$eval('#whoami', (e) => e.textContent ?? ''), /admin · admin/);
    await admin.click('#tags tbody button.danger');
    const done = await admin.waitForSelector('#status .msg.ok', { timeout: 10_000 });
    assert.match(await done!.evaluate((e) => e.textContent ?? ''), /^Purged mirror\/gone:2\.0 from the cache/);
    await admin.waitForSelector('body[data-ready="repository"]');
    await admin.waitForFunction(() => document.querySelector('#tags tbody td.muted')?.textContent === 'Nothing to show.', { timeout: 10_000 });
    assert.equal(await tagsOf(), 0, 'purged');
    await admin.browserContext().close();
  });

  it('an admin deletes a single hosted tag after confirming (the manifest\'s other tag stays), then the manifest with its tags', async () => {
    const m = f.hostedImage.manifest;
    const put = await f.app.call('PUT', '/v2/team/app/manifests/v1-copy', { auth: f.app.admin.auth, headers: { 'content-type': m.mediaType }, body: m.data });
    assert.equal(put.status, 201, put.text());
    const admin = await login(f.app.admin);
    await show(admin, '#/repository?source=hosted&name=team%2Fapp', 'repository');
    const rows = async () => admin.$$eval('#tags tbody tr', (trs) => trs.map((r) => [r.querySelector('a')?.textContent, r.querySelector('[data-testid="tag-digest"]')?.textContent]));
    assert.deepEqual(await rows(), [['v1', m.digest], ['v1-copy', m.digest]]);
    await screenshot(admin, 'repository-hosted-light');
    const asked = dialogs.length;
    await admin.click('#tags tbody tr:nth-child(2) button.delete-tag');
    const done = await admin.waitForSelector('#status .msg.ok', { timeout: 10_000 });
    assert.equal(await done!.evaluate((e) => e.textContent), 'Deleted the tag team/app:v1-copy.');
    assert.match(dialogs[asked] ?? '', /^Delete the tag team\/app:v1-copy\? The manifest sha256:/, 'asked first');
    await admin.waitForFunction(() => document.querySelectorAll('#tags tbody tr').length === 1, { timeout: 10_000 });
    assert.deepEqual(await rows(), [['v1', m.digest]]);
    assert.equal((await f.app.call('GET', `/v2/team/app/manifests/${m.digest}`, { auth: f.app.reader.auth })).status, 200, 'the manifest stays');
    // The manifest itself, with every tag on it.
    await admin.click('#tags tbody tr:nth-child(1) button.delete-manifest');
    const gone = await admin.waitForFunction(() => document.querySelector('#status .msg.ok')?.textContent.startsWith('Deleted team/app@') && document.querySelector('#status .msg.ok').textContent, { timeout: 10_000 });
    assert.equal(await gone.jsonValue(), `Deleted team/app@${m.digest}.`);
    assert.match(dialogs.at(-1) ?? '', /^Delete the manifest sha256:\w+ \(and every tag on it\) from team\/app\? This cannot be undone\.$/);
    await admin.waitForFunction(() => document.querySelector('#tags tbody td.muted')?.textContent === 'Nothing to show.', { timeout: 10_000 });
    assert.equal((await f.app.call('GET', `/v2/team/app/manifests/${m.digest}`, { auth: f.app.reader.auth })).status, 404, 'the manifest is gone');
    await admin.browserContext().close();
  });

  it('a multi-platform index: its platforms on the repository page, each platform\'s manifest and layers on the image pages', async () => {
    const images = [buildImage({ layerSizes: [1500], seed: 'multi-amd64' }), buildImage({ layerSizes: [1600], architecture: 'arm64', seed: 'multi-arm64' })];
    const layout = await layoutOf(f.work, images, true);
    await mustRun('skopeo', ['--insecure-policy', 'copy', '--quiet', '--all', '--preserve-digests', '--dest-cert-dir', f.app.certDir, '--dest-creds', f.app.admin.creds,
      `oci:${layout.dir}:latest`, `docker://${f.app.host}/team/multi:v2`], { timeoutMs: 60_000 });
    const page = await login(f.app.reader);
    await show(page, '#/repository?source=hosted&name=team%2Fmulti', 'repository');
    const tags = await page.$$eval('#tags tbody tr', (rows) => rows.map((r) => [r.querySelector('a')!.textContent, r.querySelector('[data-testid="tag-digest"]')!.textContent, r.children[3]!.textContent]));
    assert.deepEqual(tags, [['v2', layout.digest, 'linux/amd64, linux/arm64']]);
    await page.click('#tags tbody a');
    await page.waitForSelector('body[data-ready="image"]');
    const platforms = await page.$$eval('#main table tbody tr', (rows) => rows.map((r) => [r.children[0]!.textContent, r.querySelector('code')!.textContent]));
    assert.deepEqual(platforms, images.map((i) => [`linux/${i.platform.architecture}`, i.manifest.digest]));
    await page.evaluate(() => { document.body.removeAttribute('data-ready'); });
    await page.click('#main table tbody tr:nth-child(2) a');
    await page.waitForSelector('body[data-ready="image"]');
    const layers = await page.$$eval('#layers tbody tr', (rows) => rows.map((r) => [r.querySelector('[data-testid="layer-digest"]')!.textContent, Number(r.querySelector('[data-testid="layer-size"]')!.getAttribute('data-bytes'))]));
    assert.deepEqual(layers, images[1]!.layers.map((l) => [l.digest, l.size]));
    assert.equal(await page.$eval('#main p.pull code', (c) => c.textContent), `podman pull ${f.app.host}/team/multi@${images[1]!.manifest.digest}`);
    await page.browserContext().close();
  });

  it('the overview refreshes itself (paused while the tab is hidden) and shows an upstream going down: failing, circuit open, the last error', async () => {
    const page = await login(f.app.reader);
    let overviewRequests = 0;
    page.on('request', (r) => { if (r.url().includes('/api/v1/overview')) overviewRequests++; });
    await show(page, '#/overview?refresh=2', 'overview');
    await page.evaluate(() => { window.stillSamePage = true; });
    assert.match(await page.$eval('#refreshed', (e) => e.textContent ?? ''), /refreshes every 2 s while this tab is visible/);
    // Hidden: no refresh for three periods.
    await page.evaluate(() => {
      Object.defineProperty(document, 'hidden', { value: true, configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    const before = overviewRequests;
    await new Promise((r) => setTimeout(r, 6000));
    assert.equal(overviewRequests, before, 'no refresh while hidden');
    await page.evaluate(() => {
      Object.defineProperty(document, 'hidden', { value: false, configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    const cell = `#upstreams tr[data-upstream="${f.upHost}"]`;
    let n = 0;
    const miss = () => f.app.call('GET', `/v2/up/mirror/absent-${n++}/manifests/1.0`, { auth: f.app.reader.auth });
    await f.upstream.down();
    try {
      await miss();
      await page.waitForSelector(`${cell} [data-state="failing"]`, { timeout: 10_000 });
      await miss();
      await miss();
      await page.waitForSelector(`${cell} [data-state="circuit open"]`, { timeout: 10_000 });
      const error = await page.$eval(`${cell} [data-testid="last-error"]`, (e) => e.textContent ?? '');
      assert.match(error, /^last error \d+ s ago: .*(ECONNREFUSED|unreachable)/, error);
      assert.ok(overviewRequests > before, 'refreshed once visible again');
      assert.equal(await page.evaluate(() => window.stillSamePage), true, 'refreshed in place, not reloaded');
      await screenshot(page, 'overview-upstream-down');
    } finally {
      await f.upstream.up();
    }
    // Back: the breaker's probe is the only request that reaches it, and counts as its last answer.
    await page.waitForSelector(`${cell} [data-state="healthy"]`, { timeout: 15_000 });
    const times = await page.$eval(cell, (row) => ['last-error', 'last-success'].map((id) => row.querySelector(`[data-testid="${id}"] time`)?.getAttribute('datetime')));
    assert.ok(times[0] && times[1] && Date.parse(times[1]) > Date.parse(times[0]), `last answered after the last error: ${JSON.stringify(times)}`);
    await page.browserContext().close();
  });

  it('every page in light and dark (screenshots); the charts\' span is chosen on the page; recent pulls filter', async () => {
    const page = await login(f.app.reader);
    const since: number[] = [];
    page.on('request', (r) => { if (r.url().includes('/api/v1/history?')) since.push(Number(new URL(r.url()).searchParams.get('since'))); });
    await show(page, '#/overview', 'overview');
    assert.ok(Math.abs(Date.now() - 24 * 3600_000 - since.at(-1)!) < 60_000, 'the last 24 hours by default');
    await page.evaluate(() => { document.body.removeAttribute('data-ready'); });
    await page.select('#history-hours', '1');
    await page.waitForSelector('body[data-ready="overview"]');
    assert.ok(Math.abs(Date.now() - 3600_000 - since.at(-1)!) < 60_000, 'the last hour once chosen');
    assert.match(await page.evaluate(() => location.hash), /[?&]hours=1\b/);
    assert.equal(await page.$eval('#history-hours', (e) => e.value), '1');

    await show(page, '#/pulls', 'pulls');
    const images = () => page.$$eval('#main tbody tr', (rows) => rows.map((r) => [r.children[2]?.textContent, Number(r.children[4]?.textContent)]));
    await page.type('#pull-q', 'gone');
    await page.evaluate(() => { document.body.removeAttribute('data-ready'); });
    await page.click('#main form button[type="submit"]');
    await page.waitForSelector('body[data-ready="pulls"]');
    const gone = await images();
    assert.ok(gone.length > 0 && gone.every(([image]) => image === 'up/mirror/gone'), JSON.stringify(gone));
    await show(page, '#/pulls?status=4xx', 'pulls');
    const refused = await images();
    assert.ok(refused.length > 0 && refused.every(([, status]) => status >= 400 && status < 500), JSON.stringify(refused));
    await show(page, '#/pulls', 'pulls');
    await page.select('#pull-upstream', f.hub.host);
    await page.evaluate(() => { document.body.removeAttribute('data-ready'); });
    await page.click('#main form button[type="submit"]');
    await page.waitForSelector('body[data-ready="pulls"]');
    const hub = await images();
    assert.ok(hub.length > 0 && hub.every(([image]) => image === 'hub/mirror/tool'), JSON.stringify(hub));
    assert.deepEqual(await page.$$eval('#pull-upstream option', (options) => options.map((o) => o.textContent)), ['any', 'hosted registry', `up (${f.upHost})`, `hub (${f.hub.host})`]);

    const repository = `#/repository?source=${encodeURIComponent(f.upHost)}&name=mirror%2Ftool`;
    const image = `#/image?source=${encodeURIComponent(f.upHost)}&repository=mirror%2Ftool&digest=${f.cachedImage.manifest.digest}&tag=1.0`;
    for (const scheme of ['light', 'dark'] as const) {
      await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: scheme }]);
      for (const [hash, ready] of [['#/repositories', 'repositories'], [repository, 'repository'], [image, 'image'], ['#/pulls', 'pulls']] as const) {
        await show(page, hash, ready);
        await screenshot(page, `${ready}-${scheme}`);
      }
    }
    await page.browserContext().close();
  });

  it('run cleaner now: refused for a read-only user; an admin confirms, and the run shows as the last one', async () => {
    const button = '#main button::-p-text(Run cleaner now)';
    const reader = await login(f.app.reader);
    await show(reader, '#/overview', 'overview');
    await reader.click(button);
    const refusal = await reader.waitForSelector('#status .msg.error', { timeout: 10_000 });
    assert.equal(await refusal!.evaluate((e) => e.textContent), 'user reader is read-only: running the cleaner needs an admin');
    await reader.browserContext().close();

    const admin = await login(f.app.admin);
    await show(admin, '#/overview', 'overview');
    const evictable = await admin.$$eval('#evictions tbody code', (cells) => cells.length);
    assert.ok(evictable > 0, 'the plan has something to evict');
    const asked = dialogs.length;
    await admin.click(button);
    const done = await admin.waitForSelector('#status .msg.ok', { timeout: 20_000 });
    const message = await done!.evaluate((e) => e.textContent ?? '');
    assert.match(dialogs[asked] ?? '', /^Run the cleaner now\?/, 'asked first');
    const run = /^Cleaner run done: (\d+) blobs? evicted, (.+) freed\.$/.exec(message);
    assert.ok(run && Number(run[1]) > 0, message);
    await admin.waitForFunction((freed) => document.querySelector('#cleaner-h')?.parentElement?.textContent.includes(`freed ${freed}`), { timeout: 10_000 }, run[2]);
    await admin.browserContext().close();
  });

  it('raised no script errors or CSP violations', () => {
    assert.deepEqual(problems, []);
  });
});
