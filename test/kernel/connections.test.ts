// connections.test.ts: every captured call attributed to the right socket. nginx's access
// log ($remote_addr:$remote_port) is the ground truth for 4-tuples; connections must be
// neither merged nor split, both ends attributed, and every one ended.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { ConnRecord } from '../../helper/records/records';
import { Recorder, requireKernel } from '../lib/kernel';
import { CertPair, curl, makeCert, NginxServer, run, startNginx, startPyServer, testLibFile, tmpDir, waitFor } from '../lib/servers';
import { cleanUpAfter } from '../lib/hooks';

interface LogLine {
  ip: string;
  port: number;
  uri: string;
}

function accessLog(nginx: NginxServer): LogLine[] {
  return fs
    .readFileSync(nginx.accessLog, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const m = /^(\S+):(\d+) \S+ (\S+) /.exec(l);
      assert.ok(m, `access log line: ${l}`);
      return { ip: m[1]!, port: Number(m[2]), uri: m[3]! };
    });
}

describe('connections (kernel, real programs)', function () {
  let dir: string;
  let cert: CertPair;
  let nginx: NginxServer;
  let rec: Recorder | undefined;

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-conn-');
    cert = await makeCert(dir);
    nginx = await startNginx({ dir: `${dir}/nginx`, files: { 'small.txt': Buffer.from('hello\n') }, cert, ipv6: true });
  });

  afterEach(async () => {
    if (rec) await rec.stop();
    rec = undefined;
  });

  cleanUpAfter(() => dir);

  const opens = (r: Recorder, pid: number): ConnRecord[] => {
    // The last open of each conn_id holds the most complete socket information.
    const byId = new Map<bigint, ConnRecord>();
    for (const c of r.conns) if (c.pid === pid && c.kind === 'open') byId.set(c.connId, c);
    return [...byId.values()];
  };

  it('200 sequential and 50 concurrent keep-alive connections: 4-tuples match the access log, none merged or split', async function () {
    this.timeout(120000);
    fs.truncateSync(nginx.accessLog);
    rec = new Recorder({ pids: [nginx.workerPids()[0]!], comms: ['curl'] });
    const url = `https://127.0.0.1:${nginx.port}/small.txt`;
    const clients: number[] = [];
    for (let i = 0; i < 200; i++) clients.push((await curl(`${url}?seq=${i}`)).pid);
    // 50 at once, each with two requests on one keep-alive connection.
    const concurrent = await Promise.all([...Array(50).keys()].map((i) => curl(`${url}?ka=${i}&n=1`, ['-o', '/dev/null', `${url}?ka=${i}&n=2`])));
    assert.ok(concurrent.every((r) => r.code === 0));
    clients.push(...concurrent.map((r) => r.pid));

    const log = accessLog(nginx);
    assert.strictEqual(log.length, 300);
    const logPorts = new Map<number, string[]>();
    for (const l of log) logPorts.set(l.port, [...(logPorts.get(l.port) ?? []), l.uri]);
    assert.strictEqual(logPorts.size, 250, 'nginx saw 250 connections');

    const worker = nginx.workerPids()[0]!;
    await waitFor(() => rec!.conns.filter((c) => c.pid === worker && c.kind === 'close').length >= 250, {
      timeoutMs: 20000,
      what: 'the end of 250 server-side connections',
    });
    const server = opens(rec, worker);
    assert.strictEqual(server.length, 250, 'one server-side connection per TCP connection');
    for (const c of server) {
      assert.strictEqual(c.sock.role, 'server');
      assert.deepStrictEqual([c.sock.family, c.sock.localIp, c.sock.localPort, c.sock.remoteIp], ['ipv4', '127.0.0.1', nginx.port, '127.0.0.1']);
      const uris = logPorts.get(c.sock.remotePort);
      assert.ok(uris, `server connection from port ${c.sock.remotePort} is in the access log`);
      // Exactly the requests nginx logged for that port, in that connection's stream.
      const stream = rec.stream(worker, 'ingress', c.connId).toString();
      const got = [...stream.matchAll(/^GET (\S+) HTTP\/1\.1\r$/gm)].map((m) => m[1]);
      assert.deepStrictEqual(got, uris, `requests of the connection from port ${c.sock.remotePort}`);
    }
    assert.strictEqual(new Set(server.map((c) => c.sock.remotePort)).size, 250);

    // The client side: each curl's one connection, from the port nginx logged.
    for (const pid of clients) {
      const mine = opens(rec, pid);
      assert.strictEqual(mine.length, 1, `curl ${pid} had one connection`);
      const c = mine[0]!;
      assert.strictEqual(c.sock.role, 'client');
      assert.strictEqual(c.sock.remotePort, nginx.port);
      assert.ok(logPorts.has(c.sock.localPort), `curl ${pid}'s port ${c.sock.localPort} is in the access log`);
      assert.ok(rec.of(pid).every((r) => r.connId === c.connId && r.sock.localPort === c.sock.localPort));
    }
    // Every connection that was opened was ended.
    await waitFor(() => clients.every((pid) => rec!.conns.some((c) => c.pid === pid && c.kind === 'close')), { what: 'client ends' });
  });

  it('bytes lost to a full ring buffer are gaps of exactly the counted size', async () => {
    // One call of 1 MiB (the python server writes a body in one SSL_write_ex) is 64 records of
    // 16 KiB, emitted by one return probe before the ring's reader can run: 32 KiB of ring cannot
    // hold them, whatever the scheduler does. (nginx writes 16 KiB per call, and a reader that
    // runs between its calls, as on one CPU, could keep up.)
    const py = await startPyServer({ dir, ...cert });
    try {
      // Load shedding off (shedFill 1): this is about what a full ring loses; overload.test.ts
      // covers shedding, which would otherwise keep the ring from filling.
      rec = new Recorder({ pids: [py.pid], ringBytes: 32768, shedFill: 1 });
      const res = await curl(`https://127.0.0.1:${py.port}/bytes/${1 << 20}?seed=5`, ['-o', '/dev/null']);
      assert.strictEqual(res.code, 0, res.stderr.toString());
      const close = await waitFor(() => rec!.conns.find((c) => c.pid === py.pid && c.kind === 'close'), { what: 'the connection to end' });
      const k = await rec.stop();
      assert.ok(k.bytesLost > 0, 'the ring overflowed');
      // Walk the delivered records: every jump in seq is a gap; the end is known from the close.
      let gaps = 0;
      for (const dir of ['egress', 'ingress'] as const) {
        let at = 0;
        for (const r of rec.of(py.pid, dir).filter((x) => x.connId === close.connId)) {
          assert.ok(r.seq >= at, 'offsets never go back');
          gaps += r.seq - at;
          at = r.seq + r.data.length;
        }
        gaps += (dir === 'egress' ? close.egressBytes : close.ingressBytes) - at;
      }
      assert.ok(close.egressBytes > 1 << 20, 'the final offset counts the whole body, delivered or not');
      assert.strictEqual(gaps, k.bytesLost + k.bytesTruncated + k.bytesFaulted, 'every missing byte is a counted, exact gap');
      assert.strictEqual(k.bytesTruncated, 0);
      assert.strictEqual(k.bytesShed, 0);
    } finally {
      await py.stop();
    }
  });

  it('IPv6: curl to [::1]', async () => {
    rec = new Recorder({ comms: ['curl'] });
    const res = await curl(`https://[::1]:${nginx.port}/small.txt`);
    assert.strictEqual(res.code, 0, res.stderr.toString());
    await waitFor(() => rec!.conns.some((c) => c.pid === res.pid && c.kind === 'close'), { what: 'the connection to end' });
    const [c] = opens(rec, res.pid);
    assert.ok(c);
    assert.deepStrictEqual([c.sock.family, c.sock.localIp, c.sock.remoteIp, c.sock.remotePort], ['ipv6', '::1', '::1', nginx.port]);
    // Ports are reused across tests: the address and the port together name the connection.
    const log = accessLog(nginx).filter((l) => l.ip === '::1' && l.port === c.sock.localPort);
    assert.strictEqual(log.length, 1, 'nginx logged that address and port');
  });

  it('v4-mapped: an IPv4 client of a dual-stack server is ::ffff:127.0.0.1 on the server side', async () => {
    const dual = await startPyServer({ dir, ...cert, host: '::' });
    rec = new Recorder({ pids: [dual.pid], comms: ['curl'] });
    const res = await curl(`https://127.0.0.1:${dual.port}/bytes/10?seed=1`);
    assert.strictEqual(res.code, 0, res.stderr.toString());
    await waitFor(() => rec!.bytes(dual.pid, 'egress') >= 10, { what: 'the response' });
    const [server] = opens(rec, dual.pid);
    const [client] = opens(rec, res.pid);
    assert.ok(server && client);
    assert.deepStrictEqual([server.sock.family, server.sock.localIp, server.sock.remoteIp, server.sock.localPort], ['ipv6', '::ffff:127.0.0.1', '::ffff:127.0.0.1', dual.port]);
    assert.strictEqual(server.sock.remotePort, client.sock.localPort, "the server's peer is curl's port");
    assert.deepStrictEqual([client.sock.family, client.sock.remoteIp], ['ipv4', '127.0.0.1']);
    await dual.stop();
  });

  it('one SSL* reused for two connections (SSL_clear + new fd) gives two connection ids', async () => {
    const exe = path.join(dir, 'ssl_reuse');
    const cc = await run('cc', ['-O1', '-o', exe, testLibFile('ssl_reuse.c'), '-lssl', '-lcrypto']);
    assert.strictEqual(cc.code, 0, cc.stderr.toString());
    rec = new Recorder({ comms: ['ssl_reuse'] });
    const res = await run(exe, [String(nginx.port)]);
    assert.strictEqual(res.code, 0, res.stderr.toString());
    assert.strictEqual((res.stdout.toString().match(/hello\n/g) ?? []).length, 2);
    await waitFor(() => rec!.conns.filter((c) => c.pid === res.pid && c.kind === 'close').length >= 2, { what: 'two ends' });
    const mine = opens(rec, res.pid);
    assert.strictEqual(mine.length, 2, 'two connections');
    assert.strictEqual(mine[0]!.ssl, mine[1]!.ssl, 'one SSL*');
    assert.notStrictEqual(mine[0]!.sock.fd, mine[1]!.sock.fd);
    assert.notStrictEqual(mine[0]!.sock.localPort, mine[1]!.sock.localPort);
    const closes = rec.conns.filter((c) => c.pid === res.pid && c.kind === 'close');
    assert.strictEqual(closes.find((c) => c.connId === mine[0]!.connId)?.reason, 'reused');
    // Each connection's stream starts at offset 0 and holds its own request.
    for (const c of mine) assert.match(rec.stream(res.pid, 'egress', c.connId).toString(), /^GET \/small\.txt HTTP\/1\.1\r\n/);
  });
});
