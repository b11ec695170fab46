// runtimes.test.ts: TLS beyond the system libssl, against real programs on 127.0.0.1: Go's
// crypto/tls (a client and a server built here with Debian's golang-go, standard library
// only), Node.js's built-in OpenSSL with its memory BIOs, and GnuTLS's roles (wget,
// gnutls-cli, gnutls-serv). Each side's plaintext must be byte-identical to the other side's,
// on the right 4-tuple, with the right role.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { planGo } from '../../helper/discovery/golang';
import { ConnRecord, DataRecord, Direction } from '../../helper/records/records';
import { Recorder, requireKernel } from '../lib/kernel';
import { CertPair, freePort, makeCert, run, startServer, stopAll, testLibFile, tmpDir, waitFor } from '../lib/servers';

/** The bodies the Go and node test programs send: a repeating a–z pattern. */
function az(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = 97 + (i % 26);
  return b;
}

function goProblem(): string | undefined {
  return spawnSync('go', ['version']).error ? 'go is not installed (apt-get install -y golang-go)' : undefined;
}

/**
 * Builds test/lib/gotls into `out` (stripped, or for another GOARCH), offline. The build cache is
 * shared between runs (Go's cache is keyed by content): the arm64 standard library is compiled
 * once per machine, not per run (about a minute).
 */
function buildGo(dir: string, out: string, stripped = false, goarch?: string): void {
  const src = path.dirname(testLibFile('gotls/main.go'));
  const env = { ...process.env, HOME: dir, GOCACHE: process.env.HTTPS_CAPTURE_GOCACHE ?? path.join(os.tmpdir(), 'https-capture-gocache'), GOPATH: path.join(dir, 'gopath'), GOFLAGS: '-mod=mod', GOPROXY: 'off', CGO_ENABLED: '0', ...(goarch ? { GOARCH: goarch } : {}) };
  const args = ['build', '-o', out, ...(stripped ? ['-ldflags=-s -w'] : []), '.'];
  const r = spawnSync('go', args, { cwd: src, env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`go build failed: ${r.stderr}${r.error ?? ''}`);
}

/** The one connection of `pid` in `recs`' data, and the other side's (matched by ports). */
function pair(rec: Recorder, client: number, server: number): { c: bigint; s: bigint; cs: DataRecord['sock'] } {
  const ids = rec.connections(client);
  assert.strictEqual(ids.length, 1, `client ${client} has ${ids.length} connections`);
  const cs = rec.of(client)[0]!.sock;
  const theirs = [...new Set(rec.of(server).filter((r) => r.sock.remotePort === cs.localPort).map((r) => r.connId))];
  assert.strictEqual(theirs.length, 1, `server ${server} has ${theirs.length} connections from port ${cs.localPort}`);
  return { c: ids[0]!, s: theirs[0]!, cs };
}

/** Where two byte streams part: their lengths, the first differing offset and the bytes there. */
function differ(got: Buffer, want: Buffer): string {
  let i = 0;
  while (i < got.length && i < want.length && got[i] === want[i]) i++;
  const at = (b: Buffer): string => JSON.stringify(b.subarray(Math.max(0, i - 16), i + 48).toString('latin1'));
  return `${got.length} bytes vs ${want.length}, first difference at ${i}: ${at(got)} vs ${at(want)}`;
}

/** The records of both ends, one line each, and the kernel's counters: what a failure needs to be explained. */
function dump(rec: Recorder, pids: number[]): string {
  const lines = rec.data
    .filter((r) => pids.includes(r.pid))
    .map((r) => `  pid ${r.pid} tid ${r.tid} conn ${r.connId} ${r.dir} seq ${r.seq} len ${r.data.length} fd ${r.sock.fd} ${r.sock.localPort}->${r.sock.remotePort} ${JSON.stringify(r.data.subarray(0, 32).toString('latin1'))}`);
  const conns = rec.conns.filter((c) => pids.includes(c.pid)).map((c) => `  ${c.kind} pid ${c.pid} conn ${c.connId} fd ${c.sock.fd} ${c.sock.localPort}->${c.sock.remotePort}`);
  return `\n${[...lines.slice(0, 60), ...conns.slice(0, 20)].join('\n')}\n  counters: ${JSON.stringify(rec.capture.counters())}`;
}

/** The two ends of one connection carry the same bytes, on mirrored 4-tuples. */
async function sameBothEnds(rec: Recorder, client: number, server: number): Promise<{ request: Buffer; response: Buffer }> {
  const { c, s, cs } = pair(rec, client, server);
  const evened = await rec.settle({ pid: client, connId: c }, { pid: server, connId: s });
  const ss = rec.of(server).find((r) => r.connId === s)!.sock;
  assert.ok(cs.fd >= 0 && cs.remoteIp === '127.0.0.1' && cs.localIp === '127.0.0.1', `client socket ${JSON.stringify(cs)}`);
  assert.deepStrictEqual([ss.localIp, ss.localPort, ss.remoteIp, ss.remotePort], [cs.remoteIp, cs.remotePort, cs.localIp, cs.localPort]);
  const request = rec.stream(client, 'egress', c);
  const response = rec.stream(client, 'ingress', c);
  const received = rec.stream(server, 'ingress', s);
  const sent = rec.stream(server, 'egress', s);
  if (!received.equals(request)) assert.fail(`server received what the client sent: ${differ(received, request)} (${evened})${dump(rec, [client, server])}`);
  if (!sent.equals(response)) assert.fail(`client received what the server sent: ${differ(sent, response)} (${evened})${dump(rec, [client, server])}`);
  return { request, response };
}

function roleOf(conns: ConnRecord[], pid: number): string[] {
  return [...new Set(conns.filter((r) => r.pid === pid && r.kind === 'open').map((r) => r.sock.role))];
}

async function until(rec: Recorder, pid: number, dir: Direction, bytes: number): Promise<void> {
  await waitFor(() => rec.bytes(pid, dir) >= bytes, { what: `${bytes} bytes of pid ${pid} ${dir}`, timeoutMs: 15_000 });
}

/**
 * The sites of an arm64 plan against the instruction words in the file: every RET site is
 * `ret` (ret x30), each entry site the `b.ls` of the stack check, after the load of
 * g.stackguard0 (ldr x16, [x28, #16]).
 */
function checkArm64Sites(bytes: Buffer, plan: ReturnType<typeof planGo>): void {
  const word = (at: number): number => bytes.readUInt32LE(at);
  assert.ok(plan.write.emulated && plan.read.emulated, 'entry probes on the stack check\'s b.ls');
  for (const f of [plan.write, plan.read]) {
    assert.ok(f.rets.length > 0);
    for (const r of f.rets) assert.strictEqual(word(r), 0xd65f03c0, `RET (ret x30) at ${r}`);
    assert.strictEqual((word(f.entry) & 0xff00001f) >>> 0, 0x54000009, `b.ls at the entry site ${f.entry}: 0x${word(f.entry).toString(16)}`);
    assert.ok([4, 8, 12].some((d) => word(f.entry - d) === 0xf9400b90), 'ldr x16, [x28, #16] before the b.ls');
  }
}

describe('Go probe planning (no kernel needed)', function () {
  this.timeout(120_000);
  let dir: string;

  before(function () {
    const problem = goProblem();
    if (problem) {
      if (process.env.CI === 'true') throw new Error(`Go tests cannot run under CI=true: ${problem}`);
      process.stderr.write(`\n  !!! SKIPPING Go planning tests: ${problem}\n\n`);
      this.skip();
    }
    dir = tmpDir('https-capture-go-');
  });

  it('finds Write/Read, their RETs and the handshakes; a stripped binary (pclntab) gives the same sites', () => {
    buildGo(dir, path.join(dir, 'gotls'));
    buildGo(dir, path.join(dir, 'gotls-stripped'), true);
    const full = planGo(path.join(dir, 'gotls'));
    const stripped = planGo(path.join(dir, 'gotls-stripped'));
    assert.match(full.version, /^go1\.\d+/);
    assert.strictEqual(full.symbols, 'symtab');
    assert.strictEqual(stripped.symbols, 'pclntab');
    assert.ok(full.write.emulated && full.read.emulated, 'entry probes past the stack check');
    assert.ok(full.write.rets.length > 0 && full.read.rets.length > 0);
    assert.ok(full.clientHandshake !== undefined && full.serverHandshake !== undefined);
    // Same code, same offsets: only the symbol source differs.
    assert.deepStrictEqual({ ...stripped, symbols: 'symtab' }, full);
    // Every RET site is a RET and the entry site the stack check's conditional branch, in the
    // file, in this machine's encoding (the build is native: x86-64 or arm64).
    const bytes = fs.readFileSync(path.join(dir, 'gotls'));
    if (process.arch === 'arm64') checkArm64Sites(bytes, full);
    else {
      for (const r of [...full.write.rets, ...full.read.rets]) assert.strictEqual(bytes[r], 0xc3, `RET at ${r}`);
      assert.ok(bytes[full.write.entry] === 0x0f || (bytes[full.write.entry]! & 0xf0) === 0x70, 'a jcc at the entry site');
    }
  });

  it('plans an arm64 build the same way on x86-64: b.ls of the stack check, every RET, symtab and pclntab agree', function () {
    // On arm64 the native build of the test above is the arm64 build, checked there by
    // checkArm64Sites; cross-compiling the amd64 standard library under TCG would take longer
    // than the test's limit and check nothing the x86-64 machines' run of the test above does not.
    if (process.arch === 'arm64') this.skip();
    this.timeout(300_000); // the first cross build compiles the standard library for arm64
    buildGo(dir, path.join(dir, 'gotls-arm64'), false, 'arm64');
    buildGo(dir, path.join(dir, 'gotls-arm64-stripped'), true, 'arm64');
    const plan = (f: string): ReturnType<typeof planGo> => planGo(path.join(dir, f), true);
    const full = plan('gotls-arm64');
    const stripped = plan('gotls-arm64-stripped');
    assert.strictEqual(stripped.symbols, 'pclntab');
    assert.deepStrictEqual({ ...stripped, symbols: 'symtab' }, full);
    assert.ok(full.clientHandshake !== undefined && full.serverHandshake !== undefined);
    checkArm64Sites(fs.readFileSync(path.join(dir, 'gotls-arm64')), full);
    // Where the helper runs on the other architecture, it refuses to probe the file.
    assert.throws(() => planGo(path.join(dir, 'gotls-arm64')), /arm64 executable; this helper runs on x64/);
  });

  it('refuses files that are not Go, with the reason', () => {
    assert.throws(() => planGo('/usr/bin/curl'), /not a Go executable/);
    assert.throws(() => planGo(path.join(dir, 'nope')), /ENOENT/);
  });
});

describe('runtimes: Go, Node.js, GnuTLS (kernel, real programs)', function () {
  this.timeout(120_000);
  let dir: string;
  let cert: CertPair;
  let gotls: string;
  let rec: Recorder | undefined;

  before(async function () {
    requireKernel(this);
    const problem = goProblem();
    if (problem) throw new Error(problem);
    dir = tmpDir('https-capture-rt-');
    cert = await makeCert(dir);
    gotls = path.join(dir, 'gotls');
    buildGo(dir, gotls);
  });

  afterEach(async () => {
    await rec?.stop();
    rec = undefined;
  });

  after(async () => {
    await stopAll();
  });

  it('Go client and server, HTTP/1.1: two POSTs of 64 KiB and their responses, identical on both ends, with roles', async () => {
    const port = await freePort();
    const server = await startServer(gotls, ['server', `127.0.0.1:${port}`, cert.cert, cert.key], port, dir);
    // Found by the /proc scan at start: a Go executable with crypto/tls in a running process.
    rec = new Recorder({ comms: ['gotls'], discovery: { pollMs: 0 } });
    assert.ok(rec.reports.includes(`attached ${gotls} -1`), rec.reports.join('\n'));
    const res = await run(gotls, ['client', `https://127.0.0.1:${port}/up?size=70000`, '-count', '2', '-post', '65536']);
    assert.strictEqual(res.code, 0, res.stderr.toString());
    assert.strictEqual(res.stdout.toString(), 'HTTP/1.1 200 OK 70000\n'.repeat(2));
    await until(rec, server.pid, 'egress', 2 * 70000);
    await until(rec, res.pid, 'ingress', 2 * 70000);
    const { request, response } = await sameBothEnds(rec, res.pid, server.pid);
    const posts = request.toString('latin1').split(/(?=POST \/up\?size=70000 HTTP\/1\.1\r\n)/);
    assert.strictEqual(posts.length, 2, request.toString('latin1').slice(0, 300));
    for (const p of posts) assert.ok(p.endsWith(az(65536).toString('latin1')), 'the 64 KiB body follows its headers');
    const text = response.toString('latin1');
    assert.strictEqual(text.match(/HTTP\/1\.1 200 OK\r\n/g)?.length, 2);
    assert.ok(text.includes(az(70000).toString('latin1')));
    assert.ok(rec.of(res.pid).every((r) => r.func === 'crypto/tls.(*Conn).Write' || r.func === 'crypto/tls.(*Conn).Read'));
    assert.deepStrictEqual(roleOf(rec.conns, res.pid), ['client']);
    assert.deepStrictEqual(roleOf(rec.conns, server.pid), ['server']);
    const counters = await rec.stop();
    assert.strictEqual(counters.bytesLost, 0);
  });

  it('Go HTTP/2: the connection preface and frames, identical on both ends', async () => {
    const port = await freePort();
    const server = await startServer(gotls, ['server', `127.0.0.1:${port}`, cert.cert, cert.key], port, dir);
    rec = new Recorder({ comms: ['gotls'], discovery: { pollMs: 0 } });
    const res = await run(gotls, ['client', `https://127.0.0.1:${port}/h2?size=5000`, '-http2', '-count', '3']);
    assert.strictEqual(res.stdout.toString(), 'HTTP/2.0 200 OK 5000\n'.repeat(3), res.stderr.toString());
    await until(rec, res.pid, 'ingress', 3 * 5000);
    const { request, response } = await sameBothEnds(rec, res.pid, server.pid);
    assert.ok(request.subarray(0, 24).equals(Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')), 'HTTP/2 preface');
    assert.ok(response.includes(az(5000).subarray(0, 4000)), 'a DATA frame carries the body');
  });

  it('a Go executable started after the capture is attached at its exec; its runs from then on are captured', async () => {
    const port = await freePort();
    const server = await startServer(gotls, ['server', `127.0.0.1:${port}`, cert.cert, cert.key], port, dir);
    const late = path.join(dir, 'gotls-late');
    buildGo(dir, late);
    rec = new Recorder({ comms: ['gotls', 'gotls-late'], execEvents: true, discovery: { pollMs: 0 } });
    assert.ok(!rec.reports.some((r) => r.includes(late)));
    // The first run races the attachment (documented in the README): only its exec matters here.
    await run(late, ['client', `https://127.0.0.1:${port}/first`]);
    await waitFor(() => rec!.reports.includes(`attached ${late} -1`), { what: 'the late binary attached' }).catch((e: Error) => {
      throw new Error(`${e.message}; discovery reported: ${rec!.reports.join('; ')}`);
    });
    const res = await run(late, ['client', `https://127.0.0.1:${port}/second?size=100`]);
    assert.strictEqual(res.code, 0);
    await until(rec, res.pid, 'ingress', 100);
    const { request } = await sameBothEnds(rec, res.pid, server.pid);
    assert.match(request.toString(), /^GET \/second\?size=100 HTTP\/1\.1\r\n/);
  });

  it('a Go Write still running when another goroutine closes its socket: its bytes are its connection\'s, which ends after them', async () => {
    rec = new Recorder({ comms: ['gotls'], discovery: { pollMs: 0, extra: [gotls] } });
    assert.ok(rec.reports.includes(`attached ${gotls} -1`), rec.reports.join('\n'));
    // The Write blocks on a peer that reads nothing; Close breaks it, and close(2) runs before
    // the Write returns with the count of what went out.
    const res = await run(gotls, ['closewrite', cert.cert, cert.key, String(64 << 20)]);
    assert.strictEqual(res.code, 0, res.stderr.toString());
    const wrote = Number(/^wrote (\d+)$/m.exec(res.stdout.toString())?.[1]);
    assert.ok(wrote > 0, `the Write moved bytes before the Close: ${res.stdout}`);
    const conns = (): ConnRecord[] => rec!.conns.filter((c) => c.pid === res.pid);
    const write = await waitFor(() => rec!.of(res.pid, 'egress').filter((r) => r.callLen === wrote).at(0), { what: "the Write's record" });
    const id = write.connId;
    assert.ok(write.sock.fd >= 0 && write.sock.role === 'client', `on the client end, with its socket: ${JSON.stringify(write.sock)}`);
    const close = await waitFor(() => conns().find((c) => c.kind === 'close' && c.connId === id), { what: "the client end's close" });
    // One connection moved bytes (the peer read none): no other, of unknown socket, was made
    // up for the bytes the Write reported after its socket was closed.
    assert.deepStrictEqual(conns().filter((c) => c.kind === 'open').map((c) => [c.connId, c.sock.fd >= 0]), [[id, true]], conns().map((c) => `${c.kind} ${c.connId} fd ${c.sock.fd}`).join('; '));
    assert.ok(rec.of(res.pid).every((r) => r.connId === id), 'every record on that connection');
    assert.strictEqual(close.reason, 'close');
    assert.strictEqual(close.egressBytes, rec.of(res.pid, 'egress').filter((r) => r.connId === id && r.chunkOff === 0).reduce((n, r) => n + r.callLen, 0), 'its close counts the Write');
  });

  it('Node.js https client and server (memory BIOs): every connection on its socket and 4-tuple', async () => {
    const port = await freePort();
    const script = testLibFile('node_tls.js');
    rec = new Recorder({ comms: ['node'], discovery: { pollMs: 0 } });
    const server = await startServer(process.execPath, [script, 'server', String(port), cert.cert, cert.key], port, dir);
    const res = await run(process.execPath, [script, 'client', String(port), '3000', '2']);
    assert.strictEqual(res.stdout.toString(), '200 3000\n200 3000\n', res.stderr.toString());
    await until(rec, res.pid, 'ingress', 6000);
    const { request, response } = await sameBothEnds(rec, res.pid, server.pid);
    assert.strictEqual(request.toString().match(/^GET \/\?size=3000 HTTP\/1\.1\r\n/gm)?.length, 2);
    assert.ok(response.toString('latin1').includes(az(3000).toString('latin1')));
    assert.deepStrictEqual(roleOf(rec.conns, res.pid), ['client']);
    assert.deepStrictEqual(roleOf(rec.conns, server.pid), ['server']);
    // Every connection node opened or accepted has its socket, none is left at fd -1.
    for (const pid of [res.pid, server.pid]) {
      for (const r of rec.conns.filter((c) => c.pid === pid && c.kind === 'open')) assert.ok(r.sock.fd >= 0 && r.sock.localPort > 0, JSON.stringify(r.sock));
    }
  });

  it('Node.js http2 client and server: one session, three streams, on its socket', async () => {
    const port = await freePort();
    const script = testLibFile('node_tls.js');
    rec = new Recorder({ comms: ['node'], discovery: { pollMs: 0 } });
    const server = await startServer(process.execPath, [script, 'server2', String(port), cert.cert, cert.key], port, dir);
    const res = await run(process.execPath, [script, 'client2', String(port), '2000', '3']);
    assert.strictEqual(res.stdout.toString(), '200 2000\n'.repeat(3), res.stderr.toString());
    await until(rec, res.pid, 'ingress', 6000);
    const { request } = await sameBothEnds(rec, res.pid, server.pid);
    assert.ok(request.subarray(0, 24).equals(Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')), 'HTTP/2 preface');
  });

  it('GnuTLS roles: gnutls-cli is a client and gnutls-serv a server, with the plaintext of both', async () => {
    const port = await freePort();
    const server = await startServer('gnutls-serv', ['--http', '-p', String(port), `--x509certfile=${cert.cert}`, `--x509keyfile=${cert.key}`], port, dir);
    rec = new Recorder({ comms: ['gnutls-cli', 'gnutls-serv'], discovery: { pollMs: 0 } });
    const res = await run('gnutls-cli', ['--insecure', '-p', String(port), '127.0.0.1'], {
      input: Buffer.from('GET /gnutls-role HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n'),
    });
    assert.match(res.stdout.toString(), /HTTP\/1\.0 200 OK/);
    await waitFor(() => rec!.of(server.pid, 'ingress').length > 0 && rec!.of(res.pid, 'ingress').length > 0, { what: 'both sides captured' });
    const { request, response } = await sameBothEnds(rec, res.pid, server.pid);
    assert.match(request.toString(), /^GET \/gnutls-role HTTP\/1\.0\r\n/);
    assert.match(response.toString(), /^HTTP\/1\.0 200 OK/);
    assert.deepStrictEqual(roleOf(rec.conns, res.pid), ['client']);
    assert.deepStrictEqual(roleOf(rec.conns, server.pid), ['server']);
  });
});
