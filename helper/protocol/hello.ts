// hello.ts: what a frame stream says about itself in its first frame (docs/protocol.md): the
// protocol version, the kinds of TLS code this helper hooks, the frame limits and the clock.
// Pure: the host library checks the same constants the helper writes.
import { HelperFrame } from './generated';
import { MAX_CONTROL_FRAME_BYTES, MAX_DATA_BYTES, MAX_FRAME_BYTES } from './wire';

export const PROTOCOL_VERSION = 1;
/** Kinds of TLS code the helper hooks (hello.capabilities.libraries; config.libraries picks among them). */
export const SUPPORTED_LIBRARIES = ['openssl', 'gnutls', 'go', 'boringssl', 'nss', 'rustls'] as const;

/** The first frame of every stream, --ipc or recording. */
export function helloFrame(o: { helperVersion: string; pid: number; maxQueueBytes: number; tsNs: bigint }): HelperFrame {
  return {
    type: 'hello',
    protocol: PROTOCOL_VERSION,
    helper_version: o.helperVersion,
    pid: o.pid,
    capabilities: { libraries: [...SUPPORTED_LIBRARIES] },
    limits: { max_frame_bytes: MAX_FRAME_BYTES, max_control_frame_bytes: MAX_CONTROL_FRAME_BYTES, max_data_bytes: MAX_DATA_BYTES, max_queue_bytes: o.maxQueueBytes },
    clock: 'realtime-ns',
    ts_ns: o.tsNs,
  };
}
