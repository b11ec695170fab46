// capture.ts: runs the helper in one of the benchmark's modes, through the Go host of
// integrations/apidump (cmd/capture-stats: the apidump path, frames on stdout) or, in the text
// mode, as the standalone command a person runs, and collects what the host (or the text) got
// and what the helper cost: CPU seconds while the load ran, peak RSS.
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { statusKiB } from '../../test/lib/procfs';
import { cpuSeconds } from './load';
import { NODE_FLAGS } from '../../helper/package';

/**
 * The node flags a build runs its helper with: those of its cli.js shebang (helper/package.ts
 * NODE_FLAGS of that build), so that a build from before a change of flags is measured as it ran.
 */
export function nodeFlagsOf(cli: string): string[] {
  const first = fs.readFileSync(cli, 'utf8').split('\n', 1)[0]!;
  const m = /^#!\/usr\/bin\/env -S node(.*)$/.exec(first);
  return m ? m[1]!.trim().split(/\s+/).filter(Boolean) : NODE_FLAGS;
}

export type Mode = 'none' | 'floor' | 'system' | 'text' | 'targeted' | 'others';

export const MODES: { mode: Mode; what: string }[] = [
  { mode: 'none', what: 'no capture' },
  { mode: 'floor', what: 'the probe floor: the same probes, doing nothing (--probe-floor)' },
  { mode: 'system', what: 'the helper, every process (probes in nginx and the client), through the apidump path' },
  { mode: 'text', what: 'the standalone command a person runs, every process, text format with `--print-limit 0` (whole bodies) to a file; its CPU is counted until it exits (what it still renders after the load ends is its cost too)' },
  { mode: 'targeted', what: 'the helper targeted at nginx (--pid WORKER --targeted): only nginx has probes' },
  { mode: 'others', what: 'the helper targeted at an idle python process: nginx and the client are not targets' },
];

/** One process's accounts, as cmd/capture-stats prints them. */
export interface ProcAccount {
  comm: string;
  conns: number;
  segments: number;
  bytes: [number, number];
  moved: [number, number];
  lost_before: number;
  truncated: number;
  h1_request_lines: number;
  h1_status_lines: number;
  /** HTTP/1.1 connections whose last request was in flight when they ended. */
  h1_unanswered: number;
  h2_headers: [number, number];
  /** Bytes cut from calls under load (segments marked shed). */
  shed: number;
}

export interface HostSummary {
  helper_pid: number;
  bye: { Kernel: Record<string, number>; Writer: Record<string, number> } | null;
  losses: Record<string, number>;
  procs: Record<string, ProcAccount>;
  errors: string[] | null;
}

export interface RunningCapture {
  helperPid: number;
  /** Call when the load starts and when it ends: the helper's CPU in between is its cost. */
  mark(): void;
  /**
   * Stops the helper; the host's accounts (the text mode: its output file and its stderr
   * instead), the CPU seconds of the helper and of the host between the marks, the helper's
   * peak RSS.
   */
  finish(): Promise<{ summary?: HostSummary; text?: { file: string; stderr: string }; cpuSeconds: number; hostCpuSeconds: number; peakRssMiB: number }>;
}

export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..', '..');
export const CAPTURE_STATS = path.join(PACKAGE_ROOT, 'bench', 'build', 'capture-stats');
/** The helper to measure: this checkout's, or another's (--helper, for before/after tables). */
let cli = path.join(PACKAGE_ROOT, 'dist', 'helper', 'cli.js');
export function useHelper(file: string): void {
  cli = path.resolve(file);
}

/** 0 once the process is gone. */
function rssKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    return statusKiB(pid, field);
  } catch {
    return 0;
  }
}

/** Starts the helper for `mode` (not 'none') and resolves once its probes are in. */
export async function startCapture(mode: Exclude<Mode, 'none'>, targets: { nginx: number; idle: number }, dir: string): Promise<RunningCapture> {
  if (mode === 'text') return startText(path.join(dir, 'capture.txt'));
  const helper = [process.execPath, ...NODE_FLAGS, cli];
  const hostArgs: string[] = [];
  if (mode === 'floor') helper.push('--probe-floor');
  if (mode === 'targeted' || mode === 'others') {
    hostArgs.push('-pid', String(mode === 'targeted' ? targets.nginx : targets.idle));
    helper.push('--targeted');
  }
  const child: ChildProcess = spawn(CAPTURE_STATS, [...hostArgs, '--', ...helper], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-4000)));
  const exited = new Promise<number | null>((r) => child.once('exit', r));
  const helperPid = await new Promise<number>((resolve, reject) => {
    const t = setInterval(() => {
      const m = /^ready (\d+)$/m.exec(out);
      if (m) {
        clearInterval(t);
        resolve(Number(m[1]));
      } else if (child.exitCode !== null) {
        clearInterval(t);
        reject(new Error(`the capture (${mode}) ended before its probes were in:\n${err}`));
      }
    }, 50);
  });
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, rssKiB(helperPid, 'VmRSS'))), 200);
  const marks: number[] = [];
  const hostMarks: number[] = [];
  return {
    helperPid,
    mark: () => {
      marks.push(cpuSeconds(helperPid));
      hostMarks.push(cpuSeconds(child.pid!));
    },
    finish: async () => {
      clearInterval(sampler);
      peak = Math.max(peak, rssKiB(helperPid, 'VmHWM'));
      child.stdin!.end();
      await exited;
      const line = out.trim().split('\n').pop() ?? '';
      let summary: HostSummary;
      try {
        summary = JSON.parse(line) as HostSummary;
      } catch {
        throw new Error(`the host printed no accounts (${mode}):\n${out.slice(-2000)}\n${err}`);
      }
      const between = (m: number[]): number => (m.length >= 2 ? m[1]! - m[0]! : 0);
      return { summary, cpuSeconds: between(marks), hostCpuSeconds: between(hostMarks), peakRssMiB: peak / 1024 };
    },
  };
}

/** The helper as its own process, with its output to a file: what bench.ts's text mode and overload.ts run. */
export interface HelperProcess {
  child: ChildProcess;
  stderr: () => string;
  /** Stops it (--ipc: stdin closed; otherwise SIGINT, as a person stops it) and waits for its exit. */
  stop: () => Promise<void>;
  /** Peak RSS in MiB so far. */
  peak: () => number;
  /** CPU seconds since it said it was capturing (until its exit, once stopped: draining and rendering count). */
  cpu: () => number;
}

/**
 * Starts `node argv...` (argv: node's flags, the cli, the helper's options) in --ipc mode (frames
 * to `out`) or as the standalone command in format `mode` (whole bodies, to `out`, mode 0600),
 * under `wrap` if given (heaptrack, env MALLOC_ARENA_MAX=1, ...), and resolves once it is
 * capturing.
 */
export async function startHelperProcess(o: { argv: string[]; mode: string; out: string; wrap?: string[]; name?: string }): Promise<HelperProcess> {
  const wrap = o.wrap ?? [];
  const spawnNode = (argv: string[], so: Parameters<typeof spawn>[2]): ChildProcess =>
    wrap.length ? spawn(wrap[0]!, [...wrap.slice(1), process.execPath, ...argv], so) : spawn(process.execPath, argv, so);
  let child: ChildProcess;
  if (o.mode === 'ipc') {
    const fd = fs.openSync(o.out, 'w', 0o600);
    child = spawnNode([...o.argv, '--ipc'], { stdio: ['pipe', fd, 'pipe'] });
    fs.closeSync(fd);
  } else {
    child = spawnNode([...o.argv, '--format', o.mode, '--print-limit', '0', '--no-color', '-o', o.out], { stdio: ['ignore', 'ignore', 'pipe'] });
  }
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const t0 = Date.now();
  while (!err.includes('capturing TLS plaintext')) {
    if (child.exitCode !== null || Date.now() - t0 > 120_000) throw new Error(`the helper (${o.name ?? 'bench'}, ${o.mode}) did not start:\n${err.slice(-4000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const pid = child.pid!;
  let peak = 0;
  let cpu = 0;
  const cpu0 = cpuSeconds(pid);
  // /proc/<pid> is gone after the exit: CPU and RSS are sampled while it lives (0 once gone).
  const sample = (): void => {
    peak = Math.max(peak, rssKiB(pid, 'VmRSS'));
    cpu = Math.max(cpu, cpuSeconds(pid) - cpu0);
  };
  let sampler = setInterval(sample, 200);
  return {
    child,
    stderr: () => err,
    peak: () => peak / 1024,
    cpu: () => cpu,
    stop: async () => {
      peak = Math.max(peak, rssKiB(pid, 'VmHWM'));
      // Until exit (draining what is left, rendering it), more often.
      clearInterval(sampler);
      sampler = setInterval(sample, 50);
      if (o.mode === 'ipc') child.stdin!.end();
      else child.kill('SIGINT');
      await exited;
      clearInterval(sampler);
    },
  };
}

/**
 * The text mode: the standalone command, whole bodies, to `file` (removed by the caller); its
 * CPU from the first mark to its exit.
 */
async function startText(file: string): Promise<RunningCapture> {
  const h = await startHelperProcess({ argv: [...NODE_FLAGS, cli], mode: 'text', out: file });
  let cpu0: number | undefined;
  return {
    helperPid: h.child.pid!,
    mark: () => void (cpu0 ??= h.cpu()),
    finish: async () => {
      await h.stop();
      if (!fs.existsSync(file)) throw new Error(`the capture (text) wrote no ${file}:\n${h.stderr().slice(-4000)}`);
      return { text: { file, stderr: h.stderr() }, cpuSeconds: h.cpu() - (cpu0 ?? 0), hostCpuSeconds: 0, peakRssMiB: h.peak() };
    },
  };
}
