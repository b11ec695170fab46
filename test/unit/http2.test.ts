// http2.test.ts: HTTP/2 exchanges rebuilt from frames (helper/http/http2.ts) without root, on real
// traffic of node's http2 (nghttp2) recorded through an in-process relay: streams paired with
// their bodies and trailers, gRPC recognized, resets, server push, secrets masked in the bytes
// consistently with HPACK, and a connection joined mid-stream or cut inside a header block
// shown frame by frame, with no header ever invented.
import * as assert from 'assert';
import { HttpExchange, Session, SessionEvent } from '../../helper/http/exchanges';
import { MaskedFrames } from '../../helper/formats/output';
import { literalPositions, looksLikeFrames } from '../../helper/http/http2';
import { RawFrame } from '../../helper/protocol/wire';
import { conversation, h2cancel, h2request, h2requestWithPush, pushCss, recordHttp2, Step } from '../lib/traffic';

function analyse(frames: RawFrame[]): SessionEvent[] {
  const events: SessionEvent[] = [];
  const s = new Session((e) => events.push(e));
  for (const f of frames) s.push(f);
  s.end();
  return events;
}
const exchanges = (ev: SessionEvent[]): HttpExchange[] => ev.flatMap((e) => (e.type === 'exchange' ? [e.exchange] : []));
const big = Buffer.alloc(70000, 'abcdefghij');

/** A gRPC message: compressed flag, 4-byte length, bytes. */
function grpcFrame(b: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(b.length, 1);
  return Buffer.concat([head, b]);
}

describe('HTTP/2 exchanges (no root, node http2 traffic)', function () {
  this.timeout(20000);
  let steps: Step[];

  before(async () => {
    steps = await recordHttp2(
      (req, res, stream) => {
        const chunks: Buffer[] = [];
        req.on('data', (d: Buffer) => chunks.push(d));
        req.on('end', () => {
          const body = Buffer.concat(chunks);
          if (req.url === '/big') {
            res.setHeader('content-type', 'text/plain');
            res.setHeader('set-cookie', 'sid=abc123; Path=/; HttpOnly');
            res.end(big);
          } else if (req.url === '/echo') {
            res.setHeader('content-type', 'application/json');
            res.end(JSON.stringify({ got: body.toString() }));
          } else if (req.url === '/pkg.Greeter/Hello') {
            res.setHeader('content-type', 'application/grpc');
            res.addTrailers({ 'grpc-status': '5', 'grpc-message': 'not%20found' });
            res.end(grpcFrame(Buffer.from('reply')));
          } else if (req.url === '/pushy') {
            pushCss(stream, res);
          } else if (req.url === '/slow') {
            // never answered: the client resets the stream
          } else res.end('?');
        });
      },
      async (client) => {
        await h2request(client, { ':path': '/big', authorization: 'Bearer tok-123456', cookie: 'a=1; b=2' });
        await h2request(client, { ':method': 'POST', ':path': '/echo', 'content-type': 'text/plain' }, Buffer.from('ping'));
        await h2request(client, { ':method': 'POST', ':path': '/pkg.Greeter/Hello', 'content-type': 'application/grpc', te: 'trailers' }, grpcFrame(Buffer.from('hi')));
        await h2requestWithPush(client, '/pushy');
        await h2cancel(client, '/slow');
        await h2request(client, { ':path': '/last' });
      },
    );
  });

  it('every stream paired: method, path, status, headers and whole bodies across DATA frames', () => {
    const ex = exchanges(analyse(conversation(steps)));
    const byPath = new Map(ex.map((x) => [x.request?.target, x]));
    const bigX = byPath.get('/big')!;
    assert.strictEqual(bigX.protocol, 'HTTP/2');
    assert.strictEqual(bigX.request!.method, 'GET');
    assert.strictEqual(bigX.url, `http://127.0.0.1:${bigX.request!.authority!.split(':')[1]}/big`);
    assert.strictEqual(bigX.response!.status, 200);
    assert.ok(bigX.response!.body.equals(big), `body of ${bigX.response!.body.length} bytes`);
    assert.deepStrictEqual(bigX.request!.headers.find(([k]) => k === 'authorization'), ['authorization', 'Bearer tok-123456']);
    const echo = byPath.get('/echo')!;
    assert.strictEqual(echo.request!.body.toString(), 'ping');
    assert.deepStrictEqual(JSON.parse(echo.response!.body.toString()), { got: 'ping' });
    assert.strictEqual(byPath.get('/last')!.response!.body.toString(), '?');
    assert.ok(ex.every((x) => x.streamId! > 0));
  });

  it('gRPC: service, method, message counts and grpc-status from the trailers', () => {
    const g = exchanges(analyse(conversation(steps))).find((x) => x.grpc)!;
    assert.deepStrictEqual(g.grpc, { service: 'pkg.Greeter', method: 'Hello', status: 5, message: 'not found', requestMessages: 1, responseMessages: 1 });
    assert.deepStrictEqual(g.response!.trailers.map(([k]) => k).sort(), ['grpc-message', 'grpc-status']);
  });

  it('a reset stream and a pushed one are exchanges too, marked as such', () => {
    const ex = exchanges(analyse(conversation(steps)));
    const slow = ex.find((x) => x.request?.target === '/slow')!;
    assert.match(slow.reset!, /^CANCEL from the client$/);
    assert.strictEqual(slow.response, undefined);
    const pushed = ex.find((x) => x.request?.target === '/pushed.css')!;
    assert.strictEqual(pushed.streamId! % 2, 0);
    assert.strictEqual(pushed.response!.body.toString(), 'body{}');
    assert.match(pushed.notes.join(), /pushed by the server/);
  });

  it('the server side of the same bytes gives the same exchanges', () => {
    const mirrored = steps.map((s): Step => ({ ...s, dir: s.dir === 0 ? 1 : 0 }) as Step);
    const a = exchanges(analyse(conversation(steps))).map((x) => [x.request?.target, x.response?.status, x.response?.body.length]);
    const b = exchanges(analyse(conversation(mirrored, { role: 'server' }))).map((x) => [x.request?.target, x.response?.status, x.response?.body.length]);
    assert.deepStrictEqual(b.sort(), a.sort());
  });

  it('secrets are masked in the bytes with the same length, and the masked stream still decodes', () => {
    const masked: RawFrame[] = [];
    const m = new MaskedFrames(true, (f) => masked.push(f));
    const orig = conversation(steps);
    for (const f of orig) m.push(f);
    m.end();
    assert.strictEqual(masked.filter((f) => f.type === 'segment').length, orig.filter((f) => f.type === 'segment').length, 'every segment passes');
    const bytes = (fs: RawFrame[]): number => fs.reduce((n, f) => n + (f.type === 'segment' ? (f.data as Buffer).length : 0), 0);
    assert.strictEqual(bytes(masked), bytes(orig));
    const ex = exchanges(analyse(masked));
    const bigX = ex.find((x) => x.request?.target === '/big')!;
    const auth = bigX.request!.headers.find(([k]) => k === 'authorization')![1];
    assert.ok(/^(\*+|Bearer \*+)$/.test(auth), auth);
    assert.ok(!/tok-123456/.test(auth));
    assert.ok(!/abc123/.test(bigX.response!.headers.find(([k]) => k === 'set-cookie')![1]));
    assert.ok(bigX.response!.body.equals(big), 'bodies untouched');
    assert.strictEqual(ex.length, exchanges(analyse(orig)).length, 'HPACK state intact after masking');
  });

  it('joined mid-stream: no header is decoded; the frames are listed, bytes shown', () => {
    // Start both directions at a call boundary after the first two exchanges.
    const cut = steps.findIndex((s, i) => i > 10 && 'data' in s && s.dir === 0 && looksLikeFrames(s.data as Buffer));
    const later = steps.slice(cut);
    const ev = analyse(conversation(later, { midStream: true }));
    assert.deepStrictEqual(exchanges(ev), []);
    const raw = ev.filter((e) => e.type === 'data') as Extract<SessionEvent, { type: 'data' }>[];
    assert.ok(raw.length > 0);
    assert.ok(raw.every((d) => /HTTP\/2 joined mid-stream: HPACK is stateful/.test(d.why)), raw[0]!.why);
    assert.ok(raw.some((d) => /\n(HEADERS|DATA) stream \d+, \d+ bytes/.test(d.why)));
  });

  it('a gap inside a header block: the streams before are whole, nothing after is decoded', () => {
    const at = steps.findIndex((s, i) => i > 4 && 'data' in s && s.dir === 0 && (s.data as Buffer).length > 20 && (s.data as Buffer)[3] === 1);
    const gapped: Step[] = [...steps.slice(0, at), { dir: 0, data: (steps[at] as { data: Buffer }).data.subarray(0, 12) }, { dir: 0, skip: (steps[at] as { data: Buffer }).data.length - 12 }, ...steps.slice(at + 1)];
    const ev = analyse(conversation(gapped));
    const before = exchanges(analyse(conversation(steps.slice(0, at)))).filter((x) => x.request && x.response && !x.reset);
    const got = exchanges(ev).filter((x) => x.request && x.response && x.response.complete);
    assert.ok(before.length >= 1);
    assert.deepStrictEqual(got.map((x) => x.request!.target), before.map((x) => x.request!.target));
    assert.ok(ev.some((e) => e.type === 'note' && /header blocks cannot be decoded/.test(e.text)));
  });

  it('HPACK literal positions follow RFC 7541 C.3 and C.4 examples', () => {
    // C.4.1: Huffman-coded request ":method GET, :scheme http, :path /, :authority www.example.com"
    const c41 = Buffer.from('828684418cf1e3c2e5f23a6ba0ab90f4ff', 'hex');
    assert.deepStrictEqual(literalPositions(c41), [null, null, null, { start: 5, length: 12, huffman: true }]);
    // C.3.2: "cache-control: no-cache" literal with an indexed name, not Huffman.
    const c32 = Buffer.from('828684be58086e6f2d6361636865', 'hex');
    assert.deepStrictEqual(literalPositions(c32), [null, null, null, null, { start: 6, length: 8, huffman: false }]);
  });
});
