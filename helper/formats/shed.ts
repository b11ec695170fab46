// shed.ts: load shedding in front of a renderer, the same rule as the BPF program's
// (bpf/calls.h emit_call) one stage later. When the output falls behind (more than
// `high` bytes wait to be written), every segment is cut like a call shed in the kernel: one
// that starts a message (the first of its direction, or the first since the other direction
// moved) keeps its first `head` bytes, one that continues a message keeps none, and the segment
// is marked truncated and shed. seq and len_total are not touched, so the parsers step over
// the missing bytes by offset (helper/http/exchanges.ts) and every exchange keeps its request
// line, status and headers. Shedding stops once the output is back under `low` bytes.
// Pure code: the pending count is given.
import { RawFrame } from '../protocol/wire';

export interface ShedOptions {
  /** Bytes waiting to be written now (the output stream's queue). */
  pending: () => number;
  /** Start shedding above this many pending bytes... */
  high: number;
  /** ...and stop below this many. */
  low: number;
  /** Bytes kept of a segment that starts a message (--shed-head). */
  head: number;
}

/** Where a connection's directions stand: each direction's end offset, and the other's at its last segment. */
interface ConnState {
  end: [bigint, bigint];
  otherAt: [bigint, bigint];
}

export class BehindShed {
  /** Bytes of segment data cut here (not written). */
  bytesShed = 0;
  /** Segments cut here. */
  segmentsShed = 0;
  private shedding = false;
  private readonly conns = new Map<bigint, ConnState>();

  constructor(private readonly o: ShedOptions) {}

  /** The frame to render: `f` itself, or a segment cut to its head when the output is behind. */
  pass(f: RawFrame): RawFrame {
    if (f.type === 'conn_close') {
      this.conns.delete(f.conn_id as bigint);
      return f;
    }
    if (f.type !== 'segment') return f;
    const id = f.conn_id as bigint;
    const dir = (f.dir as number) & 1;
    const seq = f.seq as bigint;
    let c = this.conns.get(id);
    if (!c) this.conns.set(id, (c = { end: [0n, 0n], otherAt: [-1n, -1n] }));
    // As in BPF: a message starts at a direction's first segment or after the other one moved.
    const turned = c.otherAt[dir] !== c.end[dir ^ 1];
    c.otherAt[dir] = c.end[dir ^ 1]!;
    const end = seq + BigInt(f.len_total as number);
    if (end > c.end[dir]!) c.end[dir] = end;
    const pending = this.o.pending();
    if (this.shedding ? pending < this.o.low : pending <= this.o.high) {
      this.shedding = false;
      return f;
    }
    this.shedding = true;
    const data = f.data as Uint8Array;
    const keep = turned ? Math.min(this.o.head, data.length) : 0;
    if (keep === data.length) return f;
    this.bytesShed += data.length - keep;
    this.segmentsShed++;
    return { ...f, data: data.subarray(0, keep), truncated: true, shed: true };
  }
}
