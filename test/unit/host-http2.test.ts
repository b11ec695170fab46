// host-http2.test.ts: the host library's exchanges (helper/host/host.ts, ExchangeAssembler)
// for HTTP/2, without root: recordings of real programs (fixtures/: curl --http2 ↔ nginx,
// h2load ↔ nginx) and node http2 traffic recorded through an in-process relay (test/lib/
// traffic.ts): streams at once on one connection, POST bodies, request and response trailers,
// the same fields as an HTTP/1 exchange, and nothing handed out that was not captured whole.
import * as assert from 'assert';
import * as path from 'path';
import { Exchange, ExchangeAssembler, Gap } from '../../helper/host/host';
import { replayExchanges } from '../../helper/commands/replay';
import { frameHeader } from '../../helper/http/http2';
import { RawFrame } from '../../helper/protocol/wire';
import { pattern } from '../lib/servers';
import { conversation, h2cancel, h2request, h2requestWithPush, pushCss, recordHttp2, Step } from '../lib/traffic';
import { FIXTURES } from '../lib/paths';


function assemble(frames: RawFrame[]): { exchanges: Exchange[]; gaps: Gap[] } {
  const exchanges: Exchange[] = [];
  const gaps: Gap[] = [];
  const a = new ExchangeAssembler((e) => exchanges.push(e), (g) => gaps.push(g));
  for (const f of frames) a.push(f);
  a.finish();
  return { exchanges, gaps };
}
const header = (h: [string, string][], name: string): string | undefined => h.find(([k]) => k === name)?.[1];
const byStream = (l: Exchange[]): Exchange[] => [...l].sort((x, y) => x.streamId! - y.streamId!);
/** What a consumer compares between the two ends of one stream. */
const view = (e: Exchange): unknown => [
  e.protocol, e.streamId, e.request.method, e.request.url, e.request.authority, e.request.scheme, e.request.headers, e.request.trailers, e.request.body.toString('latin1'),
  e.response.statusCode, e.response.headers, e.response.trailers, e.response.body.toString('latin1'),
];

describe('host: HTTP/2 exchanges from recordings of real programs (no root)', () => {
  it('curl --http2 ↔ nginx (fixture): one stream, seen from both ends, with the file nginx served', async () => {
    const ex = await replayExchanges(path.join(FIXTURES, 'curl-http2-nginx.frames'));
    const curl = ex.find((e) => e.comm === 'curl')!;
    const nginx = ex.find((e) => e.comm === 'nginx')!;
    assert.ok(curl && nginx, ex.map((e) => e.comm).join());
    assert.deepStrictEqual([curl.protocol, curl.streamId, curl.role, nginx.role], ['HTTP/2', 1, 'client', 'server']);
    assert.strictEqual(curl.request.method, 'GET');
    assert.strictEqual(curl.request.url, '/h2.txt');
    assert.strictEqual(curl.request.scheme, 'https');
    // scripts/make-fixtures.js served pattern(2500, 13) as /h2.txt.
    assert.ok(curl.response.body.equals(pattern(2500, 13)));
    assert.strictEqual(curl.response.statusCode, 200);
    assert.strictEqual(curl.response.statusMessage, '');
    assert.strictEqual(header(curl.response.headers, 'content-length'), '2500');
    assert.ok(header(curl.request.headers, 'user-agent')!.startsWith('curl/'));
    assert.deepStrictEqual([curl.request.versionMajor, curl.response.versionMajor], [2, 2]);
    assert.strictEqual(curl.request.raw, undefined);
    // One connection, its 4-tuple seen from each end; :authority names nginx's port.
    assert.deepStrictEqual([nginx.localIp, nginx.localPort, nginx.remoteIp, nginx.remotePort], [curl.remoteIp, curl.remotePort, curl.localIp, curl.localPort]);
    assert.strictEqual(curl.request.authority, `127.0.0.1:${nginx.localPort}`);
    assert.ok(curl.fd >= 0 && nginx.fd >= 0);
    assert.deepStrictEqual(view(nginx), view(curl));
  });

  it('h2load ↔ nginx (fixture): six streams on one connection, two at a time, among HTTP/1 exchanges of curl', async () => {
    const ex = await replayExchanges(path.join(FIXTURES, 'nginx-mixed.frames'));
    const h2load = byStream(ex.filter((e) => e.comm === 'h2load'));
    assert.strictEqual(h2load.length, 6);
    assert.strictEqual(new Set(h2load.map((e) => e.connId)).size, 1);
    assert.deepStrictEqual(h2load.map((e) => e.streamId), [1, 3, 5, 7, 9, 11]);
    for (const e of h2load) assert.deepStrictEqual([e.protocol, e.request.url, e.response.statusCode, e.response.body.toString()], ['HTTP/2', '/small.txt', 200, 'small\n']);
    // Two streams at a time (-m 2): a stream's response starts before the one before it ended.
    assert.ok(h2load.some((e, i) => i > 0 && e.request.tsNs < h2load[i - 1]!.response.endNs), 'streams overlap');
    const server = byStream(ex.filter((e) => e.comm === 'nginx' && e.protocol === 'HTTP/2'));
    assert.deepStrictEqual(server.map(view), h2load.map(view));
    assert.ok(server.every((e) => e.localPort === h2load[0]!.remotePort && e.remotePort === h2load[0]!.localPort));
    // The HTTP/1 exchanges of the same recording come through the same callback.
    assert.deepStrictEqual(ex.filter((e) => e.comm === 'curl').map((e) => [e.protocol, e.request.method, e.request.url, e.response.statusCode]), [
      ['HTTP/1.1', 'GET', '/page.json', 200],
      ['HTTP/1.1', 'HEAD', '/small.txt', 200],
      ['HTTP/1.1', 'GET', '/empty', 204],
    ]);
  });
});

describe('host: HTTP/2 exchanges of node http2 traffic (no root)', function () {
  this.timeout(20000);
  let steps: Step[];
  const upload = pattern(40_000, 7);

  before(async () => {
    steps = await recordHttp2(
      (req, res, stream) => {
        const chunks: Buffer[] = [];
        req.on('data', (d: Buffer) => chunks.push(d));
        req.on('end', () => {
          const body = Buffer.concat(chunks);
          if (req.url === '/echo') {
            res.setHeader('content-type', 'application/octet-stream');
            res.addTrailers({ 'x-request-bytes': String(body.length), 'x-got-trailer': String(req.trailers['x-client'] ?? 'none') });
            res.end(body);
          } else if (req.url === '/pushy') {
            pushCss(stream, res);
          } else if (req.url === '/slow') {
            // never answered: the client resets the stream
          } else res.end(`page ${req.url}`);
        });
      },
      async (client) => {
        // Three streams at once, then a POST with request trailers, a push, a reset stream.
        await Promise.all(['/a', '/b?x=1', '/c'].map((p) => h2request(client, { ':path': p })));
        await new Promise<void>((ok, fail) => {
          const s = client.request({ ':method': 'POST', ':path': '/echo', 'content-type': 'application/octet-stream' }, { waitForTrailers: true });
          s.on('wantTrailers', () => s.sendTrailers({ 'x-client': 'done' }));
          s.on('data', () => undefined);
          s.on('end', ok);
          s.on('error', fail);
          s.end(upload);
        });
        await h2requestWithPush(client, '/pushy');
        await h2cancel(client, '/slow');
        await h2request(client, { ':path': '/last' });
      },
    );
  });

  it('every whole stream: concurrent GETs, a POST body with request and response trailers, a pushed stream', () => {
    const { exchanges } = assemble(conversation(steps, { pid: 77, comm: 'node', local: ['127.0.0.1', 50123], remote: ['127.0.0.1', 8443] }));
    const urls = byStream(exchanges).map((e) => e.request.url);
    assert.deepStrictEqual([...urls].sort(), ['/a', '/b?x=1', '/c', '/echo', '/last', '/pushed.css', '/pushy']);
    for (const e of exchanges) {
      assert.deepStrictEqual([e.protocol, e.pid, e.comm, e.role, e.localPort, e.remotePort, e.fd], ['HTTP/2', 77, 'node', 'client', 50123, 8443, 5]);
      assert.strictEqual(e.request.scheme, 'http', 'the relay is cleartext h2');
      assert.match(e.request.authority, /^127\.0\.0\.1:\d+$/);
    }
    const get = (u: string): Exchange => exchanges.find((e) => e.request.url === u)!;
    assert.strictEqual(get('/b?x=1').response.body.toString(), 'page /b?x=1');
    assert.deepStrictEqual(['/a', '/b?x=1', '/c'].map((u) => get(u).streamId), [1, 3, 5]);
    const echo = get('/echo');
    assert.strictEqual(echo.request.method, 'POST');
    assert.ok(echo.request.body.equals(upload), 'a POST body over several DATA frames');
    assert.ok(echo.response.body.equals(upload));
    assert.deepStrictEqual(echo.request.trailers, [['x-client', 'done']]);
    assert.deepStrictEqual(echo.response.trailers, [['x-request-bytes', String(upload.length)], ['x-got-trailer', 'done']]);
    assert.strictEqual(header(echo.response.headers, 'content-type'), 'application/octet-stream');
    const pushed = get('/pushed.css');
    assert.strictEqual(pushed.streamId! % 2, 0, 'pushed by the server: an even stream id');
    assert.strictEqual(pushed.response.body.toString(), 'body{}');
    assert.strictEqual(exchanges.find((e) => e.request.url === '/slow'), undefined, 'a stream reset before its response is not an exchange');
  });

  it('the server end of the same bytes gives the same exchanges', () => {
    const client = assemble(conversation(steps)).exchanges;
    const mirrored = steps.map((s): Step => ({ ...s, dir: s.dir === 0 ? 1 : 0 }) as Step);
    const server = assemble(conversation(mirrored, { role: 'server' })).exchanges;
    assert.ok(server.every((e) => e.role === 'server'));
    assert.deepStrictEqual(byStream(server).map(view), byStream(client).map(view));
  });

  it('the same exchanges whatever the calls were cut into', () => {
    const whole = byStream(assemble(conversation(steps)).exchanges).map(view);
    for (const size of [1, 7, 100, 4096]) {
      const cut: Step[] = steps.flatMap((s) => {
        if (!('data' in s)) return [s];
        const d = Buffer.from(s.data);
        const out: Step[] = [];
        for (let at = 0; at < d.length; at += size) out.push({ dir: s.dir, data: d.subarray(at, at + size) });
        return out;
      });
      assert.deepStrictEqual(byStream(assemble(conversation(cut)).exchanges).map(view), whole, `calls of ${size} bytes`);
    }
  });

  it('bytes lost inside a DATA frame: that stream is not handed out, the others are; the gap is reported', () => {
    // Find the client's call that carries the POST body and drop bytes from its middle.
    const at = steps.findIndex((s) => s.dir === 0 && 'data' in s && Buffer.from(s.data).includes(upload.subarray(20000, 20100)));
    assert.ok(at > 0);
    const s = steps[at] as { dir: 0; data: Buffer };
    const d = Buffer.from(s.data);
    const hole = d.indexOf(upload.subarray(20000, 20100));
    const lossy: Step[] = [...steps.slice(0, at), { dir: 0, data: d.subarray(0, hole) }, { dir: 0, skip: 100 }, { dir: 0, data: d.subarray(hole + 100) }, ...steps.slice(at + 1)];
    const { exchanges, gaps } = assemble(conversation(lossy));
    assert.deepStrictEqual(gaps.map((g) => [g.dir, g.bytes]), [[0, 100n]]);
    const urls = exchanges.map((e) => e.request.url).sort();
    assert.ok(!urls.includes('/echo'), 'the POST with a hole in its body');
    assert.deepStrictEqual(urls, ['/a', '/b?x=1', '/c', '/last', '/pushed.css', '/pushy']);
  });

  it('bytes lost inside a header block: the streams before are handed out, none after (HPACK is stateful)', () => {
    // The client's call with the HEADERS frame of /pushy (its path is Huffman-coded, so it is
    // found by its frames, not its text).
    const pushy = assemble(conversation(steps)).exchanges.find((e) => e.request.url === '/pushy')!.streamId!;
    const opens = (b: Buffer): boolean => {
      for (let i = 0; i + 9 <= b.length; i += 9 + frameHeader(b, i).length) if (frameHeader(b, i).type === 1 && frameHeader(b, i).streamId === pushy) return true;
      return false;
    };
    const at = steps.findIndex((s) => s.dir === 0 && 'data' in s && opens(Buffer.from(s.data)));
    assert.ok(at > 0, `a call with the HEADERS of stream ${pushy}`);
    const lossy: Step[] = [...steps.slice(0, at), { dir: 0, skip: Buffer.from((steps[at] as { data: Buffer }).data).length }, ...steps.slice(at + 1)];
    const urls = assemble(conversation(lossy)).exchanges.map((e) => e.request.url).sort();
    // Each direction has its own HPACK table: the server's PUSH_PROMISE and the pushed response,
    // sent before the loss showed (at the client's next call), decode whole. /pushy, whose
    // request headers were lost, and every stream after the loss are not handed out.
    assert.deepStrictEqual(urls, ['/a', '/b?x=1', '/c', '/echo', '/pushed.css']);
  });

  it('an HTTP/1.1 exchange has the same fields (raw added, no stream id)', () => {
    const h2 = assemble(conversation(steps)).exchanges.find((e) => e.request.url === '/echo')!;
    const h1 = assemble(
      conversation([
        { dir: 0, data: 'POST /echo HTTP/1.1\r\nHost: example.test\r\nContent-Length: 4\r\n\r\nping' },
        { dir: 1, data: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-request-bytes\r\n\r\n4\r\nping\r\n0\r\nx-request-bytes: 4\r\n\r\n' },
      ]),
    ).exchanges[0]!;
    const keys = (o: object, drop: string[] = []): string[] => Object.keys(o).filter((k) => !drop.includes(k)).sort();
    assert.deepStrictEqual(keys(h1), keys(h2, ['streamId']));
    assert.deepStrictEqual(keys(h1.request, ['raw']), keys(h2.request));
    assert.deepStrictEqual(keys(h1.response, ['raw']), keys(h2.response));
    assert.deepStrictEqual([h1.protocol, h1.streamId, h1.request.authority, h1.request.scheme, h1.response.statusMessage], ['HTTP/1.1', undefined, 'example.test', 'https', 'OK']);
    assert.deepStrictEqual(h1.response.trailers, [['x-request-bytes', '4']]);
    assert.strictEqual(h1.response.body.toString(), 'ping');
  });
});
