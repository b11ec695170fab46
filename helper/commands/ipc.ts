// ipc.ts: the `--ipc` mode, the helper's face to apidump (docs/protocol.md): frames on stdout
// (hello first, bye last), control frames on stdin, logs on stderr. The session
// (session/session.ts) does the capture; this file is the control loop around it: stdin's
// config and shutdown frames, signals, the parent's death and stdout closing.
import { Readable, Writable } from 'stream';
import { DEFAULT_CALL_CAP } from '../records/records';
import { explain } from '../errors';
import { ConfigFrame } from '../protocol/generated';
import { PROTOCOL_VERSION } from '../protocol/hello';
import { DEFAULT_MAX_QUEUE_BYTES, FrameDecoder, FrameError, FrameWriter, MAX_CONTROL_FRAME_BYTES, RawFrame } from '../protocol/wire';
import { openRecording, Session, StopReason } from '../session/session';

export interface IpcOptions {
  pids?: number[];
  comms?: string[];
  /** Only connections with one of these local or remote ports. */
  ports?: number[];
  callCap?: number;
  /** Bytes per second per process captured at most (--rate-cap; 0 no limit). */
  rateCap?: number;
  ringBytes?: number;
  /** Load shedding (--shed-head, --shed-fill; helper/kernel/capture.ts CaptureOptions). */
  shedHead?: number;
  shedFill?: number;
  /** Plant probes only in the processes of `pids` and `comms` (--targeted; session.ts). */
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

/** Frame types that flow from the helper to the host: never accepted on stdin. */
const HELPER_FRAMES = ['hello', 'segment', 'conn_open', 'conn_close', 'process', 'loss', 'stats', 'error', 'ready', 'bye'];

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
  const session = new Session(
    {
      pids: opts.pids ?? [],
      comms: opts.comms ?? [],
      ports: opts.ports ?? [],
      callCap: opts.callCap ?? DEFAULT_CALL_CAP,
      rateCap: opts.rateCap ?? 0,
      ...(opts.ringBytes ? { ringBytes: opts.ringBytes } : {}),
      ...(opts.shedHead !== undefined ? { shedHead: opts.shedHead } : {}),
      ...(opts.shedFill !== undefined ? { shedFill: opts.shedFill } : {}),
      targeted: opts.targeted === true,
      floor: opts.floor === true,
      pollMs: opts.pollMs ?? 2000,
      libraries: opts.libraries ?? [],
      statsIntervalMs: opts.statsIntervalMs ?? 5000,
      lossIntervalMs: 1000,
      log,
    },
    { writer, encode: true, ...(recording ? { recording } : {}) },
  );
  const finish = async (reason: StopReason, code: number): Promise<number> => {
    await session.stop(reason);
    log(reason === 'stdout_closed' ? `stdout closed (${writer.error?.message ?? 'the host went away'}): stopped` : `stopped (${reason})`);
    return code;
  };

  // Every failure to start is an error frame then bye: the host reads why from the stream.
  try {
    session.open();
  } catch (e) {
    const u = explain(e);
    session.error({ code: 'capture_failed', message: u.cause, fix: u.fix }, true);
    return finish('fatal_error', u.exitCode);
  }
  try {
    session.attach();
  } catch (e) {
    const u = explain(e);
    session.error({ code: 'attach_failed', message: u.cause, fix: u.fix }, true);
    return finish('fatal_error', 1);
  }
  // The data path dying on its own (the ring thread) stops the session like any fatal error.
  let failed = (): void => {};
  session.start(() => failed());
  log(`capturing TLS plaintext; frames on stdout (protocol ${PROTOCOL_VERSION})`);

  return new Promise<number>((resolve) => {
    let stopping = false;
    const decoder = new FrameDecoder({ maxFrameBytes: MAX_CONTROL_FRAME_BYTES, validate: true });
    let partialTimer: NodeJS.Timeout | undefined;
    const parentPid = process.ppid;

    const stop = (reason: StopReason): void => {
      if (stopping) return;
      stopping = true;
      clearInterval(parentTimer);
      clearTimeout(partialTimer);
      input.off('data', onData);
      input.off('end', onEnd);
      // The signal handlers stay until the end: a second SIGTERM during the stop must not kill
      // the helper before its bye (the session stops once).
      void finish(reason, reason === 'stdout_closed' || reason === 'fatal_error' ? 1 : 0).then(resolve);
    };

    const onFrame = (x: RawFrame | FrameError): void => {
      if (x instanceof FrameError) {
        session.error({ code: x.code, message: `control frame: ${x.message}`, fix: x.fix }, false, x.frameType);
        return;
      }
      if (x.type === 'config') {
        const refused = session.configure(x as unknown as ConfigFrame);
        if (refused) session.error(refused, false, 'config');
      } else if (x.type === 'shutdown') stop('shutdown');
      else if (HELPER_FRAMES.includes(x.type)) {
        session.error({ code: 'bad_frame', message: `a ${x.type} frame came on stdin; the helper reads only config and shutdown`, fix: 'send helper frames nowhere: they flow from the helper to the host; it was ignored' }, false, x.type);
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
      stop('stdin_closed');
    };
    const onSignal = (): void => stop('signal');
    failed = () => stop('fatal_error');
    input.on('data', onData);
    input.on('end', onEnd);
    input.on('error', onEnd);
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    const parentTimer = setInterval(() => {
      if (process.ppid !== parentPid) stop('parent_exited');
      else if (writer.error) stop('stdout_closed');
    }, opts.parentPollMs ?? 500);
    output.on('error', () => stop('stdout_closed'));
  });
}
