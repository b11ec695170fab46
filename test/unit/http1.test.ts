// http1.test.ts: HTTP/1.x exchanges rebuilt from frames (helper/http/exchanges.ts, http1.ts) without
// root: messages split at every byte, pipelining, chunked with trailers, HEAD, 1xx, 204/304,
// Upgrade, CONNECT, bodies read until the close, gaps stepped over inside bodies, resync after a
// loss or a mid-stream join, and never a pair made across a loss that could make it wrong.
import * as assert from 'assert';
import { HttpExchange, Session, SessionEvent } from '../../helper/http/exchanges';
import { RawFrame } from '../../helper/protocol/wire';
import { conversation, splits, Step } from '../lib/traffic';

function analyse(frames: RawFrame[]): SessionEvent[] {
  const events: SessionEvent[] = [];
  const s = new Session((e) => events.push(e));
  for (const f of frames) s.push(f);
  s.end();
  return events;
}
const exchanges = (ev: SessionEvent[]): HttpExchange[] => ev.flatMap((e) => (e.type === 'exchange' ? [e.exchange] : []));
const data = (ev: SessionEvent[]): Extract<SessionEvent, { type: 'data' }>[] => ev.flatMap((e) => (e.type === 'data' ? [e] : []));
const notes = (ev: SessionEvent[]): string[] => ev.flatMap((e) => (e.type === 'note' ? [e.text] : []));
const run = (steps: Step[], o = {}): SessionEvent[] => analyse(conversation(steps, o));

const GET = 'GET /a?x=1 HTTP/1.1\r\nHost: example.test\r\nAuthorization: Bearer s3cr3t\r\n\r\n';
const OK = (body: string, extra = ''): string => `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n${extra}\r\n${body}`;

describe('HTTP/1 exchanges (no root)', () => {
  it('a request and a response split at every byte: the same exchange each time', () => {
    const req = 'POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello';
    const res = 'HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n';
    for (const [a, b] of splits(req)) {
      for (const [c, d] of [[res.slice(0, 7), res.slice(7)], ...splits(res).filter((_x, i) => i % 5 === 0)]) {
        const ex = exchanges(run([{ dir: 0, data: a }, { dir: 0, data: b }, { dir: 1, data: c! }, { dir: 1, data: d! }]));
        assert.strictEqual(ex.length, 1, `split ${a.length}/${c!.length}`);
        const x = ex[0]!;
        assert.strictEqual(x.request!.method, 'POST');
        assert.strictEqual(x.request!.body.toString(), 'hello');
        assert.strictEqual(x.request!.raw!.toString(), req);
        assert.strictEqual(x.response!.status, 201);
        assert.strictEqual(x.response!.body.toString(), 'abcde');
        assert.deepStrictEqual(x.response!.trailers, [['X-Trailer', 't']]);
        assert.strictEqual(x.response!.raw!.toString(), res);
        assert.strictEqual(x.url, 'https://h/p');
        assert.ok(x.request!.complete && x.response!.complete);
      }
    }
  });

  it('pipelining: three requests in one call, their responses in one call, paired in order', () => {
    const reqs = ['/1', '/2', '/3'].map((p) => `GET ${p} HTTP/1.1\r\nHost: h\r\n\r\n`).join('');
    const ress = [OK('one'), OK('two!'), OK('three')].join('');
    const ex = exchanges(run([{ dir: 0, data: reqs }, { dir: 1, data: ress }]));
    assert.deepStrictEqual(ex.map((x) => [x.request!.target, x.response!.body.toString()]), [['/1', 'one'], ['/2', 'two!'], ['/3', 'three']]);
  });

  it('HEAD: the response has a Content-Length and no body; the next response follows', () => {
    const ex = exchanges(
      run([
        { dir: 0, data: 'HEAD /f HTTP/1.1\r\nHost: h\r\n\r\nGET /g HTTP/1.1\r\nHost: h\r\n\r\n' },
        { dir: 1, data: 'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n' + OK('g') },
      ]),
    );
    assert.deepStrictEqual(ex.map((x) => [x.request!.method, x.response!.status, x.response!.body.length]), [['HEAD', 200, 0], ['GET', 200, 1]]);
  });

  it('204 and 304 have no body; 100 Continue and 103 are interim responses of the final one', () => {
    const ex = exchanges(
      run([
        { dir: 0, data: 'DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n' },
        { dir: 1, data: 'HTTP/1.1 204 No Content\r\n\r\n' },
        { dir: 0, data: 'GET /y HTTP/1.1\r\nHost: h\r\nIf-None-Match: "a"\r\n\r\n' },
        { dir: 1, data: 'HTTP/1.1 304 Not Modified\r\nETag: "a"\r\n\r\n' },
        { dir: 0, data: 'PUT /z HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n' },
        { dir: 1, data: 'HTTP/1.1 100 Continue\r\n\r\n' },
        { dir: 0, data: 'ok' },
        { dir: 1, data: 'HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n' + OK('done') },
      ]),
    );
    assert.deepStrictEqual(ex.map((x) => [x.request!.method, x.response!.status, x.response!.body.toString()]), [['DELETE', 204, ''], ['GET', 304, ''], ['PUT', 200, 'done']]);
    assert.deepStrictEqual(ex[2]!.response!.interim.map((i) => i.status), [100, 103]);
    assert.strictEqual(ex[2]!.request!.body.toString(), 'ok');
  });

  it('a body read until the close (HTTP/1.0, no length) completes at the connection end', () => {
    const ev = run([{ dir: 0, data: 'GET / HTTP/1.0\r\n\r\n' }, { dir: 1, data: 'HTTP/1.0 200 ok\r\nContent-Type: text/html\r\n\r\n<p>' }, { dir: 1, data: 'hi</p>' }]);
    const ex = exchanges(ev);
    assert.strictEqual(ex.length, 1);
    assert.strictEqual(ex[0]!.protocol, 'HTTP/1.0');
    assert.strictEqual(ex[0]!.response!.body.toString(), '<p>hi</p>');
    assert.ok(ex[0]!.response!.complete);
  });

  it('Upgrade: websocket: the 101 ends HTTP; what follows is shown as bytes, not parsed', () => {
    const ev = run([
      { dir: 0, data: 'GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n' },
      { dir: 1, data: 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi' },
      { dir: 0, data: '\x81\x82abcdXY' },
    ]);
    const ex = exchanges(ev);
    assert.strictEqual(ex.length, 1);
    assert.strictEqual(ex[0]!.response!.status, 101);
    assert.strictEqual(ex[0]!.switchedTo, 'websocket');
    const raw = data(ev);
    assert.deepStrictEqual(raw.map((d) => [d.dir, d.data.toString('latin1')]), [[1, '\x81\x02hi'], [0, '\x81\x82abcdXY']]);
    assert.ok(raw.every((d) => d.why.includes('websocket')));
  });

  it('an Upgrade request answered with 200 stays HTTP/1', () => {
    const ex = exchanges(
      run([
        { dir: 0, data: 'GET /u HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n' },
        { dir: 1, data: OK('no') },
        { dir: 0, data: 'GET /next HTTP/1.1\r\nHost: h\r\n\r\n' },
        { dir: 1, data: OK('yes') },
      ]),
    );
    assert.deepStrictEqual(ex.map((x) => x.response!.body.toString()), ['no', 'yes']);
  });

  it('CONNECT: a 200 opens a tunnel whose bytes are shown raw', () => {
    const ev = run([
      { dir: 0, data: 'CONNECT db.test:5432 HTTP/1.1\r\nHost: db.test:5432\r\n\r\n' },
      { dir: 1, data: 'HTTP/1.1 200 Connection established\r\n\r\n' },
      { dir: 0, data: 'tunnelled bytes' },
    ]);
    assert.strictEqual(exchanges(ev)[0]!.switchedTo, 'a tunnel to db.test:5432');
    assert.deepStrictEqual(data(ev).map((d) => d.data.toString()), ['tunnelled bytes']);
  });

  it('bytes missing inside a body of known length are stepped over: the exchange is marked, the next one parses', () => {
    const body = 'x'.repeat(100);
    const ev = run([
      { dir: 0, data: GET + 'GET /b HTTP/1.1\r\nHost: h\r\n\r\n' },
      { dir: 1, data: `HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n${body.slice(0, 30)}` },
      { dir: 1, skip: 50, cut: true },
      { dir: 1, data: body.slice(80) + OK('second') },
    ]);
    const ex = exchanges(ev);
    assert.strictEqual(ex.length, 2);
    assert.strictEqual(ex[0]!.response!.body.length, 50);
    assert.strictEqual(ex[0]!.response!.bodyMissing, 50);
    assert.strictEqual(ex[0]!.response!.complete, false);
    assert.match(ex[0]!.response!.notes.join(), /50 bytes of the body at offset \d+ were not captured \(past the --call-cap\)/);
    assert.strictEqual(ex[1]!.response!.body.toString(), 'second');
  });

  it('a gap in a head: the message is cut, HTTP resumes at the next call that starts a request, responses pair only after it', () => {
    const ev = run([
      { dir: 0, data: 'GET /one HTTP/1.1\r\nHo' },
      { dir: 0, skip: 20 },
      { dir: 1, data: OK('answer to one') },
      { dir: 0, data: 'GET /two HTTP/1.1\r\nHost: h\r\n\r\n' },
      { dir: 1, data: OK('answer to two') },
    ]);
    const ex = exchanges(ev);
    // The response to the cut request is shown without a request: never paired with /two.
    assert.deepStrictEqual(ex.map((x) => [x.request?.target, x.response?.body.toString()]), [[undefined, 'answer to one'], ['/two', 'answer to two']]);
    assert.match(ex[0]!.notes.join(), /a response to a request that was not seen/);
    // Nothing hidden: the cut head is shown as bytes.
    assert.deepStrictEqual(data(ev).map((d) => d.data.toString()), ['GET /one HTTP/1.1\r\nHo']);
    assert.ok(notes(ev).some((n) => /20 bytes sent at offset 21 were not captured/.test(n)));
  });

  it('a request lost on a pipelined connection: later requests are never paired with the wrong response', () => {
    const ev = run([
      { dir: 0, data: 'GET /1 HTTP/1.1\r\nHost: h\r\n\r\n' },
      { dir: 0, skip: 30 },
      { dir: 0, data: 'GET /3 HTTP/1.1\r\nHost: h\r\n\r\n' },
      { dir: 1, data: OK('r1') + OK('r2') + OK('r3') },
    ]);
    const ex = exchanges(ev);
    // /1 was sent before the loss: the first response is its. After that, no pair is sure.
    const pairs = ex.filter((x) => x.request && x.response).map((x) => [x.request!.target, x.response!.body.toString()]);
    assert.deepStrictEqual(pairs, [['/1', 'r1']], JSON.stringify(ex.map((x) => [x.request?.target, x.response?.body.toString()])));
    assert.deepStrictEqual(ex.filter((x) => !x.request).map((x) => x.response!.body.toString()), ['r2', 'r3']);
    assert.deepStrictEqual(ex.filter((x) => !x.response).map((x) => x.request!.target), ['/3']);
    assert.ok(notes(ev).some((n) => /can no longer be paired/.test(n)));
  });

  it('a connection joined mid-stream: bytes before the first whole request are shown raw, then exchanges', () => {
    const ev = run(
      [
        { dir: 1, data: 'tail of an earlier body' },
        { dir: 0, data: GET },
        { dir: 1, data: OK('fresh') },
      ],
      { midStream: true },
    );
    const ex = exchanges(ev);
    assert.deepStrictEqual(ex.map((x) => x.response!.body.toString()), ['fresh']);
    assert.deepStrictEqual(data(ev).map((d) => d.data.toString()), ['tail of an earlier body']);
  });

  it('not HTTP: every byte is shown raw, in order', () => {
    const ev = run([{ dir: 1, data: '220 smtp.test ESMTP\r\n' }, { dir: 0, data: 'EHLO me\r\n' }]);
    assert.deepStrictEqual(exchanges(ev), []);
    assert.deepStrictEqual(data(ev).map((d) => d.data.toString()), ['220 smtp.test ESMTP\r\n', 'EHLO me\r\n']);
    assert.ok(ev.some((e) => e.type === 'protocol' && e.protocol === 'other'));
  });

  it('the server side: the request comes in, the response goes out', () => {
    const ex = exchanges(run([{ dir: 1, data: GET }, { dir: 0, data: OK('srv') }], { role: 'server', local: ['127.0.0.1', 8443], remote: ['127.0.0.1', 40000] }));
    assert.strictEqual(ex[0]!.conn.role, 'server');
    assert.strictEqual(ex[0]!.request!.target, '/a?x=1');
    assert.strictEqual(ex[0]!.response!.body.toString(), 'srv');
  });

  it('a connection that ends in the middle of a response: the exchange is handed out incomplete', () => {
    const ex = exchanges(run([{ dir: 0, data: GET }, { dir: 1, data: 'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345' }], { closeReason: 'process_exit' }));
    assert.strictEqual(ex.length, 1);
    assert.strictEqual(ex[0]!.response!.complete, false);
    assert.strictEqual(ex[0]!.response!.body.toString(), '12345');
    assert.match(ex[0]!.response!.notes.join(), /connection ended \(process_exit\)/);
  });

  it('a server that answers before it has read the request body (nginx return, 413): each answer pairs with its own request', () => {
    const body = 'x'.repeat(30000);
    const steps: Step[] = [];
    for (let i = 0; i < 3; i++) {
      steps.push({ dir: 1, data: `POST /u/${i} HTTP/1.1\r\nHost: h\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 1000)}` });
      steps.push({ dir: 0, data: OK(`ok${i}`) });
      steps.push({ dir: 1, data: body.slice(1000) });
    }
    // and one whose body never ends before the close: the answer still has its request
    steps.push({ dir: 1, data: `POST /u/3 HTTP/1.1\r\nHost: h\r\nContent-Length: ${body.length}\r\n\r\nxx` });
    steps.push({ dir: 0, data: 'HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\n\r\n' });
    const ex = exchanges(run(steps, { role: 'server' }));
    assert.deepStrictEqual(ex.map((x) => [x.request?.target, x.response?.status, x.response?.body.toString()]), [
      ['/u/0', 200, 'ok0'],
      ['/u/1', 200, 'ok1'],
      ['/u/2', 200, 'ok2'],
      ['/u/3', 413, ''],
    ]);
    assert.ok(ex.slice(0, 3).every((x) => x.request!.complete && x.request!.body.length === body.length));
  });
});

