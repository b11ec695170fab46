// frames.ts: capture records become the protocol's frames (docs/protocol.md), in capture order:
// conn_open before a connection's first segment, segments with exact offsets and losses, and
// conn_close (eos) when a connection ends, its process exits, or the capture stops. Two ways in,
// one connection table: push() takes decoded records and emits frame objects (for renderers
// and tests); pushBatch() takes a ring-buffer batch and encodes its segments straight into a
// FrameWriter (the --ipc and recording path, segments.ts). Pure: no process or kernel.
import { ConnCloseFrame, ConnOpenFrame, HelperFrame, SegmentFrame } from './generated';
import { CaptureRecord, checkData, ConnRecord, DataRecord, decodeRecord, Flag, forEachRecord, Kind, OFFSETS as O, SockInfo } from '../records/records';
import { encodeSegment, newSegmentCache, SEGMENT_OVERHEAD, SegmentCache } from './segments';
import { FrameWriter } from './wire';

const nowNs = (): bigint => BigInt(Date.now()) * 1_000_000n;
const TWO32 = 0x1_0000_0000;
const HDR_FLAGS = O['cap_hdr.flags'];
const D_CONN = O['cap_data.conn_id'];
const D_SEQ = O['cap_data.seq'];
const D_CALL_LEN = O['cap_data.call_len'];
const D_CHUNK_OFF = O['cap_data.chunk_off'];
const D_CAP_LEN = O['cap_data.cap_len'];
const D_DIR = O['cap_data.dir'];
const D_DATA = O.cap_data;

/** The socket fields shared by segment and conn_open (0.0.0.0:0 and fd -1 when unknown). */
function socketFields(s: SockInfo): Pick<SegmentFrame, 'fd' | 'local_ip' | 'local_port' | 'remote_ip' | 'remote_port'> {
  return { fd: s.fd, local_ip: s.localIp, local_port: s.localPort, remote_ip: s.remoteIp, remote_port: s.remotePort };
}

/**
 * A decoded data record as a segment frame object. segments.ts writes the same frame's
 * bytes without building it (test/unit/frames.test.ts holds the two to the same bytes).
 * `lostBefore` is every byte of this direction missing before data[0] (ring buffer, faults).
 */
export function segmentFrom(r: DataRecord, wallOffsetNs: bigint, lostBefore: number, midStream: boolean): SegmentFrame {
  return {
    type: 'segment',
    conn_id: r.connId,
    pid: r.pid,
    tid: r.tid,
    comm: r.comm,
    ssl_ptr: r.ssl,
    dir: r.dir === 'egress' ? 0 : 1,
    ...socketFields(r.sock),
    seq: BigInt(r.seq),
    ack: BigInt(r.ack),
    ts_ns: r.tsNs + wallOffsetNs,
    len_total: r.callLen,
    data: r.data,
    eos: false,
    // On the last segment of a call that was cut at the per-call cap.
    truncated: r.truncated && r.chunkOff + r.data.length >= r.capLen,
    ...(r.rateLimited && r.chunkOff + r.data.length >= r.capLen ? { rate_limited: true } : {}),
    ...(r.shed && r.chunkOff + r.data.length >= r.capLen ? { shed: true } : {}),
    lost_before: lostBefore,
    mid_stream: midStream,
  };
}

interface Conn {
  open: ConnOpenFrame;
  /** Offset just past the last byte seen, per direction (0 egress, 1 ingress). */
  end: [number, number];
  /** Encoded fields of the binary path that stay the same within the connection. */
  cache: SegmentCache;
  /** Bytes shed (the kernel's exact count, from its close record); undefined when the close is made up here. */
  shed?: number;
}

export class FrameBuilder {
  /** By conn_id: the kernel numbers connections across all processes. */
  private readonly conns = new Map<number, Conn>();
  private readonly wallHi: number;
  private readonly wallLo: number;

  constructor(
    private readonly wallOffsetNs: bigint,
    private readonly emit: (f: HelperFrame) => void,
  ) {
    this.wallHi = Number(wallOffsetNs >> 32n);
    this.wallLo = Number(wallOffsetNs & 0xffff_ffffn);
  }

  get openConnections(): number {
    return this.conns.size;
  }

  push(r: CaptureRecord): void {
    if (r.kind === 'data') {
      const c = this.opened(r, r.sock);
      const d = r.dir === 'egress' ? 0 : 1;
      const last = r.chunkOff + r.data.length >= r.capLen;
      const lost = this.advance(c, d, r.seq, r.data.length, r.truncated && last, r.chunkOff, r.callLen);
      this.emit(segmentFrom(r, this.wallOffsetNs, lost, c.open.mid_stream));
    } else if (r.kind === 'open') this.opened(r, r.sock);
    else if (r.kind === 'close') {
      // The kernel's final offsets are exact even when the last records were lost.
      const id = Number(r.connId);
      const c = this.conns.get(id);
      if (c) {
        c.end = [Math.max(c.end[0], r.egressBytes), Math.max(c.end[1], r.ingressBytes)];
        c.shed = r.shedBytes ?? 0;
        this.close(id, c, r.reason ?? 'close', r.tsNs + this.wallOffsetNs);
      }
    } else if (r.kind === 'exit') {
      for (const [id, c] of this.conns) if (c.open.pid === r.pid) this.close(id, c, 'process_exit', r.tsNs + this.wallOffsetNs);
    }
    // other records (a process's exec, a library opened) are discovery's, not the host's
  }

  /**
   * A whole ring-buffer batch: segments are encoded into `writer` (one write for the batch);
   * other records are decoded, handed to `onRecord` (discovery) and then to push(). Throws
   * RecordError on a malformed batch, like decodeBatch().
   */
  pushBatch(batch: Buffer, writer: FrameWriter, onRecord?: (r: CaptureRecord) => void): void {
    const view = new DataView(batch.buffer, batch.byteOffset, batch.length);
    writer.batch(() =>
      forEachRecord(batch, (at, size, kind) => {
        if (kind === Kind.Data) return this.dataAt(batch, view, at, size, writer);
        const r = decodeRecord(batch.subarray(at, at + size));
        if (r) {
          onRecord?.(r);
          this.push(r);
        }
      }),
    );
  }

  closeAll(reason: string): void {
    for (const [id, c] of this.conns) this.close(id, c, reason, nowNs());
  }

  private dataAt(batch: Buffer, v: DataView, at: number, size: number, writer: FrameWriter): void {
    checkData(batch, at, size);
    const dataLen = size - D_DATA;
    const id = v.getUint32(at + D_CONN, true) + v.getUint32(at + D_CONN + 4, true) * TWO32;
    let c = this.conns.get(id);
    if (c === undefined) {
      // First sight of the connection in data: decode this one record for its conn_open.
      const r = decodeRecord(batch.subarray(at, at + size)) as DataRecord;
      c = this.opened(r, r.sock);
    }
    const d = batch[at + D_DIR]! & 1;
    const chunkOff = v.getUint32(at + D_CHUNK_OFF, true);
    const truncated = (v.getUint16(at + HDR_FLAGS, true) & Flag.Truncated) !== 0 && chunkOff + dataLen >= v.getUint32(at + D_CAP_LEN, true);
    const seq = v.getUint32(at + D_SEQ, true) + v.getUint32(at + D_SEQ + 4, true) * TWO32;
    const callLen = v.getUint32(at + D_CALL_LEN, true) + v.getUint32(at + D_CALL_LEN + 4, true) * TWO32;
    const lost = this.advance(c, d, seq, dataLen, truncated, chunkOff, callLen);
    const lostBefore = writer.admitSegment(id * 2 + d, dataLen, lost);
    if (lostBefore < 0) return; // the host is not reading: dropped and counted by the writer
    const out = writer.reserve(size + SEGMENT_OVERHEAD);
    writer.commit(encodeSegment(out, writer.view, writer.position, batch, v, at, this.wallHi, this.wallLo, lostBefore, c.open.mid_stream, c.cache));
  }

  /**
   * Moves a direction's end past a record's bytes; returns the bytes missing before them (lost
   * to a full ring buffer or unreadable memory). Bytes past a call's cap are not lost: they
   * end at the call's end, which the last captured record of the call says.
   */
  private advance(c: Conn, d: 0 | 1 | number, seq: number, dataLen: number, truncatedLast: boolean, chunkOff: number, callLen: number): number {
    const lost = Math.max(0, seq - c.end[d]!);
    c.end[d] = Math.max(c.end[d]!, seq + dataLen);
    if (truncatedLast) c.end[d] = Math.max(c.end[d]!, seq - chunkOff + callLen);
    return lost;
  }

  /** conn_open, once per connection: from the kernel's open record, or from its first data. */
  private opened(r: ConnRecord | DataRecord, sock: SockInfo): Conn {
    const id = Number(r.connId);
    let c = this.conns.get(id);
    if (c) return c;
    c = {
      open: {
        type: 'conn_open',
        conn_id: r.connId,
        pid: r.pid,
        tid: r.tid,
        comm: r.comm,
        ssl_ptr: r.ssl,
        ...socketFields(sock),
        ts_ns: r.tsNs + this.wallOffsetNs,
        mid_stream: sock.midStream,
        role: sock.role,
      },
      // Offsets count from the first byte the capture saw, mid-stream or not.
      end: [0, 0],
      cache: newSegmentCache(),
    };
    this.conns.set(id, c);
    this.emit(c.open);
    return c;
  }

  private close(id: number, c: Conn, reason: string, tsNs: bigint): void {
    this.conns.delete(id);
    const close: ConnCloseFrame = {
      type: 'conn_close',
      conn_id: c.open.conn_id,
      pid: c.open.pid,
      ts_ns: tsNs,
      reason,
      egress_end: BigInt(c.end[0]),
      ingress_end: BigInt(c.end[1]),
      eos: true,
      // Known exactly only from the kernel's close record (a close made up at a process's exit
      // or the helper's stop has none): kernel.bytes_shed is the exact total in any case.
      ...(c.shed !== undefined ? { bytes_shed: c.shed } : {}),
    };
    this.emit(close);
  }
}
