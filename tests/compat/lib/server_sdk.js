'use strict';
// One scenario for every server-side SDK: a real client with its default settings (only the
// collector's URL and the write key set) sends identify, track (nested properties, unicode, a
// cut emoji), page, screen, group, alias, an anonymous track and BULK more tracks. The SDK's
// own wire bodies are captured (each adapter knows how its SDK exposes them), then the events
// topic is read back and checked:
//   - exactly once: every messageId the SDK sent is on the topic once, nothing else is;
//   - the documented fields of each call carry what the test passed (userId, traits, event,
//     properties, name, groupId, previousId, context.library.name);
//   - the record is the event as sent (every key), lone surrogates read as U+FFFD, plus the
//     collector's fields: receivedAt, timestamp (the client's, clock-skew corrected: here the
//     same clock, so within a minute), originalTimestamp = the client's timestamp as sent,
//     sentAt = the batch's sentAt, source, no writeKey.

const { Report, exactlyOnce, isoMs } = require('./check');

const BULK = 300;
const CUT = '\ud83d'; // the first half of U+1F600, what String.prototype.slice leaves of 😀

// Replaces lone surrogates by U+FFFD in every string and key (what SPEC §2 makes of them).
function unpaired(x) {
  const re = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
  if (typeof x === 'string') return x.replace(re, '\ufffd');
  if (Array.isArray(x)) return x.map(unpaired);
  if (x && typeof x === 'object') {
    const o = {};
    for (const [k, v] of Object.entries(x)) o[unpaired(k)] = unpaired(v);
    return o;
  }
  return x;
}

// True when every key of want (recursively) is in got with the same value.
function subset(want, got) {
  if (want === null || typeof want !== 'object') return Object.is(want, got) || want === got;
  if (got === null || typeof got !== 'object') return false;
  if (Array.isArray(want)) return Array.isArray(got) && want.length === got.length && want.every((w, i) => subset(w, got[i]));
  return Object.entries(want).every(([k, v]) => subset(v, got[k]));
}

// The calls, each with a predicate that finds its event among the wire events and the
// documented fields it must carry on the topic.
function plan() {
  const order = {
    order: { id: 'o-1001', items: [{ sku: 'sku-1', qty: 2, price: 9.99 }, { sku: 'sku-2', qty: 1, price: 0.5 }], total: 20.48 },
    coupon: null,
    gift: false,
    tags: ['a', 'b'],
    unicode: 'Grüße, 日本語, emoji 🎉, RTL שלום',
  };
  const calls = [
    {
      type: 'identify',
      args: { userId: 'u-compat-1', traits: { name: 'Ada Lovelace', email: 'ada@example.com', plan: 'pro', address: { city: 'Zürich' } } },
      match: (e) => e.type === 'identify' && e.userId === 'u-compat-1',
      want: { userId: 'u-compat-1', traits: { name: 'Ada Lovelace', email: 'ada@example.com', plan: 'pro', address: { city: 'Zürich' } } },
    },
    {
      type: 'track',
      args: { userId: 'u-compat-1', event: 'Order Completed', properties: order },
      match: (e) => e.type === 'track' && e.event === 'Order Completed',
      want: { userId: 'u-compat-1', event: 'Order Completed', properties: order },
    },
    {
      type: 'track',
      args: { userId: 'u-compat-1', event: 'Cut Emoji', properties: { title: `Party ${CUT}`, whole: '😀' } },
      match: (e) => e.type === 'track' && e.event === 'Cut Emoji',
      want: { userId: 'u-compat-1', event: 'Cut Emoji', properties: { title: 'Party \ufffd', whole: '😀' } },
    },
    {
      type: 'page',
      args: { userId: 'u-compat-1', category: 'Docs', name: 'Home', properties: { path: '/docs', title: 'Docs Home' } },
      match: (e) => e.type === 'page',
      want: { userId: 'u-compat-1', name: 'Home', properties: { path: '/docs', title: 'Docs Home' } },
    },
    {
      type: 'screen',
      args: { userId: 'u-compat-1', name: 'Dashboard', properties: { tab: 'usage' } },
      match: (e) => e.type === 'screen',
      want: { userId: 'u-compat-1', name: 'Dashboard', properties: { tab: 'usage' } },
    },
    {
      type: 'group',
      args: { userId: 'u-compat-1', groupId: 'acct-compat', traits: { name: 'Acme Inc', employees: 42 } },
      match: (e) => e.type === 'group',
      want: { userId: 'u-compat-1', groupId: 'acct-compat', accountId: 'acct-compat', traits: { name: 'Acme Inc', employees: 42 } },
    },
    {
      type: 'alias',
      args: { previousId: 'anon-compat-1', userId: 'u-compat-1' },
      match: (e) => e.type === 'alias',
      want: { previousId: 'anon-compat-1', userId: 'u-compat-1' },
    },
    {
      type: 'track',
      args: { anonymousId: 'anon-compat-2', event: 'Anonymous Visit', properties: { referrer: 'search' } },
      match: (e) => e.type === 'track' && e.event === 'Anonymous Visit',
      want: { anonymousId: 'anon-compat-2', event: 'Anonymous Visit', properties: { referrer: 'search' } },
    },
  ];
  for (let i = 0; i < BULK; i++) {
    const userId = `u-bulk-${i % 17}`;
    calls.push({
      type: 'track',
      args: { userId, event: 'Bulk Event', properties: { i, batch: Math.floor(i / 50), label: `bulk ${i}` } },
      match: (e) => e.type === 'track' && e.event === 'Bulk Event' && e.properties && e.properties.i === i,
      want: { userId, event: 'Bulk Event', properties: { i, batch: Math.floor(i / 50), label: `bulk ${i}` } },
    });
  }
  return calls;
}

// Keys the collector sets or moves: compared separately, not as sent.
const COLLECTOR_KEYS = new Set(['writeKey', 'receivedAt', 'timestamp', 'source', 'accountId', 'sentAt', 'originalTimestamp']);

// Compares one record with the wire event it came from (and its batch's sentAt).
function againstWire(rep, rec, ev, batchSentAt) {
  const v = rec.value;
  const id = ev.messageId;
  for (const [k, sent] of Object.entries(ev)) {
    if (COLLECTOR_KEYS.has(k)) continue;
    rep.equal(v[k], unpaired(sent), `${k} kept as sent`, id);
  }
  const clientTs = ev.timestamp !== undefined ? ev.timestamp : ev.originalTimestamp;
  if (rep.expect(clientTs !== undefined, 'the SDK sent a timestamp or originalTimestamp', id)) {
    rep.expect(isoMs(v.originalTimestamp) === Date.parse(clientTs), "originalTimestamp = the client's timestamp as sent",
      `${id}: want ${clientTs}, got ${v.originalTimestamp}`);
    const ts = isoMs(v.timestamp);
    rep.expect(Math.abs(ts - Date.parse(clientTs)) < 60000, "timestamp near the client's (same clock)", `${id}: ${v.timestamp} vs ${clientTs}`);
  }
  const sentAt = ev.sentAt !== undefined ? ev.sentAt : batchSentAt;
  if (sentAt !== undefined)
    rep.expect(v.sentAt !== undefined && Date.parse(v.sentAt) === Date.parse(sentAt), "sentAt = the batch's sentAt", `${id}: want ${sentAt}, got ${v.sentAt}`);
}

// Runs the scenario with adapter:
//   adapter.name, adapter.library (context.library.name the SDK stamps)
//   adapter.run(url, writeKey, calls) -> { batches: [{body, status}] } (every wire body sent)
async function run(env, adapter) {
  const rep = new Report(adapter.name);
  const calls = plan();
  const t0 = Date.now();
  const { batches } = await adapter.run(env.url, 'wk_compat', calls);
  const t1 = Date.now();

  // What went over the wire, each distinct event once (a retried body repeats its events).
  const wire = new Map();
  for (const b of batches) {
    rep.expect(b.status === 200, 'every request answered 200', `${b.status} ${b.answer}`);
    for (const ev of b.body.batch) if (!wire.has(ev.messageId)) wire.set(ev.messageId, { ev, sentAt: b.body.sentAt });
  }
  rep.equal(wire.size, calls.length, 'distinct events the SDK sent');
  const expected = [];
  const wireEvents = [...wire.values()];
  for (const call of calls) {
    const found = wireEvents.filter((w) => call.match(w.ev));
    if (!rep.expect(found.length === 1, 'each call sent once by the SDK', `${call.type} ${JSON.stringify(call.args).slice(0, 80)}: ${found.length} wire events`)) continue;
    expected.push({ messageId: found[0].ev.messageId, type: call.type, call, wire: found[0] });
  }

  const records = await env.consume('events', expected.length, 30000);
  const once = exactlyOnce(rep, records, expected, { t0, t1, source: 'compat' });
  let documented = 0;
  for (const want of expected) {
    const rec = records.find((r) => r.value && r.value.messageId === want.messageId);
    if (!rec) continue;
    const ok = rep.expect(subset(want.call.want, rec.value), `documented fields of ${want.type}`, `${want.messageId}: want ${JSON.stringify(want.call.want).slice(0, 300)}, got ${JSON.stringify(rec.value).slice(0, 600)}`);
    rep.equal(rec.value.context && rec.value.context.library && rec.value.context.library.name, adapter.library, 'context.library.name', want.messageId);
    if (ok) documented++;
    againstWire(rep, rec, want.wire.ev, want.wire.sentAt);
  }
  const rejected = await env.consume('events_rejected', 0, 2000);
  rep.equal(rejected.length, 0, 'records on events_rejected');
  const ok = rep.done(`${calls.length} calls, ${wire.size} events sent in ${batches.length} requests, ${records.length} records, ${once} exactly once, ${documented} with their documented fields`);
  return ok;
}

module.exports = { run, plan, unpaired, subset, againstWire, BULK, CUT };
