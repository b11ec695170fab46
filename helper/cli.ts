#!/usr/bin/env -S node --max-semi-space-size=4 --heap-growing-percent=100
// cli.ts: the `https-capture` command. With no arguments it attaches to every TLS library on
// the system, for all processes, and prints the HTTP requests and responses (or, with
// --format, JSON Lines, HAR, pcapng or every call) until Ctrl-C; `replay FILE` renders a
// recording the same way.
import { Command, InvalidArgumentError } from 'commander';
// Only what every command needs is loaded here: the kernel side (addon, BPF object,
// discovery) is required by the command that uses it, so `replay` runs without it.
import { explain, UserError } from './errors';
import { FORMATS } from './formats';
import { CALL_CAP_MAX, CHUNK_MAX, DEFAULT_CALL_CAP, DEFAULT_RING_BYTES, DEFAULT_SHED_FILL, DEFAULT_SHED_HEAD, RATE_CAP_MAX } from './records/records';
import { checkFormat, openOutput } from './commands/output';

interface Options {
  pid: number[];
  comm: string[];
  port: number[];
  duration?: number;
  output?: string;
  callCap: number;
  rateCap: number;
  ringSize: number;
  shedHead: number;
  shedFill: number;
  library: string[];
  printLimit: number;
  format: string;
  redact: boolean;
  color?: boolean;
  ipc?: boolean;
  validate?: boolean;
  record?: string;
  readyFile?: string;
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
    .option('--shed-head <bytes>', 'under load (the ring buffer filling), most bytes captured of a call that starts a message (none of one that continues it); the rest is counted as shed', intArg('--shed-head', 0, CHUNK_MAX), DEFAULT_SHED_HEAD)
    .option('--shed-fill <fraction>', 'shed once this fraction of the ring buffer waits to be read (1: never shed)', (v) => { const n = Number(v); if (!(n > 0 && n <= 1)) throw new InvalidArgumentError('--shed-fill must be a number above 0 and at most 1'); return n; }, DEFAULT_SHED_FILL)
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
    .option('--ready-file <file>', 'without --ipc: create this file (mode 0600, the ready frame as JSON) once every TLS file found at start has its probes, and remove it at exit: a readiness check for containers')
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
    const { replayCommand } = await import('./commands/replay');
    const { packageVersion } = await import('./package');
    const out = openOutput(o.output);
    try {
      return await replayCommand(cmd.args[0]!, format, out, {
        redact: o.redact !== false,
        color: o.color !== false && !o.output && process.stdout.isTTY === true,
        printLimit: printLimit(cmd, format),
        version: packageVersion(),
      });
    } finally {
      await out.close();
    }
  }
  const cli = program().parse(argv);
  const opts = cli.opts<Options>();
  if (opts.targeted && !opts.pid.length && !opts.comm.length) throw new UserError('--targeted needs --pid or --comm', 'name the processes to plant probes in', 2);
  if (opts.ipc) {
    for (const o of ['format', 'output', 'redact', 'printLimit', 'readyFile']) {
      if (cli.getOptionValueSource(o) === 'cli') {
        throw new UserError(`--${o.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`).replace('redact', 'no-redact')} is for people and --ipc writes frames for a host`, 'drop it, or record with --record FILE and render it with https-capture replay FILE --format F', 2);
      }
    }
    // runIpc checks privileges itself and reports every failure as error and bye frames.
    const { runIpc } = await import('./commands/ipc');
    return runIpc({
      pids: opts.pid,
      comms: opts.comm,
      ports: opts.port,
      callCap: opts.callCap,
      rateCap: opts.rateCap,
      ringBytes: opts.ringSize,
      shedHead: opts.shedHead,
      shedFill: opts.shedFill,
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
  const { runStandalone } = await import('./commands/standalone');
  return runStandalone({
    pids: opts.pid,
    comms: opts.comm,
    ports: opts.port,
    ...(opts.duration ? { duration: opts.duration } : {}),
    ...(opts.output ? { output: opts.output } : {}),
    format,
    callCap: opts.callCap,
    rateCap: opts.rateCap,
    ringBytes: opts.ringSize,
    shedHead: opts.shedHead,
    shedFill: opts.shedFill,
    libraries: opts.library,
    printLimit: printLimit(cli, format),
    redact: opts.redact !== false,
    color: opts.color !== false && !opts.output && process.stdout.isTTY === true,
    validate: opts.validate === true,
    ...(opts.record ? { record: opts.record } : {}),
    ...(opts.readyFile ? { readyFile: opts.readyFile } : {}),
    maxQueueBytes: opts.maxQueueBytes,
    pollMs: opts.pollInterval,
    // Per-process probes: for --pid (processes that exist), or when asked. New processes found
    // by name get theirs only after they start, so --comm alone uses system-wide probes and the
    // name filter in BPF, which sees a process's first call however short it lives.
    targeted: opts.targeted === true || (opts.pid.length > 0 && opts.comm.length === 0),
    floor: opts.probeFloor === true,
  });
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
