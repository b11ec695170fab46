// overload.test.ts: the --ipc helper under more traffic than it may keep. A ring buffer far too
// small for the load: the bytes the kernel dropped equal, byte for byte, the gaps in the
// segments the host gets, the loss and stats frames say so, and the helper's memory stays flat.
// A per-process rate cap set by the host (config rate_cap): bytes over it are counted in
// bytes_rate_limited, marked on the segments, and the offsets stay exact.
// Load shedding: a small ring under a burst of large responses sheds bodies, never exchanges:
// every exchange keeps its request line, status and headers, bytes_shed is exact (in bye, loss
// and conn_close frames), and the bytes around each cut are where their offsets say.
import * as assert from 'assert';
import { ByeFrame, ConnCloseFrame, HelperFrame, LossFrame, SegmentFrame, StatsFrame } from '../../helper/protocol/generated';
import { HttpExchange, Session } from '../../helper/http/exchanges';
import { Exchange, HelperHost } from '../../helper/host/host';
import { requireKernel } from '../lib/kernel';
import { curl, NginxServer, pattern, startNginx, tmpDir, waitFor } from '../lib/servers';
import { statusKiB } from '../lib/procfs';
import { CLI } from '../lib/paths';
import { cleanUpAfter, closeAfterEach } from '../lib/hooks';

const MiB = 1 << 20;

/** Every frame of one helper run, by type. */
function collect(host: HelperHost): {
  segs: SegmentFrame[];
  closes: ConnCloseFrame[];
  losses: LossFrame[];
  stats: StatsFrame[];
  exchanges: Exchange[];
  errors: string[];
  bye: () => ByeFrame | undefined;
} {
  const out = { segs: [] as SegmentFrame[], closes: [] as ConnCloseFrame[], losses: [] as LossFrame[], stats: [] as StatsFrame[], exchanges: [] as Exchange[], errors: [] as string[] };
  let bye: ByeFrame | undefined;
  host.on('segment', (s) => out.segs.push(s));
  host.on('conn_close', (c) => out.closes.push(c));
  host.on('loss', (l) => out.losses.push(l));
  host.on('stats', (s) => out.stats.push(s));
  host.on('exchange', (e) => out.exchanges.push(e));
  host.on('protocol_error', (e) => out.errors.push(e.message));
  host.on('error', (e) => out.errors.push(`${e.code}: ${e.message}`));
  host.on('bye', (b) => (bye = b));
  return { ...out, bye: () => bye };
}

/**
 * The books of a stream as a host sees them: per connection and direction, the bytes between
 * one segment's end and the next one's seq (and conn_close's end) are either lost (lost_before,
 * or a tail after an untruncated segment) or cut by a cap (after a truncated segment).
 */
function books(
  segs: SegmentFrame[],
  closes: ConnCloseFrame[],
): { delivered: number; lost: number; cut: number; rateLimitedSegments: number; shedSegments: number; shedCut: number; shedByConn: Map<bigint, number> } {
  const at = new Map<string, { end: bigint; truncated: boolean; shed: boolean }>();
  let delivered = 0;
  let lost = 0n;
  let cut = 0n;
  let rateLimitedSegments = 0;
  let shedSegments = 0;
  // Bytes cut after segments marked shed, in all and per connection.
  let shedCut = 0n;
  const shedByConn = new Map<bigint, number>();
  const addShed = (conn: bigint, n: bigint): void => {
    shedCut += n;
    shedByConn.set(conn, (shedByConn.get(conn) ?? 0) + Number(n));
  };
  for (const s of segs) {
    const k = `${s.pid}:${s.conn_id}:${s.dir}`;
    const prev = at.get(k) ?? { end: 0n, truncated: false, shed: false };
    const gap = s.seq - prev.end;
    assert.ok(gap >= BigInt(s.lost_before), `${k}: seq ${s.seq} is before ${prev.end} + lost_before ${s.lost_before}`);
    if (!prev.truncated) assert.strictEqual(gap, BigInt(s.lost_before), `${k}: seq ${s.seq} is not ${prev.end} + lost_before ${s.lost_before}`);
    lost += BigInt(s.lost_before);
    cut += gap - BigInt(s.lost_before);
    if (prev.shed) addShed(s.conn_id, gap - BigInt(s.lost_before));
    delivered += s.data.length;
    if (s.rate_limited) {
      assert.strictEqual(s.truncated, true, 'a rate_limited segment is truncated');
      rateLimitedSegments++;
    }
    if (s.shed) {
      assert.strictEqual(s.truncated, true, 'a shed segment is truncated');
      shedSegments++;
    }
    at.set(k, { end: s.seq + BigInt(s.data.length), truncated: s.truncated, shed: s.shed === true });
  }
  for (const c of closes) {
    for (const [dir, end] of [[0, c.egress_end], [1, c.ingress_end]] as const) {
      const prev = at.get(`${c.pid}:${c.conn_id}:${dir}`) ?? { end: 0n, truncated: false, shed: false };
      assert.ok(end >= prev.end, `conn ${c.conn_id} dir ${dir}: end ${end} before the last byte seen ${prev.end}`);
      if (prev.truncated) cut += end - prev.end;
      else lost += end - prev.end;
      if (prev.shed) addShed(c.conn_id, end - prev.end);
    }
  }
  return { delivered, lost: Number(lost), cut: Number(cut), rateLimitedSegments, shedSegments, shedCut: Number(shedCut), shedByConn };
}

describe('--ipc helper under overload (kernel, nginx and curl)', function () {
  let dir: string;
  let nginx: NginxServer;
  let host: HelperHost | undefined;
  const body = pattern(MiB, 9);

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-overload-');
    nginx = await startNginx({ dir, files: { 'big.bin': body } });
  });

  closeAfterEach(() => host, () => (host = undefined));

  cleanUpAfter(() => dir);

  it('a 32 KiB ring under 8 MiB of responses: kernel drops = gaps in the segments, reported in loss and stats frames; RSS flat', async function () {
    this.timeout(40_000);
    // The books are exact only while no connection event is dropped with the data; on a machine
    // starved by other test suites (load average 30+ on 2 cores) one can be: run it again then.
    this.retries(2);
    // Only curl's connections to this nginx: the counters are then about this test alone.
    host = new HelperHost({ command: process.execPath, args: [CLI, '--ipc', '--comm', 'curl', '--port', String(nginx.port), '--ring-size', '32768', '--shed-fill', '1'] });
    const f = collect(host);
    await host.ready;
    await waitFor(() => host!.stderr.includes('capturing TLS plaintext'), { what: 'the helper to attach' });
    host.configure({ stats_interval_ms: 200 });
    const pid = host.child.pid!;
    const rss: number[] = [statusKiB(pid)];
    const url = `https://127.0.0.1:${nginx.port}/big.bin`;
    const curls: number[] = [];
    for (let i = 0; i < 4; i++) {
      // two 1 MiB responses on one connection per run
      const r = await curl(url, ['-o', '/dev/null', url, '-o', '/dev/null']);
      assert.strictEqual(r.code, 0, r.stderr.toString());
      curls.push(r.pid);
      rss.push(statusKiB(pid));
    }
    await waitFor(() => curls.every((p) => f.closes.some((c) => c.pid === p)), { what: 'conn_close of every curl run' });
    const last = await waitFor(() => f.stats.find((s) => s.ts_ns > f.closes[f.closes.length - 1]!.ts_ns && s.kernel.records_lost > 0), {
      what: 'a stats frame after the last conn_close that shows the drops',
    });
    assert.ok(await host.close(), 'bye received');
    host = undefined;
    const bye = f.bye()!;
    assert.deepStrictEqual(f.errors, []);

    const b = books(f.segs, f.closes);
    const k = bye.kernel;
    const sum = (src: string): number => f.losses.filter((l) => l.source === src).reduce((n, l) => n + l.bytes, 0);
    process.stderr.write(
      `      ${b.delivered} bytes delivered, ${k.bytes_lost} lost in ${k.records_lost} ring records, ${k.bytes_faulted} faulted, ` +
        `${bye.writer.dropped_bytes} dropped by the writer; gaps ${b.lost}; events lost ${k.events_lost}; RSS KiB ${rss.join(' ')}\n`,
    );
    assert.ok(k.bytes_lost > MiB, `the ring dropped only ${k.bytes_lost} bytes: the test did not overload it`);
    // (Reports of other programs' execs, discovery_events_lost, may be lost in so small a ring.)
    assert.strictEqual(k.events_lost, 0, 'connection events fit between the data records');
    assert.strictEqual(k.calls_missed, 0, 'a full ring loses records, never whole calls unseen');
    // Exact: what the kernel counted as lost is what is missing from the stream, byte for byte.
    assert.strictEqual(b.lost, k.bytes_lost + k.bytes_faulted + bye.writer.dropped_bytes, 'gaps = kernel drops + faults + writer drops');
    assert.strictEqual(b.cut, 0, 'nothing cut by a cap');
    assert.strictEqual(b.delivered, k.bytes_captured - bye.writer.dropped_bytes, 'delivered = captured - writer drops');
    assert.strictEqual(k.bytes_shed, 0, 'shedding is off (--shed-fill 1): this run measures drops');
    assert.strictEqual(k.bytes_moved, k.bytes_captured + k.bytes_lost + k.bytes_faulted + k.bytes_truncated + (k.bytes_rate_limited ?? 0));
    // The loss frames add up to the counters; the stats frames show them as they grow.
    assert.strictEqual(sum('ring_buffer'), k.bytes_lost, 'loss frames (ring_buffer) add up to bye.kernel.bytes_lost');
    assert.strictEqual(f.losses.filter((l) => l.source === 'ring_buffer').reduce((n, l) => n + l.records, 0), k.records_lost);
    assert.ok(last.kernel.bytes_lost <= k.bytes_lost && last.kernel.bytes_lost > 0);
    // Every run's connection ends at exactly what nginx sent, whatever part of it arrived.
    for (const p of curls) {
      const c = f.closes.filter((x) => x.pid === p);
      assert.strictEqual(c.length, 1, `curl ${p}: one connection`);
      assert.ok(c[0]!.ingress_end > BigInt(2 * MiB) && c[0]!.ingress_end < BigInt(2 * MiB + 2048), `curl ${p}: ingress_end ${c[0]!.ingress_end}`);
    }
    // Memory: no growth with the traffic (a tiny ring holds nothing back).
    assert.ok(Math.max(...rss) - rss[0]! < 32 * 1024, `helper RSS went ${rss.join(' -> ')} KiB`);
  });

  it('a rate cap set by the host: bytes over it are counted, marked and leave exact offsets; lifting it captures whole again', async function () {
    this.timeout(40_000);
    host = new HelperHost({ command: process.execPath, args: [CLI, '--ipc', '--comm', 'curl', '--port', String(nginx.port)] });
    const f = collect(host);
    await host.ready;
    await waitFor(() => host!.stderr.includes('capturing TLS plaintext'), { what: 'the helper to attach' });
    const RATE = 100_000;
    host.configure({ rate_cap: RATE, stats_interval_ms: 200 });
    await waitFor(() => f.stats.find((s) => s.config.rate_cap === RATE), { what: 'stats showing the rate cap' });

    const url = `https://127.0.0.1:${nginx.port}/big.bin`;
    const capped = await curl(url, ['-o', '/dev/null']);
    assert.strictEqual(capped.code, 0, capped.stderr.toString());
    await waitFor(() => f.closes.some((c) => c.pid === capped.pid), { what: 'conn_close of the capped run' });

    host.configure({ rate_cap: 0 });
    await waitFor(() => f.stats.find((s) => s.config.rate_cap === 0 && s.ts_ns > f.closes[0]!.ts_ns), { what: 'stats showing no rate cap' });
    const free = await curl(url, ['-o', '/dev/null']);
    assert.strictEqual(free.code, 0, free.stderr.toString());
    const ex = await waitFor(() => f.exchanges.find((e) => e.pid === free.pid), { what: 'the exchange after lifting the cap' });
    assert.ok(ex.response.body.equals(body), 'whole again: the response body, byte for byte');

    assert.ok(await host.close(), 'bye received');
    host = undefined;
    const k = f.bye()!.kernel;
    assert.deepStrictEqual(f.errors, []);
    const b = books(f.segs, f.closes);
    const mine = f.segs.filter((s) => s.pid === capped.pid && s.dir === 1);
    const got = mine.reduce((n, s) => n + s.data.length, 0);
    process.stderr.write(`      rate cap ${RATE} B/s: ${got} of ${MiB} body bytes captured, ${k.bytes_rate_limited} rate-limited in ${b.rateLimitedSegments} segments\n`);
    // The bucket starts with one second's worth; curl takes far less than a second for 1 MiB
    // on loopback, but on a slow machine a few more seconds' worth may arrive.
    assert.ok(got > RATE / 2 && got < MiB / 2, `captured ${got} bytes of the capped response`);
    assert.ok(b.rateLimitedSegments > 0, 'segments marked rate_limited');
    assert.strictEqual(mine.filter((s) => s.rate_limited).length, b.rateLimitedSegments, 'only the capped run was limited');
    // Exact: every byte cut by the cap is counted, nothing else is missing.
    assert.strictEqual(b.cut, k.bytes_rate_limited, 'gaps after truncated segments = bytes_rate_limited');
    assert.strictEqual(b.lost, k.bytes_lost + k.bytes_faulted, 'other gaps = kernel losses');
    assert.strictEqual(k.bytes_truncated, 0);
    assert.strictEqual(k.bytes_moved, k.bytes_captured + k.bytes_lost + k.bytes_faulted + k.bytes_rate_limited!);
    // What was captured of the capped run is the start of what nginx sent, in place.
    const c = f.closes.find((x) => x.pid === capped.pid)!;
    assert.ok(c.ingress_end > BigInt(MiB), `ingress_end ${c.ingress_end}`);
    const headerLen = Number(c.ingress_end) - MiB;
    for (const s of mine) {
      const off = Number(s.seq) - headerLen;
      if (off >= 0) assert.ok(Buffer.from(s.data).equals(body.subarray(off, off + s.data.length)), `segment at seq ${s.seq} is the body at ${off}`);
    }
  });

  it('load shedding: a 256 KiB ring under a burst of 1 MiB responses sheds bodies, never exchanges; bytes_shed exact, offsets in place', async function () {
    this.timeout(60_000);
    // The books need every connection event (see the first test); a starved machine may drop one.
    this.retries(2);
    const HEAD = 1024;
    const RING = 256 << 10;
    host = new HelperHost({ command: process.execPath, args: [CLI, '--ipc', '--comm', 'curl', '--port', String(nginx.port), '--ring-size', String(RING), '--shed-head', String(HEAD)] });
    const f = collect(host);
    const frames: HelperFrame[] = [];
    host.on('frame', (x) => void frames.push(x as unknown as HelperFrame));
    await host.ready;
    await waitFor(() => host!.stderr.includes('capturing TLS plaintext'), { what: 'the helper to attach' });
    const url = `https://127.0.0.1:${nginx.port}/big.bin`;
    // Four curls at once, two 1 MiB responses each on one connection: far more than the ring holds.
    const runs = await Promise.all([0, 1, 2, 3].map(() => curl(url, ['-o', '/dev/null', url, '-o', '/dev/null'])));
    for (const r of runs) assert.strictEqual(r.code, 0, r.stderr.toString());
    const pids = runs.map((r) => r.pid);
    await waitFor(() => pids.every((p) => f.closes.some((c) => c.pid === p)), { what: 'conn_close of every curl run' });
    assert.ok(await host.close(), 'bye received');
    host = undefined;
    assert.deepStrictEqual(f.errors, []);
    const bye = f.bye()!;
    const k = bye.kernel;
    const b = books(f.segs, f.closes);
    const lossSum = (src: string): number => f.losses.filter((l) => l.source === src).reduce((n, l) => n + l.bytes, 0);
    process.stderr.write(
      `      ${b.delivered} bytes delivered, ${k.bytes_shed} shed in ${b.shedSegments} segments, ${k.bytes_lost} lost in ${k.records_lost} records, ` +
        `${bye.writer.dropped_bytes} dropped by the writer, of ${k.bytes_moved} moved; connection events lost ${k.events_lost}\n`,
    );
    assert.ok(k.bytes_shed! > MiB, `only ${k.bytes_shed} bytes shed: the test did not fill the ring`);
    assert.strictEqual(k.events_lost, 0, 'connection events fit: heads leave room');
    // Exact books: every byte the programs moved is captured, cut (shed) or lost, and the host's
    // gaps say which, byte for byte.
    assert.strictEqual(k.bytes_moved, k.bytes_captured + k.bytes_shed! + k.bytes_truncated + (k.bytes_rate_limited ?? 0) + k.bytes_lost + k.bytes_faulted, 'moved = captured + shed + truncated + rate-limited + lost + faulted');
    assert.strictEqual(k.bytes_truncated, 0);
    assert.strictEqual(b.cut, k.bytes_shed, 'gaps after truncated segments = bytes_shed');
    assert.strictEqual(b.shedCut, k.bytes_shed, 'and each follows a segment marked shed');
    assert.strictEqual(b.lost, k.bytes_lost + k.bytes_faulted + bye.writer.dropped_bytes, 'other gaps = kernel drops + faults + writer drops');
    assert.strictEqual(lossSum('shed'), k.bytes_shed, 'loss frames of source shed add up to bye.kernel.bytes_shed');
    // Per connection: conn_close's bytes_shed (the kernel's count) is what its gaps after shed segments add up to.
    let perConn = 0;
    for (const c of f.closes) {
      assert.strictEqual(c.bytes_shed, b.shedByConn.get(c.conn_id) ?? 0, `conn ${c.conn_id}: bytes_shed`);
      perConn += c.bytes_shed ?? 0;
    }
    assert.strictEqual(perConn, k.bytes_shed, 'conn_close bytes_shed add up to bye.kernel.bytes_shed');
    // Heads only: a shed segment holds at most --shed-head bytes, and they are what nginx sent there.
    const shed = f.segs.filter((s) => s.shed);
    // (A call shorter than the head is shed too when it continues a message: then it keeps nothing.)
    assert.ok(shed.every((s) => s.data.length <= HEAD && s.data.length < Number(s.len_total)), 'a shed call keeps at most its head');
    // Within a body (no turn of direction since the call before) a shed call keeps nothing.
    assert.ok(shed.some((s) => s.data.length === 0), 'continuation calls shed whole');
    for (const p of pids) {
      const c = f.closes.find((x) => x.pid === p)!;
      // Two responses of the same head length H: [H head][1 MiB body][H head][1 MiB body].
      const h = Number(c.ingress_end) / 2 - MiB;
      assert.ok(Number.isInteger(h) && h > 100 && h < 1024, `curl ${p}: ingress_end ${c.ingress_end}`);
      for (const s of f.segs.filter((x) => x.pid === p && x.dir === 1)) {
        const seq = Number(s.seq);
        for (const start of [h, 2 * h + MiB]) {
          const off = seq - start;
          if (off >= 0 && off + s.data.length <= MiB) assert.ok(Buffer.from(s.data).equals(body.subarray(off, off + s.data.length)), `curl ${p}: segment at seq ${seq} is the body at ${off}`);
        }
      }
    }
    // Every exchange is there, with its request line, status and headers.
    const exchanges: HttpExchange[] = [];
    const session = new Session((e) => e.type === 'exchange' && exchanges.push(e.exchange));
    for (const x of frames) session.push(x as never);
    session.end();
    for (const p of pids) {
      const mine = exchanges.filter((x) => x.conn.pid === p);
      assert.strictEqual(mine.length, 2, `curl ${p}: ${mine.length} exchanges`);
      for (const x of mine) {
        assert.strictEqual(x.request?.method, 'GET');
        assert.strictEqual(x.request?.target, '/big.bin');
        assert.strictEqual(x.response?.status, 200);
        const len = x.response!.headers.find(([n]) => n.toLowerCase() === 'content-length')?.[1];
        assert.strictEqual(len, String(MiB), `curl ${p}: content-length`);
        assert.strictEqual(x.response!.body.length + x.response!.bodyMissing, MiB, 'the body: captured + missing = its length');
      }
    }
    assert.ok(exchanges.some((x) => x.response!.bodyMissing > 0 && x.response!.notes.some((n) => n.includes('shed under load'))), 'shed bodies are marked');
  });
});
