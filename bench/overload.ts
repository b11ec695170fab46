// overload.ts: `node dist/bench/overload.js`: does the capture keep every exchange when it cannot
// keep every byte? nginx (1 worker, TLS, 127.0.0.1) under wrk at saturation with 256 KiB
// responses and 64 KiB POSTs, both ends captured, the helper in --ipc mode (frames to a file)
// and in the default text mode (--print-limit 0, to a file). For each run: how many of the
// requests nginx logged appear as exchanges with request line, status and headers at both ends
// (nginx's worker and wrk), and the kernel's books (bytes moved, shed, lost). Variants, all in
// the same run so that their ratios compare: the helper without shedding (--shed-fill 1), with
// it (the defaults), and optionally another build (--before DIST_CLI, e.g. the commit before
// shedding). A script, never a test.
import { ChildProcess, spawn } from 'child_process';
import { Command } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import * as readline from 'readline';
import { runLoad, WORKLOADS } from './lib/load';
import { startBenchNginx } from './lib/nginx';
import { PACKAGE_ROOT } from './lib/capture';
import { tmpDir } from '../test/lib/servers';
import { statusKiB } from '../test/lib/procfs';
import { replayFrames } from '../helper/commands/replay';
import { HttpExchange, Session } from '../helper/http/exchanges';

type Mode = 'ipc' | 'text';

interface Variant {
  name: string;
  cli: string;
  args: string[];
}

interface Row {
  workload: string;
  mode: Mode;
  variant: string;
  rps: number;
  /** Requests nginx logged during the load. */
  requests: number;
  /** Exchanges with request line, status and headers, of nginx's worker and of wrk. */
  server: number;
  client: number;
  /** min(server, client) / requests. */
  bothEnds: number;
  /**
   * wrk's connections whose last exchange is a request without a response: in flight when wrk
   * stopped at the end of the run (it closes its connections then; nginx logged the answer wrk
   * never read). At most one per connection.
   */
  clientUnanswered: number;
  /** min(server, client + clientUnanswered) / requests: both ends, the end of the run aside. */
  bothEndsSettled: number;
  bytesMoved?: number;
  bytesCaptured?: number;
  bytesShed?: number;
  bytesLost?: number;
  writerDropped?: number;
  outputBytes: number;
  peakRssMiB: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Exchanges of a frame recording with a request line, a status and headers on both sides, per pid. */
async function countFrames(file: string): Promise<{ perPid: Map<number, number>; unanswered: Map<number, number>; kernel?: Record<string, number>; writer?: Record<string, number> }> {
  const perPid = new Map<number, number>();
  const unanswered = new Map<number, number>();
  // Per connection, whether its last exchange was a request with no response.
  const last = new Map<string, { pid: number; unanswered: boolean }>();
  let kernel: Record<string, number> | undefined;
  let writer: Record<string, number> | undefined;
  const session = new Session((e) => {
    if (e.type !== 'exchange') return;
    const x = e.exchange;
    if (headed(x)) perPid.set(x.conn.pid, (perPid.get(x.conn.pid) ?? 0) + 1);
    last.set(x.conn.key, { pid: x.conn.pid, unanswered: !!x.request && x.request.headers.length > 0 && !x.response });
  });
  for await (const f of replayFrames(file, { validate: false })) {
    if (f.type === 'bye') {
      kernel = f.kernel as Record<string, number>;
      writer = f.writer as Record<string, number>;
    }
    session.push(f);
  }
  session.end();
  for (const l of last.values()) if (l.unanswered) unanswered.set(l.pid, (unanswered.get(l.pid) ?? 0) + 1);
  return { perPid, unanswered, ...(kernel ? { kernel } : {}), ...(writer ? { writer } : {}) };
}

function headed(x: HttpExchange): boolean {
  return !!x.request && !!x.response && !!x.request.method && x.request.headers.length > 0 && x.response.status > 0 && x.response.headers.length > 0;
}

/**
 * The same count from the text output: an exchange block starts with `TIME comm[pid] conn N
 * HTTP/1.x (...)`; it counts when it has `> METHOD target HTTP/1.x`, `< HTTP/1.x NNN`, and a
 * header line on each side. Bodies here are base64 or 'x' runs: no line of them starts with '> ' or '< '.
 */
async function countText(file: string): Promise<{ perPid: Map<number, number>; unanswered: Map<number, number> }> {
  const perPid = new Map<number, number>();
  const unanswered = new Map<number, number>();
  const head = /^\d\d:\d\d:\d\d\.\d+ \S+\[(\d+)\] conn (\d+) HTTP\/1\.[01] /;
  const last = new Map<string, { pid: number; unanswered: boolean }>();
  let cur: { conn: string; pid: number; req: boolean; res: boolean; reqH: boolean; resH: boolean; noResponse: boolean } | undefined;
  const done = (): void => {
    if (cur && cur.req && cur.res && cur.reqH && cur.resH) perPid.set(cur.pid, (perPid.get(cur.pid) ?? 0) + 1);
    if (cur) last.set(cur.conn, { pid: cur.pid, unanswered: cur.req && cur.reqH && !cur.res && cur.noResponse });
    cur = undefined;
  };
  const rl = readline.createInterface({ input: fs.createReadStream(file, { highWaterMark: 1 << 20 }), crlfDelay: Infinity });
  for await (const line of rl) {
    const m = head.exec(line);
    if (m) {
      done();
      cur = { conn: `${m[1]}:${m[2]}`, pid: Number(m[1]), req: false, res: false, reqH: false, resH: false, noResponse: false };
      continue;
    }
    if (cur && line === '[no response captured]') cur.noResponse = true;
    if (!cur || line.length < 3 || (line[0] !== '>' && line[0] !== '<') || line[1] !== ' ') continue;
    if (line[0] === '>') {
      if (/^> [A-Z]+ \S+ HTTP\/1\.[01]$/.test(line)) cur.req = true;
      else if (/^> [^ :]+: /.test(line)) cur.reqH = true;
    } else if (/^< HTTP\/1\.[01] \d{3}/.test(line)) cur.res = true;
    else if (/^< [^ :]+: /.test(line)) cur.resH = true;
  }
  done();
  for (const l of last.values()) if (l.unanswered) unanswered.set(l.pid, (unanswered.get(l.pid) ?? 0) + 1);
  return { perPid, unanswered };
}

/** The counters of the text mode's closing line (stderr): `stopped: N calls, N bytes moved, ...`. */
function textCounters(stderr: string): Record<string, number> {
  const line = /stopped: (.*)/.exec(stderr)?.[1] ?? '';
  const n = (re: RegExp): number | undefined => {
    const m = re.exec(line);
    return m ? Number(m[1]) : undefined;
  };
  const out: Record<string, number> = {};
  const put = (k: string, v: number | undefined): void => void (v !== undefined && (out[k] = v));
  put('bytes_moved', n(/(\d+) bytes moved/));
  put('bytes_captured', n(/(\d+) captured/));
  put('bytes_shed', n(/(\d+) shed under load/));
  put('bytes_lost', n(/(\d+) lost/));
  return out;
}

async function startHelper(v: Variant, mode: Mode, out: string, filter: string[]): Promise<{ child: ChildProcess; stderr: () => string; stop: () => Promise<void>; peak: () => number }> {
  const args = [v.cli, ...filter, ...v.args];
  let child: ChildProcess;
  if (mode === 'ipc') {
    const fd = fs.openSync(out, 'w', 0o600);
    child = spawn(process.execPath, [...args, '--ipc'], { stdio: ['pipe', fd, 'pipe'] });
    fs.closeSync(fd);
  } else {
    child = spawn(process.execPath, [...args, '--print-limit', '0', '--no-color', '-o', out], { stdio: ['ignore', 'ignore', 'pipe'] });
  }
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const t0 = Date.now();
  while (!err.includes('capturing TLS plaintext')) {
    if (child.exitCode !== null || Date.now() - t0 > 30_000) throw new Error(`the helper (${v.name}, ${mode}) did not start:\n${err}`);
    await sleep(50);
  }
  let peak = 0;
  const sampler = setInterval(() => {
    try {
      peak = Math.max(peak, statusKiB(child.pid!, 'VmRSS'));
    } catch {
      // gone
    }
  }, 200);
  return {
    child,
    stderr: () => err,
    peak: () => peak / 1024,
    stop: async () => {
      clearInterval(sampler);
      try {
        peak = Math.max(peak, statusKiB(child.pid!, 'VmHWM'));
      } catch {
        // gone
      }
      if (mode === 'ipc') child.stdin!.end();
      else child.kill('SIGINT');
      await exited;
    },
  };
}

async function main(): Promise<void> {
  const opts = new Command('overload')
    .option('-d, --duration <s>', 'seconds of load per run', (v) => Number(v), 8)
    .option('-w, --workloads <names>', 'comma-separated, of large,post', 'large,post')
    .option('-m, --modes <names>', 'comma-separated, of ipc,text', 'ipc,text')
    .option('--variants <names>', 'comma-separated, of before,noshed,shed (before needs --before)', 'noshed,shed')
    .option('--before <cli.js>', "another build's dist/helper/cli.js: the variant 'before'")
    .option('--shed-fill <f>', 'the shed variant: --shed-fill (default: the helper default)')
    .option('--keep', 'keep the output files (they hold test traffic only)')
    .option('-o, --out <file>', 'also write the rows as JSON here')
    .parse()
    .opts<{ duration: number; workloads: string; modes: string; variants: string; before?: string; shedFill?: string; keep?: boolean; out?: string }>();
  const cli = path.join(PACKAGE_ROOT, 'dist', 'helper', 'cli.js');
  const all: Record<string, Variant> = {
    before: { name: 'before', cli: opts.before ? path.resolve(opts.before) : '', args: [] },
    noshed: { name: 'noshed', cli, args: ['--shed-fill', '1'] },
    shed: { name: 'shed', cli, args: opts.shedFill ? ['--shed-fill', opts.shedFill] : [] },
  };
  const variants = opts.variants.split(',').map((n) => {
    const v = all[n];
    if (!v || !v.cli) throw new Error(`unknown variant ${n} (before needs --before DIST/helper/cli.js)`);
    return v;
  });
  const dir = tmpDir('https-capture-overload-bench-');
  const nginx = await startBenchNginx(dir);
  const rows: Row[] = [];
  try {
    for (const wname of opts.workloads.split(',')) {
      const w = WORKLOADS.find((x) => x.name === wname);
      if (!w) throw new Error(`unknown workload ${wname}`);
      for (const mode of opts.modes.split(',') as Mode[]) {
        for (const v of variants) {
          const out = path.join(dir, `${w.name}-${mode}-${v.name}.out`);
          // Only this run's traffic: nginx and wrk on this port (other programs on the machine may use TLS too).
          const h = await startHelper(v, mode, out, ['--comm', 'nginx,wrk', '--port', String(nginx.port)]);
          await sleep(500);
          const req0 = nginx.requests();
          const load = await runLoad(w.argv(nginx.port, opts.duration, dir));
          await sleep(400); // nginx flushes its access log every 200 ms
          const requests = nginx.requests() - req0;
          await h.stop();
          const outputBytes = fs.statSync(out).size;
          let server: number;
          let client: number;
          let unanswered: number;
          let k: Record<string, number>;
          let dropped: number | undefined;
          if (mode === 'ipc') {
            const r = await countFrames(out);
            server = r.perPid.get(nginx.workerPid) ?? 0;
            client = r.perPid.get(load.pid) ?? 0;
            unanswered = r.unanswered.get(load.pid) ?? 0;
            k = r.kernel ?? {};
            dropped = r.writer?.dropped_bytes;
          } else {
            const r = await countText(out);
            server = r.perPid.get(nginx.workerPid) ?? 0;
            client = r.perPid.get(load.pid) ?? 0;
            unanswered = r.unanswered.get(load.pid) ?? 0;
            k = textCounters(h.stderr());
          }
          if (!opts.keep) fs.rmSync(out, { force: true });
          const row: Row = {
            workload: w.name,
            mode,
            variant: v.name,
            rps: load.requestsPerSec,
            requests,
            server,
            client,
            bothEnds: Math.min(server, client) / Math.max(1, requests),
            clientUnanswered: unanswered,
            bothEndsSettled: Math.min(server, client + unanswered) / Math.max(1, requests),
            ...(k.bytes_moved !== undefined ? { bytesMoved: k.bytes_moved } : {}),
            ...(k.bytes_captured !== undefined ? { bytesCaptured: k.bytes_captured } : {}),
            ...(k.bytes_shed !== undefined ? { bytesShed: k.bytes_shed } : {}),
            ...(k.bytes_lost !== undefined ? { bytesLost: k.bytes_lost } : {}),
            ...(dropped !== undefined ? { writerDropped: dropped } : {}),
            outputBytes,
            peakRssMiB: h.peak(),
          };
          rows.push(row);
          process.stderr.write(`${JSON.stringify(row)}\n`);
        }
      }
    }
  } finally {
    await nginx.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const mb = (x: number | undefined): string => (x === undefined ? '' : (x / 1e6).toFixed(0));
  const head = ['workload', 'mode', 'helper', 'req/s', 'nginx requests', 'exchanges nginx', 'exchanges wrk', 'both ends / requests', 'wrk: unanswered at its exit', 'both ends, end of run aside', 'MB moved', 'MB captured', 'MB shed', 'MB lost', 'MB dropped by writer', 'peak RSS MiB'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map((_h, i) => (i < 3 ? '---' : '---:')).join('|')}|`];
  for (const r of rows) {
    lines.push(
      `| ${[r.workload, r.mode, r.variant, r.rps.toFixed(0), r.requests, r.server, r.client, `${(100 * r.bothEnds).toFixed(2)} %`, r.clientUnanswered, `${(100 * r.bothEndsSettled).toFixed(2)} %`, mb(r.bytesMoved), mb(r.bytesCaptured), mb(r.bytesShed), mb(r.bytesLost), mb(r.writerDropped), r.peakRssMiB.toFixed(0)].join(' | ')} |`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  if (opts.out) fs.writeFileSync(opts.out, `${JSON.stringify({ when: new Date().toISOString(), argv: process.argv.slice(2), rows }, null, 1)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`overload: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
