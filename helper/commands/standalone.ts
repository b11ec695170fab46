// standalone.ts: `https-capture` without --ipc, for a person: the session's frames rendered in
// the chosen format (the same renderers as replay), a status line on a terminal, and a summary
// of what was captured, cut and lost at the end. With --record the same frames are saved.
import * as fs from 'fs';
import { Writable } from 'stream';
import { createRenderer, Format } from '../formats';
import { Sink } from '../formats/output';
import { preflight } from '../errors';
import { KernelCounters } from '../kernel/capture';
import { BehindShed } from '../formats/shed';
import { DEFAULT_MAX_QUEUE_BYTES, FrameWriter } from '../protocol/wire';
import { DEFAULT_SHED_HEAD } from '../records/records';
import { ByeReason, helperVersion, nowhere, openRecording, Session } from '../session/session';
import { openOutput } from './output';

export interface StandaloneOptions {
  pids: number[];
  comms: string[];
  ports: number[];
  duration?: number;
  output?: string;
  format: Format;
  callCap: number;
  rateCap: number;
  ringBytes: number;
  shedHead?: number;
  shedFill?: number;
  libraries: string[];
  printLimit: number;
  redact: boolean;
  color: boolean;
  validate: boolean;
  record?: string;
  /** Created (0600) with the ready frame once capture is live, removed at exit. */
  readyFile?: string;
  maxQueueBytes?: number;
  pollMs: number;
  targeted: boolean;
  floor: boolean;
}

/** A one-line status on stderr when stderr is a terminal; cleared before stdout writes. */
class StatusLine {
  private shown = false;
  constructor(private readonly enabled: boolean) {}
  draw(text: string): void {
    if (!this.enabled) return;
    process.stderr.write(`\r\x1b[K${text}`);
    this.shown = true;
  }
  clear(): void {
    if (this.enabled && this.shown) process.stderr.write('\r\x1b[K');
    this.shown = false;
  }
}

/**
 * The output's queue (bytes written but not yet taken by the file or pipe) above which the
 * renderers get segments cut like shed calls, and below which they get whole ones again: what
 * bounds the standalone command's memory when the output cannot keep up (formats/shed.ts).
 */
export const OUTPUT_SHED_HIGH = 8 << 20;
export const OUTPUT_SHED_LOW = 2 << 20;
/**
 * Segments that reach the renderer this late (ms after their call) mean it is behind the ring
 * buffer: it sheds (and has the kernel shed) until they arrive within RENDER_LAG_LOW_MS again.
 * A record waits DRAIN_MS (4 ms) at most when the reader keeps up.
 */
export const RENDER_LAG_HIGH_MS = 100;
export const RENDER_LAG_LOW_MS = 25;
/**
 * ...but lateness sheds only while the ring holds this share of its size (1 MiB of the default
 * 32): a renderer that stalled for a moment with little waiting (attaching to a new process,
 * slower still under emulation) catches up without cutting bodies. Seen in a 6.1 TCG guest: a
 * lone curl's 5 KiB response shed because its segments arrived 100 ms late.
 */
export const RENDER_LAG_MIN_BACKLOG_SHARE = 1 / 32;

export function summary(k: KernelCounters, outputShed = 0): string {
  const lost = k.bytesLost + k.bytesFaulted;
  return (
    `${k.calls} calls, ${k.bytesMoved} bytes moved, ${k.bytesCaptured} captured, ` +
    `${k.bytesTruncated} past the per-call cap, ${k.bytesShed} shed under load (bodies cut to their heads)` +
    (outputShed ? `, ${outputShed} more shed because the renderer or its output fell behind` : '') +
    `, ${lost} lost (${k.recordsLost} records: ring buffer full; ${k.readFaults}: memory unreadable)` +
    (k.callsMissed ? `, ${k.callsMissed} calls missed (bytes unknown: docs/protocol.md, calls_missed)` : '')
  );
}

/** Captures until Ctrl-C, SIGTERM, SIGHUP or --duration; resolves with the exit code. Throws UserError. */
export async function runStandalone(o: StandaloneOptions): Promise<number> {
  const log = (s: string): void => void process.stderr.write(`https-capture: ${s}\n`);
  preflight(); // not built, no privileges, no BTF: said before any file is created
  // Before the capture is loaded: a file that cannot be created is a plain error.
  const out = openOutput(o.output);
  const recording = o.record ? openRecording(o.record) : undefined;
  const status = new StatusLine(process.stderr.isTTY === true);
  // The status line (stderr, a terminal) is cleared before each write to the same terminal.
  const screen: Sink = o.output ? out : { write: (s) => (status.clear(), out.write(s)) };
  const renderer = createRenderer(o.format, screen, { redact: o.redact, color: o.color, printLimit: o.printLimit, version: helperVersion() });
  // Without a recording, --validate still encodes and checks every frame, into a stream that
  // keeps nothing; otherwise the writer only answers for its (zero) counters.
  const stream: Writable = recording ?? nowhere();
  // A renderer or an output that falls behind sheds bodies the way the kernel does.
  // While it sheds, the kernel sheds too, whatever the ring's fill (Session.shedNow): parsing
  // and rendering cost more per byte than the kernel's copy, so a renderer that is behind must
  // get less before the ring fills with heads it will never reach (issue #15).
  let shedInKernel = (_on: boolean): void => {};
  let ringPending = (): number => 0;
  const shed = new BehindShed({
    pending: () => out.pending(),
    high: OUTPUT_SHED_HIGH,
    low: OUTPUT_SHED_LOW,
    head: o.shedHead ?? DEFAULT_SHED_HEAD,
    lagHighMs: o.shedFill !== undefined && o.shedFill >= 1 ? 0 : RENDER_LAG_HIGH_MS,
    lagLowMs: RENDER_LAG_LOW_MS,
    backlog: () => ringPending(),
    lagMinBacklog: Math.max(64 << 10, Math.floor(o.ringBytes * RENDER_LAG_MIN_BACKLOG_SHARE)),
    onChange: (on) => shedInKernel(on),
  });
  const writer = new FrameWriter(stream, { maxQueueBytes: o.maxQueueBytes ?? DEFAULT_MAX_QUEUE_BYTES, validate: o.validate });
  let ready: unknown;
  const session = new Session(
    {
      pids: o.pids,
      comms: o.comms,
      ports: o.ports,
      callCap: o.callCap,
      rateCap: o.rateCap,
      ringBytes: o.ringBytes,
      ...(o.shedHead !== undefined ? { shedHead: o.shedHead } : {}),
      ...(o.shedFill !== undefined ? { shedFill: o.shedFill } : {}),
      targeted: o.targeted,
      floor: o.floor,
      pollMs: o.pollMs,
      libraries: o.libraries,
      statsIntervalMs: 0,
      lossIntervalMs: 0,
      log,
    },
    {
      writer,
      encode: recording !== undefined || o.validate,
      onFrame: (f) => {
        if (f.type === 'ready') ready = f;
        renderer.push(shed.pass(f));
      },
      ...(recording ? { recording } : {}),
    },
  );
  shedInKernel = (on) => session.shedNow(on);
  ringPending = () => session.ringPending();
  const end = async (reason: ByeReason): Promise<KernelCounters | undefined> => {
    if (o.readyFile) fs.rmSync(o.readyFile, { force: true }); // not ready any more, first
    const k = await session.stop(reason);
    renderer.end(); // HAR is written whole here
    await out.close();
    if (writer.error) throw new Error(`could not write the recording ${o.record}: ${writer.error.message}`);
    return k;
  };
  try {
    session.open();
    session.attach();
  } catch (e) {
    await end('fatal_error');
    throw e;
  }
  let failed = (): void => {};
  session.start(() => failed());
  const named = [...o.pids, ...o.comms].join(', ');
  const who = o.targeted ? `processes ${named} (probes only in them)` : named ? `processes ${named} (filtered in the kernel)` : 'all processes';
  log(`capturing TLS plaintext of ${who}${o.output ? ` into ${o.output}` : ''} as ${o.format}${o.redact ? '' : ' (not redacted)'}${o.record ? `, frames into ${o.record}` : ''}; Ctrl-C to stop`);

  const ticker = setInterval(() => {
    const k = session.counters();
    status.draw(`https-capture: ${session.attachedLibraries} libraries, ${k.calls} calls, ${k.bytesCaptured} bytes, ${k.bytesShed + shed.bytesShed} shed, ${k.bytesLost + k.bytesFaulted} lost`);
  }, 1000);
  const reason = await new Promise<ByeReason>((resolve) => {
    const done = (): void => resolve('signal');
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
    process.once('SIGHUP', done);
    if (o.duration) setTimeout(() => resolve('shutdown'), o.duration * 1000).unref();
    failed = () => resolve('fatal_error'); // the error is on stderr already
    // A container's readiness check (deploy/kubernetes): the file exists while capture is
    // live, and only once SIGTERM is handled (a kubelet may stop the pod as soon as it is ready).
    if (o.readyFile) {
      try {
        fs.rmSync(o.readyFile, { force: true }); // a stale one, with its own mode
        fs.writeFileSync(o.readyFile, `${JSON.stringify(ready, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`, { mode: 0o600 });
      } catch (e) {
        log(`error: cannot write the ready file ${o.readyFile} (${(e as Error).message}): name a file in a writable directory with --ready-file`);
        resolve('fatal_error');
      }
    }
  });
  clearInterval(ticker);
  status.clear();
  const final = await end(reason);
  if (final) log(`stopped: ${summary(final, shed.bytesShed)}`);
  return reason === 'fatal_error' ? 1 : 0;
}
