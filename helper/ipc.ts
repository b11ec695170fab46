// ipc.ts: the `--ipc` mode, the helper's face to apidump (docs/protocol.md): frames on stdout
// (hello first, bye last), control frames on stdin, logs on stderr. Builds segment frames from
// capture records, keeps the connection table for conn_open/conn_close, reports loss and stats,
// and stops cleanly on shutdown, a signal, stdin closing or the parent's death.
import * as fs from 'fs';
import * as path from 'path';
import { Readable, Writable } from 'stream';
import { Capture, DEFAULT_CALL_CAP, KernelCounters } from './capture';
import { attachRefused, explain, preflight, privilegeWarnings } from './errors';
import { ConfigFrame, ConfigState, ConnCloseFrame, ConnOpenFrame, ErrorFrame, HelperFrame, KernelCounters as WireKernelCounters, SegmentFrame } from './generated/protocol';
import { Discovery } from './discovery';
import { LibraryFile, TlsKind } from './libraries';
import { CaptureRecord, ConnRecord, DataRecord, SockInfo } from './records';
import { DEFAULT_MAX_QUEUE_BYTES, FrameDecoder, FrameError, FrameWriter, MAX_CONTROL_FRAME_BYTES, MAX_DATA_BYTES, MAX_FRAME_BYTES, RawFrame } from './wire';

export const PROTOCOL_VERSION = 1;
/** Kinds of TLS code the helper hooks (hello.capabilities.libraries; config.libraries picks among them). */
export const SUPPORTED_LIBRARIES = ['openssl', 'gnutls', 'go'] as const;

export interface IpcOptions {
  pids?: number[];
  comms?: string[];
  /** Only connections with one of these local or remote ports. */
  ports?: number[];
  callCap?: number;
  /** Bytes per second per process captured at most (--rate-cap; 0 no limit). */
  rateCap?: number;
  ringBytes?: number;
  /** /proc rescan interval in ms (--poll-interval). */
  pollMs?: number;
  /** Extra library files to attach to (--library). */
  libraries?: string[];
  /** Validate every outgoing frame against the schemas (--validate; always in tests). */
  validate?: boolean;
  /** Also save the frame stream to this file, mode 0600 (--record). */
  record?: string;
  /** Bound on bytes queued for stdout (default 64 MiB). */
  maxQueueBytes?: number;
  statsIntervalMs?: number;
  /** A control frame incomplete for this long is reported and dropped (default 2000 ms). */
  partialFrameTimeoutMs?: number;
  /** How often to check that the parent is alive (default 500 ms). */
  parentPollMs?: number;
  input?: Readable;
  output?: Writable;
  log?: (line: string) => void;
}

function helperVersion(): string {
  for (const p of [path.resolve(__dirname, '..', '..', 'package.json'), path.resolve(__dirname, '..', 'package.json')]) {
    try {
      return String((JSON.parse(fs.readFileSync(p, 'utf8')) as { version?: unknown }).version ?? '0.0.0');
    } catch {
      // try the next location
    }
  }
  return '0.0.0';
}

const nowNs = (): bigint => BigInt(Date.now()) * 1_000_000n;

/** Kernel counters in the wire's names. */
export function wireCounters(k: KernelCounters | undefined): WireKernelCounters {
  return {
    calls: k?.calls ?? 0,
    bytes_moved: k?.bytesMoved ?? 0,
    bytes_captured: k?.bytesCaptured ?? 0,
    bytes_truncated: k?.bytesTruncated ?? 0,
    records_lost: k?.recordsLost ?? 0,
    bytes_lost: k?.bytesLost ?? 0,
    read_faults: k?.readFaults ?? 0,
    bytes_faulted: k?.bytesFaulted ?? 0,
    events_lost: k?.eventsLost ?? 0,
    bytes_rate_limited: k?.bytesRateLimited ?? 0,
  };
}

/** The socket fields shared by segment and conn_open (0.0.0.0:0 and fd -1 when unknown). */
function socketFields(s: SockInfo): Pick<SegmentFrame, 'fd' | 'local_ip' | 'local_port' | 'remote_ip' | 'remote_port'> {
  return { fd: s.fd, local_ip: s.localIp, local_port: s.localPort, remote_ip: s.remoteIp, remote_port: s.remotePort };
}

/**
 * The one place where a capture record becomes a segment frame.
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
    lost_before: lostBefore,
    mid_stream: midStream,
  };
}

interface Conn {
  open: ConnOpenFrame;
  /** Offset just past the last byte seen, per direction (0 egress, 1 ingress). */
  end: [number, number];
}

/**
 * Turns capture records into frames, in capture order: conn_open before a connection's first
 * segment, conn_close (eos) for each connection of a process when it exits, and for every
 * connection still open at `closeAll()`. Pure: it only calls `emit`.
 */
export class FrameBuilder {
  private readonly conns = new Map<string, Conn>();

  constructor(
    private readonly wallOffsetNs: bigint,
    private readonly emit: (f: HelperFrame) => void,
  ) {}

  get openConnections(): number {
    return this.conns.size;
  }

  push(r: CaptureRecord): void {
    if (r.kind === 'data') this.data(r);
    else if (r.kind === 'open') this.opened(r, r.sock);
    else if (r.kind === 'close') {
      // The kernel's final offsets are exact even when the last records were lost.
      const c = this.conns.get(`${r.pid}:${r.connId}`);
      if (c) c.end = [Math.max(c.end[0], r.egressBytes), Math.max(c.end[1], r.ingressBytes)];
      this.closeWhere((x) => x.open.pid === r.pid && x.open.conn_id === r.connId, r.reason ?? 'close', r.tsNs + this.wallOffsetNs);
    } else if (r.kind === 'exit') this.closeWhere((c) => c.open.pid === r.pid, 'process_exit', r.tsNs + this.wallOffsetNs);
    // other records (a process's exec, a library opened) are discovery's, not the host's
  }

  closeAll(reason: string): void {
    this.closeWhere(() => true, reason, nowNs());
  }

  /** conn_open, once per connection: from the kernel's open record, or from its first data. */
  private opened(r: ConnRecord | DataRecord, sock: SockInfo): Conn {
    const key = `${r.pid}:${r.connId}`;
    let c = this.conns.get(key);
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
    };
    this.conns.set(key, c);
    this.emit(c.open);
    return c;
  }

  private data(r: DataRecord): void {
    const c = this.opened(r, r.sock);
    const d = r.dir === 'egress' ? 0 : 1;
    // Bytes between the last one delivered and this record's first were lost (ring buffer
    // full, unreadable memory); bytes past a call's cap are not: they end at the call's end.
    const lost = Math.max(0, r.seq - c.end[d]);
    c.end[d] = Math.max(c.end[d], r.seq + r.data.length);
    // Bytes past the cap are counted in the offsets too: the call's end is its seq + callLen.
    if (r.truncated && r.chunkOff + r.data.length >= r.capLen) c.end[d] = Math.max(c.end[d], r.seq - r.chunkOff + r.callLen);
    this.emit(segmentFrom(r, this.wallOffsetNs, lost, c.open.mid_stream));
  }

  private closeWhere(match: (c: Conn) => boolean, reason: string, tsNs: bigint): void {
    for (const [key, c] of this.conns) {
      if (!match(c)) continue;
      this.conns.delete(key);
      const close: ConnCloseFrame = {
        type: 'conn_close',
        conn_id: c.open.conn_id,
        pid: c.open.pid,
        ts_ns: tsNs,
        reason,
        egress_end: BigInt(c.end[0]),
        ingress_end: BigInt(c.end[1]),
        eos: true,
      };
      this.emit(close);
    }
  }
}

/** Opens a file for a frame recording: created or truncated, mode 0600 even if it existed. */
export function openRecording(file: string): fs.WriteStream {
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
  fs.fchmodSync(fd, 0o600);
  return fs.createWriteStream('', { fd });
}

type StopReason = 'shutdown' | 'signal' | 'stdin_closed' | 'parent_exited' | 'fatal_error' | 'stdout_closed';
export type ByeReason = Exclude<StopReason, 'stdout_closed'>;

/** The first frame of every stream, --ipc or recording. */
function helloFrame(maxQueueBytes: number): HelperFrame {
  return {
    type: 'hello',
    protocol: PROTOCOL_VERSION,
    helper_version: helperVersion(),
    pid: process.pid,
    capabilities: { libraries: [...SUPPORTED_LIBRARIES] },
    limits: { max_frame_bytes: MAX_FRAME_BYTES, max_control_frame_bytes: MAX_CONTROL_FRAME_BYTES, max_data_bytes: MAX_DATA_BYTES, max_queue_bytes: maxQueueBytes },
    clock: 'realtime-ns',
    ts_ns: nowNs(),
  };
}

/** Sends a loss frame per source for what was lost since the previous report of that source. */
class LossReporter {
  private readonly reported = { ring_buffer: [0, 0], memory_fault: [0, 0], events: [0, 0], writer_queue: [0, 0] };

  constructor(
    private readonly writer: FrameWriter,
    private readonly send: (f: HelperFrame) => boolean,
  ) {}

  report(k: KernelCounters): void {
    const w = this.writer.snapshot();
    const now: Record<keyof LossReporter['reported'], [number, number]> = {
      ring_buffer: [k.bytesLost, k.recordsLost],
      memory_fault: [k.bytesFaulted, k.readFaults],
      events: [0, k.eventsLost],
      writer_queue: [w.dropped_bytes, w.dropped_segments],
    };
    for (const src of Object.keys(this.reported) as (keyof LossReporter['reported'])[]) {
      const [b, r] = now[src];
      const [b0, r0] = this.reported[src];
      if (b > b0! || r > r0!) {
        this.send({ type: 'loss', source: src, bytes: b - b0!, records: r - r0!, total_bytes: b, ts_ns: nowNs() });
        this.reported[src] = [b, r];
      }
    }
  }
}

export interface ProcessEvent {
  pid: number;
  library: string;
  state: 'attached' | 'detached' | 'failed';
  functions: string[];
  reason: string;
}

/**
 * `--record FILE` without --ipc: the same frame stream the --ipc mode writes (hello, process,
 * conn_open, segment, conn_close, loss, bye), built by the same FrameBuilder and FrameWriter,
 * into a file of mode 0600, while the command prints for people. `https-capture replay` reads it.
 */
export class FrameRecording {
  private readonly file: fs.WriteStream;
  private readonly writer: FrameWriter;
  private readonly builder: FrameBuilder;
  private readonly losses: LossReporter;
  private closed = false;

  constructor(
    readonly path: string,
    wallOffsetNs: bigint,
    opts: { validate?: boolean; maxQueueBytes?: number } = {},
  ) {
    this.file = openRecording(path);
    this.writer = new FrameWriter(this.file, { maxQueueBytes: opts.maxQueueBytes ?? DEFAULT_MAX_QUEUE_BYTES, validate: opts.validate ?? false });
    const send = (f: HelperFrame): boolean => this.writer.write(f as unknown as RawFrame);
    this.losses = new LossReporter(this.writer, send);
    send(helloFrame(this.writer.maxQueueBytes));
    this.builder = new FrameBuilder(wallOffsetNs, send);
  }

  push(r: CaptureRecord): void {
    if (!this.closed) this.builder.push(r);
  }

  process(e: ProcessEvent): void {
    if (!this.closed) this.writer.write({ type: 'process', kind: 'openssl', ts_ns: nowNs(), ...e });
  }

  /** Closes every connection still open, reports loss, writes bye and closes the file. */
  async close(reason: ByeReason, k: KernelCounters | undefined): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.builder.closeAll('helper_exit');
    if (k) this.losses.report(k);
    this.writer.write({ type: 'bye', reason, ts_ns: nowNs(), kernel: wireCounters(k), writer: this.writer.snapshot() });
    await this.writer.flushed(5000);
    await new Promise<void>((resolve) => this.file.end(resolve));
    if (this.writer.error) throw new Error(`could not write the recording ${this.path}: ${this.writer.error.message}`);
  }
}

/**
 * Runs the --ipc mode until shutdown, a signal, stdin closing or the parent's death; resolves
 * with the exit code (0 after a clean bye). stdout carries only frames.
 */
export async function runIpc(opts: IpcOptions = {}): Promise<number> {
  const input = opts.input ?? process.stdin;
  const output = opts.output ?? process.stdout;
  const log = opts.log ?? ((s: string): void => void process.stderr.write(`https-capture: ${s}\n`));
  const recording = opts.record ? openRecording(opts.record) : undefined;
  const writer = new FrameWriter(output, {
    maxQueueBytes: opts.maxQueueBytes ?? DEFAULT_MAX_QUEUE_BYTES,
    validate: opts.validate ?? false,
    ...(recording ? { tee: (b: Buffer): void => void recording.write(b) } : {}),
  });
  const send = (f: HelperFrame): boolean => writer.write(f as unknown as RawFrame);
  const error = (code: string, message: string, fix: string, fatal: boolean, frameType?: string): void => {
    const f: ErrorFrame = { type: 'error', code, message, fix, fatal, ...(frameType !== undefined ? { frame_type: frameType } : {}) };
    log(`${fatal ? 'error' : 'warning'}: ${message} (fix: ${fix})`);
    send(f);
  };

  send(helloFrame(writer.maxQueueBytes));

  const finish = async (reason: StopReason, k: KernelCounters | undefined, code: number): Promise<number> => {
    send({ type: 'bye', reason, ts_ns: nowNs(), kernel: wireCounters(k), writer: writer.snapshot() });
    await writer.flushed(5000);
    if (recording) await new Promise<void>((resolve) => recording.end(resolve));
    log(`stopped (${reason})`);
    return code;
  };

  const state: Required<ConfigState> = {
    pids: opts.pids ?? [],
    comms: opts.comms ?? [],
    ports: opts.ports ?? [],
    call_cap: opts.callCap ?? DEFAULT_CALL_CAP,
    rate_cap: opts.rateCap ?? 0,
    libraries: [...SUPPORTED_LIBRARIES],
    stats_interval_ms: opts.statsIntervalMs ?? 5000,
  };

  let capture: Capture;
  try {
    preflight();
    capture = new Capture({ pids: state.pids, comms: state.comms, ports: state.ports, callCap: state.call_cap, rateCap: state.rate_cap, execEvents: true, ...(opts.ringBytes ? { ringBytes: opts.ringBytes } : {}) });
  } catch (e) {
    const u = explain(e);
    error('capture_failed', u.cause, u.fix, true);
    return finish('fatal_error', undefined, u.exitCode);
  }

  // Libraries are found and followed by the same discovery as the standalone mode (new files
  // as they are opened, other mount namespaces, upgrades, executables with OpenSSL inside);
  // each attachment, failure and detachment becomes a `process` frame.
  const refused: string[] = [];
  const processFrame = (lib: LibraryFile, pid: number, state: 'attached' | 'failed' | 'detached', functions: string[], reason: string): void => {
    if (state === 'failed') refused.push(reason);
    send({ type: 'process', pid, library: lib.path, kind: lib.kind, state, functions, reason: state === 'failed' ? (attachRefused([reason], pid >= 0)?.cause ?? reason) : reason, ts_ns: nowNs() });
  };
  for (const w of privilegeWarnings()) log(`warning: ${w}`);
  let discovery: Discovery | undefined;
  const attachAll = (): number => {
    discovery = new Discovery(capture, { extra: opts.libraries ?? [], pollMs: opts.pollMs ?? 2000, kinds: state.libraries as TlsKind[] }, {
      attached: (lib, r, pid) => {
        const notes = [r.plan.kind === 'internal' ? 'internal functions' : r.plan.kind === 'go' ? `Go crypto/tls (${r.plan.reason})` : `exported functions (${r.plan.reason})`];
        if (r.failed.length) notes.push(`could not probe ${r.failed.map((f) => `${f.func}: ${f.reason}`).join('; ')}`);
        processFrame(lib, pid, 'attached', r.attached, notes.join('; '));
      },
      failed: (lib, reason, pid) => processFrame(lib, pid, 'failed', [], reason),
      detached: (lib, why, pid) => processFrame(lib, pid, 'detached', [], why),
      note: (_lib, message) => log(message),
    });
    discovery.start();
    return capture.attachedLibraries.length;
  };
  const detachAll = (why: string): void => {
    void discovery?.stop();
    discovery = undefined;
    for (const lib of capture.attachedLibraries) {
      const kind = capture.kindOf(lib) ?? 'openssl';
      capture.detachLibrary(lib);
      send({ type: 'process', pid: -1, library: lib, kind, state: 'detached', functions: [], reason: why, ts_ns: nowNs() });
    }
  };

  if (attachAll() === 0) {
    const why = attachRefused(refused, false);
    if (why) error('attach_failed', why.cause, why.fix, true);
    else error('attach_failed', 'no OpenSSL library could be probed (see the process frames)', 'install OpenSSL (libssl3), or name the library with --library PATH', true);
    await discovery?.stop();
    return finish('fatal_error', await capture.stop(), 1);
  }

  const builder = new FrameBuilder(capture.wallOffsetNs, send);
  capture.start((records) => {
    for (const r of records) {
      discovery?.onRecord(r);
      builder.push(r);
    }
  });
  log(`capturing TLS plaintext; frames on stdout (protocol ${PROTOCOL_VERSION})`);

  // Loss: report what grew since the last report, per source.
  const losses = new LossReporter(writer, send);
  const reportLoss = (k: KernelCounters): void => losses.report(k);
  const sendStats = (): void => {
    const k = capture.counters();
    reportLoss(k);
    send({ type: 'stats', ts_ns: nowNs(), kernel: wireCounters(k), writer: writer.snapshot(), libraries: capture.attachedLibraries.length, connections: builder.openConnections, config: { ...state } });
  };
  let statsTimer = setInterval(sendStats, state.stats_interval_ms);
  const lossTimer = setInterval(() => reportLoss(capture.counters()), 1000);

  const applyConfig = (c: ConfigFrame): void => {
    const unknown = (c.libraries ?? []).filter((l) => !(SUPPORTED_LIBRARIES as readonly string[]).includes(l));
    if (unknown.length) {
      error('unknown_library', `config asks for libraries this helper cannot hook: ${unknown.join(', ')}`, `use only ${SUPPORTED_LIBRARIES.join(', ')} (hello.capabilities.libraries); nothing was changed`, false, 'config');
      return;
    }
    const next = { ...state };
    if (c.pids !== undefined) next.pids = c.pids;
    if (c.comms !== undefined) next.comms = c.comms;
    if (c.ports !== undefined) next.ports = c.ports;
    if (c.call_cap !== undefined) next.call_cap = c.call_cap;
    if (c.rate_cap !== undefined) next.rate_cap = c.rate_cap;
    if (c.libraries !== undefined) next.libraries = c.libraries;
    if (c.stats_interval_ms !== undefined) next.stats_interval_ms = c.stats_interval_ms;
    try {
      capture.configure({ pids: next.pids, comms: next.comms, ports: next.ports, callCap: next.call_cap, rateCap: next.rate_cap, execEvents: true });
    } catch (e) {
      try {
        capture.configure({ pids: state.pids, comms: state.comms, ports: state.ports, callCap: state.call_cap, rateCap: state.rate_cap, execEvents: true });
      } catch {
        // the previous settings were accepted before; if they fail now the next stats shows it
      }
      error('config_failed', `the capture refused the config: ${explain(e).cause}`, 'check the values against schemas/config.schema.json; the previous settings are kept', false, 'config');
      return;
    }
    const kinds = (l: string[]): string => [...new Set(l)].sort().join(',');
    if (kinds(next.libraries) !== kinds(state.libraries)) {
      // Another set of kinds: start over with the new set (discovery attaches only those).
      detachAll(`config asked for ${next.libraries.join(', ') || 'no library'}`);
      state.libraries = next.libraries;
      if (next.libraries.length) attachAll();
    }
    if (next.stats_interval_ms !== state.stats_interval_ms) {
      clearInterval(statsTimer);
      statsTimer = setInterval(sendStats, next.stats_interval_ms);
    }
    Object.assign(state, next);
    log(`config applied: ${JSON.stringify(state)}`);
  };

  return new Promise<number>((resolve) => {
    let stopping = false;
    const decoder = new FrameDecoder({ maxFrameBytes: MAX_CONTROL_FRAME_BYTES, validate: true });
    let partialTimer: NodeJS.Timeout | undefined;
    const parentPid = process.ppid;

    const stop = async (reason: StopReason): Promise<void> => {
      if (stopping) return;
      stopping = true;
      clearInterval(statsTimer);
      clearInterval(lossTimer);
      clearInterval(parentTimer);
      clearTimeout(partialTimer);
      input.off('data', onData);
      input.off('end', onEnd);
      // The signal handlers stay until the end: a second SIGTERM during the stop must not kill
      // the helper before its bye (stop() runs once).
      await discovery?.stop();
      const k = await capture.stop(); // detaches, then delivers what is left in the ring
      builder.closeAll('helper_exit');
      reportLoss(k);
      if (reason === 'stdout_closed') {
        log(`stdout closed (${writer.error?.message ?? 'the host went away'}): stopped`);
        resolve(1);
        return;
      }
      resolve(await finish(reason, k, 0));
    };

    const onFrame = (x: RawFrame | FrameError): void => {
      if (x instanceof FrameError) {
        error(x.code, `control frame: ${x.message}`, x.fix, false, x.frameType);
        return;
      }
      if (x.type === 'config') applyConfig(x as unknown as ConfigFrame);
      else if (x.type === 'shutdown') void stop('shutdown');
      else if ((['hello', 'segment', 'conn_open', 'conn_close', 'process', 'loss', 'stats', 'error', 'bye'] as string[]).includes(x.type)) {
        error('bad_frame', `a ${x.type} frame came on stdin; the helper reads only config and shutdown`, 'send helper frames nowhere: they flow from the helper to the host; it was ignored', false, x.type);
      }
      // any other type: unknown to this version, ignored (forward compatibility)
    };
    const onData = (chunk: Buffer): void => {
      clearTimeout(partialTimer);
      for (const x of decoder.push(chunk)) {
        if (stopping) return;
        onFrame(x);
      }
      if (decoder.pending > 0 && !stopping) {
        partialTimer = setTimeout(() => {
          const e = decoder.abandonPartial();
          if (e) onFrame(e);
        }, opts.partialFrameTimeoutMs ?? 2000);
      }
    };
    const onEnd = (): void => {
      const e = decoder.abandonPartial();
      if (e) onFrame(e);
      void stop('stdin_closed');
    };
    const onSignal = (): void => void stop('signal');
    input.on('data', onData);
    input.on('end', onEnd);
    input.on('error', onEnd);
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    const parentTimer = setInterval(() => {
      if (process.ppid !== parentPid) void stop('parent_exited');
      else if (writer.error) void stop('stdout_closed');
    }, opts.parentPollMs ?? 500);
    output.on('error', () => void stop('stdout_closed'));
  });
}
