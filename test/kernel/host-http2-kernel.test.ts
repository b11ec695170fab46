// host-http2-kernel.test.ts: the host library (helper/host/host.ts) over a real capture hands
// out HTTP/2 streams through the same 'exchange' callback as HTTP/1: curl --http2 and a node
// http2 client against nginx's TLS port, and both against a node http2 server that sends
// trailers; several streams at once on one connection, POST bodies, request and response
// trailers, each exchange seen from both ends with its pid, comm, 4-tuple and stream id. The
// ground truth is what the programs sent and got, and nginx's access log (client ports).
import * as assert from 'assert';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { Exchange, HelperHost } from '../../helper/host/host';
import { requireKernel } from '../lib/kernel';
import { CertPair, freePort, makeCert, NginxServer, pattern, run, Server, startNginx, startServer, stopAll, testLibFile, tmpDir, waitFor } from '../lib/servers';
import { IPC_CHILD } from '../lib/paths';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
/** The bodies of test/lib/h2_peer.js: n bytes of a-z (its responses) or A-Z (its POSTs). */
const az = (n: number, base = 97): Buffer => Buffer.from(Array.from({ length: n }, (_x, i) => base + (i % 26)));
const header = (h: [string, string][], name: string): string | undefined => h.find(([k]) => k === name)?.[1];

interface PeerResult {
  path: string;
  status: number;
  bytes: number;
  sha256: string;
  requestSha256?: string;
  trailers: Record<string, string>;
}

describe('host: HTTP/2 exchanges from a real capture (kernel, real programs)', function () {
  this.timeout(120_000);
  let dir: string;
  let cert: CertPair;
  let nginx: NginxServer;
  let node: Server;
  let host: HelperHost;
  const exchanges: Exchange[] = [];
  const errors: string[] = [];
  const files = { 'a.txt': pattern(3000, 31), 'dir/b.bin': pattern(70_000, 32) };
  const upload = pattern(20_000, 33);
  const peer = testLibFile('h2_peer.js');

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-host-h2-');
    cert = await makeCert(dir);
    nginx = await startNginx({
      dir: path.join(dir, 'nginx'),
      files,
      cert,
      http2: true,
      // POST /upload is proxied (to nginx itself, over HTTP/1.0): nginx reads the whole body
      // before it answers. A bare `return` answers at once and resets the stream (RST_STREAM
      // NO_ERROR, RFC 9113 8.1), so nginx's end of the stream would be cut or whole by a race.
      extraConf:
        '    location = /upload { client_max_body_size 1m; client_body_buffer_size 1m; proxy_pass https://127.0.0.1:$server_port/stored; proxy_ssl_verify off; }\n' +
        '    location = /stored { return 201 "stored\\n"; }\n',
    });
    const port = await freePort();
    node = await startServer(process.execPath, [peer, 'server', String(port), cert.cert, cert.key], port, dir);
    fs.writeFileSync(path.join(dir, 'upload.bin'), upload);
    host = new HelperHost({
      command: process.execPath,
      args: [IPC_CHILD, JSON.stringify({ validate: true, comms: ['curl', 'nginx', 'node'], ports: [nginx.port, node.port] })],
      validate: true,
    });
    host.on('exchange', (e) => exchanges.push(e));
    host.on('protocol_error', (e) => errors.push(e.message));
    host.on('error', (e) => errors.push(`${e.code}: ${e.message}`));
    await host.ready;
    await waitFor(() => host.stderr.includes('capturing TLS plaintext'), { timeoutMs: 30_000, what: `the helper to attach (stderr: ${host.stderr})` });
  });

  after(async () => {
    const bye = await host?.close();
    await stopAll();
    assert.deepStrictEqual(errors, []);
    if (host) assert.ok(bye, `bye; stderr: ${host.stderr}`);
  });

  const of = (pid: number): Exchange[] => exchanges.filter((e) => e.pid === pid);
  /** The exchanges of the other end of `e`'s connection (the same 4-tuple seen the other way). */
  const peersOf = (pid: number, e: Exchange): Exchange[] =>
    of(pid).filter((s) => s.localPort === e.remotePort && s.remotePort === e.localPort && s.localIp === e.remoteIp && s.remoteIp === e.localIp);
  const byStream = (l: Exchange[]): Exchange[] => [...l].sort((x, y) => x.streamId! - y.streamId!);

  /** Both ends: the same streams, headers, trailers and bodies, seen from each side. */
  function sameBothEnds(client: Exchange[], server: Exchange[]): void {
    assert.deepStrictEqual(byStream(server).map((e) => e.streamId), byStream(client).map((e) => e.streamId));
    byStream(client).forEach((c, i) => {
      const s = byStream(server)[i]!;
      assert.strictEqual(s.role, 'server');
      assert.strictEqual(s.protocol, 'HTTP/2');
      for (const k of ['method', 'url', 'authority', 'scheme'] as const) assert.strictEqual(s.request[k], c.request[k], `${k} of stream ${c.streamId}`);
      assert.deepStrictEqual(s.request.headers, c.request.headers);
      assert.deepStrictEqual(s.request.trailers, c.request.trailers);
      assert.ok(s.request.body.equals(c.request.body), `request body of stream ${c.streamId}`);
      assert.strictEqual(s.response.statusCode, c.response.statusCode);
      assert.deepStrictEqual(s.response.headers, c.response.headers);
      assert.deepStrictEqual(s.response.trailers, c.response.trailers);
      assert.ok(s.response.body.equals(c.response.body), `response body of stream ${c.streamId}`);
    });
  }

  function isHttp2(e: Exchange, comm: string, role: 'client' | 'server'): void {
    assert.strictEqual(e.protocol, 'HTTP/2');
    assert.strictEqual(e.comm, comm);
    assert.strictEqual(e.role, role);
    assert.strictEqual(e.streamId! % 2, 1, 'a stream the client opened');
    assert.deepStrictEqual([e.request.versionMajor, e.request.versionMinor, e.response.versionMajor, e.response.versionMinor], [2, 0, 2, 0]);
    assert.strictEqual(e.request.raw, undefined);
    assert.strictEqual(e.response.statusMessage, '');
    assert.ok(e.fd >= 0 && e.localIp === '127.0.0.1' && e.remoteIp === '127.0.0.1' && e.localPort > 0 && e.remotePort > 0, `socket ${e.fd} ${e.localIp}:${e.localPort} ${e.remoteIp}:${e.remotePort}`);
    assert.ok(e.request.tsNs <= e.request.endNs && e.request.tsNs <= e.response.endNs && e.response.tsNs <= e.response.endNs);
    assert.ok(!e.request.headers.some(([k]) => k.startsWith(':')) && !e.response.headers.some(([k]) => k.startsWith(':')), 'pseudo-headers are fields of their own');
  }

  /** Access log lines of nginx: "ip:port METHOD uri status bytes connection requests". */
  const accessLog = (): { port: number; method: string; uri: string; status: number; conn: number }[] =>
    fs.readFileSync(nginx.accessLog, 'utf8').trim().split('\n').filter(Boolean).map((l) => {
      const [addr, method, uri, status, , conn] = l.split(' ');
      return { port: Number(addr!.split(':').pop()), method: method!, uri: uri!, status: Number(status), conn: Number(conn) };
    });

  it('curl --http2 against nginx: three streams at once on one connection, and a POST; both ends', async () => {
    const u = (p: string): string => `https://127.0.0.1:${nginx.port}${p}`;
    const get = await run('curl', ['-sS', '-k', '--http2', '-Z', '--noproxy', '*', '-o', '/dev/null', '-o', '/dev/null', '-o', '/dev/null', u('/a.txt'), u('/dir/b.bin'), u('/a.txt?again=1')]);
    assert.strictEqual(get.code, 0, get.stderr.toString());
    const post = await run('curl', ['-sS', '-k', '--http2', '--noproxy', '*', '--data-binary', `@${path.join(dir, 'upload.bin')}`, '-H', 'content-type: application/octet-stream', u('/upload')]);
    assert.strictEqual(post.code, 0, post.stderr.toString());
    assert.strictEqual(post.stdout.toString(), 'stored\n');
    const worker = nginx.workerPids()[0]!;
    await waitFor(() => of(get.pid).length >= 3 && of(post.pid).length >= 1 && peersOf(worker, of(get.pid)[0]!).length >= 3 && peersOf(worker, of(post.pid)[0]!).length >= 1, {
      timeoutMs: 15_000,
      what: `the exchanges of both curls and of nginx (have ${exchanges.map((e) => `${e.comm}[${e.pid}] ${e.protocol} ${e.streamId}`).join(', ')})`,
    });

    const gets = byStream(of(get.pid));
    assert.strictEqual(gets.length, 3);
    assert.strictEqual(new Set(gets.map((e) => e.connId)).size, 1, 'one connection');
    for (const e of gets) {
      isHttp2(e, 'curl', 'client');
      assert.strictEqual(e.request.method, 'GET');
      assert.strictEqual(e.request.authority, `127.0.0.1:${nginx.port}`);
      assert.strictEqual(e.request.scheme, 'https');
      assert.strictEqual(e.remotePort, nginx.port);
      assert.strictEqual(e.response.statusCode, 200);
      assert.ok(header(e.request.headers, 'user-agent')?.startsWith('curl/'));
      assert.strictEqual(header(e.response.headers, 'server')?.split('/')[0], 'nginx');
    }
    const body = (url: string): Buffer => gets.find((e) => e.request.url === url)!.response.body;
    assert.ok(body('/a.txt').equals(files['a.txt']) && body('/a.txt?again=1').equals(files['a.txt']));
    assert.ok(body('/dir/b.bin').equals(files['dir/b.bin']), 'a body over many DATA frames, whole');
    assert.deepStrictEqual(gets.map((e) => e.streamId), [1, 3, 5]);

    const [p] = of(post.pid);
    isHttp2(p!, 'curl', 'client');
    assert.strictEqual(p!.request.method, 'POST');
    assert.strictEqual(p!.request.url, '/upload');
    assert.ok(p!.request.body.equals(upload), `the ${upload.length} bytes curl sent, byte for byte (got ${p!.request.body.length})`);
    assert.strictEqual(header(p!.request.headers, 'content-length'), String(upload.length));
    assert.strictEqual(p!.response.statusCode, 201);
    assert.strictEqual(p!.response.body.toString(), 'stored\n');

    // nginx's side: the same streams on the other end of each connection, as its log says.
    sameBothEnds(gets, peersOf(worker, gets[0]!));
    sameBothEnds([p!], peersOf(worker, p!));
    for (const e of [...peersOf(worker, gets[0]!), ...peersOf(worker, p!)]) isHttp2(e, 'nginx', 'server');
    const log = accessLog();
    const logged = (e: Exchange): string[] => log.filter((l) => l.port === e.localPort).map((l) => `${l.method} ${l.uri} ${l.status}`).sort();
    assert.deepStrictEqual(logged(gets[0]!), ['GET /a.txt 200', 'GET /a.txt?again=1 200', 'GET /dir/b.bin 200']);
    assert.strictEqual(new Set(log.filter((l) => l.port === gets[0]!.localPort).map((l) => l.conn)).size, 1, 'nginx too saw one connection');
    assert.deepStrictEqual(logged(p!), ['POST /upload 201']);
  });

  it('a node http2 client against nginx: four streams at once on one session, one a POST; both ends', async () => {
    const reqs = [{ method: 'GET', path: '/a.txt' }, { method: 'GET', path: '/dir/b.bin' }, { method: 'POST', path: '/upload', size: 25_000 }, { method: 'GET', path: '/a.txt?n=2' }];
    const r = await run(process.execPath, [peer, 'client', String(nginx.port), JSON.stringify(reqs)]);
    assert.strictEqual(r.code, 0, r.stderr.toString());
    const results = JSON.parse(r.stdout.toString()) as PeerResult[];
    assert.deepStrictEqual(results.map((x) => x.status), [200, 200, 201, 200]);
    const worker = nginx.workerPids()[0]!;
    await waitFor(() => of(r.pid).length >= 4 && peersOf(worker, of(r.pid)[0]!).length >= 4, {
      timeoutMs: 15_000,
      what: `the node client's four exchanges and nginx's (have ${exchanges.map((e) => `${e.comm}[${e.pid}] ${e.request.url}`).join(', ')})`,
    });
    const mine = byStream(of(r.pid));
    assert.strictEqual(mine.length, 4);
    assert.strictEqual(new Set(mine.map((e) => e.connId)).size, 1, 'one session, one connection');
    for (const e of mine) {
      isHttp2(e, 'node', 'client');
      assert.strictEqual(header(e.request.headers, 'x-test'), 'h2-host');
      const got = results.find((x) => x.path === e.request.url)!;
      assert.strictEqual(e.response.statusCode, got.status);
      assert.strictEqual(sha(e.response.body), got.sha256, `the body node got for ${e.request.url}`);
    }
    const post = mine.find((e) => e.request.method === 'POST')!;
    assert.strictEqual(post.request.body.length, 25_000);
    assert.ok(post.request.body.equals(az(25_000, 65)), 'the POST body node sent');
    assert.deepStrictEqual(
      mine.map((e) => e.streamId),
      [1, 3, 5, 7],
    );
    sameBothEnds(mine, peersOf(worker, mine[0]!));
    assert.deepStrictEqual(
      accessLog().filter((l) => l.port === mine[0]!.localPort).map((l) => `${l.method} ${l.uri}`).sort(),
      ['GET /a.txt', 'GET /a.txt?n=2', 'GET /dir/b.bin', 'POST /upload'],
    );
  });

  it('trailers: curl --http2 and a node client against a node http2 server that sends them; request trailers too', async () => {
    const c = await run('curl', ['-sS', '-k', '--http2', '--noproxy', '*', '-o', '/dev/null', `https://127.0.0.1:${node.port}/az?size=5000`]);
    assert.strictEqual(c.code, 0, c.stderr.toString());
    const reqs = [{ method: 'POST', path: '/echo', size: 30_000, trailer: 'from-node' }, { method: 'GET', path: '/az?size=100000' }, { method: 'POST', path: '/echo', size: 10 }];
    const r = await run(process.execPath, [peer, 'client', String(node.port), JSON.stringify(reqs)]);
    assert.strictEqual(r.code, 0, r.stderr.toString());
    const results = JSON.parse(r.stdout.toString()) as PeerResult[];
    assert.strictEqual(results[0]!.trailers['x-got-trailer'], 'from-node', 'the server got the request trailer');
    await waitFor(() => of(c.pid).length >= 1 && of(r.pid).length >= 3 && of(node.pid).length >= 4, {
      timeoutMs: 15_000,
      what: `curl's, the node client's and the node server's exchanges (have ${exchanges.map((e) => `${e.comm}[${e.pid}] ${e.request.url}`).join(', ')})`,
    });

    const [ce] = of(c.pid);
    isHttp2(ce!, 'curl', 'client');
    assert.ok(ce!.response.body.equals(az(5000)));
    assert.deepStrictEqual(ce!.response.trailers, [['x-body-sha256', sha(az(5000))]]);
    sameBothEnds([ce!], peersOf(node.pid, ce!));

    const mine = byStream(of(r.pid));
    assert.strictEqual(mine.length, 3);
    assert.strictEqual(new Set(mine.map((e) => e.connId)).size, 1);
    for (const e of mine) isHttp2(e, 'node', 'client');
    const [echo, big, small] = [mine.find((e) => e.request.body.length === 30_000)!, mine.find((e) => e.request.method === 'GET')!, mine.find((e) => e.request.body.length === 10)!];
    assert.ok(echo.request.body.equals(az(30_000, 65)) && echo.response.body.equals(echo.request.body), 'the POST body and its echo');
    assert.deepStrictEqual(echo.request.trailers, [['x-client-trailer', 'from-node']]);
    assert.deepStrictEqual(echo.response.trailers, [['x-body-sha256', sha(az(30_000, 65))], ['x-request-sha256', sha(az(30_000, 65))], ['x-got-trailer', 'from-node']]);
    assert.deepStrictEqual(small.request.trailers, []);
    assert.strictEqual(header(small.response.trailers, 'x-got-trailer'), 'none');
    assert.ok(big.response.body.equals(az(100_000)));
    assert.strictEqual(header(big.response.trailers, 'x-body-sha256'), results[1]!.sha256);
    const server = peersOf(node.pid, mine[0]!);
    for (const e of server) isHttp2(e, 'node', 'server');
    sameBothEnds(mine, server);
  });

  it('an HTTP/1.1 exchange through the same callback has the same fields (raw added, no stream id)', async () => {
    const h1 = await run('curl', ['-sS', '-k', '--http1.1', '--noproxy', '*', '-o', '/dev/null', `https://127.0.0.1:${nginx.port}/a.txt`]);
    const h2 = await run('curl', ['-sS', '-k', '--http2', '--noproxy', '*', '-o', '/dev/null', `https://127.0.0.1:${nginx.port}/a.txt`]);
    assert.strictEqual(h1.code, 0, h1.stderr.toString());
    assert.strictEqual(h2.code, 0, h2.stderr.toString());
    await waitFor(() => of(h1.pid).length > 0 && of(h2.pid).length > 0, { what: 'both exchanges' });
    const [a, b] = [of(h1.pid)[0]!, of(h2.pid)[0]!];
    assert.strictEqual(a.protocol, 'HTTP/1.1');
    assert.strictEqual(b.protocol, 'HTTP/2');
    const keys = (o: object, drop: string[]): string[] => Object.keys(o).filter((k) => !drop.includes(k)).sort();
    assert.deepStrictEqual(keys(a, []), keys(b, ['streamId']));
    assert.deepStrictEqual(keys(a.request, ['raw']), keys(b.request, []));
    assert.deepStrictEqual(keys(a.response, ['raw']), keys(b.response, []));
    for (const e of [a, b]) {
      assert.strictEqual(e.request.authority, `127.0.0.1:${nginx.port}`);
      assert.strictEqual(e.request.url, '/a.txt');
      assert.ok(e.response.body.equals(files['a.txt']));
      assert.strictEqual(e.remotePort, nginx.port);
    }
    assert.strictEqual(a.response.statusMessage, 'OK');
    assert.ok(a.request.raw!.toString().startsWith('GET /a.txt HTTP/1.1\r\n'));
  });
});

