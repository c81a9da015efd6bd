'use strict';
// The raw HTTP cases of issue 9, each its own ctest entry (compat_raw_NAME): bodies written by
// hand the way real clients send them, posted with fetch, then the answer, the events topic,
// events_rejected and the counters checked. SPEC §2 says what each must give.

const zlib = require('node:zlib');
const { Report, isoMs } = require('../lib/check');

const KEY = 'wk_compat';
const AUTH = `Basic ${Buffer.from(`${KEY}:`).toString('base64')}`;
let seq = 0;
const mid = (p) => `${p}-${process.pid}-${++seq}`;

async function post(env, path, body, headers = {}) {
  const res = await fetch(`${env.url}${path}`, {
    method: 'POST',
    headers: { Authorization: AUTH, 'Content-Type': 'application/json', ...headers },
    body,
    signal: AbortSignal.timeout(20000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch (_) {
    json = undefined;
  }
  return { status: res.status, text, json };
}

function track(id, i, extra = {}) {
  return { type: 'track', messageId: id, userId: `raw-user-${i % 5}`, event: 'Raw Event', properties: { i }, ...extra };
}

// Asserts a 200 with accepted/rejected counts.
function answered(rep, res, accepted, rejected = 0) {
  if (!rep.expect(res.status === 200, 'answer 200', `${res.status} ${res.text.slice(0, 300)}`)) return false;
  rep.equal(res.json && res.json.accepted, accepted, 'accepted');
  rep.equal(res.json && res.json.rejected, rejected, 'rejected', res.text.slice(0, 300));
  return true;
}

// Reads the events topic: exactly the ids (each once); returns messageId -> record.
async function delivered(rep, env, ids) {
  const records = await env.consume('events', ids.length, 20000);
  rep.equal(records.length, ids.length, 'records on the events topic');
  const byId = new Map();
  for (const r of records) {
    const id = r.value && r.value.messageId;
    rep.expect(!byId.has(id), 'each event exactly once', id);
    byId.set(id, r);
  }
  for (const id of ids) rep.expect(byId.has(id), 'every accepted event on the topic', id);
  return byId;
}

async function noRejected(rep, env) {
  const rej = await env.consume('events_rejected', 0, 2000);
  rep.equal(rej.length, 0, 'records on events_rejected', JSON.stringify(rej.slice(0, 2)));
}

async function counterDelta(env, name, fn) {
  const before = (await env.metric(name)) || 0;
  await fn();
  const after = await env.metric(name);
  return after === undefined ? undefined : after - before;
}

const cases = {
  // One lone surrogate escape in one event of 20: the string gets U+FFFD, the repair is
  // counted, all 20 are accepted; never a 400.
  async lone_surrogate(env) {
    const rep = new Report('raw lone surrogate in 1 of 20');
    const ids = [];
    const parts = [];
    for (let i = 0; i < 20; i++) {
      const id = mid('sur');
      ids.push(id);
      const ev = JSON.stringify(track(id, i));
      parts.push(i === 7 ? ev.replace('"properties":{', '"properties":{"title":"cut \\ud83d here","key\\udc00":1,') : ev);
    }
    const body = `{"batch":[${parts.join(',')}],"sentAt":"${new Date().toISOString()}"}`;
    let res;
    const d = await counterDelta(env, 'sluice_json_lone_surrogates_total', async () => {
      res = await post(env, '/v1/batch', body);
    });
    if (answered(rep, res, 20)) {
      const byId = await delivered(rep, env, ids);
      const v = byId.get(ids[7]) && byId.get(ids[7]).value;
      rep.equal(v && v.properties.title, 'cut \ufffd here', 'lone high surrogate read as U+FFFD');
      rep.equal(v && v.properties['key\ufffd'], 1, 'lone low surrogate in a key read as U+FFFD');
      rep.equal(byId.get(ids[6]) && byId.get(ids[6]).value.properties, { i: 6 }, 'the neighbours untouched');
    }
    rep.equal(d, 2, 'sluice_json_lone_surrogates_total counts the 2 repairs');
    await noRejected(rep, env);
    return rep.done('20 events, 1 with 2 lone surrogates');
  },

  // An integer beyond 64 bits (2^70) is kept as a double; the batch is not failed.
  async big_integer(env) {
    const rep = new Report('raw 2^70 integer');
    const id = mid('big');
    const ev = JSON.stringify(track(id, 0)).replace('"properties":{', '"properties":{"big":1180591620717411303424,"neg":-99999999999999999999999,');
    let res;
    const d = await counterDelta(env, 'sluice_json_big_integers_total', async () => {
      res = await post(env, '/v1/batch', `{"batch":[${ev}]}`);
    });
    if (answered(rep, res, 1)) {
      const v = (await delivered(rep, env, [id])).get(id);
      rep.equal(v && v.value.properties.big, 1180591620717411303424, '2^70 as a double');
      rep.equal(v && v.value.properties.neg, -1e23, '-10^23+1 as a double');
    }
    rep.equal(d, 2, 'sluice_json_big_integers_total counts both');
    await noRejected(rep, env);
    return rep.done('one event, two integers beyond 64 bits');
  },

  // userId "" with an anonymousId (what SDKs send for anonymous users) is accepted: "" counts
  // as absent, the key is the anonymousId. null likewise.
  async empty_user_id(env) {
    const rep = new Report('raw userId "" + anonymousId');
    const a = mid('empty');
    const b = mid('null');
    const body = JSON.stringify({ batch: [
      { type: 'track', messageId: a, userId: '', anonymousId: 'anon-empty', event: 'Empty Id' },
      { type: 'identify', messageId: b, userId: null, anonymousId: 'anon-null', traits: { x: 1 } },
    ] });
    const res = await post(env, '/v1/batch', body);
    if (answered(rep, res, 2)) {
      const byId = await delivered(rep, env, [a, b]);
      rep.equal(byId.get(a) && byId.get(a).key, 'anon-empty', 'Kafka key is the anonymousId');
      rep.equal(byId.get(a) && byId.get(a).value.anonymousId, 'anon-empty', 'anonymousId kept');
      rep.expect(byId.get(a) && !byId.get(a).value.userId, 'no userId on the record', JSON.stringify(byId.get(a) && byId.get(a).value.userId));
      rep.equal(byId.get(b) && byId.get(b).key, 'anon-null', 'null userId: key is the anonymousId');
    }
    await noRejected(rep, env);
    return rep.done('userId "" and null with anonymousId');
  },

  // Segment's documented HTTP examples carry no messageId: the collector generates one, marks
  // the record messageIdGenerated, and sets the message-id header to it.
  async generated_message_id(env) {
    const rep = new Report('raw no messageId');
    const one = { userId: 'raw-gen', event: 'Generated One', properties: { n: 1 } };
    const res1 = await post(env, '/v1/track', JSON.stringify(one));
    const res2 = await post(env, '/v1/batch', JSON.stringify({ batch: [{ type: 'identify', userId: 'raw-gen', traits: { n: 2 } }] }));
    const ok1 = answered(rep, res1, 1);
    const ok2 = answered(rep, res2, 1);
    if (ok1 && ok2) {
      const records = await env.consume('events', 2, 20000);
      rep.equal(records.length, 2, 'records on the events topic');
      const seen = new Set();
      for (const r of records) {
        const v = r.value;
        rep.expect(typeof v.messageId === 'string' && v.messageId.length >= 1 && v.messageId.length <= 100, 'a generated messageId of 1..100 bytes', JSON.stringify(v.messageId));
        rep.equal(v.messageIdGenerated, true, 'messageIdGenerated: true', v.type);
        rep.equal(r.headers['message-id'], v.messageId, 'message-id header = the generated id');
        seen.add(v.messageId);
      }
      rep.equal(seen.size, 2, 'distinct generated ids');
    }
    await noRejected(rep, env);
    return rep.done('a single track and a batched identify without messageId');
  },

  // Batch-level context applies to every event, merged key by key: the event's own keys win.
  async batch_context_merge(env) {
    const rep = new Report('raw batch context merge');
    const a = mid('ctx');
    const b = mid('ctx');
    const body = JSON.stringify({
      context: { library: { name: 'raw-lib', version: '1.0' }, ip: '203.0.113.9', locale: 'de-CH' },
      batch: [
        { type: 'track', messageId: a, userId: 'raw-ctx', event: 'Own Context', context: { locale: 'en-US', page: { path: '/p' } } },
        { type: 'track', messageId: b, userId: 'raw-ctx', event: 'No Context' },
      ],
    });
    const res = await post(env, '/v1/batch', body);
    if (answered(rep, res, 2)) {
      const byId = await delivered(rep, env, [a, b]);
      const ca = byId.get(a) && byId.get(a).value.context;
      rep.equal(ca && ca.locale, 'en-US', "the event's own key wins");
      rep.equal(ca && ca.page, { path: '/p' }, "the event's own keys kept");
      rep.equal(ca && ca.ip, '203.0.113.9', 'batch keys the event lacks merged in');
      rep.equal(ca && ca.library, { name: 'raw-lib', version: '1.0' }, 'batch library merged in');
      rep.equal(byId.get(b) && byId.get(b).value.context, { library: { name: 'raw-lib', version: '1.0' }, ip: '203.0.113.9', locale: 'de-CH' }, 'an event without context gets the batch context');
    }
    await noRejected(rep, env);
    return rep.done('batch context + an event with its own');
  },

  // Batch-level integrations are kept on every event, merged key by key like context.
  async batch_integrations(env) {
    const rep = new Report('raw batch integrations');
    const a = mid('int');
    const b = mid('int');
    const body = JSON.stringify({
      integrations: { All: false, Mixpanel: true },
      batch: [
        { type: 'track', messageId: a, userId: 'raw-int', event: 'Own Integrations', integrations: { Mixpanel: false, Amplitude: true } },
        { type: 'track', messageId: b, userId: 'raw-int', event: 'Batch Integrations' },
      ],
    });
    const res = await post(env, '/v1/batch', body);
    if (answered(rep, res, 2)) {
      const byId = await delivered(rep, env, [a, b]);
      rep.equal(byId.get(a) && byId.get(a).value.integrations, { All: false, Mixpanel: false, Amplitude: true }, 'merged, the event wins');
      rep.equal(byId.get(b) && byId.get(b).value.integrations, { All: false, Mixpanel: true }, 'the batch integrations kept');
    }
    await noRejected(rep, env);
    return rep.done('batch integrations + an event with its own');
  },

  // The client's timestamp as sent is kept as originalTimestamp and the batch's sentAt as
  // sentAt; timestamp is skew-corrected. A RudderStack-style event (originalTimestamp only)
  // gets its timestamp from originalTimestamp.
  async original_timestamp_sent_at(env) {
    const rep = new Report('raw originalTimestamp / sentAt');
    const a = mid('ts');
    const b = mid('ts');
    const skew = 3600 * 1000; // the client's clock is an hour behind
    const now = Date.now() - skew;
    const ts = new Date(now - 5000).toISOString();
    const ots = new Date(now - 8000).toISOString();
    const sentAt = new Date(now).toISOString();
    const body = JSON.stringify({ sentAt, batch: [
      { type: 'track', messageId: a, userId: 'raw-ts', event: 'Segment Style', timestamp: ts },
      { type: 'track', messageId: b, userId: 'raw-ts', event: 'Rudder Style', originalTimestamp: ots },
    ] });
    const res = await post(env, '/v1/batch', body);
    if (answered(rep, res, 2)) {
      const byId = await delivered(rep, env, [a, b]);
      const va = byId.get(a) && byId.get(a).value;
      const vb = byId.get(b) && byId.get(b).value;
      if (va) {
        rep.equal(isoMs(va.originalTimestamp), Date.parse(ts), 'originalTimestamp = timestamp as sent', va.originalTimestamp);
        rep.equal(Date.parse(va.sentAt), Date.parse(sentAt), "sentAt = the batch's", va.sentAt);
        rep.equal(isoMs(va.receivedAt) - isoMs(va.timestamp), 5000, 'timestamp = receivedAt - (sentAt - timestamp)');
      }
      if (vb) {
        rep.equal(isoMs(vb.originalTimestamp), Date.parse(ots), 'originalTimestamp kept (RudderStack)', vb.originalTimestamp);
        rep.equal(Date.parse(vb.sentAt), Date.parse(sentAt), "sentAt = the batch's (RudderStack)", vb.sentAt);
        rep.equal(isoMs(vb.receivedAt) - isoMs(vb.timestamp), 8000, 'timestamp from originalTimestamp, skew-corrected');
      }
    }
    await noRejected(rep, env);
    return rep.done('a Segment-style and a RudderStack-style event, client clock 1 h behind');
  },

  // A numeric userId (several server SDKs send numbers) becomes its decimal string.
  async numeric_user_id(env) {
    const rep = new Report('raw numeric userId');
    const a = mid('num');
    const b = mid('num');
    const body = JSON.stringify({ batch: [
      { type: 'track', messageId: a, userId: 12345, event: 'Numeric Id' },
      { type: 'identify', messageId: b, userId: 9007199254740993, traits: { n: 1 } },
    ] }).replace('9007199254740992', '9007199254740993'); // beyond a double: the text decides
    const res = await post(env, '/v1/batch', body);
    if (answered(rep, res, 2)) {
      const byId = await delivered(rep, env, [a, b]);
      rep.equal(byId.get(a) && byId.get(a).value.userId, '12345', 'userId as its decimal string');
      rep.equal(byId.get(a) && byId.get(a).key, '12345', 'Kafka key');
      rep.equal(byId.get(b) && byId.get(b).value.userId, '9007199254740993', 'a 2^53+1 userId exactly');
    }
    await noRejected(rep, env);
    return rep.done('userId 12345 and 2^53+1');
  },

  // @rudderstack/rudder-sdk-node's default request: gzip'd JSON labelled
  // application/x-www-form-urlencoded, Basic auth, events with originalTimestamp.
  async rudder_gzip_form(env) {
    const rep = new Report('raw gzip labelled application/x-www-form-urlencoded');
    const ids = [mid('rs'), mid('rs'), mid('rs')];
    const now = new Date().toISOString();
    const body = zlib.gzipSync(JSON.stringify({ batch: ids.map((id, i) => ({ ...track(id, i), originalTimestamp: now, sentAt: now, channel: 'server' })), sentAt: now }));
    const res = await post(env, '/v1/batch', body, { 'Content-Type': 'application/x-www-form-urlencoded', 'Content-Encoding': 'gzip' });
    if (answered(rep, res, 3)) {
      const byId = await delivered(rep, env, ids);
      for (const id of ids) rep.equal(byId.get(id) && byId.get(id).value.channel, 'server', 'fields kept', id);
    }
    // And the same bytes with an encoding the collector does not know: 415, nothing delivered.
    const bad = await post(env, '/v1/batch', body, { 'Content-Type': 'application/x-www-form-urlencoded', 'Content-Encoding': 'br' });
    rep.equal(bad.status, 415, 'unknown Content-Encoding is 415');
    rep.equal(bad.json && bad.json.error, 'unsupported_media_type', '415 error code');
    await noRejected(rep, env);
    return rep.done('3 events gzip+form, then br');
  },
};

module.exports = cases;
