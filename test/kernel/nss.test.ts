// nss.test.ts: NSS (Debian 12's libnss3, libssl3.so over libnspr4.so), through NSS's own test
// programs: tstclnt (the client: PR_Send/PR_Recv on its SSL descriptor, PR_Read of its standard
// input and PR_Write of its standard output on plain ones) against selfserv (the server: an SSL
// listening descriptor whose PR_Accept makes the connection's, PR_Read, and the answer in one
// PR_Writev). Both ends byte-identical, with roles and mirrored 4-tuples, and none of the plain
// NSPR I/O captured. Then tstclnt against nginx (OpenSSL at the other end): the bytes NSS's
// probes took match those OpenSSL's took.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { libraryKind } from '../../helper/discovery/libraries';
import { DataRecord } from '../../helper/records/records';
import { Recorder, requireKernel } from '../lib/kernel';
import { freePort, makeCert, pattern, run, startNginx, startServer, tmpDir, waitFor } from '../lib/servers';
import { recorderHooks } from '../lib/hooks';

describe('NSS (tstclnt <-> selfserv, kernel)', function () {
  let dir: string;
  let rec: Recorder | undefined;

  before(async function () {
    requireKernel(this);
    for (const tool of ['/usr/bin/tstclnt', '/usr/bin/selfserv', '/usr/bin/certutil']) {
      if (!fs.existsSync(tool)) throw new Error(`${tool} is missing: run bash scripts/setup.sh --test (it installs libnss3-tools)`);
    }
    dir = tmpDir('https-capture-nss-');
    // selfserv's certificate: a self-signed P-256 one in a new NSS database.
    const db = `sql:${dir}`;
    fs.writeFileSync(path.join(dir, 'noise'), Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 37 + 11) & 0xff)));
    for (const args of [
      ['-N', '-d', db, '--empty-password'],
      ['-S', '-d', db, '-n', 'server', '-s', 'CN=localhost', '-x', '-t', 'CT,,', '-k', 'ec', '-q', 'nistp256', '-z', path.join(dir, 'noise'), '--extSAN', 'ip:127.0.0.1'],
    ]) {
      const r = await run('certutil', args, { cwd: dir });
      assert.strictEqual(r.code, 0, `certutil ${args.join(' ')}: ${r.stderr.toString()}`);
    }
  });

  recorderHooks(() => rec, () => (rec = undefined), () => dir);

  it('libssl3.so and libnspr4.so are kind nss; libssl.so.3 is not', () => {
    assert.strictEqual(libraryKind('/usr/lib/x86_64-linux-gnu/libssl3.so'), 'nss');
    assert.strictEqual(libraryKind('/usr/lib/x86_64-linux-gnu/libnspr4.so'), 'nss');
    assert.strictEqual(libraryKind('/usr/lib/x86_64-linux-gnu/libssl.so.3'), 'openssl');
  });

  it('a request with an 8 KB header and its echo: identical on both ends, roles, 4-tuples, no plain NSPR I/O', async () => {
    rec = new Recorder({ discovery: { pollMs: 0 } });
    const r = rec;
    for (const lib of ['libssl3.so', 'libnspr4.so']) {
      assert.ok(r.reports.some((x) => new RegExp(`^attached \\S*/${lib.replace('.', '\\.')} -1$`).test(x)), `${lib} attached: ${r.reports.join('; ')}`);
    }
    const port = await freePort();
    const server = await startServer('selfserv', ['-d', `sql:${dir}`, '-e', 'server', '-p', String(port), '-V', 'tls1.2:tls1.3'], port, dir);
    const request = Buffer.from(`GET /nss HTTP/1.0\r\nX-Pad: ${'p'.repeat(8000)}\r\n\r\n`);
    const client = await run('tstclnt', ['-h', '127.0.0.1', '-p', String(port), '-o', '-D', '-f'], { input: request, cwd: dir });
    assert.strictEqual(client.code, 0, client.stderr.toString());
    assert.match(client.stdout.toString('latin1', 0, 20), /^HTTP\/1\.0 200 OK\r\n/);
    assert.ok(client.stdout.includes(request), 'selfserv echoed the request');

    // The response as tstclnt printed it: what it read from the connection.
    const response = client.stdout;
    await waitFor(() => r.bytes(client.pid, 'ingress') >= response.length && r.bytes(server.pid, 'ingress') >= request.length, {
      timeoutMs: 10_000,
      what: 'the whole exchange on both ends',
    }).catch(() => undefined); // the comparisons below say what is missing
    const settled = await r.settle({ pid: client.pid }, { pid: server.pid });
    // Exactly the request and the response: tstclnt's PR_Read of its standard input and PR_Write
    // to its standard output go through the same probed functions, on plain descriptors.
    assert.ok(r.stream(client.pid, 'egress').equals(request), `tstclnt's request, byte for byte (${r.bytes(client.pid, 'egress')} bytes captured, ${request.length} sent)`);
    assert.ok(r.stream(client.pid, 'ingress').equals(response), `the response as tstclnt read it (${r.bytes(client.pid, 'ingress')} bytes captured, ${response.length} printed)`);
    assert.ok(r.stream(server.pid, 'ingress').equals(request), `selfserv read exactly the request (${settled})`);
    assert.ok(r.stream(server.pid, 'egress').equals(response), `selfserv wrote exactly the response (${settled})`);

    const funcs = (pid: number): string[] => [...new Set(r.of(pid).map((d) => d.func))].sort();
    assert.deepStrictEqual(funcs(server.pid), ['PR_Read', 'PR_Writev']);
    for (const f of funcs(client.pid)) assert.ok(['PR_Read', 'PR_Recv', 'PR_Send', 'PR_Write'].includes(f), f);
    const tuples = (pid: number): string[] => [...new Set(r.of(pid).map((d: DataRecord) => `${d.sock.role} ${d.sock.localIp}:${d.sock.localPort} -> ${d.sock.remoteIp}:${d.sock.remotePort}`))];
    const c = tuples(client.pid);
    const s = tuples(server.pid);
    assert.strictEqual(c.length, 1, `one 4-tuple and role for tstclnt: ${c.join(', ')}`);
    assert.strictEqual(s.length, 1, `one 4-tuple and role for selfserv: ${s.join(', ')}`);
    const m = /^client 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:(\d+)$/.exec(c[0]!);
    assert.ok(m, `tstclnt's 4-tuple: ${c[0]}`);
    assert.strictEqual(Number(m[2]), port);
    // selfserv listens on a dual-stack IPv6 socket: its side shows the v4-mapped addresses.
    assert.strictEqual(s[0], `server ::ffff:127.0.0.1:${port} -> ::ffff:127.0.0.1:${m[1]}`);
    const k = await r.stop();
    rec = undefined;
    assert.strictEqual(k.bytesLost + k.bytesFaulted + k.callsMissed, 0, 'nothing lost');
  });

  it('selfserv started before the capture: its connections are captured (its descriptors told by NSS layout)', async () => {
    const port = await freePort();
    // Its SSL_ImportFD of the listening descriptor happens now, with no capture to see it, and
    // it waits inside PR_Accept when the capture starts.
    const server = await startServer('selfserv', ['-d', `sql:${dir}`, '-e', 'server', '-p', String(port), '-V', 'tls1.2:tls1.3'], port, dir);
    rec = new Recorder({ discovery: { pollMs: 0 } });
    const r = rec;
    const exchanges: { request: Buffer; response: Buffer }[] = [];
    for (const name of ['first', 'second']) {
      const request = Buffer.from(`GET /${name} HTTP/1.0\r\n\r\n`);
      const client = await run('tstclnt', ['-h', '127.0.0.1', '-p', String(port), '-o', '-D', '-f'], { input: request, cwd: dir });
      assert.strictEqual(client.code, 0, client.stderr.toString());
      exchanges.push({ request, response: client.stdout });
    }
    const total = (k: 'request' | 'response'): number => exchanges.reduce((n, e) => n + e[k].length, 0);
    await waitFor(() => r.bytes(server.pid, 'egress') >= total('response') && r.bytes(server.pid, 'ingress') >= total('request'), {
      timeoutMs: 10_000,
      what: "selfserv's side of both exchanges",
    }).catch(() => undefined);
    const conns = r.connections(server.pid);
    assert.strictEqual(conns.length, 2, `two connections of selfserv: ${conns.join(', ')}`);
    conns.forEach((id, i) => {
      assert.ok(r.stream(server.pid, 'ingress', id).equals(exchanges[i]!.request), `connection ${i + 1}: selfserv read exactly the request`);
      assert.ok(r.stream(server.pid, 'egress', id).equals(exchanges[i]!.response), `connection ${i + 1}: selfserv wrote exactly the response`);
      assert.strictEqual(r.of(server.pid).find((d) => d.connId === id)!.sock.localPort, port);
    });
    // The first came out of a PR_Accept entered before the probes: its role is unknown. The
    // second's PR_Accept was seen on the listening descriptor, told SSL by its layout.
    assert.strictEqual(r.of(server.pid).find((d) => d.connId === conns[1])!.sock.role, 'server');
    const k = await r.stop();
    rec = undefined;
    assert.strictEqual(k.bytesLost + k.bytesFaulted + k.callsMissed, 0, 'nothing lost');
  });

  it('tstclnt <-> nginx: 300 KB down, what NSS read is what OpenSSL wrote, byte for byte', async () => {
    const body = pattern(300_000, 31);
    const nginx = await startNginx({ dir: path.join(dir, 'nginx'), files: { 'big.bin': body }, cert: await makeCert(dir) });
    rec = new Recorder({ discovery: { pollMs: 0 } });
    const r = rec;
    const request = Buffer.from(`GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
    const client = await run('tstclnt', ['-h', '127.0.0.1', '-p', String(nginx.port), '-o', '-D', '-f'], { input: request, cwd: dir });
    assert.strictEqual(client.code, 0, client.stderr.toString());
    assert.ok(client.stdout.subarray(client.stdout.length - body.length).equals(body), `tstclnt got the file (${client.stdout.length} bytes)`);
    const worker = (): number | undefined => nginx.workerPids().find((p) => r.connections(p).length > 0);
    await waitFor(() => r.bytes(client.pid, 'ingress') >= client.stdout.length && worker() !== undefined && r.bytes(worker()!, 'egress') >= client.stdout.length, {
      timeoutMs: 10_000,
      what: 'the whole exchange on both ends',
    }).catch(() => undefined);
    const w = worker();
    assert.ok(w, `an nginx worker captured the connection: ${nginx.workerPids().join(', ')}`);
    const settled = await r.settle({ pid: client.pid }, { pid: w });
    assert.ok(r.stream(client.pid, 'egress').equals(request), `tstclnt's request (${r.bytes(client.pid, 'egress')} bytes captured)`);
    assert.ok(r.stream(client.pid, 'ingress').equals(client.stdout), `what tstclnt read is what it printed (${r.bytes(client.pid, 'ingress')} bytes captured)`);
    assert.ok(r.stream(w, 'ingress').equals(request), `nginx read exactly tstclnt's request (${settled})`);
    assert.ok(r.stream(w, 'egress').equals(client.stdout), `nginx wrote exactly what tstclnt read (${settled})`);
    const c = r.of(client.pid)[0]!.sock;
    const s = r.of(w)[0]!.sock;
    assert.strictEqual(c.role, 'client');
    assert.strictEqual(s.role, 'server');
    assert.deepStrictEqual([c.localPort, c.remotePort], [s.remotePort, s.localPort]);
    const k = await r.stop();
    rec = undefined;
    assert.strictEqual(k.bytesLost + k.bytesFaulted + k.callsMissed, 0, 'nothing lost');
  });
});
