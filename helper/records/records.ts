// records.ts: decodes the ring-buffer records of bpf/capture.h from the batches the bridge
// hands over. Pure code (no addon, no kernel): replay and tests feed it recorded batches.
// Every size, offset and value comes from layout.ts, which scripts/gen-layout.js generates
// from capture.h with the C compiler's own offsetof/sizeof.
import * as ipaddr from 'ipaddr.js';
import * as L from './layout';
import { cap_close, cap_dir, cap_flags, cap_func, cap_kind, cap_role, cap_sock_flags, OFFSETS } from './layout';

export { OFFSETS };
export const COMM_LEN = L.CAP_COMM_LEN;
export const CHUNK_MAX = L.CAP_CHUNK_MAX;
export const MAX_CHUNKS = L.CAP_MAX_CHUNKS;
export const PATH_LEN = L.CAP_PATH_LEN;
/** Largest per-call cap the BPF program honours (CHUNK_MAX × MAX_CHUNKS = 64 MiB). */
export const CALL_CAP_MAX = CHUNK_MAX * MAX_CHUNKS;
/** The per-call cap unless told otherwise (--call-cap). */
export const DEFAULT_CALL_CAP = 1 << 20;
/** Most bytes per second per process the rate cap can be set to (capture.h CAP_RATE_CAP_MAX). */
export const RATE_CAP_MAX = L.CAP_RATE_CAP_MAX;
/** The ring buffer's size unless told otherwise (--ring-size). */
export const DEFAULT_RING_BYTES = 32 << 20;
/** Most bytes of a call that starts a message taken while the ring buffer is filling (enough for HTTP headers). */
export const DEFAULT_SHED_HEAD = 4096;
/** Shedding starts once this fraction of the ring buffer waits to be read (bench/overload.ts measured it). */
export const DEFAULT_SHED_FILL = 0.5;

export const enum Kind {
  Data = cap_kind.CAP_EV_DATA,
  Exit = cap_kind.CAP_EV_EXIT,
  ConnOpen = cap_kind.CAP_EV_CONN_OPEN,
  ConnClose = cap_kind.CAP_EV_CONN_CLOSE,
  Exec = cap_kind.CAP_EV_EXEC,
  LibOpen = cap_kind.CAP_EV_LIB_OPEN,
}

export const enum Flag {
  Truncated = cap_flags.CAP_F_TRUNCATED,
  RateLimited = cap_flags.CAP_F_RATE_LIMITED,
  Shed = cap_flags.CAP_F_SHED,
}

export type Direction = 'egress' | 'ingress';
export type Role = 'unknown' | 'client' | 'server';
export type CloseReason = 'shutdown' | 'free' | 'close' | 'reused' | 'exit';

const ROLES: Record<number, Role> = { [cap_role.CAP_ROLE_UNKNOWN]: 'unknown', [cap_role.CAP_ROLE_CLIENT]: 'client', [cap_role.CAP_ROLE_SERVER]: 'server' };
const CLOSE_REASONS: Record<number, CloseReason> = {
  [cap_close.CAP_CLOSE_SHUTDOWN]: 'shutdown',
  [cap_close.CAP_CLOSE_FREE]: 'free',
  [cap_close.CAP_CLOSE_FD]: 'close',
  [cap_close.CAP_CLOSE_REUSED]: 'reused',
};
export type TlsFunction =
  | 'SSL_write'
  | 'SSL_read'
  | 'SSL_write_ex'
  | 'SSL_read_ex'
  | 'ssl_write_internal'
  | 'ssl_read_internal'
  | 'gnutls_record_send'
  | 'gnutls_record_recv'
  | 'crypto/tls.(*Conn).Write'
  | 'crypto/tls.(*Conn).Read'
  | 'PR_Write'
  | 'PR_Send'
  | 'PR_Read'
  | 'PR_Recv'
  | 'PR_Writev'
  | 'rustls::conn::CommonState::send_some_plaintext'
  | 'rustls::conn::CommonState::take_received_plaintext';

const FUNCS: Record<number, TlsFunction> = {
  [cap_func.CAP_FN_SSL_WRITE]: 'SSL_write',
  [cap_func.CAP_FN_SSL_READ]: 'SSL_read',
  [cap_func.CAP_FN_SSL_WRITE_EX]: 'SSL_write_ex',
  [cap_func.CAP_FN_SSL_READ_EX]: 'SSL_read_ex',
  [cap_func.CAP_FN_SSL_WRITE_INTERNAL]: 'ssl_write_internal',
  [cap_func.CAP_FN_SSL_READ_INTERNAL]: 'ssl_read_internal',
  [cap_func.CAP_FN_GNUTLS_RECORD_SEND]: 'gnutls_record_send',
  [cap_func.CAP_FN_GNUTLS_RECORD_RECV]: 'gnutls_record_recv',
  [cap_func.CAP_FN_GO_TLS_WRITE]: 'crypto/tls.(*Conn).Write',
  [cap_func.CAP_FN_GO_TLS_READ]: 'crypto/tls.(*Conn).Read',
  [cap_func.CAP_FN_PR_WRITE]: 'PR_Write',
  [cap_func.CAP_FN_PR_SEND]: 'PR_Send',
  [cap_func.CAP_FN_PR_READ]: 'PR_Read',
  [cap_func.CAP_FN_PR_RECV]: 'PR_Recv',
  [cap_func.CAP_FN_PR_WRITEV]: 'PR_Writev',
  [cap_func.CAP_FN_RUSTLS_WRITE]: 'rustls::conn::CommonState::send_some_plaintext',
  [cap_func.CAP_FN_RUSTLS_RECEIVED]: 'rustls::conn::CommonState::take_received_plaintext',
};


const O = OFFSETS;
/** Size of a connection record before cap_conn.shed was added. */
const CONN_MIN = 128;

/** The socket under a connection; addresses '0.0.0.0' and ports 0 when unknown. */
export interface SockInfo {
  /** -1 when unknown. */
  fd: number;
  role: Role;
  family: 'ipv4' | 'ipv6' | 'unknown';
  localIp: string;
  localPort: number;
  remoteIp: string;
  remotePort: number;
  /** The capture joined this connection after it started (offsets count from there). */
  midStream: boolean;
}

const AF_INET = 2;
const SOCK_MID_STREAM = cap_sock_flags.CAP_SOCK_MID_STREAM;
const AF_INET6 = 10;

function ip6(b: Buffer): string {
  const addr = ipaddr.IPv6.parse(ipaddr.fromByteArray([...b]).toString());
  // v4-mapped (::ffff:a.b.c.d) keeps its dotted tail, as people write it.
  return addr.isIPv4MappedAddress() ? `::ffff:${addr.toIPv4Address().toString()}` : addr.toRFC5952String();
}

export function decodeSock(b: Buffer): SockInfo {
  const family = b.readUInt8(O['cap_sock.family']);
  const laddr = b.subarray(O['cap_sock.laddr'], O['cap_sock.laddr'] + 16);
  const raddr = b.subarray(O['cap_sock.raddr'], O['cap_sock.raddr'] + 16);
  const v4 = family === AF_INET;
  const v6 = family === AF_INET6;
  return {
    fd: b.readInt32LE(O['cap_sock.fd']),
    role: ROLES[b.readUInt8(O['cap_sock.role'])] ?? 'unknown',
    family: v4 ? 'ipv4' : v6 ? 'ipv6' : 'unknown',
    localIp: v4 ? [...laddr.subarray(0, 4)].join('.') : v6 ? ip6(laddr) : '0.0.0.0',
    localPort: v4 || v6 ? b.readUInt16LE(O['cap_sock.lport']) : 0,
    remoteIp: v4 ? [...raddr.subarray(0, 4)].join('.') : v6 ? ip6(raddr) : '0.0.0.0',
    remotePort: v4 || v6 ? b.readUInt16LE(O['cap_sock.rport']) : 0,
    midStream: (b.readUInt16LE(O['cap_sock.flags']) & SOCK_MID_STREAM) !== 0,
  };
}

/** What data and connection records share: when, who, and which connection. */
export interface ConnectionEvent {
  /** CLOCK_MONOTONIC nanoseconds (a data record: at the call's return). */
  tsNs: bigint;
  pid: number;
  tid: number;
  comm: string;
  connId: bigint;
  ssl: bigint;
  sock: SockInfo;
}

/** One chunk of the plaintext one TLS call moved. */
export interface DataRecord extends ConnectionEvent {
  kind: 'data';
  dir: Direction;
  func: TlsFunction;
  /** Offset of data[0] within the connection's direction. */
  seq: number;
  /** Bytes moved so far in the other direction. */
  ack: number;
  /** Bytes the whole call moved. */
  callLen: number;
  /** Bytes of the call that were captured (min(callLen, cap)). */
  capLen: number;
  /** Offset of data[0] within the call. */
  chunkOff: number;
  truncated: boolean;
  /** The call was cut (truncated) because its process was over the byte-rate cap. */
  rateLimited: boolean;
  /** The call was cut (truncated) to its head because the ring buffer was filling (load shedding). */
  shed?: boolean;
  data: Buffer;
}

/** A connection was first seen (or its socket became known), or it ended. */
export interface ConnRecord extends ConnectionEvent {
  kind: 'open' | 'close';
  /** Bytes moved so far per direction (on close: the final totals). */
  egressBytes: number;
  ingressBytes: number;
  /** On close. */
  reason?: CloseReason;
  /** Bytes of the connection's calls shed so far, both directions (exact, from the kernel). */
  shedBytes?: number;
}

export interface ExitRecord {
  kind: 'exit';
  tsNs: bigint;
  pid: number;
  tid: number;
  comm: string;
  exitCode: number;
}

/** A process started a program (exec), or opens a file named like a TLS library (lib-open). */
export interface ProcRecord {
  kind: 'exec' | 'lib-open';
  tsNs: bigint;
  pid: number;
  tid: number;
  comm: string;
  /** The program (exec) or the path given to open/openat, as the process sees its files. */
  path: string;
}

export type CaptureRecord = DataRecord | ConnRecord | ExitRecord | ProcRecord;

export class RecordError extends Error {
  override name = 'RecordError';
}

/**
 * A process name as the kernel keeps it (task->comm): its first COMM_LEN - 1 bytes of UTF-8,
 * read back as the records read it. `--comm` names are compared in this form everywhere (the
 * BPF filter's keys, discovery's targets), so a long or non-ASCII name matches the same
 * processes in both.
 */
export function kernelComm(name: string): string {
  return Buffer.from(name, 'utf8').subarray(0, COMM_LEN - 1).toString('utf8');
}

/** The process name at `at` (NUL-terminated, at most COMM_LEN bytes). */
export function comm(buf: Buffer, at: number): string {
  const raw = buf.subarray(at, at + COMM_LEN);
  const nul = raw.indexOf(0);
  return raw.subarray(0, nul < 0 ? COMM_LEN : nul).toString('utf8');
}

/**
 * Walks one batch: records back to back, each starting with its u32 size. Calls `fn` with each
 * record's offset, size and kind; throws RecordError on a record that does not fit.
 */
export function forEachRecord(batch: Buffer, fn: (at: number, size: number, kind: number) => void): void {
  let at = 0;
  while (at < batch.length) {
    if (batch.length - at < O.cap_hdr) throw new RecordError(`record at ${at}: ${batch.length - at} bytes, less than a header`);
    const size = batch.readUInt32LE(at + O['cap_hdr.size']);
    if (size < O.cap_hdr || at + size > batch.length) throw new RecordError(`record at ${at}: bad size ${size}`);
    fn(at, size, batch.readUInt16LE(at + O['cap_hdr.kind']));
    at += size;
  }
}

/** Checks the data record of `size` bytes at `at`; returns its function's name. */
export function checkData(b: Buffer, at: number, size: number): TlsFunction {
  if (size < O.cap_data) throw new RecordError(`data record of ${size} bytes`);
  const dataLen = b.readUInt32LE(at + O['cap_data.data_len']);
  if (O.cap_data + dataLen !== size) throw new RecordError(`data record of ${size} bytes says ${dataLen} bytes of data`);
  const func = FUNCS[b[at + O['cap_data.func']]!];
  if (!func) throw new RecordError(`data record with unknown function ${b[at + O['cap_data.func']]}`);
  return func;
}

/** Decodes one batch. `data` of the returned records are views into `batch` (no copy). Unknown kinds are skipped. */
export function decodeBatch(batch: Buffer): CaptureRecord[] {
  const out: CaptureRecord[] = [];
  forEachRecord(batch, (at, size) => {
    const rec = decodeRecord(batch.subarray(at, at + size));
    if (rec) out.push(rec);
  });
  return out;
}

export function decodeRecord(r: Buffer): CaptureRecord | undefined {
  const kind = r.readUInt16LE(O['cap_hdr.kind']);
  const tsNs = r.readBigUInt64LE(O['cap_hdr.ts_ns']);
  const pid = r.readUInt32LE(O['cap_hdr.pid']);
  const tid = r.readUInt32LE(O['cap_hdr.tid']);
  if (kind === Kind.Data) {
    const func = checkData(r, 0, r.length);
    return {
      kind: 'data',
      tsNs,
      pid,
      tid,
      comm: comm(r, O['cap_data.comm']),
      connId: r.readBigUInt64LE(O['cap_data.conn_id']),
      ssl: r.readBigUInt64LE(O['cap_data.ssl']),
      dir: r.readUInt8(O['cap_data.dir']) === cap_dir.CAP_DIR_EGRESS ? 'egress' : 'ingress',
      func,
      seq: Number(r.readBigUInt64LE(O['cap_data.seq'])),
      ack: Number(r.readBigUInt64LE(O['cap_data.ack'])),
      callLen: Number(r.readBigUInt64LE(O['cap_data.call_len'])),
      capLen: r.readUInt32LE(O['cap_data.cap_len']),
      chunkOff: r.readUInt32LE(O['cap_data.chunk_off']),
      truncated: (r.readUInt16LE(O['cap_hdr.flags']) & Flag.Truncated) !== 0,
      rateLimited: (r.readUInt16LE(O['cap_hdr.flags']) & Flag.RateLimited) !== 0,
      ...((r.readUInt16LE(O['cap_hdr.flags']) & Flag.Shed) !== 0 ? { shed: true } : {}),
      sock: decodeSock(r.subarray(O['cap_data.sock'], O['cap_data.sock'] + O.cap_sock)),
      data: r.subarray(O.cap_data),
    };
  }
  if (kind === Kind.ConnOpen || kind === Kind.ConnClose) {
    // 128 bytes: a record of a build before `shed` (recorded batches); its shed reads 0.
    if (r.length < CONN_MIN) throw new RecordError(`connection record of ${r.length} bytes`);
    const rec: ConnRecord = {
      kind: kind === Kind.ConnOpen ? 'open' : 'close',
      tsNs,
      pid,
      tid,
      comm: comm(r, O['cap_conn.comm']),
      connId: r.readBigUInt64LE(O['cap_conn.conn_id']),
      ssl: r.readBigUInt64LE(O['cap_conn.ssl']),
      egressBytes: Number(r.readBigUInt64LE(O['cap_conn.off'])),
      ingressBytes: Number(r.readBigUInt64LE(O['cap_conn.off'] + 8)),
      sock: decodeSock(r.subarray(O['cap_conn.sock'], O['cap_conn.sock'] + O.cap_sock)),
    };
    const shed = r.length >= O.cap_conn ? Number(r.readBigUInt64LE(O['cap_conn.shed'])) : 0;
    if (shed) rec.shedBytes = shed;
    if (kind === Kind.ConnClose) rec.reason = CLOSE_REASONS[r.readUInt8(O['cap_conn.reason'])] ?? 'close';
    return rec;
  }
  if (kind === Kind.Exec || kind === Kind.LibOpen) {
    if (r.length < O.cap_proc) throw new RecordError(`process record of ${r.length} bytes`);
    const raw = r.subarray(O['cap_proc.path'], O['cap_proc.path'] + PATH_LEN);
    const nul = raw.indexOf(0);
    return {
      kind: kind === Kind.Exec ? 'exec' : 'lib-open',
      tsNs,
      pid,
      tid,
      comm: comm(r, O['cap_proc.comm']),
      path: raw.subarray(0, nul < 0 ? PATH_LEN : nul).toString('utf8'),
    };
  }
  if (kind === Kind.Exit) {
    if (r.length < O.cap_exit) throw new RecordError(`exit record of ${r.length} bytes`);
    return { kind: 'exit', tsNs, pid, tid, comm: comm(r, O['cap_exit.comm']), exitCode: r.readInt32LE(O['cap_exit.exit_code']) };
  }
  return undefined;
}

/** Encodes the `settings` map value (struct cap_config). shedAbove 0: never shed. */
export function encodeConfig(filter: number, callCap: number, flags = 0, rateCap = 0, shedHead = 0, shedAbove = 0): Buffer {
  const b = Buffer.alloc(O.cap_config);
  b.writeUInt32LE(filter, O['cap_config.filter']);
  b.writeUInt32LE(flags, O['cap_config.flags']);
  b.writeBigUInt64LE(BigInt(callCap), O['cap_config.call_cap']);
  b.writeBigUInt64LE(BigInt(rateCap), O['cap_config.rate_cap']);
  b.writeUInt32LE(shedHead, O['cap_config.shed_head']);
  b.writeUInt32LE(shedAbove, O['cap_config.shed_above']);
  return b;
}

/** Encodes struct cap_sock (IPv4 and IPv6 addresses in their usual text forms). */
export function encodeSock(s: SockInfo): Buffer {
  const b = Buffer.alloc(O.cap_sock);
  b.writeInt32LE(s.fd, O['cap_sock.fd']);
  b.writeUInt8(Number(Object.keys(ROLES).find((k) => ROLES[Number(k)] === s.role) ?? cap_role.CAP_ROLE_UNKNOWN), O['cap_sock.role']);
  const family = s.family === 'ipv4' ? AF_INET : s.family === 'ipv6' ? AF_INET6 : 0;
  b.writeUInt8(family, O['cap_sock.family']);
  b.writeUInt16LE(s.localPort, O['cap_sock.lport']);
  b.writeUInt16LE(s.remotePort, O['cap_sock.rport']);
  b.writeUInt16LE(s.midStream ? SOCK_MID_STREAM : 0, O['cap_sock.flags']);
  const put = (ip: string, at: number): void => {
    if (family === AF_INET) ip.split('.').forEach((x, i) => b.writeUInt8(Number(x), at + i));
    if (family === AF_INET6) ipv6Bytes(ip).copy(b, at);
  };
  put(s.localIp, O['cap_sock.laddr']);
  put(s.remoteIp, O['cap_sock.raddr']);
  return b;
}

function ipv6Bytes(ip: string): Buffer {
  return Buffer.from(ipaddr.IPv6.parse(ip).toByteArray());
}

/** Encodes a record as the BPF program would: used by tests and recorded fixtures. */
export function encodeData(r: Omit<DataRecord, 'kind' | 'rateLimited' | 'shed'> & { rateLimited?: boolean; shed?: boolean }): Buffer {
  const b = Buffer.alloc(O.cap_data + r.data.length);
  b.writeUInt32LE(b.length, O['cap_hdr.size']);
  b.writeUInt16LE(Kind.Data, O['cap_hdr.kind']);
  b.writeUInt16LE((r.truncated ? Flag.Truncated : 0) | (r.rateLimited ? Flag.RateLimited : 0) | (r.shed ? Flag.Shed : 0), O['cap_hdr.flags']);
  b.writeBigUInt64LE(r.tsNs, O['cap_hdr.ts_ns']);
  b.writeUInt32LE(r.pid, O['cap_hdr.pid']);
  b.writeUInt32LE(r.tid, O['cap_hdr.tid']);
  b.writeBigUInt64LE(r.connId, O['cap_data.conn_id']);
  b.writeBigUInt64LE(r.ssl, O['cap_data.ssl']);
  b.writeBigUInt64LE(BigInt(r.seq), O['cap_data.seq']);
  b.writeBigUInt64LE(BigInt(r.ack), O['cap_data.ack']);
  b.writeBigUInt64LE(BigInt(r.callLen), O['cap_data.call_len']);
  b.writeUInt32LE(r.chunkOff, O['cap_data.chunk_off']);
  b.writeUInt32LE(r.data.length, O['cap_data.data_len']);
  b.writeUInt8(r.dir === 'egress' ? cap_dir.CAP_DIR_EGRESS : cap_dir.CAP_DIR_INGRESS, O['cap_data.dir']);
  const func = Number(Object.keys(FUNCS).find((k) => FUNCS[Number(k)] === r.func));
  b.writeUInt8(func, O['cap_data.func']);
  b.writeUInt32LE(r.capLen, O['cap_data.cap_len']);
  Buffer.from(r.comm, 'utf8').subarray(0, COMM_LEN - 1).copy(b, O['cap_data.comm']);
  encodeSock(r.sock).copy(b, O['cap_data.sock']);
  r.data.copy(b, O.cap_data);
  return b;
}

/**
 * Joins the records of shed calls that carry no bytes (a call that continued a message while
 * the ring was filling: bpf/calls.h) into one when they follow each other on a connection and
 * direction with no other record of the connection between: one record of no data for all
 * their bytes, as if one call had moved them, so a body read in 17 calls costs the renderers
 * one gap, not 17. Offsets, order within the connection and the counts stay as they were.
 */
export function joinShedRecords(records: CaptureRecord[]): CaptureRecord[] {
  const out: CaptureRecord[] = [];
  // Per connection: the index in `out` of its last record.
  const last = new Map<bigint, number>();
  for (const r of records) {
    if (r.kind === 'data') {
      const i = last.get(r.connId);
      const p = i === undefined ? undefined : out[i];
      if (r.shed && r.data.length === 0 && r.chunkOff === 0 && p?.kind === 'data' && p.shed && p.data.length === 0 && p.chunkOff === 0 && p.dir === r.dir && p.seq + p.callLen === r.seq) {
        p.callLen += r.callLen;
        p.tsNs = r.tsNs;
        continue;
      }
      last.set(r.connId, out.length);
    } else if (r.kind === 'open' || r.kind === 'close') {
      last.set(r.connId, out.length);
    } else {
      last.clear(); // an exit ends connections: nothing joins across it
    }
    out.push(r);
  }
  return out;
}
