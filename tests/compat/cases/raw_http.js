'use strict';
// The raw HTTP cases of issue 9, each its own ctest entry (compat_raw_NAME): bodies written by
// hand the way real clients send them, posted with fetch, then the answer, the events topic,
// events_rejected and the counters checked. SPEC §2 says what each must give.

const zlib = require('node:zlib');
const { Report } = require('../lib/check');

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

const cases = {
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
