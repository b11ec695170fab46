// boringssl.test.ts: BoringSSL as Debian ships it (android-libboringssl: a shared libssl.so.0
// in /usr/lib/x86_64-linux-gnu/android, outside the linker cache, reached through the
// programs' RUNPATH). A C client and server built against it (test/lib/boring_tls.c) are
// captured byte-identical on both ends, with their roles and mirrored 4-tuples; the library is
// found as the server opens it and labelled boringssl.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { libraryKind } from '../../helper/discovery/libraries';
import { DataRecord } from '../../helper/records/records';
import { Recorder, requireKernel } from '../lib/kernel';
import { CertPair, freePort, makeCert, pattern, run, startServer, testLibFile, tmpDir, waitFor } from '../lib/servers';
import { recorderHooks } from '../lib/hooks';

const ANDROID = '/usr/lib/x86_64-linux-gnu/android';
const LIBSSL = `${ANDROID}/libssl.so.0`;
const BODY = pattern(200_000, 21);
const UPLOAD = pattern(100_000, 22);

describe('BoringSSL (Debian android-libboringssl, kernel)', function () {
  let dir: string;
  let exe: string;
  let cert: CertPair;
  let rec: Recorder | undefined;

  before(async function () {
    requireKernel(this);
    if (!fs.existsSync(LIBSSL) || !fs.existsSync('/usr/include/android/openssl/ssl.h')) {
      throw new Error(`BoringSSL is not installed (${LIBSSL}, /usr/include/android): run bash scripts/setup.sh --test (it installs android-libboringssl-dev)`);
    }
    dir = tmpDir('https-capture-boringssl-');
    exe = path.join(dir, 'boring_tls');
    const cc = await run('cc', ['-O1', '-Wall', '-I/usr/include/android', '-o', exe, testLibFile('boring_tls.c'), `-L${ANDROID}`, `-Wl,-rpath,${ANDROID}`, '-lssl', '-lcrypto']);
    assert.strictEqual(cc.code, 0, cc.stderr.toString());
    cert = await makeCert(dir);
    fs.writeFileSync(path.join(dir, 'body.bin'), BODY);
  });

  recorderHooks(() => rec, () => (rec = undefined), () => dir);

  it("is told from OpenSSL by its own API, though both are named libssl.so*", () => {
    assert.strictEqual(libraryKind(LIBSSL), 'boringssl');
    const system = ['/usr/lib/x86_64-linux-gnu/libssl.so.3', '/lib/x86_64-linux-gnu/libssl.so.3'].find((p) => fs.existsSync(p));
    assert.ok(system, "Debian 12's libssl.so.3");
    assert.strictEqual(libraryKind(system), 'openssl');
  });

  it(`client <-> server: ${UPLOAD.length} bytes up, ${BODY.length} down, identical on both ends, with roles and 4-tuples`, async () => {
    // No --library and no /proc poll: the file is found only as the server opens it.
    rec = new Recorder({ discovery: { pollMs: 0 } });
    const r = rec;
    const port = await freePort();
    const server = await startServer(exe, ['server', String(port), cert.cert, cert.key, path.join(dir, 'body.bin')], port, dir);
    await waitFor(() => r.reports.includes(`attached ${LIBSSL} -1`), { timeoutMs: 5000, what: `probes on ${LIBSSL}: ${r.reports.join('; ')}` });
    assert.strictEqual(r.capture.kindOf(LIBSSL), 'boringssl');
    const request = Buffer.concat([Buffer.from(`POST /upload HTTP/1.0\r\nContent-Length: ${UPLOAD.length}\r\n\r\n`), UPLOAD]);
    const client = await run(exe, ['client', String(port)], { input: request, cwd: dir });
    assert.strictEqual(client.code, 0, client.stderr.toString());
    const response = Buffer.concat([Buffer.from(`HTTP/1.0 200 ok\r\nContent-Length: ${BODY.length}\r\n\r\n`), BODY]);
    assert.ok(client.stdout.equals(response), `the client got the response (${client.stdout.length} bytes)`);

    // Records reach us a few ms after the calls: wait for all of them, then compare.
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
    assert.deepStrictEqual([...funcs].sort(), ['SSL_read', 'SSL_write']);
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
});
