'use strict';
// Runs one conformance case against a fresh mock Kafka + sluice-collector:
//   node tests/compat/run.js CASE
// CASE is a file in cases/ (analytics_node, rudder_node, analytics_next_browser) or raw_NAME
// for one of the raw HTTP cases in cases/raw_http.js. Exit 0 when every check passed.
const fs = require('node:fs');
const path = require('node:path');
const { start } = require('./lib/env');

// An SDK that fails a flush may leave a rejected promise nobody awaits (rudder-sdk-node does on
// a 4xx): report it, and let the checks decide the case.
process.on('unhandledRejection', (e) => console.error(`unhandled rejection inside an SDK: ${e && e.message}`));

async function main() {
  const name = process.argv[2];
  if (!name) throw new Error('usage: node run.js CASE');
  if (!fs.existsSync(path.join(__dirname, 'node_modules'))) {
    throw new Error('tests/compat/node_modules is missing: install the pinned packages with tests/deps.sh (or npm ci --prefix tests/compat)');
  }
  let fn;
  if (name.startsWith('raw_')) {
    const raw = require('./cases/raw_http');
    fn = raw[name.slice(4)];
  } else if (fs.existsSync(path.join(__dirname, 'cases', `${name}.js`))) {
    fn = require(`./cases/${name}`);
  }
  if (typeof fn !== 'function') throw new Error(`no such case: ${name}`);
  const env = await start(fn.envOptions || {});
  let ok = false;
  try {
    ok = await fn(env);
  } catch (e) {
    console.error(e && e.stack ? e.stack : e);
    env.dumpLog();
  }
  await env.stop();
  return ok;
}

main().then(
  (ok) => process.exit(ok ? 0 : 1),
  (e) => {
    console.error(e && e.stack ? e.stack : e);
    process.exit(1);
  },
);
