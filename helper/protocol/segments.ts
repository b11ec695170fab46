// segments.ts: the hot path of the --ipc mode and of recordings: the data records of one
// ring-buffer batch become segment frames, msgpack-encoded straight from the record's bytes
// into the writer's output buffer. No object per record, no string per record, one copy of the
// plaintext. Written by hand because a generic encoder (msgpackr) must build and walk an
// object of 21 fields per segment, which cost several times more CPU than the whole capture
// (docs/performance.md). The bytes are exactly those FrameEncoder writes for segmentFrom()'s
// object (test/unit/frames.test.ts).
import { comm as commOf, decodeSock, Flag, OFFSETS as O } from '../records/records';

// Field offsets as plain constants: the compiler folds them into the loads.
const HDR_FLAGS = O['cap_hdr.flags'];
const HDR_TS = O['cap_hdr.ts_ns'];
const HDR_TID = O['cap_hdr.tid'];
const D_CONN = O['cap_data.conn_id'];
const D_SSL = O['cap_data.ssl'];
const D_SEQ = O['cap_data.seq'];
const D_ACK = O['cap_data.ack'];
const D_CALL_LEN = O['cap_data.call_len'];
const D_CHUNK_OFF = O['cap_data.chunk_off'];
const D_DATA_LEN = O['cap_data.data_len'];
const D_CAP_LEN = O['cap_data.cap_len'];
const D_COMM = O['cap_data.comm'];
const D_SOCK = O['cap_data.sock'];
const D_DATA = O.cap_data;

/**
 * Per connection: for each direction, the encoded start of its segment frames (map header to
 * the `seq` key: type, conn_id, pid, tid, comm, ssl_ptr, dir and the socket fields), with what
 * it was built from. The socket fields of a record change only with its fd, role, ports or
 * flags (the kernel rewrites them all together, bpf/conn.h conn_set_fd), so those words,
 * the thread and the name say whether a head still holds.
 */
export interface SegmentCache {
  heads: (SegmentHead | undefined)[];
}

interface SegmentHead {
  bytes: Uint8Array;
  /** tid, then comm (4 words), then the socket's first 3 words (fd; role, family, lport; rport, flags). */
  key: Uint32Array;
}

export const newSegmentCache = (): SegmentCache => ({ heads: [undefined, undefined] });

const key = (k: string): Uint8Array => Uint8Array.from([0xa0 | k.length, ...Buffer.from(k, 'latin1')]);
const K_SEQ = key('seq');
const K_ACK = key('ack');
const K_TS = key('ts_ns');
const K_LEN = key('len_total');
const K_DATA = key('data');
// eos is always false on a segment built from a record: with its key and the next key, fixed.
const K_EOS_FALSE_TRUNC = Uint8Array.from([...key('eos'), 0xc2, ...key('truncated')]);
const K_RATE_TRUE = Uint8Array.from([...key('rate_limited'), 0xc3]);
const K_SHED_TRUE = Uint8Array.from([...key('shed'), 0xc3]);
const K_LOST = key('lost_before');
const K_MID = key('mid_stream');

/** Most bytes a segment frame takes beyond its data (keys, values, length prefix). */
export const SEGMENT_OVERHEAD = 512;

const TWO32 = 0x1_0000_0000;

/** A msgpack integer in the smallest format msgpackr uses; 2^32 and above as int64 (0xd3). */
export function putInt(out: Buffer, at: number, n: number): number {
  if (n >= 0) {
    if (n < 0x80) {
      out[at] = n;
      return at + 1;
    }
    if (n < 0x100) {
      out[at] = 0xcc;
      out[at + 1] = n;
      return at + 2;
    }
    if (n < 0x10000) {
      out[at] = 0xcd;
      out[at + 1] = n >>> 8;
      out[at + 2] = n & 0xff;
      return at + 3;
    }
    if (n < TWO32) {
      out[at] = 0xce;
      out.writeUInt32BE(n, at + 1);
      return at + 5;
    }
    out[at] = 0xd3;
    out.writeUInt32BE(Math.floor(n / TWO32), at + 1);
    out.writeUInt32BE(n % TWO32, at + 5);
    return at + 9;
  }
  if (n >= -0x20) {
    out[at] = n & 0xff;
    return at + 1;
  }
  if (n >= -0x80) {
    out[at] = 0xd0;
    out.writeInt8(n, at + 1);
    return at + 2;
  }
  if (n >= -0x8000) {
    out[at] = 0xd1;
    out.writeInt16BE(n, at + 1);
    return at + 3;
  }
  out[at] = 0xd2;
  out.writeInt32BE(n, at + 1);
  return at + 5;
}

/** An 8-byte msgpack integer from its two halves: int64 (0xd3), or uint64 (0xcf) at 2^63 and above. */
function putHalves(ov: DataView, at: number, hi: number, lo: number): number {
  ov.setUint8(at, hi >= 0x8000_0000 ? 0xcf : 0xd3);
  ov.setUint32(at + 1, hi);
  ov.setUint32(at + 5, lo);
  return at + 9;
}

function putStr(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const head = b.length < 32 ? Buffer.from([0xa0 | b.length]) : Buffer.from([0xd9, b.length]);
  return Buffer.concat([head, b]);
}

/** Builds the head of direction `dir` for the record at `at` (once per connection, or when its socket becomes known). */
function buildHead(rec: Buffer, rv: DataView, at: number, dir: number): SegmentHead {
  const s = decodeSock(rec.subarray(at + D_SOCK, at + D_SOCK + O.cap_sock));
  const parts: Uint8Array[] = [];
  const b = Buffer.alloc(16);
  const int = (n: number): Buffer => Buffer.from(b.subarray(0, putInt(b, 0, n)));
  const u64 = (off: number): Buffer => {
    const x = Buffer.alloc(9);
    putHalves(new DataView(x.buffer, x.byteOffset, 9), 0, rv.getUint32(at + off + 4, true), rv.getUint32(at + off, true));
    return x;
  };
  parts.push(Uint8Array.from([0xde, 0, 21]), key('type'), putStr('segment'));
  parts.push(key('conn_id'), u64(D_CONN));
  parts.push(key('pid'), int(rv.getUint32(at + O['cap_hdr.pid'], true)));
  parts.push(key('tid'), int(rv.getUint32(at + HDR_TID, true)));
  parts.push(key('comm'), putStr(commOf(rec, at + D_COMM)));
  parts.push(key('ssl_ptr'), u64(D_SSL));
  parts.push(key('dir'), Uint8Array.from([dir]));
  parts.push(key('fd'), int(s.fd), key('local_ip'), putStr(s.localIp), key('local_port'), int(s.localPort));
  parts.push(key('remote_ip'), putStr(s.remoteIp), key('remote_port'), int(s.remotePort), K_SEQ);
  const k = new Uint32Array(8);
  k[0] = rv.getUint32(at + HDR_TID, true);
  for (let i = 0; i < 4; i++) k[1 + i] = rv.getUint32(at + D_COMM + 4 * i, true);
  for (let i = 0; i < 3; i++) k[5 + i] = rv.getUint32(at + D_SOCK + 4 * i, true);
  return { bytes: Buffer.concat(parts), key: k };
}

function headHolds(h: SegmentHead, rv: DataView, at: number): boolean {
  const k = h.key;
  return (
    k[0] === rv.getUint32(at + HDR_TID, true) &&
    k[1] === rv.getUint32(at + D_COMM, true) &&
    k[2] === rv.getUint32(at + D_COMM + 4, true) &&
    k[3] === rv.getUint32(at + D_COMM + 8, true) &&
    k[4] === rv.getUint32(at + D_COMM + 12, true) &&
    k[5] === rv.getUint32(at + D_SOCK, true) &&
    k[6] === rv.getUint32(at + D_SOCK + 4, true) &&
    k[7] === rv.getUint32(at + D_SOCK + 8, true)
  );
}

/**
 * Writes the segment frame (length prefix included) of the data record at `at` of `rec` (its
 * DataView `rv`) into `out` (DataView `ov`) at `pos`, which must have room for the record's
 * size + SEGMENT_OVERHEAD. `wallHi/wallLo`: the halves of the offset from CLOCK_MONOTONIC to
 * Unix time. Returns the position after the frame.
 */
export function encodeSegment(
  out: Buffer,
  ov: DataView,
  pos: number,
  rec: Buffer,
  rv: DataView,
  at: number,
  wallHi: number,
  wallLo: number,
  lostBefore: number,
  midStream: boolean,
  cache: SegmentCache,
): number {
  const dir = rec[at + O['cap_data.dir']]! & 1;
  let head = cache.heads[dir];
  if (head === undefined || !headHolds(head, rv, at)) head = cache.heads[dir] = buildHead(rec, rv, at, dir);

  const flags = rv.getUint16(at + HDR_FLAGS, true);
  const dataLen = rv.getUint32(at + D_DATA_LEN, true);
  const last = rv.getUint32(at + D_CHUNK_OFF, true) + dataLen >= rv.getUint32(at + D_CAP_LEN, true);
  const rateLimited = (flags & Flag.RateLimited) !== 0 && last;
  const shed = (flags & Flag.Shed) !== 0 && last;

  const start = pos;
  pos += 4; // the length prefix, written last
  out.set(head.bytes, pos);
  out[pos + 2] = 21 + (rateLimited ? 1 : 0) + (shed ? 1 : 0); // the map's field count
  pos += head.bytes.length;
  pos = putHalves(ov, pos, rv.getUint32(at + D_SEQ + 4, true), rv.getUint32(at + D_SEQ, true));
  out.set(K_ACK, pos);
  pos = putHalves(ov, pos + K_ACK.length, rv.getUint32(at + D_ACK + 4, true), rv.getUint32(at + D_ACK, true));
  out.set(K_TS, pos);
  pos += K_TS.length;
  {
    // ts (monotonic) + the wall-clock offset, in 32-bit halves: no BigInt on the hot path.
    const lo = rv.getUint32(at + HDR_TS, true) + wallLo;
    const hi = (rv.getUint32(at + HDR_TS + 4, true) + wallHi + (lo >= TWO32 ? 1 : 0)) >>> 0;
    pos = putHalves(ov, pos, hi, lo >>> 0);
  }
  out.set(K_LEN, pos);
  pos = putInt(out, pos + K_LEN.length, rv.getUint32(at + D_CALL_LEN, true) + rv.getUint32(at + D_CALL_LEN + 4, true) * TWO32);
  out.set(K_DATA, pos);
  pos += K_DATA.length;
  if (dataLen < 0x100) {
    out[pos] = 0xc4;
    out[pos + 1] = dataLen;
    pos += 2;
  } else if (dataLen < 0x10000) {
    out[pos] = 0xc5;
    ov.setUint16(pos + 1, dataLen);
    pos += 3;
  } else {
    out[pos] = 0xc6;
    ov.setUint32(pos + 1, dataLen);
    pos += 5;
  }
  if (dataLen > 0) out.set(rec.subarray(at + D_DATA, at + D_DATA + dataLen), pos);
  pos += dataLen;
  out.set(K_EOS_FALSE_TRUNC, pos);
  pos += K_EOS_FALSE_TRUNC.length;
  out[pos++] = (flags & Flag.Truncated) !== 0 && last ? 0xc3 : 0xc2;
  if (rateLimited) {
    out.set(K_RATE_TRUE, pos);
    pos += K_RATE_TRUE.length;
  }
  if (shed) {
    out.set(K_SHED_TRUE, pos);
    pos += K_SHED_TRUE.length;
  }
  out.set(K_LOST, pos);
  pos = putInt(out, pos + K_LOST.length, lostBefore);
  out.set(K_MID, pos);
  pos += K_MID.length;
  out[pos++] = midStream ? 0xc3 : 0xc2;
  ov.setUint32(start, pos - start - 4);
  return pos;
}
