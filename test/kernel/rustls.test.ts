// rustls.test.ts: rustls 0.20 as Debian ships its crate (librust-rustls-dev), in a Rust client
// and server (test/lib/rustls_tls) built offline with Debian's cargo against
// /usr/share/cargo/registry into test/lib/rustls_tls/target (git-ignored; cargo's cache makes
// later builds quick). The running server's executable is found by the /proc scan, labelled
// rustls and probed (helper/discovery/rustls.ts, bpf/rustls.h); client and server are captured
// byte-identical on both ends with roles and mirrored 4-tuples; a client that moves its
// connection after the handshake, and a tokio-rustls client (test/lib/rustls_tls/src/tokio.rs,
// Debian's librust-tokio-rustls-dev) that moves it at every poll, stay one connection; the
// client against nginx too, whose access log has the client's port. A stripped copy has none of the symbols: no plan,
// and the TLS code is reported as unknown (libraries.ts unknownTlsIn).
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { planRustls } from '../../helper/discovery/rustls';
import { tlsKindIn, unknownTlsIn } from '../../helper/discovery/libraries';
import { DataRecord } from '../../helper/records/records';
import { Recorder, requireKernel } from '../lib/kernel';
import { CertPair, freePort, makeCert, pattern, run, startNginx, startServer, tmpDir, waitFor } from '../lib/servers';
import { recorderHooks } from '../lib/hooks';
import { ROOT } from '../lib/paths';

const SRC = path.join(ROOT, 'test', 'lib', 'rustls_tls');
const TARGET = path.join(SRC, 'target');
const EXE = path.join(TARGET, 'release', 'rustls_tls');
const TOKIO = path.join(TARGET, 'release', 'rustls_tokio');
/** Debian's cargo (its rustc matches Debian's crates); another on PATH only if it is absent. */
const CARGO = fs.existsSync('/usr/bin/cargo') ? '/usr/bin/cargo' : 'cargo';
const RUSTC = fs.existsSync('/usr/bin/rustc') ? { RUSTC: '/usr/bin/rustc' } : {};
const BODY = pattern(200_000, 31);
const UPLOAD = pattern(100_000, 32);
const WRITE = 'rustls::conn::CommonState::send_some_plaintext';
const READ = 'rustls::conn::CommonState::take_received_plaintext';

describe('rustls (Debian librust-rustls-dev 0.20, kernel)', function () {
  let dir: string;
  let cert: CertPair;
  let der: { cert: string; key: string };
  let rec: Recorder | undefined;

  before(async function () {
    this.timeout(900_000); // the first build compiles ring and rustls: minutes on 2 cores
    requireKernel(this);
    if (!fs.existsSync('/usr/share/cargo/registry') || !fs.readdirSync('/usr/share/cargo/registry').some((d) => d.startsWith('rustls-0.20'))) {
      throw new Error('rustls 0.20 is not in /usr/share/cargo/registry: run bash scripts/setup.sh --test (it installs librust-rustls-dev, librust-tokio-rustls-dev, cargo and rustc)');
    }
    // Both programs: rustls_tls, and rustls_tokio on tokio-rustls (librust-tokio-rustls-dev).
    const b = await run(CARGO, ['build', '--release', '--offline', '--features', 'async', '--target-dir', TARGET], { cwd: SRC, timeoutMs: 880_000, env: { ...process.env, ...RUSTC, CARGO_HOME: path.join(TARGET, 'cargo-home') } });
    assert.strictEqual(b.code, 0, `cargo build of ${SRC}: ${b.stderr.toString()}`);
    dir = tmpDir('https-capture-rustls-');
    cert = await makeCert(dir);
    der = { cert: path.join(dir, 'cert.der'), key: path.join(dir, 'key.der') };
    for (const [cmd, args] of [
      ['openssl', ['x509', '-in', cert.cert, '-outform', 'der', '-out', der.cert]],
      ['openssl', ['pkcs8', '-topk8', '-nocrypt', '-in', cert.key, '-outform', 'der', '-out', der.key]],
    ] as const) {
      const r = await run(cmd, [...args]);
      assert.strictEqual(r.code, 0, r.stderr.toString());
    }
    fs.writeFileSync(path.join(dir, 'body.bin'), BODY);
  });

  recorderHooks(() => rec, () => (rec = undefined), () => dir);

  it('the planner finds the three CommonState methods in a release build; a stripped copy is unknown TLS', async () => {
    assert.strictEqual(tlsKindIn(EXE), 'rustls');
    const plan = planRustls(EXE);
    for (const sites of [plan.write, plan.writeTls, plan.received]) {
      assert.strictEqual(sites.length, 1, JSON.stringify(plan));
      assert.ok(sites[0]!.emulated, `an emulated instruction to probe: ${JSON.stringify(sites[0])}`);
    }
    const stripped = path.join(dir, 'rustls_tls-stripped');
    fs.copyFileSync(EXE, stripped);
    const s = await run('strip', [stripped]);
    assert.strictEqual(s.code, 0, s.stderr.toString());
    assert.throws(() => planRustls(stripped), /no rustls::conn::CommonState::send_some_plaintext function/);
    assert.strictEqual(tlsKindIn(stripped), null);
    assert.match(unknownTlsIn(stripped) ?? '', /^TLS code the helper does not know \(its data has the TLS 1\.3 key-schedule labels/);
  });

  it(`client <-> server: ${UPLOAD.length} bytes up, ${BODY.length} down, identical on both ends, with roles and 4-tuples`, async () => {
    const port = await freePort();
    const server = await startServer(EXE, ['server', String(port), der.cert, der.key, path.join(dir, 'body.bin')], port, dir);
    // Found by the /proc scan at the start: an executable with rustls inside, in a running process.
    rec = new Recorder({ comms: ['rustls_tls'], discovery: { pollMs: 0 } });
    const r = rec;
    assert.ok(r.reports.includes(`attached ${EXE} -1`), r.reports.join('\n'));
    assert.strictEqual(r.capture.kindOf(EXE), 'rustls');
    const request = Buffer.concat([Buffer.from(`POST /upload HTTP/1.0\r\nContent-Length: ${UPLOAD.length}\r\n\r\n`), UPLOAD]);
    const client = await run(EXE, ['client', String(port), der.cert], { input: request, cwd: dir });
    assert.strictEqual(client.code, 0, client.stderr.toString());
    const response = Buffer.concat([Buffer.from(`HTTP/1.0 200 ok\r\nContent-Length: ${BODY.length}\r\n\r\n`), BODY]);
    assert.ok(client.stdout.equals(response), `the client got the response (${client.stdout.length} bytes)`);

    await waitFor(() => r.bytes(client.pid, 'ingress') >= response.length && r.bytes(server.pid, 'ingress') >= request.length, {
      timeoutMs: 10_000,
      what: 'the whole exchange on both ends',
    }).catch(() => undefined); // the comparisons below say what is missing
    const settled = await r.settle({ pid: client.pid }, { pid: server.pid });
    assert.ok(r.stream(client.pid, 'egress').equals(request), `the client's request, byte for byte (${r.bytes(client.pid, 'egress')} bytes captured, ${request.length} sent)`);
    assert.ok(r.stream(client.pid, 'ingress').equals(response), `the response as the client read it (${r.bytes(client.pid, 'ingress')} bytes captured)`);
    assert.ok(r.stream(server.pid, 'ingress').equals(request), `the server read exactly the request (${settled})`);
    assert.ok(r.stream(server.pid, 'egress').equals(response), `the server wrote exactly the response (${settled})`);

    const funcs = new Set(r.data.filter((d) => d.pid === client.pid || d.pid === server.pid).map((d) => d.func));
    assert.deepStrictEqual([...funcs].sort(), [WRITE, READ].sort());
    const tuples = (pid: number): string[] => [...new Set(r.of(pid).map((d: DataRecord) => `${d.sock.role} ${d.sock.localIp}:${d.sock.localPort} -> ${d.sock.remoteIp}:${d.sock.remotePort}`))];
    const c = tuples(client.pid);
    const s = tuples(server.pid);
    assert.strictEqual(c.length, 1, `one 4-tuple and role for the client: ${c.join(', ')}`);
    assert.strictEqual(s.length, 1, `one 4-tuple and role for the server: ${s.join(', ')}`);
    const m = /^client 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:(\d+)$/.exec(c[0]!);
    assert.ok(m, `client 4-tuple: ${c[0]}`);
    assert.strictEqual(Number(m[2]), port);
    assert.strictEqual(s[0], `server 127.0.0.1:${port} -> 127.0.0.1:${m[1]}`);
    const k = await r.stop();
    rec = undefined;
    assert.strictEqual(k.bytesLost + k.bytesFaulted + k.callsMissed, 0, 'nothing lost');
  });

  it('a connection moved in memory after its handshake (as async wrappers do) stays one connection, with its role and socket', async () => {
    const port = await freePort();
    const server = await startServer(EXE, ['server', String(port), der.cert, der.key, path.join(dir, 'body.bin')], port, dir);
    rec = new Recorder({ comms: ['rustls_tls'], discovery: { pollMs: 0 } });
    const r = rec;
    assert.ok(r.reports.includes(`attached ${EXE} -1`), r.reports.join('\n'));
    const request = Buffer.from('POST /moved HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello');
    const client = await run(EXE, ['client', String(port), der.cert, 'moved'], { input: request, cwd: dir });
    assert.strictEqual(client.code, 0, client.stderr.toString());
    await waitFor(() => r.bytes(client.pid, 'ingress') >= client.stdout.length, { timeoutMs: 10_000, what: 'the response' }).catch(() => undefined);
    await r.settle({ pid: client.pid }, { pid: server.pid });
    assert.ok(r.stream(client.pid, 'egress').equals(request), 'the request');
    assert.ok(r.stream(client.pid, 'ingress').equals(client.stdout), 'the response');
    // The handshake's CommonState (on the stack) and the one that moved data (in the heap) are
    // two handles of one connection: one connection reported, opened and closed once.
    const handles = new Set(r.of(client.pid).map((d) => d.ssl));
    assert.strictEqual(handles.size, 1);
    const conns = r.conns.filter((c) => c.pid === client.pid);
    assert.deepStrictEqual(conns.map((c) => `${c.kind} ${c.sock.role} ${c.sock.fd >= 0}`), ['open client true', 'close client true'], JSON.stringify(conns.map((c) => [c.kind, String(c.connId), c.sock.role, c.reason])));
    assert.ok(r.of(client.pid).every((d) => d.sock.role === 'client' && d.sock.remotePort === port), 'every record with role and socket');
  });

  it('tokio-rustls client (moves its connection while it drives the handshake, on two worker threads) <-> server: identical, one connection; its first write has no socket yet', async () => {
    const port = await freePort();
    const server = await startServer(EXE, ['server', String(port), der.cert, der.key, path.join(dir, 'body.bin')], port, dir);
    // tokio names its worker threads tokio-runtime-worker (comm: its first 15 bytes).
    rec = new Recorder({ comms: ['rustls_tls', 'rustls_tokio', 'tokio-runtime-w'], discovery: { pollMs: 0, extra: [TOKIO] } });
    const r = rec;
    assert.ok(r.reports.includes(`attached ${TOKIO} -1`), r.reports.join('\n'));
    const request = Buffer.concat([Buffer.from(`POST /tokio HTTP/1.0\r\nContent-Length: ${UPLOAD.length}\r\n\r\n`), UPLOAD]);
    const client = await run(TOKIO, [String(port), der.cert], { input: request, cwd: dir });
    assert.strictEqual(client.code, 0, client.stderr.toString());
    await waitFor(() => r.bytes(client.pid, 'ingress') >= client.stdout.length, { timeoutMs: 10_000, what: 'the response' }).catch(() => undefined);
    await r.settle({ pid: client.pid }, { pid: server.pid });
    assert.ok(r.stream(client.pid, 'egress').equals(request), `the request (${r.bytes(client.pid, 'egress')} of ${request.length} bytes)`);
    assert.ok(r.stream(client.pid, 'ingress').equals(client.stdout), 'the response');
    assert.ok(r.stream(server.pid, 'ingress').equals(request), 'the server read the request');
    const recs = r.of(client.pid);
    assert.strictEqual(new Set(recs.map((d) => d.connId)).size, 1, 'one connection');
    // The handle that moves the data is not the one the handshake used, and its first write
    // comes before its first write_tls: that write's records have no socket (README, rustls).
    const first = recs[0]!;
    assert.strictEqual(first.func, WRITE);
    assert.strictEqual(first.sock.fd, -1, 'the first write after the move: not mapped yet');
    const mapped = recs.filter((d) => d.sock.fd >= 0);
    assert.ok(mapped.length > 0 && mapped.every((d) => d.sock.role === 'client' && d.sock.remotePort === port), 'from its first write_tls on: the socket, and the role the handshake found');
    assert.ok(recs.filter((d) => d.dir === 'ingress').every((d) => d.sock.fd >= 0), 'every byte read has the socket');
  });

  it('client <-> nginx (OpenSSL): the exchange identical at both ends, on the port nginx logged', async () => {
    const file = pattern(50_000, 33);
    const nginx = await startNginx({ dir: path.join(dir, 'nginx'), cert, files: { 'f.bin': file } });
    // No rustls process runs yet: the file is named, as --library PATH names it. nginx by the
    // pid of its worker, not by name: other nginx on the machine may be under load.
    const worker = nginx.workerPids()[0]!;
    rec = new Recorder({ comms: ['rustls_tls'], pids: [worker], discovery: { pollMs: 0, extra: [EXE] } });
    const r = rec;
    assert.ok(r.reports.includes(`attached ${EXE} -1`), r.reports.join('\n'));
    const request = Buffer.from('GET /f.bin HTTP/1.0\r\nHost: localhost\r\n\r\n');
    const client = await run(EXE, ['client', String(nginx.port), der.cert], { input: request, cwd: dir });
    assert.strictEqual(client.code, 0, client.stderr.toString());
    assert.ok(client.stdout.subarray(client.stdout.length - file.length).equals(file), 'the client got the file');
    await waitFor(() => r.bytes(client.pid, 'ingress') >= client.stdout.length && r.bytes(worker, 'ingress') >= request.length, { timeoutMs: 10_000, what: 'both ends' }).catch(() => undefined);
    await r.settle({ pid: client.pid }, { pid: worker });
    assert.ok(r.stream(client.pid, 'egress').equals(request), 'the request as the client wrote it');
    assert.ok(r.stream(client.pid, 'ingress').equals(client.stdout), `the response as the client read it (${r.bytes(client.pid, 'ingress')} of ${client.stdout.length} bytes)`);
    assert.ok(r.stream(worker, 'ingress').equals(request), 'the request as nginx read it');
    assert.ok(r.stream(worker, 'egress').equals(client.stdout), 'the response as nginx wrote it');
    const log = await waitFor(() => /^127\.0\.0\.1:(\d+) GET \/f\.bin 200 /m.exec(fs.readFileSync(nginx.accessLog, 'utf8')), { what: "nginx's access log line" });
    const sock = r.of(client.pid)[0]!.sock;
    assert.deepStrictEqual([sock.role, sock.localPort, sock.remotePort], ['client', Number(log[1]), nginx.port]);
  });
});
