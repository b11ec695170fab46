#!/usr/bin/env node
// cli.ts: the `https-capture` command. With no arguments it attaches to every OpenSSL library
// on the system, for all processes, and prints each captured call until Ctrl-C.
import { Command, InvalidArgumentError } from 'commander';
import * as fs from 'fs';
import { Call, CallAssembler } from './calls';
import { OpenConnections } from './conns';
import { Capture, DEFAULT_CALL_CAP, DEFAULT_RING_BYTES, KernelCounters } from './capture';
import { explain, preflight, UserError } from './errors';
import { runIpc } from './ipc';
import { findOpenSslLibraries } from './libraries';
import { CALL_CAP_MAX } from './records';
import { replayCommand } from './replay';
import { showCall, showConn } from './show';

interface Options {
  pid: number[];
  comm: string[];
  duration?: number;
  output?: string;
  callCap: number;
  ringSize: number;
  library: string[];
  printLimit: number;
  color?: boolean;
  ipc?: boolean;
  validate?: boolean;
  record?: string;
  maxQueueBytes: number;
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
    .description('Prints the plaintext of TLS calls (OpenSSL SSL_write/SSL_read) made by processes on this machine, captured with eBPF.')
    .option('-p, --pid <pids>', 'only these processes (comma-separated, repeatable)', listOf(intArg('--pid', 1, 2 ** 31 - 1)), [])
    .option('-c, --comm <names>', 'only processes with these names (comma-separated, repeatable)', listOf(String), [])
    .option('-d, --duration <seconds>', 'stop after this many seconds', intArg('--duration', 1, 365 * 86400))
    .option('-o, --output <file>', 'write the capture to this file (mode 0600) instead of stdout')
    .option('--call-cap <bytes>', 'most bytes captured of one TLS call; the rest is counted', intArg('--call-cap', 0, CALL_CAP_MAX), DEFAULT_CALL_CAP)
    .option('--ring-size <bytes>', 'ring buffer size, a power of two', intArg('--ring-size', 4096, 1 << 30), DEFAULT_RING_BYTES)
    .option('-l, --library <path>', 'also attach to this OpenSSL library or executable (repeatable)', listOf(String), [])
    .option('--print-limit <bytes>', 'most bytes of each call to print (0: all)', intArg('--print-limit', 0, CALL_CAP_MAX), 4096)
    .option('--no-color', 'no colors, even on a terminal')
    .option('--ipc', 'plugin mode for apidump: length-prefixed msgpack frames on stdout, control frames on stdin (docs/protocol.md)')
    .option('--validate', 'with --ipc: check every frame against schemas/ before writing it')
    .option('--record <file>', 'with --ipc: also save the exact frame stream to this file (mode 0600)')
    .option(
      '--max-queue-bytes <bytes>',
      'with --ipc: most bytes queued for a host that does not read; segments beyond it are dropped and reported',
      intArg('--max-queue-bytes', 1 << 16, 1 << 30),
      64 << 20,
    )
    .addHelpText(
      'after',
      '\nRuns as root (or with CAP_BPF and CAP_PERFMON). Ctrl-C (SIGINT) or SIGTERM detaches every probe and exits 0.\n' +
        'https-capture replay FILE [--format exchanges|frames] plays back a recording made with --ipc --record FILE.\n' +
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
    .description('Plays back a frame recording (made with --ipc --record FILE) without root or a kernel.')
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
      callCap: opts.callCap,
      ringBytes: opts.ringSize,
      libraries: opts.library,
      validate: opts.validate === true,
      ...(opts.record ? { record: opts.record } : {}),
      maxQueueBytes: opts.maxQueueBytes,
    });
  }
  preflight();
  const libraries = findOpenSslLibraries(opts.library);
  if (libraries.length === 0) {
    throw new UserError('no OpenSSL library (libssl.so*) was found in the linker cache or in any running process', 'install OpenSSL (apt-get install libssl3) or name the file with --library PATH');
  }
  const capture = new Capture({ pids: opts.pid, comms: opts.comm, callCap: opts.callCap, ringBytes: opts.ringSize });
  const log = (s: string): void => void process.stderr.write(`https-capture: ${s}\n`);
  try {
    let attached = 0;
    for (const lib of libraries) {
      try {
        const r = capture.attachOpenSsl(lib);
        attached++;
        const missing = r.failed.length ? ` (could not probe: ${r.failed.map((f) => f.func).join(', ')})` : '';
        const how = r.plan.kind === 'internal' ? '' : ` (exported functions: ${r.plan.reason})`;
        log(`attached to ${lib.path}: ${r.attached.join(', ')}${how}${missing}`);
      } catch (e) {
        log(`could not attach to ${lib.path}: ${explain(e).cause}`);
      }
    }
    if (attached === 0) throw new UserError('no OpenSSL library could be probed', 'see the lines above for each library; pass another with --library PATH');
  } catch (e) {
    await capture.stop();
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
      if (r.kind === 'data') {
        calls.push(r);
        continue;
      }
      if (r.kind !== 'open') calls.flush((pid) => pid === r.pid);
      status.clear();
      if (r.kind === 'exit') {
        for (const c of open.endProcess(r.pid)) out.write(showConn({ ...c, kind: 'close', reason: 'exit', tsNs: r.tsNs }, showOpts));
      } else {
        open.track(r);
        out.write(showConn(r, showOpts));
      }
    }
  });
  const who = opts.pid.length || opts.comm.length ? `processes ${[...opts.pid, ...opts.comm].join(', ')}` : 'all processes';
  log(`capturing TLS plaintext of ${who}${opts.output ? ` into ${opts.output}` : ''}; Ctrl-C to stop`);

  const ticker = setInterval(() => {
    const k = capture.counters();
    status.draw(`https-capture: ${capture.attachedLibraries.length} libraries, ${k.calls} calls, ${k.bytesCaptured} bytes, ${k.bytesLost + k.bytesFaulted} lost`);
  }, 1000);

  await new Promise<void>((resolve) => {
    const done = (): void => resolve();
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
    process.once('SIGHUP', done);
    if (opts.duration) setTimeout(done, opts.duration * 1000).unref();
  });
  clearInterval(ticker);
  status.clear();
  const final = await capture.stop();
  calls.flush();
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
