#!/usr/bin/env node
// cli.ts: the `https-capture` command. With no arguments it attaches to every TLS library on
// the system, for all processes, and prints the HTTP requests and responses (or, with
// --format, JSON Lines, HAR, pcapng or every call) until Ctrl-C; `replay FILE` renders a
// recording the same way.
import { Command, InvalidArgumentError } from 'commander';
import * as fs from 'fs';
import { Discovery } from './discovery/discovery';
import { Capture, DEFAULT_CALL_CAP, DEFAULT_RING_BYTES, KernelCounters, RATE_CAP_MAX } from './kernel/capture';
import { attachRefused, explain, preflight, privilegeWarnings, UserError } from './errors';
import { BINARY_FORMATS, createRenderer, Format, FORMATS, isFormat } from './formats';
import { Sink } from './formats/output';
import { ByeReason, helperVersion, runIpc, StandaloneFrames } from './commands/ipc';
import { CALL_CAP_MAX } from './records/records';
import { replayCommand } from './commands/replay';

interface Options {
  pid: number[];
  comm: string[];
  port: number[];
  duration?: number;
  output?: string;
  callCap: number;
  rateCap: number;
  ringSize: number;
  library: string[];
  printLimit: number;
  format: string;
  redact: boolean;
  color?: boolean;
  ipc?: boolean;
  validate?: boolean;
  record?: string;
  maxQueueBytes: number;
  pollInterval: number;
  targeted?: boolean;
  probeFloor?: boolean;
}

function intArg(name: string, min: number, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}`);
    return n;
  };
}

function listOf<T>(parse: (v: string) => T) {
  return (v: string, prev: T[] = []): T[] => [...prev, ...v.split(',').filter(Boolean).map(parse)];
}

function program(): Command {
  return new Command('https-capture')
    .description('Prints the HTTP requests and responses (and any other plaintext) of TLS connections of processes on this machine, captured with eBPF uprobes on their TLS libraries (OpenSSL, GnuTLS, Go).')
    .option('-p, --pid <pids>', 'only these processes (comma-separated, repeatable)', listOf(intArg('--pid', 1, 2 ** 31 - 1)), [])
    .option('-c, --comm <names>', 'only processes with these names (comma-separated, repeatable)', listOf(String), [])
    .option('-P, --port <ports>', 'only connections with one of these local or remote ports (comma-separated, repeatable)', listOf(intArg('--port', 1, 65535)), [])
    .option('-d, --duration <seconds>', 'stop after this many seconds', intArg('--duration', 1, 365 * 86400))
    .option('-f, --format <format>', `what to print: ${FORMATS.join(', ')} (docs/formats.md)`, 'text')
    .option('-o, --output <file>', 'write the capture to this file (mode 0600) instead of stdout')
    .option('--no-redact', 'show the values of Authorization, Proxy-Authorization, Cookie and Set-Cookie (masked by default)')
    .option('--call-cap <bytes>', 'most bytes captured of one TLS call; the rest is counted', intArg('--call-cap', 0, CALL_CAP_MAX), DEFAULT_CALL_CAP)
    .option('--rate-cap <bytes>', 'most bytes captured per second per process (0: no limit); the rest is counted', intArg('--rate-cap', 0, RATE_CAP_MAX), 0)
    .option('--ring-size <bytes>', 'ring buffer size, a power of two', intArg('--ring-size', 4096, 1 << 30), DEFAULT_RING_BYTES)
    .option('-l, --library <path>', 'also attach to this OpenSSL library or executable (repeatable)', listOf(String), [])
    .option(
      '--targeted',
      'plant probes only in the processes named by --pid/--comm (others pay nothing); a new process that finishes within ~20-200 ms of starting may be missed',
    )
    .option('--probe-floor', 'benchmarks: attach the same probes with programs that do nothing (what the probes alone cost); captures nothing')
    .option('--poll-interval <ms>', 'rescan /proc for new TLS libraries this often (0: never; new files are also seen as they are opened)', intArg('--poll-interval', 0, 3600000), 2000)
    .option('--print-limit <bytes>', 'most bytes of each body or call to print (0: all; default 4096 for text and raw, all for jsonl and har)', intArg('--print-limit', 0, CALL_CAP_MAX), 4096)
    .option('--no-color', 'no colors, even on a terminal')
    .option('--ipc', 'plugin mode for apidump: length-prefixed msgpack frames on stdout, control frames on stdin (docs/protocol.md)')
    .option('--validate', 'with --ipc: check every frame against schemas/ before writing it')
    .option('--record <file>', 'save the exact frame stream (docs/protocol.md) to this file (mode 0600), for https-capture replay; with --ipc the same frames also go to stdout')
    .option(
      '--max-queue-bytes <bytes>',
      'with --ipc: most bytes queued for a host that does not read; segments beyond it are dropped and reported',
      intArg('--max-queue-bytes', 1 << 16, 1 << 30),
      64 << 20,
    )
    .addHelpText(
      'after',
      '\nRuns as root (or with CAP_SYS_ADMIN and CAP_SYS_PTRACE: docs/security.md). Ctrl-C (SIGINT) or SIGTERM detaches every probe and exits 0.\n' +
        `https-capture replay FILE [--format ${[...FORMATS, 'frames'].join('|')}] plays back a recording made with --record FILE.\n` +
        'Example: sudo https-capture --comm curl   (then run curl https://... in another shell)',
    );
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

/** Where the output goes: stdout, or a file created with mode 0600 (plaintext holds secrets). */
function openOutput(file: string | undefined): Sink & { close(): Promise<void> } {
  if (!file) {
    // A reader that went away (| head) ends the output, not the capture's clean stop.
    process.stdout.on('error', () => undefined);
    return { write: (s) => void process.stdout.write(s), close: () => Promise.resolve() };
  }
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
  } catch (e) {
    throw new UserError(`cannot create the output file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 'name a file in a directory you can write to');
  }
  // Private even if it existed before with other permissions.
  fs.fchmodSync(fd, 0o600);
  const stream = fs.createWriteStream('', { fd });
  return {
    write: (s) => void stream.write(s),
    close: () => new Promise((resolve) => stream.end(resolve)),
  };
}

/** The format named by --format, checked; binary formats never go to a terminal. */
function checkFormat(format: string, output: string | undefined, extra: string[] = []): Format {
  if (!isFormat(format)) throw new UserError(`unknown format "${format}"`, `use --format ${[...FORMATS, ...extra].join(', ')}`, 2);
  if ((BINARY_FORMATS as readonly string[]).includes(format) && !output && process.stdout.isTTY) {
    throw new UserError(`${format} is binary and stdout is a terminal`, `write it to a file with --output capture.${format}, or pipe it (| tshark -r -)`, 2);
  }
  return format;
}

function summary(k: KernelCounters): string {
  const lost = k.bytesLost + k.bytesFaulted;
  return (
    `${k.calls} calls, ${k.bytesMoved} bytes moved, ${k.bytesCaptured} captured, ` +
    `${k.bytesTruncated} past the per-call cap, ${lost} lost (${k.recordsLost} records: ring buffer full; ${k.readFaults}: memory unreadable)` +
    (k.callsMissed ? `, ${k.callsMissed} calls missed (bytes unknown: docs/protocol.md, calls_missed)` : '')
  );
}

function replayProgram(): Command {
  return new Command('https-capture replay')
    .description('Plays back a frame recording (made with --record FILE, with or without --ipc) without root or a kernel.')
    .argument('<file>', 'the recording')
    .option('-f, --format <format>', `${FORMATS.join(', ')} (docs/formats.md), or frames (one JSON object per frame)`, 'text')
    .option('-o, --output <file>', 'write to this file (mode 0600) instead of stdout')
    .option('--no-redact', 'show the values of Authorization, Proxy-Authorization, Cookie and Set-Cookie')
    .option('--print-limit <bytes>', 'most bytes of each body or call to print (0: all; default 4096 for text and raw, all for jsonl and har)', intArg('--print-limit', 0, CALL_CAP_MAX), 4096)
    .option('--no-color', 'no colors, even on a terminal');
}

/** --print-limit applies to jsonl and har only when given: by default they keep whole bodies. */
function printLimit(cmd: Command, format: string): number {
  const given = cmd.getOptionValueSource('printLimit') !== 'default';
  return given || format === 'text' || format === 'raw' ? cmd.opts<{ printLimit: number }>().printLimit : 0;
}

async function main(argv: string[]): Promise<number> {
  if (argv[2] === 'replay') {
    const cmd = replayProgram().parse(argv.slice(3), { from: 'user' });
    const o = cmd.opts<{ format: string; output?: string; redact: boolean; color?: boolean }>();
    const format = o.format === 'frames' ? 'frames' : checkFormat(o.format, o.output, ['frames']);
    const out = openOutput(o.output);
    try {
      return await replayCommand(cmd.args[0]!, format, out, {
        redact: o.redact !== false,
        color: o.color !== false && !o.output && process.stdout.isTTY === true,
        printLimit: printLimit(cmd, format),
        version: helperVersion(),
      });
    } finally {
      await out.close();
    }
  }
  const cli = program().parse(argv);
  const opts = cli.opts<Options>();
  if (opts.targeted && !opts.pid.length && !opts.comm.length) throw new UserError('--targeted needs --pid or --comm', 'name the processes to plant probes in', 2);
  if (opts.ipc) {
    for (const o of ['format', 'output', 'redact', 'printLimit']) {
      if (cli.getOptionValueSource(o) === 'cli') {
        throw new UserError(`--${o.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`).replace('redact', 'no-redact')} is for people and --ipc writes frames for a host`, 'drop it, or record with --record FILE and render it with https-capture replay FILE --format F', 2);
      }
    }
    // runIpc checks privileges itself and reports every failure as error and bye frames.
    return runIpc({
      pids: opts.pid,
      comms: opts.comm,
      ports: opts.port,
      callCap: opts.callCap,
      rateCap: opts.rateCap,
      ringBytes: opts.ringSize,
      libraries: opts.library,
      validate: opts.validate === true,
      ...(opts.record ? { record: opts.record } : {}),
      maxQueueBytes: opts.maxQueueBytes,
      pollMs: opts.pollInterval,
      floor: opts.probeFloor === true,
      targeted: opts.targeted === true,
    });
  }
  const format = checkFormat(opts.format, opts.output);
  preflight();
  // Before the capture is loaded: a file that cannot be created is a plain error.
  const out = openOutput(opts.output);
  // Per-process probes: for --pid (processes that exist), or when asked. New processes found
  // by name get theirs only after they start, so --comm alone uses system-wide probes and the
  // name filter in BPF, which sees a process's first call however short it lives.
  const targeted = opts.targeted === true || (opts.pid.length > 0 && opts.comm.length === 0);
  const capture = new Capture({ pids: opts.pid, comms: opts.comm, ports: opts.port, callCap: opts.callCap, rateCap: opts.rateCap, ringBytes: opts.ringSize, execEvents: true, floor: opts.probeFloor === true });
  const log = (s: string): void => void process.stderr.write(`https-capture: ${s}\n`);
  const where = (pid: number): string => (pid < 0 ? '' : ` in process ${pid}`);
  // The frames --ipc would write, built by the same code: rendered for people in the chosen
  // format (the same path as replay) and, with --record, saved.
  const status = new StatusLine(process.stderr.isTTY === true);
  // The status line (stderr, a terminal) is cleared before each write to the same terminal.
  const screen: Sink = opts.output ? out : { write: (s) => (status.clear(), out.write(s)) };
  const renderer = createRenderer(format, screen, {
    redact: opts.redact !== false,
    color: opts.color !== false && !opts.output && process.stdout.isTTY === true,
    printLimit: printLimit(cli, format),
    version: helperVersion(),
  });
  let recording: StandaloneFrames;
  const onFrame = (f: Parameters<typeof renderer.push>[0]): void => renderer.push(f);
  try {
    recording = new StandaloneFrames(opts.record, capture.wallOffsetNs, { validate: opts.validate === true, maxQueueBytes: opts.maxQueueBytes, onFrame });
  } catch (e) {
    await capture.stop();
    throw new UserError(`cannot create the recording ${opts.record}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 'name a file in a directory you can write to');
  }
  for (const w of privilegeWarnings()) log(`warning: ${w}`);
  const refused: string[] = [];
  const discovery = new Discovery(
    capture,
    { extra: opts.library, pollMs: opts.pollInterval, ...(targeted ? { targets: { pids: opts.pid, comms: opts.comm } } : {}) },
    {
      attached: (lib, r, pid) => {
        const missing = r.failed.length ? ` (could not probe: ${r.failed.map((f) => f.func).join(', ')})` : '';
        const how = r.plan.kind === 'internal' ? '' : r.plan.kind === 'go' ? ` (Go crypto/tls: ${r.plan.reason})` : ` (exported functions: ${r.plan.reason})`;
        log(`attached to ${lib.path}${where(pid)}: ${r.attached.join(', ')}${how}${missing}`);
        recording.process({ pid, library: lib.path, state: 'attached', functions: r.attached, reason: `${how}${missing}`.trim() });
      },
      failed: (lib, reason, pid) => {
        refused.push(reason);
        log(`could not attach to ${lib.path}${where(pid)}: ${attachRefused([reason], pid >= 0)?.cause ?? reason}`);
        recording.process({ pid, library: lib.path, state: 'failed', functions: [], reason });
      },
      detached: (lib, why, pid) => {
        log(`detached from ${lib.path}${where(pid)}: ${why}`);
        recording.process({ pid, library: lib.path, state: 'detached', functions: [], reason: why });
      },
      note: (_lib, message) => log(message),
    },
  );
  try {
    discovery.start();
    if (!targeted && capture.attachedLibraries.length === 0) {
      throw attachRefused(refused, false) ?? new UserError(
        'no OpenSSL library (libssl.so*) could be found and probed in the linker cache or in any running process',
        'install OpenSSL (apt-get install libssl3), see the lines above, or name the file with --library PATH',
      );
    }
  } catch (e) {
    await discovery.stop();
    await recording.close('fatal_error', await capture.stop());
    renderer.end();
    await out.close();
    throw e;
  }

  capture.start((records) =>
    recording.pushAll(records, (r) => {
      if (r.kind !== 'data') discovery.onRecord(r);
    }),
  );
  const named = [...opts.pid, ...opts.comm].join(', ');
  const who = targeted ? `processes ${named} (probes only in them)` : named ? `processes ${named} (filtered in the kernel)` : 'all processes';
  log(`capturing TLS plaintext of ${who}${opts.output ? ` into ${opts.output}` : ''} as ${format}${opts.redact === false ? ' (not redacted)' : ''}${opts.record ? `, frames into ${opts.record}` : ''}; Ctrl-C to stop`);

  const ticker = setInterval(() => {
    const k = capture.counters();
    status.draw(`https-capture: ${capture.attachedLibraries.length} libraries, ${k.calls} calls, ${k.bytesCaptured} bytes, ${k.bytesLost + k.bytesFaulted} lost`);
  }, 1000);

  const stopReason = await new Promise<ByeReason>((resolve) => {
    const done = (): void => resolve('signal');
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
    process.once('SIGHUP', done);
    if (opts.duration) setTimeout(() => resolve('shutdown'), opts.duration * 1000).unref();
  });
  clearInterval(ticker);
  status.clear();
  await discovery.stop();
  const final = await capture.stop();
  await recording.close(stopReason, final);
  renderer.end(); // HAR is written whole here
  await out.close();
  log(`stopped: ${summary(final)}`);
  return 0;
}

main(process.argv).then(
  (code) => process.exit(code),
  (e) => {
    const u = explain(e);
    process.stderr.write(`https-capture: error: ${u.cause}\n  fix: ${u.fix}\n`);
    if (process.env.HTTPS_CAPTURE_DEBUG) process.stderr.write(`${(e as Error)?.stack ?? e}\n`);
    process.exit(u.exitCode);
  },
);
