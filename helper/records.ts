// records.ts: decodes the ring-buffer records of bpf/capture.h from the batches the bridge
// hands over. Pure code (no addon, no kernel): replay and tests feed it recorded batches.
// The offsets here mirror capture.h; test/records.test.ts checks them against the layout the
// addon was compiled with.

export const COMM_LEN = 16;
export const CHUNK_MAX = 16384;
export const MAX_CHUNKS = 4096;
/** Largest per-call cap the BPF program honours (CHUNK_MAX × MAX_CHUNKS = 64 MiB). */
export const CALL_CAP_MAX = CHUNK_MAX * MAX_CHUNKS;

export const enum Kind {
  Data = 1,
  Exit = 2,
}

export const enum Flag {
  Truncated = 1,
}

export type Direction = 'egress' | 'ingress';
export type TlsFunction = 'SSL_write' | 'SSL_read' | 'SSL_write_ex' | 'SSL_read_ex' | 'ssl_write_internal' | 'ssl_read_internal';

const FUNCS: Record<number, TlsFunction> = {
  1: 'SSL_write',
  2: 'SSL_read',
  3: 'SSL_write_ex',
  4: 'SSL_read_ex',
  5: 'ssl_write_internal',
  6: 'ssl_read_internal',
};

/** Byte offsets of the fields, as in capture.h. */
export const OFFSETS = {
  'cap_hdr': 24,
  'cap_hdr.size': 0,
  'cap_hdr.kind': 4,
  'cap_hdr.flags': 6,
  'cap_hdr.ts_ns': 8,
  'cap_hdr.pid': 16,
  'cap_hdr.tid': 20,
  'cap_data': 96,
  'cap_data.conn_id': 24,
  'cap_data.ssl': 32,
  'cap_data.seq': 40,
  'cap_data.ack': 48,
  'cap_data.call_len': 56,
  'cap_data.chunk_off': 64,
  'cap_data.data_len': 68,
  'cap_data.dir': 72,
  'cap_data.func': 73,
  'cap_data.cap_len': 76,
  'cap_data.comm': 80,
  'cap_exit': 48,
  'cap_exit.exit_code': 24,
  'cap_exit.comm': 32,
  'cap_config': 16,
  'cap_config.filter': 0,
  'cap_config.call_cap': 8,
} as const;

const O = OFFSETS;

/** One chunk of the plaintext one TLS call moved. */
export interface DataRecord {
  kind: 'data';
  /** CLOCK_MONOTONIC nanoseconds at the call's return. */
  tsNs: bigint;
  pid: number;
  tid: number;
  comm: string;
  connId: bigint;
  ssl: bigint;
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
  data: Buffer;
}

export interface ExitRecord {
  kind: 'exit';
  tsNs: bigint;
  pid: number;
  tid: number;
  comm: string;
  exitCode: number;
}

export type CaptureRecord = DataRecord | ExitRecord;

export class RecordError extends Error {
  override name = 'RecordError';
}

function comm(buf: Buffer, at: number): string {
  const raw = buf.subarray(at, at + COMM_LEN);
  const nul = raw.indexOf(0);
  return raw.subarray(0, nul < 0 ? COMM_LEN : nul).toString('utf8');
}

/**
 * Decodes one batch: records back to back, each starting with its u32 size. `data` of the
 * returned records are views into `batch` (no copy). Unknown kinds are skipped.
 */
export function decodeBatch(batch: Buffer): CaptureRecord[] {
  const out: CaptureRecord[] = [];
  let at = 0;
  while (at < batch.length) {
    if (batch.length - at < O.cap_hdr) throw new RecordError(`record at ${at}: ${batch.length - at} bytes, less than a header`);
    const size = batch.readUInt32LE(at + O['cap_hdr.size']);
    if (size < O.cap_hdr || at + size > batch.length) throw new RecordError(`record at ${at}: bad size ${size}`);
    const rec = decodeRecord(batch.subarray(at, at + size));
    if (rec) out.push(rec);
    at += size;
  }
  return out;
}

export function decodeRecord(r: Buffer): CaptureRecord | undefined {
  const kind = r.readUInt16LE(O['cap_hdr.kind']);
  const tsNs = r.readBigUInt64LE(O['cap_hdr.ts_ns']);
  const pid = r.readUInt32LE(O['cap_hdr.pid']);
  const tid = r.readUInt32LE(O['cap_hdr.tid']);
  if (kind === Kind.Data) {
    if (r.length < O.cap_data) throw new RecordError(`data record of ${r.length} bytes`);
    const dataLen = r.readUInt32LE(O['cap_data.data_len']);
    if (O.cap_data + dataLen !== r.length) throw new RecordError(`data record of ${r.length} bytes says ${dataLen} bytes of data`);
    const func = FUNCS[r.readUInt8(O['cap_data.func'])];
    if (!func) throw new RecordError(`data record with unknown function ${r.readUInt8(O['cap_data.func'])}`);
    return {
      kind: 'data',
      tsNs,
      pid,
      tid,
      comm: comm(r, O['cap_data.comm']),
      connId: r.readBigUInt64LE(O['cap_data.conn_id']),
      ssl: r.readBigUInt64LE(O['cap_data.ssl']),
      dir: r.readUInt8(O['cap_data.dir']) === 0 ? 'egress' : 'ingress',
      func,
      seq: Number(r.readBigUInt64LE(O['cap_data.seq'])),
      ack: Number(r.readBigUInt64LE(O['cap_data.ack'])),
      callLen: Number(r.readBigUInt64LE(O['cap_data.call_len'])),
      capLen: r.readUInt32LE(O['cap_data.cap_len']),
      chunkOff: r.readUInt32LE(O['cap_data.chunk_off']),
      truncated: (r.readUInt16LE(O['cap_hdr.flags']) & Flag.Truncated) !== 0,
      data: r.subarray(O.cap_data),
    };
  }
  if (kind === Kind.Exit) {
    if (r.length < O.cap_exit) throw new RecordError(`exit record of ${r.length} bytes`);
    return { kind: 'exit', tsNs, pid, tid, comm: comm(r, O['cap_exit.comm']), exitCode: r.readInt32LE(O['cap_exit.exit_code']) };
  }
  return undefined;
}

/** Encodes the `settings` map value (struct cap_config). */
export function encodeConfig(filter: number, callCap: number): Buffer {
  const b = Buffer.alloc(O.cap_config);
  b.writeUInt32LE(filter, O['cap_config.filter']);
  b.writeBigUInt64LE(BigInt(callCap), O['cap_config.call_cap']);
  return b;
}

/** Encodes a record as the BPF program would: used by tests and recorded fixtures. */
export function encodeData(r: Omit<DataRecord, 'kind'>): Buffer {
  const b = Buffer.alloc(O.cap_data + r.data.length);
  b.writeUInt32LE(b.length, O['cap_hdr.size']);
  b.writeUInt16LE(Kind.Data, O['cap_hdr.kind']);
  b.writeUInt16LE(r.truncated ? Flag.Truncated : 0, O['cap_hdr.flags']);
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
  b.writeUInt8(r.dir === 'egress' ? 0 : 1, O['cap_data.dir']);
  const func = Number(Object.keys(FUNCS).find((k) => FUNCS[Number(k)] === r.func));
  b.writeUInt8(func, O['cap_data.func']);
  b.writeUInt32LE(r.capLen, O['cap_data.cap_len']);
  b.write(r.comm.slice(0, COMM_LEN - 1), O['cap_data.comm'], 'utf8');
  r.data.copy(b, O.cap_data);
  return b;
}
