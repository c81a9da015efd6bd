'use strict';
// The report of one case: every check counted, every mismatch collected by kind and reported
// together at the end (a case fails when any check did).

const assert = require('node:assert/strict');

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

module.exports = { Report };
