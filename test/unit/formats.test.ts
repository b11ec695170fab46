// formats.test.ts: the human outputs (helper/formats/) on the fixtures and on made-up traffic,
// without root: text reads as requests and responses with decoded bodies; every jsonl line
// matches schemas/jsonl/line.schema.json (ajv); HAR passes har-validator; tshark reads the
// pcapng and finds the same methods, paths and statuses, the gaps and the process comments;
// secrets are masked in every format unless redaction is off.
import * as assert from 'assert';
import Ajv2020 from 'ajv/dist/2020';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import { decodeBody } from '../../helper/http/body';
import { createRenderer, Format, RenderOptions } from '../../helper/formats';
import { replayFrames } from '../../helper/commands/replay';
import { RawFrame } from '../../helper/protocol/wire';
import { conversation, Step } from '../lib/traffic';
import { ours, ourExchanges, tsharkCounts, tsharkMessages } from '../lib/tshark';
import { ROOT } from '../lib/paths';

// har-validator has no typings; it resolves or rejects with the schema errors.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const harValidator = require('har-validator') as { har(h: unknown): Promise<unknown> };

const FIXTURES = path.join(ROOT, 'fixtures');
const names = fs.readdirSync(FIXTURES).filter((f) => f.endsWith('.frames')).map((f) => f.replace(/\.frames$/, ''));
const OPTS: RenderOptions = { redact: true, color: false, printLimit: 0, version: 'test' };

function render(format: Format, frames: RawFrame[], o: Partial<RenderOptions> = {}): Buffer {
  const parts: Buffer[] = [];
  const r = createRenderer(format, { write: (s) => void parts.push(Buffer.isBuffer(s) ? s : Buffer.from(s)) }, { ...OPTS, ...o });
  for (const f of frames) r.push(f);
  r.end();
  return Buffer.concat(parts);
}

async function fixture(name: string): Promise<RawFrame[]> {
  const out: RawFrame[] = [];
  for await (const f of replayFrames(path.join(FIXTURES, `${name}.frames`))) out.push(f);
  return out;
}

const lineSchema = JSON.parse(fs.readFileSync(path.join(ROOT, 'schemas', 'jsonl', 'line.schema.json'), 'utf8')) as object;
const validateLine = new Ajv2020({ allErrors: true, strict: false }).compile(lineSchema);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hc-formats-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('output formats on the fixtures (no root)', function () {
  this.timeout(60000);
  for (const name of names) {
    it(`${name}: text shows each exchange's request line and status; nothing is lost`, async () => {
      const frames = await fixture(name);
      const text = render('text', frames, { printLimit: 4096 }).toString();
      const ex = ourExchanges(frames);
      assert.ok(ex.length > 0, 'the fixture has exchanges');
      for (const x of ex) {
        assert.ok(text.includes(`> ${x.request!.method} ${x.protocol === 'HTTP/2' ? x.url : x.request!.target} ${x.protocol}\n`), `${x.request!.method} ${x.url} in:\n${text}`);
        assert.match(text, new RegExp(`\\n< (HTTP/1\\.[01] )?${x.response!.status}`));
      }
      assert.ok(!/not HTTP/.test(text), 'every connection of the fixtures is HTTP');
    });

    it(`${name}: every jsonl line matches the schema; exchanges as the analysis found them`, async () => {
      const frames = await fixture(name);
      const lines = render('jsonl', frames).toString().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      for (const l of lines) assert.ok(validateLine(l), `${JSON.stringify(validateLine.errors)}\n${JSON.stringify(l).slice(0, 400)}`);
      const ex = lines.filter((l) => l.type === 'exchange') as unknown as { request: { method: string; url: string }; response: { status: number } }[];
      assert.deepStrictEqual(ex.map((l) => `${l.request.method} ${l.request.url} ${l.response.status}`), ourExchanges(frames).map((x) => `${x.request!.method} ${x.url} ${x.response!.status}`));
      assert.strictEqual(lines.filter((l) => l.type === 'connection').length, frames.filter((f) => f.type === 'conn_open').length);
    });

    it(`${name}: HAR 1.2 that har-validator accepts, with timings from the capture`, async () => {
      const frames = await fixture(name);
      const har = JSON.parse(render('har', frames).toString()) as { log: { version: string; entries: { startedDateTime: string; time: number; timings: Record<string, number>; response: { content: { size: number } } }[] } };
      await harValidator.har(har); // rejects with the schema errors
      assert.strictEqual(har.log.version, '1.2');
      assert.strictEqual(har.log.entries.length, ourExchanges(frames).length);
      for (const e of har.log.entries) {
        assert.ok(e.timings.send! >= 0 && e.timings.wait! >= 0 && e.timings.receive! >= 0);
        assert.ok(Math.abs(e.time - (e.timings.send! + e.timings.wait! + e.timings.receive!)) < 1e-6);
        assert.ok(e.time < 5000, 'a local exchange takes milliseconds');
      }
    });

    it(`${name}: tshark reads the pcapng and agrees on methods, paths and statuses`, async () => {
      const frames = await fixture(name);
      const file = path.join(tmp, `${name}.pcapng`);
      fs.writeFileSync(file, render('pcapng', frames));
      const want = ours(frames);
      // Both ends of one connection (curl and nginx) are written once, as one TCP stream: tshark
      // sees each exchange once where our analysis (per end) sees it twice.
      const bothEnds = frames.some((f) => f.type === 'conn_open' && f.role === 'server') && frames.some((f) => f.type === 'conn_open' && f.role === 'client');
      const got = tsharkCounts(file, frames);
      if (bothEnds) {
        const half = (a: string[]): string[] => a.filter((_x, i) => i % 2 === 0);
        assert.deepStrictEqual(got, { requests: half(want.requests), statuses: half(want.statuses) });
      } else assert.deepStrictEqual(got, want);
      const comments = execFileSync('tshark', ['-r', file, '-Y', 'frame.comment', '-T', 'fields', '-e', 'frame.comment'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      for (const f of frames.filter((x) => x.type === 'conn_open')) assert.ok(comments.includes(`${f.comm}[${f.pid}] ${f.role} conn ${f.conn_id}`), comments);
      const bad = execFileSync('tshark', ['-r', file, '-o', 'tcp.check_checksum:TRUE', '-Y', 'tcp.checksum.status == 0 || ip.checksum.status == 0'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      assert.strictEqual(bad, '', 'checksums are right');
      // One TCP stream per connection, in byte order: no retransmission, duplicate ACK, gap or out-of-order.
      const flagged = execFileSync('tshark', ['-r', file, '-Y', 'tcp.analysis.flags', '-T', 'fields', '-e', 'frame.number', '-e', '_ws.expert.message'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      assert.strictEqual(flagged, '', 'no TCP analysis flags');
    });
  }
});

describe('the nginx-mixed fixture: gzip with chunked transfer, HEAD, 204 and h2load (no root)', () => {
  it('each case as the programs saw it, on both ends', async () => {
    const ex = ourExchanges(await fixture('nginx-mixed'));
    for (const role of ['client', 'server']) {
      const mine = ex.filter((x) => x.conn.role === role);
      const h1 = mine.filter((x) => x.protocol !== 'HTTP/2');
      const gz = h1.find((x) => x.request!.target === '/page.json')!;
      assert.ok(gz.response!.headers.some(([k, v]) => k === 'Transfer-Encoding' && v === 'chunked'));
      assert.strictEqual(JSON.parse(decodeBody(gz.response!.body, gz.response!.headers).data.toString()).items.length, 40);
      const head = h1.find((x) => x.request!.method === 'HEAD')!;
      assert.deepStrictEqual([head.response!.status, head.response!.body.length, head.response!.complete], [200, 0, true]);
      assert.strictEqual(h1.find((x) => x.request!.target === '/empty')!.response!.status, 204);
      const h2 = mine.filter((x) => x.protocol === 'HTTP/2');
      assert.deepStrictEqual(h2.map((x) => [x.request!.target, x.response!.status, x.response!.body.toString()]), Array(6).fill(['/small.txt', 200, 'small\n']));
    }
  });
});

const secretReq = 'POST /login HTTP/1.1\r\nHost: app.test\r\nAuthorization: Basic dXNlcjpwYXNz\r\nCookie: session=SECRET1; theme=dark\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"user":"me"}';
const gz = zlib.gzipSync(JSON.stringify({ ok: true, items: [1, 2, 3] }));
const secretRes = `HTTP/1.1 200 OK\r\nSet-Cookie: session=SECRET2; Path=/; HttpOnly\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: ${gz.length}\r\n\r\n`;
const steps: Step[] = [
  { dir: 0, data: secretReq },
  { dir: 1, data: Buffer.concat([Buffer.from(secretRes), gz]) },
  { dir: 0, data: 'GET /img HTTP/1.1\r\nHost: app.test\r\n\r\n' },
  { dir: 1, data: Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Encoding: br\r\nContent-Length: '), Buffer.from(String(zlib.brotliCompressSync(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1, 2, 3])).length)), Buffer.from('\r\n\r\n'), zlib.brotliCompressSync(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1, 2, 3]))]) },
];

describe('output formats on made-up traffic (no root)', () => {
  const frames = conversation(steps, { comm: 'app', pid: 77 });

  it('text: JSON pretty-printed after gzip, binary after br as a hex preview, secrets redacted', () => {
    const text = render('text', frames, { printLimit: 4096 }).toString();
    assert.match(text, /> Authorization: Basic \[redacted, 12 bytes\]\n/);
    assert.match(text, /> Cookie: session=\[redacted, 7 bytes\]; theme=\[redacted, 4 bytes\]\n/);
    assert.match(text, /< Set-Cookie: session=\[redacted, 7 bytes\]; Path=\/; HttpOnly\n/);
    assert.ok(!/SECRET|dXNlcjpwYXNz/.test(text));
    assert.match(text, /\[gzip: \d+ bytes decoded to 27\]\n\n\{\n {2}"ok": true,\n {2}"items": \[\n {4}1,/);
    assert.match(text, /\[binary, 8 bytes, image\/png\]\n00000000 {2}89 50 4e 47 00 01 02 03/);
    const open = render('text', frames, { redact: false }).toString();
    assert.match(open, /Authorization: Basic dXNlcjpwYXNz/);
    assert.match(open, /session=SECRET2/);
  });

  it('jsonl and HAR: secrets redacted unless asked; bodies decoded; HAR valid', async () => {
    const lines = render('jsonl', frames).toString().trim().split('\n').map((l) => JSON.parse(l) as { type: string; response?: { body: { data: string; content_encoding: string[] } } });
    for (const l of lines) assert.ok(validateLine(l), JSON.stringify(validateLine.errors));
    assert.ok(!JSON.stringify(lines).includes('SECRET'));
    assert.deepStrictEqual(JSON.parse(lines[0]!.response!.body.data), { ok: true, items: [1, 2, 3] });
    assert.deepStrictEqual(lines[0]!.response!.body.content_encoding, ['gzip']);
    assert.ok(render('jsonl', frames, { redact: false }).toString().includes('SECRET1'));
    const har = JSON.parse(render('har', frames).toString()) as { log: { entries: { request: { cookies: { name: string; value: string }[] }; response: { content: { encoding?: string; mimeType: string } } }[] } };
    await harValidator.har(har); // rejects with the schema errors
    assert.ok(!JSON.stringify(har).includes('SECRET'));
    assert.deepStrictEqual(har.log.entries[0]!.request.cookies.map((c) => c.name), ['session', 'theme']);
    assert.strictEqual(har.log.entries[1]!.response.content.encoding, 'base64');
    assert.ok(render('har', frames, { redact: false }).toString().includes('SECRET2'));
  });

  it('pcapng and raw: secrets masked in place (same length); tshark sees the masked values', () => {
    const file = path.join(tmp, 'secret.pcapng');
    fs.writeFileSync(file, render('pcapng', frames));
    const rows = tsharkMessages(file, [8443], ['http.authorization', 'http.cookie', 'http.set_cookie'], 'http', 'http');
    assert.deepStrictEqual(rows[0]!.slice(0, 2), ['Basic ************', 'session=*******; theme=****']);
    assert.strictEqual(rows[1]![2], 'session=*******; Path=/; HttpOnly');
    const raw = render('raw', frames).toString();
    assert.match(raw, /Authorization: Basic \*{12}\n/);
    assert.ok(!/SECRET/.test(raw));
    fs.writeFileSync(file, render('pcapng', frames, { redact: false }));
    assert.strictEqual(tsharkMessages(file, [8443], ['http.authorization'], 'http.request', 'http')[0]![0], 'Basic dXNlcjpwYXNz');
  });

  it('pcapng: gaps stay gaps (tshark: previous segment not captured), IPv6 4-tuples, no handshake when joined mid-stream', () => {
    const gapped = conversation(
      [
        { dir: 0, data: 'GET /big HTTP/1.1\r\nHost: h\r\n\r\n' },
        { dir: 1, data: 'HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n' + 'a'.repeat(1000) },
        { dir: 1, skip: 1000 },
        { dir: 1, data: 'a'.repeat(1000) },
      ],
      { local: ['::1', 50000], remote: ['::1', 9443] },
    );
    const file = path.join(tmp, 'gap.pcapng');
    fs.writeFileSync(file, render('pcapng', gapped));
    const out = execFileSync('tshark', ['-r', file, '-T', 'fields', '-e', 'ipv6.src', '-e', 'tcp.srcport', '-e', 'tcp.seq', '-e', 'tcp.len', '-e', 'tcp.analysis.lost_segment', '-e', 'frame.comment'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const rows = out.trim().split('\n').map((l) => l.split('\t'));
    assert.deepStrictEqual(rows[0]!.slice(0, 2), ['::1', '50000']);
    const after = rows.find((r) => r[4] === '1')!;
    assert.ok(after, out);
    assert.match(after[5]!, /1000 bytes not captured before this \(lost\)/);
    const joined = conversation([{ dir: 1, data: 'x' }], { midStream: true });
    fs.writeFileSync(file, render('pcapng', joined));
    const flags = execFileSync('tshark', ['-r', file, '-T', 'fields', '-e', 'tcp.flags.syn'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    assert.ok(!flags.split('\n').includes('1'), 'no SYN for a connection joined mid-stream');
  });

  it('a connection still open at the end ends at its last capture time, not at its open; a malformed grpc-message is kept as it came; an IPv4 end beside an IPv6 one is v4-mapped', () => {
    const open = conversation(
      [
        { dir: 0, data: 'GET /slow HTTP/1.1\r\nHost: h\r\n\r\n' },
        { dir: 1, data: 'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789' },
      ],
      { noClose: true },
    );
    const lastNs = open[open.length - 1]!.ts_ns as bigint;
    const lines = render('jsonl', open).toString().trim().split('\n').map((l) => JSON.parse(l) as { type: string; duration_ms?: number; closed_ns?: string });
    for (const l of lines) assert.ok(validateLine(l), JSON.stringify(validateLine.errors));
    const ex = lines.find((l) => l.type === 'exchange')!;
    assert.ok(ex.duration_ms! >= 0, JSON.stringify(ex));
    assert.strictEqual(lines.find((l) => l.closed_ns !== undefined)?.closed_ns, lastNs.toString());

    const grpc = conversation([
      { dir: 0, data: 'POST /pkg.Svc/Call HTTP/1.1\r\nHost: h\r\nContent-Type: application/grpc\r\nContent-Length: 0\r\n\r\n' },
      { dir: 1, data: 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\ngrpc-status: 2\r\ngrpc-message: 50%\r\n\r\n' },
    ]);
    const g = render('jsonl', grpc).toString().trim().split('\n').map((l) => JSON.parse(l) as { type: string; grpc?: { message?: string } });
    assert.strictEqual(g.find((l) => l.type === 'exchange')?.grpc?.message, '50%');

    const mixed = conversation([{ dir: 0, data: 'GET / HTTP/1.1\r\nHost: h\r\n\r\n' }], { local: ['127.0.0.1', 40000], remote: ['::1', 9443] });
    const file = path.join(tmp, 'mixed.pcapng');
    fs.writeFileSync(file, render('pcapng', mixed));
    const out = execFileSync('tshark', ['-r', file, '-T', 'fields', '-e', 'ipv6.src', '-e', 'ipv6.dst'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    assert.deepStrictEqual(out.trim().split('\n')[0]!.split('\t'), ['::ffff:127.0.0.1', '::1']);
  });

  it('text: not HTTP and gaps are shown plainly; the raw view keeps the call-by-call dump', () => {
    const other = conversation([{ dir: 1, data: '220 ready\r\n' }, { dir: 0, data: Buffer.from([1, 2, 3, 0xff]) }]);
    const text = render('text', other, { printLimit: 4096 }).toString();
    assert.match(text, /conn 1 not HTTP: shown call by call\n/);
    assert.match(text, /<< received 11 bytes at offset 0 \(not HTTP\)\n220 ready\n/);
    assert.match(text, />> sent 4 bytes at offset 0 \(not HTTP\)\n00000000 {2}01 02 03 ff/);
    const raw = render('raw', other, { printLimit: 4096 }).toString();
    assert.match(raw, /client\[4242\] << received 11 bytes \(conn 1 client 127\.0\.0\.1:40000 -> 127\.0\.0\.1:8443, offset 0\)\n220 ready\n/);
    assert.match(raw, /conn 1 closed \(close\) after 4 bytes sent, 11 received/);
  });
});
