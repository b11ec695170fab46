// show.test.ts: helper/formats/show.ts isText, hexDump, showCall and formatTime, the rendering of captured calls for people.
import * as assert from 'assert';
import { Call } from '../../helper/records/calls';
import { formatTime, ShowOptions, showCall } from '../../helper/formats/show';
import { hexDump, isText } from '../../helper/http/bytes';

function call(over: Partial<Call> = {}): Call {
  const data = over.data ?? Buffer.from('GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n');
  return {
    tsNs: 0n,
    pid: 4321,
    tid: 4321,
    comm: 'curl',
    connId: 17n,
    ssl: 0xabcn,
    dir: 'egress',
    func: 'SSL_write',
    sock: { fd: 5, role: 'client', family: 'ipv4', localIp: '127.0.0.1', localPort: 50312, remoteIp: '127.0.0.1', remotePort: 443, midStream: false },
    seq: 0,
    callLen: data.length,
    data,
    truncatedBytes: 0,
    rateLimited: false,
    lostBytes: 0,
    ...over,
  };
}

const plain: ShowOptions = { limit: 0, wallOffsetNs: 0n, color: false };

describe('show: isText', function () {
  it('accepts HTTP text, UTF-8 and the empty buffer', function () {
    assert.strictEqual(isText(Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\n')), true);
    assert.strictEqual(isText(Buffer.from('{"name":"Zoë","emoji":"😀"}\tend')), true);
    assert.strictEqual(isText(Buffer.alloc(0)), true);
  });

  it('rejects NUL and other control bytes', function () {
    assert.strictEqual(isText(Buffer.from('HTTP/1.1 200 OK\r\n\0\r\n')), false);
    assert.strictEqual(isText(Buffer.from([0x00, 0x00, 0x00, 0x04])), false);
    assert.strictEqual(isText(Buffer.from('abc\x1b[31mred')), false);
    assert.strictEqual(isText(Buffer.from('abc\x7f')), false);
  });

  it('rejects invalid UTF-8', function () {
    assert.strictEqual(isText(Buffer.from([0x48, 0x54, 0x54, 0x50, 0xff, 0xfe])), false);
    assert.strictEqual(isText(Buffer.from([0x61, 0xc3, 0x28])), false); // bad continuation byte
    assert.strictEqual(isText(Buffer.from([0x1f, 0x8b, 0x08, 0x00])), false); // gzip magic
  });
});

describe('show: hexDump', function () {
  it('prints offset, 16 bytes of hex and the ASCII column, for 20 bytes', function () {
    const b = Buffer.concat([Buffer.from('GET / HTTP/1.1\r\n'), Buffer.from([0x00, 0xff, 0x7f, 0x20])]);
    assert.strictEqual(b.length, 20);
    assert.strictEqual(
      hexDump(b),
      '00000000  47 45 54 20 2f 20 48 54 54 50 2f 31 2e 31 0d 0a  GET / HTTP/1.1..\n' +
        '00000010  00 ff 7f 20                                      ... ',
    );
  });

  it('prints nothing for no bytes and one line per 16 bytes', function () {
    assert.strictEqual(hexDump(Buffer.alloc(0)), '');
    const lines = hexDump(Buffer.alloc(0x120, 0x41)).split('\n');
    assert.strictEqual(lines.length, 0x12);
    assert.strictEqual(lines[0x11], `00000110  ${'41 '.repeat(15)}41  ${'A'.repeat(16)}`);
  });
});

describe('show: formatTime', function () {
  // In a zone that is neither UTC nor a whole number of hours from it, so that UTC or a
  // wrong offset shows.
  let savedTz: string | undefined;
  before(function () {
    savedTz = process.env.TZ;
    process.env.TZ = 'Asia/Kolkata';
    if (new Date(0).getMinutes() !== 30) this.skip(); // no time zone data
  });
  after(function () {
    if (savedTz === undefined) delete process.env.TZ;
    else process.env.TZ = savedTz;
  });

  it('gives local HH:MM:SS.micro', function () {
    assert.strictEqual(formatTime(0n), '05:30:00.000000');
    const ms = new Date(2024, 0, 2, 13, 4, 5, 0).getTime(); // local time, 0 ms
    assert.strictEqual(formatTime(BigInt(ms) * 1_000_000n + 123_456_789n), '13:04:05.123456');
    const ms2 = new Date(2024, 6, 9, 0, 0, 9, 0).getTime();
    assert.strictEqual(formatTime(BigInt(ms2) * 1_000_000n + 42_999n), '00:00:09.000042');
    const ms3 = new Date(2023, 11, 31, 23, 59, 59, 0).getTime();
    assert.strictEqual(formatTime(BigInt(ms3) * 1_000_000n + 999_999_999n), '23:59:59.999999');
  });
});

describe('show: showCall', function () {
  it('heads the call with comm, pid, direction and length, then the text', function () {
    const c = call({ pid: 4321, tid: 4330, connId: 17n, seq: 900 });
    const out = showCall(c, plain);
    const [head, ...rest] = out.split('\n');
    assert.ok(head!.includes('curl[4321/4330]'), head);
    assert.ok(head!.includes('>> sent'), head);
    assert.ok(!head!.includes('received'), head);
    assert.ok(head!.includes(` ${c.callLen} bytes`), head);
    assert.ok(head!.includes('SSL_write'), head);
    assert.ok(head!.includes('conn 17'), head);
    assert.ok(head!.includes('offset 900'), head);
    assert.deepStrictEqual(rest, ['GET /index.html HTTP/1.1', 'Host: example.com', '', '']);
    assert.ok(!out.includes('\x1b'), 'no color codes');
  });

  it('shows the time of the call plus the wall-clock offset', function () {
    const ms = new Date(2024, 4, 6, 7, 8, 9, 0).getTime();
    const out = showCall(call({ tsNs: 250_000n }), { ...plain, wallOffsetNs: BigInt(ms) * 1_000_000n });
    assert.ok(out.startsWith('07:08:09.000250 '), out);
  });

  it('says received for ingress and leaves out the tid when it is the pid', function () {
    const out = showCall(call({ dir: 'ingress', func: 'SSL_read', pid: 55, tid: 55, comm: 'python3', data: Buffer.from('HTTP/1.1 200 OK\r\n') }), plain);
    const head = out.split('\n')[0]!;
    assert.ok(head.includes('python3[55]'), head);
    assert.ok(head.includes('<< received'), head);
    assert.ok(!head.includes('sent'), head);
    assert.ok(head.includes(' 17 bytes'), head);
  });

  it('hex-dumps binary data', function () {
    const out = showCall(call({ data: Buffer.from([0, 1, 2, 0x41]) }), plain);
    assert.ok(out.includes('00000000  00 01 02 41'), out);
  });

  it('notes truncated and lost bytes', function () {
    const data = Buffer.from('partial body');
    const out = showCall(call({ data, callLen: 5000, truncatedBytes: 3000, lostBytes: 1988 }), plain);
    assert.ok(/ 5000 bytes /.test(out.split('\n')[0]!), out);
    const notes = out.trimEnd().split('\n').pop()!;
    assert.ok(notes.startsWith('[') && notes.endsWith(']'), notes);
    assert.ok(/\b3000 bytes past the per-call cap/.test(notes), notes);
    assert.ok(/\b1988 bytes LOST/.test(notes), notes);
    const onlyCut = showCall(call({ data, callLen: 5000, truncatedBytes: 4988 }), plain);
    assert.ok(/\b4988 bytes past the per-call cap/.test(onlyCut), onlyCut);
    assert.ok(!/LOST/.test(onlyCut), onlyCut);
    const onlyLost = showCall(call({ data, callLen: 5000, lostBytes: 4988 }), plain);
    assert.ok(/\b4988 bytes LOST/.test(onlyLost), onlyLost);
    assert.ok(!/per-call cap/.test(onlyLost), onlyLost);
    const none = showCall(call(), plain);
    assert.ok(!/cap|LOST|not shown/.test(none), none);
  });

  it('prints at most limit bytes and notes the rest', function () {
    const data = Buffer.from('0123456789'.repeat(10));
    const out = showCall(call({ data }), { ...plain, limit: 25 });
    const lines = out.trimEnd().split('\n');
    assert.strictEqual(lines[1], '0123456789012345678901234');
    assert.ok(lines[0]!.includes(' 100 bytes'), lines[0]);
    assert.ok(/\b75 more bytes not shown \(--print-limit\)/.test(lines[2]!), lines[2]);
    const all = showCall(call({ data }), { ...plain, limit: 100 });
    assert.ok(!all.includes('not shown'), all);
    assert.ok(all.includes('0123456789'.repeat(10)));
  });

  it('colors only when asked', function () {
    const out = showCall(call(), { ...plain, color: true });
    assert.ok(out.includes('\x1b['), 'color codes');
    assert.ok(out.includes('curl'));
  });

  // --print-limit (or the capture cap, or a read) may cut a UTF-8 character in two: still text.
  it('shows UTF-8 text as text when the print limit cuts a character in two', function () {
    const data = Buffer.from('{"name":"Zoë"}'); // 'ë' is bytes 11-12: a limit of 12 cuts it
    const out = showCall(call({ data }), { ...plain, limit: 12 });
    assert.ok(out.split('\n')[1]!.startsWith('{"name":"Zo'), out);
  });
});
