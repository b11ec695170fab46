// outputs.test.ts: the human outputs of a real capture (kernel): curl over HTTP/1.1 and HTTP/2,
// h2load, python3 (http.client, and three pipelined requests on one socket) and node (https,
// http2) against nginx with http2, gzip and a 204 location. One standalone run writes jsonl
// live and records the frames; replay renders the recording in every format. Checked against
// nginx's access log and what each client asked for; HAR with har-validator, pcapng with
// tshark; secrets masked unless --no-redact.
import * as assert from 'assert';
import Ajv2020 from 'ajv/dist/2020';
import { ChildProcess, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { createRenderer, Format, RenderOptions } from '../../helper/formats';
import { replayFrames } from '../../helper/commands/replay';
import { RawFrame } from '../../helper/protocol/wire';
import { tsharkCounts, tsharkCountsOn } from '../lib/tshark';
import { requireKernel } from '../lib/kernel';
import { CertPair, makeCert, NginxServer, run, RunResult, startNginx, stopAll, tmpDir, waitFor } from '../lib/servers';
import { CLI, ROOT } from '../lib/paths';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const harValidator = require('har-validator') as { har(h: unknown): Promise<unknown> };
const validateLine = new Ajv2020({ allErrors: true, strict: false }).compile(JSON.parse(fs.readFileSync(path.join(ROOT, 'schemas', 'jsonl', 'line.schema.json'), 'utf8')) as object);

interface Line {
  type: string;
  conn: { pid: number; comm: string; role: string; id: string };
  protocol: string;
  stream_id?: number;
  request: { method: string; url: string; target: string; headers: [string, string][]; body: { size: number; data: string } } | null;
  response: { status: number; headers: [string, string][]; body: { size: number; wire_size: number; data: string; content_encoding: string[] } } | null;
}

const DATA = JSON.stringify({ items: Array.from({ length: 200 }, (_x, i) => ({ id: i, name: `item ${i}`, tags: ['a', 'b'] })) });

function render(format: Format, frames: RawFrame[], o: Partial<RenderOptions> = {}): Buffer {
  const parts: Buffer[] = [];
  const r = createRenderer(format, { write: (s) => void parts.push(Buffer.isBuffer(s) ? s : Buffer.from(s)) }, { redact: true, color: false, printLimit: 0, version: 'test', ...o });
  for (const f of frames) r.push(f);
  r.end();
  return Buffer.concat(parts);
}

const PIPELINE = `
import socket, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
reqs = b"".join(b"GET /p%d.txt HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" % i for i in range(3))
s.sendall(reqs[:-2] + b"Connection: close\\r\\n\\r\\n")
data = b""
while True:
    b = s.recv(65536)
    if not b: break
    data += b
print(data.count(b"HTTP/1.1 200"))
`;

describe('human outputs of a live capture (kernel: curl, h2load, python3, node and nginx)', function () {
  this.timeout(180_000);
  let dir: string;
  let cert: CertPair;
  let ng: NginxServer;
  let rec: string;
  let liveFile: string;
  let frames: RawFrame[];
  let helper: ChildProcess | undefined;
  const runs: Record<string, RunResult> = {};
  let live: Line[];

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-outputs-');
    cert = await makeCert(dir);
    ng = await startNginx({
      dir: path.join(dir, 'nginx'),
      cert,
      http2: true,
      files: { 'index.html': Buffer.from('<h1>hello</h1>\n'), 'data.json': Buffer.from(DATA), 'p0.txt': Buffer.from('zero'), 'p1.txt': Buffer.from('one'), 'p2.txt': Buffer.from('two') },
      extraConf: '    gzip on; gzip_types *; gzip_min_length 1;\n    location = /empty { return 204; }\n',
    });
    rec = path.join(dir, 'run.frames');
    liveFile = path.join(dir, 'live.jsonl');
    let err = '';
    helper = spawn(process.execPath, [CLI, '--comm', 'curl,h2load,python3,node,nginx', '--port', String(ng.port), '--record', rec, '--format', 'jsonl', '--output', liveFile, '--validate'], { stdio: ['ignore', 'pipe', 'pipe'] });
    helper.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((ok) => helper!.on('exit', (code) => ok(code)));
    await waitFor(() => err.includes('capturing TLS plaintext'), { timeoutMs: 30_000, what: `the helper to attach (${err})` });
    const url = (p: string): string => `https://127.0.0.1:${ng.port}${p}`;
    const curl = (args: string[]): Promise<RunResult> => run('curl', ['-sS', '-k', '--noproxy', '*', ...args]);
    runs.h1 = await curl(['--http1.1', '-H', 'Authorization: Bearer SECRET-H1', '-b', 'sid=COOKIE-H1', url('/index.html')]);
    runs.head = await curl(['--http1.1', '-I', url('/index.html')]);
    runs.empty = await curl(['--http1.1', url('/empty')]);
    runs.gzip = await curl(['--http1.1', '--compressed', url('/data.json')]);
    runs.h2 = await curl(['--http2', '-H', 'Authorization: Bearer SECRET-H2', url('/index.html'), url('/data.json')]);
    runs.h2load = await run('h2load', ['-n', '20', '-c', '2', '-m', '4', url('/index.html')]);
    runs.py = await run('python3', ['-c', `import http.client, ssl\nc = http.client.HTTPSConnection("127.0.0.1", ${ng.port}, context=ssl._create_unverified_context())\nc.request("GET", "/data.json")\nprint(len(c.getresponse().read()))`]);
    runs.pipe = await run('python3', ['-c', PIPELINE, String(ng.port)]);
    runs.nodeh1 = await run(process.execPath, ['-e', `require('https').get({ host: '127.0.0.1', port: ${ng.port}, path: '/index.html', rejectUnauthorized: false }, (r) => r.resume().on('end', () => console.log(r.statusCode)))`]);
    runs.nodeh2 = await run(process.execPath, ['-e', `const c = require('http2').connect('https://127.0.0.1:${ng.port}', { rejectUnauthorized: false }); const s = c.request({ ':path': '/data.json' }); s.on('response', (h) => console.log(h[':status'])); s.resume(); s.on('end', () => c.close());`]);
    for (const [k, r] of Object.entries(runs)) assert.strictEqual(r.code, 0, `${k}: ${r.stderr.toString()}`);
    assert.strictEqual(runs.pipe.stdout.toString().trim(), '3', 'nginx answered the three pipelined requests');
    // Every request is in nginx's access log once answered: 1+1+1+1+2+20+1+3+1+1.
    await waitFor(() => fs.readFileSync(ng.accessLog, 'utf8').trim().split('\n').length >= 32, { what: 'the access log' });
    await new Promise((ok) => setTimeout(ok, 1500));
    helper.kill('SIGTERM');
    assert.strictEqual(await exited, 0, err);
    helper = undefined;
    frames = [];
    for await (const f of replayFrames(rec)) frames.push(f);
    live = fs.readFileSync(liveFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Line);
  });

  after(async () => {
    helper?.kill('SIGKILL');
    await stopAll();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  const exchangesOf = (pid: number): Line[] => live.filter((l) => l.type === 'exchange' && l.conn.pid === pid);

  it('live jsonl (--output, mode 0600) is what replay renders from the recording, and every line matches the schema', () => {
    assert.strictEqual(fs.statSync(liveFile).mode & 0o777, 0o600);
    for (const l of live) assert.ok(validateLine(l), JSON.stringify(validateLine.errors));
    const replayed = render('jsonl', frames).toString().trim().split('\n').map((l) => JSON.parse(l) as Line);
    const key = (l: Line): string => JSON.stringify(l);
    assert.deepStrictEqual(replayed.map(key).sort(), live.map(key).sort());
  });

  it("nginx's exchanges are the access log's requests, method, path and status", () => {
    const log = fs.readFileSync(ng.accessLog, 'utf8').trim().split('\n').map((l) => l.split(' ')).map((f) => `${f[1]} ${f[2]} ${f[3]}`).sort();
    const ours = live.filter((l) => l.type === 'exchange' && l.conn.comm === 'nginx').map((l) => `${l.request!.method} ${l.request!.target} ${l.response!.status}`).sort();
    assert.deepStrictEqual(ours, log);
  });

  it('curl over HTTP/1.1: GET, HEAD (no body), 204, and gzip with chunked transfer decoded', () => {
    const [get] = exchangesOf(runs.h1!.pid);
    assert.strictEqual(get!.protocol, 'HTTP/1.1');
    assert.strictEqual(get!.response!.body.data, '<h1>hello</h1>\n');
    const [head] = exchangesOf(runs.head!.pid);
    assert.deepStrictEqual([head!.request!.method, head!.response!.status, head!.response!.body.size], ['HEAD', 200, 0]);
    const [empty] = exchangesOf(runs.empty!.pid);
    assert.deepStrictEqual([empty!.response!.status, empty!.response!.body.size], [204, 0]);
    const [gz] = exchangesOf(runs.gzip!.pid);
    assert.ok(gz!.response!.headers.some(([k, v]) => k.toLowerCase() === 'transfer-encoding' && v === 'chunked'), 'nginx chunks a gzipped body');
    assert.deepStrictEqual(gz!.response!.body.content_encoding, ['gzip']);
    assert.strictEqual(gz!.response!.body.data, DATA);
    assert.ok(gz!.response!.body.wire_size < DATA.length / 2, 'compressed on the wire');
    assert.strictEqual(gz!.response!.body.data, runs.gzip!.stdout.toString());
  });

  it('curl --http2, h2load and node http2: HTTP/2 streams with their paths, statuses and bodies', () => {
    const h2 = exchangesOf(runs.h2!.pid);
    assert.deepStrictEqual(h2.map((l) => [l.protocol, l.stream_id, l.request!.target, l.response!.status]), [['HTTP/2', 1, '/index.html', 200], ['HTTP/2', 3, '/data.json', 200]]);
    assert.strictEqual(h2[1]!.response!.body.data, DATA);
    const load = exchangesOf(runs.h2load!.pid);
    assert.strictEqual(load.length, 20);
    assert.ok(load.every((l) => l.protocol === 'HTTP/2' && l.response!.status === 200 && l.response!.body.data === '<h1>hello</h1>\n'));
    assert.strictEqual(new Set(load.map((l) => l.conn.id)).size, 2, 'two connections (-c 2)');
    const [n2] = exchangesOf(runs.nodeh2!.pid);
    assert.deepStrictEqual([n2!.protocol, n2!.request!.target, n2!.response!.status, n2!.response!.body.data], ['HTTP/2', '/data.json', 200, DATA]);
  });

  it('python3 http.client, three pipelined requests on one socket, and node https: HTTP/1.1 pairs in order', () => {
    const [py] = exchangesOf(runs.py!.pid);
    assert.strictEqual(py!.response!.body.data, DATA);
    const pipe = exchangesOf(runs.pipe!.pid);
    assert.deepStrictEqual(pipe.map((l) => [l.request!.target, l.response!.body.data]), [['/p0.txt', 'zero'], ['/p1.txt', 'one'], ['/p2.txt', 'two']]);
    assert.strictEqual(new Set(pipe.map((l) => l.conn.id)).size, 1);
    const [n1] = exchangesOf(runs.nodeh1!.pid);
    assert.deepStrictEqual([n1!.protocol, n1!.response!.status], ['HTTP/1.1', 200]);
  });

  it('text reads as requests and responses; secrets masked everywhere unless --no-redact', () => {
    const text = render('text', frames, { printLimit: 4096 }).toString();
    assert.match(text, new RegExp(`curl\\[${runs.h2!.pid}\\] conn \\d+ HTTP/2 stream 1 \\(client [^)]+\\)\\n> GET https://127\\.0\\.0\\.1:${ng.port}/index\\.html HTTP/2\\n`));
    assert.match(text, /> authorization: Bearer \[redacted, 9 bytes\]\n/);
    for (const f of ['text', 'jsonl', 'har', 'raw', 'pcapng'] as Format[]) {
      const out = render(f, frames).toString('latin1');
      assert.ok(!/SECRET-H[12]|COOKIE-H1/.test(out), `${f} shows a secret`);
    }
    const open = render('text', frames, { redact: false }).toString();
    assert.ok(open.includes('Bearer SECRET-H1') && open.includes('Bearer SECRET-H2') && open.includes('sid=COOKIE-H1'));
  });

  it('HAR is valid per har-validator, one entry per request, in the order they started', async () => {
    const har = JSON.parse(render('har', frames).toString()) as { log: { entries: { startedDateTime: string; request: { url: string } }[] } };
    await harValidator.har(har);
    assert.strictEqual(har.log.entries.length, live.filter((l) => l.type === 'exchange' && l.request).length);
    const t = har.log.entries.map((e) => e.startedDateTime);
    assert.deepStrictEqual(t, [...t].sort());
  });

  it('tshark reads the pcapng of the clients and agrees on methods, paths and statuses', () => {
    const pids = new Set(Object.values(runs).map((r) => r.pid));
    const clients = frames.filter((f) => !('pid' in f) || pids.has(f.pid as number) || !['conn_open', 'segment', 'conn_close'].includes(f.type));
    for (const [name, proto] of [['http1', 'HTTP/1'], ['http2', 'HTTP/2']] as const) {
      const conns = new Set(live.filter((l) => l.type === 'connection' && (l as unknown as { protocol: string }).protocol === proto && pids.has(l.conn.pid)).map((l) => `${l.conn.pid}:${l.conn.id}`));
      const sub = clients.filter((f) => !['conn_open', 'segment', 'conn_close'].includes(f.type) || conns.has(`${f.pid}:${f.conn_id}`));
      const file = path.join(dir, `${name}.pcapng`);
      fs.writeFileSync(file, render('pcapng', sub));
      const got = tsharkCounts(file, sub);
      const ex = live.filter((l) => l.type === 'exchange' && conns.has(`${l.conn.pid}:${l.conn.id}`));
      assert.ok(ex.length >= (proto === 'HTTP/2' ? 23 : 8), `${ex.length} ${proto} exchanges`);
      assert.deepStrictEqual(got, {
        requests: ex.map((l) => `${l.request!.method} ${l.request!.target}`).sort(),
        statuses: ex.map((l) => String(l.response!.status)).sort(),
      });
    }
  });

  it('a curl --http2 session saved live with --output as HAR and as pcapng (mode 0600): valid for har-validator and tshark', async () => {
    const files = { har: path.join(dir, 'live.har'), pcapng: path.join(dir, 'live.pcapng') };
    const helpers = (['har', 'pcapng'] as const).map((f) => {
      const child = spawn(process.execPath, [CLI, '--comm', 'curl', '--port', String(ng.port), '--format', f, '--output', files[f]], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      return { child, err: () => err, exited: new Promise<number | null>((ok) => child.on('exit', (code) => ok(code))) };
    });
    try {
      for (const h of helpers) await waitFor(() => h.err().includes('capturing TLS plaintext'), { timeoutMs: 30_000, what: `the helper to attach (${h.err()})` });
      const r = await run('curl', ['-sS', '-k', '--noproxy', '*', '--http2', `https://127.0.0.1:${ng.port}/index.html`, `https://127.0.0.1:${ng.port}/data.json`]);
      assert.strictEqual(r.code, 0, r.stderr.toString());
      await new Promise((ok) => setTimeout(ok, 1000));
      for (const h of helpers) h.child.kill('SIGTERM');
      for (const h of helpers) assert.strictEqual(await h.exited, 0, h.err());
      for (const f of Object.values(files)) assert.strictEqual(fs.statSync(f).mode & 0o777, 0o600);
      const har = JSON.parse(fs.readFileSync(files.har, 'utf8')) as { log: { entries: { request: { url: string; httpVersion: string }; response: { status: number; content: { text: string } } }[] } };
      await harValidator.har(har);
      assert.deepStrictEqual(
        har.log.entries.map((e) => [e.request.url, e.request.httpVersion, e.response.status]),
        [[`https://127.0.0.1:${ng.port}/index.html`, 'HTTP/2.0', 200], [`https://127.0.0.1:${ng.port}/data.json`, 'HTTP/2.0', 200]],
      );
      assert.strictEqual(har.log.entries[1]!.response.content.text, DATA);
      assert.deepStrictEqual(tsharkCountsOn(files.pcapng, [ng.port], true), { requests: ['GET /data.json', 'GET /index.html'], statuses: ['200', '200'] });
      const comments = execFileSync('tshark', ['-r', files.pcapng, '-Y', 'frame.comment', '-T', 'fields', '-e', 'frame.comment'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      assert.match(comments, new RegExp(`^curl\\[${r.pid}\\] client conn \\d+; synthetic handshake$`, 'm'));
    } finally {
      for (const h of helpers) if (h.child.exitCode === null) h.child.kill('SIGKILL');
    }
  });
});
