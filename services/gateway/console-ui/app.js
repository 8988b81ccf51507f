// Stevedore web console: a small hash-routed page over the gateway's /api/v1/ (no framework;
// every text from the API goes through textContent, never innerHTML).
const CSRF = { 'x-stevedore-console': '1' };
const main = document.getElementById('main');
const statusBox = document.getElementById('status');
let me = { user: '-', admin: true, auth: false };
/** source (`hosted` or an upstream host) → its alias and pull prefix (GET /api/v1/sources). */
let sources = new Map();
let charts = [];

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) if (c !== undefined && c !== null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}
const plural = (n, one, many = `${one}s`) => `${num(n)} ${n === 1 ? one : many}`;
const num = (n) => (n ?? 0).toLocaleString('en');
const pct = (r) => (r === null || r === undefined ? '–' : `${(r * 100).toFixed(1)} %`);
function when(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  const ago = (Date.now() - d.getTime()) / 1000;
  const rel = ago < 0 ? `in ${Math.round(-ago / 60)} min` : ago < 90 ? `${Math.round(ago)} s ago` : ago < 5400 ? `${Math.round(ago / 60)} min ago` : ago < 172800 ? `${Math.round(ago / 3600)} h ago` : `${Math.round(ago / 86400)} d ago`;
  return h('time', { datetime: d.toISOString(), title: d.toISOString() }, rel);
}
/** A number shown formatted, with its exact value kept for tools (and the tests). */
const valued = (value, text) => h('span', { 'data-value': value ?? '' }, text);

/** What users type for an upstream (its alias, else its host); `-` and `hosted` are the hosted registry. */
function prefixOf(source) {
  if (source === '-' || source === 'hosted') return '';
  const known = sources.get(source);
  return known ? known.pullPrefix ?? source : source;
}
/** An upstream as users know it: the alias (the prefix they type) with the host beside it. */
function sourceLabel(source) {
  if (source === '-' || source === 'hosted') return h('span', { class: 'source', 'data-source': 'hosted' }, 'hosted registry');
  const alias = sources.get(source)?.alias;
  return alias ? h('span', { class: 'source', 'data-source': source }, h('span', { class: 'alias' }, alias), ' ', h('span', { class: 'muted host' }, `(${source})`))
    : h('span', { class: 'source', 'data-source': source }, source);
}
/** `repository` as pulled through this gateway (prefixed by its upstream's alias), the host in its tooltip. */
function imageName(source, repository, suffix = '') {
  const prefix = prefixOf(source);
  return h('span', { title: prefix && prefix !== source ? `${source}/${repository}` : undefined }, `${prefix ? `${prefix}/` : ''}${repository ?? ''}${suffix}`);
}
const short = (digest) => h('span', { class: 'digest', title: digest }, digest ? `${digest.slice(0, 19)}…` : '–');

function say(text, kind = 'ok') {
  statusBox.replaceChildren(h('div', { class: `msg ${kind}` }, text));
  if (kind === 'ok') setTimeout(() => { if (statusBox.textContent === text) statusBox.replaceChildren(); }, 8000);
}

async function api(path, options = {}) {
  const res = await fetch(`/api/v1/${path}`, { credentials: 'same-origin', ...options, headers: { accept: 'application/json', ...(options.headers ?? {}) } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error?.message ?? `${res.status} ${res.statusText}`);
  return body;
}

let tableCount = 0;

/** A table in a box that scrolls sideways when the table is wider (a phone; see markScrollable). */
function table(caption, columns, rows, { empty = 'Nothing to show.', id, rowAttrs = () => ({}) } = {}) {
  const captionId = `caption-${++tableCount}`;
  return h('div', { class: 'table-wrap', 'data-caption': captionId }, h('table', { id },
    h('caption', { id: captionId }, caption),
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.cls }, c.label)))),
    h('tbody', {}, rows.length ? rows.map((r) => h('tr', rowAttrs(r), columns.map((c) => h('td', { class: c.cls, 'data-field': c.field }, c.cell(r)))))
      : h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, empty)))));
}

function adminButton(label, onclick, cls = '') {
  return h('button', { type: 'button', class: cls, onclick, title: me.admin ? undefined : 'admin only: you are read-only' }, label, h('span', { class: 'admin-mark' }, '(admin)'));
}

// ---- charts (uPlot) --------------------------------------------------------------------------

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function chart(container, title, data, series, opts = {}) {
  const axis = { stroke: cssVar('--muted'), grid: { stroke: cssVar('--line'), width: 1 }, ticks: { stroke: cssVar('--line') } };
  const width = Math.max(260, container.clientWidth - 8);
  const plot = new uPlot({
    title, width, height: 200,
    series: [{}, ...series],
    axes: [axis, { ...axis, size: 70, values: opts.values }],
    scales: opts.scales ?? {},
    legend: { live: false },
    cursor: { drag: { x: false, y: false } },
  }, data, container);
  charts.push({ plot, container });
  return plot;
}

/**
 * A table box that scrolls (its table is wider) becomes a named region that takes the keyboard's
 * focus, so the arrow keys scroll it; the others stay out of the tab order.
 */
function markScrollable() {
  for (const wrap of document.querySelectorAll('.table-wrap')) {
    const scrolls = wrap.scrollWidth > wrap.clientWidth;
    for (const [name, value] of [['tabindex', '0'], ['role', 'region'], ['aria-labelledby', wrap.dataset.caption]]) {
      if (scrolls) wrap.setAttribute(name, value);
      else wrap.removeAttribute(name);
    }
  }
}

window.addEventListener('resize', () => {
  for (const { plot, container } of charts) plot.setSize({ width: Math.max(260, container.clientWidth - 8), height: 200 });
  markScrollable();
});

function renderCharts(host, history) {
  const t = history.points.map((p) => p[0] / 1000);
  const hits = history.points.map((p) => p[1]);
  const misses = history.points.map((p) => p[2]);
  const ratio = history.points.map((p) => (p[1] + p[2] ? p[1] / (p[1] + p[2]) * 100 : null));
  const fromCache = history.points.map((p) => p[3]);
  const fetched = history.points.map((p) => p[4]);
  const cached = history.points.map((p) => p[6]);
  const hosted = history.points.map((p) => p[7]);
  const limit = t.map(() => history.limitBytes);
  const trigger = t.map(() => history.triggerBytes);
  const sizeAxis = (u, vals) => vals.map((v) => size(v));
  const boxes = [0, 1, 2, 3].map((i) => h('div', { class: 'card chart', 'data-chart': String(i) }));
  host.replaceChildren(...boxes);
  chart(boxes[0], 'Cache hit ratio per minute (%)', [t, ratio, hits, misses], [
    { label: 'hit ratio %', stroke: cssVar('--c-hit'), width: 2, spanGaps: true, points: { show: true } },
    { label: 'hits', show: false, stroke: cssVar('--c-hit') }, { label: 'misses', show: false, stroke: cssVar('--c-miss') },
  ], { scales: { y: { range: [0, 100] } } });
  chart(boxes[1], 'Bytes served from cache vs fetched upstream', [t, fromCache, fetched], [
    { label: 'from cache', stroke: cssVar('--c-hit'), fill: `${cssVar('--c-hit')}33`, width: 2, points: { show: true } },
    { label: 'fetched upstream', stroke: cssVar('--c-miss'), width: 2, points: { show: true } },
  ], { values: sizeAxis });
  chart(boxes[2], 'Storage used vs limit', [t, cached, hosted, limit, trigger], [
    { label: 'cached', stroke: cssVar('--c-cached'), fill: `${cssVar('--c-cached')}33`, width: 2, points: { show: true } },
    { label: 'hosted', stroke: cssVar('--c-hosted'), width: 2, points: { show: true } },
    { label: 'limit', stroke: cssVar('--c-limit'), dash: [6, 4] },
    { label: 'trigger', stroke: cssVar('--c-trigger'), dash: [2, 4] },
  ], { values: sizeAxis });
  // Runs are far apart (CLEANER_RUNEVERY_TIME): empty points at both ends keep the time axis on
  // the last hours instead of stretching one run over years.
  const runs = history.cleanerRuns;
  const nowS = Date.now() / 1000;
  const runX = [Math.min(nowS - 6 * 3600, ...runs.map((r) => r.at / 1000 - 3600)), ...runs.map((r) => r.at / 1000), nowS + 600];
  const runY = [null, ...runs.map((r) => r.freedBytes), null];
  const bars = uPlot.paths?.bars ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined;
  chart(boxes[3], 'Evicted per cleaner run', [runX, runY], [
    { label: 'freed', stroke: cssVar('--c-miss'), fill: `${cssVar('--c-miss')}88`, paths: bars, points: { show: true } },
  ], { values: sizeAxis });
}

// ---- pages -----------------------------------------------------------------------------------

function upstreamStateCell(u) {
  const state = h('span', { class: `state-${u.state.replace(' ', '-')}`, 'data-state': u.state }, u.state);
  if (u.kind !== 'proxy' || !u.lastError) return state;
  // The last error stays visible (muted once the upstream is healthy again): when it happened and what it was.
  // Beside it, when the upstream last answered (a request, or the circuit breaker's probe).
  return h('div', {}, state, h('div', { class: `last-error${u.state === 'healthy' ? ' muted' : ''}`, 'data-testid': 'last-error' },
    'last error ', when(u.lastError.at), ': ', h('span', { class: 'error-text' }, u.lastError.message)),
  h('div', { class: 'muted last-success', 'data-testid': 'last-success' }, u.lastSuccessAt ? ['last answered ', when(u.lastSuccessAt)] : 'no answer since its worker started'));
}

/** `ratelimit-remaining` of `ratelimit-limit` as the upstream last sent them (Docker Hub: per 6 h window). */
function quotaCell(u) {
  const r = u.rateLimit;
  if (!r || !r.remaining) return '–';
  const window = r.remaining.windowSeconds ?? r.limit?.windowSeconds;
  const hours = window ? ` per ${window % 3600 === 0 ? `${window / 3600} h` : `${Math.round(window / 60)} min`}` : '';
  return h('span', { 'data-value': r.remaining.value, title: `ratelimit-remaining / ratelimit-limit seen ${new Date(r.at).toISOString()}` },
    r.limit ? `${num(r.remaining.value)} of ${num(r.limit.value)}${hours}` : `${num(r.remaining.value)}${hours}`, h('div', { class: 'muted' }, when(r.at)));
}

/** The overview refreshes itself every 30 s (`#/overview?refresh=SECONDS`, at least 2, changes it). */
function refreshMs(params) {
  const asked = Number(params?.get('refresh'));
  return Number.isFinite(asked) && asked >= 2 ? asked * 1000 : 30_000;
}

/** The charts' span (`#/overview?hours=N`): the history keeps 48 hours. */
const HISTORY_HOURS = [1, 6, 24, 48];
function historyHours(params) {
  const asked = Number(params?.get('hours'));
  return HISTORY_HOURS.includes(asked) ? asked : 24;
}

async function overview(params) {
  const hours = historyHours(params);
  const [o, history, evictions, top] = await Promise.all([api('overview'), api(`history?since=${Date.now() - hours * 3600_000}`), api('evictions?per_page=20'), api('top?limit=10')]);
  const s = o.storage;
  const scale = Math.max(s.triggerBytes, s.cachedBytes) * 1.05 || 1;
  const at = (v) => `${Math.min(100, (v / scale) * 100).toFixed(2)}%`;
  const meter = h('div', { class: 'meter', role: 'img', 'aria-label': `cached ${size(s.cachedBytes)} of ${size(s.limitBytes)} limit; the cleaner evicts above ${size(s.triggerBytes)}` },
    h('span', { class: 'cached' }), h('span', { class: 'mark' }), h('span', { class: 'mark trigger' }));
  // Positions set through the CSSOM (CSP allows it; style attributes in markup are not used).
  meter.children[0].style.left = '0'; meter.children[0].style.width = at(s.cachedBytes);
  meter.children[1].style.left = at(s.limitBytes); meter.children[2].style.left = at(s.triggerBytes);
  const c = o.cleaner;
  const chartsHost = h('div', { class: 'grid', id: 'charts' });
  main.replaceChildren(
    h('h1', {}, 'Overview'),
    h('p', { class: 'muted', id: 'refreshed' }, 'Updated ', h('time', { datetime: new Date().toISOString() }, new Date().toLocaleTimeString()),
      ` · refreshes every ${Math.round(refreshMs(params) / 1000)} s while this tab is visible`),
    h('div', { class: 'grid' },
      h('section', { class: 'card', 'aria-labelledby': 'storage-h' }, h('h2', { id: 'storage-h' }, 'Storage'),
        h('div', { class: 'big', 'data-testid': 'cached-bytes', 'data-bytes': s.cachedBytes }, size(s.cachedBytes), h('span', { class: 'muted' }, ` cached of ${size(s.limitBytes)}`)),
        meter,
        h('div', {}, 'Hosted (never evicted): ', h('span', { 'data-testid': 'hosted-bytes', 'data-bytes': s.hostedBytes }, size(s.hostedBytes))),
        h('div', { class: 'muted' }, `Cleaner evicts above ${size(s.triggerBytes)} (limit + ${c.thresholdPercentage} %)`)),
      h('section', { class: 'card', 'aria-labelledby': 'cleaner-h' }, h('h2', { id: 'cleaner-h' }, 'Cleaner'),
        h('div', {}, 'Last run: ', when(c.lastRunAt), c.lastRun ? ` — freed ${size(c.lastRun.freedBytes)} (${plural(c.lastRun.evictedBlobs, 'blob')})` : ''),
        h('div', {}, 'Next run: ', when(c.nextRunAt), h('span', { class: 'muted' }, ` (every ${Math.round(c.runEveryMs / 60000)} min)`)),
        h('div', {}, `Next run would evict ${plural(s.evictableBlobs, 'blob')}, ${size(s.evictableBytes)}`),
        h('p', {}, adminButton('Run cleaner now', runCleaner)))),
    h('h2', {}, 'Upstreams'),
    table('Requests since the gateway started (same counters as /metrics)', [
      { label: 'Upstream', cell: (u) => sourceLabel(u.upstream) },
      { label: 'State', field: 'state', cell: upstreamStateCell },
      { label: 'Requests', cls: 'num', field: 'requests', cell: (u) => valued(u.requests, num(u.requests)) },
      { label: 'Hit ratio', cls: 'num', field: 'hitRatio', cell: (u) => (u.kind === 'proxy' ? valued(u.hitRatio, pct(u.hitRatio)) : '–') },
      { label: 'Served', cls: 'num', field: 'bytesServed', cell: (u) => valued(u.bytesServed, size(u.bytesServed)) },
      { label: 'From cache (saved)', cls: 'num', field: 'bytesFromCache', cell: (u) => (u.kind === 'proxy' ? valued(u.bytesFromCache, size(u.bytesFromCache)) : '–') },
      { label: 'Fetched upstream', cls: 'num', field: 'bytesFetched', cell: (u) => (u.kind === 'proxy' ? valued(u.bytesFetched, size(u.bytesFetched)) : '–') },
      { label: 'Upstream errors', cls: 'num hide-narrow', field: 'upstreamErrors', cell: (u) => valued(u.upstreamErrors, num(u.upstreamErrors)) },
      { label: 'Quota left', cls: 'num', field: 'quota', cell: quotaCell },
    ], o.upstreams, { id: 'upstreams', rowAttrs: (u) => ({ 'data-upstream': u.upstream }) }),
    h('div', { class: 'grid rankings' },
      h('section', { 'aria-labelledby': 'top-h' }, h('h2', { id: 'top-h' }, 'Most pulled'),
        table(['Most pulled images in the recent access log', top.since ? [' (since ', when(top.since), ')'] : ''], [
          { label: 'Image', cell: (i) => h('a', { href: `#/repository?${new URLSearchParams({ source: i.upstream === '-' ? 'hosted' : i.upstream, name: i.repository })}` }, imageName(i.upstream, i.repository)) },
          { label: 'Pulls', cls: 'num', cell: (i) => valued(i.pulls, num(i.pulls)) },
          { label: 'Sent', cls: 'num', cell: (i) => size(i.bytes) },
          { label: 'Last pulled', cls: 'hide-narrow', cell: (i) => when(i.lastPulled) },
        ], top.mostPulled, { id: 'top' })),
      h('section', { 'aria-labelledby': 'largest-h' }, h('h2', { id: 'largest-h' }, 'Largest cached'),
        table('Largest cached images (manifest, config and layers)', [
          { label: 'Image', cell: (i) => h('a', { href: `#/repository?${new URLSearchParams({ source: i.upstream, name: i.repository })}` }, imageName(i.upstream, i.repository, `:${i.tags.join(', ')}`)) },
          { label: 'Size', cls: 'num', cell: (i) => h('span', { 'data-bytes': i.size }, size(i.size)) },
          { label: 'Last served', cls: 'hide-narrow', cell: (i) => when(i.lastServed) },
        ], top.largestCached, { id: 'largest' }))),
    h('div', { class: 'section-head' }, h('h2', {}, 'History'),
      h('label', { for: 'history-hours' }, 'Last ', h('select', { id: 'history-hours', onchange: (e) => {
        const next = new URLSearchParams(params);
        next.set('hours', e.target.value);
        location.hash = `#/overview?${next}`;
      } }, HISTORY_HOURS.map((n) => h('option', { value: n, selected: n === hours }, n === 1 ? '1 hour' : `${n} hours`))))),
    chartsHost,
    h('h2', {}, 'Next to be evicted'),
    table([`What the next cleaner run would remove, in order (${plural(evictions.total, 'blob')}, ${size(evictions.evictBytes)}); the same plan as stevedore clean --dry-run, made `, when(evictions.plannedAt)], [
      { label: 'Blob', cell: (b) => h('code', { class: 'digest' }, b.digest) },
      { label: 'Size', cls: 'num', cell: (b) => size(b.size) },
      { label: 'Last served', cell: (b) => when(b.lastServed) },
    ], evictions.items, { id: 'evictions', empty: 'Nothing: cached content is under the trigger, or within the grace period.' }),
  );
  renderCharts(chartsHost, history);
}

async function runCleaner() {
  if (!confirm('Run the cleaner now? It evicts least recently served cached content above the limit.')) return;
  try {
    const { run } = await api('cleaner/run', { method: 'POST', headers: CSRF });
    say(`Cleaner run done: ${plural(run.evictedBlobs, 'blob')} evicted, ${size(run.freedBytes)} freed.`);
    route();
  } catch (err) {
    say(err.message, 'error');
  }
}

async function repositories(params) {
  const q = params.get('q') ?? '';
  const source = params.get('source') ?? '';
  const page = Number(params.get('page') ?? 1);
  const data = await api(`repositories?${new URLSearchParams({ q, source, page: String(page), per_page: '50' })}`);
  const search = h('input', { type: 'search', id: 'repo-q', name: 'q', value: q, placeholder: 'name contains…' });
  const select = h('select', { id: 'repo-source', name: 'source' }, h('option', { value: '' }, 'all'), data.sources.map((s) => h('option', { value: s, selected: s === source }, s === 'hosted' ? 'hosted' : sourceLabel(s).textContent)));
  const go = (p = 1) => { location.hash = `#/repositories?${new URLSearchParams({ q: search.value, source: select.value, page: String(p) })}`; };
  main.replaceChildren(
    h('h1', {}, 'Repositories'),
    h('form', { class: 'toolbar', role: 'search', onsubmit: (e) => { e.preventDefault(); go(); } },
      h('label', { for: 'repo-q' }, 'Search', search), h('label', { for: 'repo-source' }, 'Source', select), h('button', { type: 'submit' }, 'Search')),
    table(plural(data.total, 'repository', 'repositories'), [
      { label: 'Repository', cell: (r) => h('a', { href: `#/repository?${new URLSearchParams({ source: r.source, name: r.name })}` }, r.name) },
      { label: 'Source', cell: (r) => (r.source === 'hosted' ? 'hosted' : ['cache of ', sourceLabel(r.source)]) },
      { label: 'Tags', cls: 'num', cell: (r) => num(r.tags) },
    ], data.items),
    pager(data, go),
  );
}

function pager(data, go) {
  const pages = Math.max(1, Math.ceil(data.total / data.perPage));
  return h('div', { class: 'pager' },
    h('button', { type: 'button', disabled: data.page <= 1, onclick: () => go(data.page - 1) }, 'Previous'),
    h('span', {}, `page ${data.page} of ${pages}`),
    h('button', { type: 'button', disabled: data.page >= pages, onclick: () => go(data.page + 1) }, 'Next'));
}

function copyButton(text) {
  return h('button', { type: 'button', onclick: async () => {
    try {
      await navigator.clipboard.writeText(text);
      say('Copied to the clipboard.');
    } catch {
      say('Copy failed: select the text and copy it.', 'error');
    }
  } }, 'Copy');
}

async function repository(params) {
  const source = params.get('source');
  const name = params.get('name');
  const page = Number(params.get('page') ?? 1);
  const data = await api(`tags?${new URLSearchParams({ source, repository: name, page: String(page) })}`);
  const host = location.host;
  const first = data.items[0]?.tag ?? 'latest';
  // data.pull starts with the prefix that routes to this source (its alias, if it has one).
  const pull = data.pull === null ? null : `podman pull ${host}/${data.pull}:${first}`;
  const cache = source !== 'hosted';
  // byTag: only this tag goes (the hosted registry's DELETE of a tag); otherwise the manifest, with every tag on it.
  const remove = async (t, byTag = false) => {
    const what = cache ? `Purge ${name}@${t.digest} from the cache? The next pull fetches it again.`
      : byTag ? `Delete the tag ${name}:${t.tag}? The manifest ${t.digest} stays (and any other tag on it).`
        : `Delete the manifest ${t.digest} (and every tag on it) from ${name}? This cannot be undone.`;
    if (!confirm(what)) return;
    try {
      await api(`manifests?${new URLSearchParams({ source, repository: name, reference: byTag ? t.tag : t.digest })}`, { method: 'DELETE', headers: CSRF });
      say(cache ? `Purged ${name}:${t.tag} from the cache.` : byTag ? `Deleted the tag ${name}:${t.tag}.` : `Deleted ${name}@${t.digest}.`);
      route();
    } catch (err) {
      say(err.message, 'error');
    }
  };
  const mirror = cache ? [
    h('h2', {}, 'K3s / containerd'),
    h('p', { class: 'muted' }, `Nodes pull ${source} images through this gateway with:`),
    // Scrolls sideways on a phone: focusable, so the keyboard scrolls it too.
    h('pre', { tabindex: 0, 'aria-label': 'registries.yaml for K3s' }, `# /etc/rancher/k3s/registries.yaml\nmirrors:\n  ${source}:\n    endpoint: ["https://${host}"]`),
    h('pre', { tabindex: 0, 'aria-label': 'hosts.toml for containerd' }, `# /etc/containerd/certs.d/${source}/hosts.toml\n[host."https://${host}"]\n  capabilities = ["pull", "resolve"]`),
  ] : [];
  main.replaceChildren(
    h('h1', {}, h('span', { class: 'muted' }, cache ? ['cache of ', sourceLabel(source), ' / '] : 'hosted / '), name),
    pull ? h('p', { class: 'pull' }, h('code', {}, pull), ' ', copyButton(pull))
      : h('p', { class: 'muted', 'data-testid': 'no-pull-prefix' }, `No image name reaches ${source} through this gateway: a host with a port can't be part of an image name. `,
        `Give it an alias (STEVEDORE_UPSTREAM_ALIASES="name=${source}") to pull ${host}/name/${name}, or pull through the K3s/containerd mirror below.`),
    table(plural(data.total, 'tag'), [
      { label: 'Tag', cell: (t) => h('a', { href: `#/image?${new URLSearchParams({ source, repository: name, digest: t.digest, tag: t.tag })}` }, t.tag) },
      { label: 'Digest', cell: (t) => h('code', { class: 'digest', 'data-testid': 'tag-digest' }, t.digest) },
      { label: 'Size', cls: 'num', cell: (t) => h('span', { 'data-bytes': t.size }, size(t.size)) },
      { label: 'Platforms', cls: 'hide-narrow', cell: (t) => (t.platforms ?? []).join(', ') || '–' },
      { label: 'Created', cls: 'hide-narrow', cell: (t) => when(t.created) },
      { label: 'Last served', cell: (t) => when(t.lastServed) },
      { label: 'Action', cell: (t) => (cache ? adminButton('Purge', () => remove(t), 'danger')
        : h('div', { class: 'actions' }, adminButton('Delete tag', () => remove(t, true), 'danger delete-tag'), adminButton('Delete manifest', () => remove(t), 'danger delete-manifest'))) },
    ], data.items, { id: 'tags' }),
    pager(data, (p) => { location.hash = `#/repository?${new URLSearchParams({ source, name, page: String(p) })}`; }),
    ...mirror,
  );
}

async function image(params) {
  const source = params.get('source');
  const repository = params.get('repository');
  const img = await api(`image?${new URLSearchParams({ source, repository, digest: params.get('digest') })}`);
  // By digest, through the prefix that routes to the source (none for a host:port without alias).
  const prefix = sources.get(source)?.pullPrefix;
  const pull = prefix === null || prefix === undefined ? null : `podman pull ${location.host}/${prefix ? `${prefix}/` : ''}${repository}@${img.digest}`;
  const back = [h('span', { class: 'muted' }, source === 'hosted' ? 'hosted / ' : ['cache of ', sourceLabel(source), ' / ']),
    h('a', { href: `#/repository?${new URLSearchParams({ source, name: repository })}` }, repository)];
  const parts = img.manifests.length ? [
    table('Platforms of this index', [
      { label: 'Platform', cell: (m) => m.platform ?? '–' },
      { label: 'Manifest', cell: (m) => h('a', { href: `#/image?${new URLSearchParams({ source, repository, digest: m.digest })}` }, h('code', { class: 'digest' }, m.digest)) },
      { label: 'Size', cls: 'num', cell: (m) => size(m.size) },
    ], img.manifests),
  ] : [
    h('h2', {}, 'Config'),
    img.config ? h('p', {}, h('code', { class: 'digest', 'data-testid': 'config-digest' }, img.config.digest), ` ${size(img.config.size)}`,
      img.config.os ? ` · ${img.config.os}/${img.config.architecture}` : '', img.config.created ? ` · created ${new Date(img.config.created).toISOString()}` : '') : h('p', {}, '–'),
    table(`${plural(img.layers.length, 'layer')}, ${size(img.layers.reduce((s, l) => s + l.size, 0))}`, [
      { label: 'Layer', cell: (l) => h('code', { class: 'digest', 'data-testid': 'layer-digest' }, l.digest) },
      { label: 'Size', cls: 'num', cell: (l) => h('span', { 'data-testid': 'layer-size', 'data-bytes': l.size }, size(l.size)) },
      { label: 'Stored', cell: (l) => (l.stored ? 'yes' : 'no (evicted or not fetched yet)') },
      { label: 'Last served', cls: 'hide-narrow', cell: (l) => when(l.lastServed) },
    ], img.layers, { id: 'layers' }),
  ];
  main.replaceChildren(
    h('h1', {}, back, params.get('tag') ? `:${params.get('tag')}` : ''),
    h('p', {}, h('code', { class: 'digest' }, img.digest), h('span', { class: 'muted' }, ` ${img.mediaType} · ${size(img.size)}`)),
    pull ? h('p', { class: 'pull' }, h('code', {}, pull), ' ', copyButton(pull)) : '',
    ...parts,
  );
}

async function pulls(params) {
  const q = params.get('q') ?? '';
  const status = params.get('status') ?? '';
  // The access log names the hosted registry "-" and an upstream by its host.
  const upstream = params.get('upstream') ?? '';
  const data = await api(`pulls?${new URLSearchParams({ q, status, upstream, limit: '200' })}`);
  const search = h('input', { type: 'search', id: 'pull-q', value: q, placeholder: 'image, user…' });
  const select = h('select', { id: 'pull-status' }, ['', '2xx', '3xx', '4xx', '5xx'].map((s) => h('option', { value: s, selected: s === status }, s || 'any')));
  const from = h('select', { id: 'pull-upstream' }, h('option', { value: '' }, 'any'),
    [...sources.keys()].map((s) => (s === 'hosted' ? '-' : s)).map((s) => h('option', { value: s, selected: s === upstream }, sourceLabel(s).textContent)));
  main.replaceChildren(
    h('h1', {}, 'Recent pulls'),
    h('form', { class: 'toolbar', role: 'search', onsubmit: (e) => { e.preventDefault(); location.hash = `#/pulls?${new URLSearchParams({ q: search.value, status: select.value, upstream: from.value })}`; } },
      h('label', { for: 'pull-q' }, 'Filter', search), h('label', { for: 'pull-upstream' }, 'Source', from), h('label', { for: 'pull-status' }, 'Status', select), h('button', { type: 'submit' }, 'Filter')),
    table(`Last ${data.items.length} manifest and blob requests, newest first`, [
      { label: 'Time', cell: (e) => when(e.time) },
      { label: 'User', cell: (e) => e.user },
      { label: 'Image', cell: (e) => imageName(e.upstream, e.repository) },
      { label: 'Reference', cls: 'hide-narrow', cell: (e) => short(e.reference) },
      { label: 'Status', cls: 'num', cell: (e) => e.status },
      { label: 'Bytes', cls: 'num', cell: (e) => size(e.bytes) },
      { label: 'ms', cls: 'num hide-narrow', cell: (e) => e.durationMs.toFixed(1) },
    ], data.items),
  );
}

const PAGES = { overview, repositories, repository, image, pulls };
const NAV = { overview: 'overview', repositories: 'repositories', repository: 'repositories', image: 'repositories', pulls: 'pulls' };

let refreshTimer;
let lastRender = 0;

/** Re-renders the overview in place when it is due, unless the tab is hidden (then: when it shows again). */
function scheduleRefresh(page, params) {
  clearTimeout(refreshTimer);
  if (page !== 'overview') return;
  const every = refreshMs(params);
  refreshTimer = setTimeout(() => { if (!document.hidden) route({ keepScroll: true }); }, Math.max(0, lastRender + every - Date.now()));
}

document.addEventListener('visibilitychange', () => {
  if (document.hidden) clearTimeout(refreshTimer);
  else if (document.body.dataset.page === 'overview') scheduleRefresh('overview', new URLSearchParams(location.hash.split('?')[1] ?? ''));
});

async function route({ keepScroll = false } = {}) {
  const scrollY = window.scrollY;
  const [path, query] = (location.hash.slice(2) || 'overview').split('?');
  const page = PAGES[path] ? path : 'overview';
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === NAV[page]) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  charts.forEach(({ plot }) => plot.destroy());
  charts = [];
  document.body.dataset.page = page;
  document.body.removeAttribute('data-ready');
  try {
    await PAGES[page](new URLSearchParams(query ?? ''));
  } catch (err) {
    main.replaceChildren(h('h1', {}, 'Error'), h('p', { class: 'muted' }, err.message));
  }
  document.title = `${main.querySelector('h1')?.textContent ?? 'Console'} · Stevedore`;
  markScrollable();
  if (keepScroll) window.scrollTo(0, scrollY);
  lastRender = Date.now();
  scheduleRefresh(page, new URLSearchParams(query ?? ''));
  // Tests and screen readers: the page's content is complete.
  document.body.setAttribute('data-ready', page);
}

async function start() {
  try {
    const [who, known] = await Promise.all([api('me'), api('sources')]);
    me = who;
    sources = new Map(known.items.map((s) => [s.source, s]));
    document.getElementById('whoami').textContent = me.auth ? `${me.user} · ${me.admin ? 'admin' : 'read-only'}` : 'no authentication';
  } catch (err) {
    say(err.message, 'error');
  }
  window.addEventListener('hashchange', () => route());
  await route();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
