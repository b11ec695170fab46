// capture.test.ts: the kernel path end to end, against real programs on loopback: what was
// captured must be byte-identical to what was sent, on both ends of each exchange.
import * as assert from 'assert';
import { DataRecord } from '../../helper/records/records';
import { Recorder, requireKernel } from '../lib/kernel';
import {
  CertPair,
  curl,
  makeCert,
  NginxServer,
  pattern,
  pyClient,
  run,
  Server,
  startNginx,
  startPyProxy,
  startPyServer,
  startSServer,
  tmpDir,
  waitFor,
} from '../lib/servers';
import { cleanUpAfter } from '../lib/hooks';

const MiB = 1 << 20;

describe('capture (kernel, real programs)', function () {
  let dir: string;
  let cert: CertPair;
  let nginx: NginxServer;
  let py: Server;
  let rec: Recorder | undefined;

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-test-');
    cert = await makeCert(dir);
    nginx = await startNginx({ dir: `${dir}/nginx`, files: { 'big.bin': pattern(MiB, 7), 'mid.bin': pattern(64 << 10, 9), 'small.txt': Buffer.from('hello\n') }, cert });
    py = await startPyServer({ dir, ...cert });
  });

  afterEach(async () => {
    if (rec) await rec.stop();
    rec = undefined;
  });

  cleanUpAfter(() => dir);

  /** Waits until the records of pid/dir hold at least n bytes. */
  const until = (r: Recorder, pid: number, dir: 'egress' | 'ingress', n: number): Promise<boolean> =>
    waitFor(() => r.bytes(pid, dir) >= n, { timeoutMs: 10000, what: `${n} bytes of pid ${pid} ${dir}` });

  it('curl <-> nginx: a 1 MiB response, identical on both ends', async () => {
    rec = new Recorder();
    const res = await curl(`https://127.0.0.1:${nginx.port}/big.bin`);
    assert.strictEqual(res.code, 0, res.stderr.toString());
    assert.ok(res.stdout.equals(pattern(MiB, 7)), 'curl got the file');
    const worker = nginx.workerPids()[0]!;
    await until(rec, res.pid, 'ingress', MiB);
    await until(rec, worker, 'egress', MiB);
    const settled = await rec.settle({ pid: res.pid }, { pid: worker });

    const request = rec.stream(res.pid, 'egress');
    const response = rec.stream(res.pid, 'ingress');
    assert.match(request.toString(), /^GET \/big\.bin HTTP\/1\.1\r\nHost: 127\.0\.0\.1:\d+\r\n/);
    assert.match(response.subarray(0, 20).toString(), /^HTTP\/1\.1 200 OK\r\n/);
    assert.ok(response.subarray(response.length - MiB).equals(pattern(MiB, 7)), 'response body is the file, byte for byte');
    // The server's side of the same connection.
    assert.ok(rec.stream(worker, 'ingress').equals(request), `nginx read exactly what curl wrote (${settled})`);
    assert.ok(rec.stream(worker, 'egress').equals(response), `curl read exactly what nginx wrote (${settled})`);
    const k = await rec.stop();
    assert.strictEqual(k.bytesLost + k.bytesFaulted + k.callsMissed, 0, 'nothing lost');
    assert.ok(rec.of(res.pid).every((r) => r.comm === 'curl' && r.tid === res.pid));
  });

  it('a 256 KiB ring goes round 20 times under 40 responses of 64 KiB: records that cross its end arrive whole, in place', async () => {
    // The bridge maps the ring's data once (not twice, as libbpf's reader does), so a record
    // that crosses the end is put together from two pieces: every record must still be the
    // bytes nginx sent at its offset. One response (nginx's four 16 KiB calls, curl's reads)
    // fits in the ring, and the next waits for curl's request, so the reader keeps up: losses
    // would leave gaps, but what arrives must be exact either way.
    rec = new Recorder({ ringBytes: 256 << 10, shedFill: 1 });
    const url = `https://127.0.0.1:${nginx.port}/mid.bin`;
    const urls = Array.from({ length: 40 }, () => url);
    // -D -: each response's head before its body on stdout, so stdout is what nginx wrote.
    const res = await curl(urls[0]!, ['-D', '-', ...urls.slice(1)]);
    assert.strictEqual(res.code, 0, res.stderr.toString());
    const sent = res.stdout;
    assert.ok(sent.length > 40 * (64 << 10), `curl got ${sent.length} bytes`);
    const worker = nginx.workerPids()[0]!;
    await waitFor(() => rec!.conns.some((c) => c.pid === res.pid && c.kind === 'close'), { what: "the end of curl's connection" });
    const k = await rec.stop();
    const recs = [...rec.of(worker, 'egress'), ...rec.of(res.pid, 'ingress')];
    const got = recs.reduce((n, r) => n + r.data.length, 0);
    for (const r of recs) {
      assert.ok(r.data.equals(sent.subarray(r.seq, r.seq + r.data.length)), `pid ${r.pid} ${r.dir}: record at offset ${r.seq} (${r.data.length} bytes) is what nginx sent there`);
    }
    const wrapped = rec.capture.ringStats().wrapped;
    process.stderr.write(`      ${got} of ${2 * sent.length} bytes arrived, ${wrapped} records crossed the ring's end, ${k.bytesLost} lost\n`);
    assert.ok(wrapped > 0, 'some records crossed the end of the ring');
    assert.ok(got >= sent.length, `only ${got} bytes arrived of ${2 * sent.length}`);
    // Exact books for the whole capture: every byte is captured or lost, and what arrived was captured.
    assert.strictEqual(k.bytesMoved, k.bytesCaptured + k.bytesShed + k.bytesTruncated + k.bytesLost + k.bytesFaulted + k.bytesRateLimited);
    assert.ok(got <= k.bytesCaptured, `${got} bytes arrived, ${k.bytesCaptured} captured`);
  });

  it('python http.client <-> python server: 1 MiB each way, each a whole call', async () => {
    rec = new Recorder();
    const body = pattern(MiB, 3);
    const res = await pyClient(`https://127.0.0.1:${py.port}/echo`, { method: 'POST', body });
    assert.strictEqual(res.code, 0, res.stderr.toString());
    assert.ok(res.stdout.equals(body));
    await until(rec, res.pid, 'ingress', MiB);
    await until(rec, py.pid, 'egress', MiB);
    const settled = await rec.settle({ pid: res.pid }, { pid: py.pid });

    const sent = rec.stream(res.pid, 'egress');
    const got = rec.stream(res.pid, 'ingress');
    assert.ok(sent.subarray(sent.length - MiB).equals(body), 'the request body, byte for byte');
    assert.ok(got.subarray(got.length - MiB).equals(body), 'the echoed body, byte for byte');
    assert.ok(rec.stream(py.pid, 'ingress').equals(sent), settled);
    assert.ok(rec.stream(py.pid, 'egress').equals(got), settled);
    // A 1 MiB write arrives whole: one call, in 64 records of 16 KiB with consecutive chunk offsets.
    for (const pid of [res.pid, py.pid]) {
      const whole: DataRecord[] = rec.of(pid, 'egress').filter((r) => r.callLen === MiB);
      assert.strictEqual(whole.length, 64, `pid ${pid}: one 1 MiB call in 64 records`);
      assert.deepStrictEqual(whole.map((r) => r.chunkOff), [...Array(64).keys()].map((i) => i * 16384));
      assert.ok(whole.every((r) => !r.truncated && r.capLen === MiB));
    }
  });

  it('wget (GnuTLS) <-> nginx: a 1 MiB response, identical on both ends, with its socket', async () => {
    rec = new Recorder({ comms: ['wget', 'nginx'] });
    const res = await run('wget', ['-q', '--no-check-certificate', '--no-proxy', '-O', '-', `https://127.0.0.1:${nginx.port}/big.bin`]);
    assert.strictEqual(res.code, 0, res.stderr.toString());
    assert.ok(res.stdout.equals(pattern(MiB, 7)));
    const worker = nginx.workerPids()[0]!;
    await until(rec, res.pid, 'ingress', MiB);
    const request = rec.stream(res.pid, 'egress');
    const response = rec.stream(res.pid, 'ingress');
    assert.match(request.toString(), /^GET \/big\.bin HTTP\/1\.1\r\n/);
    assert.ok(response.subarray(response.length - MiB).equals(pattern(MiB, 7)));
    assert.ok(rec.of(res.pid).every((r) => r.func === 'gnutls_record_send' || r.func === 'gnutls_record_recv'));
    const mine = rec.of(res.pid)[0]!.sock;
    assert.ok(mine.fd >= 0 && mine.remotePort === nginx.port && mine.remoteIp === '127.0.0.1', JSON.stringify(mine));
    // nginx's side of the same connection (its peer port is wget's local port).
    const server = rec.of(worker).filter((r) => r.sock.remotePort === mine.localPort);
    const ids = [...new Set(server.map((r) => r.connId))];
    assert.strictEqual(ids.length, 1);
    const settled = await rec.settle({ pid: res.pid }, { pid: worker, connId: ids[0] });
    assert.ok(rec.stream(worker, 'ingress', ids[0]).equals(rec.stream(res.pid, 'egress')), settled);
    assert.ok(rec.stream(worker, 'egress', ids[0]).equals(rec.stream(res.pid, 'ingress')), settled);
  });

  it('openssl s_client <-> s_server -www: the SSL BIO path is captured', async () => {
    const server = await startSServer({ dir, ...cert, mode: 'www' });
    rec = new Recorder();
    const res = await run('openssl', ['s_client', '-connect', `127.0.0.1:${server.port}`, '-quiet'], {
      input: Buffer.from('GET /status HTTP/1.0\r\n\r\n'),
    });
    assert.match(res.stdout.toString(), /HTTP\/1\.0 200 ok/);
    await until(rec, server.pid, 'egress', res.stdout.length);
    await until(rec, res.pid, 'ingress', res.stdout.length);
    const request = rec.stream(res.pid, 'egress');
    assert.strictEqual(request.toString(), 'GET /status HTTP/1.0\r\n\r\n');
    assert.ok(rec.stream(server.pid, 'ingress').equals(request));
    const page = rec.stream(server.pid, 'egress');
    assert.ok(page.equals(rec.stream(res.pid, 'ingress')));
    assert.ok(page.equals(res.stdout), 's_client printed exactly the captured bytes');
    await server.stop();
  });

  it('exported-function probes: SSL_write/SSL_read (curl) and SSL_write_ex/SSL_read_ex (python)', async () => {
    rec = new Recorder({ mode: 'exported' });
    const a = await curl(`https://127.0.0.1:${nginx.port}/small.txt`);
    const body = pattern(200000, 5);
    const b = await pyClient(`https://127.0.0.1:${py.port}/echo`, { method: 'POST', body });
    assert.strictEqual(a.code, 0);
    assert.strictEqual(b.code, 0);
    await until(rec, a.pid, 'ingress', 6);
    await until(rec, b.pid, 'ingress', body.length);
    const funcs = (pid: number): string[] => [...new Set(rec!.of(pid).map((r) => r.func))].sort();
    assert.deepStrictEqual(funcs(a.pid), ['SSL_read', 'SSL_write']);
    assert.deepStrictEqual(funcs(b.pid), ['SSL_read_ex', 'SSL_write_ex']);
    assert.ok(rec.stream(a.pid, 'ingress').toString().endsWith('\r\n\r\nhello\n'));
    const got = rec.stream(b.pid, 'ingress');
    assert.ok(got.subarray(got.length - body.length).equals(body));
  });

  it('a call past the per-call cap is marked, says its full length, and the offsets stay exact', async () => {
    rec = new Recorder({ callCap: 100000 });
    // Two responses on one keep-alive connection: 1 MiB (capped), then 10 bytes (curl()
    // puts its own URL last).
    const res = await curl(`https://127.0.0.1:${py.port}/bytes/10?seed=2`, [
      '-o', '/dev/null', `https://127.0.0.1:${py.port}/bytes/${MiB}?seed=1`,
    ]);
    assert.strictEqual(res.code, 0, res.stderr.toString());
    await waitFor(() => rec!.of(py.pid, 'egress').some((r) => r.callLen === 10), { what: 'second response' });
    const out = rec.of(py.pid, 'egress');
    const big = out.filter((r) => r.callLen === MiB);
    assert.ok(big.length > 0 && big.every((r) => r.truncated && r.capLen === 100000));
    assert.strictEqual(big.reduce((n, r) => n + r.data.length, 0), 100000, 'exactly the cap was captured');
    assert.ok(Buffer.concat(big.map((r) => r.data)).equals(pattern(MiB, 1).subarray(0, 100000)));
    // Every call's offset is the previous call's offset plus its full length, cap or not.
    const calls = out.filter((r) => r.chunkOff === 0);
    for (let i = 1; i < calls.length; i++) assert.strictEqual(calls[i]!.seq, calls[i - 1]!.seq + calls[i - 1]!.callLen);
    const last = calls[calls.length - 1]!;
    assert.strictEqual(last.data.toString(), pattern(10, 2).toString());
    const k = await rec.stop();
    assert.ok(k.bytesTruncated >= MiB - 100000, `counted ${k.bytesTruncated} truncated bytes`);
  });

  it('TLS inside TLS: curl through an HTTPS proxy, the tunnelled exchange in plaintext and the proxy connection, each on its own', async () => {
    const proxy = await startPyProxy({ dir, ...cert });
    rec = new Recorder();
    const size = 200_000;
    // Not curl(): its --noproxy '*' (never leave loopback) would bypass the proxy.
    const res = await run('curl', ['-sS', '-k', '--http1.1', '--proxy', `https://127.0.0.1:${proxy.port}`, '--proxy-insecure', `https://127.0.0.1:${py.port}/bytes/${size}?seed=8`]);
    assert.strictEqual(res.code, 0, res.stderr.toString());
    assert.ok(res.stdout.equals(pattern(size, 8)), 'curl got the body through the proxy');
    // curl's TLS session with the server runs inside its TLS session with the proxy: each of
    // its calls on the first makes calls on the second from inside (its BIO writes into it).
    const byStart = (prefix: string): bigint | undefined =>
      rec!.connections(res.pid).find((c) => rec!.of(res.pid, 'egress').find((r) => r.connId === c && r.seq === 0)?.data.toString().startsWith(prefix));
    const tunnel = await waitFor(() => byStart(`GET /bytes/${size}?seed=8 HTTP/1.1\r\n`), { what: 'the tunnelled request in plaintext' });
    const toProxy = await waitFor(() => byStart(`CONNECT 127.0.0.1:${py.port} HTTP/1.1\r\n`), { what: 'the CONNECT to the proxy' }).catch((e: Error) => {
      const firsts = rec!.connections(res.pid).map((c) => `${c}: ${JSON.stringify(rec!.of(res.pid).filter((r) => r.connId === c).slice(0, 3).map((r) => [r.dir, r.seq, r.data.subarray(0, 60).toString('latin1')]))}`);
      throw new Error(`${e.message}; curl's connections: ${firsts.join('; ')}`);
    });
    assert.strictEqual(rec.connections(res.pid).length, 2, 'two connections: to the proxy, and through it');
    // The response's records may still be on their way from the ring when the request's are
    // in: both ends at 0 bytes would look settled.
    await waitFor(() => rec!.bytes(res.pid, 'ingress', tunnel) >= size, { what: 'the tunnelled response' });
    const settled = await rec.settle({ pid: res.pid, connId: tunnel }, { pid: py.pid });
    const request = rec.stream(res.pid, 'egress', tunnel);
    const response = rec.stream(res.pid, 'ingress', tunnel);
    assert.match(response.subarray(0, 17).toString(), /^HTTP\/1\.[01] 200 OK/);
    assert.ok(response.subarray(response.length - size).equals(pattern(size, 8)), 'the tunnelled response body, byte for byte');
    assert.ok(rec.stream(py.pid, 'ingress').equals(request), `the server read what curl wrote in the tunnel (${settled})`);
    assert.ok(rec.stream(py.pid, 'egress').equals(response), `curl read what the server wrote (${settled})`);
    // The tunnel's socket is the proxy connection's: that is where its bytes went.
    const sock = rec.of(res.pid).find((r) => r.connId === tunnel)!.sock;
    assert.strictEqual(sock.remotePort, proxy.port, `the tunnel is carried by the socket to the proxy (${JSON.stringify(sock)})`);
    // The proxy connection carries the CONNECT, then the tunnel's TLS records (not plaintext).
    const outer = rec.stream(res.pid, 'egress', toProxy);
    assert.ok(outer.length > request.length, 'the proxy connection carried the tunnel');
    assert.ok(!outer.includes(`GET /bytes/${size}`), 'the tunnelled request is not in the clear on the proxy connection');
    const k = await rec.stop();
    assert.strictEqual(k.callsMissed, 0, 'no call missed');
    assert.strictEqual(k.bytesLost + k.bytesFaulted, 0, 'nothing lost');
    await proxy.stop();
  });

  it('filters by process name and by pid, inside BPF', async () => {
    rec = new Recorder({ comms: ['curl'] });
    const a = await curl(`https://127.0.0.1:${nginx.port}/small.txt`);
    const b = await pyClient(`https://127.0.0.1:${py.port}/bytes/100`);
    await until(rec, a.pid, 'ingress', 6);
    assert.strictEqual(b.code, 0);
    await rec.stop();
    assert.strictEqual(rec.of(b.pid).length + rec.of(py.pid).length + rec.of(nginx.workerPids()[0]!).length, 0, 'only curl');

    rec = new Recorder({ pids: [py.pid] });
    const c = await pyClient(`https://127.0.0.1:${py.port}/bytes/100`);
    await until(rec, py.pid, 'egress', 100);
    await rec.stop();
    assert.strictEqual(rec.of(c.pid).length, 0, 'not the client');
    assert.ok(rec.data.every((r) => r.pid === py.pid));
  });

  it('filters by port: only connections with the port, on either end', async () => {
    rec = new Recorder({ ports: [nginx.port] });
    const a = await curl(`https://127.0.0.1:${nginx.port}/small.txt`);
    const b = await pyClient(`https://127.0.0.1:${py.port}/bytes/100`);
    await until(rec, a.pid, 'ingress', 6);
    await until(rec, nginx.workerPids()[0]!, 'egress', 6);
    assert.strictEqual(b.code, 0);
    await rec.stop();
    assert.strictEqual(rec.of(b.pid).length + rec.of(py.pid).length, 0, 'not the other port');
    assert.ok(rec.data.every((r) => r.sock.remotePort === nginx.port || r.sock.localPort === nginx.port));
  });

  it('reports the exit of a process it captured', async () => {
    rec = new Recorder();
    const res = await curl(`https://127.0.0.1:${nginx.port}/small.txt`);
    const exit = await waitFor(() => rec!.exits.find((e) => e.pid === res.pid), { what: 'exit record' });
    assert.strictEqual(exit.comm, 'curl');
    assert.ok(rec.of(res.pid).length > 0);
  });
});
