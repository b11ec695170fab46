#!/usr/bin/env node
// make-fixtures.js: records real programs through the --ipc helper into fixtures/<name>.frames,
// with what the live host saw beside them (fixtures/<name>.expected.json): the HTTP exchanges
// it rebuilt, and every connection at frame level (bytes and digest per direction, the HTTP/2
// preface), after checking those against what the programs sent. Needs root and a build.
// Regenerates every fixture: node scripts/make-fixtures.js; only some: node scripts/make-fixtures.js NAME...
'use strict';
const fs = require('fs');
const path = require('path');
const root = path.resolve(__dirname, '..');
const dist = path.join(root, 'dist');
const { HelperHost } = require(path.join(dist, 'helper', 'host', 'host.js'));
const { connectionSummaries, exchangeSummary, replayFrames } = require(path.join(dist, 'helper', 'commands', 'replay.js'));
const S = require(path.join(dist, 'test', 'lib', 'servers.js'));

const out = path.join(root, 'fixtures');

const only = process.argv.slice(2);

async function record(name, comms, traffic, check, ports = []) {
  if (only.length && !only.includes(name)) return;
  const file = path.join(out, `${name}.frames`);
  const child = path.join(dist, 'test', 'lib', 'ipc-child.js');
  const host = new HelperHost({ command: process.execPath, args: [child, JSON.stringify({ validate: true, record: file, comms, ports, statsIntervalMs: 60000 })] });
  const exchanges = [];
  host.on('exchange', (e) => exchanges.push(e));
  await host.ready;
  await S.waitFor(() => host.stderr.includes('capturing TLS plaintext'), { what: 'the helper to attach' });
  const segments = [];
  host.on('segment', (f) => segments.push(f));
  const sent = await traffic();
  await S.waitFor(() => check(exchanges, sent, segments), { timeoutMs: 10000, what: `the traffic of ${name}` });
  await new Promise((r) => setTimeout(r, 300)); // let the exit (conn_close) arrive too
  await host.close();
  const frames = [];
  for await (const f of replayFrames(file)) frames.push(f);
  const connections = connectionSummaries(frames);
  if (connections.some((c) => c.gap_bytes !== 0)) throw new Error(`${name}: bytes were lost while recording: ${JSON.stringify(connections)}`);
  const expected = { exchanges: exchanges.map(exchangeSummary), connections };
  fs.writeFileSync(path.join(out, `${name}.expected.json`), JSON.stringify(expected, null, 2) + '\n');
  fs.chmodSync(file, 0o644); // fixtures hold only test traffic: readable by the test run
  const size = fs.statSync(file).size;
  if (size > 100 * 1024) throw new Error(`${name}: ${size} bytes, over the 100 KiB a fixture may take: send less`);
  process.stderr.write(`make-fixtures: ${name}: ${size} bytes, ${expected.exchanges.length} exchanges, ${connections.length} connections\n`);
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
    // node's https module (OpenSSL linked into /usr/bin/node) → python server, two requests on
    // one keep-alive connection; node's side. Its sockets are not mapped yet (#6): fd -1.
    await record(
      'node-get',
      ['node'],
      async () => {
        const script = `const https = require('https'); const agent = new https.Agent({ keepAlive: true });
          const get = (p) => new Promise((ok, fail) => https.get({ host: '127.0.0.1', port: ${py.port}, path: p, agent, rejectUnauthorized: false, headers: { 'X-Fixture': 'node' } },
            (r) => { const b = []; r.on('data', (d) => b.push(d)); r.on('end', () => ok(Buffer.concat(b))); }).on('error', fail));
          (async () => { await get('/bytes/1500?seed=21'); await get('/bytes/200?seed=22'); agent.destroy(); })();`;
        const r = await S.run(process.execPath, ['-e', script]);
        if (r.code !== 0) throw new Error(`node client failed: ${r.stderr}`);
        return r;
      },
      (ex, r) => ex.filter((e) => e.pid === r.pid && (e.response.body.equals(S.pattern(1500, 21)) || e.response.body.equals(S.pattern(200, 22)))).length === 2,
    );
    // curl → nginx over HTTP/1.1, two requests on one keep-alive connection; both ends.
    const files = { 'a.txt': S.pattern(3000, 11), 'dir/b.bin': S.pattern(700, 12) };
    const ng = await S.startNginx({ dir: path.join(dir, 'nginx'), files, cert });
    await record(
      'nginx-keepalive',
      ['curl', 'nginx'],
      async () => {
        const r = await S.curl(`https://127.0.0.1:${ng.port}/a.txt`, ['-o', '/dev/null', `https://127.0.0.1:${ng.port}/dir/b.bin`]);
        if (r.code !== 0) throw new Error(`curl failed: ${r.stderr}`);
        return r;
      },
      (ex, r) => ex.filter((e) => e.role === 'client' && e.pid === r.pid).length === 2 && ex.filter((e) => e.role === 'server' && e.comm === 'nginx').length === 2,
    );
    // curl --http2 → nginx (http2 on its listen line): one stream, both ends.
    const ng2 = await S.startNginx({ dir: path.join(dir, 'nginx-h2'), files: { 'h2.txt': S.pattern(2500, 13) }, cert, http2: true });
    await record(
      'curl-http2-nginx',
      ['curl', 'nginx'],
      async () => {
        const r = await S.run('curl', ['-sS', '-k', '--http2', '--noproxy', '*', `https://127.0.0.1:${ng2.port}/h2.txt`]);
        if (r.code !== 0 || !r.stdout.equals(S.pattern(2500, 13))) throw new Error(`curl --http2 failed: ${r.stderr}`);
        return r;
      },
      (_ex, r, segs) => {
        const mine = segs.filter((s) => s.pid === r.pid);
        const bytesIn = mine.filter((s) => s.dir === 1).reduce((n, s) => n + s.data.length, 0);
        return bytesIn > 2500 && segs.some((s) => s.comm === 'nginx' && s.dir === 1);
      },
    );
    // curl over HTTP/1.1 (gzip with chunked transfer, HEAD, 204) and h2load over HTTP/2 against
    // nginx: both ends; the HTTP outputs' cases from real programs.
    const ng3 = await S.startNginx({
      dir: path.join(dir, 'nginx-mixed'),
      files: { 'page.json': Buffer.from(JSON.stringify({ items: Array.from({ length: 40 }, (_x, i) => ({ id: i, name: `item ${i}` })) })), 'small.txt': Buffer.from('small\n') },
      cert,
      http2: true,
      extraConf: '    gzip on; gzip_types *; gzip_min_length 1;\n    location = /empty { return 204; }\n',
    });
    await record(
      'nginx-mixed',
      ['curl', 'nginx', 'h2load'],
      async () => {
        const u = (p) => `https://127.0.0.1:${ng3.port}${p}`;
        for (const args of [['--compressed', u('/page.json')], ['-I', u('/small.txt')], [u('/empty')]]) {
          const r = await S.curl(args.pop(), args);
          if (r.code !== 0) throw new Error(`curl failed: ${r.stderr}`);
        }
        const r = await S.run('h2load', ['-n', '6', '-c', '1', '-m', '2', u('/small.txt')]);
        if (r.code !== 0) throw new Error(`h2load failed: ${r.stdout}${r.stderr}`);
        return r;
      },
      (ex, r, segs) => ex.filter((e) => e.role === 'server').length === 3 && segs.some((s) => s.pid === r.pid && s.dir === 1) && fs.readFileSync(ng3.accessLog, 'utf8').trim().split('\n').length === 9,
      [ng3.port], // only this nginx: other programs on the machine may be talking to theirs
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
