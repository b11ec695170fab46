// first-run.ts: how often the first process to use a TLS file never seen before is captured
// from its first request (issue #18 item 5), and how long the helper takes to attach.
//
//   npm run bench:first-run [-- -n 50 --only libssl|go|go-rebuilt]
//
// Three scenarios, each N tries, against one nginx over TLS on 127.0.0.1 and one --ipc helper
// started before them (system-wide, the default mode):
//   libssl      a fresh copy of libssl.so.3 (new inode, same build) loaded by a new curl
//               through LD_LIBRARY_PATH;
//   go          a fresh copy of a Go client (new inode, same build id) run once;
//   go-rebuilt  a Go client rebuilt with another -X value each try (new build id: nothing of
//               an earlier plan can be reused).
// A try counts as captured when the helper's segments of that pid hold the request line.
// Prints a table; -o FILE writes the rows as JSON. Needs root, go, curl and nginx.
import { spawnSync } from 'child_process';
import { Command } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { HelperHost } from '../helper/host/host';
import { ProcessFrame, SegmentFrame } from '../helper/protocol/generated';
import { run, startNginx, stopAll, testLibFile, tmpDir, waitFor } from '../test/lib/servers';
import { CLI } from '../test/lib/paths';
import { nodeFlagsOf } from './lib/capture';

interface Row {
  scenario: string;
  tries: number;
  captured: number;
  /** ms from the spawn of the try's process to the helper's process frame for its new file. */
  attachMs: number[];
  missed: number[];
}

const LIBSSL = '/lib/x86_64-linux-gnu/libssl.so.3';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)]! : NaN;
}

function goBuild(dir: string, out: string, value: string): void {
  const src = path.dirname(testLibFile('gotls/main.go'));
  const env = { ...process.env, HOME: dir, GOCACHE: path.join(dir, 'gocache'), GOPATH: path.join(dir, 'gopath'), GOFLAGS: '-mod=mod', GOPROXY: 'off', CGO_ENABLED: '0' };
  const r = spawnSync('go', ['build', '-o', out, `-ldflags=-X main.buildTag=${value}`, '.'], { cwd: src, env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`go build failed: ${r.stderr}${r.error ?? ''}`);
}

async function main(): Promise<void> {
  const opts = new Command()
    .option('-n, --tries <n>', 'tries per scenario', '50')
    .option('--only <scenario>', 'libssl, go or go-rebuilt')
    .option('-o, --output <file>', 'write the rows as JSON')
    .option('--cli <path>', "another build's dist/helper/cli.js (a before/after comparison)", CLI)
    .parse()
    .opts<{ tries: string; only?: string; output?: string; cli: string }>();
  const tries = Number(opts.tries);
  const dir = tmpDir('https-capture-first-run-');
  const nginx = await startNginx({ dir: path.join(dir, 'nginx'), files: { 'hello.txt': Buffer.from('hello\n') } });
  const url = `https://127.0.0.1:${nginx.port}/hello.txt`;

  const host = new HelperHost({ args: [...nodeFlagsOf(opts.cli), opts.cli, '--ipc'] });
  await host.ready;
  const segments = new Map<number, Buffer[]>();
  const processFrames: { at: number; f: ProcessFrame }[] = [];
  host.on('frame', (raw) => {
    const f = raw as unknown as SegmentFrame | ProcessFrame;
    if (f.type === 'segment' && f.dir === 0) {
      const pid = Number(f.pid);
      const l = segments.get(pid) ?? [];
      l.push(Buffer.from(f.data));
      segments.set(pid, l);
    } else if (f.type === 'process') processFrames.push({ at: Date.now(), f });
  });
  await waitFor(() => processFrames.some((p) => p.f.library === LIBSSL), { what: "the system libssl's probes", timeoutMs: 30_000 });

  const sent = (pid: number, line: string): boolean => Buffer.concat(segments.get(pid) ?? []).includes(line);
  const rows: Row[] = [];

  async function scenario(name: string, prepare: (i: number) => { cmd: string; args: string[]; env?: NodeJS.ProcessEnv; file: string }, line: string): Promise<void> {
    const row: Row = { scenario: name, tries, captured: 0, attachMs: [], missed: [] };
    for (let i = 0; i < tries; i++) {
      const t = prepare(i);
      let pid = 0;
      const start = Date.now();
      const r = await run(t.cmd, t.args, { env: t.env, onSpawn: (p) => (pid = p) });
      if (r.code !== 0) throw new Error(`${t.cmd} failed: ${r.stderr.toString()}`);
      // The process is gone: wait until the helper has drained what it had (a short while).
      await new Promise((res) => setTimeout(res, 250));
      const p = processFrames.find((x) => x.f.library === t.file || x.f.library.endsWith(t.file));
      if (p) row.attachMs.push(p.at - start);
      if (sent(pid, line)) row.captured++;
      else row.missed.push(i);
    }
    rows.push(row);
    process.stderr.write(`${name}: ${row.captured}/${tries}\n`);
  }

  if (!opts.only || opts.only === 'libssl') {
    await scenario('libssl', (i) => {
      const d = path.join(dir, `lib${i}`);
      fs.mkdirSync(d);
      fs.copyFileSync(LIBSSL, path.join(d, 'libssl.so.3'));
      return { cmd: 'curl', args: ['-sS', '-k', '--http1.1', '--noproxy', '*', '-o', '/dev/null', url], env: { ...process.env, LD_LIBRARY_PATH: d }, file: path.join(d, 'libssl.so.3') };
    }, 'GET /hello.txt');
  }
  if (!opts.only || opts.only === 'go') {
    const base = path.join(dir, 'gotls-base');
    goBuild(dir, base, 'base');
    await scenario('go', (i) => {
      const f = path.join(dir, `gotls-copy-${i}`);
      fs.copyFileSync(base, f);
      fs.chmodSync(f, 0o755);
      return { cmd: f, args: ['client', url], file: f };
    }, 'GET /hello.txt');
  }
  if (!opts.only || opts.only === 'go-rebuilt') {
    await scenario('go-rebuilt', (i) => {
      const f = path.join(dir, `gotls-build-${i}`);
      goBuild(dir, f, `try${i}`);
      return { cmd: f, args: ['client', url], file: f };
    }, 'GET /hello.txt');
  }

  await host.close();
  await stopAll();
  console.log('| scenario | captured from the first request | attach ms after spawn: median (min–max) | missed tries |');
  console.log('|---|---|---|---|');
  for (const r of rows) {
    const a = r.attachMs;
    console.log(`| ${r.scenario} | ${r.captured}/${r.tries} | ${a.length ? `${median(a)} (${Math.min(...a)}–${Math.max(...a)})` : '–'} | ${r.missed.join(' ') || '–'} |`);
  }
  if (opts.output) fs.writeFileSync(opts.output, JSON.stringify({ when: new Date().toISOString(), load: fs.readFileSync('/proc/loadavg', 'utf8').trim(), rows }, null, 1), { mode: 0o600 });
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
