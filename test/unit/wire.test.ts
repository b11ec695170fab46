// wire.test.ts: the framing and the schemas without a kernel: every frame type round-trips and
// validates, the decoder survives any chunking, and each kind of bad input is reported and
// skipped with the stream kept in step.
import * as assert from 'assert';
import { PassThrough } from 'stream';
import { FRAME_TYPES } from '../../helper/protocol/generated';
import { frameSchemas } from '../../helper/protocol/schema';
import { FrameDecoder, FrameEncoder, FrameError, FrameWriter, RawFrame } from '../../helper/protocol/wire';
import { exampleFrames } from '../lib/frames';

const enc = new FrameEncoder();
const schemas = frameSchemas();

function frameWithBody(body: Buffer): Buffer {
  const b = Buffer.alloc(4 + body.length);
  b.writeUInt32BE(body.length);
  body.copy(b, 4);
  return b;
}

describe('protocol schemas', () => {
  it('has a valid example of every frame type, and each passes its schema and frame.schema.json', () => {
    const frames = exampleFrames();
    assert.deepStrictEqual(frames.map((f) => f.type).sort(), [...FRAME_TYPES].sort());
    for (const f of frames) {
      assert.strictEqual(schemas.check(f), undefined, `${f.type}: ${JSON.stringify(schemas.check(f))}`);
      assert.strictEqual(schemas.checkWhole(f), undefined, `${f.type} against frame.schema.json`);
    }
  });

  it('rejects a missing field, a wrong type, a bad enum, data over 16 KiB and a u64 out of range, naming the field', () => {
    const seg = (): Record<string, unknown> => ({ ...(exampleFrames()[1] as unknown as Record<string, unknown>) });
    const cases: [Record<string, unknown>, RegExp][] = [
      [(() => { const s = seg(); delete s.seq; return s; })(), /lacks the field "seq"/],
      [{ ...seg(), pid: 'curl' }, /\/pid must be integer/],
      [{ ...seg(), dir: 2 }, /\/dir must be equal to one of the allowed values/],
      [{ ...seg(), data: Buffer.alloc(16385) }, /\/data must hold at most 16384 bytes/],
      [{ ...seg(), data: 'text' }, /\/data must be a msgpack bin/],
      [{ ...seg(), ts_ns: 1n << 64n }, /\/ts_ns must be a msgpack unsigned integer/],
      [{ ...seg(), seq: -1 }, /\/seq must be a msgpack unsigned integer/],
      [{ type: 'config', pids: ['x'] }, /\/pids\/0 must be integer/],
      [{ type: 'config', call_cap: 1 << 30 }, /\/call_cap must be <= 67108864/],
    ];
    for (const [f, re] of cases) {
      const v = schemas.check(f);
      assert.ok(v, `${JSON.stringify(f, (_k, x: unknown) => (typeof x === 'bigint' ? String(x) : x))} should be invalid`);
      assert.match(v.message, re);
      assert.ok(schemas.checkWhole(f), 'frame.schema.json agrees');
    }
  });

  it('lets unknown frame types and unknown fields through (forward compatibility)', () => {
    assert.strictEqual(schemas.check({ type: 'future_thing', x: 1 }), undefined);
    assert.strictEqual(schemas.checkWhole({ type: 'future_thing', x: 1 }), undefined);
    assert.strictEqual(schemas.check({ ...exampleFrames()[1], new_field: [1, 2] }), undefined);
    assert.ok(schemas.check({ nope: 1 }), 'a frame needs a type');
  });
});

describe('wire framing', () => {
  it('round-trips every frame type: 64-bit values as bigint, data as bytes', () => {
    const frames = exampleFrames();
    const bytes = Buffer.concat(frames.map((f) => enc.encode(f)));
    const out = new FrameDecoder().push(bytes);
    assert.deepStrictEqual(out, frames.map((f) => ({ ...f })));
    const seg = out[1] as RawFrame;
    assert.strictEqual(seg.conn_id, 0xffff_ffff_ffff_fff0n);
    assert.ok(Buffer.isBuffer(seg.data));
  });

  it('writes 64-bit fields as 8-byte msgpack integers, readable by any msgpack decoder as uint64', () => {
    const b = enc.encode({ type: 'x', big: 0xffff_ffff_ffff_fff0n, small: 7n });
    assert.ok(b.includes(Buffer.from('cffffffffffffffff0', 'hex')), 'uint64 0xcf for values >= 2^63');
    assert.ok(b.includes(Buffer.from('d30000000000000007', 'hex')), 'int64 0xd3 for smaller values');
    assert.strictEqual(b.readUInt32BE(0), b.length - 4, 'big-endian length of the body');
  });

  it('turns u64 fields sent as small integers (as other encoders do) into bigints', () => {
    const seg = { ...exampleFrames()[1], seq: 5, ack: 0, conn_id: 1, ssl_ptr: 2, ts_ns: 3 };
    const [f] = new FrameDecoder().push(enc.encode(seg));
    assert.deepStrictEqual([(f as RawFrame).seq, (f as RawFrame).ack, (f as RawFrame).conn_id], [5n, 0n, 1n]);
  });

  it('accepts counts sent as 8-byte integers (Go writes every int as int64) and validates them', () => {
    // bigints go out as 8-byte integers, as Go's msgpack writes a plain int.
    const config = { type: 'config', pids: [1234n, 5n], ports: [443n], call_cap: 65536n, stats_interval_ms: 1000n };
    const bytes = enc.encode(config as unknown as RawFrame);
    assert.ok(bytes.includes(0xd3) || bytes.includes(0xcf), 'encoded with 8-byte integers');
    const [f] = new FrameDecoder({ validate: true }).push(bytes);
    assert.ok(!(f instanceof FrameError), `accepted: ${f instanceof FrameError ? f.message : ''}`);
    assert.deepStrictEqual(f, { type: 'config', pids: [1234, 5], ports: [443], call_cap: 65536, stats_interval_ms: 1000 });
  });

  it('decodes the same frames whatever the chunk boundaries (every split point, and byte by byte)', () => {
    const frames = exampleFrames();
    const bytes = Buffer.concat(frames.map((f) => enc.encode(f)));
    const want = new FrameDecoder().push(bytes);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const d = new FrameDecoder();
      const got = [...d.push(bytes.subarray(0, cut)), ...d.push(bytes.subarray(cut))];
      assert.deepStrictEqual(got, want, `split at ${cut}`);
      assert.strictEqual(d.pending, 0);
    }
    const d = new FrameDecoder();
    const got: (RawFrame | FrameError)[] = [];
    for (let i = 0; i < bytes.length; i++) got.push(...d.push(bytes.subarray(i, i + 1)));
    assert.deepStrictEqual(got, want);
  });

  it('an absurd length prefix: bad_frame_length, the announced bytes are skipped unbuffered, the next frame reads', () => {
    const d = new FrameDecoder({ maxFrameBytes: 1000 });
    const head = Buffer.alloc(4);
    head.writeUInt32BE(5000);
    const good = enc.encode({ type: 'shutdown' });
    const out = [...d.push(head), ...d.push(Buffer.alloc(3000, 0x41))];
    assert.strictEqual(out.length, 1);
    assert.ok(out[0] instanceof FrameError && out[0].code === 'bad_frame_length', String(out[0]));
    assert.match((out[0] as FrameError).message, /announces 5000 bytes, more than the 1000 allowed/);
    assert.ok(d.pending <= 2000, 'nothing of the oversized frame is kept');
    const rest = d.push(Buffer.concat([Buffer.alloc(2000, 0x41), good]));
    assert.deepStrictEqual(rest, [{ type: 'shutdown' }]);
  });

  it('bad msgpack, a non-map and an invalid known frame are errors; the frames around them still decode', () => {
    const d = new FrameDecoder();
    const out = d.push(
      Buffer.concat([
        enc.encode({ type: 'config', call_cap: 10 }),
        frameWithBody(Buffer.from([0x82, 0xa1])), // a map cut inside its first key
        frameWithBody(Buffer.from([0x93, 1, 2, 3])), // an array
        frameWithBody(Buffer.from([0xa1, 0x78, 0x01])), // a string and trailing bytes
        enc.encode({ type: 'config', call_cap: 'all' }),
        enc.encode({ type: 'shutdown' }),
      ]),
    );
    const codes = out.map((x) => (x instanceof FrameError ? x.code : (x as RawFrame).type));
    assert.deepStrictEqual(codes, ['config', 'bad_msgpack', 'bad_frame', 'bad_msgpack', 'bad_frame', 'shutdown']);
    assert.strictEqual((out[4] as FrameError).frameType, 'config');
    for (const e of out.filter((x): x is FrameError => x instanceof FrameError)) assert.ok(e.fix.length > 10, 'each error says what to do');
  });

  it('unknown frame types and unknown fields come through untouched', () => {
    const out = new FrameDecoder().push(Buffer.concat([enc.encode({ type: 'v2_only', a: 1 }), enc.encode({ type: 'shutdown', later: 'x' })]));
    assert.deepStrictEqual(out, [{ type: 'v2_only', a: 1 }, { type: 'shutdown', later: 'x' }]);
  });

  it('a frame cut short is reported by abandonPartial() and reading resumes with the next bytes', () => {
    const d = new FrameDecoder();
    const whole = enc.encode({ type: 'config', call_cap: 99 });
    assert.deepStrictEqual(d.push(whole.subarray(0, whole.length - 3)), []);
    const e = d.abandonPartial();
    assert.ok(e instanceof FrameError && e.code === 'truncated_frame');
    assert.match(e.message, new RegExp(`${whole.length - 3} of its ${whole.length} bytes`));
    assert.deepStrictEqual(d.push(enc.encode({ type: 'shutdown' })), [{ type: 'shutdown' }]);
    assert.strictEqual(d.abandonPartial(), undefined, 'nothing pending');
  });
});

describe('frame writer', () => {
  it('keeps order, and when the reader stalls drops segments past the bound, counts them and reports the gap in lost_before', async () => {
    const sink = new PassThrough({ highWaterMark: 1 }); // nobody reads: nothing is flushed
    const w = new FrameWriter(sink, { maxQueueBytes: 40_000, validate: true });
    const seg = (seq: number, n: number): RawFrame => ({ ...(exampleFrames()[1] as unknown as RawFrame), seq: BigInt(seq), data: Buffer.alloc(n, 0x61), len_total: n });
    const written = [0, 1, 2, 3, 4].map((i) => w.write(seg(i * 16384, 16384)));
    assert.deepStrictEqual(written, [true, true, true, false, false], 'the 4th and 5th do not fit');
    assert.ok(w.write({ type: 'conn_close', conn_id: 0xffff_ffff_ffff_fff0n, pid: 42, ts_ns: 1n, reason: 'x', egress_end: 0n, ingress_end: 0n, eos: true }), 'control frames are never dropped');
    assert.strictEqual(w.write({ type: 'stats' }), false, 'stats are dropped when full');
    const s = w.snapshot();
    assert.strictEqual(s.dropped_segments, 2);
    assert.strictEqual(s.dropped_bytes, 2 * 16384);
    assert.ok(s.queued_bytes > 40_000 && s.queued_bytes < 60_000, `bounded: ${s.queued_bytes}`);
    // The host reads again: everything queued arrives in order, then the next segment says what was lost.
    const d = new FrameDecoder();
    const got: RawFrame[] = [];
    sink.on('data', (b: Buffer) => got.push(...(d.push(b) as RawFrame[])));
    assert.ok(await w.flushed(2000));
    assert.ok(w.write(seg(5 * 16384, 10)));
    assert.ok(await w.flushed(2000));
    assert.deepStrictEqual(got.map((f) => [f.type, f.seq]), [['segment', 0n], ['segment', 16384n], ['segment', 32768n], ['conn_close', undefined], ['segment', 81920n]]);
    assert.strictEqual(got[4]!.lost_before, 2 * 16384, 'the gap is in lost_before, and seq skips it');
  });

  it('refuses to write an invalid frame under validation (a helper bug is loud)', () => {
    const w = new FrameWriter(new PassThrough(), { validate: true });
    assert.throws(() => w.write({ type: 'loss', bytes: -1 }), /invalid loss frame/);
  });
});
