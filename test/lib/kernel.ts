// kernel.ts: runs a real capture inside the test process and collects what it delivers.
// requireKernel() decides whether kernel tests can run: under CI=true a missing kernel path
// fails the suite; elsewhere the tests are skipped with the reason printed loudly.
import * as assert from 'assert';
import * as fs from 'fs';
import { Capture, CaptureOptions, KernelCounters, ProbeMode } from '../../helper/kernel/capture';
import { Discovery, DiscoveryOptions } from '../../helper/discovery/discovery';
import { preflight } from '../../helper/errors';
import { findTlsLibraries } from '../../helper/discovery/libraries';
import { ConnRecord, DataRecord, Direction, ExitRecord } from '../../helper/records/records';
import { run, waitFor } from './servers';

let verdict: string | undefined | null = null; // null: not checked yet; undefined: available

function kernelProblem(): string | undefined {
  if (verdict !== null) return verdict;
  try {
    preflight();
    const c = new Capture({});
    void c.stop();
    verdict = undefined;
  } catch (e) {
    verdict = e instanceof Error ? `${e.message}${'fix' in e ? ` (fix: ${(e as { fix: string }).fix})` : ''}` : String(e);
  }
  return verdict;
}

/**
 * The suites that called requireKernel(), shared with test/reporter.js through a global symbol
 * (mocha loads both in one process): the reporter says how many tests ran on the kernel path.
 */
const KERNEL_SUITES = Symbol.for('https-capture.kernelSuites');

/** Call in before(): skips (or, under CI=true, fails) when eBPF cannot be used here. */
export function requireKernel(ctx: Mocha.Context): void {
  const suite = ctx.test?.parent;
  const g = globalThis as { [KERNEL_SUITES]?: Set<Mocha.Suite> };
  if (suite) (g[KERNEL_SUITES] ??= new Set()).add(suite);
  const problem = kernelProblem();
  if (!problem) return;
  if (process.env.CI === 'true') throw new Error(`kernel path unavailable under CI=true: ${problem}`);
  process.stderr.write(`\n  !!! SKIPPING kernel tests: ${problem}\n  !!! run the suite as root on a kernel with BTF to run them\n\n`);
  ctx.skip();
}

/** One end of a connection: a process, and which of its connections if it has several. */
export interface End {
  pid: number;
  connId?: bigint;
}

/** A capture of the system's OpenSSL libraries that keeps every record it receives. */
export class Recorder {
  readonly capture: Capture;
  readonly data: DataRecord[] = [];
  readonly exits: ExitRecord[] = [];
  readonly conns: ConnRecord[] = [];
  final?: KernelCounters;
  /** With `discovery`: what it reported, as "attached PATH PID" / "failed …" / "detached …". */
  readonly reports: string[] = [];
  readonly discovery?: Discovery;

  constructor(opts: CaptureOptions & { mode?: ProbeMode; discovery?: DiscoveryOptions } = {}) {
    this.capture = new Capture(opts);
    if (opts.discovery) {
      this.discovery = new Discovery(this.capture, { mode: opts.mode ?? 'auto', ...opts.discovery }, {
        attached: (lib, _r, pid) => this.reports.push(`attached ${lib.path} ${pid}`),
        failed: (lib, why, pid) => this.reports.push(`failed ${lib.path} ${pid} ${why}`),
        detached: (lib, why, pid) => this.reports.push(`detached ${lib.path} ${pid} ${why}`),
        note: (lib, message) => this.reports.push(`note ${lib.path} ${message}`),
      });
      this.discovery.start();
    } else {
      for (const lib of findTlsLibraries()) this.capture.attachLibrary(lib, opts.mode ?? 'auto');
    }
    this.capture.start((records) => {
      for (const r of records) {
        this.discovery?.onRecord(r);
        if (r.kind === 'data') this.data.push({ ...r, data: Buffer.from(r.data) });
        else if (r.kind === 'exit') this.exits.push(r);
        else if (r.kind === 'open' || r.kind === 'close') this.conns.push(r);
      }
    });
  }

  async stop(): Promise<KernelCounters> {
    await this.discovery?.stop();
    this.final = await this.capture.stop();
    return this.final;
  }

  of(pid: number, dir?: Direction): DataRecord[] {
    return this.data.filter((r) => r.pid === pid && (dir === undefined || r.dir === dir));
  }

  connections(pid: number): bigint[] {
    return [...new Set(this.of(pid).map((r) => r.connId))];
  }

  /**
   * The bytes of one direction of one connection of `pid` (the only one, unless `connId` is
   * given), asserting that they are complete: records contiguous from offset 0.
   */
  stream(pid: number, dir: Direction, connId?: bigint): Buffer {
    const conns = connId !== undefined ? [connId] : this.connections(pid);
    assert.strictEqual(conns.length, 1, `pid ${pid} has ${conns.length} connections, expected one`);
    const recs = this.of(pid, dir).filter((r) => r.connId === conns[0]);
    let at = 0;
    for (const r of recs) {
      assert.strictEqual(r.seq, at, `pid ${pid} ${dir}: record at offset ${r.seq}, expected ${at} (a gap)`);
      at += r.data.length;
    }
    return Buffer.concat(recs.map((r) => r.data));
  }

  /**
   * Waits until the two ends of one connection have captured as many bytes each way, and says
   * whether they did within `timeoutMs` (the comparison that follows then shows what differs).
   * Records arrive in capture order, which is not the order of the bytes on the wire: a read
   * can return, and be recorded, before the write that sent its bytes has, when the writer is
   * preempted between its syscall and the call's return.
   */
  async settle(a: End, b: End, timeoutMs = 10_000): Promise<string> {
    const len = (e: End, dir: Direction): number => this.bytes(e.pid, dir, e.connId);
    const even = (): boolean => len(a, 'egress') === len(b, 'ingress') && len(a, 'ingress') === len(b, 'egress');
    const start = Date.now();
    return waitFor(even, { what: 'both ends to have as many bytes', timeoutMs }).then(
      () => `both ends even after ${Date.now() - start} ms`,
      () => `ends still uneven after ${timeoutMs} ms: ${len(a, 'egress')}/${len(b, 'ingress')} one way, ${len(b, 'egress')}/${len(a, 'ingress')} the other`,
    );
  }

  /** Bytes captured so far for pid/dir (of one of its connections, if given). */
  bytes(pid: number, dir: Direction, connId?: bigint): number {
    return this.of(pid, dir).reduce((n, r) => (connId === undefined || r.connId === connId ? n + r.data.length : n), 0);
  }
}

/** IDs of the BPF programs and links a process holds, from its fds (anon_inode:bpf-prog/link). */
export function heldByProcess(pid: number): { progs: number[]; links: number[] } {
  const progs: number[] = [];
  const links: number[] = [];
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    let target = '';
    try {
      target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    if (!/^anon_inode:bpf[-_](prog|link)/.test(target)) continue;
    const info = fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    const prog = /^prog_id:\s*(\d+)/m.exec(info);
    const link = /^link_id:\s*(\d+)/m.exec(info);
    if (link) links.push(Number(link[1]));
    else if (prog) progs.push(Number(prog[1]));
  }
  return { progs, links };
}

/** IDs of every loaded BPF program and link on the machine. */
export async function loaded(): Promise<{ progs: Set<number>; links: Set<number> }> {
  const ids = async (what: string): Promise<Set<number>> => {
    const res = await run('bpftool', ['-j', what, 'show']);
    return new Set((JSON.parse(res.stdout.toString() || '[]') as { id: number }[]).map((x) => x.id));
  };
  return { progs: await ids('prog'), links: await ids('link') };
}

/**
 * Asserts that none of the programs and links `pid` held is loaded any more. The kernel frees a
 * detached tp_btf program after an RCU grace period: it is allowed a moment.
 */
export async function noneLeft(held: { progs: number[]; links: number[] }): Promise<void> {
  let left: number[] = [];
  await waitFor(
    async () => {
      const now = await loaded();
      left = [...held.progs.filter((id) => now.progs.has(id)), ...held.links.filter((id) => now.links.has(id))];
      return left.length === 0;
    },
    { timeoutMs: 5000, what: 'programs and links to be freed' },
  ).catch(() => assert.deepStrictEqual(left, [], 'programs or links of the helper are still loaded'));
}
