'use strict';
// The environment of one conformance case: librdkafka's mock cluster in the sluice-mock-kafka
// helper, the real sluice-collector pointed at it (listening on 127.0.0.1, port picked by the
// kernel), and a reader of the topics (sluice-compat-consume, a librdkafka consumer).
//
// Paths come from the environment ctest sets: SLUICE_COLLECTOR, SLUICE_MOCK_KAFKA,
// SLUICE_COMPAT_CONSUME. Every wait is bounded; children are killed if the case dies, and the
// whole case is killed by its own watchdog (CASE_DEADLINE_MS) well before ctest's timeout.
// stop() sends SIGTERM and fails unless the collector exits 0 (graceful drain is checked in
// every case, as in tests/integration).

const { spawn, execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const CASE_DEADLINE_MS = 200000;
const children = new Set();

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run the suite through ctest; see tests/compat/README.md)`);
  return v;
}

function killAll() {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch (_) {
      /* already gone */
    }
  }
  children.clear();
}
process.on('exit', killAll);

function track(child) {
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// Resolves with the child's exit code (128+signal when killed), or null after ms.
function waitExit(child, ms) {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  if (child.signalCode !== null) return Promise.resolve(128 + os.constants.signals[child.signalCode]);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(null), ms);
    child.once('exit', (code, sig) => {
      clearTimeout(t);
      resolve(code !== null ? code : 128 + os.constants.signals[sig]);
    });
  });
}

async function startMock(dir) {
  const child = track(spawn(need('SLUICE_MOCK_KAFKA'), ['1', '3'], { stdio: ['pipe', 'pipe', 'inherit'] }));
  const rl = readline.createInterface({ input: child.stdout });
  const first = await Promise.race([
    new Promise((resolve) => rl.once('line', resolve)),
    sleep(20000).then(() => null),
  ]);
  if (!first || !/^127\.0\.0\.1:\d+/.test(first)) throw new Error(`mock kafka gave no bootstrap line (${first})`);
  return { child, bootstrap: first.trim(), rl };
}

function listeningPort(logText) {
  for (const line of logText.split('\n')) {
    if (!line.includes('"msg":"listening"')) continue;
    try {
      const port = Number(JSON.parse(line).port);
      if (port > 0) return port;
    } catch (_) {
      /* a line still being written */
    }
  }
  return 0;
}

// Starts everything. opts.config: YAML text for --config; opts.keys: ["KEY=SOURCE", ...].
async function start(opts = {}) {
  const watchdog = setTimeout(() => {
    console.error(`compat: case exceeded ${CASE_DEADLINE_MS} ms; killing it`);
    killAll();
    process.exit(3);
  }, CASE_DEADLINE_MS);
  watchdog.unref();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-compat-'));
  const mock = await startMock(dir);
  const logPath = path.join(dir, 'collector.log');
  const args = ['--listen', '127.0.0.1:0', '--brokers', mock.bootstrap, '--data-dir', path.join(dir, 'data'), '--log-level', 'debug'];
  for (const k of opts.keys || ['wk_compat=compat']) args.push('--write-key', k);
  if (opts.config) {
    fs.writeFileSync(path.join(dir, 'sluice.yaml'), opts.config);
    args.push('--config', path.join(dir, 'sluice.yaml'));
  }
  const logFd = fs.openSync(logPath, 'w');
  const coll = track(spawn(need('SLUICE_COLLECTOR'), args, { stdio: ['ignore', logFd, logFd] }));
  fs.closeSync(logFd);
  let port = 0;
  const deadline = Date.now() + 20000;
  while (!port && Date.now() < deadline && coll.exitCode === null) {
    await sleep(20);
    port = listeningPort(fs.readFileSync(logPath, 'utf8'));
  }
  if (!port) {
    process.stderr.write(fs.readFileSync(logPath, 'utf8').slice(-4000));
    throw new Error('collector did not log "listening" within 20 s');
  }
  const env = {
    dir,
    port,
    bootstrap: mock.bootstrap,
    url: `http://127.0.0.1:${port}`,
    logPath,
    async consume(topic, minCount, timeoutMs = 20000) {
      return consume(mock.bootstrap, topic, minCount, timeoutMs);
    },
    // The collector's Prometheus counter (summed over labels), or undefined when absent.
    async metric(name) {
      const res = await fetch(`${env.url}/metrics`, { signal: AbortSignal.timeout(10000) });
      const text = await res.text();
      let sum;
      for (const line of text.split('\n')) {
        const m = /^([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$/.exec(line);
        if (m && m[1] === name) sum = (sum || 0) + Number(m[3]);
      }
      return sum;
    },
    dumpLog() {
      process.stderr.write(`---- collector log tail (${logPath}) ----\n`);
      process.stderr.write(fs.readFileSync(logPath, 'utf8').slice(-6000));
      process.stderr.write('\n---- end ----\n');
    },
    async stop() {
      coll.kill('SIGTERM');
      const st = await waitExit(coll, 15000);
      if (st === null) coll.kill('SIGKILL');
      mock.child.stdin.end('quit\n');
      if ((await waitExit(mock.child, 5000)) === null) mock.child.kill('SIGKILL');
      clearTimeout(watchdog);
      if (st !== 0) {
        env.dumpLog();
        throw new Error(`collector exit status ${st} after SIGTERM (want 0)`);
      }
      if (!process.env.SLUICE_KEEP_TMP) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return env;
}

// Every message of topic (all partitions, up to the high watermarks once minCount arrived or
// timeoutMs passed): [{partition, offset, key, headers, value}].
function consume(bootstrap, topic, minCount, timeoutMs) {
  return new Promise((resolve, reject) => {
    execFile(
      need('SLUICE_COMPAT_CONSUME'),
      [bootstrap, topic, String(minCount), String(timeoutMs)],
      { maxBuffer: 256 * 1024 * 1024, timeout: timeoutMs + 30000 },
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`consume ${topic}: ${err.message} ${stderr}`));
        resolve(stdout.split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l)));
      },
    );
  });
}

module.exports = { start, sleep };
