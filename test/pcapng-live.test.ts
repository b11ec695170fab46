// pcapng-live.test.ts: a real capture (kernel) of curl ↔ nginx on 127.0.0.1 over TLS, written
// with --format pcapng: both ends of each connection are captured, and tshark must see one TCP
// stream per connection, every request and response nginx logged exactly once (HTTP/1.1 with
// keep-alive and separate connections, and HTTP/2 with -d tcp.port==N,http2 as docs/formats.md
// says), and no retransmission, duplicate-ACK or other TCP analysis flag.
import * as assert from 'assert';
import { execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { tsharkCountsOn } from './lib/tshark';
import { requireKernel } from './lib/kernel';
import { NginxServer, run, startNginx, stopAll, tmpDir, waitFor } from './lib/servers';

const CLI = path.resolve(__dirname, '..', 'helper', 'cli.js');

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
