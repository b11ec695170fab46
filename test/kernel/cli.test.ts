// cli.test.ts: the `https-capture` command as a person runs it: output of a real curl
// request, clean exit on signals, no probe left behind even after SIGKILL, a private
// output file, and one-line errors that name a cause and a fix.
import * as assert from 'assert';
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { heldByProcess, noneLeft, requireKernel } from '../lib/kernel';
import { CertPair, curl, makeCert, run, Server, startSServer, TIME_SCALE, tmpDir, waitFor } from '../lib/servers';
import { CLI } from '../lib/paths';
import { cleanUpAfter } from '../lib/hooks';


interface Running {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const running = new Set<ChildProcess>();

function start(args: string[]): Running {
  const child = spawn(process.execPath, [CLI, '--no-color', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  running.add(child);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    }),
  );
  return { child, stdout: () => out, stderr: () => err, exited };
}

async function ready(r: Running): Promise<void> {
  await waitFor(() => r.stderr().includes('capturing TLS plaintext'), { timeoutMs: 20000, what: `the helper to attach (stderr: ${r.stderr()})` });
}

/** Error output of a failed run: a cause line and a fix line, no stack trace. */
function assertOneLineError(stderr: string, cause: RegExp): void {
  const lines = stderr.trim().split('\n');
  assert.match(lines[0]!, /^https-capture: error: /);
  assert.match(lines[0]!, cause);
  assert.match(lines[1]!, /^ {2}fix: ./);
  assert.ok(!/^\s+at /m.test(stderr), `no stack trace: ${stderr}`);
}

describe('https-capture command', function () {
  let dir: string;
  let server: Server;
  let cert: CertPair;

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-cli-');
    cert = await makeCert(dir);
    server = await startSServer({ dir, ...cert, mode: 'www' });
  });

  afterEach(() => {
    // A failed test must not leave a privileged helper running.
    for (const child of running) child.kill('SIGKILL');
  });

  cleanUpAfter(() => dir);

  it('prints a curl request and its response (text: read until the close) with curl\'s pid and name; SIGINT exits 0', async () => {
    const r = start([]);
    await ready(r);
    const held = heldByProcess(r.child.pid!);
    assert.ok(held.progs.length >= 10 && held.links.length >= 10, `it holds its programs and links (${JSON.stringify(held)})`);
    const res = await curl(`https://127.0.0.1:${server.port}/some/path`);
    assert.strictEqual(res.code, 0);
    // s_server -www answers HTTP/1.0 with no length: the body ends with the connection.
    await waitFor(() => new RegExp(`curl\\[${res.pid}\\] conn \\d+ closed`).test(r.stdout()), { what: `the exchange in the output (${r.stdout()})` });
    r.child.kill('SIGINT');
    const exit = await r.exited;
    assert.deepStrictEqual(exit, { code: 0, signal: null });
    const out = r.stdout();
    assert.match(out, new RegExp(`curl\\[${res.pid}\\] conn \\d+ HTTP/1\\.1 \\(client 127\\.0\\.0\\.1:\\d+ -> 127\\.0\\.0\\.1:${server.port}\\)\\n`));
    assert.match(out, /\n> GET \/some\/path HTTP\/1\.1\n> Host: 127\.0\.0\.1:\d+\n> User-Agent: curl/);
    assert.match(out, /\n< HTTP\/1\.0 200 ok \(\d+ bytes, [\d.]+ m?s\)\n< Content-type: text\/html\n/);
    assert.match(out, new RegExp(`curl\\[${res.pid}\\] conn \\d+ closed \\([a-z_]+\\): 1 HTTP/1 exchange, \\d+ bytes sent, \\d+ received\\n`));
    assert.match(r.stderr(), /stopped: \d+ calls, \d+ bytes moved, \d+ captured, 0 past the per-call cap, 0 shed under load \(bodies cut to their heads\), 0 lost/);
    await noneLeft(held);
  });

  it('a client killed mid-connection: its connection ends with the process', async () => {
    // s_server -rev answers each line and keeps the connection open.
    const rev = await startSServer({ dir, ...cert, mode: 'rev' });
    const r = start(['--comm', 'openssl']);
    await ready(r);
    // s_client sets its socket with a BIO, not SSL_set_fd: the fd comes from the handshake.
    const client = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${rev.port}`, '-quiet'], { stdio: ['pipe', 'ignore', 'ignore'] });
    client.stdin!.write('a line\n');
    const pid = client.pid!;
    await waitFor(() => new RegExp(`openssl\\[${pid}\\] conn \\d+ opened client 127\\.0\\.0\\.1:\\d+ -> 127\\.0\\.0\\.1:${rev.port}`).test(r.stdout()), {
      what: `the client's connection to open (${r.stdout()})`,
    });
    client.kill('SIGKILL');
    await waitFor(() => new RegExp(`openssl\\[${pid}\\] conn \\d+ closed \\(process exit\\)`).test(r.stdout()), { what: 'its end' });
    r.child.kill('SIGINT');
    assert.strictEqual((await r.exited).code, 0);
    await rev.stop();
  });

  it('--output writes a file only its owner can read (--format raw: call by call); SIGTERM exits 0', async () => {
    const file = path.join(dir, 'capture.txt');
    fs.writeFileSync(file, 'old contents', { mode: 0o644 });
    const r = start(['--output', file, '--comm', 'curl', '--format', 'raw']);
    await ready(r);
    const res = await curl(`https://127.0.0.1:${server.port}/to/file`);
    await waitFor(() => fs.readFileSync(file, 'utf8').includes(`curl[${res.pid}] << received`), { what: 'the capture in the file' });
    r.child.kill('SIGTERM');
    assert.strictEqual((await r.exited).code, 0);
    assert.strictEqual(fs.statSync(file).mode & 0o777, 0o600);
    const text = fs.readFileSync(file, 'utf8');
    assert.match(text, /GET \/to\/file HTTP\/1\.1/);
    assert.ok(!text.includes('old contents'));
    assert.strictEqual(r.stdout(), '', 'nothing on stdout');
  });

  it('leaves no BPF program or link behind when killed with SIGKILL', async () => {
    const r = start([]);
    await ready(r);
    const held = heldByProcess(r.child.pid!);
    assert.ok(held.progs.length >= 10 && held.links.length >= 10, 'it holds its programs and links');
    r.child.kill('SIGKILL');
    assert.strictEqual((await r.exited).signal, 'SIGKILL');
    await noneLeft(held);
  });

  it('stops by itself after --duration', async () => {
    const r = start(['--duration', '1']);
    const t0 = Date.now();
    assert.strictEqual((await r.exited).code, 0);
    assert.ok(Date.now() - t0 < 15000 * TIME_SCALE);
    assert.match(r.stderr(), /stopped:/);
  });

  it('without privileges: one line naming the capability, and the fix', async () => {
    // Root without any capability is what an unprivileged user is to the kernel.
    const res = await run('setpriv', ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', process.execPath, CLI]);
    assert.strictEqual(res.code, 1);
    assertOneLineError(res.stderr.toString(), /eBPF uprobes need CAP_SYS_ADMIN .*lacks CAP_SYS_ADMIN and CAP_BPF and CAP_PERFMON/);
  });

  it('bad options: a clear message and a usage exit code', async () => {
    const ring = await run(process.execPath, [CLI, '--ring-size', '5000']);
    assert.strictEqual(ring.code, 2);
    assertOneLineError(ring.stderr.toString(), /not a power of two/);
    const cap = await run(process.execPath, [CLI, '--call-cap', 'lots']);
    assert.notStrictEqual(cap.code, 0);
    assert.match(cap.stderr.toString(), /--call-cap must be an integer/);
    const format = await run(process.execPath, [CLI, '--format', 'xml']);
    assert.strictEqual(format.code, 2);
    assertOneLineError(format.stderr.toString(), /unknown format "xml"/);
    const ipc = await run(process.execPath, [CLI, '--ipc', '--format', 'har']);
    assert.strictEqual(ipc.code, 2);
    assertOneLineError(ipc.stderr.toString(), /--format is for people and --ipc writes frames for a host/);
  });
});
