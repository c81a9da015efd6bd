'use strict';
// @rudderstack/rudder-sdk-node with its defaults (flushAt 20, flushInterval 10 s, gzip on, so
// the body goes out gzip'd and labelled application/x-www-form-urlencoded; originalTimestamp
// instead of timestamp; axios with retries): only dataPlaneUrl and the write key are set. Its
// wire bodies come from the flush callbacks, which receive the (gzip'd) body that was posted.

const zlib = require('node:zlib');
const Analytics = require('@rudderstack/rudder-sdk-node');
const serverSdk = require('../lib/server_sdk');

const adapter = {
  name: '@rudderstack/rudder-sdk-node',
  library: 'analytics-node',
  async run(url, writeKey, calls) {
    const client = new Analytics(writeKey, { dataPlaneUrl: url, logLevel: 'error' });
    const seen = new Set();
    const bodies = [];
    const record = (err, data) => {
      if (!data || seen.has(data)) return;
      seen.add(data);
      const raw = Buffer.isBuffer(data) ? zlib.gunzipSync(data).toString('utf8') : JSON.stringify(data);
      bodies.push({ body: JSON.parse(raw), status: err ? -1 : 200, answer: err ? String(err.message) : '' });
    };
    let pending = calls.length;
    const all = new Promise((resolve) => {
      for (const c of calls) {
        client[c.type](c.args, (err, data) => {
          record(err, data);
          if (--pending === 0) resolve();
        });
      }
    });
    // The SDK sends flushAt events per flush; flush until every callback ran (bounded).
    const deadline = Date.now() + 90000;
    while (pending > 0 && Date.now() < deadline) {
      await Promise.race([client.flush().catch(() => {}), new Promise((r) => setTimeout(r, 1000))]);
      await new Promise((r) => setTimeout(r, 100)); // let the posts' I/O run
    }
    await Promise.race([all, new Promise((r) => setTimeout(r, 1000))]);
    if (pending > 0) console.error(`rudder-sdk-node: ${pending} callbacks never ran`);
    return { batches: bodies };
  },
};

module.exports = async (env) => serverSdk.run(env, adapter);
