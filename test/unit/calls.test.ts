// calls.test.ts: helper/records/calls.ts CallAssembler: chunks joined into calls, interleaved connections, lost and truncated bytes, and flush().
import * as assert from 'assert';
import { Call, CallAssembler } from '../../helper/records/calls';
import { CHUNK_MAX, DataRecord, decodeBatch, encodeData, Direction, SockInfo } from '../../helper/records/records';

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

interface CallSpec {
  pid?: number;
  tid?: number;
  comm?: string;
  connId?: bigint;
  dir?: Direction;
  /** Offset of the call's first byte in its connection and direction. */
  seq?: number;
  /** Bytes the call moved. */
  data: Buffer;
  /** Bytes captured (default all). */
  capLen?: number;
  tsNs?: bigint;
  sock?: SockInfo;
}

const SOCK: SockInfo = { fd: 7, role: 'client', family: 'ipv4', localIp: '127.0.0.1', localPort: 40000, remoteIp: '127.0.0.1', remotePort: 443, midStream: false };

/** The chunk records the BPF program writes for one call (data[i*CHUNK_MAX ...]). */
function chunks(s: CallSpec, chunkSize = CHUNK_MAX): DataRecord[] {
  const capLen = s.capLen ?? s.data.length;
  const out: DataRecord[] = [];
  for (let off = 0; off < capLen; off += chunkSize) {
    const piece = s.data.subarray(off, Math.min(off + chunkSize, capLen));
    out.push({
      kind: 'data',
      tsNs: s.tsNs ?? 1_000_000n,
      pid: s.pid ?? 100,
      tid: s.tid ?? (s.pid ?? 100) + 1,
      comm: s.comm ?? 'nginx',
      connId: s.connId ?? 1n,
      ssl: 0x1000n + (s.connId ?? 1n),
      dir: s.dir ?? 'egress',
      func: (s.dir ?? 'egress') === 'egress' ? 'SSL_write' : 'SSL_read',
      seq: (s.seq ?? 0) + off,
      ack: 77,
      callLen: s.data.length,
      capLen,
      chunkOff: off,
      truncated: capLen < s.data.length,
      rateLimited: false,
      sock: s.sock ?? SOCK,
      data: piece,
    });
  }
  return out;
}

/** The same records after a trip through the wire format, as the ring buffer delivers them. */
function viaWire(recs: DataRecord[]): DataRecord[] {
  const out = decodeBatch(Buffer.concat(recs.map((r) => encodeData(r))));
  return out.map((r) => {
    assert.strictEqual(r.kind, 'data');
    return r as DataRecord;
  });
}

function collect(): { calls: Call[]; asm: CallAssembler } {
  const calls: Call[] = [];
  return { calls, asm: new CallAssembler((c) => calls.push(c)) };
}

describe('calls: CallAssembler', function () {
  it('joins a call split in 3 chunks into one Call with the data concatenated', function () {
    const data = pattern(2 * CHUNK_MAX + 1234, 1);
    const sock: SockInfo = { ...SOCK, role: 'server', localPort: 443, remotePort: 51234 };
    const recs = viaWire(chunks({ data, seq: 5000, pid: 321, tid: 322, comm: 'curl', connId: 9n, tsNs: 42n, sock }));
    assert.strictEqual(recs.length, 3);
    const { calls, asm } = collect();
    asm.push(recs[0]!);
    asm.push(recs[1]!);
    assert.strictEqual(calls.length, 0, 'nothing before the last chunk');
    asm.push(recs[2]!);
    assert.strictEqual(calls.length, 1);
    const c = calls[0]!;
    assert.ok(c.data.equals(data), 'data is the three chunks in order');
    assert.deepStrictEqual(
      { ...c, data: undefined },
      {
        tsNs: 42n,
        pid: 321,
        tid: 322,
        comm: 'curl',
        connId: 9n,
        ssl: 0x1009n,
        dir: 'egress',
        func: 'SSL_write',
        sock,
        seq: 5000,
        callLen: data.length,
        data: undefined,
        truncatedBytes: 0,
        rateLimited: false,
        lostBytes: 0,
      },
    );
    asm.flush();
    assert.strictEqual(calls.length, 1, 'nothing left pending');
  });

  it('emits a one-chunk call at once', function () {
    const { calls, asm } = collect();
    for (const r of chunks({ data: Buffer.from('GET / HTTP/1.1\r\n\r\n') })) asm.push(r);
    assert.strictEqual(calls.length, 1);
    assert.strictEqual(calls[0]!.data.toString(), 'GET / HTTP/1.1\r\n\r\n');
  });

  it('keeps chunks of two connections interleaved apart', function () {
    const a = pattern(3 * 1000 + 10, 2);
    const b = pattern(2 * 1000 + 500, 3);
    const ra = chunks({ data: a, connId: 1n, seq: 0, pid: 10 }, 1000);
    const rb = chunks({ data: b, connId: 2n, seq: 700, pid: 10 }, 1000);
    assert.deepStrictEqual([ra.length, rb.length], [4, 3]);
    const order = [ra[0], rb[0], ra[1], rb[1], ra[2], rb[2], ra[3]] as DataRecord[];
    const { calls, asm } = collect();
    for (const r of viaWire(order)) asm.push(r);
    assert.strictEqual(calls.length, 2);
    const byConn = new Map(calls.map((c) => [c.connId, c]));
    assert.ok(byConn.get(1n)!.data.equals(a), 'connection 1');
    assert.ok(byConn.get(2n)!.data.equals(b), 'connection 2');
    assert.strictEqual(byConn.get(2n)!.seq, 700);
    for (const c of calls) assert.deepStrictEqual([c.lostBytes, c.truncatedBytes], [0, 0]);
    // connection 2's call ended first
    assert.deepStrictEqual(
      calls.map((c) => c.connId),
      [2n, 1n],
    );
  });

  it('keeps the two directions of one connection apart', function () {
    const out = pattern(2500, 4);
    const inn = pattern(1800, 5);
    const ro = chunks({ data: out, dir: 'egress' }, 1000);
    const ri = chunks({ data: inn, dir: 'ingress' }, 1000);
    const { calls, asm } = collect();
    for (const r of [ro[0], ri[0], ro[1], ri[1], ro[2]] as DataRecord[]) asm.push(r);
    assert.strictEqual(calls.length, 2);
    assert.ok(calls.find((c) => c.dir === 'egress')!.data.equals(out));
    assert.ok(calls.find((c) => c.dir === 'ingress')!.data.equals(inn));
  });

  it('counts a missing middle chunk in lostBytes', function () {
    const data = pattern(1000 + 1000 + 300, 6);
    const recs = chunks({ data }, 1000);
    const { calls, asm } = collect();
    asm.push(recs[0]!);
    asm.push(recs[2]!); // recs[1] lost (ring buffer full)
    assert.strictEqual(calls.length, 1, 'the last chunk completes the call');
    const c = calls[0]!;
    assert.strictEqual(c.lostBytes, 1000);
    assert.strictEqual(c.truncatedBytes, 0);
    assert.strictEqual(c.callLen, 2300);
    assert.ok(c.data.equals(Buffer.concat([data.subarray(0, 1000), data.subarray(2000)])));
  });

  it('gives the call its own start offset and counts a lost first chunk', function () {
    const data = pattern(2500, 13);
    const recs = chunks({ data, seq: 8000 }, 1000);
    const { calls, asm } = collect();
    asm.push(recs[1]!); // recs[0] lost
    asm.push(recs[2]!);
    assert.strictEqual(calls.length, 1);
    const c = calls[0]!;
    assert.strictEqual(c.seq, 8000, 'seq of the call, not of its first chunk that arrived');
    assert.strictEqual(c.lostBytes, 1000);
    assert.ok(c.data.equals(data.subarray(1000)));
  });

  it('counts bytes past the cap in truncatedBytes', function () {
    const data = pattern(10_000, 7);
    const recs = chunks({ data, capLen: 4096 }, 1000);
    assert.strictEqual(recs.length, 5);
    const { calls, asm } = collect();
    for (const r of viaWire(recs)) asm.push(r);
    assert.strictEqual(calls.length, 1, 'complete once the captured bytes arrived');
    const c = calls[0]!;
    assert.strictEqual(c.truncatedBytes, 10_000 - 4096);
    assert.strictEqual(c.lostBytes, 0);
    assert.strictEqual(c.callLen, 10_000);
    assert.ok(c.data.equals(data.subarray(0, 4096)));
  });

  it('finishes a pending incomplete call when the next call of the same connection and direction starts', function () {
    const first = pattern(2500, 8);
    const second = pattern(1500, 9);
    const r1 = chunks({ data: first, seq: 0 }, 1000);
    const r2 = chunks({ data: second, seq: first.length }, 1000);
    const { calls, asm } = collect();
    asm.push(r1[0]!);
    asm.push(r1[1]!); // r1[2], the last chunk, lost
    // another connection's call in between must not finish it
    for (const r of chunks({ data: Buffer.from('other'), connId: 99n })) asm.push(r);
    assert.deepStrictEqual(
      calls.map((c) => c.connId),
      [99n],
    );
    asm.push(r2[0]!);
    assert.strictEqual(calls.length, 2, 'the new call ends the pending one');
    const c1 = calls[1]!;
    assert.strictEqual(c1.seq, 0);
    assert.strictEqual(c1.lostBytes, 500);
    assert.ok(c1.data.equals(first.subarray(0, 2000)));
    asm.push(r2[1]!);
    assert.strictEqual(calls.length, 3);
    const c2 = calls[2]!;
    assert.strictEqual(c2.seq, 2500);
    assert.strictEqual(c2.lostBytes, 0);
    assert.ok(c2.data.equals(second));
  });

  it('flush() emits the pending calls, flush(filter) only those of matching pids', function () {
    const { calls, asm } = collect();
    const a = chunks({ data: pattern(3000, 10), pid: 1, connId: 1n }, 1000);
    const b = chunks({ data: pattern(3000, 11), pid: 2, connId: 2n }, 1000);
    const c = chunks({ data: pattern(3000, 12), pid: 3, connId: 3n }, 1000);
    for (const r of [a[0], b[0], b[1], c[0]] as DataRecord[]) asm.push(r);
    assert.strictEqual(calls.length, 0);

    asm.flush((pid) => pid === 2);
    assert.deepStrictEqual(
      calls.map((x) => x.pid),
      [2],
    );
    assert.strictEqual(calls[0]!.lostBytes, 1000);
    assert.ok(calls[0]!.data.equals(Buffer.concat([b[0]!.data, b[1]!.data])));

    asm.flush((pid) => pid === 2);
    assert.strictEqual(calls.length, 1, 'pid 2 was flushed already');

    asm.flush();
    assert.deepStrictEqual(calls.map((x) => x.pid).sort(), [1, 2, 3]);
    assert.strictEqual(calls.find((x) => x.pid === 1)!.lostBytes, 2000);
    assert.strictEqual(calls.find((x) => x.pid === 3)!.lostBytes, 2000);

    asm.flush();
    assert.strictEqual(calls.length, 3, 'nothing pending after flush()');
  });
});
