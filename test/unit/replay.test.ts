// replay.test.ts: recordings of real programs (fixtures/, made by scripts/make-fixtures.js)
// replayed without root: frames valid and in protocol order, HTTP/1 and HTTP/2 exchanges and
// per-connection bytes as recorded; and the host's reassembly marks a gap instead of
// splicing over it.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Exchange, ExchangeAssembler, Gap } from '../../helper/host/host';
import { connectionSummaries, exchangeSummary, replayCommand, replayExchanges, replayFrames } from '../../helper/commands/replay';
import { RawFrame } from '../../helper/protocol/wire';
import { exampleFrames } from '../lib/frames';
import { FIXTURES } from '../lib/paths';

const names = fs.readdirSync(FIXTURES).filter((f) => f.endsWith('.frames')).map((f) => f.replace(/\.frames$/, ''));

describe('fixture replay (no root)', () => {
  it('has fixtures of curl, python, node and nginx, over HTTP/1.1 and HTTP/2', () => {
    for (const n of ['curl-get', 'python-post', 'node-get', 'nginx-keepalive', 'curl-http2-nginx']) assert.ok(names.includes(n), `no ${n} in fixtures: ${names.join(', ')}`);
  });

  interface Expected {
    exchanges: unknown[];
    connections: { pid: number; comm: string; role: string; egress_bytes: number; egress_sha256: string; ingress_bytes: number; ingress_sha256: string; gap_bytes: number; http2_client_preface: boolean }[];
  }
  const expectedOf = (name: string): Expected => JSON.parse(fs.readFileSync(path.join(FIXTURES, `${name}.expected.json`), 'utf8')) as Expected;
  const framesOf = async (name: string): Promise<RawFrame[]> => {
    const frames: RawFrame[] = [];
    for await (const f of replayFrames(path.join(FIXTURES, `${name}.frames`))) frames.push(f);
    return frames;
  };

  it('nginx-keepalive: two requests on one connection, seen by curl and by nginx, the same bytes', async () => {
    const ex = await replayExchanges(path.join(FIXTURES, 'nginx-keepalive.frames'));
    const client = ex.filter((e) => e.comm === 'curl');
    const server = ex.filter((e) => e.comm === 'nginx');
    // In the order curl sent them: test/lib/servers.ts curl() puts its first URL last.
    assert.deepStrictEqual(client.map((e) => e.request.url), ['/dir/b.bin', '/a.txt']);
    assert.strictEqual(new Set(client.map((e) => e.connId)).size, 1, 'keep-alive: one connection');
    assert.deepStrictEqual(client.map((e) => e.response.body.length), [700, 3000]);
    for (const c of client) assert.ok(server.some((s) => s.role === 'server' && s.request.raw!.equals(c.request.raw!) && s.response.raw!.equals(c.response.raw!)));
  });

  it('curl-http2-nginx: the client preface in curl\'s egress, every byte matched between both ends, no gap', async () => {
    const conns = connectionSummaries(await framesOf('curl-http2-nginx'));
    const curl = conns.find((c) => c.comm === 'curl')!;
    const nginx = conns.find((c) => c.comm === 'nginx')!;
    assert.ok(curl && nginx, JSON.stringify(conns));
    assert.strictEqual(curl.http2_client_preface, true);
    assert.strictEqual(curl.role, 'client');
    assert.strictEqual(nginx.role, 'server');
    assert.strictEqual(curl.egress_sha256, nginx.ingress_sha256);
    assert.strictEqual(curl.ingress_sha256, nginx.egress_sha256);
    assert.ok((curl.ingress_bytes as number) > 2500, 'the 2500-byte file and HTTP/2 framing');
    // The host hands out the stream too (test/host-http2.test.ts checks its content).
    const ex = await replayExchanges(path.join(FIXTURES, 'curl-http2-nginx.frames'));
    assert.deepStrictEqual(ex.map((e) => [e.comm, e.protocol, e.streamId, e.request.url]), [['curl', 'HTTP/2', 1, '/h2.txt'], ['nginx', 'HTTP/2', 1, '/h2.txt']]);
  });

  for (const name of names) {
    it(`${name}: valid frames, hello first, bye last, conn_open before and conn_close after each connection's segments`, async () => {
      const frames: RawFrame[] = [];
      for await (const f of replayFrames(path.join(FIXTURES, `${name}.frames`))) frames.push(f);
      assert.strictEqual(frames[0]!.type, 'hello');
      assert.strictEqual(frames[frames.length - 1]!.type, 'bye');
      const state = new Map<string, 'open' | 'closed'>();
      for (const f of frames) {
        if (!['conn_open', 'segment', 'conn_close'].includes(f.type)) continue;
        const k = `${f.pid}:${f.conn_id}`;
        if (f.type === 'conn_open') {
          assert.ok(!state.has(k), `${k} opened twice`);
          state.set(k, 'open');
        } else {
          assert.strictEqual(state.get(k), 'open', `${f.type} of ${k} outside open..close`);
          if (f.type === 'conn_close') state.set(k, 'closed');
        }
      }
      assert.ok([...state.values()].every((s) => s === 'closed'), 'every opened connection was closed');
    });

    it(`${name}: the exchanges and the bytes of each connection are the ones the live host saw`, async () => {
      const expected = expectedOf(name);
      const got = (await replayExchanges(path.join(FIXTURES, `${name}.frames`))).map(exchangeSummary);
      assert.ok(expected.connections.length > 0);
      assert.deepStrictEqual(got, expected.exchanges);
      assert.deepStrictEqual(connectionSummaries(await framesOf(name)), expected.connections);
      assert.ok(expected.connections.every((c) => c.gap_bytes === 0), 'fixtures are recorded without loss');
    });
  }

  it('replay prints the exchanges for people, and the frames as JSON lines', async () => {
    let text = '';
    const o = { redact: true, color: false, printLimit: 4096, version: '0' };
    assert.strictEqual(await replayCommand(path.join(FIXTURES, 'curl-get.frames'), 'text', { write: (s) => (text += String(s)) }, o), 0);
    assert.match(text, /curl\[\d+\] conn \d+ HTTP\/1\.1 \(client [^)]+\)\n> GET \/bytes\/300\?seed=2 HTTP\/1\.1\n> Host: /);
    assert.match(text, /\n< HTTP\/1\.[01] 200 OK /);
    let lines = '';
    await replayCommand(path.join(FIXTURES, 'curl-get.frames'), 'frames', { write: (s) => (lines += String(s)) }, o);
    const parsed = lines.trim().split('\n').map((l) => JSON.parse(l) as { type: string; ts_ns?: string });
    assert.strictEqual(parsed[0]!.type, 'hello');
    assert.match(String(parsed[0]!.ts_ns), /^\d{19}$/, '64-bit values as decimal strings');
  });

  it('a damaged recording is an error that names the file', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hc-replay-'));
    const file = path.join(dir, 'cut.frames');
    const whole = fs.readFileSync(path.join(FIXTURES, 'curl-get.frames'));
    fs.writeFileSync(file, whole.subarray(0, whole.length - 5));
    await assert.rejects(async () => {
      for await (const f of replayFrames(file)) void f;
    }, /cut\.frames is not a whole frame recording: a frame was cut short/);
    fs.rmSync(dir, { recursive: true });
  });
});

describe('exchange reassembly', () => {
  const seg = (dir: 0 | 1, seq: number, text: string, conn = 1n): RawFrame =>
    ({ ...(exampleFrames()[1] as unknown as RawFrame), conn_id: conn, dir, seq: BigInt(seq), data: Buffer.from(text), len_total: text.length }) as RawFrame;

  it('pairs requests and responses split at any byte, keeps each message exact', () => {
    const req = 'POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello';
    const res = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n';
    for (let cut = 1; cut < res.length; cut += 7) {
      const got: Exchange[] = [];
      const a = new ExchangeAssembler((e) => got.push(e));
      a.push(seg(0, 0, req.slice(0, 10)));
      a.push(seg(0, 10, req.slice(10)));
      a.push(seg(1, 0, res.slice(0, cut)));
      a.push(seg(1, cut, res.slice(cut)));
      assert.strictEqual(got.length, 1, `cut at ${cut}`);
      assert.strictEqual(got[0]!.role, 'client');
      assert.strictEqual(got[0]!.request.raw!.toString(), req);
      assert.strictEqual(got[0]!.request.body.toString(), 'hello');
      assert.strictEqual(got[0]!.response.raw!.toString(), res);
      assert.strictEqual(got[0]!.response.body.toString(), 'abc');
    }
  });

  it('a gap in seq is reported and never spliced into an exchange', () => {
    const got: Exchange[] = [];
    const gaps: Gap[] = [];
    const a = new ExchangeAssembler((e) => got.push(e), (g) => gaps.push(g));
    a.push(seg(0, 0, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    a.push(seg(1, 0, 'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234'));
    a.push(seg(1, 50, '56789')); // 6 bytes missing before this (the response so far is 44 bytes)
    assert.deepStrictEqual(gaps.map((g) => [g.dir, g.at, g.bytes]), [[1, 44n, 6n]]);
    assert.strictEqual(got.length, 0, 'no exchange built across the gap');
  });
});
