// pcapng-dedupe.test.ts (no root): both captured ends of one connection (the 4-tuple mirrored,
// two processes) become one TCP stream in the pcapng: each byte once, the second end's process
// in the comments, a gap on one end filled from the other, a gap on both ends still a gap, and
// one end alone written as before. Read back with tshark.
import * as assert from 'assert';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createRenderer } from '../../helper/formats';
import { uncovered } from '../../helper/formats/pcapng';
import { RawFrame } from '../../helper/protocol/wire';
import { conversation, Step } from '../lib/traffic';

const REQ = 'GET /x HTTP/1.1\r\nHost: a\r\n\r\n';
const RES = 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello';

function pcapng(frames: RawFrame[]): Buffer {
  const parts: Buffer[] = [];
  const r = createRenderer('pcapng', { write: (s) => void parts.push(Buffer.isBuffer(s) ? s : Buffer.from(s)) }, { redact: true, color: false, printLimit: 0, version: 'test' });
  for (const f of frames) r.push(f);
  r.end();
  return Buffer.concat(parts);
}

/**
 * The client's steps as curl[10] saw them, the server's as nginx[20] did (directions mirrored).
 * `order` gives the segments' order in time, one letter per segment ('c' curl, 's' nginx), as
 * cause and effect allow (a byte is read after it is sent); the opens come first, the closes last.
 */
function bothEnds(client: Step[], server: Step[], order: string): RawFrame[] {
  const t0 = 1_764_000_000_000_000_000n;
  const c = conversation(client, { pid: 10, comm: 'curl', role: 'client', local: ['127.0.0.1', 40000], remote: ['127.0.0.1', 8443], t0 });
  const s = conversation(server, { pid: 20, comm: 'nginx', role: 'server', local: ['127.0.0.1', 8443], remote: ['127.0.0.1', 40000], t0 });
  const segs = { c: c.filter((f) => f.type === 'segment'), s: s.filter((f) => f.type === 'segment') };
  assert.strictEqual(order.length, segs.c.length + segs.s.length, 'one letter per segment');
  const out = [c[0]!, s[0]!];
  for (const who of order) out.push(segs[who as 'c' | 's'].shift()!);
  out.push(c[c.length - 1]!, s[s.length - 1]!);
  return out.map((f, i) => ({ ...f, ts_ns: t0 + BigInt(i) * 1_000_000n }));
}

interface Pkt {
  src: number;
  seq: number;
  len: number;
  comment: string;
  flags: string;
}

let tmp: string;
/**
 * The packets as tshark reads them; `flags`: the expert messages (note or worse) of a packet
 * that has TCP analysis flags (retransmission, duplicate ACK, previous segment not captured,
 * out-of-order ...), empty for the others (chat items such as SYN, FIN and the HTTP request
 * line, and the closing notes of a FIN, are not analysis flags).
 */
function tshark(frames: RawFrame[], extra: string[] = []): Pkt[] {
  const file = path.join(tmp, 'd.pcapng');
  fs.writeFileSync(file, pcapng(frames));
  const run = (args: string[]): string => execFileSync('tshark', ['-r', file, '-o', 'tcp.relative_sequence_numbers:TRUE', ...extra, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const flagged = new Set(run(['-Y', 'tcp.analysis.flags', '-T', 'fields', '-e', 'frame.number']).split('\n').filter(Boolean));
  const out = run(['-T', 'fields', '-E', 'separator=\t', '-E', 'occurrence=a', '-E', 'aggregator=\u001f', '-e', 'frame.number', '-e', 'tcp.srcport', '-e', 'tcp.seq', '-e', 'tcp.len', '-e', 'frame.comment', '-e', '_ws.expert.message', '-e', '_ws.expert.severity']);
  return out.split('\n').filter(Boolean).map((l) => l.split('\t')).map((r) => {
    const msgs = (r[5] ?? '').split('\u001f');
    const sev = (r[6] ?? '').split('\u001f').map(Number);
    const flags = flagged.has(r[0]!) ? msgs.filter((_, i) => sev[i]! >= 0x400000).join(' ') : '';
    return { src: Number(r[1]), seq: Number(r[2]), len: Number(r[3]), comment: r[4] ?? '', flags };
  });
}

/** Payload bytes per direction ([client→server, server→client]), each packet's range once. */
function bytes(p: Pkt[]): [number, number] {
  return [p.filter((x) => x.src === 40000).reduce((n, x) => n + x.len, 0), p.filter((x) => x.src === 8443).reduce((n, x) => n + x.len, 0)];
}

describe('pcapng: both captured ends of a connection are one TCP stream (no root)', () => {
  before(function () {
    try {
      execFileSync('tshark', ['--version'], { stdio: 'ignore' });
    } catch {
      if (process.env.CI === 'true') throw new Error('tshark is missing under CI=true: scripts/setup.sh --test installs it (Debian package tshark)');
      process.stderr.write('\n  !!! SKIPPING pcapng dedupe tests: tshark is not installed (DEBIAN_FRONTEND=noninteractive apt-get install -y tshark)\n\n');
      this.skip();
    }
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcapng-dedupe-'));
  });
  after(() => tmp && fs.rmSync(tmp, { recursive: true, force: true }));

  it('uncovered(): the parts of a range not yet written', () => {
    assert.deepStrictEqual(uncovered([], 0, 10), [[0, 10]]);
    assert.deepStrictEqual(uncovered([[0, 10]], 0, 10), []);
    assert.deepStrictEqual(uncovered([[2, 4], [6, 8]], 0, 10), [[0, 2], [4, 6], [8, 10]]);
    assert.deepStrictEqual(uncovered([[0, 5]], 3, 9), [[5, 9]]);
  });

  it('each byte once, one handshake, no retransmission or duplicate ACK; both processes named', () => {
    // The server reads the request in two calls, the client the response in two.
    const p = tshark(bothEnds([{ dir: 0, data: REQ }, { dir: 1, data: RES.slice(0, 10) }, { dir: 1, data: RES.slice(10) }], [{ dir: 1, data: REQ.slice(0, 7) }, { dir: 1, data: REQ.slice(7) }, { dir: 0, data: RES }], 'cssscc'));
    assert.deepStrictEqual(bytes(p), [REQ.length, RES.length]);
    assert.deepStrictEqual(p.filter((x) => x.flags !== ''), [], 'no TCP analysis flags');
    assert.strictEqual(p.filter((x) => /synthetic handshake/.test(x.comment)).length, 1);
    const comments = p.map((x) => x.comment).join('\n');
    assert.match(comments, /^curl\[10\] client conn 1; synthetic handshake$/m);
    assert.match(comments, /also captured at nginx\[20\] server conn 1/);
    assert.strictEqual(p.filter((x) => /FIN/.test(x.flags)).length, 0);
    const file = path.join(tmp, 'd.pcapng');
    const http = execFileSync('tshark', ['-r', file, '-d', 'tcp.port==8443,http', '-Y', 'http', '-T', 'fields', '-e', 'http.request.uri', '-e', 'http.response.code'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    assert.deepStrictEqual(http.trim().split('\n'), ['/x\t', '\t200']);
  });

  it('a gap on one end only: the other end has the bytes, so the stream has none', () => {
    // curl lost the first 10 bytes of its request (as sent); nginx read them all. nginx lost 5
    // bytes of its response (as written); curl read them all. Each sender's bytes come first.
    const client: Step[] = [{ dir: 0, skip: 10 }, { dir: 0, data: REQ.slice(10) }, { dir: 1, data: RES }];
    const server: Step[] = [{ dir: 1, data: REQ }, { dir: 0, skip: 5 }, { dir: 0, data: RES.slice(5) }];
    const p = tshark(bothEnds(client, server, 'cssc'));
    assert.deepStrictEqual(bytes(p), [REQ.length, RES.length], 'every byte, once');
    const comments = p.map((x) => x.comment).join('\n');
    // The missing bytes are written first, from the end that has them, saying whose they are.
    assert.match(comments, /10 bytes not captured by curl\[10\] \(lost\), taken from nginx\[20\]/);
    assert.match(comments, /5 bytes not captured by nginx\[20\] \(lost\), taken from curl\[10\]/);
    assert.ok(!/before this/.test(comments), comments);
    assert.deepStrictEqual(p.filter((x) => x.flags !== ''), [], 'no TCP analysis flags (no gap, no retransmission, no out-of-order)');
    const req = p.filter((x) => x.src === 40000 && x.len > 0);
    assert.deepStrictEqual(req.map((x) => [x.seq, x.len]), [[1, 10], [11, REQ.length - 10]], 'in byte order');
    // In any order of the two ends (here nginx's read before curl's send): each byte once, no flags.
    const q = tshark(bothEnds(client, server, 'scsc'));
    assert.deepStrictEqual(bytes(q), [REQ.length, RES.length]);
    assert.deepStrictEqual(q.filter((x) => x.flags !== ''), []);
  });

  it('a gap on both ends stays a gap of exactly its size (previous segment not captured)', () => {
    const p = tshark(bothEnds([{ dir: 0, data: REQ }, { dir: 1, skip: 8 }, { dir: 1, data: RES.slice(8) }], [{ dir: 1, data: REQ }, { dir: 0, skip: 8 }, { dir: 0, data: RES.slice(8) }], 'cssc'));
    assert.deepStrictEqual(bytes(p), [REQ.length, RES.length - 8]);
    const resp = p.filter((x) => x.src === 8443 && x.len > 0);
    assert.strictEqual(resp.length, 1);
    assert.strictEqual(resp[0]!.seq, 1 + 8, 'the response starts 8 bytes in');
    assert.match(resp[0]!.comment, /^8 bytes captured by neither nginx\[20\] nor curl\[10\] before this \(lost\)$/);
    assert.match(resp[0]!.flags, /previous segment(\(s\))? not captured/i); // tshark 4.0: "Previous segment(s) not captured"
    assert.ok(!p.some((x) => /retransmission|Duplicate ACK/i.test(x.flags)), JSON.stringify(p));
  });

  it('an end that stops reporting holds the bytes after a gap for at most 1 s of capture time', () => {
    // nginx's conn is open but it never reads; curl lost 10 bytes, then sends the rest; curl's
    // later traffic (1.5 s on) lets the held bytes go, as a gap, without waiting for the end.
    const t0 = 1_764_000_000_000_000_000n;
    const c = conversation([{ dir: 0, skip: 10 }, { dir: 0, data: REQ.slice(10) }], { pid: 10, comm: 'curl', role: 'client', local: ['127.0.0.1', 40000], remote: ['127.0.0.1', 8443], t0, noClose: true });
    const s = conversation([], { pid: 20, comm: 'nginx', role: 'server', local: ['127.0.0.1', 8443], remote: ['127.0.0.1', 40000], t0, noClose: true });
    const other = conversation([{ dir: 0, data: REQ }], { pid: 10, comm: 'curl', connId: 9n, role: 'client', local: ['127.0.0.1', 40009], remote: ['127.0.0.1', 8443], t0: t0 + 1_500_000_000n });
    const parts: Buffer[] = [];
    const r = createRenderer('pcapng', { write: (b) => void parts.push(Buffer.isBuffer(b) ? b : Buffer.from(b)) }, { redact: true, color: false, printLimit: 0, version: 'test' });
    for (const f of [c[0]!, s[0]!, ...c.slice(1)]) r.push(f);
    const before = Buffer.concat(parts).length;
    for (const f of other) r.push(f);
    const file = path.join(tmp, 'hold.pcapng');
    fs.writeFileSync(file, Buffer.concat(parts)); // without end(): what was written while the capture runs
    assert.ok(Buffer.concat(parts).length > before);
    const rows = execFileSync('tshark', ['-r', file, '-o', 'tcp.relative_sequence_numbers:TRUE', '-Y', 'tcp.srcport == 40000 && tcp.len > 0', '-T', 'fields', '-e', 'tcp.seq', '-e', 'tcp.len', '-e', 'frame.comment'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split('\n');
    assert.deepStrictEqual(rows, [`11\t${REQ.length - 10}\talso captured at nginx[20] server conn 1; 10 bytes captured by neither curl[10] nor nginx[20] before this (lost)`]);
    r.end();
  });

  it('bytes at the close that neither end captured are counted once, after both ends closed', () => {
    const frames = bothEnds([{ dir: 0, data: REQ }, { dir: 1, data: RES }, { dir: 1, skip: 4 }], [{ dir: 1, data: REQ }, { dir: 0, data: RES }, { dir: 0, skip: 4 }], 'cssc');
    const p = tshark(frames);
    const fin = p.filter((x) => /closed/.test(x.comment));
    assert.strictEqual(fin.length, 1, 'one FIN exchange for the connection');
    assert.match(fin[0]!.comment, /curl\[10\] closed \(close\); nginx\[20\] closed \(close\); 0 bytes sent and 4 received at the end were not captured/);
  });

  it('one end alone: written as before (its handshake, its gaps, no "other end" notes)', () => {
    const c = conversation([{ dir: 0, data: REQ }, { dir: 1, skip: 8 }, { dir: 1, data: RES.slice(8) }], { pid: 10, comm: 'curl', role: 'client' });
    const p = tshark(c);
    assert.deepStrictEqual(bytes(p), [REQ.length, RES.length - 8]);
    const comments = p.map((x) => x.comment).filter(Boolean);
    assert.deepStrictEqual(comments, ['curl[10] client conn 1; synthetic handshake', '8 bytes not captured before this (lost)', 'closed (close)']);
  });

  it('two connections of one client on one server each pair with their own other end', () => {
    const t0 = 1_764_000_000_000_000_000n;
    const frames: RawFrame[] = [];
    for (const [i, port] of [[1, 40001], [2, 40002]] as const) {
      frames.push(...conversation([{ dir: 0, data: REQ }, { dir: 1, data: RES }], { pid: 10, comm: 'curl', connId: BigInt(i), role: 'client', local: ['127.0.0.1', port], remote: ['127.0.0.1', 8443], t0: t0 + BigInt(i) * 10_000_000n }));
      frames.push(...conversation([{ dir: 1, data: REQ }, { dir: 0, data: RES }], { pid: 20, comm: 'nginx', connId: BigInt(i + 100), role: 'server', local: ['127.0.0.1', 8443], remote: ['127.0.0.1', port], t0: t0 + BigInt(i) * 10_000_000n + 500_000n }));
    }
    frames.sort((a, b) => ((a.ts_ns as bigint) < (b.ts_ns as bigint) ? -1 : 1));
    const file = path.join(tmp, 'd.pcapng');
    fs.writeFileSync(file, pcapng(frames));
    const rows = execFileSync('tshark', ['-r', file, '-T', 'fields', '-e', 'tcp.stream', '-e', 'tcp.len', '-e', 'tcp.analysis.flags'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split('\n').map((l) => l.split('\t'));
    assert.deepStrictEqual([...new Set(rows.map((r) => r[0]))], ['0', '1']);
    for (const s of ['0', '1']) assert.strictEqual(rows.filter((r) => r[0] === s).reduce((n, r) => n + Number(r[1]), 0), REQ.length + RES.length);
    assert.deepStrictEqual(rows.filter((r) => r[2]), []);
  });
});
