// soak.ts: `npm run soak [-- --minutes N]`: the helper in --ipc mode, read by a host (HelperHost),
// under mixed HTTPS traffic with process churn for N minutes (default 10): curl, python, node and
// wget clients, each a new process, on new and keep-alive connections, small and large bodies, to
// nginx (reloaded now and then: its workers change), a python and a node server, plus one
// connection kept alive for the whole run. Prints a table of the helper's memory over time (it
// must stay flat) and the loss (it must be zero): the bye frame's exact counters, every
// connection's offsets, and the bytes each client says it sent and received against the bytes
// captured for it and for its server. A script, not a test: it runs for minutes.
import { ChildProcess, spawn } from 'child_process';
import { Command, InvalidArgumentError } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { ByeFrame, StatsFrame } from '../helper/protocol/generated';
import { HelperHost } from '../helper/host/host';
import { makeCert, NginxServer, run, Server, startNginx, startPyServer, startServer, stopAll, freePort, testLibFile, tmpDir } from '../test/lib/servers';
import { cpuSeconds, statusKiB } from '../test/lib/procfs';

const CLI = path.resolve(__dirname, '..', 'helper', 'cli.js');
const PY_CLIENT = path.resolve(__dirname, '..', '..', 'bench', 'soak-client.py');
const NODE_CLIENT = path.resolve(__dirname, 'soak-client.js');
const MiB = 1 << 20;

interface Options {
  minutes: number;
  sampleSeconds?: number;
  workers: number;
  reloadSeconds: number;
  seed: number;
}

/** What one client process says it moved, in plaintext. */
interface Truth {
  pid: number;
  /** Unix ns of its spawn and of its exit: pids are reused, a connection is its if opened between. */
  from: bigint;
  to: bigint;
  job: string;
  /** The server port it talked to. */
  port: number;
  sent: number;
  received: number;
}

const positive = (name: string) => (v: string): number => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive number`);
  return n;
};

// mulberry32: a tiny seeded PRNG, so one seed gives one mix of jobs (Math.random cannot be seeded).
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function status(pid: number): { rss: number; anon: number } {
  return { rss: statusKiB(pid, 'VmRSS'), anon: statusKiB(pid, 'RssAnon') };
}

const mib = (b: number): string => (b / MiB).toFixed(1);

async function main(opts: Options): Promise<number> {
  const seconds = opts.minutes * 60;
  const sampleS = opts.sampleSeconds ?? Math.max(5, Math.round(seconds / 20));
  const dir = tmpDir('https-capture-soak-');
  const cert = await makeCert(dir);
  const files: Record<string, Buffer> = { 's.bin': Buffer.alloc(1024, 'a'), 'm.bin': Buffer.alloc(64 * 1024, 'b'), 'l.bin': Buffer.alloc(MiB, 'c') };
  const nginx: NginxServer = await startNginx({ dir: path.join(dir, 'nginx'), files, cert, workers: 2 });
  const py: Server = await startPyServer({ dir, ...cert });
  const nodePort = await freePort();
  const nodeSrv: Server = await startServer(process.execPath, [testLibFile('node_tls.js'), 'server', String(nodePort), cert.cert, cert.key], nodePort, dir);
  const ports = [nginx.port, py.port, nodeSrv.port];
  const postBody = path.join(dir, 'post.bin');
  fs.writeFileSync(postBody, Buffer.alloc(200 * 1024, 'p'));

  // The helper, as apidump runs it: only our servers' connections (other traffic on this
  // machine is not ours to count).
  const host = new HelperHost({ command: process.execPath, args: [CLI, '--ipc', '--port', ports.join(',')] });
  // Every connection, with the bytes delivered for it (pids are reused over minutes: a client
  // process owns the connections of its pid opened while it lived).
  const conns = new Map<string, { pid: number; ts: bigint; bytes: [number, number] }>();
  const serverSide = new Map<string, number>(); // pid:conn_id -> the server port, for the servers' own connections
  const serverBytes = new Map<number, [number, number]>(); // server port -> [egress, ingress]
  const next = new Map<string, bigint>(); // pid:conn_id:dir -> offset after the last segment
  let gaps = 0n;
  let segments = 0;
  let connections = 0;
  let exchanges = 0;
  let attachments = 0;
  let lastStats: StatsFrame | undefined;
  let bye: ByeFrame | undefined;
  const problems: string[] = [];
  host.on('conn_open', (o) => {
    connections++;
    conns.set(`${o.pid}:${o.conn_id}`, { pid: o.pid, ts: o.ts_ns, bytes: [0, 0] });
    if (o.role === 'server' && ports.includes(o.local_port)) serverSide.set(`${o.pid}:${o.conn_id}`, o.local_port);
  });
  host.on('segment', (s) => {
    segments++;
    const k = `${s.pid}:${s.conn_id}:${s.dir}`;
    const at = next.get(k) ?? 0n;
    if (s.seq !== at) gaps += s.seq > at ? s.seq - at : at - s.seq;
    next.set(k, s.seq + BigInt(s.data.length));
    const c = conns.get(`${s.pid}:${s.conn_id}`);
    if (c) c.bytes[s.dir] += s.data.length;
    else problems.push(`a segment of pid ${s.pid} conn ${s.conn_id} before its conn_open`);
    const port = serverSide.get(`${s.pid}:${s.conn_id}`);
    if (port !== undefined) {
      const b = serverBytes.get(port) ?? [0, 0];
      b[s.dir] += s.data.length;
      serverBytes.set(port, b);
    }
  });
  host.on('conn_close', (c) => {
    for (const [dir, end] of [[0, c.egress_end], [1, c.ingress_end]] as const) {
      const k = `${c.pid}:${c.conn_id}:${dir}`;
      const at = next.get(k) ?? 0n;
      if (end !== at) gaps += end > at ? end - at : at - end;
      next.delete(k);
    }
    serverSide.delete(`${c.pid}:${c.conn_id}`);
  });
  host.on('exchange', () => exchanges++);
  host.on('process', (p) => {
    if (p.state === 'attached') attachments++;
  });
  host.on('stats', (s) => (lastStats = s));
  host.on('bye', (b) => (bye = b));
  host.on('error', (e) => problems.push(`error frame ${e.code}: ${e.message}`));
  host.on('protocol_error', (e) => problems.push(`protocol: ${e.message}`));
  const hello = await host.ready;
  const helperPid = hello.pid;
  for (let i = 0; !host.stderr.includes('capturing TLS plaintext'); i++) {
    if (i > 300) throw new Error(`the helper did not start capturing; its stderr:\n${host.stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  host.configure({ stats_interval_ms: 1000 });

  // ---- the traffic ----------------------------------------------------------------------
  const truths: Truth[] = [];
  const failures: string[] = [];
  const counts = new Map<string, number>();
  const base = (port: number): string => `https://127.0.0.1:${port}`;
  const nowNs = (): bigint => BigInt(Date.now()) * 1_000_000n;
  /** Runs a client, with the time span it lived in. */
  const timed = async (cmd: string, args: string[]): Promise<Awaited<ReturnType<typeof run>> & { from: bigint; to: bigint }> => {
    let from = nowNs();
    const r = await run(cmd, args, { onSpawn: () => (from = nowNs()) });
    return { ...r, from, to: nowNs() };
  };
  const curlJob = (name: string, port: number, urls: string[], extra: string[] = []) => async (): Promise<void> => {
    const args = ['-sS', '-k', '--http1.1', '--noproxy', '*', '-H', 'Expect:', '-w', '%{size_request} %{size_upload} %{size_header} %{size_download}\\n', ...extra];
    for (const u of urls) args.push('-o', '/dev/null', `${base(port)}${u}`);
    const r = await timed('curl', args);
    if (r.code !== 0) throw new Error(`curl exited ${r.code}: ${r.stderr.toString().trim()}`);
    const rows = r.stdout.toString().trim().split('\n').map((l) => l.split(' ').map(Number));
    truths.push({ pid: r.pid, from: r.from, to: r.to, job: name, port, sent: rows.reduce((n, x) => n + x[0]! + x[1]!, 0), received: rows.reduce((n, x) => n + x[2]! + x[3]!, 0) });
  };
  const pyJob = (name: string, count: number, method: string, urlPath: string, bodyBytes: number) => async (): Promise<void> => {
    const r = await timed('python3', [PY_CLIENT, String(py.port), String(count), method, urlPath, String(bodyBytes)]);
    const m = /^SENT (\d+) RECEIVED (\d+)/m.exec(r.stdout.toString());
    if (r.code !== 0 || !m) throw new Error(`soak-client.py exited ${r.code}: ${r.stderr.toString().trim()}`);
    truths.push({ pid: r.pid, from: r.from, to: r.to, job: name, port: py.port, sent: Number(m[1]), received: Number(m[2]) });
  };
  const nodeJob = (name: string, size: number, count: number) => async (): Promise<void> => {
    const r = await timed(process.execPath, [NODE_CLIENT, String(nodeSrv.port), String(size), String(count)]);
    const m = /^SENT (\d+) RECEIVED (\d+)/m.exec(r.stdout.toString());
    if (r.code !== 0 || !m) throw new Error(`soak-client.js exited ${r.code}: ${r.stderr.toString().trim()}`);
    truths.push({ pid: r.pid, from: r.from, to: r.to, job: name, port: nodeSrv.port, sent: Number(m[1]), received: Number(m[2]) });
  };
  let wgetN = 0;
  const wgetJob = (name: string, urlPath: string) => async (): Promise<void> => {
    const out = path.join(dir, `wget-${wgetN++}.out`);
    const r = await timed('wget', ['-d', '--no-check-certificate', '--no-proxy', '--save-headers', '-O', out, `${base(nginx.port)}${urlPath}`]);
    if (r.code !== 0) throw new Error(`wget exited ${r.code}: ${r.stderr.toString().trim().split('\n').slice(-3).join(' | ')}`);
    // -d prints each request exactly as sent; --save-headers keeps the response head in the file.
    const sent = [...r.stderr.toString('latin1').matchAll(/---request begin---\n([^]*?)---request end---/g)].reduce((n, m) => n + m[1]!.length, 0);
    truths.push({ pid: r.pid, from: r.from, to: r.to, job: name, port: nginx.port, sent, received: fs.statSync(out).size });
    fs.rmSync(out);
  };
  const jobs: { name: string; weight: number; run: () => Promise<void> }[] = [
    { name: 'curl GET 1 KiB (nginx)', weight: 4, run: curlJob('curl GET 1 KiB (nginx)', nginx.port, ['/s.bin']) },
    { name: 'curl 4 GETs keep-alive (nginx)', weight: 2, run: curlJob('curl 4 GETs keep-alive (nginx)', nginx.port, ['/s.bin', '/m.bin', '/s.bin', '/m.bin']) },
    { name: 'curl GET 1 MiB (nginx)', weight: 1, run: curlJob('curl GET 1 MiB (nginx)', nginx.port, ['/l.bin']) },
    { name: 'curl POST 200 KiB (python echo)', weight: 1, run: curlJob('curl POST 200 KiB (python echo)', py.port, ['/echo'], ['--data-binary', `@${postBody}`]) },
    { name: 'python 3 GETs keep-alive', weight: 2, run: pyJob('python 3 GETs keep-alive', 3, 'GET', '/bytes/5000', 0) },
    { name: 'python POST 64 KiB echo', weight: 1, run: pyJob('python POST 64 KiB echo', 1, 'POST', '/echo', 64 * 1024) },
    { name: 'node 5 GETs of 20 KiB keep-alive', weight: 2, run: nodeJob('node 5 GETs of 20 KiB keep-alive', 20 * 1024, 5) },
    { name: 'wget GET 64 KiB (nginx, GnuTLS)', weight: 1, run: wgetJob('wget GET 64 KiB (nginx, GnuTLS)', '/m.bin') },
  ];
  const totalWeight = jobs.reduce((n, j) => n + j.weight, 0);
  const random = prng(opts.seed);
  const pick = (): (typeof jobs)[number] => {
    let x = random() * totalWeight;
    for (const j of jobs) if ((x -= j.weight) < 0) return j;
    return jobs[jobs.length - 1]!;
  };

  // One connection kept alive for the whole run: a request every second.
  const longFrom = nowNs();
  const long: ChildProcess = spawn('python3', [PY_CLIENT, String(py.port), '0', 'GET', '/bytes/2000', '0', '1'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let longOut = '';
  long.stdout!.on('data', (b: Buffer) => (longOut += b.toString()));
  const longDone = new Promise<void>((resolve) => long.once('exit', () => resolve()));

  const t0 = Date.now();
  const deadline = t0 + seconds * 1000;
  const worker = async (): Promise<void> => {
    while (Date.now() < deadline) {
      const j = pick();
      try {
        await j.run();
        counts.set(j.name, (counts.get(j.name) ?? 0) + 1);
      } catch (e) {
        failures.push(`${j.name}: ${(e as Error).message}`);
      }
    }
  };
  const reloader = setInterval(() => process.kill(nginx.pid, 'SIGHUP'), opts.reloadSeconds * 1000); // new nginx workers

  // ---- the table --------------------------------------------------------------------------
  const rows: string[] = [];
  const print = (line: string): void => {
    rows.push(line);
    process.stdout.write(`${line}\n`);
  };
  print('| time | load (1 min) | helper RSS MiB | anon MiB | helper CPU s | client processes | connections (both ends) | segments | files attached | MiB captured (kernel) | bytes lost (kernel + writer) | gaps (host) |');
  print('|---|---|---|---|---|---|---|---|---|---|---|---|');
  const sample = (): void => {
    const st = status(helperPid);
    const k = lastStats?.kernel;
    const lost = (k ? k.bytes_lost + k.bytes_faulted : 0) + (lastStats?.writer.dropped_bytes ?? 0);
    const t = Math.round((Date.now() - t0) / 1000);
    print(
      `| ${Math.floor(t / 60)}:${String(t % 60).padStart(2, '0')} | ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0]} | ${mib(st.rss * 1024)} | ${mib(st.anon * 1024)} | ${cpuSeconds(helperPid).toFixed(1)} | ${truths.length} | ${connections} | ${segments} | ${attachments} | ${mib(k?.bytes_captured ?? 0)} | ${lost} | ${gaps} |`,
    );
    rss.push(st.rss);
  };
  const rss: number[] = [];
  sample();
  const sampler = setInterval(sample, sampleS * 1000);
  await Promise.all(Array.from({ length: opts.workers }, worker));
  clearInterval(reloader);
  clearInterval(sampler);
  long.stdin!.end();
  await longDone;
  const lm = /^SENT (\d+) RECEIVED (\d+) REQUESTS (\d+)/m.exec(longOut);
  if (lm && long.pid) truths.push({ pid: long.pid, from: longFrom, to: nowNs(), job: 'python keep-alive for the whole run', port: py.port, sent: Number(lm[1]), received: Number(lm[2]) });
  else failures.push(`the long-lived client: ${longOut}`);
  // Every client has exited: its segments are in; give the servers' last ones a moment.
  await new Promise((r) => setTimeout(r, 3000));
  sample();

  const cpu = cpuSeconds(helperPid);
  const final = await host.close(30_000);
  if (!final || !bye) throw new Error(`no bye from the helper; its stderr:\n${host.stderr}`);
  await stopAll(); // (dir goes at exit: tmpDir)

  // ---- the books ----------------------------------------------------------------------------
  let mismatched = 0;
  let mismatchBytes = 0;
  const serverTruth = new Map<number, [number, number]>();
  const byPid = new Map<number, { ts: bigint; bytes: [number, number] }[]>();
  for (const c of conns.values()) byPid.set(c.pid, [...(byPid.get(c.pid) ?? []), c]);
  const SLACK = 1_000_000_000n; // clocks: the kernel's wall time vs Date.now(); a pid is reused far later
  for (const t of truths) {
    const c: [number, number] = [0, 0];
    for (const x of byPid.get(t.pid) ?? []) {
      if (x.ts < t.from - SLACK || x.ts > t.to + SLACK) continue;
      c[0] += x.bytes[0];
      c[1] += x.bytes[1];
    }
    const off = Math.abs(c[0] - t.sent) + Math.abs(c[1] - t.received);
    if (off) {
      mismatched++;
      mismatchBytes += off;
      if (mismatched <= 10) problems.push(`${t.job} pid ${t.pid}: sent ${t.sent} received ${t.received}, captured ${c[0]} / ${c[1]}`);
    }
    const s = serverTruth.get(t.port) ?? [0, 0];
    s[0] += t.received; // what the server wrote is what its clients read
    s[1] += t.sent;
    serverTruth.set(t.port, s);
  }
  const k = bye.kernel;
  const delivered = [...conns.values()].reduce((n, c) => n + c.bytes[0] + c.bytes[1], 0);
  const lost = k.bytes_lost + k.bytes_faulted + bye.writer.dropped_bytes;
  const out: string[] = [];
  const say = (s: string): void => void out.push(s);
  say('');
  say(`${truths.length} client processes in ${opts.minutes} min (${opts.workers} at a time; nginx reloaded every ${opts.reloadSeconds} s), ${connections} connections, ${exchanges} HTTP exchanges rebuilt by the host:`);
  for (const j of jobs) say(`  ${String(counts.get(j.name) ?? 0).padStart(6)}  ${j.name}`);
  say(`  ${String(lm ? Number(lm[3]) : 0).padStart(6)}  requests on one python connection kept alive for the whole run`);
  say(`failed client runs: ${failures.length}${failures.length ? ` (${failures.slice(0, 5).join('; ')})` : ''}`);
  say(`bye: ${JSON.stringify(k)}; writer ${JSON.stringify(bye.writer)}`);
  say(`loss: kernel ${k.bytes_lost} bytes lost, ${k.bytes_faulted} unreadable, ${k.events_lost} events lost, ${k.calls_missed ?? 0} calls missed; writer ${bye.writer.dropped_bytes} bytes dropped; host gaps ${gaps} bytes`);
  if (lost > 0) {
    say(
      `  (the counters are exact; the host sees ${gaps} of those bytes as gaps: a connection of which every record was dropped, ` +
        'or whose end was, leaves nothing to place a gap in; the loss frames still carry its bytes)',
    );
  }
  say(`bytes: kernel captured ${k.bytes_captured}, moved ${k.bytes_moved}; the host received ${delivered} in segments (${delivered === k.bytes_captured - bye.writer.dropped_bytes ? 'equal' : 'NOT equal'})`);
  say(`clients: ${truths.length - mismatched} of ${truths.length} captured exactly as they counted their own bytes (sent and received)${mismatched ? `; ${mismatched} differ by ${mismatchBytes} bytes` : ''}`);
  for (const [port, [w, r]] of serverTruth) {
    const c = serverBytes.get(port) ?? [0, 0];
    const name = port === nginx.port ? 'nginx' : port === py.port ? 'python server' : 'node server';
    say(`  ${name}: wrote ${c[0]} (its clients read ${w}), read ${c[1]} (its clients sent ${r})${c[0] === w && c[1] === r ? ', equal' : ', NOT equal'}`);
    if (c[0] !== w || c[1] !== r) problems.push(`${name}: captured ${c[0]}/${c[1]}, clients say ${w}/${r}`);
  }
  const warm = rss.slice(Math.min(2, rss.length - 1));
  const half = warm.slice(Math.floor(warm.length / 2));
  say(
    `helper RSS: ${mib(rss[0]! * 1024)} MiB at start; after warm-up ${mib(Math.min(...warm) * 1024)}..${mib(Math.max(...warm) * 1024)} MiB; ` +
      `second half ${mib(Math.min(...half) * 1024)}..${mib(Math.max(...half) * 1024)} MiB; helper CPU ${cpu.toFixed(1)} s`,
  );
  for (const p of problems) say(`problem: ${p}`);
  const ok = lost === 0 && gaps === 0n && mismatched === 0 && failures.length === 0 && problems.length === 0 && k.events_lost === 0;
  say(ok ? 'verdict: no loss; every client byte accounted for' : 'verdict: LOSS OR MISMATCH (see above)');
  process.stdout.write(`${out.join('\n')}\n`);
  return ok ? 0 : 1;
}

const cmd = new Command('soak')
  .description('Mixed HTTPS traffic with process churn through the helper in --ipc mode; RSS over time and loss.')
  .option('--minutes <n>', 'how long to run', positive('--minutes'), 10)
  .option('--sample-seconds <n>', 'a table row this often (default: 20 rows)', positive('--sample-seconds'))
  .option('--workers <n>', 'client processes at a time', positive('--workers'), 2)
  .option('--reload-seconds <n>', 'reload nginx (new workers) this often', positive('--reload-seconds'), 120)
  .option('--seed <n>', 'seed of the job mix', positive('--seed'), 1)
  .parse(process.argv);

main(cmd.opts<Options>()).then(
  (code) => process.exit(code),
  async (e: unknown) => {
    process.stderr.write(`soak: ${e instanceof Error ? e.message : String(e)}\n`);
    await stopAll();
    process.exit(2);
  },
);
