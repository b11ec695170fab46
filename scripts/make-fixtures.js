#!/usr/bin/env node
// make-fixtures.js: records real programs through the --ipc helper into fixtures/<name>.frames,
// with the exchanges the live host rebuilt beside them (fixtures/<name>.expected.json), after
// checking those against what the programs sent. Needs root and a build (npm run build).
'use strict';
const fs = require('fs');
const path = require('path');
const root = path.resolve(__dirname, '..');
const dist = path.join(root, 'dist');
const { HelperHost } = require(path.join(dist, 'helper', 'host.js'));
const { exchangeSummary } = require(path.join(dist, 'helper', 'replay.js'));
const S = require(path.join(dist, 'test', 'lib', 'servers.js'));

const out = path.join(root, 'fixtures');

async function record(name, comms, traffic, check) {
  const file = path.join(out, `${name}.frames`);
  const child = path.join(dist, 'test', 'lib', 'ipc-child.js');
  const host = new HelperHost({ command: process.execPath, args: [child, JSON.stringify({ validate: true, record: file, comms, statsIntervalMs: 60000 })] });
  const exchanges = [];
  host.on('exchange', (e) => exchanges.push(e));
  await host.ready;
  await S.waitFor(() => host.stderr.includes('capturing TLS plaintext'), { what: 'the helper to attach' });
  const sent = await traffic();
  await S.waitFor(() => check(exchanges, sent), { timeoutMs: 10000, what: `the exchanges of ${name}` });
  await new Promise((r) => setTimeout(r, 300)); // let the exit (conn_close) arrive too
  await host.close();
  const expected = exchanges.map(exchangeSummary);
  fs.writeFileSync(path.join(out, `${name}.expected.json`), JSON.stringify(expected, null, 2) + '\n');
  fs.chmodSync(file, 0o644); // fixtures hold only test traffic: readable by the test run
  process.stderr.write(`make-fixtures: ${name}: ${fs.statSync(file).size} bytes, ${expected.length} exchanges\n`);
}

async function main() {
  fs.mkdirSync(out, { recursive: true });
  const dir = S.tmpDir('https-capture-fixtures-');
  try {
    const cert = await S.makeCert(dir);
    const py = await S.startPyServer({ dir, ...cert });
    // curl → python server: two requests on one keep-alive connection; only curl's side.
    await record(
      'curl-get',
      ['curl'],
      async () => {
        const r = await S.curl(`https://127.0.0.1:${py.port}/bytes/2000?seed=1`, ['-H', 'X-Fixture: curl', `https://127.0.0.1:${py.port}/bytes/300?seed=2`]);
        if (r.code !== 0) throw new Error(`curl failed: ${r.stderr}`);
        return r;
      },
      (ex) => ex.some((e) => e.response.body.equals(S.pattern(2000, 1))) && ex.some((e) => e.response.body.equals(S.pattern(300, 2))),
    );
    // python http.client POST → python server: both ends (both are python3).
    const body = S.pattern(8000, 3);
    await record(
      'python-post',
      ['python3'],
      async () => {
        const r = await S.pyClient(`https://127.0.0.1:${py.port}/echo`, { method: 'POST', body });
        if (r.code !== 0) throw new Error(`python client failed: ${r.stderr}`);
        return r;
      },
      (ex) => ex.filter((e) => e.request.body.equals(body) && e.response.body.equals(body)).length >= 2,
    );
  } finally {
    await S.stopAll();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`make-fixtures: ${e.stack || e}\n  fix: run as root after npm run build\n`);
  process.exit(1);
});
