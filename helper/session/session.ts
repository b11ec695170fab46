// session.ts: one capture session, whatever its front end. It owns, in this order, the
// capture (BPF object, ring buffer), discovery (which files get probes), the FrameBuilder (records
// to frames), the FrameWriter (frames to bytes) and the loss reporter, and stops them in
// the reverse order so that nothing in the ring is left behind: discovery, then the
// capture (detach, then drain), then every open connection is closed, loss is reported and
// bye is the last frame. The front ends only choose where frames go:
//   --ipc         frames encoded onto stdout (commands/ipc.ts), control frames from stdin;
//   standalone    frame objects to a renderer, encoded only into --record FILE (commands/standalone.ts).
import * as fs from 'fs';
import { Writable } from 'stream';
import { Discovery } from '../discovery/discovery';
import { TlsKind } from '../discovery/libraries';
import { attachRefused, BridgeError, explain, preflight, privilegeWarnings, UserError } from '../errors';
import { AttachResult, Capture, KernelCounters } from '../kernel/capture';
import { packageVersion } from '../package';
import { FrameBuilder } from '../protocol/frames';
import { ConfigFrame, ConfigState, HelperFrame, KernelCounters as WireKernelCounters, ProcessFrame } from '../protocol/generated';
import { helloFrame, SUPPORTED_LIBRARIES } from '../protocol/hello';
import { FrameWriter, RawFrame } from '../protocol/wire';
import { CaptureRecord } from '../records/records';

/** The writer's queue, as a fraction of its bound, above which the kernel sheds (Session.checkWriter)... */
const WRITER_SHED_HIGH = 1 / 4;
/** ...and below which it stops. */
const WRITER_SHED_LOW = 1 / 16;

export type StopReason = 'shutdown' | 'signal' | 'stdin_closed' | 'parent_exited' | 'fatal_error' | 'stdout_closed';
export type ByeReason = Exclude<StopReason, 'stdout_closed'>;

export interface SessionOptions {
  pids: number[];
  comms: string[];
  /** Only connections with one of these local or remote ports. */
  ports: number[];
  callCap: number;
  /** Bytes per second per process captured at most (0: no limit). */
  rateCap: number;
  ringBytes?: number;
  /** Load shedding (--shed-head, --shed-fill; helper/kernel/capture.ts CaptureOptions). */
  shedHead?: number;
  shedFill?: number;
  /**
   * Plant probes only in the processes of `pids` and `comms`: others pay nothing, but a new
   * process is covered only once its probes are in (docs/architecture.md). The targets are
   * fixed for the session: a config that changes pids or comms is refused.
   */
  targeted: boolean;
  /** The probe floor: the same probes doing nothing, for benchmarks. */
  floor: boolean;
  /** /proc rescan interval in ms (0: never). */
  pollMs: number;
  /** Extra library files to attach to (--library). */
  libraries: string[];
  /** A stats frame this often (0: none). */
  statsIntervalMs: number;
  /** A loss frame, when something was lost, this often (0: only at the end). */
  lossIntervalMs: number;
  log: (line: string) => void;
}

/** Where the session's frames go. */
export interface FrameOut {
  /** Encodes frames (stdout, a recording, or a stream that keeps nothing). */
  writer: FrameWriter;
  /** False: frames only go to `onFrame`, nothing is encoded (standalone without --record/--validate). */
  encode: boolean;
  /**
   * Every frame as an object (the standalone renderers). With it, records are decoded and built
   * into frame objects; without it, segments are encoded straight from the ring's batches.
   */
  onFrame?: (f: RawFrame) => void;
  /** Also written after the writer has flushed, then closed (--record beside --ipc). */
  recording?: fs.WriteStream;
}

/** An error the session reports: as an error frame and a log line. */
export interface SessionError {
  code: string;
  message: string;
  fix: string;
}

const nowNs = (): bigint => BigInt(Date.now()) * 1_000_000n;

export function helperVersion(): string {
  return packageVersion();
}

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
    bytes_shed: k?.bytesShed ?? 0,
  };
}

/** Opens a file for a frame recording: created or truncated, mode 0600 even if it existed. */
export function openRecording(file: string): fs.WriteStream {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
  } catch (e) {
    throw new UserError(`cannot create the recording ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 'name a file in a directory you can write to');
  }
  fs.fchmodSync(fd, 0o600);
  return fs.createWriteStream('', { fd });
}

/** A stream that keeps nothing: the writer of a session whose frames are only rendered. */
export const nowhere = (): Writable => new Writable({ write: (_c, _e, cb) => cb() });

/** How a library was probed, in the words of process frames and log lines. */
export function attachNotes(r: AttachResult): string {
  const notes = [r.plan.kind === 'internal' ? 'internal functions' : r.plan.kind === 'go' ? `Go crypto/tls, ${r.plan.reason}` : r.plan.kind === 'rustls' ? `rustls, ${r.plan.reason}` : `exported functions: ${r.plan.reason}`];
  if (r.failed.length) notes.push(`could not probe ${r.failed.map((f) => `${f.func}: ${f.reason}`).join('; ')}`);
  return notes.join('; ');
}

/** Sends a loss frame per source for what was lost since the previous report of that source. */
class LossReporter {
  private readonly reported = { ring_buffer: [0, 0], memory_fault: [0, 0], events: [0, 0], calls_missed: [0, 0], writer_queue: [0, 0], shed: [0, 0] };

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
      shed: [k.bytesShed, 0], // not lost: cut to their heads under load; records 0
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

export class Session {
  /** What the session captures now (stats.config; config frames change it). */
  readonly state: Required<ConfigState>;
  private capture?: Capture;
  private discovery?: Discovery;
  private builder?: FrameBuilder;
  private readonly losses: LossReporter;
  private readonly refused: string[] = [];
  private statsTimer?: NodeJS.Timeout;
  private lossTimer?: NodeJS.Timeout;
  private stopped?: Promise<KernelCounters | undefined>;
  /** Why the kernel sheds whatever the ring's fill: the front end's renderer ('output'), the host ('writer'). */
  private readonly shedWhy = new Set<'output' | 'writer'>();
  /** Whether the log has said once that the host reads slower than the calls move bytes. */
  private saidSlowHost = false;

  constructor(
    private readonly opts: SessionOptions,
    private readonly out: FrameOut,
  ) {
    this.state = {
      pids: opts.pids,
      comms: opts.comms,
      ports: opts.ports,
      call_cap: opts.callCap,
      rate_cap: opts.rateCap,
      libraries: [...SUPPORTED_LIBRARIES],
      stats_interval_ms: opts.statsIntervalMs,
    };
    this.losses = new LossReporter(out.writer, this.send);
    this.send(helloFrame({ helperVersion: helperVersion(), pid: process.pid, maxQueueBytes: out.writer.maxQueueBytes, tsNs: nowNs() }));
  }

  /** Sends one frame: to the renderer (if any) and, when encoding, to the writer. */
  readonly send = (f: HelperFrame): boolean => {
    this.out.onFrame?.(f as unknown as RawFrame);
    return this.out.encode ? this.out.writer.write(f as unknown as RawFrame) : true;
  };

  /** An error frame (fatal or not) and the same words in the log. */
  error(e: SessionError, fatal: boolean, frameType?: string): void {
    this.opts.log(`${fatal ? 'error' : 'warning'}: ${e.message} (fix: ${e.fix})`);
    this.send({ type: 'error', code: e.code, message: e.message, fix: e.fix, fatal, ...(frameType !== undefined ? { frame_type: frameType } : {}) });
  }

  /** Loads the BPF object after the checks that need no kernel; throws what explain() reads. */
  open(): void {
    preflight();
    const { shedHead, shedFill } = this.opts;
    this.capture = new Capture({
      ...this.filter(),
      ...(this.opts.ringBytes ? { ringBytes: this.opts.ringBytes } : {}),
      ...(shedHead !== undefined ? { shedHead } : {}),
      ...(shedFill !== undefined ? { shedFill } : {}),
      floor: this.opts.floor,
    });
  }

  /** Unix time in ns of the capture's monotonic 0. */
  get wallOffsetNs(): bigint {
    return this.kernel().wallOffsetNs;
  }

  get attachedLibraries(): number {
    return this.capture?.attachedLibraries.length ?? 0;
  }

  get openConnections(): number {
    return this.builder?.openConnections ?? 0;
  }

  counters(): KernelCounters {
    return this.kernel().counters();
  }

  /**
   * Sheds bodies in the kernel whatever the ring's fill (true) or only above --shed-fill
   * (false), for the front end's renderer (commands/standalone.ts): Capture.shedNow. The
   * session's own reason (the writer's queue, below) counts as well: the kernel sheds while
   * either holds.
   */
  shedNow(always: boolean): void {
    this.shedFor('output', always);
  }

  /** Bytes waiting in the ring buffer now (0 before start and after stop). */
  ringPending(): number {
    return this.capture?.ringPending() ?? 0;
  }

  private shedFor(why: 'output' | 'writer', on: boolean): void {
    if (on) this.shedWhy.add(why);
    else this.shedWhy.delete(why);
    this.capture?.shedNow(this.shedWhy.size > 0);
  }

  /**
   * A host that reads frames slower than the traced calls move bytes (apidump busy, a slow
   * pipe) fills the writer's queue while the ring stays nearly empty, since the helper drains
   * the ring into the queue: the kernel, seeing no fill, would not shed, and the queue, once
   * full, drops whole segments, heads with bodies (issue #15: 49 % of the exchanges of a
   * 256 KiB load reached the Go host). So the queue's own fill has the kernel shed too, above
   * a quarter of its bound, until it is back under a sixteenth: calls are cut to their heads
   * before anything must be dropped.
   */
  private checkWriter(): void {
    const w = this.out.writer;
    const q = w.queuedBytes;
    const behind = this.shedWhy.has('writer') ? q >= w.maxQueueBytes * WRITER_SHED_LOW : q > w.maxQueueBytes * WRITER_SHED_HIGH;
    if (behind === this.shedWhy.has('writer')) return;
    if (behind && !this.saidSlowHost) {
      this.saidSlowHost = true;
      this.opts.log(`the host reads frames slower than the traced programs move bytes: bodies are shed (each call's head kept, --shed-head) while more than ${Math.round((w.maxQueueBytes * WRITER_SHED_HIGH) / 2 ** 20)} MiB wait for it; the bytes are counted in kernel.bytes_shed`);
    }
    this.shedFor('writer', behind);
  }

  /**
   * Starts discovery: probes on every TLS file found now, and on those that appear later. With
   * no file probed (and not targeted, where targets may come later) throws a UserError saying
   * why: the kernel refusing, or no library.
   */
  attach(): void {
    for (const w of privilegeWarnings()) this.opts.log(`warning: ${w}`);
    this.startDiscovery();
    if (!this.opts.targeted && this.attachedLibraries === 0) {
      throw (
        attachRefused(this.refused, false) ??
        new UserError('no TLS library (libssl.so*, libgnutls.so*, an executable with OpenSSL or Go crypto/tls inside) could be found and probed in the linker cache or in any running process', 'install OpenSSL (apt-get install libssl3), see the lines above, or name the file with --library PATH')
      );
    }
    // Discovery's first pass is synchronous: every file found at start has had its process
    // frame. Records of calls from here on wait in the ring until start() drains it.
    this.send({ type: 'ready', ts_ns: nowNs(), libraries: this.attachedLibraries, failed: this.refused.length });
  }

  /**
   * Turns the data path on: records become frames from here on. `onFailed` runs if the data
   * path dies on its own (the ring thread failed): the error frame has gone out; stop next.
   */
  start(onFailed: () => void = () => {}): void {
    const capture = this.kernel();
    const onError = (e: BridgeError): void => {
      this.error({ code: 'ring_failed', message: `the thread that reads the ring buffer stopped (${e.op}: ${e.code}); nothing more can be captured`, fix: 'start the helper again; if it recurs, report this line' }, true);
      onFailed();
    };
    const builder = (this.builder = new FrameBuilder(capture.wallOffsetNs, this.send));
    const onRecord = (r: CaptureRecord): void => this.discovery?.onRecord(r);
    if (this.out.onFrame) {
      // Renderers take frame objects: decode every record and build its frame.
      capture.start((records) =>
        this.out.writer.batch(() => {
          for (const r of records) {
            if (r.kind !== 'data') onRecord(r);
            builder.push(r);
          }
        }),
        { onError },
      );
    } else {
      // Frames only as bytes: segments are encoded from the ring's batches without objects.
      capture.startRaw(
        (batch) => {
          builder.pushBatch(batch, this.out.writer, onRecord);
          this.checkWriter();
        },
        { onError },
      );
    }
    if (this.opts.lossIntervalMs > 0) this.lossTimer = setInterval(() => this.losses.report(capture.counters()), this.opts.lossIntervalMs);
    this.setStatsInterval(this.state.stats_interval_ms);
  }

  /** A stats frame now (and what was lost since the last report). */
  stats(): void {
    const capture = this.kernel();
    const k = capture.counters();
    this.losses.report(k);
    this.send({ type: 'stats', ts_ns: nowNs(), kernel: wireCounters(k), writer: this.out.writer.snapshot(), libraries: this.attachedLibraries, connections: this.openConnections, config: { ...this.state } });
  }

  /** Applies a config frame; on a refusal returns why and keeps the previous settings. */
  configure(c: ConfigFrame): SessionError | undefined {
    const capture = this.kernel();
    const state = this.state;
    const unknown = (c.libraries ?? []).filter((l) => !(SUPPORTED_LIBRARIES as readonly string[]).includes(l));
    if (unknown.length) {
      return { code: 'unknown_library', message: `config asks for libraries this helper cannot hook: ${unknown.join(', ')}`, fix: `use only ${SUPPORTED_LIBRARIES.join(', ')} (hello.capabilities.libraries); nothing was changed` };
    }
    const same = (a: unknown[] | undefined, b: unknown[]): boolean => a === undefined || JSON.stringify([...a].sort()) === JSON.stringify([...b].sort());
    if (this.opts.targeted && (!same(c.pids, state.pids) || !same(c.comms, state.comms))) {
      return { code: 'targeted', message: 'this helper plants probes only in the processes it was started with (--targeted): pids and comms cannot change', fix: 'start the helper again with the new --pid/--comm; nothing was changed' };
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
      capture.configure(this.filter(next));
    } catch (e) {
      try {
        capture.configure(this.filter(state));
      } catch {
        // the previous settings were accepted before; if they fail now the next stats shows it
      }
      return { code: 'config_failed', message: `the capture refused the config: ${explain(e).cause}`, fix: 'check the values against schemas/config.schema.json; the previous settings are kept' };
    }
    const kinds = (l: string[]): string => [...new Set(l)].sort().join(',');
    if (kinds(next.libraries) !== kinds(state.libraries)) {
      // Another set of kinds: start over with the new set (discovery attaches only those).
      this.detachAll(`config asked for ${next.libraries.join(', ') || 'no library'}`);
      state.libraries = next.libraries;
      if (next.libraries.length) this.startDiscovery();
    }
    if (next.stats_interval_ms !== state.stats_interval_ms) this.setStatsInterval(next.stats_interval_ms);
    Object.assign(state, next);
    this.opts.log(`config applied: ${JSON.stringify(state)}`);
    return undefined;
  }

  /**
   * Stops in order: discovery, the capture (detach, then deliver what is left in the ring),
   * every open connection, loss, then bye (not when stdout closed: nobody reads it) and the
   * writer's flush. Resolves with the final counters (undefined if the capture never opened).
   * Runs once; later calls get the same promise.
   */
  stop(reason: StopReason): Promise<KernelCounters | undefined> {
    this.stopped ??= (async () => {
      clearInterval(this.statsTimer);
      clearInterval(this.lossTimer);
      await this.discovery?.stop();
      this.discovery = undefined;
      const k = this.capture ? await this.capture.stop() : undefined;
      this.builder?.closeAll('helper_exit');
      if (k) this.losses.report(k);
      if (reason !== 'stdout_closed') {
        this.send({ type: 'bye', reason, ts_ns: nowNs(), kernel: wireCounters(k), writer: this.out.writer.snapshot() });
        await this.out.writer.flushed(5000);
      }
      if (this.out.recording) await new Promise<void>((resolve) => this.out.recording!.end(resolve));
      return k;
    })();
    return this.stopped;
  }

  private kernel(): Capture {
    if (!this.capture) throw new Error('the session has no capture: open() first');
    return this.capture;
  }

  private filter(s: Pick<Required<ConfigState>, 'pids' | 'comms' | 'ports' | 'call_cap' | 'rate_cap'> = this.state): Parameters<Capture['configure']>[0] {
    return { pids: s.pids, comms: s.comms, ports: s.ports, callCap: s.call_cap, rateCap: s.rate_cap, execEvents: true };
  }

  private setStatsInterval(ms: number): void {
    clearInterval(this.statsTimer);
    this.statsTimer = ms > 0 ? setInterval(() => this.stats(), ms) : undefined;
  }

  /** One process frame per attachment, failure and detachment, and a log line with the same words. */
  private processFrame(lib: { path: string; kind: string }, pid: number, state: ProcessFrame['state'], functions: string[], reason: string): void {
    const where = pid < 0 ? '' : ` in process ${pid}`;
    if (state === 'attached') this.opts.log(`attached to ${lib.path}${where}: ${functions.join(', ')} (${reason})`);
    else if (state === 'failed') this.opts.log(`could not attach to ${lib.path}${where}: ${reason}`);
    else if (state === 'unsupported') this.opts.log(`process ${pid} runs ${lib.path}: ${reason}`);
    else this.opts.log(`detached from ${lib.path}${where}: ${reason}`);
    this.send({ type: 'process', pid, library: lib.path, kind: lib.kind, state, functions, reason, ts_ns: nowNs() });
  }

  private startDiscovery(): void {
    const capture = this.kernel();
    const targets = this.opts.targeted ? { targets: { pids: this.state.pids, comms: this.state.comms } } : {};
    this.discovery = new Discovery(capture, { extra: this.opts.libraries, pollMs: this.opts.pollMs, kinds: this.state.libraries as TlsKind[], ...targets }, {
      attached: (lib, r, pid) => this.processFrame(lib, pid, 'attached', r.attached, attachNotes(r)),
      failed: (lib, reason, pid) => {
        this.refused.push(reason);
        this.processFrame(lib, pid, 'failed', [], attachRefused([reason], pid >= 0)?.cause ?? reason);
      },
      detached: (lib, why, pid) => this.processFrame(lib, pid, 'detached', [], why),
      note: (_lib, message) => this.opts.log(message),
      unsupported: (exe, reason, pid) => this.processFrame({ path: exe.path, kind: 'unknown' }, pid, 'unsupported', [], reason),
    });
    this.discovery.start();
  }

  private detachAll(why: string): void {
    const capture = this.kernel();
    void this.discovery?.stop();
    this.discovery = undefined;
    for (const lib of capture.attachedLibraries) {
      const kind = capture.kindOf(lib) ?? 'openssl';
      capture.detachLibrary(lib);
      this.processFrame({ path: lib, kind }, -1, 'detached', [], why);
    }
  }
}
