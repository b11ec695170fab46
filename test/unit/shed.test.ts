// shed.test.ts: the standalone command's shedding when its output falls behind
// (helper/formats/shed.ts): segments cut like the kernel's shed calls keep every exchange's
// request line, status and headers, and every byte cut is counted. Pure: no kernel.
import * as assert from 'assert';
import { createRenderer } from '../../helper/formats';
import { BehindShed, startsHttp1 } from '../../helper/formats/shed';
import { CaptureRecord, DataRecord, joinShedRecords } from '../../helper/records/records';
import { RawFrame } from '../../helper/protocol/wire';
import { conversation, Step } from '../lib/traffic';

const BODY = 100_000;

function exchanges(n: number): RawFrame[] {
  const steps: Step[] = [];
  for (let i = 0; i < n; i++) {
    steps.push({ dir: 0, data: `GET /big/${i} HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n` });
    steps.push({ dir: 1, data: `HTTP/1.1 200 OK\r\nContent-Length: ${BODY}\r\nX-N: ${i}\r\n\r\n${'b'.repeat(BODY)}` });
  }
  return conversation(steps);
}

function jsonl(frames: RawFrame[]): { type: string; request?: { method: string; target: string; headers: unknown[]; body: { missing_bytes: number } }; response?: { status: number; headers: unknown[]; body: { size: number; missing_bytes: number } }; totals?: Record<string, unknown> }[] {
  const chunks: string[] = [];
  const r = createRenderer('jsonl', { write: (s) => void chunks.push(String(s)) }, { redact: true, color: false, printLimit: 0, version: 'test' });
  for (const f of frames) r.push(f);
  r.end();
  return chunks.join('').trim().split('\n').map((l) => JSON.parse(l));
}

describe('shedding when the output falls behind (formats/shed.ts)', () => {
  it('passes every frame untouched while the output keeps up', () => {
    const frames = exchanges(3);
    const shed = new BehindShed({ pending: () => 0, high: 100, low: 10, head: 4096 });
    for (const f of frames) assert.strictEqual(shed.pass(f), f);
    assert.strictEqual(shed.bytesShed, 0);
  });

  it('behind: each message keeps its head, its body calls keep nothing, offsets stay exact and every cut byte is counted', () => {
    const frames = exchanges(5);
    const shed = new BehindShed({ pending: () => 1000, high: 100, low: 10, head: 64 });
    const out = frames.map((f) => shed.pass(f));
    const segs = out.filter((f) => f.type === 'segment');
    // Offsets untouched; cut segments marked like the kernel's.
    assert.deepStrictEqual(segs.map((f) => [f.seq, f.len_total]), frames.filter((f) => f.type === 'segment').map((f) => [f.seq, f.len_total]));
    assert.ok(segs.every((f) => (f.data as Uint8Array).length <= 64));
    assert.ok(segs.some((f) => f.shed === true && f.truncated === true && (f.data as Uint8Array).length === 0), 'a call within a body keeps nothing');
    const lines = jsonl(out);
    const ex = lines.filter((l) => l.type === 'exchange');
    assert.strictEqual(ex.length, 5);
    ex.forEach((l, i) => {
      assert.strictEqual(l.request!.method, 'GET');
      assert.strictEqual(l.request!.target, `/big/${i}`);
      assert.ok(l.request!.headers.length >= 2);
      assert.strictEqual(l.response!.status, 200);
      assert.ok(l.response!.headers.length >= 2);
      assert.ok(l.response!.body.missing_bytes > 0);
    });
    // What the renderer says is missing is exactly what was cut here.
    const missing = ex.reduce((n, l) => n + l.request!.body.missing_bytes + l.response!.body.missing_bytes, 0);
    assert.strictEqual(missing, shed.bytesShed);
  });

  it('stops shedding only once the output is back under its low mark', () => {
    let pending = 1000;
    const shed = new BehindShed({ pending: () => pending, high: 100, low: 10, head: 16 });
    const frames = exchanges(4).filter((f) => f.type === 'segment');
    shed.pass(frames[0]!);
    pending = 50; // between the marks: still behind
    assert.strictEqual(shed.pass(frames[1]!).shed, true);
    pending = 5;
    assert.strictEqual(shed.pass(frames[2]!), frames[2]);
    pending = 50; // between the marks from below: keeping up
    assert.strictEqual(shed.pass(frames[3]!), frames[3]);
  });

  it('a call that starts like HTTP/1 keeps its head though the other direction did not move (a server that answered before reading the body)', () => {
    assert.ok(startsHttp1(Buffer.from('POST /u HTTP/1.1\r\n')));
    assert.ok(startsHttp1(Buffer.from('HTTP/1.1 200 OK\r\n')));
    assert.ok(startsHttp1(Buffer.from('OPTIONS * HTTP/1.1')));
    for (const no of ['xxxxxxxx', 'GE', 'get / HTTP/1.1', ' GET /', 'TOOLONGMETHOD /', '']) assert.ok(!startsHttp1(Buffer.from(no)), no);
    // nginx discarding a POST body: it reads the head and part of the body, answers, reads the
    // rest of the body, then the next request, with no write between the last two.
    const BODY_ = 65536;
    const body = 'x'.repeat(BODY_);
    const req = (i: number): string => `POST /upload/${i} HTTP/1.1\r\nHost: a\r\nContent-Length: ${BODY_}\r\n\r\n`;
    const steps: Step[] = [];
    for (let i = 0; i < 3; i++) {
      steps.push({ dir: 1, data: req(i) + body.slice(0, 1000) });
      steps.push({ dir: 1, data: body.slice(1000, 20000) });
      steps.push({ dir: 0, data: 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n' });
      steps.push({ dir: 1, data: body.slice(20000, 40000) });
      steps.push({ dir: 1, data: body.slice(40000) });
    }
    const frames = conversation(steps, { role: 'server' });
    const shed = new BehindShed({ pending: () => 1000, high: 100, low: 10, head: 4096 });
    const ex = jsonl(frames.map((f) => shed.pass(f))).filter((l) => l.type === 'exchange');
    assert.deepStrictEqual(ex.map((l) => [l.request?.target, l.response?.status]), [0, 1, 2].map((i) => [`/upload/${i}`, 200]));
    assert.ok(shed.bytesShed > 2 * BODY_, `${shed.bytesShed} bytes shed`);
  });

  it('sheds while segments arrive late (the renderer is behind the ring), tells each switch, and stops once they are fresh', () => {
    let now = 0;
    const changes: boolean[] = [];
    const shed = new BehindShed({ pending: () => 0, high: 100, low: 10, head: 16, lagHighMs: 100, lagLowMs: 20, now: () => now, onChange: (on) => changes.push(on) });
    const frames = exchanges(4).filter((f) => f.type === 'segment');
    const at = (f: RawFrame, lagMs: number): RawFrame => {
      now = Number((f.ts_ns as bigint) / 1_000_000n) + lagMs;
      return shed.pass(f);
    };
    assert.strictEqual(at(frames[0]!, 5), frames[0]);
    assert.strictEqual(at(frames[1]!, 150).shed, true, 'late: cut');
    assert.strictEqual(at(frames[2]!, 50).shed, true, 'between the marks: still cut');
    assert.strictEqual(at(frames[3]!, 10), frames[3], 'fresh again: whole');
    assert.deepStrictEqual(changes, [true, false]);
    assert.strictEqual(shed.lateSpells, 1);
  });

  it('lateness sheds only while the ring holds a backlog (lagMinBacklog): a moment\'s stall with little waiting cuts nothing', () => {
    let now = 0;
    let backlog = 0;
    const shed = new BehindShed({ pending: () => 0, high: 100, low: 10, head: 16, lagHighMs: 100, lagLowMs: 20, backlog: () => backlog, lagMinBacklog: 1000, now: () => now });
    const frames = exchanges(3).filter((f) => f.type === 'segment');
    const at = (f: RawFrame, lagMs: number): RawFrame => {
      now = Number((f.ts_ns as bigint) / 1_000_000n) + lagMs;
      return shed.pass(f);
    };
    backlog = 999;
    assert.strictEqual(at(frames[0]!, 500), frames[0], 'late, but under the backlog: whole');
    assert.strictEqual(shed.lateSpells, 0);
    backlog = 1000;
    assert.strictEqual(at(frames[1]!, 150).shed, true, 'late with a backlog: cut');
    backlog = 0;
    assert.strictEqual(at(frames[2]!, 50).shed, true, 'once late, the backlog does not end it: freshness does');
    assert.strictEqual(at(frames[3]!, 5), frames[3]);
    assert.strictEqual(shed.lateSpells, 1);
  });

  it('joinShedRecords: dataless shed records that follow each other on a connection and direction become one, nothing else moves', () => {
    const sock = { fd: 3, role: 'server' as const, family: 'ipv4' as const, localIp: '127.0.0.1', localPort: 1, remoteIp: '127.0.0.1', remotePort: 2, midStream: false };
    const rec = (conn: bigint, dir: 'egress' | 'ingress', seq: number, len: number, data: number, shed: boolean): DataRecord => ({
      kind: 'data', tsNs: BigInt(seq), pid: 1, tid: 1, comm: 'n', connId: conn, ssl: 1n, sock, dir, func: 'SSL_read', seq, ack: 0, callLen: len, capLen: data, chunkOff: 0,
      truncated: data < len, rateLimited: false, shed, data: Buffer.alloc(data),
    });
    const rs: CaptureRecord[] = [
      rec(1n, 'ingress', 0, 1024, 1024, false),
      rec(1n, 'ingress', 1024, 4096, 0, true),
      rec(1n, 'ingress', 5120, 4096, 0, true),
      rec(2n, 'ingress', 0, 4096, 0, true), // another connection between: no matter
      rec(1n, 'ingress', 9216, 3072, 0, true),
      rec(1n, 'egress', 0, 100, 100, false), // the other direction: ends the run
      rec(1n, 'ingress', 12288, 4096, 0, true),
      rec(1n, 'ingress', 20000, 4096, 0, true), // not contiguous (a loss between): kept apart
    ];
    const out = joinShedRecords(rs.map((r) => ({ ...r }) as CaptureRecord)) as DataRecord[];
    assert.deepStrictEqual(out.map((r) => [Number(r.connId), r.dir, r.seq, r.callLen, r.data.length]), [
      [1, 'ingress', 0, 1024, 1024],
      [1, 'ingress', 1024, 4096 + 4096 + 3072, 0],
      [2, 'ingress', 0, 4096, 0],
      [1, 'egress', 0, 100, 100],
      [1, 'ingress', 12288, 4096, 0],
      [1, 'ingress', 20000, 4096, 0],
    ]);
    assert.strictEqual(out[1]!.tsNs, 9216n, 'the joined record has the last call\'s time');
  });
});
