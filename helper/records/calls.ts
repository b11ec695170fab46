// calls.ts: joins the chunk records of one TLS call back into the call, and notes the bytes
// of it that are missing (past the cap, or lost to a full ring buffer). Pure code.
import { ConnectionEvent, DataRecord } from './records';

/** A whole call: its first record's identity, with `seq` the offset of the call's first byte. */
export interface Call extends ConnectionEvent, Pick<DataRecord, 'dir' | 'seq' | 'callLen'> {
  /** The probed function (absent when the call is rebuilt from frames, which do not carry it). */
  func?: DataRecord['func'];
  /** The captured bytes, from the call's start; shorter than callLen if truncated or lost. */
  data: Buffer;
  /** Bytes past the per-call cap (not captured by design). */
  truncatedBytes: number;
  /** The truncation was the rate cap's (the process was over its bytes per second). */
  rateLimited: boolean;
  /** The truncation was load shedding's (the ring buffer was filling: only the call's head was taken). */
  shed?: boolean;
  /** Bytes within the cap that never arrived (ring buffer full, unreadable memory). */
  lostBytes: number;
}

interface Pending {
  first: DataRecord;
  base: number;
  pieces: DataRecord[];
  got: number;
}

/**
 * Records of one call come out of the ring buffer in order, though records of other
 * connections may come between them. A call is complete when its last captured byte has
 * arrived, or when a later call of the same connection and direction starts (its missing
 * chunks were lost), or at `flush()`.
 */
export class CallAssembler {
  private readonly pending = new Map<string, Pending>();

  constructor(private readonly onCall: (call: Call) => void) {}

  push(r: DataRecord): void {
    const key = `${r.pid}:${r.connId}:${r.dir}`;
    const base = r.seq - r.chunkOff;
    let p = this.pending.get(key);
    if (p && p.base !== base) {
      this.finish(key, p);
      p = undefined;
    }
    if (!p) {
      p = { first: r, base, pieces: [], got: 0 };
      this.pending.set(key, p);
    }
    p.pieces.push(r);
    p.got += r.data.length;
    if (r.chunkOff + r.data.length >= r.capLen) this.finish(key, p);
  }

  /** Completes the calls still waiting for chunks (at exit, or after a connection ends). */
  flush(filter?: (pid: number) => boolean): void {
    for (const [key, p] of this.pending) if (!filter || filter(p.first.pid)) this.finish(key, p);
  }

  private finish(key: string, p: Pending): void {
    this.pending.delete(key);
    const f = p.first;
    // Chunks arrive in order; a missing one leaves its bytes out (counted in lostBytes).
    const data = p.pieces.length === 1 ? p.pieces[0]!.data : Buffer.concat(p.pieces.map((x) => x.data));
    this.onCall({
      tsNs: f.tsNs,
      pid: f.pid,
      tid: f.tid,
      comm: f.comm,
      connId: f.connId,
      ssl: f.ssl,
      dir: f.dir,
      func: f.func,
      sock: f.sock,
      seq: p.base,
      callLen: f.callLen,
      data,
      truncatedBytes: f.callLen - f.capLen,
      rateLimited: f.rateLimited,
      ...(f.shed ? { shed: true } : {}),
      lostBytes: f.capLen - p.got,
    });
  }
}
