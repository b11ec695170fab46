// overload.test.ts: the --ipc helper under more traffic than it may keep. A ring buffer far too
// small for the load: the bytes the kernel dropped equal, byte for byte, the gaps in the
// segments the host gets, the loss and stats frames say so, and the helper's memory stays flat.
// A per-process rate cap set by the host (config rate_cap): bytes over it are counted in
// bytes_rate_limited, marked on the segments, and the offsets stay exact.
import * as assert from 'assert';
import * as fs from 'fs';
import { ByeFrame, ConnCloseFrame, LossFrame, SegmentFrame, StatsFrame } from '../../helper/protocol/generated';
import { Exchange, HelperHost } from '../../helper/host/host';
import { requireKernel } from '../lib/kernel';
import { curl, NginxServer, pattern, startNginx, stopAll, tmpDir, waitFor } from '../lib/servers';
import { statusKiB } from '../lib/procfs';
import { CLI } from '../lib/paths';

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
function books(segs: SegmentFrame[], closes: ConnCloseFrame[]): { delivered: number; lost: number; cut: number; rateLimitedSegments: number } {
  const at = new Map<string, { end: bigint; truncated: boolean }>();
  let delivered = 0;
  let lost = 0n;
  let cut = 0n;
  let rateLimitedSegments = 0;
  for (const s of segs) {
    const k = `${s.pid}:${s.conn_id}:${s.dir}`;
    const prev = at.get(k) ?? { end: 0n, truncated: false };
    const gap = s.seq - prev.end;
    assert.ok(gap >= BigInt(s.lost_before), `${k}: seq ${s.seq} is before ${prev.end} + lost_before ${s.lost_before}`);
    if (!prev.truncated) assert.strictEqual(gap, BigInt(s.lost_before), `${k}: seq ${s.seq} is not ${prev.end} + lost_before ${s.lost_before}`);
    lost += BigInt(s.lost_before);
    cut += gap - BigInt(s.lost_before);
    delivered += s.data.length;
    if (s.rate_limited) {
      assert.strictEqual(s.truncated, true, 'a rate_limited segment is truncated');
      rateLimitedSegments++;
    }
    at.set(k, { end: s.seq + BigInt(s.data.length), truncated: s.truncated });
  }
  for (const c of closes) {
    for (const [dir, end] of [[0, c.egress_end], [1, c.ingress_end]] as const) {
      const prev = at.get(`${c.pid}:${c.conn_id}:${dir}`) ?? { end: 0n, truncated: false };
      assert.ok(end >= prev.end, `conn ${c.conn_id} dir ${dir}: end ${end} before the last byte seen ${prev.end}`);
      if (prev.truncated) cut += end - prev.end;
      else lost += end - prev.end;
    }
  }
  return { delivered, lost: Number(lost), cut: Number(cut), rateLimitedSegments };
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

  afterEach(async () => {
    await host?.close();
    host = undefined;
  });

  after(async () => {
    await stopAll();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a 32 KiB ring under 8 MiB of responses: kernel drops = gaps in the segments, reported in loss and stats frames; RSS flat', async function () {
    this.timeout(40_000);
    // The books are exact only while no connection event is dropped with the data; on a machine
    // starved by other test suites (load average 30+ on 2 cores) one can be: run it again then.
    this.retries(2);
    // Only curl's connections to this nginx: the counters are then about this test alone.
    host = new HelperHost({ command: process.execPath, args: [CLI, '--ipc', '--comm', 'curl', '--port', String(nginx.port), '--ring-size', '32768'] });
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
});
