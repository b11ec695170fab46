// shed.test.ts: the standalone command's shedding when its output falls behind
// (helper/formats/shed.ts): segments cut like the kernel's shed calls keep every exchange's
// request line, status and headers, and every byte cut is counted. Pure: no kernel.
import * as assert from 'assert';
import { createRenderer } from '../../helper/formats';
import { BehindShed } from '../../helper/formats/shed';
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
});
