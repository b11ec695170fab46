// shed.ts: load shedding in front of a renderer, the same rule as the BPF program's
// (bpf/calls.h emit_call) one stage later. When the renderer falls behind (the segments it gets
// are older than `lagHighMs`: the ring buffer is filling faster than it is read) or its output
// does (more than `high` bytes wait to be written), every segment is cut like a call shed in
// the kernel: one that starts a message (the first of its direction, the first since the
// other direction moved, or one that starts like HTTP/1) keeps its first `head` bytes (an
// HTTP/1 head no more than its header block), one that continues a message keeps none,
// and the segment is marked truncated and shed. seq and len_total are not touched, so the
// parsers step over the missing bytes by offset (helper/http/exchanges.ts) and every exchange
// keeps its request line, status and headers. Shedding stops once segments are fresh again
// (under `lagLowMs`) and the output is back under `low` bytes; lateness counts only while the
// ring holds a backlog (`lagMinBacklog`), not for a moment's stall; `onChange` hears each switch
// (the standalone command then has the kernel shed too, before the ring fills).
// Pure code: the pending count and the clock are given.
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
  /** Start shedding once a segment is this many ms old when it arrives (0: never by age)... */
  lagHighMs?: number;
  /** ...and stop once they are younger than this. */
  lagLowMs?: number;
  /**
   * Bytes waiting in the ring buffer now; with `lagMinBacklog`, lateness starts shedding only
   * while at least that many wait. A renderer that stalled for a moment (planning a library,
   * a garbage collection) and has little to catch up with then sheds nothing.
   */
  backlog?: () => number;
  lagMinBacklog?: number;
  /** Unix time in ms now (segments' ts_ns are Unix ns). */
  now?: () => number;
  /** Shedding started (true) or stopped (false). */
  onChange?: (shedding: boolean) => void;
}

/** Where a connection's directions stand: segments seen per direction, and the other's count at each direction's last one. */
interface ConnState {
  moved: [number, number];
  otherAt: [number, number];
}

/**
 * Whether bytes start like an HTTP/1 message ("HTTP/", or 3 to 7 capitals and a space), as
 * bpf/calls.h starts_http1: a request read right after its server answered the one before, whose
 * body it was still reading, starts a message though the other direction did not move.
 */
export function startsHttp1(d: Uint8Array): boolean {
  if (d.length >= 5 && d[0] === 0x48 && d[1] === 0x54 && d[2] === 0x54 && d[3] === 0x50 && d[4] === 0x2f) return true;
  for (let i = 0; i < 8 && i < d.length; i++) {
    const b = d[i]!;
    if (b === 0x20) return i >= 3;
    if (b < 0x41 || b > 0x5a) return false;
  }
  return false;
}

export class BehindShed {
  /** Bytes of segment data cut here (not written). */
  bytesShed = 0;
  /** Segments cut here. */
  segmentsShed = 0;
  /** Times shedding started because segments arrived late (the renderer was behind). */
  lateSpells = 0;
  private shedding = false;
  private late = false;
  private readonly conns = new Map<number, ConnState>();
  private readonly now: () => number;

  constructor(private readonly o: ShedOptions) {
    this.now = o.now ?? Date.now;
  }

  /** The frame to render: `f` itself, or a segment cut to its head when the renderer or output is behind. */
  pass(f: RawFrame): RawFrame {
    if (f.type === 'conn_close') {
      this.conns.delete(Number(f.conn_id as bigint));
      return f;
    }
    if (f.type !== 'segment') return f;
    // Numbers, not bigints: offsets and ids stay far below 2^53, and this runs for every segment.
    const id = Number(f.conn_id as bigint);
    const dir = (f.dir as number) & 1;
    let c = this.conns.get(id);
    if (!c) this.conns.set(id, (c = { moved: [0, 0], otherAt: [-1, -1] }));
    // As in BPF: a message starts at a direction's first segment or after the other one moved
    // (or where its bytes say so, below).
    const turned = c.otherAt[dir] !== c.moved[dir ^ 1];
    c.otherAt[dir] = c.moved[dir ^ 1]!;
    c.moved[dir]++;
    const hi = this.o.lagHighMs ?? 0;
    if (hi > 0) {
      const lag = this.now() - Number(f.ts_ns as bigint) / 1e6;
      if (!this.late && lag > hi && (this.o.backlog === undefined || this.o.backlog() >= (this.o.lagMinBacklog ?? 0))) {
        this.late = true;
        this.lateSpells++;
      } else if (this.late && lag < (this.o.lagLowMs ?? hi / 4)) this.late = false;
    }
    const pending = this.o.pending();
    const behind = this.late || (this.shedding ? pending >= this.o.low : pending > this.o.high);
    if (behind !== this.shedding) {
      this.shedding = behind;
      this.o.onChange?.(behind);
    }
    if (!behind) return f;
    const data = f.data as Uint8Array;
    const http1 = startsHttp1(data);
    let keep = turned || http1 ? Math.min(this.o.head, data.length) : 0;
    // An HTTP/1 head keeps no more than its header block: the body bytes after it cost the
    // renderers as much as a body (HAR's JSON, text's lines) and the renderer is behind.
    if (http1 && keep > 0) {
      const end = Buffer.from(data.buffer, data.byteOffset, keep).indexOf('\r\n\r\n');
      if (end >= 0) keep = end + 4;
    }
    if (keep === data.length) return f;
    this.bytesShed += data.length - keep;
    this.segmentsShed++;
    // `shed` first: a key added after the spread made V8 build the object the slow way (about
    // 10 µs a segment, measured), and this runs for every segment while behind.
    return { shed: true, ...f, data: data.subarray(0, keep), truncated: true };
  }
}
