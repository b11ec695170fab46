// faults.test.ts: the helper when things around it fail (kernel, real programs on 127.0.0.1):
// its host dies (SIGKILL, with its pipes or with stdin held open elsewhere); a server or a
// client is killed in the middle of a response; the library it probes is deleted while a
// process maps it, then copied back; 1,000 short-lived clients in a row. Each time the helper
// keeps working, ends every connection with end of stream, and loses nothing unaccounted.
import * as assert from 'assert';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { ByeFrame, ConnCloseFrame, ConnOpenFrame, ProcessFrame, SegmentFrame } from '../../helper/protocol/generated';
import { Exchange, HelperHost } from '../../helper/host/host';
import { FrameDecoder, FrameError, RawFrame } from '../../helper/protocol/wire';
import { heldByProcess, noneLeft, requireKernel } from '../lib/kernel';
import { curl, NginxServer, pattern, run, startNginx, startRequester, testLibFile, tmpDir, waitFor } from '../lib/servers';
import { statusKiB } from '../lib/procfs';
import { CLI } from '../lib/paths';
import { cleanUpAfter } from '../lib/hooks';

const SYSTEM_LIBSSL = '/usr/lib/x86_64-linux-gnu/libssl.so.3';
const MiB = 1 << 20;
/** How long a stop may take before the host kills the helper: detaching is slow on a loaded machine. */
const CLOSE_MS = 60_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Whether a process is gone (or a zombie nobody reaped yet: it holds nothing any more). */
function gone(pid: number): boolean {
  try {
    return /^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return true;
  }
}

function framesOf(file: string): RawFrame[] {
  const out: RawFrame[] = [];
  for (const x of new FrameDecoder({ validate: true }).push(fs.readFileSync(file))) {
    if (x instanceof FrameError) throw x;
    out.push(x);
  }
  return out;
}

/** Every frame of one helper run, by type. */
function collect(host: HelperHost): {
  opens: ConnOpenFrame[];
  segs: SegmentFrame[];
  closes: ConnCloseFrame[];
  procs: ProcessFrame[];
  exchanges: Exchange[];
  errors: string[];
  bye: () => ByeFrame | undefined;
} {
  const out = { opens: [] as ConnOpenFrame[], segs: [] as SegmentFrame[], closes: [] as ConnCloseFrame[], procs: [] as ProcessFrame[], exchanges: [] as Exchange[], errors: [] as string[] };
  let bye: ByeFrame | undefined;
  host.on('conn_open', (c) => out.opens.push(c));
  host.on('segment', (s) => out.segs.push(s));
  host.on('conn_close', (c) => out.closes.push(c));
  host.on('process', (p) => out.procs.push(p));
  host.on('exchange', (e) => out.exchanges.push(e));
  host.on('protocol_error', (e) => out.errors.push(e.message));
  host.on('error', (e) => out.errors.push(`${e.code}: ${e.message}`));
  host.on('bye', (b) => (bye = b));
  return { ...out, bye: () => bye };
}

/** Segments by connection and direction ("pid:conn_id:dir"), in arrival order. */
function bySocket(segs: SegmentFrame[]): Map<string, SegmentFrame[]> {
  const out = new Map<string, SegmentFrame[]>();
  for (const s of segs) {
    const k = `${s.pid}:${s.conn_id}:${s.dir}`;
    const l = out.get(k);
    if (l) l.push(s);
    else out.set(k, [s]);
  }
  return out;
}

/** The bytes of one direction of one connection, asserting that they have no gap. */
function streamOf(segs: SegmentFrame[] | Map<string, SegmentFrame[]>, pid: number, connId: bigint, dir: 0 | 1): Buffer {
  let at = 0n;
  const parts: Buffer[] = [];
  const mine = Array.isArray(segs) ? segs : (segs.get(`${pid}:${connId}:${dir}`) ?? []);
  for (const s of mine) {
    if (s.pid !== pid || s.conn_id !== connId || s.dir !== dir) continue;
    assert.strictEqual(s.seq, at, `pid ${pid} conn ${connId} dir ${dir}: segment at ${s.seq}, expected ${at}`);
    assert.strictEqual(s.lost_before, 0);
    parts.push(Buffer.from(s.data));
    at += BigInt(s.data.length);
  }
  return Buffer.concat(parts);
}

async function attached(host: HelperHost): Promise<void> {
  await host.ready;
  await waitFor(() => host.stderr.includes('capturing TLS plaintext'), { timeoutMs: 20_000, what: `the helper to attach (stderr: ${host.stderr})` });
}

describe('faults (kernel, real programs)', function () {
  let dir: string;
  let nginx: NginxServer;
  let host: HelperHost | undefined;
  const big = pattern(8 * MiB, 5);
  const killLater: number[] = [];

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-faults-');
    nginx = await startNginx({ dir: path.join(dir, 'nginx'), files: { 'big.bin': big, 'small.txt': Buffer.from('hello\n') } });
  });

  afterEach(async () => {
    await host?.close(CLOSE_MS);
    host = undefined;
    for (const pid of killLater.splice(0)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });

  cleanUpAfter(() => dir);

  it('the host is killed (SIGKILL) with the pipes it holds: the helper detaches everything and exits', async function () {
    this.timeout(40_000);
    // A host that spawns the helper with pipes, reads its frames, and prints the helper's pid.
    // The helper's stderr is ours, so we see its last words after the host is gone.
    const script = `const h = require('child_process').spawn(process.execPath, [${JSON.stringify(CLI)}, '--ipc', '--port', '${nginx.port}'], { stdio: ['pipe', 'pipe', 'inherit'] });
      h.stdout.resume(); console.log(h.pid); setInterval(() => {}, 1000);`;
    const parent = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    killLater.push(parent.pid!);
    let out = '';
    let err = '';
    parent.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    parent.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    const pid = Number(await waitFor(() => /^(\d+)\n/.exec(out)?.[1], { what: "the helper's pid" }));
    killLater.push(pid);
    await waitFor(() => err.includes('capturing TLS plaintext'), { timeoutMs: 20_000, what: `the helper to attach (${err})` });
    const held = heldByProcess(pid);
    assert.ok(held.progs.length >= 10 && held.links.length >= 10, `it holds its programs and links (${JSON.stringify(held)})`);
    // It captures while its host dies.
    const r = await curl(`https://127.0.0.1:${nginx.port}/small.txt`);
    assert.strictEqual(r.code, 0);
    const t0 = Date.now();
    parent.kill('SIGKILL');
    await waitFor(() => gone(pid), { timeoutMs: 20_000, what: `the helper (${pid}) to exit after its host died; stderr: ${err}` });
    process.stderr.write(`      helper gone ${Date.now() - t0} ms after its host\n`);
    assert.match(err, /stopped \((stdin_closed|parent_exited)\)|stdout closed/, err);
    await noneLeft(held);
  });

  it('the parent dies while stdin stays open elsewhere: the helper notices (bye parent_exited) and leaves no probe', async function () {
    this.timeout(40_000);
    // stdin is a FIFO we hold open, stdout and stderr are files: only the parent's death can
    // tell the helper to stop.
    const fifo = path.join(dir, 'stdin.fifo');
    const outFile = path.join(dir, 'frames.out');
    const errFile = path.join(dir, 'helper.err');
    assert.strictEqual((await run('mkfifo', [fifo])).code, 0);
    const holder = fs.openSync(fifo, 'r+'); // O_RDWR: does not wait for a reader
    try {
      const sh = spawn('sh', ['-c', `"$0" "$1" --ipc --port ${nginx.port} <"$2" >"$3" 2>"$4" & echo $!; wait`, process.execPath, CLI, fifo, outFile, errFile], {
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      killLater.push(sh.pid!);
      let out = '';
      sh.stdout!.on('data', (b: Buffer) => (out += b.toString()));
      const pid = Number(await waitFor(() => /^(\d+)\n/.exec(out)?.[1], { what: "the helper's pid" }));
      killLater.push(pid);
      const errText = (): string => (fs.existsSync(errFile) ? fs.readFileSync(errFile, 'utf8') : '');
      await waitFor(() => errText().includes('capturing TLS plaintext'), { timeoutMs: 20_000, what: `the helper to attach (${errText()})` });
      const held = heldByProcess(pid);
      assert.ok(held.links.length >= 10, 'it holds its links');
      const r = await curl(`https://127.0.0.1:${nginx.port}/small.txt?before=parent-death`);
      assert.strictEqual(r.code, 0);
      await sleep(300);
      sh.kill('SIGKILL');
      await waitFor(() => gone(pid), { timeoutMs: 20_000, what: `the helper to exit after its parent died (${errText()})` });
      const frames = framesOf(outFile);
      assert.strictEqual(frames[0]!.type, 'hello');
      const bye = frames[frames.length - 1]!;
      assert.strictEqual(bye.type, 'bye');
      assert.strictEqual(bye.reason, 'parent_exited');
      // What it captured before is all there, and every connection was ended.
      const segs = frames.filter((f) => f.type === 'segment' && f.pid === r.pid);
      assert.match(Buffer.concat(segs.filter((s) => s.dir === 0).map((s) => s.data as Buffer)).toString(), /^GET \/small\.txt\?before=parent-death HTTP\/1\.1\r\n/);
      const opened = new Set(frames.filter((f) => f.type === 'conn_open').map((f) => `${f.pid}:${f.conn_id}`));
      const closed = new Set(frames.filter((f) => f.type === 'conn_close' && f.eos === true).map((f) => `${f.pid}:${f.conn_id}`));
      assert.deepStrictEqual([...opened].filter((c) => !closed.has(c)), [], 'every conn_open has its conn_close (eos)');
      await noneLeft(held);
    } finally {
      fs.closeSync(holder);
    }
  });

  for (const victim of ['server', 'client'] as const) {
    it(`the ${victim} is killed (SIGKILL) in the middle of an 8 MiB response: both connections end with eos, offsets exact, capture goes on`, async function () {
      this.timeout(60_000);
      host = new HelperHost({ command: process.execPath, args: [CLI, '--ipc', '--port', String(nginx.port)] });
      const f = collect(host);
      await attached(host);
      const out = path.join(dir, `partial-${victim}.bin`);
      // curl reads slowly, so the response is still flowing when one side dies.
      const done = curl(`https://127.0.0.1:${nginx.port}/big.bin`, ['--limit-rate', '2M', '-o', out]);
      const curlPid = await waitFor(() => f.opens.find((o) => o.comm === 'curl')?.pid, { what: "curl's connection" });
      await waitFor(() => f.segs.filter((s) => s.pid === curlPid && s.dir === 1).reduce((n, s) => n + s.data.length, 0) > MiB, { what: '1 MiB of the response at curl' });
      const worker = nginx.workerPids().find((p) => f.opens.some((o) => o.pid === p));
      assert.ok(worker, `an nginx worker's connection (workers ${nginx.workerPids()})`);
      process.kill(victim === 'server' ? worker : curlPid, 'SIGKILL');
      const r = await done;
      if (victim === 'server') assert.notStrictEqual(r.code, 0, 'curl saw the server die');
      else assert.strictEqual(r.signal, 'SIGKILL');
      const closeOf = (pid: number): ConnCloseFrame | undefined => f.closes.find((c) => c.pid === pid);
      await waitFor(() => closeOf(curlPid) && closeOf(worker), { what: 'conn_close of both ends' });
      const c = closeOf(curlPid)!;
      const s = closeOf(worker)!;
      const cOpen = f.opens.find((o) => o.pid === curlPid)!;
      const sOpen = f.opens.find((o) => o.pid === worker && o.remote_port === cOpen.local_port);
      assert.ok(sOpen, "the worker's end of curl's connection");
      assert.strictEqual(s.conn_id, sOpen.conn_id, 'one connection at the worker');
      assert.strictEqual(c.eos && s.eos, true);
      // The one killed ends at its exit; the other at its close of the socket.
      assert.strictEqual((victim === 'server' ? s : c).reason, 'process_exit');
      // Every byte each side moved was captured, without a gap, up to the end conn_close gives.
      const cIn = streamOf(f.segs, curlPid, c.conn_id, 1);
      const sOut = streamOf(f.segs, worker, s.conn_id, 0);
      assert.strictEqual(BigInt(cIn.length), c.ingress_end);
      assert.strictEqual(BigInt(sOut.length), s.egress_end);
      assert.ok(sOut.subarray(0, cIn.length).equals(cIn), 'curl read a prefix of what the worker wrote');
      assert.ok(cIn.length < big.length && sOut.length < big.length + 1024, `the response was cut (${cIn.length}, ${sOut.length} bytes)`);
      assert.ok(streamOf(f.segs, curlPid, c.conn_id, 0).equals(streamOf(f.segs, worker, s.conn_id, 1)), 'the request, the same on both ends');
      const head = cIn.indexOf('\r\n\r\n') + 4;
      assert.ok(cIn.subarray(head).equals(big.subarray(0, cIn.length - head)), 'the body so far, byte for byte');
      if (victim === 'server') assert.strictEqual(fs.statSync(out).size, cIn.length - head, 'what curl saved is what was captured');
      process.stderr.write(`      ${victim} killed: curl read ${cIn.length} bytes (end ${c.reason}), the worker wrote ${sOut.length} (end ${s.reason})\n`);
      // The helper goes on: the next request (a new worker, if nginx had to start one) is whole.
      const next = await curl(`https://127.0.0.1:${nginx.port}/small.txt?after=${victim}`);
      assert.strictEqual(next.code, 0, next.stderr.toString());
      await waitFor(() => f.exchanges.find((e) => e.pid === next.pid && e.response.body.toString() === 'hello\n'), { what: 'the exchange after the kill' });
      const bye = await host.close(CLOSE_MS);
      host = undefined;
      assert.strictEqual(bye?.reason, 'shutdown');
      assert.strictEqual(bye.kernel.bytes_lost + bye.kernel.bytes_faulted + bye.writer.dropped_bytes + (bye.kernel.calls_missed ?? 1), 0, 'nothing lost');
      assert.deepStrictEqual(f.errors, []);
    });
  }

  it('an attached library deleted while a process maps it, then copied back: the helper says so, keeps capturing the old one, and captures the new one', async function () {
    this.timeout(60_000);
    const lib = path.join(dir, 'deleted');
    fs.mkdirSync(lib, { recursive: true });
    const file = path.join(lib, 'libssl.so.3');
    fs.copyFileSync(SYSTEM_LIBSSL, file);
    const env = { ...process.env, LD_LIBRARY_PATH: lib };
    host = new HelperHost({ command: process.execPath, args: [CLI, '--ipc', '--port', String(nginx.port), '--poll-interval', '500'] });
    const f = collect(host);
    await attached(host);
    const attachedTo = (): ProcessFrame[] => f.procs.filter((p) => p.library === file && p.state === 'attached');
    const got = async (pid: number, tag: string): Promise<void> => {
      const ex = await waitFor(() => f.exchanges.find((e) => e.pid === pid && e.request.url === `/small.txt?${tag}`), { timeoutMs: 30_000, what: `the exchange ${tag} of ${pid}` });
      assert.strictEqual(ex.response.body.toString(), 'hello\n');
    };

    // A process loads the private copy (the helper sees it opened and attaches to it).
    const old = await startRequester(nginx.port, env);
    await waitFor(() => attachedTo().length === 1, { timeoutMs: 30_000, what: 'the private copy to be attached' });
    assert.strictEqual((await old.get('/small.txt?step=1')).status, 200);
    await got(old.pid, 'step=1');

    // Deleted while mapped: the helper says so and keeps its probes (the kernel keeps the inode).
    fs.unlinkSync(file);
    await waitFor(() => host!.stderr.includes(`${file} was deleted on disk; its probes stay while processes map it`), { timeoutMs: 30_000, what: 'the helper to report the deletion' });
    await sleep(1500); // a few polls
    assert.ok(!f.procs.some((p) => p.state === 'detached'), 'nothing detached while the deleted file is mapped');
    assert.strictEqual((await old.get('/small.txt?step=2')).status, 200);
    await got(old.pid, 'step=2');

    // A new copy: the next process to load it gets probes on it.
    fs.copyFileSync(SYSTEM_LIBSSL, file);
    const fresh = await startRequester(nginx.port, env);
    await waitFor(() => attachedTo().length === 2, { timeoutMs: 30_000, what: 'the new copy to be attached' }).catch((e: Error) => {
      throw new Error(`${e.message}; process frames: ${f.procs.map((p) => `${p.state} ${p.library} (${p.reason})`).join('; ')}; stderr: ${host!.stderr}`);
    });
    assert.strictEqual((await fresh.get('/small.txt?step=3')).status, 200);
    await got(fresh.pid, 'step=3');
    // The first process, still on the deleted file, is still captured.
    await sleep(1500);
    assert.strictEqual((await old.get('/small.txt?step=4')).status, 200);
    await got(old.pid, 'step=4');

    // Once no process maps the deleted file, its probes go (and the kernel can free it).
    await old.stop();
    const det = await waitFor(() => f.procs.find((p) => p.state === 'detached'), { timeoutMs: 30_000, what: 'the deleted file to be detached' });
    assert.ok(det.library.startsWith(`${file} (replaced `), det.library);
    assert.match(det.reason, /^deleted on disk and no longer mapped by any process$/);
    assert.strictEqual((await fresh.get('/small.txt?step=5')).status, 200);
    await got(fresh.pid, 'step=5');
    await fresh.stop();
    const bye = await host.close(CLOSE_MS);
    host = undefined;
    assert.strictEqual(bye?.kernel.bytes_lost, 0);
    assert.deepStrictEqual(f.errors, []);
  });

  it('10,000 concurrent TLS connections (node client, nginx): every one captured on both ends with its 4-tuple, none merged, nothing lost', async function () {
    this.timeout(300_000);
    const N = Number(process.env.FAULTS_CONNECTIONS ?? 10_000);
    const many = await startNginx({ dir: path.join(dir, 'nginx-many'), files: { 'small.txt': Buffer.from('hello\n') }, workerConnections: N + 1000 });
    host = new HelperHost({ command: process.execPath, args: [CLI, '--ipc', '--port', String(many.port)] });
    const f = collect(host);
    await attached(host);
    const helperPid = host.child.pid!;
    const rss: number[] = [];
    const sampler = setInterval(() => rss.push(statusKiB(helperPid)), 500);
    let result: { ports: number[]; sent: number[]; received: number[]; ms: Record<string, number> };
    let client: number;
    const t0 = Date.now();
    try {
      // The client holds every connection open at once: its fd limit must allow them.
      const r = await run('prlimit', [`--nofile=${N + 1000}:${N + 1000}`, process.execPath, testLibFile('many_conns.js'), String(many.port), String(N), '/small.txt'], { timeoutMs: 240_000 });
      assert.strictEqual(r.code, 0, r.stderr.toString());
      result = JSON.parse(r.stdout.toString());
      client = r.pid;
      const worker = many.workerPids()[0]!;
      await waitFor(() => f.closes.filter((c) => c.pid === client).length >= N && f.closes.filter((c) => c.pid === worker).length >= N, {
        timeoutMs: 60_000,
        what: `conn_close of every connection at both ends (have ${f.closes.length})`,
      });
    } finally {
      clearInterval(sampler);
    }
    const ms = Date.now() - t0;
    rss.push(statusKiB(helperPid));
    const tStop = Date.now();
    const bye = await host.close(CLOSE_MS);
    const stopMs = Date.now() - tStop;
    host = undefined;
    const worker = many.workerPids()[0]!;
    const k = bye!.kernel;
    process.stderr.write(
      `      ${N} connections held at once: opened in ${result.ms.open} ms, ${N} requests in ${result.ms.requests} ms, all in ${ms} ms; stop ${stopMs} ms; ` +
        `helper RSS ${rss[0]} -> max ${Math.max(...rss)} KiB; kernel ${JSON.stringify(k)}; writer ${JSON.stringify(bye!.writer)}\n`,
    );
    assert.deepStrictEqual(f.errors, []);
    assert.strictEqual(k.bytes_lost + k.bytes_faulted + k.events_lost + bye!.writer.dropped_bytes + (k.calls_missed ?? 1), 0, 'nothing lost');
    // Ground truth: the client's own ports, and nginx's access log (client port -> request).
    const portOf = new Map<number, number>(); // i -> client port
    result.ports.forEach((p, i) => portOf.set(i, p));
    assert.strictEqual(new Set(result.ports).size, N, 'the client had N distinct local ports');
    const logged = fs.readFileSync(many.accessLog, 'utf8').trim().split('\n');
    assert.strictEqual(logged.length, N);
    for (const l of logged) {
      const m = /^127\.0\.0\.1:(\d+) GET \/small\.txt\?i=(\d+) 200 /.exec(l);
      assert.ok(m && portOf.get(Number(m[2])) === Number(m[1]), `access log: ${l}`);
    }
    // Both ends: one connection per socket, its request the one made on that socket.
    const index = bySocket(f.segs);
    const closes = new Map(f.closes.map((c) => [`${c.pid}:${c.conn_id}`, c]));
    for (const [pid, side] of [[client!, 'client'], [worker, 'server']] as const) {
      const opens = f.opens.filter((o) => o.pid === pid);
      assert.strictEqual(opens.length, N, `${side}: ${opens.length} connections`);
      assert.strictEqual(new Set(opens.map((o) => o.conn_id)).size, N, `${side}: distinct connection ids`);
      const peerPorts = new Set<number>();
      for (const o of opens) {
        const clientPort = side === 'client' ? o.local_port : o.remote_port;
        assert.strictEqual(side === 'client' ? o.remote_port : o.local_port, many.port);
        assert.ok(o.fd >= 0 && o.local_ip === '127.0.0.1' && o.remote_ip === '127.0.0.1', `${side} conn ${o.conn_id}: fd ${o.fd} ${o.local_ip}:${o.local_port} -> ${o.remote_ip}:${o.remote_port}`);
        assert.strictEqual(o.role, side);
        peerPorts.add(clientPort);
        const req = streamOf(index, pid, o.conn_id, side === 'client' ? 0 : 1).toString('latin1');
        const i = Number(/^GET \/small\.txt\?i=(\d+) HTTP\/1\.1\r\n/.exec(req)?.[1] ?? -1);
        assert.strictEqual(portOf.get(i), clientPort, `${side} conn ${o.conn_id} (client port ${clientPort}) carries the request of connection ${i}`);
        assert.strictEqual(req.length, result.sent[i], `${side} conn ${o.conn_id}: the whole request`);
        const resp = streamOf(index, pid, o.conn_id, side === 'client' ? 1 : 0);
        assert.strictEqual(resp.length, result.received[i], `${side} conn ${o.conn_id}: the whole response`);
        assert.ok(resp.toString('latin1').endsWith('\r\n\r\nhello\n'));
        const c = closes.get(`${pid}:${o.conn_id}`);
        assert.ok(c?.eos, `${side} conn ${o.conn_id} ended`);
      }
      assert.strictEqual(peerPorts.size, N, `${side}: every client port once`);
    }
    await many.stop();
  });

  it('1,000 short-lived curl processes in a row: every request and response captured, each on its own connection', async function () {
    this.timeout(240_000);
    host = new HelperHost({ command: process.execPath, args: [CLI, '--ipc', '--comm', 'curl', '--port', String(nginx.port)] });
    const f = collect(host);
    await attached(host);
    const N = 1000;
    const t0 = Date.now();
    const pids: number[] = [];
    for (let i = 0; i < N; i++) {
      const r = await curl(`https://127.0.0.1:${nginx.port}/small.txt?n=${i}`);
      assert.strictEqual(r.code, 0, r.stderr.toString());
      pids.push(r.pid);
    }
    const ms = Date.now() - t0;
    await waitFor(() => pids.every((p) => f.closes.some((c) => c.pid === p)), { timeoutMs: 20_000, what: 'conn_close of every curl' });
    const bye = await host.close(CLOSE_MS);
    host = undefined;
    const byPid = new Map<number, Exchange[]>();
    for (const e of f.exchanges) byPid.set(e.pid, [...(byPid.get(e.pid) ?? []), e]);
    const missing = pids.filter((p) => byPid.get(p)?.length !== 1);
    process.stderr.write(`      ${N} curl runs in ${ms} ms (${(ms / N).toFixed(1)} ms each); ${N - missing.length} captured whole; kernel: ${JSON.stringify(bye!.kernel)}\n`);
    assert.deepStrictEqual(missing, [], 'every curl run has exactly one exchange');
    pids.forEach((p, i) => {
      const e = byPid.get(p)![0]!;
      assert.strictEqual(e.request.url, `/small.txt?n=${i}`);
      assert.strictEqual(e.response.body.toString(), 'hello\n');
      assert.strictEqual(f.opens.filter((o) => o.pid === p).length, 1, `curl ${p}: one connection`);
    });
    assert.strictEqual(bye!.kernel.bytes_lost + bye!.kernel.events_lost + bye!.writer.dropped_bytes + (bye!.kernel.calls_missed ?? 1), 0, 'nothing lost');
    assert.deepStrictEqual(f.errors, []);
  });
});
