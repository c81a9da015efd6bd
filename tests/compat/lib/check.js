'use strict';
// Checks of the records on the events topic against what a client sent: exactly once per
// messageId, and the fields Segment documents (common fields and each call's own), as SPEC §2
// and proto/README.md §7 say the record keeps them. Every mismatch is collected and reported
// together; fail() ends the case with exit 1.

const assert = require('node:assert/strict');

const ISO_MS_Z = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

class Report {
  constructor(name) {
    this.name = name;
    this.problems = new Map(); // kind -> [details]
    this.checked = 0;
  }
  // Records one check of a kind ("originalTimestamp", "records on the topic"); detail says what
  // was seen. Returns ok so callers can skip dependent checks.
  expect(ok, kind, detail = '') {
    this.checked++;
    if (!ok) {
      if (!this.problems.has(kind)) this.problems.set(kind, []);
      this.problems.get(kind).push(detail);
    }
    return ok;
  }
  equal(got, want, kind, detail = '') {
    let ok = true;
    try {
      assert.deepStrictEqual(got, want);
    } catch (_) {
      ok = false;
    }
    return this.expect(ok, kind, `${detail ? detail + ': ' : ''}want ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
  }
  failed() {
    let n = 0;
    for (const d of this.problems.values()) n += d.length;
    return n;
  }
  // Prints the summary line (and each kind of failure with a few examples); true when clean.
  done(summary) {
    const line = `${this.name}: ${summary}; ${this.checked} checks, ${this.failed()} failed`;
    for (const [kind, details] of this.problems) {
      console.error(`  FAIL ${kind} (${details.length}x)`);
      for (const d of details.slice(0, 3)) console.error(`       ${d.slice(0, 400)}`);
    }
    (this.problems.size > 0 ? console.error : console.log)(line);
    return this.problems.size === 0;
  }
}

// Groups records by their messageId (value.messageId).
function byMessageId(records) {
  const m = new Map();
  for (const r of records) {
    const id = r.value && r.value.messageId;
    if (!m.has(id)) m.set(id, []);
    m.get(id).push(r);
  }
  return m;
}

function isoMs(s) {
  return typeof s === 'string' && ISO_MS_Z.test(s) ? Date.parse(s) : NaN;
}

// Fields every record carries (SPEC §2, §4): type, messageId, receivedAt within the run,
// timestamp, source, no writeKey, the Kafka key rule and headers.
function common(rep, rec, want, window) {
  const v = rec.value;
  const id = want.messageId;
  rep.equal(v.type, want.type, 'type', id);
  rep.equal(v.messageId, id, 'messageId', id);
  const received = isoMs(v.receivedAt);
  rep.expect(received >= window.t0 - 1000 && received <= window.t1 + 1000, 'receivedAt within the run', `${id}: ${v.receivedAt}`);
  rep.expect(!Number.isNaN(isoMs(v.timestamp)), 'timestamp is ISO-8601 ms Z', `${id}: ${v.timestamp}`);
  rep.equal(v.source, window.source, 'source', id);
  rep.expect(!('writeKey' in v), 'no writeKey in the record', id);
  rep.equal(rec.headers['event-type'], want.type, 'event-type header', id);
  rep.equal(rec.headers['message-id'], id, 'message-id header', id);
  const key = v.accountId || v.userId || v.anonymousId;
  rep.equal(rec.key, key, 'Kafka key = accountId, else userId, else anonymousId', id);
}

// Compares want.fields (dotted paths allowed: "context.library.name") with the record.
function fields(rep, rec, want) {
  for (const [k, expected] of Object.entries(want.fields || {})) {
    let got = rec.value;
    for (const part of k.split('.')) got = got === undefined || got === null ? undefined : got[part];
    rep.equal(got, expected, k, want.messageId);
  }
  for (const k of want.absent || []) rep.expect(!(k in rec.value), `${k} absent`, want.messageId);
}

// The whole check: the topic holds exactly the expected events, each once, with its fields.
function exactlyOnce(rep, records, expected, window) {
  const ids = byMessageId(records);
  rep.equal(records.length, expected.length, 'records on the events topic');
  let once = 0;
  for (const want of expected) {
    const got = ids.get(want.messageId) || [];
    if (!rep.expect(got.length === 1, 'each event exactly once on the topic', `${want.messageId} (${want.type}) found ${got.length} times`)) continue;
    once++;
    common(rep, got[0], want, window);
    fields(rep, got[0], want);
  }
  const known = new Set(expected.map((w) => w.messageId));
  for (const id of ids.keys()) rep.expect(known.has(id), 'no unexpected records', id);
  return once;
}

module.exports = { Report, exactlyOnce, byMessageId, isoMs };
