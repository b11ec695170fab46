#!/usr/bin/env node
// cli.ts: the `https-capture` command. With no arguments it attaches to every OpenSSL library
// on the system, for all processes, and prints each captured call until Ctrl-C.
import { Command, InvalidArgumentError } from 'commander';
import * as fs from 'fs';
import { Call, CallAssembler } from './calls';
import { OpenConnections } from './conns';
import { Discovery } from './discovery';
import { Capture, DEFAULT_CALL_CAP, DEFAULT_RING_BYTES, KernelCounters, RATE_CAP_MAX } from './capture';
import { attachRefused, explain, preflight, privilegeWarnings, UserError } from './errors';
import { ByeReason, FrameRecording, runIpc } from './ipc';
import { CALL_CAP_MAX } from './records';
import { replayCommand } from './replay';
import { showCall, showConn } from './show';

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
  color?: boolean;
  ipc?: boolean;
  validate?: boolean;
  record?: string;
  maxQueueBytes: number;
  pollInterval: number;
  targeted?: boolean;
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
    .description('Prints the plaintext of TLS calls (OpenSSL, GnuTLS) made by processes on this machine, captured with eBPF.')
    .option('-p, --pid <pids>', 'only these processes (comma-separated, repeatable)', listOf(intArg('--pid', 1, 2 ** 31 - 1)), [])
    .option('-c, --comm <names>', 'only processes with these names (comma-separated, repeatable)', listOf(String), [])
    .option('-P, --port <ports>', 'only connections with one of these local or remote ports (comma-separated, repeatable)', listOf(intArg('--port', 1, 65535)), [])
    .option('-d, --duration <seconds>', 'stop after this many seconds', intArg('--duration', 1, 365 * 86400))
    .option('-o, --output <file>', 'write the capture to this file (mode 0600) instead of stdout')
    .option('--call-cap <bytes>', 'most bytes captured of one TLS call; the rest is counted', intArg('--call-cap', 0, CALL_CAP_MAX), DEFAULT_CALL_CAP)
    .option('--rate-cap <bytes>', 'most bytes captured per second per process (0: no limit); the rest is counted', intArg('--rate-cap', 0, RATE_CAP_MAX), 0)
    .option('--ring-size <bytes>', 'ring buffer size, a power of two', intArg('--ring-size', 4096, 1 << 30), DEFAULT_RING_BYTES)
    .option('-l, --library <path>', 'also attach to this OpenSSL library or executable (repeatable)', listOf(String), [])
    .option(
      '--targeted',
      'plant probes only in the processes named by --pid/--comm (others pay nothing); a new process that finishes within ~20-200 ms of starting may be missed',
    )
    .option('--poll-interval <ms>', 'rescan /proc for new TLS libraries this often (0: never; new files are also seen as they are opened)', intArg('--poll-interval', 0, 3600000), 2000)
    .option('--print-limit <bytes>', 'most bytes of each call to print (0: all)', intArg('--print-limit', 0, CALL_CAP_MAX), 4096)
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
        'https-capture replay FILE [--format exchanges|frames] plays back a recording made with --record FILE.\n' +
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

function openOutput(file: string | undefined): { write(s: string): void; close(): Promise<void> } {
  if (!file) {
    return { write: (s) => void process.stdout.write(s), close: () => Promise.resolve() };
  }
  // Plaintext may hold secrets: the file is only for its owner, even if it existed before.
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
  fs.fchmodSync(fd, 0o600);
  const stream = fs.createWriteStream('', { fd });
  return {
    write: (s) => void stream.write(s),
    close: () => new Promise((resolve) => stream.end(resolve)),
  };
}

function summary(k: KernelCounters): string {
  const lost = k.bytesLost + k.bytesFaulted;
  return (
    `${k.calls} calls, ${k.bytesMoved} bytes moved, ${k.bytesCaptured} captured, ` +
    `${k.bytesTruncated} past the per-call cap, ${lost} lost (${k.recordsLost} records: ring buffer full; ${k.readFaults}: memory unreadable)`
  );
}

function replayProgram(): Command {
  return new Command('https-capture replay')
    .description('Plays back a frame recording (made with --record FILE, with or without --ipc) without root or a kernel.')
    .argument('<file>', 'the recording')
    .option('-f, --format <format>', 'exchanges (HTTP/1.1 requests and responses) or frames (one JSON object per frame)', 'exchanges');
}

async function main(argv: string[]): Promise<number> {
  if (argv[2] === 'replay') {
    const cmd = replayProgram().parse(argv.slice(3), { from: 'user' });
    const format = cmd.opts<{ format: string }>().format;
    if (format !== 'exchanges' && format !== 'frames') throw new UserError(`unknown replay format "${format}"`, 'use --format exchanges or --format frames', 2);
    return replayCommand(cmd.args[0]!, format, (s) => void process.stdout.write(s));
  }
  const opts = program().parse(argv).opts<Options>();
  if (opts.ipc) {
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
    });
  }
  preflight();
  // Per-process probes: for --pid (processes that exist), or when asked. New processes found
  // by name get theirs only after they start, so --comm alone uses system-wide probes and the
  // name filter in BPF, which sees a process's first call however short it lives.
  const targeted = opts.targeted === true || (opts.pid.length > 0 && opts.comm.length === 0);
  if (opts.targeted && !opts.pid.length && !opts.comm.length) throw new UserError('--targeted needs --pid or --comm', 'name the processes to plant probes in', 2);
  const capture = new Capture({ pids: opts.pid, comms: opts.comm, ports: opts.port, callCap: opts.callCap, rateCap: opts.rateCap, ringBytes: opts.ringSize, execEvents: true });
  const log = (s: string): void => void process.stderr.write(`https-capture: ${s}\n`);
  const where = (pid: number): string => (pid < 0 ? '' : ` in process ${pid}`);
  // --record: the frames --ipc would write, saved beside the human output (the same builder).
  let recording: FrameRecording | undefined;
  try {
    recording = opts.record ? new FrameRecording(opts.record, capture.wallOffsetNs, { validate: opts.validate === true, maxQueueBytes: opts.maxQueueBytes }) : undefined;
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
        recording?.process({ pid, library: lib.path, state: 'attached', functions: r.attached, reason: `${how}${missing}`.trim() });
      },
      failed: (lib, reason, pid) => {
        refused.push(reason);
        log(`could not attach to ${lib.path}${where(pid)}: ${attachRefused([reason], pid >= 0)?.cause ?? reason}`);
        recording?.process({ pid, library: lib.path, state: 'failed', functions: [], reason });
      },
      detached: (lib, why, pid) => {
        log(`detached from ${lib.path}${where(pid)}: ${why}`);
        recording?.process({ pid, library: lib.path, state: 'detached', functions: [], reason: why });
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
    await recording?.close('fatal_error', await capture.stop());
    throw e;
  }

  const out = openOutput(opts.output);
  const status = new StatusLine(process.stderr.isTTY === true);
  const color = opts.color !== false && !opts.output && process.stdout.isTTY === true;
  const showOpts = { limit: opts.printLimit, wallOffsetNs: capture.wallOffsetNs, color };
  const open = new OpenConnections();
  const calls = new CallAssembler((call: Call) => {
    status.clear();
    out.write(showCall(call, showOpts));
  });
  capture.start((records) => {
    for (const r of records) {
      recording?.push(r);
      if (r.kind === 'data') {
        calls.push(r);
        continue;
      }
      discovery.onRecord(r);
      if (r.kind === 'open' || r.kind === 'close') {
        if (r.kind === 'close') calls.flush((pid) => pid === r.pid);
        open.track(r);
        status.clear();
        out.write(showConn(r, showOpts));
      } else if (r.kind === 'exit') {
        calls.flush((pid) => pid === r.pid);
        status.clear();
        for (const c of open.endProcess(r.pid)) out.write(showConn({ ...c, kind: 'close', reason: 'exit', tsNs: r.tsNs }, showOpts));
      }
    }
  });
  const named = [...opts.pid, ...opts.comm].join(', ');
  const who = targeted ? `processes ${named} (probes only in them)` : named ? `processes ${named} (filtered in the kernel)` : 'all processes';
  log(`capturing TLS plaintext of ${who}${opts.output ? ` into ${opts.output}` : ''}${opts.record ? `, frames into ${opts.record}` : ''}; Ctrl-C to stop`);

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
  calls.flush();
  await out.close();
  await recording?.close(stopReason, final);
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
