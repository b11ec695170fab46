// openssl-versions.test.ts: OpenSSL 1.1.1 (Debian 11's libssl1.1) and 3.5 (Debian 13's
// libssl3t64), unpacked by scripts/fetch-openssl.sh into a cache and used through the loader's
// library path, never installed: the planner finds each version's internal functions, and the
// plaintext of a client and a server of that version is captured byte-identical on both ends,
// with the connection's 4-tuple. The server is `openssl s_server -WWW`, whose traffic goes
// through the SSL BIO (seen only by the internal-function probes); the clients are
// `openssl s_client` (SSL_write/SSL_read) and, on 3.5, Debian 12's curl loaded with 3.5's libssl.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { planOpenSsl } from '../../helper/discovery/openssl';
import { DataRecord } from '../../helper/records/records';
import { Recorder, requireKernel } from '../lib/kernel';
import { CertPair, freePort, makeCert, pattern, run, RunResult, Server, startServer, tmpDir, waitFor } from '../lib/servers';
import { recorderHooks } from '../lib/hooks';

const CACHE = `${process.env.HTTPS_CAPTURE_CACHE ?? '/var/cache/https-capture'}/openssl`;
const LIBDIR = 'usr/lib/x86_64-linux-gnu';

interface Version {
  name: string;
  root: string;
  libssl: string;
  /** Where SSL_write passes its count pointer to ssl_write_internal (README's table). */
  writeCountArg: 4 | 5;
  /** argv that runs `program` against this version's libraries. */
  argv(program: string, args: string[]): [string, string[]];
}

const V111: Version = {
  name: '1.1.1',
  root: `${CACHE}/1.1.1`,
  libssl: `${CACHE}/1.1.1/${LIBDIR}/libssl.so.1.1`,
  writeCountArg: 4,
  // Debian 11's libraries run on Debian 12's glibc.
  argv: (program, args) => ['/usr/bin/env', [`LD_LIBRARY_PATH=${CACHE}/1.1.1/${LIBDIR}`, program, ...args]],
};

const V35: Version = {
  name: '3.5',
  root: `${CACHE}/3.5`,
  libssl: `${CACHE}/3.5/${LIBDIR}/libssl.so.3`,
  writeCountArg: 5,
  // Debian 13's libcrypto needs glibc 2.38: the program runs under Debian 13's loader and libc,
  // unpacked with it.
  argv: (program, args) => [`${CACHE}/3.5/${LIBDIR}/ld-linux-x86-64.so.2`, ['--library-path', `${CACHE}/3.5/${LIBDIR}`, program, ...args]],
};

const BODY = pattern(200_000, 11);

describe('OpenSSL 1.1.1 and 3.5 (Debian 11 and 13 libraries, kernel)', function () {
  let dir: string;
  let cert: CertPair;
  let rec: Recorder | undefined;

  before(async function () {
    requireKernel(this);
    for (const v of [V111, V35]) {
      if (!fs.existsSync(path.join(v.root, '.done')) || !fs.existsSync(v.libssl)) {
        throw new Error(`OpenSSL ${v.name} is not unpacked in ${v.root}: run bash scripts/setup.sh --test (or scripts/fetch-openssl.sh)`);
      }
    }
    dir = tmpDir('https-capture-versions-');
    cert = await makeCert(dir);
    fs.writeFileSync(path.join(dir, 'body.bin'), BODY);
  });

  recorderHooks(() => rec, () => (rec = undefined), () => dir);

  async function sServer(v: Version): Promise<Server> {
    const port = await freePort();
    const [cmd, args] = v.argv(`${v.root}/usr/bin/openssl`, ['s_server', '-accept', `127.0.0.1:${port}`, '-cert', cert.cert, '-key', cert.key, '-WWW']);
    return startServer(cmd, args, port, dir);
  }

  /** Records of pid, with the 4-tuple each carried. */
  function tuples(r: Recorder, pid: number): string[] {
    return [...new Set(r.of(pid).map((d: DataRecord) => `${d.sock.role} ${d.sock.localIp}:${d.sock.localPort} -> ${d.sock.remoteIp}:${d.sock.remotePort}`))];
  }

  /** Both ends byte-identical, the client's bytes what it sent and got, the 4-tuples mirrored. */
  async function checkExchange(r: Recorder, client: RunResult, server: Server, request: Buffer, v: Version): Promise<void> {
    assert.strictEqual(client.code, 0, client.stderr.toString());
    await waitFor(() => r.bytes(client.pid, 'ingress') >= BODY.length && r.bytes(server.pid, 'egress') >= BODY.length, {
      timeoutMs: 10_000,
      what: `${BODY.length} bytes each way on OpenSSL ${v.name}`,
    }).catch(() => undefined); // the comparisons below say what is missing
    const settled = await r.settle({ pid: client.pid }, { pid: server.pid });
    const sent = r.stream(client.pid, 'egress');
    const got = r.stream(client.pid, 'ingress');
    assert.ok(sent.equals(request), `the client's request, byte for byte (${sent.length} bytes captured, ${request.length} sent)`);
    assert.ok(got.subarray(got.length - BODY.length).equals(BODY), `the response body, byte for byte (${got.length} bytes captured)`);
    assert.match(got.toString('latin1', 0, 40), /^HTTP\/1\.[01] 200 ok\r\n/);
    assert.ok(r.stream(server.pid, 'ingress').equals(sent), `s_server read exactly what the client wrote (${settled})`);
    assert.ok(r.stream(server.pid, 'egress').equals(got), `the client read exactly what s_server wrote (${settled})`);
    // The server's side goes through the SSL BIO: only ssl_*_internal probes see it.
    const funcs = new Set(r.of(server.pid).map((d) => d.func));
    assert.deepStrictEqual([...funcs].sort(), ['ssl_read_internal', 'ssl_write_internal']);
    const c = tuples(r, client.pid);
    const s = tuples(r, server.pid);
    assert.strictEqual(c.length, 1, `one 4-tuple for the client: ${c.join(', ')}`);
    assert.strictEqual(s.length, 1, `one 4-tuple for the server: ${s.join(', ')}`);
    const m = /^client 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:(\d+)$/.exec(c[0]!);
    assert.ok(m, `client 4-tuple: ${c[0]}`);
    assert.strictEqual(Number(m[2]), server.port);
    assert.strictEqual(s[0], `server 127.0.0.1:${server.port} -> 127.0.0.1:${m[1]}`);
    const k = await r.stop();
    rec = undefined;
    assert.strictEqual(k.bytesLost + k.bytesFaulted + k.callsMissed, 0, 'nothing lost');
  }

  for (const v of [V111, V35]) {
    describe(`OpenSSL ${v.name}`, () => {
      it('the planner finds ssl_write_internal and ssl_read_internal', () => {
        const plan = planOpenSsl(v.libssl);
        assert.strictEqual(plan.kind, 'internal', plan.kind === 'exported' ? plan.reason : '');
        assert.ok(plan.kind === 'internal');
        assert.strictEqual(plan.writeCountArg, v.writeCountArg);
        assert.notStrictEqual(plan.write, plan.read);
      });

      it(`s_client <-> s_server -WWW: ${BODY.length} bytes, identical on both ends, with the 4-tuple`, async () => {
        rec = new Recorder({ discovery: { extra: [v.libssl], pollMs: 0 } });
        assert.ok(rec.reports.includes(`attached ${v.libssl} -1`), rec.reports.join('\n'));
        const server = await sServer(v);
        const request = Buffer.from('GET /body.bin HTTP/1.0\r\n\r\n');
        const [cmd, args] = v.argv(`${v.root}/usr/bin/openssl`, ['s_client', '-quiet', '-connect', `127.0.0.1:${server.port}`]);
        const client = await run(cmd, args, { input: request, cwd: dir });
        assert.ok(client.stdout.subarray(client.stdout.length - BODY.length).equals(BODY), `s_client got the file: ${client.stderr.toString()}`);
        await checkExchange(rec, client, server, request, v);
      });
    });
  }

  it('OpenSSL 3.5: curl (Debian 12) on 3.5 <-> s_server -WWW, identical on both ends', async () => {
    rec = new Recorder({ discovery: { extra: [V35.libssl], pollMs: 0 } });
    const server = await sServer(V35);
    const [cmd, args] = V35.argv('/usr/bin/curl', ['-sSk', '--http1.1', `https://127.0.0.1:${server.port}/body.bin`]);
    const client = await run(cmd, args, { cwd: dir });
    assert.ok(client.stdout.equals(BODY), `curl got the file: ${client.stderr.toString()}`);
    const request = Buffer.from(`GET /body.bin HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n`);
    await checkExchange(rec, client, server, request, V35);
    // curl calls SSL_write/SSL_read: here they reach ssl_write_internal with its 3.5 signature.
  });
});
