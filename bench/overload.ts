// overload.ts: `node dist/bench/overload.js`: does the capture keep every exchange when it cannot
// keep every byte? nginx (1 worker, TLS, 127.0.0.1) under wrk at saturation with 256 KiB
// responses and 64 KiB POSTs, both ends captured, the helper in --ipc mode (frames to a file)
// and in every standalone format (text, raw, jsonl, har, pcapng; --print-limit 0, to a file).
// For each run: req/s against a run without capture made just before (same workload, same
// run), how many of the requests nginx logged appear as exchanges with request line, status
// and headers at both ends (nginx's worker and wrk; text, jsonl, har and --ipc: raw and pcapng
// keep calls, not exchanges), the kernel's books (bytes moved, shed, lost), the helper's CPU
// seconds and its peak RSS. `npm run bench:overload`. Variants, all in
// the same run so that their ratios compare: the helper without shedding (--shed-fill 1), with
// it (the defaults), and optionally another build (--before DIST_CLI, e.g. the commit before
// shedding). A script, never a test.
import { Command } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { runLoad, WORKLOADS } from './lib/load';
import { startBenchNginx } from './lib/nginx';
import { HelperProcess, nodeFlagsOf, PACKAGE_ROOT, startHelperProcess } from './lib/capture';
import { tmpDir } from '../test/lib/servers';
import { countFrames, countHar, countJsonl, countText, textCounters } from './lib/count';

type Mode = 'ipc' | 'text' | 'raw' | 'jsonl' | 'har' | 'pcapng';
const MODES: Mode[] = ['ipc', 'text', 'raw', 'jsonl', 'har', 'pcapng'];

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
  /** rps / the rps of the run without capture just before. */
  ratio: number;
  /** CPU seconds (user + system) of the helper, start to stop. */
  helperCpuS: number;
  /** Requests nginx logged during the load. */
  requests: number;
  /** Exchanges with request line, status and headers, of nginx's worker and of wrk (raw, pcapng: not counted). */
  server?: number;
  client?: number;
  /** min(server, client) / requests. */
  bothEnds?: number;
  /**
   * wrk's connections whose last exchange is a request without a response: in flight when wrk
   * stopped at the end of the run (it closes its connections then; nginx logged the answer wrk
   * never read). At most one per connection.
   */
  clientUnanswered?: number;
  /** min(server, client + clientUnanswered) / requests: both ends, the end of the run aside. */
  bothEndsSettled?: number;
  /** Bytes the standalone command shed because its output fell behind (formats/shed.ts). */
  outputShed?: number;
  bytesMoved?: number;
  bytesCaptured?: number;
  bytesShed?: number;
  bytesLost?: number;
  writerDropped?: number;
  outputBytes: number;
  peakRssMiB: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function startHelper(v: Variant, mode: Mode, out: string, filter: string[], wrap: string[]): Promise<HelperProcess> {
  return startHelperProcess({ argv: [...nodeFlagsOf(v.cli), v.cli, ...filter, ...v.args], mode, out, wrap, name: v.name });
}

async function main(): Promise<void> {
  const opts = new Command('overload')
    .option('-d, --duration <s>', 'seconds of load per run', (v) => Number(v), 8)
    .option('-w, --workloads <names>', 'comma-separated, of large,post', 'large,post')
    .option('-m, --modes <names>', `comma-separated, of ${MODES.join(',')}`, MODES.join(','))
    .option('--variants <names>', 'comma-separated, of before,noshed,shed (before needs --before)', 'shed')
    .option('--before <cli.js>', "another build's dist/helper/cli.js: the variant 'before'")
    .option('--shed-fill <f>', 'the shed variant: --shed-fill (default: the helper default)')
    .option('--keep', 'keep the output files (they hold test traffic only)')
    .option('--args <args>', 'more arguments for the helper of every variant (space-separated, e.g. "--ring-size 16777216")')
    .option('--wrap <command>', 'run the helper under this command (space-separated, e.g. "env MALLOC_ARENA_MAX=1" or "heaptrack -o FILE")')
    .option('-o, --out <file>', 'also write the rows as JSON here')
    .parse()
    .opts<{ duration: number; workloads: string; modes: string; variants: string; before?: string; shedFill?: string; keep?: boolean; args?: string; wrap?: string; out?: string }>();
  const cli = path.join(PACKAGE_ROOT, 'dist', 'helper', 'cli.js');
  const all: Record<string, Variant> = {
    before: { name: 'before', cli: opts.before ? path.resolve(opts.before) : '', args: [] },
    noshed: { name: 'noshed', cli, args: ['--shed-fill', '1'] },
    shed: { name: 'shed', cli, args: opts.shedFill ? ['--shed-fill', opts.shedFill] : [] },
  };
  const extra = (opts.args ?? '').split(' ').filter(Boolean);
  const variants = opts.variants.split(',').map((n) => {
    const v = all[n];
    if (!v || !v.cli) throw new Error(`unknown variant ${n} (before needs --before DIST/helper/cli.js)`);
    return { ...v, args: [...v.args, ...extra] };
  });
  const dir = tmpDir('https-capture-overload-bench-');
  const nginx = await startBenchNginx(dir);
  const rows: Row[] = [];
  try {
    for (const wname of opts.workloads.split(',')) {
      const w = WORKLOADS.find((x) => x.name === wname);
      if (!w) throw new Error(`unknown workload ${wname}`);
      for (const mode of opts.modes.split(',') as Mode[]) {
        if (!MODES.includes(mode)) throw new Error(`unknown mode ${mode}`);
        // The same load with no capture, just before: what the ratios are taken against.
        const base = await runLoad(w.argv(nginx.port, opts.duration, dir));
        process.stderr.write(`${w.name}: no capture ${base.requestsPerSec} req/s\n`);
        for (const v of variants) {
          const out = path.join(dir, `${w.name}-${mode}-${v.name}.out`);
          // Only this run's traffic: nginx and wrk on this port (other programs on the machine may use TLS too).
          const h = await startHelper(v, mode, out, ['--comm', 'nginx,wrk', '--port', String(nginx.port)], opts.wrap ? opts.wrap.split(' ').filter(Boolean) : []);
          await sleep(500);
          const req0 = nginx.requests();
          const load = await runLoad(w.argv(nginx.port, opts.duration, dir));
          await sleep(400); // nginx flushes its access log every 200 ms
          const requests = nginx.requests() - req0;
          await h.stop();
          const outputBytes = fs.statSync(out).size;
          let server: number | undefined;
          let client: number | undefined;
          let unanswered: number | undefined;
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
            const r = mode === 'text' ? await countText(out) : mode === 'jsonl' ? await countJsonl(out) : mode === 'har' ? await countHar(out) : undefined;
            if (r) {
              server = r.perPid.get(nginx.workerPid) ?? 0;
              client = r.perPid.get(load.pid) ?? 0;
              unanswered = r.unanswered.get(load.pid) ?? 0;
            }
            k = textCounters(h.stderr());
          }
          if (!opts.keep) fs.rmSync(out, { force: true });
          const counted = server !== undefined && client !== undefined;
          const row: Row = {
            workload: w.name,
            mode,
            variant: v.name,
            rps: load.requestsPerSec,
            ratio: load.requestsPerSec / base.requestsPerSec,
            helperCpuS: h.cpu(),
            requests,
            ...(counted
              ? {
                  server,
                  client,
                  bothEnds: Math.min(server!, client!) / Math.max(1, requests),
                  clientUnanswered: unanswered ?? 0,
                  bothEndsSettled: Math.min(server!, client! + (unanswered ?? 0)) / Math.max(1, requests),
                }
              : {}),
            ...(k.bytes_moved !== undefined ? { bytesMoved: k.bytes_moved } : {}),
            ...(k.bytes_captured !== undefined ? { bytesCaptured: k.bytes_captured } : {}),
            ...(k.bytes_shed !== undefined ? { bytesShed: k.bytes_shed } : {}),
            ...(k.output_shed !== undefined ? { outputShed: k.output_shed } : {}),
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
    // --keep: the outputs stay (test traffic only), with the directory that holds them.
    if (opts.keep) process.stderr.write(`overload: outputs kept in ${dir}\n`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
  const mb = (x: number | undefined): string => (x === undefined ? '' : (x / 1e6).toFixed(0));
  const pct = (x: number | undefined): string => (x === undefined ? 'n/a' : `${(100 * x).toFixed(2)} %`);
  const head = ['workload', 'mode', 'helper', 'req/s', 'req/s ratio', 'nginx requests', 'exchanges nginx', 'exchanges wrk', 'both ends / requests', 'both ends, end of run aside', 'MB moved', 'MB captured', 'MB shed (kernel)', 'MB shed (output behind)', 'MB lost', 'helper CPU s', 'peak RSS MiB'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map((_h, i) => (i < 3 ? '---' : '---:')).join('|')}|`];
  for (const r of rows) {
    lines.push(
      `| ${[r.workload, r.mode, r.variant, r.rps.toFixed(0), r.ratio.toFixed(2), r.requests, r.server ?? 'n/a', r.client ?? 'n/a', pct(r.bothEnds), pct(r.bothEndsSettled), mb(r.bytesMoved), mb(r.bytesCaptured), mb(r.bytesShed), mb(r.outputShed), mb(r.bytesLost), r.helperCpuS.toFixed(1), r.peakRssMiB.toFixed(0)].join(' | ')} |`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  if (opts.out) fs.writeFileSync(opts.out, `${JSON.stringify({ when: new Date().toISOString(), argv: process.argv.slice(2), rows }, null, 1)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`overload: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
