// frames.test.ts: helper/protocol/frames.ts and helper/protocol/segments.ts. The binary path (pushBatch: segments
// encoded straight from the record bytes, one write per batch) must produce exactly the bytes
// of the object path (push: frame objects through msgpackr), for any sequence of records, and
// under a host that stops reading. Also the integer encodings msgpackr gets wrong for hosts.
import * as assert from 'assert';
import fc from 'fast-check';
import { PassThrough, Writable } from 'stream';
import { FrameBuilder } from '../../helper/protocol/frames';
import { HelperFrame } from '../../helper/protocol/generated';
import { DataRecord, decodeBatch, encodeData, encodeSock, Kind, OFFSETS as O, SockInfo } from '../../helper/records/records';
import { putInt } from '../../helper/protocol/segments';
import { FrameDecoder, FrameEncoder, FrameWriter, RawFrame } from '../../helper/protocol/wire';

const SEED = process.env.FUZZ_SEED === 'random' ? Date.now() : Number(process.env.FUZZ_SEED ?? 0);
const RUNS = Number(process.env.FUZZ_RUNS ?? 100);

/**
 * A stream that keeps every chunk handed to write(), in order; `stall` never calls back, as a
 * host that stops reading (a Writable would hold back all but the first chunk: not what the
 * writer is handed to compare).
 */
function sink(stall = false): { stream: Writable; bytes: () => Buffer } {
  const parts: Buffer[] = [];
  const stream = new PassThrough();
  (stream as unknown as { write: (c: Buffer, cb?: () => void) => boolean }).write = (chunk: Buffer, cb?: () => void): boolean => {
    parts.push(Buffer.from(chunk));
    if (!stall) cb?.();
    return true;
  };
  return { stream, bytes: () => Buffer.concat(parts) };
}

function connRecord(kind: Kind.ConnOpen | Kind.ConnClose, f: { pid: number; connId: bigint; sock: SockInfo; off: [number, number]; reason?: number; tsNs: bigint }): Buffer {
  const b = Buffer.alloc(O.cap_conn);
  b.writeUInt32LE(b.length, O['cap_hdr.size']);
  b.writeUInt16LE(kind, O['cap_hdr.kind']);
  b.writeBigUInt64LE(f.tsNs, O['cap_hdr.ts_ns']);
  b.writeUInt32LE(f.pid, O['cap_hdr.pid']);
  b.writeUInt32LE(f.pid, O['cap_hdr.tid']);
  b.writeBigUInt64LE(f.connId, O['cap_conn.conn_id']);
  b.writeBigUInt64LE(0x7f00_0000_1000n + f.connId, O['cap_conn.ssl']);
  b.writeBigUInt64LE(BigInt(f.off[0]), O['cap_conn.off']);
  b.writeBigUInt64LE(BigInt(f.off[1]), O['cap_conn.off'] + 8);
  b.writeUInt8(f.reason ?? 0, O['cap_conn.reason']);
  b.write('conn', O['cap_conn.comm']);
  encodeSock(f.sock).copy(b, O['cap_conn.sock']);
  return b;
}

function exitRecord(pid: number, tsNs: bigint): Buffer {
  const b = Buffer.alloc(O.cap_exit);
  b.writeUInt32LE(b.length, O['cap_hdr.size']);
  b.writeUInt16LE(Kind.Exit, O['cap_hdr.kind']);
  b.writeBigUInt64LE(tsNs, O['cap_hdr.ts_ns']);
  b.writeUInt32LE(pid, O['cap_hdr.pid']);
  b.writeUInt32LE(pid, O['cap_hdr.tid']);
  return b;
}

const sockArb: fc.Arbitrary<SockInfo> = fc.oneof(
  fc.record({
    fd: fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 2 ** 31 - 1 })),
    role: fc.constantFrom('client' as const, 'server' as const, 'unknown' as const),
    family: fc.constant('ipv4' as const),
    localIp: fc.ipV4(),
    localPort: fc.integer({ min: 0, max: 65535 }),
    remoteIp: fc.ipV4(),
    remotePort: fc.integer({ min: 0, max: 65535 }),
    midStream: fc.boolean(),
  }),
  fc.record({
    fd: fc.integer({ min: 3, max: 70000 }),
    role: fc.constantFrom('client' as const, 'server' as const),
    family: fc.constant('ipv6' as const),
    localIp: fc.constantFrom('::1', 'fe80::1:2:3:4', '2001:db8:ffff:ffff:ffff:ffff:ffff:ffff', '::ffff:127.0.0.1'),
    localPort: fc.integer({ min: 0, max: 65535 }),
    remoteIp: fc.constantFrom('::1', '2001:db8::77'),
    remotePort: fc.integer({ min: 0, max: 65535 }),
    midStream: fc.boolean(),
  }),
  fc.constant<SockInfo>({ fd: -1, role: 'unknown', family: 'unknown', localIp: '0.0.0.0', localPort: 0, remoteIp: '0.0.0.0', remotePort: 0, midStream: true }),
);

/** One step of a capture: a data record (a chunk of a call), a connection event or an exit. */
type Step =
  | { t: 'data'; conn: number; dir: 0 | 1; len: number; chunk: number; capLen: number; gap: number; rate: boolean; tid: number; comm: string; big: boolean; sock: SockInfo; tsNs: bigint }
  | { t: 'open' | 'close'; conn: number; sock: SockInfo; reason: number; tsNs: bigint }
  | { t: 'exit'; pid: number; tsNs: bigint };

const tsArb = fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 40n }), fc.constant(0xffff_ffffn), fc.constant(2n ** 62n + 0xffff_fff0n));
const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 8, arbitrary: fc.record({
    t: fc.constant('data' as const),
    conn: fc.integer({ min: 1, max: 5 }),
    dir: fc.constantFrom(0 as const, 1 as const),
    len: fc.oneof(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 70000 })),
    // The kernel's chunks are 16384 bytes; smaller ones here multiply the record boundaries.
    chunk: fc.constantFrom(16384, 16384, 4000),
    capLen: fc.integer({ min: 0, max: 70000 }),
    gap: fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 1, max: 5000 })),
    rate: fc.boolean(),
    tid: fc.integer({ min: 1, max: 2 ** 32 - 1 }),
    comm: fc.oneof(fc.constantFrom('nginx', 'curl', 'x'.repeat(15), 'é'.repeat(7), '\u{1F600}'.repeat(3)), fc.string({ maxLength: 15 })),
    big: fc.boolean(),
    sock: sockArb,
    tsNs: tsArb,
  }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constantFrom('open' as const, 'close' as const), conn: fc.integer({ min: 1, max: 5 }), sock: sockArb, reason: fc.integer({ min: 0, max: 5 }), tsNs: tsArb }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('exit' as const), pid: fc.constantFrom(100, 101), tsNs: tsArb }) },
);

/** The records (as the BPF program would write them) of a sequence of steps, in batches. */
function recordsOf(steps: Step[], batchEvery: number): Buffer[] {
  const seq = new Map<string, number>();
  const batches: Buffer[][] = [[]];
  const pidOf = (conn: number): number => (conn % 2 ? 100 : 101);
  for (const s of steps) {
    if (s.t === 'data') {
      const key = `${s.conn}:${s.dir}`;
      // A gap is what a lost record leaves: the offsets advance past bytes never delivered.
      const start = (seq.get(key) ?? (s.big ? 2 ** 33 : 0)) + s.gap;
      const capLen = Math.min(s.capLen, s.len);
      seq.set(key, start + s.len);
      const data = Buffer.alloc(capLen, s.conn * 16 + s.dir);
      for (let off = 0; off < capLen || (off === 0 && capLen === 0); off += s.chunk) {
        const piece = data.subarray(off, Math.min(off + s.chunk, capLen));
        const r: Omit<DataRecord, 'kind'> = {
          tsNs: s.tsNs,
          pid: pidOf(s.conn),
          tid: s.tid,
          comm: s.comm,
          connId: BigInt(s.conn) + (s.big ? 2n ** 40n : 0n),
          ssl: s.big ? 0xffff_8000_0000_1000n : 0x5555_0000n + BigInt(s.conn),
          dir: s.dir === 0 ? 'egress' : 'ingress',
          func: 'ssl_write_internal',
          seq: start + off,
          ack: s.big ? 2 ** 40 : 12,
          callLen: s.big ? 2 ** 33 + s.len : s.len,
          capLen,
          chunkOff: off,
          truncated: capLen < s.len,
          rateLimited: s.rate && capLen < s.len,
          sock: s.sock,
          data: piece,
        };
        batches[batches.length - 1]!.push(encodeData(r));
        if (batches[batches.length - 1]!.length >= batchEvery) batches.push([]);
        if (capLen === 0) break;
      }
    } else if (s.t === 'exit') batches[batches.length - 1]!.push(exitRecord(s.pid, s.tsNs));
    else {
      const off: [number, number] = [seq.get(`${s.conn}:0`) ?? 0, seq.get(`${s.conn}:1`) ?? 0];
      batches[batches.length - 1]!.push(connRecord(s.t === 'open' ? Kind.ConnOpen : Kind.ConnClose, { pid: pidOf(s.conn), connId: BigInt(s.conn), sock: s.sock, off, reason: s.reason, tsNs: s.tsNs }));
    }
  }
  return batches.filter((b) => b.length).map((b) => Buffer.concat(b));
}

/** Both paths over the same batches: the bytes each writes, and the writers' counters. */
function bothPaths(batches: Buffer[], opts: { stall?: boolean; maxQueueBytes?: number; wallOffsetNs?: bigint }) {
  const wall = opts.wallOffsetNs ?? 1_700_000_000_000_000_000n;
  const a = sink(opts.stall);
  const wa = new FrameWriter(a.stream, { maxQueueBytes: opts.maxQueueBytes ?? 1 << 30, validate: true });
  const ba = new FrameBuilder(wall, (f: HelperFrame) => wa.write(f as unknown as RawFrame));
  for (const b of batches) ba.pushBatch(b, wa);
  ba.closeAll('helper_exit_test');

  const b = sink(opts.stall);
  const wb = new FrameWriter(b.stream, { maxQueueBytes: opts.maxQueueBytes ?? 1 << 30, validate: true });
  const bb = new FrameBuilder(wall, (f: HelperFrame) => wb.write(f as unknown as RawFrame));
  for (const batch of batches) for (const r of decodeBatch(batch)) bb.push(r);
  bb.closeAll('helper_exit_test');
  return { binary: a.bytes(), objects: b.bytes(), wa: wa.snapshot(), wb: wb.snapshot() };
}

/** conn_close frames carry the wall clock at closeAll(): equal in kind, not in value. */
function withoutCloseAllTimes(bytes: Buffer): RawFrame[] {
  return new FrameDecoder({ validate: true, maxFrameBytes: 1 << 20 })
    .push(bytes)
    .map((f) => ((f as RawFrame).reason === 'helper_exit_test' ? { ...(f as RawFrame), ts_ns: 0n } : (f as RawFrame)));
}

describe('frames: the binary segment path equals the object path', function () {
  it('byte for byte, for any records in any batches (chunks, caps, rate limit, gaps, sockets, names, 64-bit values)', () => {
    fc.assert(
      fc.property(fc.array(stepArb, { minLength: 1, maxLength: 40 }), fc.integer({ min: 1, max: 50 }), fc.bigInt({ min: 0n, max: 2n ** 61n }), (steps, every, wall) => {
        const { binary, objects, wa, wb } = bothPaths(recordsOf(steps, every), { wallOffsetNs: wall });
        const fa = withoutCloseAllTimes(binary);
        const fb = withoutCloseAllTimes(objects);
        assert.deepStrictEqual(fa, fb);
        // Outside the closing frames (whose time is now), the bytes themselves are the same.
        const raw = (b: Buffer): Buffer[] => {
          const out: Buffer[] = [];
          for (let at = 0; at < b.length; at += 4 + b.readUInt32BE(at)) out.push(b.subarray(at, at + 4 + b.readUInt32BE(at)));
          return out.filter((x) => !x.includes(Buffer.from('helper_exit_test')));
        };
        const [ra, rb] = [raw(binary), raw(objects)];
        assert.strictEqual(ra.length, rb.length);
        ra.forEach((x, i) => assert.ok(x.equals(rb[i]!), `frame ${i}: ${x.toString('hex')} != ${rb[i]!.toString('hex')}`));
        assert.deepStrictEqual(wa, wb);
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it('the segments of one batch leave in one write', () => {
    const steps: Step[] = Array.from({ length: 50 }, (_, i) => ({ t: 'data', conn: 1 + (i % 3), dir: 0, len: 100, chunk: 16384, capLen: 100, gap: 0, rate: false, tid: 7, comm: 'nginx', big: false, sock: { fd: 5, role: 'server', family: 'ipv4', localIp: '127.0.0.1', localPort: 443, remoteIp: '127.0.0.1', remotePort: 5000 + (i % 3), midStream: false }, tsNs: 5n }));
    const writes: number[] = [];
    const stream = new PassThrough();
    const w = new FrameWriter(stream);
    const orig = stream.write.bind(stream);
    (stream as unknown as { write: typeof stream.write }).write = ((chunk: Buffer, cb?: () => void) => {
      writes.push(chunk.length);
      return orig(chunk, cb);
    }) as typeof stream.write;
    const b = new FrameBuilder(0n, (f) => w.write(f as unknown as RawFrame));
    b.pushBatch(recordsOf(steps, 1000)[0]!, w);
    assert.strictEqual(writes.length, 1, `one write for 3 conn_open and 50 segments, got ${writes.length}`);
    assert.strictEqual(w.snapshot().frames_written, 53);
  });

  it('a host that stops reading: the same drops, the same lost_before, the same counters on both paths', () => {
    fc.assert(
      fc.property(fc.array(stepArb, { minLength: 5, maxLength: 60 }), fc.integer({ min: 1, max: 20 }), fc.integer({ min: 1 << 10, max: 1 << 17 }), (steps, every, max) => {
        const { binary, objects, wa, wb } = bothPaths(recordsOf(steps, every), { stall: true, maxQueueBytes: max });
        assert.deepStrictEqual(withoutCloseAllTimes(binary), withoutCloseAllTimes(objects));
        assert.deepStrictEqual(wa, wb);
      }),
      { seed: SEED, numRuns: RUNS / 2 },
    );
  });
});

describe('frames: integers as hosts read them', function () {
  it('putInt writes what msgpackr writes below 2^32, and 8-byte integers (never floats) above', () => {
    const enc = new FrameEncoder();
    for (const n of [0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 5, 2 ** 53 - 1, -1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31)]) {
      const b = Buffer.alloc(16);
      const end = putInt(b, 0, n);
      const viaEncoder = enc.encode({ n }).subarray(4 + 3); // map header (1) + key "n" (2)
      assert.ok(b.subarray(0, end).equals(viaEncoder), `${n}: ${b.subarray(0, end).toString('hex')} vs ${viaEncoder.toString('hex')}`);
      assert.ok(![0xca, 0xcb].includes(b[0]!), `${n} is an integer on the wire`);
    }
  });

  it('counters past 4 GiB in stats and bye frames are integers, and read back exactly', () => {
    const kernel = { calls: 1, bytes_moved: 2 ** 33 + 7, bytes_captured: 2 ** 40, bytes_truncated: 0, records_lost: 0, bytes_lost: 0, read_faults: 0, bytes_faulted: 0, events_lost: 0, bytes_rate_limited: 0 };
    const bytes = new FrameEncoder().encode({ type: 'bye', reason: 'shutdown', ts_ns: 5n, kernel, writer: { frames_written: 1, bytes_written: 2 ** 35, queued_bytes: 0, max_queue_bytes: 1, dropped_segments: 0, dropped_bytes: 0 } });
    assert.ok(!bytes.includes(0xcb), 'no float64');
    const [f] = new FrameDecoder({ validate: true }).push(bytes) as RawFrame[];
    assert.strictEqual(Number((f!.kernel as { bytes_moved: bigint | number }).bytes_moved), 2 ** 33 + 7);
  });
});
