// ipc.ts: the `--ipc` mode, the helper's face to apidump (docs/protocol.md): frames on stdout
// (hello first, bye last), control frames on stdin, logs on stderr. Builds segment frames from
// capture records, keeps the connection table for conn_open/conn_close, reports loss and stats,
// and stops cleanly on shutdown, a signal, stdin closing or the parent's death.
import * as fs from 'fs';
import { packageVersion } from '../package';
import { Readable, Writable } from 'stream';
import { Capture, DEFAULT_CALL_CAP, KernelCounters } from '../kernel/capture';
import { attachRefused, explain, preflight, privilegeWarnings } from '../errors';
import { ConfigFrame, ConfigState, ErrorFrame, HelperFrame, KernelCounters as WireKernelCounters } from '../protocol/generated';
import { Discovery } from '../discovery/discovery';
import { LibraryFile, TlsKind } from '../discovery/libraries';
import { FrameBuilder } from '../protocol/frames';
import { CaptureRecord } from '../records/records';
import { DEFAULT_MAX_QUEUE_BYTES, FrameDecoder, FrameError, FrameWriter, MAX_CONTROL_FRAME_BYTES, MAX_DATA_BYTES, MAX_FRAME_BYTES, RawFrame } from '../protocol/wire';

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
  /**
   * Plant probes only in the processes of `pids` and `comms` (--targeted): others pay nothing,
   * but a new process is covered only once its probes are in (docs/architecture.md). The
   * targets are fixed for the run: a config frame that changes pids or comms is refused.
   */
  targeted?: boolean;
  /** The probe floor (--probe-floor): the same probes doing nothing, for benchmarks. */
  floor?: boolean;
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

export function helperVersion(): string {
  return packageVersion();
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
    discovery_events_lost: k?.discoveryEventsLost ?? 0,
    calls_missed: k?.callsMissed ?? 0,
  };
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
  private readonly reported = { ring_buffer: [0, 0], memory_fault: [0, 0], events: [0, 0], calls_missed: [0, 0], writer_queue: [0, 0] };

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
      calls_missed: [0, k.callsMissed], // their bytes are unknown: records only
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
 * The frame stream of the standalone command (without --ipc): the frames --ipc would write
 * (hello, process, conn_open, segment, conn_close, loss, bye), built by the same FrameBuilder
 * and FrameWriter. Every frame goes to `onFrame` (the human outputs render them) and, with
 * `--record FILE`, into FILE (mode 0600) for `https-capture replay`. Without a recording (nor
 * --validate) no frame is encoded: the renderers take the objects.
 */
export class StandaloneFrames {
  private readonly file?: fs.WriteStream;
  private readonly writer: FrameWriter;
  private readonly builder: FrameBuilder;
  private readonly losses: LossReporter;
  private closed = false;

  constructor(
    readonly path: string | undefined,
    wallOffsetNs: bigint,
    opts: { validate?: boolean; maxQueueBytes?: number; onFrame?: (f: RawFrame) => void } = {},
  ) {
    if (path) this.file = openRecording(path);
    // Without a recording, --validate still encodes and checks every frame, into a stream that
    // keeps nothing; otherwise the writer only answers for its (zero) counters.
    const encode = this.file !== undefined || opts.validate === true;
    const stream = this.file ?? new Writable({ write: (_c, _e, cb) => cb() });
    this.writer = new FrameWriter(stream, { maxQueueBytes: opts.maxQueueBytes ?? DEFAULT_MAX_QUEUE_BYTES, validate: opts.validate ?? false });
    this.send = (f: HelperFrame): boolean => {
      opts.onFrame?.(f as unknown as RawFrame);
      return encode ? this.writer.write(f as unknown as RawFrame) : true;
    };
    this.losses = new LossReporter(this.writer, this.send);
    this.send(helloFrame(this.writer.maxQueueBytes));
    this.builder = new FrameBuilder(wallOffsetNs, this.send);
  }

  private readonly send: (f: HelperFrame) => boolean;

  /** One ring-buffer batch of records: one write into the recording for all of it. */
  pushAll(records: readonly CaptureRecord[], each?: (r: CaptureRecord) => void): void {
    this.writer.batch(() => {
      for (const r of records) {
        each?.(r);
        if (!this.closed) this.builder.push(r);
      }
    });
  }

  process(e: ProcessEvent): void {
    if (!this.closed) this.send({ type: 'process', kind: 'openssl', ts_ns: nowNs(), ...e });
  }

  /** Closes every connection still open, reports loss, writes bye and closes the file. */
  async close(reason: ByeReason, k: KernelCounters | undefined): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.builder.closeAll('helper_exit');
    if (k) this.losses.report(k);
    this.send({ type: 'bye', reason, ts_ns: nowNs(), kernel: wireCounters(k), writer: this.writer.snapshot() });
    await this.writer.flushed(5000);
    if (this.file) await new Promise<void>((resolve) => this.file!.end(resolve));
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
    capture = new Capture({ pids: state.pids, comms: state.comms, ports: state.ports, callCap: state.call_cap, rateCap: state.rate_cap, execEvents: true, floor: opts.floor === true, ...(opts.ringBytes ? { ringBytes: opts.ringBytes } : {}) });
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
    const targets = opts.targeted ? { targets: { pids: state.pids, comms: state.comms } } : {};
    discovery = new Discovery(capture, { extra: opts.libraries ?? [], pollMs: opts.pollMs ?? 2000, kinds: state.libraries as TlsKind[], ...targets }, {
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

  // Targeted: probes come as the targets are found, maybe later.
  if (attachAll() === 0 && !opts.targeted) {
    const why = attachRefused(refused, false);
    if (why) error('attach_failed', why.cause, why.fix, true);
    else error('attach_failed', 'no OpenSSL library could be probed (see the process frames)', 'install OpenSSL (libssl3), or name the library with --library PATH', true);
    await discovery?.stop();
    return finish('fatal_error', await capture.stop(), 1);
  }

  const builder = new FrameBuilder(capture.wallOffsetNs, send);
  const onRecord = (r: CaptureRecord): void => discovery?.onRecord(r);
  capture.startRaw((batch) => builder.pushBatch(batch, writer, onRecord));
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
    const same = (a: unknown[] | undefined, b: unknown[]): boolean => a === undefined || JSON.stringify([...a].sort()) === JSON.stringify([...b].sort());
    if (opts.targeted && (!same(c.pids, state.pids) || !same(c.comms, state.comms))) {
      error('targeted', 'this helper plants probes only in the processes it was started with (--targeted): pids and comms cannot change', 'start the helper again with the new --pid/--comm; nothing was changed', false, 'config');
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
