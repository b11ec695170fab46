// frames.ts: one valid example of every frame type of the protocol, for the schema and wire tests.
import { KnownFrame } from '../../helper/protocol/generated';

const kernel = { calls: 3, bytes_moved: 300, bytes_captured: 300, bytes_truncated: 0, records_lost: 0, bytes_lost: 0, read_faults: 0, bytes_faulted: 0, events_lost: 0 };
const writer = { frames_written: 9, bytes_written: 900, queued_bytes: 0, max_queue_bytes: 1 << 26, dropped_segments: 0, dropped_bytes: 0 };
const TS = 1_764_000_000_123_456_789n;

export function exampleFrames(): KnownFrame[] {
  return [
    {
      type: 'hello', protocol: 1, helper_version: '0.1.0', pid: 1234, capabilities: { libraries: ['openssl'] },
      limits: { max_frame_bytes: 65536, max_control_frame_bytes: 1 << 20, max_data_bytes: 16384, max_queue_bytes: 1 << 26 },
      clock: 'realtime-ns', ts_ns: TS,
    },
    {
      type: 'segment', conn_id: 0xffff_ffff_ffff_fff0n, pid: 42, tid: 43, comm: 'curl', ssl_ptr: 0x5555_5555_8000n, fd: -1, dir: 0,
      local_ip: '0.0.0.0', local_port: 0, remote_ip: '::', remote_port: 0, seq: 0n, ack: 0n, ts_ns: TS, len_total: 5,
      data: Buffer.from('hello'), eos: false, truncated: false, lost_before: 0, mid_stream: false,
    },
    {
      type: 'conn_open', conn_id: 7n, pid: 42, tid: 42, comm: 'curl', ssl_ptr: 1n, fd: 5, local_ip: '127.0.0.1', local_port: 40000,
      remote_ip: '127.0.0.1', remote_port: 443, ts_ns: TS, mid_stream: false, role: 'client',
    },
    { type: 'conn_close', conn_id: 7n, pid: 42, ts_ns: TS, reason: 'process_exit', egress_end: 78n, ingress_end: 1000n, eos: true },
    { type: 'process', pid: -1, library: '/usr/lib/x86_64-linux-gnu/libssl.so.3', kind: 'openssl', state: 'attached', functions: ['SSL_write'], reason: '', ts_ns: TS },
    { type: 'loss', source: 'writer_queue', bytes: 16384, records: 1, total_bytes: 16384, ts_ns: TS },
    { type: 'stats', ts_ns: TS, kernel, writer, libraries: 1, connections: 0, config: { pids: [], comms: [], ports: [], call_cap: 1 << 20, libraries: ['openssl'], stats_interval_ms: 5000 } },
    { type: 'error', code: 'bad_config', message: 'm', fix: 'f', fatal: false, frame_type: 'config' },
    { type: 'ready', ts_ns: TS, libraries: 2, failed: 0 },
    { type: 'bye', reason: 'shutdown', ts_ns: TS, kernel, writer },
    { type: 'config', pids: [1, 2], comms: ['curl'], ports: [443], call_cap: 4096, libraries: ['openssl'], stats_interval_ms: 1000 },
    { type: 'shutdown', reason: 'done' },
  ];
}
