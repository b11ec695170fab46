// bench.ts: `npm run bench`: what the capture costs the traced programs, measured against no
// capture and against the probe floor, and whether it loses anything. nginx (1 worker, TLS,
// 127.0.0.1) under wrk and h2load; for each workload, every mode in the same run: no capture,
// the probe floor, the helper for every process, targeted at nginx, and targeted elsewhere.
// Prints a table, writes it as markdown, JSON and a PNG chart (bench/results/), checks the
// targets of issue #8 and says which it misses. A script, never a test.
import { ChildProcess, execFileSync, spawn, spawnSync } from 'child_process';
import { Command } from 'commander';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CAPTURE_STATS, HostSummary, Mode, MODES, PACKAGE_ROOT, ProcAccount, startCapture, useHelper } from './lib/capture';
import { cpuSeconds, runLoad, Workload, WORKLOADS } from './lib/load';
import { startBenchNginx } from './lib/nginx';
import { tmpDir } from '../test/lib/servers';
import { countText, textCounters } from './lib/count';

interface Options {
  duration: number;
  workloads: string;
  modes: string;
  repeat: number;
  out: string;
  readme?: boolean;
  helper?: string;
}

interface Run {
  workload: string;
  mode: Mode;
  rps: number;
  /** CPU µs per request of nginx's worker and the load tool together. */
  cpuPerReq: number;
  requests: number;
  /**
   * Exchanges with their heads (request line and status, text: with headers) seen at both
   * captured ends (the lower of the two ends' counts) per request nginx logged.
   */
  exchanges?: number;
  /**
   * The client's connections whose last request was in flight when the load tool stopped (it
   * closes them without reading the answers nginx logged): at most one per connection. The
   * targets count them as seen: `exchanges` plus these per request.
   */
  inFlight?: number;
  delivered?: number;
  moved?: number;
  lost?: number;
  truncated?: number;
  /** Bytes shed under load: calls cut to their heads by the kernel, plus (text) what the renderer shed when it fell behind. */
  shed?: number;
  /** Bytes lost anywhere (ring buffer, writer queue), from the helper's bye. */
  lostAnywhere?: number;
  /** Calls whose bytes could not be taken at all (calls_missed), from the helper's bye. */
  callsMissed?: number;
  helperCpu?: number;
  helperCpuPer100MB?: number;
  /** CPU seconds of the Go host (apidump's side) per 100 MB delivered. */
  hostCpuPer100MB?: number;
  peakRssMiB?: number;
  errors?: string[];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** uprobe links held by processes other than this run's helpers: another capture would skew every number. */
function foreignProbes(): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const links = fs.readdirSync(`/proc/${e}/fd`).filter((fd) => fs.readlinkSync(`/proc/${e}/fd/${fd}`) === 'anon_inode:bpf_link').length;
      if (links) out.push(`${e} ${fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').replace(/\0/g, ' ').slice(0, 80)} (${links} links)`);
    } catch {
      // gone, or not ours to read
    }
  }
  return out;
}

function exchangesOf(p: ProcAccount | undefined, http2: boolean): number {
  if (!p) return 0;
  return http2 ? Math.min(p.h2_headers[0], p.h2_headers[1]) : Math.min(p.h1_request_lines, p.h1_status_lines);
}

async function runOne(w: Workload, mode: Mode, ctx: { port: number; worker: number; idle: number; dir: string; seconds: number; requests: () => number }): Promise<Run> {
  const cap = mode === 'none' ? undefined : await startCapture(mode, { nginx: ctx.worker, idle: ctx.idle }, ctx.dir);
  await sleep(500);
  const req0 = ctx.requests();
  const ng0 = cpuSeconds(ctx.worker);
  cap?.mark();
  const load = await runLoad(w.argv(ctx.port, ctx.seconds, ctx.dir));
  cap?.mark();
  const ngCpu = cpuSeconds(ctx.worker) - ng0;
  const fin = await cap?.finish();
  await sleep(400); // the access log is flushed every 200 ms
  const requests = ctx.requests() - req0;
  const run: Run = { workload: w.name, mode, rps: load.requestsPerSec, requests, cpuPerReq: ((ngCpu + load.cpuSeconds) * 1e6) / Math.max(1, requests) };
  if (!fin || mode === 'floor' || mode === 'others') {
    if (fin) Object.assign(run, { helperCpu: fin.cpuSeconds, peakRssMiB: fin.peakRssMiB });
    return run;
  }
  if (fin.text) return { ...run, ...(await textAccounts(fin.text, { worker: ctx.worker, client: load.pid, requests, cpuSeconds: fin.cpuSeconds })), helperCpu: fin.cpuSeconds, peakRssMiB: fin.peakRssMiB };
  const s: HostSummary = fin.summary!;
  const server = s.procs[String(ctx.worker)];
  const client = s.procs[String(load.pid)];
  const both = mode === 'system' ? [server, client] : [server];
  const sum = (f: (p: ProcAccount) => number): number => both.reduce((n, p) => n + (p ? f(p) : 0), 0);
  const seen = mode === 'system' ? Math.min(exchangesOf(server, w.http2), exchangesOf(client, w.http2)) : exchangesOf(server, w.http2);
  const delivered = Object.values(s.procs).reduce((n, p) => n + p.bytes[0] + p.bytes[1], 0);
  const k = s.bye?.Kernel ?? {};
  const wr = s.bye?.Writer ?? {};
  return {
    ...run,
    exchanges: seen / Math.max(1, requests),
    ...(mode === 'system' && !w.http2 && server && client ? { inFlight: Math.min(client.h1_unanswered ?? 0, Math.max(0, exchangesOf(server, false) - exchangesOf(client, false))) } : {}),
    delivered: sum((p) => p.bytes[0] + p.bytes[1]),
    moved: sum((p) => p.moved[0] + p.moved[1]),
    lost: sum((p) => p.lost_before),
    truncated: sum((p) => p.truncated),
    shed: sum((p) => p.shed ?? 0),
    lostAnywhere: (k.BytesLost ?? 0) + (k.BytesFaulted ?? 0) + (wr.DroppedBytes ?? 0),
    callsMissed: k.CallsMissed ?? 0,
    helperCpu: fin.cpuSeconds,
    helperCpuPer100MB: fin.cpuSeconds / Math.max(1e-9, delivered / 1e8),
    hostCpuPer100MB: fin.hostCpuSeconds / Math.max(1e-9, delivered / 1e8),
    peakRssMiB: fin.peakRssMiB,
    errors: s.errors ?? [],
  };
}

/**
 * The text mode's accounts: exchanges counted in its output, bytes from its closing counters
 * (every process: only nginx and the load talk TLS here); delivered: what reached the output.
 */
async function textAccounts(t: { file: string; stderr: string }, o: { worker: number; client: number; requests: number; cpuSeconds: number }): Promise<Partial<Run>> {
  const c = await countText(t.file);
  fs.rmSync(t.file, { force: true }); // test traffic, but large
  const k = textCounters(t.stderr);
  if (k.bytes_moved === undefined) throw new Error(`the text capture printed no closing counters:\n${t.stderr.slice(-2000)}`);
  const captured = k.bytes_captured ?? 0;
  const lost = k.bytes_lost ?? 0;
  return {
    exchanges: Math.min(c.perPid.get(o.worker) ?? 0, c.perPid.get(o.client) ?? 0) / Math.max(1, o.requests),
    inFlight: Math.min(c.unanswered.get(o.client) ?? 0, Math.max(0, (c.perPid.get(o.worker) ?? 0) - (c.perPid.get(o.client) ?? 0))),
    delivered: captured - (k.output_shed ?? 0),
    moved: k.bytes_moved,
    lost,
    lostAnywhere: lost,
    callsMissed: k.calls_missed ?? 0,
    shed: (k.bytes_shed ?? 0) + (k.output_shed ?? 0),
    helperCpuPer100MB: o.cpuSeconds / Math.max(1e-9, captured / 1e8),
  };
}

/** Means of the repeated runs of one workload and mode. */
function mean(runs: Run[]): Run {
  const avg = (f: (r: Run) => number | undefined): number | undefined => {
    const v = runs.map(f).filter((x): x is number => x !== undefined);
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : undefined;
  };
  const r: Run = { ...runs[0]!, rps: avg((x) => x.rps)!, cpuPerReq: avg((x) => x.cpuPerReq)!, requests: avg((x) => x.requests)! };
  for (const k of ['exchanges', 'inFlight', 'delivered', 'moved', 'helperCpu', 'helperCpuPer100MB', 'hostCpuPer100MB'] as const) r[k] = avg((x) => x[k]);
  // Losses and peaks: the worst of the runs, not an average.
  for (const k of ['lost', 'truncated', 'shed', 'lostAnywhere', 'peakRssMiB'] as const) {
    const v = runs.map((x) => x[k]).filter((x): x is number => x !== undefined);
    r[k] = v.length ? Math.max(...v) : undefined;
  }
  return r;
}

const pct = (x: number | undefined): string => (x === undefined ? '' : `${(100 * x).toFixed(x >= 0.9995 && x < 1 ? 2 : 1)} %`);
const num = (x: number | undefined, d = 0): string => (x === undefined ? '' : x.toFixed(d));

function table(rows: Run[]): string {
  const head = ['workload', 'mode', 'req/s', 'vs none', 'vs floor', 'CPU µs/req', 'exchanges, heads at both ends', 'bytes', 'bytes shed', 'lost bytes', 'helper CPU s/100 MB', 'host CPU s/100 MB', 'helper peak RSS MiB'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map((_h, i) => (i < 2 ? '---' : '---:')).join('|')}|`];
  for (const r of rows) {
    const none = rows.find((x) => x.workload === r.workload && x.mode === 'none');
    const floor = rows.find((x) => x.workload === r.workload && x.mode === 'floor');
    lines.push(
      `| ${[
        r.workload,
        r.mode,
        num(r.rps),
        none && r.mode !== 'none' ? (r.rps / none.rps).toFixed(2) : '',
        floor && !['none', 'floor'].includes(r.mode) ? (r.rps / floor.rps).toFixed(2) : '',
        num(r.cpuPerReq, 1),
        `${pct(r.exchanges)}${r.inFlight ? ` (+${num(r.inFlight)} in flight at the end)` : ''}`,
        r.moved ? pct((r.delivered ?? 0) / r.moved) : '',
        r.shed === undefined ? '' : `${r.shed}${r.moved ? ` (${pct(r.shed / r.moved)})` : ''}`,
        r.lost === undefined ? '' : `${r.lost}${r.lostAnywhere ? ` (${r.lostAnywhere} in all)` : ''}`,
        num(r.helperCpuPer100MB, 2),
        num(r.hostCpuPer100MB, 2),
        num(r.peakRssMiB),
      ].join(' | ')} |`,
    );
  }
  return lines.join('\n');
}

/** Exchanges at both ends per logged request, the requests in flight when the load stopped counted as seen. */
function settled(r: Run): number {
  return (r.exchanges ?? 0) + (r.inFlight ?? 0) / Math.max(1, r.requests);
}

/** The targets of issues #8 and #15, each with what was measured. */
function targets(rows: Run[]): { ok: boolean; text: string }[] {
  const out: { ok: boolean; text: string }[] = [];
  const get = (w: string, m: Mode): Run | undefined => rows.find((r) => r.workload === w && r.mode === m);
  const none = get('small', 'none');
  const floor = get('small', 'floor');
  const sys = get('small', 'system');
  const text = get('small', 'text');
  if (none && floor) out.push({ ok: floor.rps / none.rps > 0.65, text: `the probe floor on the 1 KiB load above 0.65 x no capture: ${(floor.rps / none.rps).toFixed(2)}` });
  if (none && sys) out.push({ ok: sys.rps / none.rps >= 0.6, text: `full capture (system) on the 1 KiB load at >= 0.6 x no capture: ${(sys.rps / none.rps).toFixed(2)}` });
  if (floor && sys) out.push({ ok: sys.rps / floor.rps >= 0.9, text: `... and >= 0.9 x the probe floor: ${(sys.rps / floor.rps).toFixed(2)}` });
  if (sys) {
    out.push({
      ok: (sys.lost ?? 1) === 0 && (sys.lostAnywhere ?? 1) === 0 && (sys.callsMissed ?? 1) === 0,
      text: `0 lost bytes at that saturating load: ${sys.lost} lost in nginx and the client, ${sys.lostAnywhere} in all, ${sys.callsMissed} calls missed`,
    });
    out.push({ ok: (sys.helperCpuPer100MB ?? 9) <= 0.2, text: `helper CPU <= 0.2 core-seconds per 100 MB: ${num(sys.helperCpuPer100MB, 3)}` });
    out.push({ ok: (sys.hostCpuPer100MB ?? 9) <= 0.25, text: `host (Go package) CPU <= 0.25 core-seconds per 100 MB: ${num(sys.hostCpuPer100MB, 3)}` });
  }
  if (none && text) {
    out.push({
      ok: text.rps / none.rps >= 0.4 && settled(text) >= 0.999,
      text: `text mode on the 1 KiB load at >= 0.4 x no capture with every exchange at both ends: ${(text.rps / none.rps).toFixed(2)}, ${pct(settled(text))}`,
    });
  }
  // Overload (issue #15): under saturating large responses and POSTs, bodies are shed, never exchanges.
  for (const r of rows.filter((x) => ['large', 'post'].includes(x.workload) && ['system', 'text'].includes(x.mode))) {
    out.push({ ok: settled(r) >= 0.999, text: `${r.workload} / ${r.mode}: >= 99.9 % of logged requests as exchanges with heads at both ends (those in flight when wrk stopped counted as seen): ${pct(settled(r))} (${r.shed ?? 0} bytes shed, ${r.lostAnywhere ?? 0} lost)` });
  }
  const peak = Math.max(...rows.map((r) => r.peakRssMiB ?? 0));
  if (peak > 0) out.push({ ok: peak < 200, text: `helper peak RSS < 200 MiB (every run): ${peak.toFixed(0)} MiB` });
  for (const r of rows.filter((x) => x.mode === 'others')) {
    const n = get(r.workload, 'none');
    if (n) out.push({ ok: r.rps / n.rps >= 0.95, text: `${r.workload}: processes that are not targets within 5 % of no capture: ${(r.rps / n.rps).toFixed(2)}` });
  }
  return out;
}

function chart(rows: Run[], png: string): string | undefined {
  const modes = MODES.map((m) => m.mode).filter((m) => m !== 'none' && rows.some((r) => r.mode === m));
  const workloads = [...new Set(rows.map((r) => r.workload))];
  const data = workloads
    .map((w) => {
      const none = rows.find((r) => r.workload === w && r.mode === 'none');
      return [w, ...modes.map((m) => {
        const r = rows.find((x) => x.workload === w && x.mode === m);
        return r && none ? (r.rps / none.rps).toFixed(3) : '0';
      })].join('\t');
    })
    .join('\n');
  const dat = `${png}.tsv`;
  fs.writeFileSync(dat, `${data}\n`);
  const script = [
    `set terminal pngcairo size 960,480 font "sans,11"`,
    `set output ${JSON.stringify(png)}`,
    `set title "requests/s relative to no capture (nginx, 1 worker, TLS, 127.0.0.1)"`,
    'set style data histograms',
    'set style histogram clustered gap 1',
    'set style fill solid 0.8 border -1',
    'set yrange [0:1.15]',
    'set grid ytics',
    'set key top right horizontal',
    'set ytics 0.1',
    `plot ${modes.map((m, i) => `${JSON.stringify(dat)} using ${i + 2}${i === 0 ? ':xtic(1)' : ''} title ${JSON.stringify(m)}`).join(', ')}, 1 notitle lc rgb "black" dt 2`,
  ].join('\n');
  try {
    execFileSync('gnuplot', [], { input: script, stdio: ['pipe', 'ignore', 'pipe'] });
    fs.rmSync(dat);
    return png;
  } catch (e) {
    process.stderr.write(`bench: no chart (gnuplot: ${(e as Error).message.split('\n')[0]}); scripts/setup.sh --bench installs gnuplot-nox\n`);
    return undefined;
  }
}

function machine(): string {
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown CPU';
  const ver = (cmd: string, args: string[]): string => {
    // nginx and wrk print their versions on stderr (wrk exits 1 after it).
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    return `${r.stdout ?? ''}${r.stderr ?? ''}`.split('\n')[0]!.trim() || `${cmd} (version unknown)`;
  };
  return `${os.cpus().length} × ${cpu}, Linux ${os.release()}, ${ver('/usr/sbin/nginx', ['-v'])}, ${ver('wrk', ['-v'])}, ${ver('h2load', ['--version'])}, node ${process.version}`;
}

async function main(): Promise<void> {
  const opts = new Command('npm run bench --')
    .description('Measures what https-capture costs nginx and its clients, against no capture and the probe floor, and what it loses.')
    .option('-d, --duration <s>', 'seconds of load per run', (v) => Number(v), 10)
    .option('-w, --workloads <names>', `comma-separated, of ${WORKLOADS.map((w) => w.name).join(',')}`, WORKLOADS.map((w) => w.name).join(','))
    .option('-m, --modes <names>', `comma-separated, of ${MODES.map((m) => m.mode).join(',')}`, MODES.map((m) => m.mode).join(','))
    .option('-r, --repeat <n>', 'runs of each workload and mode (means; losses and peaks: the worst)', (v) => Number(v), 1)
    .option('-o, --out <dir>', 'where the table, JSON and chart go', path.join(PACKAGE_ROOT, 'bench', 'results'))
    .option('--readme', "also put the table into README.md's benchmark section")
    .option('--helper <cli.js>', "another checkout's dist/helper/cli.js to measure (before/after tables); the floor needs --probe-floor in it")
    .parse(process.argv)
    .opts<Options>();
  const workloads = opts.workloads.split(',').map((n) => WORKLOADS.find((w) => w.name === n) ?? fail(`unknown workload ${n}`));
  const modes = opts.modes.split(',').map((n) => MODES.find((m) => m.mode === n)?.mode ?? fail(`unknown mode ${n}`));
  if (process.getuid?.() !== 0) fail('the bench attaches eBPF probes: run it as root');
  if (opts.helper) {
    if (!fs.existsSync(opts.helper)) fail(`no helper at ${opts.helper}`);
    useHelper(opts.helper);
  }
  if (!fs.existsSync(CAPTURE_STATS)) fail(`${CAPTURE_STATS} is missing: run npm run bench (scripts/setup.sh --bench builds it)`);
  const foreign = foreignProbes();
  if (foreign.length) process.stderr.write(`bench: WARNING: another capture holds uprobes; every number below pays for its probes too:\n  ${foreign.join('\n  ')}\n`);

  const dir = tmpDir('https-capture-bench-'); // removed at exit
  const nginx = await startBenchNginx(dir);
  // The target of 'others': a process with libssl mapped that makes no TLS call.
  const idle: ChildProcess = spawn('/usr/bin/python3', ['-c', 'import ssl, time; time.sleep(10**6)'], { stdio: 'ignore' });
  // Stopped by Ctrl-C or kill: nginx and the idle process go with the bench (a running capture
  // ends by itself: its host sees its stdin close).
  const interrupted = (sig: NodeJS.Signals): void => {
    process.stderr.write(`\nbench: ${sig}: stopping nginx\n`);
    idle.kill('SIGKILL');
    void nginx.stop().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  const rows: Run[] = [];
  try {
    await sleep(300);
    await runLoad(WORKLOADS[0]!.argv(nginx.port, 2, dir)); // warm-up
    const ctx = { port: nginx.port, worker: nginx.workerPid, idle: idle.pid!, dir, seconds: opts.duration, requests: nginx.requests };
    for (const w of workloads) {
      const runs = new Map<Mode, Run[]>();
      for (let i = 0; i < opts.repeat; i++) {
        // Modes interleaved within each repetition, so that drift of the machine falls on all.
        for (const m of modes) {
          process.stderr.write(`bench: ${w.name} / ${m}${opts.repeat > 1 ? ` (${i + 1}/${opts.repeat})` : ''} ...`);
          const r = await runOne(w, m, ctx);
          process.stderr.write(` ${r.rps.toFixed(0)} req/s${r.errors?.length ? `; host errors: ${r.errors.join('; ')}` : ''}\n`);
          runs.set(m, [...(runs.get(m) ?? []), r]);
        }
      }
      for (const m of modes) rows.push(mean(runs.get(m)!));
    }
  } finally {
    idle.kill('SIGKILL');
    await nginx.stop();
  }

  const when = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const cmd = `npm run bench -- --duration ${opts.duration}${opts.helper ? ` --helper ${opts.helper}` : ''}${opts.repeat > 1 ? ` --repeat ${opts.repeat}` : ''}${opts.workloads !== WORKLOADS.map((w) => w.name).join(',') ? ` --workloads ${opts.workloads}` : ''}${opts.modes !== MODES.map((m) => m.mode).join(',') ? ` --modes ${opts.modes}` : ''}`;
  const checks = targets(rows);
  const t = table(rows);
  const legend = [
    ...workloads.map((w) => `- **${w.name}**: ${w.what}`),
    ...MODES.filter((m) => modes.includes(m.mode)).map((m) => `- *${m.mode}*: ${m.what}`),
    '- *exchanges, heads at both ends*: exchanges whose request line and status (text: and headers) the host saw at both captured ends (the lower end\'s count), per request nginx logged, and the client\'s requests in flight when the load tool stopped (it closes its connections without reading the answers nginx logged; at most one per connection); *bytes*: bytes delivered to the host per byte the TLS calls moved (from the connections\' final offsets); *bytes shed*: bytes cut from calls under load (the kernel keeps each call\'s head, `--shed-head`) plus, in text, what the renderer shed when it fell behind, and their share of the bytes moved; *lost bytes*: in nginx and the client (and anywhere, from the helper\'s counters); *CPU µs/req*: nginx\'s worker and the load tool together; *host CPU*: the Go host of integrations/apidump reading and decoding the frames (apidump\'s side).',
  ].join('\n');
  const md = [
    `Made by \`${cmd}\` on ${when}: ${machine()}${foreign.length ? ' (**another capture was running: see the warning**)' : ''}.`,
    '',
    t,
    '',
    legend,
    '',
    'Targets (issues #8 and #15):',
    ...checks.map((c) => `- ${c.ok ? 'met' : '**not met**'}: ${c.text}`),
  ].join('\n');
  fs.mkdirSync(opts.out, { recursive: true });
  fs.writeFileSync(path.join(opts.out, 'latest.md'), `${md}\n`);
  fs.writeFileSync(path.join(opts.out, 'latest.json'), `${JSON.stringify({ when, command: cmd, machine: machine(), foreignProbes: foreign, rows }, null, 1)}\n`);
  const png = chart(rows, path.join(opts.out, 'latest.png'));
  process.stdout.write(`\n${t}\n\n${checks.map((c) => `${c.ok ? 'met      ' : 'NOT MET  '} ${c.text}`).join('\n')}\n\nwritten: ${path.join(opts.out, 'latest.md')}, latest.json${png ? ', latest.png' : ''}\n`);
  if (opts.readme) {
    const readme = path.join(PACKAGE_ROOT, 'README.md');
    const text = fs.readFileSync(readme, 'utf8');
    const start = '<!-- bench:start -->';
    const end = '<!-- bench:end -->';
    if (!text.includes(start) || !text.includes(end)) fail(`README.md has no ${start} ... ${end} section`);
    fs.writeFileSync(readme, `${text.slice(0, text.indexOf(start) + start.length)}\n${md}\n${text.slice(text.indexOf(end))}`);
  }
}

function fail(msg: string): never {
  process.stderr.write(`bench: ${msg}\n`);
  process.exit(2);
}

main().catch((e) => {
  process.stderr.write(`bench: ${(e as Error).message}\n`);
  process.exit(1);
});
