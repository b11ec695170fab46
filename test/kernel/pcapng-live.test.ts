// pcapng-live.test.ts: a real capture (kernel) of curl ↔ nginx on 127.0.0.1 over TLS, written
// with --format pcapng: both ends of each connection are captured, and tshark must see one TCP
// stream per connection, every request and response nginx logged exactly once (HTTP/1.1 with
// keep-alive and separate connections, and HTTP/2 with -d tcp.port==N,http2 as docs/formats.md
// says), and no retransmission, duplicate-ACK or other TCP analysis flag.
import * as assert from 'assert';
import { execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { tsharkCountsOn } from '../lib/tshark';
import { requireKernel } from '../lib/kernel';
import { replayFrames } from '../../helper/commands/replay';
import { NginxServer, pattern, run, startNginx, stopAll, tmpDir, waitFor } from '../lib/servers';
import { CLI } from '../lib/paths';


function haveTshark(): boolean {
  try {
    execFileSync('tshark', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function tshark(args: string[]): string {
  return execFileSync('tshark', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

describe('pcapng of curl ↔ nginx on loopback (kernel, tshark): one TCP stream per connection', function () {
  this.timeout(120_000);
  let dir: string;
  let ng: NginxServer;
  let file: string;
  const pids: number[] = [];

  before(async function () {
    requireKernel(this);
    if (!haveTshark()) {
      if (process.env.CI === 'true') throw new Error('tshark is missing under CI=true: scripts/setup.sh --test installs it (Debian package tshark)');
      process.stderr.write('\n  !!! SKIPPING the pcapng tshark tests: tshark is not installed\n  !!! install it with: DEBIAN_FRONTEND=noninteractive apt-get install -y tshark\n\n');
      this.skip();
    }
    dir = tmpDir('pcapng-live');
    const files: Record<string, Buffer> = {};
    for (const n of ['a', 'b', 'c', 'd', 'e', 'h2a', 'h2b', 'h2c']) files[`${n}.txt`] = Buffer.from(`${n} `.repeat(50 + n.length * 400));
    ng = await startNginx({ dir: path.join(dir, 'nginx'), http2: true, files });
    file = path.join(dir, 'capture.pcapng');
    const helper = spawn(process.execPath, [CLI, '--comm', 'curl,nginx', '--port', String(ng.port), '--format', 'pcapng', '--output', file], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    helper.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((ok) => helper.on('exit', (code) => ok(code)));
    try {
      await waitFor(() => err.includes('capturing TLS plaintext'), { timeoutMs: 30_000, what: `the helper to attach (${err})` });
      const u = (p: string): string => `https://127.0.0.1:${ng.port}/${p}`;
      const runs = [
        ['--http1.1', u('a.txt'), u('b.txt'), u('c.txt')], // keep-alive: three requests on one connection
        ['--http1.1', u('d.txt')], // separate connections
        ['--http1.1', u('e.txt')],
        ['--http2', u('h2a.txt'), u('h2b.txt'), u('h2c.txt')], // one HTTP/2 connection, three streams
      ];
      for (const args of runs) {
        const r = await run('curl', ['-sS', '-k', '--noproxy', '*', '-o', '/dev/null', '-o', '/dev/null', '-o', '/dev/null', ...args]);
        assert.strictEqual(r.code, 0, r.stderr.toString());
        pids.push(r.pid);
      }
      await waitFor(() => fs.readFileSync(ng.accessLog, 'utf8').trim().split('\n').length >= 8, { what: 'the access log' });
      await new Promise((ok) => setTimeout(ok, 1000));
      helper.kill('SIGTERM');
      assert.strictEqual(await exited, 0, err);
    } finally {
      if (helper.exitCode === null) helper.kill('SIGKILL');
    }
  });

  after(async () => {
    await stopAll();
  });

  function logged(h2: boolean): { requests: string[]; statuses: string[] } {
    const rows = fs.readFileSync(ng.accessLog, 'utf8').trim().split('\n').map((l) => l.split(' ')).filter((f) => f[2]!.startsWith('/h2') === h2);
    return { requests: rows.map((f) => `${f[1]} ${f[2]}`).sort(), statuses: rows.map((f) => f[3]!).sort() };
  }

  it('every HTTP/1.1 request and response nginx logged is dissected exactly once', () => {
    const want = logged(false);
    assert.strictEqual(want.requests.length, 5);
    const got = tsharkCountsOn(file, [ng.port], false);
    // As HTTP/1, the HTTP/2 preface reads as a request "PRI *".
    assert.deepStrictEqual({ requests: got.requests.filter((r) => r !== 'PRI *'), statuses: got.statuses }, want);
  });

  it('HTTP/2 (-d tcp.port==N,http2, as docs/formats.md gives it): every stream nginx logged, once', () => {
    const want = logged(true);
    assert.strictEqual(want.requests.length, 3);
    assert.deepStrictEqual(tsharkCountsOn(file, [ng.port], true), want);
  });

  it('no retransmission, duplicate ACK, lost segment or any other TCP analysis flag', () => {
    const flagged = tshark(['-r', file, '-Y', 'tcp.analysis.flags || tcp.analysis.retransmission || tcp.analysis.duplicate_ack || tcp.analysis.lost_segment || tcp.analysis.out_of_order', '-T', 'fields', '-e', 'frame.number', '-e', '_ws.expert.message']);
    assert.strictEqual(flagged, '', flagged);
  });

  it('one TCP stream per connection, each with both processes named in its comments', () => {
    const conns = new Set(fs.readFileSync(ng.accessLog, 'utf8').trim().split('\n').map((l) => l.split(' ')[0]));
    assert.strictEqual(conns.size, 4, 'four connections: keep-alive, two single, one HTTP/2');
    const streams = new Set(tshark(['-r', file, '-T', 'fields', '-e', 'tcp.stream']).trim().split('\n'));
    assert.strictEqual(streams.size, 4);
    const rows = tshark(['-r', file, '-Y', 'frame.comment', '-T', 'fields', '-e', 'tcp.stream', '-e', 'frame.comment']).trim().split('\n').map((l) => l.split('\t'));
    const workers = ng.workerPids();
    for (const s of streams) {
      const text = rows.filter((r) => r[0] === s).map((r) => r[1]).join('\n');
      assert.ok(pids.some((p) => text.includes(`curl[${p}] client conn`)), text);
      assert.ok(workers.some((p) => text.includes(`nginx[${p}] server conn`)), text);
    }
  });
});

/** Byte ranges [a, b) merged. */
function union(ranges: [number, number][]): [number, number][] {
  const out: [number, number][] = [];
  for (const [a, b] of [...ranges].sort((x, y) => x[0] - y[0])) {
    const last = out[out.length - 1];
    if (last && a <= last[1]) last[1] = Math.max(last[1], b);
    else if (b > a) out.push([a, b]);
  }
  return out;
}

describe('pcapng with --call-cap 1000 (kernel, tshark): each byte either end captured, once; what both missed is a gap', function () {
  this.timeout(120_000);
  let dir: string;
  let ng: NginxServer;
  let file: string;
  let rec: string;

  before(async function () {
    requireKernel(this);
    if (!haveTshark()) this.skip();
    dir = tmpDir('pcapng-cap');
    // Bodies far past the cap: nginx writes them in other calls than curl reads them, so each
    // end misses other bytes (a call's bytes past the first 1000).
    const files: Record<string, Buffer> = {};
    for (const n of ['big1', 'big2', 'h2big']) files[`${n}.txt`] = pattern(200_000 + n.length * 1000);
    ng = await startNginx({ dir: path.join(dir, 'nginx'), http2: true, files });
    file = path.join(dir, 'capture.pcapng');
    rec = path.join(dir, 'capture.frames');
    const helper = spawn(process.execPath, [CLI, '--comm', 'curl,nginx', '--port', String(ng.port), '--call-cap', '1000', '--format', 'pcapng', '--output', file, '--record', rec], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    helper.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((ok) => helper.on('exit', (code) => ok(code)));
    try {
      await waitFor(() => err.includes('capturing TLS plaintext'), { timeoutMs: 30_000, what: `the helper to attach (${err})` });
      const u = (p: string): string => `https://127.0.0.1:${ng.port}/${p}`;
      for (const args of [['--http1.1', u('big1.txt'), u('big2.txt')], ['--http2', u('h2big.txt')]]) {
        const r = await run('curl', ['-sS', '-k', '--noproxy', '*', '-o', '/dev/null', '-o', '/dev/null', ...args]);
        assert.strictEqual(r.code, 0, r.stderr.toString());
      }
      await waitFor(() => fs.readFileSync(ng.accessLog, 'utf8').trim().split('\n').length >= 3, { what: 'the access log' });
      await new Promise((ok) => setTimeout(ok, 1000));
      helper.kill('SIGTERM');
      assert.strictEqual(await exited, 0, err);
    } finally {
      if (helper.exitCode === null) helper.kill('SIGKILL');
    }
  });

  after(async () => {
    await stopAll();
  });

  it('no retransmission, duplicate ACK or out-of-order; the gaps are gaps', () => {
    // Not checked: "ACKed segment that wasn't captured". Wireshark does not count the bytes of a
    // segment after a gap as seen for the other side's acks, so a packet acking past a gap gets
    // that mark though its ack is the last byte the file has (one end captured: the same).
    assert.notStrictEqual(tshark(['-r', file, '-Y', 'tcp.analysis.lost_segment']), '', 'the cap left gaps');
    const flagged = tshark(['-r', file, '-Y', 'tcp.analysis.retransmission || tcp.analysis.spurious_retransmission || tcp.analysis.fast_retransmission || tcp.analysis.duplicate_ack || tcp.analysis.out_of_order', '-T', 'fields', '-e', 'frame.number', '-e', '_ws.expert.message']);
    assert.strictEqual(flagged, '', flagged);
  });

  it('per connection and direction, the payload is exactly the union of what the two ends captured', async () => {
    // From the recording: each end's captured ranges, keyed by the client's port and the direction.
    const got = new Map<string, [number, number][]>();
    const ends = new Map<string, { port: number; toServer: 0 | 1 }>();
    let holes = 0;
    for await (const f of replayFrames(rec)) {
      if (f.type !== 'segment') continue;
      const server = f.local_port === ng.port;
      const port = (server ? f.remote_port : f.local_port) as number;
      // dir 0: sent by this end. To the server: sent by the client, received by the server.
      const toServer = (f.dir === 0) !== server;
      const k = `${port}|${toServer ? '>' : '<'}`;
      ends.set(`${f.pid}:${f.conn_id}`, { port, toServer: toServer ? 1 : 0 });
      const seq = Number(f.seq as bigint);
      const data = f.data as Buffer;
      if (data.length) got.set(k, [...(got.get(k) ?? []), [seq, seq + data.length]]);
      if (f.truncated === true) holes++;
    }
    assert.ok(holes > 0, 'the cap cut calls');
    assert.strictEqual(new Set([...ends.keys()]).size, 4, 'two connections, each captured at both ends');
    const rows = tshark(['-r', file, '-T', 'fields', '-e', 'tcp.srcport', '-e', 'tcp.dstport', '-e', 'tcp.len']).trim().split('\n').map((l) => l.split('\t').map(Number));
    const seen = new Map<string, number>();
    for (const [src, dst, len] of rows) {
      const k = dst === ng.port ? `${src}|>` : `${dst}|<`;
      seen.set(k, (seen.get(k) ?? 0) + len!);
    }
    for (const [k, ranges] of got) {
      const want = union(ranges).reduce((n, [a, b]) => n + b - a, 0);
      const each = ranges.reduce((n, [a, b]) => n + b - a, 0);
      assert.strictEqual(seen.get(k), want, `${k}: the union of both ends' bytes, once (both ends together: ${each})`);
    }
    // curl and nginx read and write in calls of one TLS record (16 KiB) each, so here both ends
    // miss the same bytes: the gap says so. (Bytes one end has and the other missed are written
    // from the end that has them: test/pcapng-dedupe.test.ts.)
    const comments = tshark(['-r', file, '-Y', 'frame.comment', '-T', 'fields', '-e', 'frame.comment']);
    assert.match(comments, /\d+ bytes captured by neither (curl|nginx)\[\d+\] nor (curl|nginx)\[\d+\] before this \(past the per-call or rate cap, or shed under load\)/);
  });
});
