'use strict';
// @segment/analytics-node with its defaults (flushAt 15, flushInterval 10 s, retries, JSON to
// {host}/v1/batch with Basic auth): only host and writeKey are set. Its wire bodies come from
// the SDK's own 'http_request' / 'http_response' events.

const { Analytics } = require('@segment/analytics-node');
const serverSdk = require('../lib/server_sdk');

const adapter = {
  name: '@segment/analytics-node',
  library: '@segment/analytics-node',
  async run(url, writeKey, calls) {
    const analytics = new Analytics({ writeKey, host: url });
    const bodies = [];
    analytics.on('http_request', (req) => bodies.push({ body: JSON.parse(req.body), status: 0 }));
    analytics.on('http_response', (res) => {
      const b = bodies.find((x) => x.status === 0 && JSON.stringify(x.body) === res.body);
      if (b) b.status = res.status;
    });
    const errors = [];
    analytics.on('error', (e) => errors.push(e));
    const done = [];
    for (const c of calls) {
      done.push(new Promise((resolve) => analytics[c.type](c.args, (err) => resolve(err))));
    }
    await analytics.closeAndFlush({ timeout: 60000 });
    const results = await Promise.all(done);
    const failed = results.filter((e) => e);
    if (failed.length > 0 || errors.length > 0)
      console.error(`analytics-node reported ${failed.length} failed calls, ${errors.length} errors: ${String(failed[0] || errors[0]?.reason || errors[0])}`);
    return { batches: bodies.map((b) => ({ ...b, answer: '' })) };
  },
};

module.exports = async (env) => serverSdk.run(env, adapter);
