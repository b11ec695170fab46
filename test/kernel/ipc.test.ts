// ipc.test.ts: the helper in --ipc mode as a child process, driven by the TypeScript host under
// real curl and python traffic: frames valid, exchanges byte-identical to what was sent, every
// malformed control frame answered with an error while capture goes on, a clean bye.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { ErrorFrame, StatsFrame } from '../../helper/protocol/generated';
import { Exchange, HelperHost } from '../../helper/host/host';
import { IpcOptions } from '../../helper/commands/ipc';
import { replayFrames } from '../../helper/commands/replay';
import { FrameEncoder, RawFrame } from '../../helper/protocol/wire';
import { requireKernel } from '../lib/kernel';
import { CertPair, curl, makeCert, pattern, pyClient, Server, startPyServer, tmpDir, waitFor } from '../lib/servers';
import { IPC_CHILD } from '../lib/paths';
import { cleanUpAfter, closeAfterEach } from '../lib/hooks';


export function startHelper(opts: IpcOptions): HelperHost {
  return new HelperHost({ command: process.execPath, args: [IPC_CHILD, JSON.stringify({ validate: true, ...opts })], validate: true });
}

describe('--ipc helper (kernel, real programs)', function () {
  let dir: string;
  let cert: CertPair;
  let py: Server;
  let host: HelperHost | undefined;

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-ipc-');
    cert = await makeCert(dir);
    py = await startPyServer({ dir, ...cert });
  });

  closeAfterEach(() => host, () => (host = undefined));

  cleanUpAfter(() => dir);

  it('hello first, then curl and python exchanges byte-identical to what was sent; bye last; a private recording of the same stream', async () => {
    const record = path.join(dir, 'run.frames');
    host = startHelper({ record, statsIntervalMs: 300 });
    const frames: RawFrame[] = [];
    const exchanges: Exchange[] = [];
    const protocolErrors: string[] = [];
    host.on('frame', (f) => frames.push(f));
    host.on('exchange', (e) => exchanges.push(e));
    host.on('protocol_error', (e) => protocolErrors.push(e.message));
    const hello = await host.ready;
    assert.strictEqual(hello.protocol, 1);
    assert.deepStrictEqual(hello.capabilities.libraries, ['openssl', 'gnutls', 'go', 'boringssl', 'nss', 'rustls']);
    assert.strictEqual(hello.limits.max_data_bytes, 16384);
    await waitFor(() => frames.some((f) => f.type === 'process' && f.state === 'attached'), { what: 'a process frame (attached)' });

    const body = pattern(100_000, 4);
    const a = await pyClient(`https://127.0.0.1:${py.port}/echo`, { method: 'POST', body });
    assert.strictEqual(a.code, 0, a.stderr.toString());
    const b = await curl(`https://127.0.0.1:${py.port}/bytes/5000?seed=9`, ['-H', 'X-Test: ipc']);
    assert.strictEqual(b.code, 0, b.stderr.toString());
    const mine = (pid: number, role: string): Exchange | undefined => exchanges.find((e) => e.pid === pid && e.role === role);
    await waitFor(() => mine(a.pid, 'client') && mine(b.pid, 'client') && exchanges.filter((e) => e.pid === py.pid).length >= 2, {
      what: `the exchanges of both clients and the server (have ${exchanges.map((e) => `${e.comm}/${e.role}`)})`,
    });

    const pyEx = mine(a.pid, 'client')!;
    assert.strictEqual(pyEx.request.method, 'POST');
    assert.strictEqual(pyEx.request.url, '/echo');
    assert.ok(pyEx.request.body.equals(body), 'the request body python sent, byte for byte');
    assert.strictEqual(pyEx.response.statusCode, 200);
    assert.ok(pyEx.response.body.equals(body), 'the echoed body');
    const curlEx = mine(b.pid, 'client')!;
    assert.strictEqual(curlEx.comm, 'curl');
    assert.match(curlEx.request.raw!.toString(), /^GET \/bytes\/5000\?seed=9 HTTP\/1\.1\r\nHost: 127\.0\.0\.1:\d+\r\n[^]*X-Test: ipc\r\n\r\n$/);
    assert.ok(curlEx.response.body.equals(pattern(5000, 9)));
    assert.ok(curlEx.response.body.equals(b.stdout), 'what curl printed');
    // The server's side of the same exchanges: the same bytes, seen the other way.
    const server = exchanges.filter((e) => e.pid === py.pid && e.role === 'server');
    assert.ok(server.some((e) => e.request.raw!.equals(curlEx.request.raw!) && e.response.raw!.equals(curlEx.response.raw!)), 'server side of the curl exchange');
    assert.ok(server.some((e) => e.request.raw!.equals(pyEx.request.raw!) && e.response.raw!.equals(pyEx.response.raw!)), 'server side of the python exchange');

    // Segments: each at most 16 KiB; ordering per connection: conn_open first, conn_close (eos) on exit.
    const segs = frames.filter((f) => f.type === 'segment');
    assert.ok(segs.every((s) => (s.data as Buffer).length <= 16384));
    // Every segment names its socket: the clients' remote port and the server's local port
    // are the server's, on loopback, with a real fd.
    // (Only ours: other processes on this machine may make TLS calls meanwhile.)
    for (const s of segs.filter((x) => [a.pid, b.pid, py.pid].includes(x.pid as number))) {
      assert.ok((s.fd as number) >= 0 && s.local_ip === '127.0.0.1' && s.remote_ip === '127.0.0.1', `segment of pid ${s.pid}: ${s.local_ip} fd ${s.fd}`);
      assert.strictEqual(s.pid === py.pid ? s.local_port : s.remote_port, py.port);
    }
    const opens = frames.filter((f) => f.type === 'conn_open');
    assert.ok(opens.filter((f) => f.pid === a.pid || f.pid === b.pid).every((f) => f.role === 'client'));
    assert.ok(opens.filter((f) => f.pid === py.pid).every((f) => f.role === 'server'));
    assert.ok(segs.some((s) => (s.len_total as number) > 16384), 'a call longer than 16 KiB became several segments');
    await waitFor(() => frames.some((f) => f.type === 'conn_close' && f.pid === b.pid), { what: "conn_close of curl's connection after it exited" });
    const curlFrames = frames.filter((f) => f.pid === b.pid && f.type.startsWith('conn') || (f.type === 'segment' && f.pid === b.pid));
    assert.strictEqual(curlFrames[0]!.type, 'conn_open');
    assert.strictEqual(curlFrames[curlFrames.length - 1]!.type, 'conn_close');
    // curl ends its connection with SSL_shutdown: the kernel side reports that, before curl exits.
    assert.strictEqual(curlFrames[curlFrames.length - 1]!.reason, 'shutdown');
    await waitFor(() => frames.some((f) => f.type === 'stats'), { what: 'a stats frame' });

    const bye = await host.close();
    assert.ok(bye, 'bye received');
    assert.strictEqual(bye.reason, 'shutdown');
    assert.ok(bye.kernel.calls > 0);
    assert.strictEqual(frames[0]!.type, 'hello');
    assert.strictEqual(frames[frames.length - 1]!.type, 'bye');
    assert.strictEqual((await host.exited).code, 0);
    assert.deepStrictEqual(protocolErrors, []);
    // The recording is the stream the host read, frame for frame, and only its owner may read it.
    assert.strictEqual(fs.statSync(record).mode & 0o777, 0o600);
    const replayed: RawFrame[] = [];
    for await (const f of replayFrames(record)) replayed.push(f);
    assert.deepStrictEqual(replayed, frames);
  });

  it('answers every malformed control frame with an error frame, keeps its state, and captures on', async () => {
    host = startHelper({ statsIntervalMs: 60000, partialFrameTimeoutMs: 300, comms: ['curl'] });
    const errors: ErrorFrame[] = [];
    const stats: StatsFrame[] = [];
    host.on('error', (e) => errors.push(e));
    host.on('stats', (s) => stats.push(s));
    await host.ready;
    const enc = new FrameEncoder();
    const body = (b: number[]): Buffer => Buffer.concat([Buffer.from([0, 0, 0, b.length]), Buffer.from(b)]);
    const expectError = async (send: () => void, code: string): Promise<ErrorFrame> => {
      const n = errors.length;
      send();
      const e = await waitFor(() => errors.length > n && errors[n], { what: `an error frame ${code}` });
      assert.strictEqual(e.code, code, JSON.stringify(e));
      assert.strictEqual(e.fatal, false);
      assert.ok(e.fix.length > 0);
      return e;
    };
    await expectError(() => host!.sendRaw(body([0x82, 0xa1])), 'bad_msgpack');
    await expectError(() => host!.sendRaw(body([0x93, 1, 2, 3])), 'bad_frame');
    const wrong = await expectError(() => host!.sendRaw({ type: 'config', pids: 'all' }), 'bad_frame');
    assert.strictEqual(wrong.frame_type, 'config');
    assert.match(wrong.message, /\/pids must be array/);
    await expectError(() => host!.sendRaw({ type: 'config', libraries: ['wolfssl'] }), 'unknown_library');
    await expectError(() => host!.sendRaw({ type: 'hello' }), 'bad_frame');
    // An absurd length: reported at once; the announced bytes would be skipped, so send a small
    // one that we then complete, and the stream is in step again.
    const big = Buffer.alloc(4);
    big.writeUInt32BE(2 << 20);
    await expectError(() => host!.sendRaw(big), 'bad_frame_length');
    host.sendRaw(Buffer.alloc(2 << 20, 0x20));
    // A frame cut short: reported after the pause, and the partial bytes dropped.
    await expectError(() => host!.sendRaw(enc.encode({ type: 'config', call_cap: 5 }).subarray(0, 6)), 'truncated_frame');
    // Unknown types and fields: ignored, no error.
    const before = errors.length;
    host.sendRaw({ type: 'from_the_future', x: 1 });
    // Then a valid config with an unknown field is applied, and capture goes on with it.
    host.configure({ call_cap: 1000, stats_interval_ms: 200, ...({ later_field: true } as object) });
    const s = await waitFor(() => stats.find((x) => x.config.call_cap === 1000), { what: 'stats showing the new config' });
    assert.deepStrictEqual(s.config.comms, ['curl'], 'the earlier state is kept where the config said nothing');
    assert.strictEqual(errors.length, before, 'no error for an unknown type or field');

    const ex: Exchange[] = [];
    host.on('exchange', (e) => ex.push(e));
    const segs: RawFrame[] = [];
    host.on('segment', (f) => segs.push(f as unknown as RawFrame));
    const r = await curl(`https://127.0.0.1:${py.port}/bytes/3000?seed=1`);
    assert.strictEqual(r.code, 0);
    await waitFor(() => segs.some((f) => f.pid === r.pid && f.dir === 1 && f.truncated === true), { what: 'a truncated response segment from curl' });
    const got = segs.filter((f) => f.pid === r.pid && f.dir === 1);
    assert.ok(got.every((f) => (f.data as Buffer).length <= 1000), 'the call cap of the config applies');
    assert.ok(segs.every((f) => f.pid !== py.pid), 'the comm filter of the start applies still');
    const bye = await host.close();
    assert.strictEqual(bye?.reason, 'shutdown');
  });

  it('config frames sent while a filtered client downloads miss none of its calls', async function () {
    this.timeout(60_000);
    // Every byte, not heads: the config storm keeps the helper busy and the ring fills, where
    // load shedding (tested in overload.test.ts) would cut bodies; this test is about calls.
    host = startHelper({ comms: ['curl'], shedFill: 1 });
    const frames: RawFrame[] = [];
    host.on('frame', (f) => frames.push(f));
    await host.ready;
    await waitFor(() => frames.some((f) => f.type === 'process' && f.state === 'attached'), { what: 'a process frame (attached)' });
    // 20 MB in 16 KiB reads: about 1,300 calls, while the host re-sends the same filter (and
    // changes the call cap, so each frame rewrites the settings) as fast as it can.
    const size = 20_000_000;
    let done = false;
    const download = curl(`https://127.0.0.1:${py.port}/bytes/${size}?seed=5`, ['-o', '/dev/null', '--limit-rate', '40M']).finally(() => {
      done = true;
    });
    let sent = 0;
    while (!done && sent < 20_000) {
      host.configure({ comms: ['curl'], call_cap: (1 << 20) - (sent % 2) });
      sent++;
      if (sent % 20 === 0) await new Promise((r) => setTimeout(r, 1));
    }
    const r = await download;
    assert.strictEqual(r.code, 0, r.stderr.toString());
    await waitFor(() => frames.some((f) => f.type === 'conn_close' && f.pid === r.pid), { what: "the close of curl's connection" });
    const ingress = Buffer.concat(frames.filter((f) => f.type === 'segment' && f.pid === r.pid && f.dir === 1).map((f) => f.data as Buffer));
    const body = ingress.subarray(ingress.indexOf('\r\n\r\n') + 4);
    assert.ok(sent > 100, `only ${sent} config frames went out during the download`);
    assert.strictEqual(body.length, size, `curl's captured response body is ${body.length} bytes of ${size} (${sent} config frames during the download)`);
    assert.ok(body.equals(pattern(size, 5)), 'the captured body is what the server sent');
    const bye = await host.close();
    assert.strictEqual(bye?.reason, 'shutdown');
  });

  it('--targeted: probes only in the target (the python server), not in its curl client; its targets cannot change', async () => {
    host = startHelper({ pids: [py.pid], targeted: true });
    const frames: RawFrame[] = [];
    const errors: ErrorFrame[] = [];
    host.on('frame', (f) => frames.push(f));
    host.on('error', (e) => errors.push(e));
    await host.ready;
    await waitFor(() => frames.some((f) => f.type === 'process' && f.state === 'attached' && f.pid === py.pid), { what: 'probes planted in the python server' });
    assert.ok(frames.every((f) => f.type !== 'process' || f.state !== 'attached' || f.pid === py.pid), 'no probe for every process');
    const r = await curl(`https://127.0.0.1:${py.port}/bytes/3000?seed=9`, ['-o', '/dev/null']);
    assert.strictEqual(r.code, 0, r.stderr.toString());
    await waitFor(() => frames.some((f) => f.type === 'segment' && f.pid === py.pid && f.dir === 0), { what: "the server's response" });
    assert.ok(frames.every((f) => f.type !== 'segment' || f.pid === py.pid), 'nothing of curl: it has no probe');
    host.configure({ pids: [py.pid, r.pid] });
    await waitFor(() => errors.length > 0, { what: 'an error frame for changing the targets' });
    assert.strictEqual(errors[0]!.code, 'targeted');
    assert.strictEqual(errors[0]!.fatal, false);
    const bye = await host.close();
    assert.strictEqual(bye?.reason, 'shutdown');
  });

  it('stdin closing detaches everything and exits 0 with a bye', async () => {
    host = startHelper({});
    await host.ready;
    const byes: string[] = [];
    host.on('bye', (b) => byes.push(b.reason));
    host.child.stdin!.end();
    const x = await host.exited;
    assert.strictEqual(x.code, 0);
    assert.deepStrictEqual(byes, ['stdin_closed']);
  });
});
