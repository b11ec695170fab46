// load.ts: the benchmark's loads, run by Debian's wrk (HTTP/1.1) and h2load (HTTP/2) against the
// bench server, and what they report: requests per second and the client's pid and CPU time.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { cpuSeconds as procCpuSeconds } from '../../test/lib/procfs';

export interface Workload {
  name: string;
  what: string;
  http2: boolean;
  /** The command line for `seconds` of load on 127.0.0.1:port. */
  argv(port: number, seconds: number, dir: string): string[];
}

const CONNS = 16;

export const WORKLOADS: Workload[] = [
  { name: 'small', what: '1 KiB responses, keep-alive (wrk, 16 connections)', http2: false, argv: (p, s) => ['wrk', '-t1', `-c${CONNS}`, `-d${s}s`, `https://127.0.0.1:${p}/1k`] },
  { name: 'large', what: '256 KiB responses, keep-alive (wrk, 16 connections)', http2: false, argv: (p, s) => ['wrk', '-t1', `-c${CONNS}`, `-d${s}s`, `https://127.0.0.1:${p}/256k`] },
  {
    name: 'post',
    what: '64 KiB POST bodies, keep-alive (wrk, 16 connections)',
    http2: false,
    argv: (p, s, dir) => {
      const lua = path.join(dir, 'post.lua');
      fs.writeFileSync(lua, 'wrk.method = "POST"\nwrk.body = string.rep("x", 65536)\nwrk.headers["Content-Type"] = "application/octet-stream"\n');
      return ['wrk', '-t1', `-c${CONNS}`, `-d${s}s`, '-s', lua, `https://127.0.0.1:${p}/upload`];
    },
  },
  { name: 'newconn', what: '1 KiB responses, a new TLS connection per request (wrk, Connection: close)', http2: false, argv: (p, s) => ['wrk', '-t1', `-c${CONNS}`, `-d${s}s`, '-H', 'Connection: close', `https://127.0.0.1:${p}/1k`] },
  { name: 'h2', what: '1 KiB responses over HTTP/2 (h2load, 16 connections x 10 streams)', http2: true, argv: (p, s) => ['h2load', '-t1', `-c${CONNS}`, '-m10', '-D', String(s), `https://127.0.0.1:${p}/1k`] },
];

export interface LoadResult {
  requestsPerSec: number;
  pid: number;
  /** CPU seconds the load tool used. */
  cpuSeconds: number;
  output: string;
}

/** CPU seconds (user + system) of a process so far, from /proc (0 once it is gone). */
export function cpuSeconds(pid: number): number {
  try {
    return procCpuSeconds(pid);
  } catch {
    return 0; // gone
  }
}

/** Runs a load to its end; its CPU time is read just before it exits (through its own /proc). */
export function runLoad(argv: string[]): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let cpu = 0;
    const pid = child.pid ?? -1;
    // Sample the CPU time while it runs: after exit /proc/<pid> is gone.
    const timer = setInterval(() => (cpu = Math.max(cpu, cpuSeconds(pid))), 100);
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    child.on('error', (e) => {
      clearInterval(timer);
      reject(new Error(`cannot run ${argv[0]}: ${e.message} (scripts/setup.sh --bench installs wrk and nghttp2-client)`));
    });
    child.on('exit', (code) => {
      clearInterval(timer);
      const wrk = /Requests\/sec:\s+([\d.]+)/.exec(out);
      const h2 = /finished in [\d.]+\w*, ([\d.]+) req\/s/.exec(out);
      const rps = Number((wrk ?? h2)?.[1]);
      if (code !== 0 || !Number.isFinite(rps)) reject(new Error(`${argv.join(' ')} failed (exit ${code}):\n${out}`));
      else resolve({ requestsPerSec: rps, pid, cpuSeconds: cpu, output: out });
    });
  });
}
