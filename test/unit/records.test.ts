// records.test.ts: helper/records/records.ts against bpf/capture.h (offsets generated into layout.ts by the C compiler, checked against the header's own asserts; enum values from the header text), and the batch decoder's round trips and errors.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import * as crypto from 'crypto';
import { PACKAGE_ROOT } from '../../helper/package';
import { CAPTURE_H_SHA256 } from '../../helper/records/layout';
import {
  kernelComm,
  CaptureRecord,
  CHUNK_MAX,
  COMM_LEN,
  DataRecord,
  decodeBatch,
  encodeConfig,
  encodeData,
  MAX_CHUNKS,
  OFFSETS,
  RecordError,
  SockInfo,
  TlsFunction,
} from '../../helper/records/records';

/** Bytes 0..n-1 of a pattern that does not repeat with a period of 256 (catches shifted copies). */
function pattern(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

type Fields = Omit<DataRecord, 'kind'>;

const NO_SOCK: SockInfo = { fd: -1, role: 'unknown', family: 'unknown', localIp: '0.0.0.0', localPort: 0, remoteIp: '0.0.0.0', remotePort: 0, midStream: false };
const V4_SOCK: SockInfo = { fd: 5, role: 'client', family: 'ipv4', localIp: '127.0.0.1', localPort: 50312, remoteIp: '10.1.2.3', remotePort: 443, midStream: true };
const V6_SOCK: SockInfo = { fd: 1023, role: 'server', family: 'ipv6', localIp: '2001:db8::1', localPort: 8443, remoteIp: '::ffff:192.168.0.7', remotePort: 65535, midStream: false };

function fields(over: Partial<Fields> = {}): Fields {
  return {
    tsNs: 123_456_789_012_345n,
    pid: 4242,
    tid: 4243,
    comm: 'curl',
    connId: 7n,
    ssl: 0x5555_dead_beefn,
    dir: 'egress',
    func: 'SSL_write',
    seq: 1000,
    ack: 2000,
    callLen: 10,
    capLen: 10,
    chunkOff: 0,
    truncated: false,
    rateLimited: false,
    sock: NO_SOCK,
    data: Buffer.from('0123456789'),
    ...over,
  };
}

/** The values of `enum name { ... }` in a C header. */
function cEnum(header: string, name: string): Map<string, number> {
  const m = new RegExp(`enum ${name} \\{([^}]*)\\}`).exec(header);
  assert.ok(m, `enum ${name} in capture.h`);
  const out = new Map<string, number>();
  let next = 0;
  for (const line of m[1]!.replace(/\/\*[\s\S]*?\*\//g, '').split(',')) {
    const e = /^\s*([A-Z0-9_]+)\s*(?:=\s*(\d+))?\s*$/.exec(line);
    if (!e) continue;
    const v = e[2] !== undefined ? Number(e[2]) : next;
    out.set(e[1]!, v);
    next = v + 1;
  }
  return out;
}

describe('records: layout of bpf/capture.h', function () {
  // lay: OFFSETS plus the header's enum values and #defines, read from the header text here,
  // independently of scripts/gen-layout.js (which takes its numbers from the C compiler).
  let lay: Record<string, number>;
  let header: string;

  before(function () {
    header = fs.readFileSync(path.join(PACKAGE_ROOT, 'bpf', 'capture.h'), 'utf8');
    lay = { ...OFFSETS };
    for (const m of header.matchAll(/^enum (cap_\w+) \{/gm)) for (const [k, v] of cEnum(header, m[1]!)) lay[k] = v;
    for (const m of header.matchAll(/^#define (CAP_\w+) (\d+)\s/gm)) lay[m[1]!] = Number(m[2]);
  });

  it('layout.ts was generated from this capture.h (node scripts/gen-layout.js; setup.sh runs it)', function () {
    const sha = crypto.createHash('sha256').update(header).digest('hex');
    assert.strictEqual(CAPTURE_H_SHA256, sha, 'helper/records/layout.ts is stale: run node scripts/gen-layout.js');
  });

  it('OFFSETS has every struct of capture.h and every field but padding, sizes as the header asserts them', function () {
    const text = header.replace(/\/\*[\s\S]*?\*\//g, '');
    const structs = [...text.matchAll(/struct (cap_\w+) \{([^}]*)\};/g)];
    assert.ok(structs.length >= 7, `${structs.length} structs in capture.h`);
    for (const [, name, body] of structs) {
      assert.strictEqual(typeof lay[name!], 'number', `OFFSETS has ${name}`);
      for (const decl of body!.split(';').map((d) => d.trim()).filter(Boolean)) {
        const field = /(\w+)(\[[^\]]*\])?$/.exec(decl)![1]!;
        if (!/^pad\d*$/.test(field)) assert.strictEqual(typeof lay[`${name}.${field}`], 'number', `OFFSETS has ${name}.${field}`);
      }
    }
    const asserted = [...header.matchAll(/_Static_assert\(sizeof\(struct (cap_\w+)\) == (\d+)/g)];
    assert.ok(asserted.length >= 7);
    for (const [, name, size] of asserted) assert.strictEqual(lay[name!], Number(size), `sizeof(struct ${name})`);
    // Fields in declaration order at increasing offsets: no two share a place.
    assert.ok(OFFSETS['cap_data.conn_id'] < OFFSETS['cap_data.ssl'] && OFFSETS['cap_data.sock'] + OFFSETS.cap_sock === OFFSETS.cap_data);
  });

  it('CHUNK_MAX, COMM_LEN and MAX_CHUNKS equal the header constants', function () {
    assert.strictEqual(CHUNK_MAX, lay.CAP_CHUNK_MAX);
    assert.strictEqual(COMM_LEN, lay.CAP_COMM_LEN);
    assert.strictEqual(MAX_CHUNKS, lay.CAP_MAX_CHUNKS);
  });

  it('encodeData writes size, kind, flags, dir and func as capture.h defines them', function () {
    const funcs = cEnum(header, 'cap_func');
    const dirs = cEnum(header, 'cap_dir');
    assert.strictEqual(funcs.size, 17);
    // Name in records.ts → enumerator in capture.h.
    const names: [TlsFunction, string][] = [
      ['SSL_write', 'CAP_FN_SSL_WRITE'],
      ['SSL_read', 'CAP_FN_SSL_READ'],
      ['SSL_write_ex', 'CAP_FN_SSL_WRITE_EX'],
      ['SSL_read_ex', 'CAP_FN_SSL_READ_EX'],
      ['ssl_write_internal', 'CAP_FN_SSL_WRITE_INTERNAL'],
      ['ssl_read_internal', 'CAP_FN_SSL_READ_INTERNAL'],
      ['gnutls_record_send', 'CAP_FN_GNUTLS_RECORD_SEND'],
      ['gnutls_record_recv', 'CAP_FN_GNUTLS_RECORD_RECV'],
      ['crypto/tls.(*Conn).Write', 'CAP_FN_GO_TLS_WRITE'],
      ['crypto/tls.(*Conn).Read', 'CAP_FN_GO_TLS_READ'],
      ['PR_Write', 'CAP_FN_PR_WRITE'],
      ['PR_Send', 'CAP_FN_PR_SEND'],
      ['PR_Read', 'CAP_FN_PR_READ'],
      ['PR_Recv', 'CAP_FN_PR_RECV'],
      ['PR_Writev', 'CAP_FN_PR_WRITEV'],
      ['rustls::conn::CommonState::send_some_plaintext', 'CAP_FN_RUSTLS_WRITE'],
      ['rustls::conn::CommonState::take_received_plaintext', 'CAP_FN_RUSTLS_RECEIVED'],
    ];
    for (const [func, enumerator] of names) {
      const want = funcs.get(enumerator);
      assert.notStrictEqual(want, undefined, `capture.h has ${enumerator}`);
      const b = encodeData(fields({ func, data: Buffer.from('abc') }));
      assert.strictEqual(b[lay['cap_data.func']!], want, func);
    }
    for (const dir of ['egress', 'ingress'] as const) {
      const b = encodeData(fields({ dir, truncated: true, data: Buffer.from('abcde') }));
      assert.strictEqual(b[lay['cap_data.dir']!], dirs.get(`CAP_DIR_${dir.toUpperCase()}`), dir);
      assert.strictEqual(b.length, lay.cap_data! + 5);
      assert.strictEqual(b.readUInt32LE(lay['cap_hdr.size']!), lay.cap_data! + 5);
      assert.strictEqual(b.readUInt16LE(lay['cap_hdr.kind']!), lay.CAP_EV_DATA);
      assert.strictEqual(b.readUInt16LE(lay['cap_hdr.flags']!), lay.CAP_F_TRUNCATED);
      assert.strictEqual(b.readUInt32LE(lay['cap_data.data_len']!), 5);
      assert.strictEqual(b.subarray(lay.cap_data!).toString(), 'abcde');
    }
    const plain = encodeData(fields({ truncated: false }));
    assert.strictEqual(plain.readUInt16LE(lay['cap_hdr.flags']!), 0);
  });

  it('encodeConfig puts filter and call_cap at their offsets', function () {
    const callCap = 2 ** 33 + 5; // needs all 64 bits of call_cap
    const b = encodeConfig(lay.CAP_FILTER_PID! | lay.CAP_FILTER_COMM!, callCap);
    assert.strictEqual(b.length, lay.cap_config);
    assert.strictEqual(b.readUInt32LE(lay['cap_config.filter']!), 3);
    assert.strictEqual(b.readBigUInt64LE(lay['cap_config.call_cap']!), BigInt(callCap));
    // the pad between them stays zero
    assert.strictEqual(b.readUInt32LE(4), 0);
    const small = encodeConfig(1, 4096);
    assert.strictEqual(small.readUInt32LE(lay['cap_config.filter']!), 1);
    assert.strictEqual(small.readBigUInt64LE(lay['cap_config.call_cap']!), 4096n);
  });
});

describe('records: decodeBatch', function () {
  it('round-trips every field of several records back to back, including empty and 16384-byte data', function () {
    const inputs: Fields[] = [
      fields(),
      fields({
        tsNs: 0xffff_ffff_ffff_fff0n,
        pid: 0xffff_fff0,
        tid: 1,
        comm: 'abcdefghijklmno', // 15 bytes: the most a kernel comm holds
        connId: 0xfedc_ba98_7654_3210n,
        ssl: 0x7fff_ffff_f000n,
        dir: 'ingress',
        func: 'ssl_read_internal',
        seq: 2 ** 40 + 3,
        ack: 2 ** 35 + 1,
        callLen: 5 * CHUNK_MAX + 17,
        capLen: 3 * CHUNK_MAX,
        chunkOff: 2 * CHUNK_MAX,
        truncated: true,
        sock: V6_SOCK,
        data: pattern(CHUNK_MAX, 9),
      }),
      fields({ data: Buffer.alloc(0), func: 'SSL_read_ex', dir: 'ingress', comm: '', callLen: 0, capLen: 0, seq: 0, ack: 0 }),
      fields({ func: 'SSL_write_ex', data: Buffer.from([0, 0xff, 0x80, 0x0a]), callLen: 4, capLen: 4, comm: 'x', sock: V4_SOCK }),
      fields({ func: 'ssl_write_internal', data: pattern(1, 3), tsNs: 1n, connId: 0n, ssl: 0n }),
      fields({ func: 'SSL_read', data: pattern(300, 4) }),
    ];
    const batch = Buffer.concat(inputs.map((r) => encodeData(r)));
    const out = decodeBatch(batch);
    assert.strictEqual(out.length, inputs.length);
    out.forEach((got, i) => {
      const want: CaptureRecord = { kind: 'data', ...inputs[i]! };
      assert.deepStrictEqual(got, want, `record ${i}`);
    });
    assert.strictEqual((out[1] as DataRecord).data.length, 16384);
    assert.strictEqual((out[2] as DataRecord).data.length, 0);
  });

  it('keeps at most COMM_LEN - 1 bytes of comm', function () {
    const [r] = decodeBatch(encodeData(fields({ comm: 'abcdefghijklmnopqrst' })));
    assert.strictEqual((r as DataRecord).comm, 'abcdefghijklmno');
  });

  it('cuts a --comm name by bytes, as the kernel cuts task->comm and as records read it back', function () {
    // 'é' is two bytes of UTF-8: 10 of them are 20 bytes, cut at 15 inside the 8th.
    for (const name of ['abcdefghijklmnopqrst', 'éééééééééé', 'python3']) {
      const [r] = decodeBatch(encodeData(fields({ comm: name })));
      assert.strictEqual(kernelComm(name), (r as DataRecord).comm, name);
      assert.ok(Buffer.byteLength(kernelComm(name).replace(/\ufffd$/, '')) <= 15, name);
    }
    assert.notStrictEqual(kernelComm('éééééééééé'), 'éééééééééé'.slice(0, 15));
  });

  it('decodes an empty batch as no records', function () {
    assert.deepStrictEqual(decodeBatch(Buffer.alloc(0)), []);
  });

  it('decodes an exit record', function () {
    const O = OFFSETS;
    const b = Buffer.alloc(O.cap_exit);
    b.writeUInt32LE(b.length, O['cap_hdr.size']);
    b.writeUInt16LE(2, O['cap_hdr.kind']); // CAP_EV_EXIT
    b.writeBigUInt64LE(99n, O['cap_hdr.ts_ns']);
    b.writeUInt32LE(10, O['cap_hdr.pid']);
    b.writeUInt32LE(11, O['cap_hdr.tid']);
    b.writeInt32LE(-9, O['cap_exit.exit_code']);
    b.write('python3', O['cap_exit.comm']);
    assert.deepStrictEqual(decodeBatch(b), [{ kind: 'exit', tsNs: 99n, pid: 10, tid: 11, comm: 'python3', exitCode: -9 }]);
  });

  describe('errors', function () {
    const good = encodeData(fields());

    it('throws RecordError on a truncated header', function () {
      assert.throws(() => decodeBatch(Buffer.concat([good, good.subarray(0, 23)])), RecordError);
      assert.throws(() => decodeBatch(good.subarray(0, 10)), RecordError);
      assert.throws(() => decodeBatch(Buffer.alloc(1)), (e: unknown) => e instanceof RecordError && e.name === 'RecordError');
    });

    it('throws RecordError on a size larger than the batch', function () {
      assert.throws(() => decodeBatch(good.subarray(0, good.length - 1)), RecordError);
      const b = Buffer.concat([good, good]);
      b.writeUInt32LE(good.length + 1000, good.length);
      assert.throws(() => decodeBatch(b), RecordError);
    });

    it('throws RecordError on a size smaller than a header', function () {
      for (const size of [0, 1, 23]) {
        const b = Buffer.from(good);
        b.writeUInt32LE(size, 0);
        assert.throws(() => decodeBatch(b), RecordError, `size ${size}`);
      }
    });

    it('throws RecordError on a data record whose data_len disagrees with its size', function () {
      for (const dataLen of [9, 11, 0, 0xffffffff]) {
        const b = Buffer.from(good);
        b.writeUInt32LE(dataLen, OFFSETS['cap_data.data_len']);
        assert.throws(() => decodeBatch(b), RecordError, `data_len ${dataLen}`);
      }
    });

    it('throws RecordError on a data record shorter than struct cap_data', function () {
      const b = Buffer.from(good.subarray(0, OFFSETS.cap_data - 8));
      b.writeUInt32LE(b.length, 0);
      assert.throws(() => decodeBatch(b), RecordError);
    });
  });

  it('skips a record of unknown kind and decodes the one after it', function () {
    const unknown = Buffer.alloc(OFFSETS.cap_hdr + 13, 0xaa);
    unknown.writeUInt32LE(unknown.length, OFFSETS['cap_hdr.size']);
    unknown.writeUInt16LE(7, OFFSETS['cap_hdr.kind']);
    const a = fields({ data: Buffer.from('after') });
    const b = fields({ data: Buffer.from('last'), seq: 5 });
    const out = decodeBatch(Buffer.concat([unknown, encodeData(a), unknown, encodeData(b)]));
    assert.deepStrictEqual(out, [
      { kind: 'data', ...a },
      { kind: 'data', ...b },
    ]);
  });
});
