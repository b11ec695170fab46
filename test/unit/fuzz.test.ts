// fuzz.test.ts: property-based tests (fast-check) of everything that reads input the helper
// does not control: the frame decoder, the capture-record decoder, the renderers of captured
// HTTP (host exchanges, replay, show, every output format), and ELF files (the probe planner, the library checks).
// Every case must end in a result or in the module's own clear error, never in a crash.
// Deterministic by default (FUZZ_SEED=0); FUZZ_SEED=random FUZZ_RUNS=10000 to search further.
import * as assert from 'assert';
import fc from 'fast-check';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CallAssembler } from '../../helper/records/calls';
import { ElfError, ElfFile } from '../../helper/discovery/elf';
import { ConnCloseFrame, ConnOpenFrame, SegmentFrame } from '../../helper/protocol/generated';
import { ExchangeAssembler, Exchange } from '../../helper/host/host';
import { hasOpenSsl } from '../../helper/discovery/libraries';
import { createRenderer, FORMATS } from '../../helper/formats';
import { exportedOffsets, planOpenSsl } from '../../helper/discovery/openssl';
import { CHUNK_MAX, decodeBatch, decodeRecord, RecordError } from '../../helper/records/records';
import { connectionSummaries, exchangeSummary, frameToJson, replayCommand } from '../../helper/commands/replay';
import { UserError } from '../../helper/errors';
import { showCall, showConn } from '../../helper/formats/show';
import { FrameDecoder, FrameEncoder, FrameError, RawFrame } from '../../helper/protocol/wire';
import { exampleFrames } from '../lib/frames';

const SEED = process.env.FUZZ_SEED === 'random' ? Date.now() : Number(process.env.FUZZ_SEED ?? 0);
const RUNS = Number(process.env.FUZZ_RUNS ?? 300);
const params = (runs = RUNS): fc.Parameters<unknown> => ({ seed: SEED, numRuns: runs, endOnFailure: true });
const enc = new FrameEncoder();

function framed(body: Buffer): Buffer {
  const b = Buffer.alloc(4 + body.length);
  b.writeUInt32BE(body.length);
  body.copy(b, 4);
  return b;
}

/** Splits a buffer at the given cut points (any boundaries, as a pipe may deliver them). */
function split(b: Buffer, cuts: number[]): Buffer[] {
  const at = [...new Set(cuts.map((c) => c % (b.length + 1)))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...at, b.length]) {
    out.push(b.subarray(prev, c));
    prev = c;
  }
  return out;
}

// --- arbitraries -------------------------------------------------------------------------

/** Bytes that look like HTTP/1 now and then: request and status lines, headers, bodies, junk. */
const httpish = fc
  .array(
    fc.oneof(
      fc.constantFrom(
        'GET / HTTP/1.1\r\n', 'POST /x HTTP/1.0\r\n', 'HEAD /h HTTP/1.1\r\n', 'HTTP/1.1 200 OK\r\n', 'HTTP/1.1 100 Continue\r\n\r\n', 'HTTP/1.0 204 No Content\r\n',
        'Host: a\r\n', 'Content-Length: 5\r\n', 'Content-Length: -1\r\n', 'Content-Length: 99999999999999999999\r\n', 'Transfer-Encoding: chunked\r\n',
        'Connection: close\r\n', '\r\n', 'hello', '5\r\nhello\r\n', '0\r\n\r\n', 'ffffffffffffffff\r\n', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', '\n', ' ',
        'Connection: Upgrade\r\nUpgrade: websocket\r\n', 'HTTP/1.1 101 Switching Protocols\r\n', 'Authorization: Bearer x\r\n', 'Cookie: a=1; b\r\n', 'Content-Encoding: gzip\r\n',
        // HTTP/2: SETTINGS, HEADERS (:method GET, END_STREAM|END_HEADERS), DATA, RST_STREAM, a HEADERS without END_HEADERS, CONTINUATION
        '\x00\x00\x00\x04\x00\x00\x00\x00\x00', '\x00\x00\x01\x01\x05\x00\x00\x00\x01\x82', '\x00\x00\x02\x00\x01\x00\x00\x00\x01hi',
        '\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x08', '\x00\x00\x02\x01\x00\x00\x00\x00\x03\x82\x84', '\x00\x00\x01\x09\x04\x00\x00\x00\x03\x87',
      ).map((s) => Buffer.from(s, 'latin1')),
      fc.uint8Array({ maxLength: 64 }).map((u) => Buffer.from(u)),
    ),
    { maxLength: 12 },
  )
  .map((parts) => Buffer.concat(parts).subarray(0, CHUNK_MAX));

const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const smallSeq = fc.oneof(fc.bigInt({ min: 0n, max: 400n }), u64);

/** Valid frames of a few connections, in any order, with gaps, overlaps and repeats. */
const connFrames = fc.array(
  fc.oneof(
    { weight: 6, arbitrary: fc.record({ conn: fc.integer({ min: 0, max: 2 }), dir: fc.constantFrom(0 as const, 1 as const), seq: smallSeq, data: httpish, truncated: fc.boolean(), lost: fc.nat() }) },
    { weight: 1, arbitrary: fc.record({ conn: fc.integer({ min: 0, max: 2 }), close: fc.constant(true), e: smallSeq, i: smallSeq }) },
    { weight: 1, arbitrary: fc.record({ conn: fc.integer({ min: 0, max: 2 }), open: fc.constant(true), role: fc.constantFrom('client', 'server', 'unknown') }) },
  ),
  { maxLength: 40 },
).map((xs) =>
  xs.map((x): RawFrame => {
    const base = { conn_id: BigInt(x.conn), pid: 100 + x.conn, ts_ns: 1n };
    if ('close' in x) return { type: 'conn_close', ...base, reason: 'close', egress_end: x.e, ingress_end: x.i, eos: true } satisfies ConnCloseFrame as unknown as RawFrame;
    const sock = { fd: 3, local_ip: '127.0.0.1', local_port: 1, remote_ip: '::1', remote_port: 2 };
    if ('open' in x) return { type: 'conn_open', ...base, tid: 1, comm: 'c', ssl_ptr: 1n, ...sock, mid_stream: false, role: x.role } satisfies ConnOpenFrame as unknown as RawFrame;
    const s: SegmentFrame = {
      type: 'segment', ...base, tid: 1, comm: 'c', ssl_ptr: 1n, dir: x.dir, ...sock, seq: x.seq, ack: 0n, len_total: x.data.length, data: x.data,
      eos: false, truncated: x.truncated, lost_before: x.lost, mid_stream: false,
    };
    return s as unknown as RawFrame;
  }),
);

// --- renderers: each takes frames as a host gets them and must render them without throwing.
// A new renderer (another output format) is one more line here.
const RENDERERS: Record<string, (frames: RawFrame[]) => unknown> = {
  'host: HTTP/1 and HTTP/2 exchanges (ExchangeAssembler)': (frames) => {
    const out: Exchange[] = [];
    const a = new ExchangeAssembler((e) => out.push(e));
    for (const f of frames) a.push(f);
    a.finish();
    return out.map(exchangeSummary);
  },
  'replay --format frames (frameToJson)': (frames) => frames.map(frameToJson),
  'replay: connection summaries': (frames) => connectionSummaries(frames),
  'show: calls and connections for people': (frames) =>
    frames.map((f) => {
      const sock = { fd: 3, role: 'client' as const, family: 'ipv4' as const, localIp: '127.0.0.1', localPort: 1, remoteIp: '127.0.0.1', remotePort: 2, midStream: false };
      if (f.type === 'segment') {
        const s = f as unknown as SegmentFrame;
        const data = Buffer.from(s.data);
        return showCall(
          { tsNs: s.ts_ns, pid: s.pid, tid: s.tid, comm: s.comm, connId: s.conn_id, ssl: s.ssl_ptr, dir: s.dir ? 'ingress' : 'egress', func: 'SSL_read', sock, seq: Number(s.seq), callLen: s.len_total, data, truncatedBytes: s.truncated ? 7 : 0, rateLimited: false, lostBytes: s.lost_before },
          { limit: data.length % 3 === 0 ? 0 : 16, wallOffsetNs: 0n, color: data.length % 2 === 0 },
        );
      }
      return showConn({ kind: 'close', tsNs: f.ts_ns as bigint, pid: 1, tid: 1, comm: 'c', connId: 1n, ssl: 1n, sock, egressBytes: 1, ingressBytes: 2, reason: 'close' }, { limit: 0, wallOffsetNs: 0n, color: false });
    }),
  ...Object.fromEntries(
    FORMATS.flatMap((format) =>
      [true, false].map((redact) => [
        `--format ${format}${redact ? '' : ' --no-redact'} (helper/formats, exchanges.ts, http1.ts, http2.ts)`,
        (frames: RawFrame[]): number => {
          let n = 0;
          const r = createRenderer(format, { write: (x) => void (n += x.length) }, { redact, color: redact, printLimit: redact ? 0 : 16, version: '0' });
          for (const f of frames) r.push(f);
          r.end();
          return n;
        },
      ]),
    ),
  ),
};

describe('fuzz: frame decoder (helper/protocol/wire.ts)', function () {
  this.timeout(60_000);

  it('arbitrary bytes in arbitrary chunks: frames or FrameErrors, never a throw; abandonPartial() resets', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), fc.array(fc.nat(), { maxLength: 8 }), (bytes, cuts) => {
        const d = new FrameDecoder({ maxFrameBytes: 512 });
        for (const c of split(Buffer.from(bytes), cuts)) for (const x of d.push(c)) assert.ok(x instanceof FrameError || typeof x.type === 'string');
        d.abandonPartial();
        assert.strictEqual(d.pending, 0);
        // and the decoder is in step again: a valid frame reads
        const out = d.push(enc.encode({ type: 'shutdown', reason: 'r' }));
        assert.deepStrictEqual(out, [{ type: 'shutdown', reason: 'r' }]);
      }),
      params(),
    );
  });

  it('any msgpack value as a frame body (and every known type with fields of any type): a frame or a FrameError', () => {
    const types = [...exampleFrames().map((f) => f.type), 'other'];
    const body = fc.oneof(
      fc.anything({ withBigInt: true, withTypedArray: true, withMap: false, withSet: false, withDate: true, withNullPrototype: true }),
      fc.record({ type: fc.constantFrom(...types) }).chain((t) =>
        fc.dictionary(fc.constantFrom('pids', 'comms', 'ports', 'call_cap', 'rate_cap', 'libraries', 'stats_interval_ms', 'reason', 'data', 'seq', 'conn_id', 'kernel', 'config'), fc.anything({ withBigInt: true, withTypedArray: true })).map((rest) => ({ ...rest, ...t })),
      ),
    );
    fc.assert(
      fc.property(body, (v) => {
        let packed: Buffer;
        try {
          packed = enc.encode(v as RawFrame);
        } catch {
          return; // not encodable as msgpack: nothing a peer could send
        }
        const out = new FrameDecoder().push(framed(packed));
        assert.strictEqual(out.length, 1);
        const x = out[0]!;
        if (x instanceof FrameError) assert.match(x.code, /^(bad_frame|bad_msgpack)$/);
        else assert.strictEqual(typeof x.type, 'string');
      }),
      params(),
    );
  });

  it('valid frames with garbage between them, each garbage run cut off by abandonPartial(): every valid frame comes through', () => {
    const valid = exampleFrames().filter((f) => f.type === 'config' || f.type === 'shutdown');
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.constantFrom(...valid), fc.uint8Array({ maxLength: 300 })), { maxLength: 6 }), (pairs) => {
        const d = new FrameDecoder();
        const got: RawFrame[] = [];
        for (const [f, junk] of pairs) {
          for (const x of d.push(Buffer.from(junk))) if (!(x instanceof FrameError)) got.push(x);
          d.abandonPartial(); // the helper's timer does this after 2 s without a byte
          for (const x of d.push(enc.encode(f))) if (!(x instanceof FrameError)) got.push(x);
        }
        // garbage may itself decode as a valid frame; the real ones are a subsequence
        let i = 0;
        for (const g of got) if (i < pairs.length && JSON.stringify(frameToJson(g)) === JSON.stringify(frameToJson(pairs[i]![0] as unknown as RawFrame))) i++;
        assert.strictEqual(i, pairs.length, 'every valid frame decoded');
      }),
      params(),
    );
  });
});

describe('fuzz: capture records decoder (helper/records/records.ts)', function () {
  this.timeout(60_000);

  it('arbitrary batches: records or a RecordError, never another exception', () => {
    const header = fc.record({ size: fc.oneof(fc.nat({ max: 600 }), fc.constant(24), fc.constant(144)), kind: fc.integer({ min: 0, max: 8 }) });
    const batch = fc.oneof(
      fc.uint8Array({ maxLength: 1024 }).map((u) => Buffer.from(u)),
      // plausible headers (right sizes and kinds) over arbitrary bodies
      fc.array(fc.tuple(header, fc.uint8Array({ maxLength: 600 })), { maxLength: 4 }).map((rs) =>
        Buffer.concat(
          rs.map(([h, body]) => {
            const b = Buffer.alloc(Math.max(24, h.size));
            Buffer.from(body).copy(b, 0, 0, b.length);
            b.writeUInt32LE(h.size, 0);
            b.writeUInt16LE(h.kind, 4);
            if (h.kind === 1 && b.length >= 144) b.writeUInt32LE(b.length - 144, 64);
            return b;
          }),
        ),
      ),
    );
    fc.assert(
      fc.property(batch, (b) => {
        try {
          const rs = decodeBatch(b);
          const calls = new CallAssembler(() => undefined);
          for (const r of rs) if (r.kind === 'data') calls.push(r);
          calls.flush();
        } catch (e) {
          assert.ok(e instanceof RecordError, `not a RecordError: ${(e as Error).stack}`);
        }
        if (b.length >= 24) {
          try {
            decodeRecord(b);
          } catch (e) {
            assert.ok(e instanceof RecordError, `not a RecordError: ${(e as Error).stack}`);
          }
        }
      }),
      params(),
    );
  });
});

describe('fuzz: renderers of captured HTTP (host, replay, show)', function () {
  this.timeout(60_000);

  for (const [name, render] of Object.entries(RENDERERS)) {
    it(`${name}: any valid frames (gaps, overlaps, truncation, HTTP-like and random bytes) render without a throw`, () => {
      fc.assert(
        fc.property(connFrames, (frames) => {
          render(frames);
        }),
        params(),
      );
    });
  }

  it('replay of a damaged recording: a UserError naming the file, never a crash', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'https-capture-fuzz-'));
    const good = Buffer.concat(exampleFrames().map((f) => enc.encode(f)));
    try {
      await fc.assert(
        fc.asyncProperty(fc.nat({ max: good.length }), fc.array(fc.tuple(fc.nat({ max: good.length - 1 }), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }), fc.constantFrom('text' as const, 'jsonl' as const, 'har' as const, 'pcapng' as const, 'raw' as const, 'frames' as const), async (cut, flips, format) => {
          const b = Buffer.from(good.subarray(0, cut));
          for (const [at, v] of flips) if (at < b.length) b[at] = v;
          const file = path.join(dir, 'rec');
          fs.writeFileSync(file, b, { mode: 0o600 });
          try {
            await replayCommand(file, format, { write: () => undefined }, { redact: true, color: false, printLimit: 4096, version: '0' });
          } catch (e) {
            assert.ok(e instanceof UserError, `not a UserError: ${(e as Error).stack}`);
            assert.ok(e.message.includes(file));
          }
        }),
        params(100),
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('fuzz: malformed and truncated ELF files (helper/discovery/elf.ts, openssl.ts, libraries.ts)', function () {
  this.timeout(120_000);
  const LIBSSL = ['/usr/lib/x86_64-linux-gnu/libssl.so.3', '/lib/x86_64-linux-gnu/libssl.so.3'].find((p) => fs.existsSync(p));
  let dir: string;
  let real: Buffer;

  before(function () {
    if (!LIBSSL) this.skip();
    real = fs.readFileSync(LIBSSL!);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'https-capture-elf-'));
  });
  after(() => dir && fs.rmSync(dir, { recursive: true, force: true }));

  /** Where the real file keeps its program and section header tables. */
  const tables = (): { ph: [number, number]; sh: [number, number] } => ({
    ph: [Number(real.readBigUInt64LE(32)), real.readUInt16LE(54) * real.readUInt16LE(56)],
    sh: [Number(real.readBigUInt64LE(40)), real.readUInt16LE(58) * real.readUInt16LE(60)],
  });
  /** libssl cut short, with bytes overwritten: in the headers, the tables they point at, anywhere. */
  const damaged = fc.record({
    cut: fc.oneof(fc.constant(Infinity), fc.nat(), fc.integer({ min: 0, max: 128 })),
    writes: fc.array(
      fc.record({
        region: fc.constantFrom('header', 'ph', 'sh', 'anywhere'),
        at: fc.nat(),
        bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }),
      }),
      { maxLength: 6 },
    ),
  });

  it('the planner, the symbol reader and the library checks: a plan, an ElfError or false, never a crash', () => {
    const file = path.join(dir, 'libssl.so.3');
    fc.assert(
      fc.property(damaged, ({ cut, writes }) => {
        const b = Buffer.from(real.subarray(0, Math.min(real.length, cut === Infinity ? real.length : cut % (real.length + 1))));
        const t = tables();
        for (const w of writes) {
          const [start, len] = w.region === 'header' ? [0, 64] : w.region === 'ph' ? t.ph : w.region === 'sh' ? t.sh : [0, b.length];
          const at = start + (w.at % Math.max(1, len));
          if (at < b.length) Buffer.from(w.bytes).copy(b, at);
        }
        fs.writeFileSync(file, b);
        const plan = planOpenSsl(file, ['SSL_write', 'SSL_read', 'SSL_set_fd']);
        assert.ok(plan.kind === 'internal' || plan.kind === 'exported');
        if (plan.kind === 'exported') assert.strictEqual(typeof plan.reason, 'string');
        assert.strictEqual(typeof hasOpenSsl(file), 'boolean');
        assert.ok(exportedOffsets(file, ['SSL_write']) instanceof Map);
        let elf: ElfFile | undefined;
        try {
          elf = ElfFile.open(file);
          elf.functions(['SSL_write', 'SSL_read']);
        } catch (e) {
          assert.ok(e instanceof ElfError, `not an ElfError: ${(e as Error).stack}`);
        } finally {
          elf?.close();
        }
      }),
      params(300),
    );
  });

  it('a file that is not there, a directory, an empty file: a reason, not a crash', () => {
    const empty = path.join(dir, 'empty.so');
    fs.writeFileSync(empty, '');
    for (const p of [path.join(dir, 'gone.so'), dir, empty]) {
      const plan = planOpenSsl(p);
      assert.strictEqual(plan.kind, 'exported');
      assert.strictEqual(hasOpenSsl(p), false);
    }
  });
});

describe('vanishing /proc entries during discovery (helper/discovery/libraries.ts)', function () {
  this.timeout(60_000);

  it('scans of /proc while 200 short-lived processes come and go: no throw, every path a string', async () => {
    const { spawn } = await import('child_process');
    const { mappedLibraries, tlsExecutables, findTlsLibraries } = await import('../../helper/discovery/libraries');
    let running = 0;
    let started = 0;
    let scans = 0;
    await new Promise<void>((resolve) => {
      const more = (): void => {
        while (running < 8 && started < 200) {
          running++;
          started++;
          // curl maps libssl and exits at once: its /proc entries vanish mid-scan
          const c = spawn('curl', ['--version'], { stdio: 'ignore' });
          c.on('exit', () => {
            running--;
            if (started === 200 && running === 0) resolve();
            else more();
          });
        }
      };
      more();
      const scan = (): void => {
        if (started === 200 && running === 0) return;
        for (const m of mappedLibraries()) assert.ok(typeof m.path === 'string' && m.pid > 0);
        for (const e of tlsExecutables(new Set())) assert.strictEqual(typeof e.path, 'string');
        for (const l of findTlsLibraries()) assert.strictEqual(typeof l.path, 'string');
        scans++;
        setImmediate(scan);
      };
      scan();
    });
    assert.ok(scans > 2, `only ${scans} scans ran during the churn`);
  });

  it('an executable whose process ended before it could be read is judged again later, not skipped for good (regression)', async () => {
    const { tlsExecutables } = await import('../../helper/discovery/libraries');
    const seen = new Set<string>();
    // This test's own node has OpenSSL inside. First sighting: the file cannot be read (as when
    // the process exits between the stat and the open).
    assert.deepStrictEqual(tlsExecutables(seen, [process.pid], () => undefined), []);
    assert.strictEqual(seen.size, 0, 'not marked as judged');
    const found = tlsExecutables(seen, [process.pid]);
    assert.strictEqual(found.length, 1, 'found at the next sighting');
    assert.strictEqual(seen.size, 1);
    assert.deepStrictEqual(tlsExecutables(seen, [process.pid]), [], 'and judged once');
  });
});
