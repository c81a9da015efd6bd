'use strict';
// @segment/analytics-next, the browser SDK, in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core). The page is served by a tiny static server on 127.0.0.1 (its own
// port, so the collector is another origin and CORS is real); the SDK's UMD bundle comes from
// the npm package. The page sets only writeKey and cdnURL = the collector, so the SDK loads its
// settings from GET {collector}/v1/projects/{key}/settings and then posts each call to
// {apiHost}/{p,i,t,g,s,a} with fetch, text/plain, Authorization: Basic — a CORS preflight. The
// page then sends 10 tracks through the SDK's batching delivery (one POST to /v1/b), and one
// event the way pages do on unload, with navigator.sendBeacon (text/plain,
// the write key in the body). Checks: every call delivered (the SDK saw 2xx), every event on the
// topic exactly once with its documented fields and as sent, the requests the page made went to
// 127.0.0.1 only, the preflight was answered, and the POSTs were text/plain.

const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { Report, exactlyOnce } = require('../lib/check');
const { againstWire, subset, CUT } = require('../lib/server_sdk');

const TRACKS = 40;
const CHROMIUM = process.env.SLUICE_CHROMIUM || '/usr/bin/chromium';
const UMD = path.join(path.dirname(require.resolve('@segment/analytics-next/package.json')), 'dist', 'umd');

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>sluice compat</title>
<script src="/ajs/index.js"></script></head>
<body><h1>sluice conformance page</h1>
<script>
window.runSluice = async function (writeKey, cdnURL, tracks, cut) {
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load({ writeKey, cdnURL });
  const out = [];
  const note = (name, ctx) => out.push({ name, messageId: ctx.event.messageId, type: ctx.event.type,
    failed: ctx.failedDelivery() ? String(ctx.failedDelivery().reason) : null });
  note('page', await analytics.page('Docs', 'Home', { section: 'intro' }));
  note('identify', await analytics.identify('u-browser-1', { name: 'Grace Hopper', plan: 'team' }));
  for (let i = 0; i < tracks; i++)
    note('track ' + i, await analytics.track('Browser Click', { i, label: 'click ' + i, nested: { ok: true } }));
  note('cut', await analytics.track('Cut Emoji', { title: 'Party ' + cut }));
  note('group', await analytics.group('acct-browser', { name: 'Acme Browser' }));
  note('screen', await analytics.screen('Mobile Web', 'Settings', { tab: 'privacy' }));
  note('alias', await analytics.alias('u-browser-1', 'anon-browser-prev'));
  // The SDK's batching delivery (an init option it documents): one POST to {apiHost}/b.
  const [batching] = await AnalyticsNext.AnalyticsBrowser.load({ writeKey, cdnURL },
    { integrations: { 'Segment.io': { deliveryStrategy: { strategy: 'batching', config: { size: 10, timeout: 500 } } } } });
  const batched = [];
  for (let i = 0; i < 10; i++) {
    const ctx = await batching.track('Batched Click', { i });
    batched.push({ name: 'batched ' + i, messageId: ctx.event.messageId, type: ctx.event.type, failed: null });
  }
  const beacon = navigator.sendBeacon(cdnURL + '/v1/t', JSON.stringify({
    writeKey, type: 'track', messageId: 'beacon-' + Date.now(), anonymousId: analytics.user().anonymousId(),
    event: 'Page Unload Beacon', properties: { via: 'sendBeacon' }, timestamp: new Date().toISOString() }));
  return { calls: out, batched, beacon, anonymousId: analytics.user().anonymousId() };
};
</script></body></html>`;

// The static server for the page and the SDK bundle (dist/umd of the npm package).
function staticServer() {
  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://127.0.0.1');
    if (u.pathname === '/' || u.pathname === '/index.html') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      return res.end(PAGE);
    }
    if (u.pathname === '/favicon.ico') {
      res.writeHead(204);
      return res.end();
    }
    if (u.pathname.startsWith('/ajs/')) {
      const f = path.join(UMD, path.basename(u.pathname));
      if (fs.existsSync(f)) {
        res.writeHead(200, { 'Content-Type': 'application/javascript' });
        return res.end(fs.readFileSync(f));
      }
    }
    res.writeHead(404);
    res.end();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function browserCase(env) {
  const rep = new Report('@segment/analytics-next (headless Chromium)');
  if (!rep.expect(fs.existsSync(CHROMIUM), 'chromium installed', `${CHROMIUM} missing (tests/deps.sh installs Debian's chromium)`))
    return rep.done('not run');
  const server = await staticServer();
  const pageOrigin = `http://127.0.0.1:${server.address().port}`;
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-chromium-'));
  const preflightsBefore = await preflights(env);
  let context;
  const t0 = Date.now();
  let result;
  const requests = [];
  const posts = [];
  const consoleErrors = [];
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: 60000,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(60000);
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    page.on('request', (r) => requests.push({ url: r.url(), method: r.method() }));
    page.on('requestfinished', async (r) => {
      if (r.method() !== 'POST' || !r.url().startsWith(env.url)) return;
      const res = await r.response().catch(() => null);
      posts.push({ url: r.url(), headers: await r.allHeaders().catch(() => r.headers()), body: r.postData(), status: res ? res.status() : 0 });
    });
    await page.goto(`${pageOrigin}/index.html`, { waitUntil: 'load' });
    const batchPost = page.waitForResponse((r) => r.url() === `${env.url}/v1/b`, { timeout: 60000 });
    result = await page.evaluate(([k, u, n, cut]) => window.runSluice(k, u, n, cut), ['wk_compat', env.url, TRACKS, CUT]);
    rep.equal((await batchPost.catch((e) => ({ status: () => String(e) }))).status(), 200, 'the batching POST to /v1/b answered 200');
    await page.waitForTimeout(500);
  } finally {
    if (context) await context.close().catch(() => {});
    server.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  const t1 = Date.now();

  // The page talked to 127.0.0.1 only: its own origin and the collector.
  for (const r of requests)
    rep.expect(r.url.startsWith(pageOrigin) || r.url.startsWith(env.url), 'requests only to 127.0.0.1 (page, collector)', r.url);
  rep.expect(requests.some((r) => r.method === 'GET' && r.url === `${env.url}/v1/projects/wk_compat/settings`), 'settings loaded from the collector', JSON.stringify(requests.map((r) => r.url)));
  rep.expect(consoleErrors.length === 0, 'no console errors on the page', consoleErrors.join(' | '));
  rep.expect(result.beacon === true, 'sendBeacon queued', String(result.beacon));
  for (const c of result.calls) rep.expect(c.failed === null, 'the SDK saw every call delivered', `${c.name}: ${c.failed}`);

  // The SDK's own POSTs: short paths, text/plain, 200, read cross-origin.
  const wanted = { page: '/v1/p', identify: '/v1/i', track: '/v1/t', group: '/v1/g', screen: '/v1/s', alias: '/v1/a' };
  const wire = new Map();
  const batchSentAt = new Map();
  for (const p of posts) {
    rep.expect(p.status === 200, 'POSTs answered 200', `${p.url} ${p.status}`);
    rep.expect(/^text\/plain/.test(p.headers['content-type'] || ''), 'POSTs are text/plain', `${p.url} ${p.headers['content-type']}`);
    let body;
    try {
      body = JSON.parse(p.body);
    } catch (_) {
      rep.expect(false, 'POST bodies are JSON', p.body && p.body.slice(0, 200));
      continue;
    }
    if (Array.isArray(body.batch)) {
      rep.equal(new URL(p.url).pathname, '/v1/b', 'batches go to /v1/b');
      for (const ev of body.batch) {
        wire.set(ev.messageId, ev);
        batchSentAt.set(ev.messageId, body.sentAt);
      }
      continue;
    }
    if (body.type && wanted[body.type]) rep.equal(new URL(p.url).pathname, wanted[body.type], 'short path per type', body.messageId);
    wire.set(body.messageId, body);
  }
  rep.expect((await preflights(env)) > preflightsBefore, 'CORS preflight answered by the collector (204 counted)');

  const calls = result.calls.concat(result.batched);
  const beaconWire = [...wire.values()].find((b) => b.event === 'Page Unload Beacon');
  const expected = calls.map((c) => ({ messageId: c.messageId, type: c.type, name: c.name }));
  if (rep.expect(beaconWire !== undefined, 'the sendBeacon POST was seen', `${posts.length} POSTs`))
    expected.push({ messageId: beaconWire.messageId, type: 'track', name: 'beacon' });

  const records = await env.consume('events', expected.length, 30000);
  const once = exactlyOnce(rep, records, expected, { t0, t1, source: 'compat' });
  const docs = {
    page: { type: 'page', name: 'Home', category: 'Docs', properties: { section: 'intro' } },
    identify: { type: 'identify', userId: 'u-browser-1', traits: { name: 'Grace Hopper', plan: 'team' } },
    cut: { type: 'track', userId: 'u-browser-1', event: 'Cut Emoji', properties: { title: 'Party \ufffd' } },
    group: { type: 'group', userId: 'u-browser-1', groupId: 'acct-browser', accountId: 'acct-browser', traits: { name: 'Acme Browser' } },
    screen: { type: 'screen', name: 'Settings', properties: { tab: 'privacy' } },
    alias: { type: 'alias', userId: 'u-browser-1', previousId: 'anon-browser-prev' },
    beacon: { type: 'track', event: 'Page Unload Beacon', anonymousId: result.anonymousId, properties: { via: 'sendBeacon' } },
  };
  let documented = 0;
  for (const want of expected) {
    const rec = records.find((r) => r.value && r.value.messageId === want.messageId);
    if (!rec) continue;
    const v = rec.value;
    let doc = docs[want.name];
    if (want.name.startsWith('track ')) {
      const i = Number(want.name.slice(6));
      doc = { type: 'track', userId: 'u-browser-1', event: 'Browser Click', properties: { i, label: `click ${i}`, nested: { ok: true } } };
    }
    if (want.name.startsWith('batched ')) doc = { type: 'track', event: 'Batched Click', properties: { i: Number(want.name.slice(8)) } };
    if (rep.expect(subset(doc, v), `documented fields of ${want.type}`, `${want.messageId}: want ${JSON.stringify(doc)}, got ${JSON.stringify(v).slice(0, 600)}`)) documented++;
    rep.equal(v.anonymousId, result.anonymousId, 'one anonymousId for the visitor', want.messageId);
    if (want.name !== 'beacon') {
      rep.equal(v.context && v.context.library && v.context.library.name, 'analytics.js', 'context.library.name', want.messageId);
      rep.equal(v.context && v.context.page && v.context.page.url, `${pageOrigin}/index.html`, 'context.page.url', want.messageId);
      rep.expect(typeof (v.context && v.context.userAgent) === 'string', 'context.userAgent', want.messageId);
    }
    const sent = wire.get(want.messageId);
    if (rep.expect(sent !== undefined, 'its POST was seen by the page', want.messageId)) againstWire(rep, rec, sent, batchSentAt.get(want.messageId));
  }
  return rep.done(`${result.calls.length} SDK calls + ${result.batched.length} batched + 1 sendBeacon, ${posts.length} POSTs, ${records.length} records, ${once} exactly once, ${documented} with their documented fields`);
}

// Answers with status 204 the collector counted (preflights: nothing else here answers 204).
async function preflights(env) {
  const res = await fetch(`${env.url}/metrics`, { signal: AbortSignal.timeout(10000) });
  const m = /^sluice_http_responses_total\{code="204"\} ([0-9.e+]+)$/m.exec(await res.text());
  return m ? Number(m[1]) : 0;
}

module.exports = browserCase;
