// http2.ts: HTTP/2 of one connection (RFC 9113): the client preface, frames (their 9-byte
// headers parsed here), header blocks decoded with hpack.js (HEADERS, CONTINUATION,
// PUSH_PROMISE), streams paired into exchanges with their DATA, trailers, 1xx and resets.
// HPACK is stateful: a connection joined mid-stream, or a loss inside a header block, makes
// every later header block undecodable, so from there on the connection is shown frame by
// frame and no header is ever guessed. Pure code.
//
// hpack.js (indutny; the HPACK of the spdy package, ~60 M downloads a month) does the
// decoding. Frame headers are 9 fixed bytes: no library is needed for them.
import * as hpack from 'hpack.js';
import { ConnParser, Dir, HttpRequestMessage, HttpResponseMessage, ParserSink } from './messages';
import { isSensitive, Mask, maskValue } from './redact';

/** What every HTTP/2 client sends first (RFC 9113, 3.4). */
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export const FRAME_TYPES = ['DATA', 'HEADERS', 'PRIORITY', 'RST_STREAM', 'SETTINGS', 'PUSH_PROMISE', 'PING', 'GOAWAY', 'WINDOW_UPDATE', 'CONTINUATION'] as const;
const ERROR_CODES = [
  'NO_ERROR', 'PROTOCOL_ERROR', 'INTERNAL_ERROR', 'FLOW_CONTROL_ERROR', 'SETTINGS_TIMEOUT', 'STREAM_CLOSED', 'FRAME_SIZE_ERROR',
  'REFUSED_STREAM', 'CANCEL', 'COMPRESSION_ERROR', 'CONNECT_ERROR', 'ENHANCE_YOUR_CALM', 'INADEQUATE_SECURITY', 'HTTP_1_1_REQUIRED',
];
const F = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 };
const MAX_FRAME = (1 << 24) - 1;

export function errorName(code: number): string {
  return ERROR_CODES[code] ?? `0x${code.toString(16)}`;
}

export interface FrameHeader {
  length: number;
  type: number;
  flags: number;
  streamId: number;
}

export function frameHeader(b: Buffer, at = 0): FrameHeader {
  return { length: b.readUIntBE(at, 3), type: b[at + 3]!, flags: b[at + 4]!, streamId: b.readUInt32BE(at + 5) & 0x7fffffff };
}

/** "HEADERS stream 1, 32 bytes, END_STREAM|END_HEADERS" */
export function describeFrame(h: FrameHeader): string {
  const name = FRAME_TYPES[h.type] ?? `type 0x${h.type.toString(16)}`;
  const flags: string[] = [];
  if (h.type === 0 || h.type === 1) {
    if (h.flags & F.END_STREAM) flags.push('END_STREAM');
  } else if ((h.type === 4 || h.type === 6) && h.flags & F.ACK) flags.push('ACK');
  if ((h.type === 1 || h.type === 5 || h.type === 9) && h.flags & F.END_HEADERS) flags.push('END_HEADERS');
  return `${name}${h.streamId ? ` stream ${h.streamId}` : ''}, ${h.length} bytes${flags.length ? `, ${flags.join('|')}` : ''}`;
}

/**
 * Whether bytes look like whole HTTP/2 frames from their start: known types, a clear reserved
 * bit, sane lengths, and frames that end exactly at the end (or a last one still coming).
 * Used to recognize HTTP/2 on a connection joined mid-stream.
 */
export function looksLikeFrames(b: Buffer): boolean {
  let at = 0;
  let n = 0;
  while (at + 9 <= b.length) {
    const h = frameHeader(b, at);
    if (h.type > 9 || (b[at + 5]! & 0x80) !== 0 || h.length > 1 << 20) return false;
    // Stream frames carry a stream id; SETTINGS, PING and GOAWAY never do.
    if (([0, 1, 2, 3, 5, 9].includes(h.type) && h.streamId === 0) || ([4, 6, 7].includes(h.type) && h.streamId !== 0)) return false;
    at += 9 + h.length;
    n++;
  }
  return n > 0 && (at === b.length || at > b.length);
}

// ---- HPACK positions (for masks) -------------------------------------------------------------

interface LiteralAt {
  start: number;
  length: number;
  huffman: boolean;
}

/**
 * Where each header's literal value lies in a header block (RFC 7541, 6): one entry per header
 * field representation, in order (null for an indexed field, which carries no literal); table
 * size updates carry no field and give no entry. hpack.js decodes the values; it does not say
 * where they are, which the same-length masks need.
 */
export function literalPositions(block: Buffer): (LiteralAt | null)[] {
  const out: (LiteralAt | null)[] = [];
  let at = 0;
  const int = (prefix: number): number => {
    const mask = (1 << prefix) - 1;
    let v = block[at++]! & mask;
    if (v < mask) return v;
    let shift = 0;
    for (;;) {
      const b = block[at++];
      if (b === undefined) throw new Error('header block ends inside an integer');
      v += (b & 0x7f) * 2 ** shift;
      shift += 7;
      if ((b & 0x80) === 0) return v;
    }
  };
  const str = (): LiteralAt => {
    const huffman = (block[at]! & 0x80) !== 0;
    const length = int(7);
    const s = { start: at, length, huffman };
    at += length;
    if (at > block.length) throw new Error('header block ends inside a string');
    return s;
  };
  while (at < block.length) {
    const b = block[at]!;
    if (b & 0x80) {
      int(7);
      out.push(null);
    } else if ((b & 0xc0) === 0x40) {
      if (int(6) === 0) str();
      out.push(str());
    } else if ((b & 0xe0) === 0x20) {
      int(5);
    } else {
      if (int(4) === 0) str();
      out.push(str());
    }
  }
  return out;
}

// ---- streams ---------------------------------------------------------------------------------

interface Side {
  headers?: [string, string][];
  pseudo: Record<string, string>;
  trailers: [string, string][];
  body: Buffer[];
  bodyMissing: number;
  ended: boolean;
  firstNs?: bigint;
  lastNs?: bigint;
  startSeq?: number;
  endSeq?: number;
  interim: { status: number; headers: [string, string][]; tsNs: bigint }[];
  notes: string[];
}

interface Stream {
  id: number;
  req: Side;
  res: Side;
  reset?: string;
  pushed: boolean;
}

const newSide = (): Side => ({ pseudo: {}, trailers: [], body: [], bodyMissing: 0, ended: false, interim: [], notes: [] });

interface Decompressor {
  write(b: Buffer): void;
  execute(): void;
  read(): { name: string; value: string } | null;
  on(ev: 'error', fn: (e: Error) => void): void;
  _table?: { protocolMaxSize: number };
}

/** The frames one side sends. */
class Sender {
  /** Bytes not yet parsed into frames, and the offset of buf[0]. */
  private buf: Buffer = Buffer.alloc(0);
  private bufSeq = 0;
  /** Holes (stepped-over gaps) inside the partial frame: offsets in buf. */
  private holes: [number, number][] = [];
  needPreface: boolean;
  synced: boolean;
  readonly hpack: Decompressor;
  block?: { streamId: number; type: number; promised: number; endStream: boolean; frameSeq: number; fragments: { seq: number; data: Buffer }[]; ts: bigint };

  constructor(
    readonly dir: Dir,
    readonly client: boolean,
    joined: boolean,
  ) {
    this.needPreface = client && !joined;
    this.synced = !joined;
    this.hpack = hpack.decompressor.create({ table: { maxSize: 4096 } }) as unknown as Decompressor;
  }

  settled(): number {
    return this.block ? this.block.frameSeq : this.bufSeq;
  }

  /** Appends bytes; returns the whole frames now complete (and the preface, once). */
  take(seq: number, data: Buffer): { header: FrameHeader; payload: Buffer; seq: number; holes: [number, number][] }[] | 'bad-preface' {
    if (this.buf.length === 0) this.bufSeq = seq;
    this.buf = this.buf.length ? Buffer.concat([this.buf, data]) : data;
    const out: { header: FrameHeader; payload: Buffer; seq: number; holes: [number, number][] }[] = [];
    if (this.needPreface) {
      const n = Math.min(this.buf.length, PREFACE.length);
      if (!this.buf.subarray(0, n).equals(PREFACE.subarray(0, n))) return 'bad-preface';
      if (this.buf.length < PREFACE.length) return out;
      this.needPreface = false;
      this.consume(PREFACE.length);
    }
    while (this.buf.length >= 9) {
      const header = frameHeader(this.buf);
      if (this.buf.length < 9 + header.length) break;
      const payload = Buffer.from(this.buf.subarray(9, 9 + header.length));
      const holes = this.holes.filter(([s]) => s < 9 + header.length).map(([s, n]): [number, number] => [s - 9, n]);
      out.push({ header, payload, seq: this.bufSeq, holes });
      this.consume(9 + header.length);
    }
    return out;
  }

  private consume(n: number): void {
    this.buf = this.buf.subarray(n);
    this.bufSeq += n;
    this.holes = this.holes.filter(([s]) => s >= n).map(([s, l]): [number, number] => [s - n, l]);
  }

  /** A gap: stepped over inside a DATA payload, else frame sync is lost. */
  gap(at: number, bytes: number): 'stepped' | 'lost' {
    if (this.synced && !this.needPreface && this.buf.length >= 9) {
      const h = frameHeader(this.buf);
      const left = 9 + h.length - this.buf.length;
      if (h.type === 0 && left >= bytes && bytes <= MAX_FRAME) {
        this.holes.push([this.buf.length, bytes]);
        this.buf = Buffer.concat([this.buf, Buffer.alloc(bytes)]);
        return 'stepped';
      }
    }
    this.buf = Buffer.alloc(0);
    this.holes = [];
    this.bufSeq = at + bytes;
    this.synced = false;
    return 'lost';
  }

  /** After a loss: frames again from a call that starts with a frame. */
  resync(seq: number, data: Buffer): boolean {
    if (!looksLikeFrames(data)) return false;
    this.synced = true;
    this.buf = Buffer.alloc(0);
    this.bufSeq = seq;
    return true;
  }
}

/**
 * HTTP/2 exchanges of one connection. `clientDir` is the direction the client's frames go (0
 * when the process is the client). `joined`: the capture began after the connection did.
 */
export class Http2Connection implements ConnParser {
  private readonly senders: [Sender, Sender];
  private readonly streams = new Map<number, Stream>();
  /** Header blocks can no longer be decoded: the connection is shown frame by frame. */
  private frameLevel?: string;

  constructor(
    clientDir: Dir,
    private readonly sink: ParserSink,
    opts: { joined?: boolean } = {},
  ) {
    const serverDir: Dir = clientDir === 0 ? 1 : 0;
    const c = new Sender(clientDir, true, opts.joined === true);
    const s = new Sender(serverDir, false, opts.joined === true);
    this.senders = clientDir === 0 ? [c, s] : [s, c];
    for (const x of this.senders) x.hpack.on('error', () => undefined);
    if (opts.joined) this.frameLevel = 'HTTP/2 joined mid-stream: HPACK is stateful, so no header block of this connection can be decoded';
  }

  settled(dir: Dir): number {
    return this.senders[dir].settled();
  }

  push(dir: Dir, seq: number, data: Buffer, ts: bigint): void {
    if (data.length === 0) return;
    const s = this.senders[dir];
    if (!s.synced && !s.resync(seq, data)) {
      this.sink.unparsed(dir, seq, data, ts, `${this.frameLevel ?? 'HTTP/2'}; frames out of step after missing bytes`);
      return;
    }
    const frames = s.take(seq, data);
    if (frames === 'bad-preface') {
      this.breakHpack('the client did not start with the HTTP/2 preface', ts);
      s.gap(seq + data.length, 0);
      this.sink.unparsed(dir, seq, data, ts, 'not HTTP/2');
      return;
    }
    const described: string[] = [];
    for (const f of frames) {
      if (this.frameLevel) described.push(describeFrame(f.header));
      this.frame(s, f.header, f.payload, f.seq, f.holes, ts);
    }
    if (this.frameLevel) this.sink.unparsed(dir, seq, data, ts, [this.frameLevel, ...described].join('\n'));
  }

  gap(dir: Dir, at: number, bytes: number, why: string, ts: bigint): void {
    if (bytes <= 0) return;
    const s = this.senders[dir];
    const r = s.gap(at, bytes);
    const what = `${bytes} bytes missing at offset ${at} of the ${s.client ? 'client' : 'server'}'s frames (${why})`;
    if (r === 'stepped') {
      this.sink.note(ts, `${what}: inside a DATA frame, stepped over`);
      return;
    }
    s.block = undefined;
    this.breakHpack(what, ts);
  }

  /** From here on header blocks are not decoded: streams in progress are handed out cut. */
  private breakHpack(why: string, ts: bigint): void {
    if (!this.frameLevel) {
      this.frameLevel = `HTTP/2 header blocks cannot be decoded after ${why} (HPACK is stateful)`;
      this.sink.note(ts, this.frameLevel);
    }
    for (const st of [...this.streams.values()]) this.finish(st, `cut short: ${why}`);
  }

  end(why: string, _ts: bigint): void {
    for (const st of [...this.streams.values()]) this.finish(st, `the connection ended (${why}) before the stream did`);
  }

  private stream(id: number): Stream {
    let st = this.streams.get(id);
    if (!st) {
      st = { id, req: newSide(), res: newSide(), pushed: id % 2 === 0 };
      this.streams.set(id, st);
    }
    return st;
  }

  private frame(s: Sender, h: FrameHeader, payload: Buffer, seq: number, holes: [number, number][], ts: bigint): void {
    if (this.frameLevel) {
      // Frames are still followed (so the view stays in step); headers are not decoded.
      return;
    }
    const padded = (h.type === 0 || h.type === 1 || h.type === 5) && h.flags & F.PADDED;
    const pad = padded ? payload[0]! : 0;
    let start = padded ? 1 : 0;
    const end = Math.max(start, payload.length - pad);
    switch (h.type) {
      case 0: {
        const st = this.streams.get(h.streamId);
        if (!st) return;
        const side = s.client ? st.req : st.res;
        let body = payload.subarray(start, end);
        let missing = 0;
        if (holes.length) {
          const keep: Buffer[] = [];
          let at = start;
          for (const [hs, hn] of holes) {
            if (hs > at) keep.push(payload.subarray(at, Math.min(hs, end)));
            missing += hn;
            at = hs + hn;
          }
          if (at < end) keep.push(payload.subarray(at, end));
          body = Buffer.concat(keep);
          side.notes.push(`${missing} bytes of the body were not captured`);
        }
        side.body.push(Buffer.from(body));
        side.bodyMissing += missing;
        this.touch(side, seq, seq + 9 + h.length, ts);
        if (h.flags & F.END_STREAM) this.ended(st, side);
        return;
      }
      case 1:
      case 5: {
        if (h.type === 1 && h.flags & F.PRIORITY) start += 5;
        let promised = 0;
        if (h.type === 5) {
          promised = payload.readUInt32BE(start) & 0x7fffffff;
          start += 4;
        }
        s.block = { streamId: h.streamId, type: h.type, promised, endStream: (h.flags & F.END_STREAM) !== 0, frameSeq: seq, fragments: [], ts };
        s.block.fragments.push({ seq: seq + 9 + start, data: payload.subarray(start, end) });
        if (h.flags & F.END_HEADERS) this.headerBlock(s, seq + 9 + h.length, ts);
        return;
      }
      case 9:
        if (!s.block || s.block.streamId !== h.streamId) {
          this.breakHpack(`a CONTINUATION of stream ${h.streamId} without its HEADERS`, ts);
          return;
        }
        s.block.fragments.push({ seq: seq + 9, data: payload });
        if (h.flags & F.END_HEADERS) this.headerBlock(s, seq + 9 + h.length, ts);
        return;
      case 3: {
        const st = this.streams.get(h.streamId);
        if (!st || payload.length < 4) return;
        st.reset = `${errorName(payload.readUInt32BE(0))} from the ${s.client ? 'client' : 'server'}`;
        this.finish(st);
        return;
      }
      case 4:
        if (h.flags & F.ACK) return;
        for (let at = 0; at + 6 <= payload.length; at += 6) {
          // SETTINGS_HEADER_TABLE_SIZE bounds the table of the header blocks this side receives.
          if (payload.readUInt16BE(at) === 1) {
            const other = this.senders[s.dir === 0 ? 1 : 0];
            if (other.hpack._table) other.hpack._table.protocolMaxSize = payload.readUInt32BE(at + 2);
          }
        }
        return;
      case 7:
        if (payload.length >= 8) {
          const code = payload.readUInt32BE(4);
          this.sink.note(ts, `GOAWAY from the ${s.client ? 'client' : 'server'}: ${errorName(code)}, last stream ${payload.readUInt32BE(0) & 0x7fffffff}`);
        }
        return;
      default:
        return; // PRIORITY, PING, WINDOW_UPDATE, unknown types: nothing for exchanges
    }
  }

  private touch(side: Side, start: number, end: number, ts: bigint): void {
    side.firstNs ??= ts;
    side.startSeq ??= start;
    side.lastNs = ts;
    side.endSeq = end;
  }

  private headerBlock(s: Sender, endSeq: number, ts: bigint): void {
    const b = s.block!;
    s.block = undefined;
    const block = b.fragments.length === 1 ? b.fragments[0]!.data : Buffer.concat(b.fragments.map((f) => f.data));
    let headers: [string, string][];
    try {
      headers = this.decode(s, block);
    } catch (e) {
      this.breakHpack(`a header block of stream ${b.streamId} that does not decode (${(e as Error).message})`, ts);
      return;
    }
    this.masks(s.dir, b.fragments, block, headers);
    const id = b.type === 5 ? b.promised : b.streamId;
    const st = this.stream(id);
    if (b.type === 5) st.pushed = true;
    const side = s.client || b.type === 5 ? st.req : st.res;
    this.touch(side, b.frameSeq, endSeq, b.ts);
    const pseudo: Record<string, string> = {};
    const regular: [string, string][] = [];
    for (const [k, v] of headers) {
      if (k.startsWith(':')) pseudo[k] = v;
      else regular.push([k, v]);
    }
    if (side === st.res && !side.headers && pseudo[':status'] && Number(pseudo[':status']) < 200) {
      side.interim.push({ status: Number(pseudo[':status']), headers: regular, tsNs: ts });
    } else if (!side.headers) {
      side.headers = regular;
      side.pseudo = pseudo;
    } else {
      side.trailers.push(...regular);
    }
    if (b.endStream && b.type === 1) this.ended(st, side);
    if (b.type === 5) st.req.ended = true; // a promised request has no body
  }

  private decode(s: Sender, block: Buffer): [string, string][] {
    let err: Error | undefined;
    const d = s.hpack;
    const onErr = (e: Error): void => void (err = e);
    (d as unknown as { once(ev: string, fn: (e: Error) => void): void }).once('error', onErr);
    d.write(block);
    d.execute();
    (d as unknown as { removeListener(ev: string, fn: (e: Error) => void): void }).removeListener('error', onErr);
    const out: [string, string][] = [];
    for (let h = d.read(); h !== null; h = d.read()) out.push([h.name, h.value]);
    if (err) throw err;
    return out;
  }

  /** Same-length masks of the sensitive literal values, mapped back to stream offsets. */
  private masks(dir: Dir, fragments: { seq: number; data: Buffer }[], block: Buffer, headers: [string, string][]): void {
    if (!headers.some(([k]) => isSensitive(k))) return;
    let pos: (LiteralAt | null)[];
    try {
      pos = literalPositions(block);
    } catch {
      return;
    }
    headers.forEach(([name, value], i) => {
      const lit = pos[i];
      if (!lit || !isSensitive(name) || lit.length === 0) return;
      // A Huffman-coded value is masked whole: N octets of 0xf9 decode to N '*' (RFC 7541, B).
      const bytes = lit.huffman ? Buffer.alloc(lit.length, 0xf9) : Buffer.from(maskValue(name, value), 'latin1');
      if (bytes.length !== lit.length) return;
      this.emitMask(dir, fragments, lit.start, bytes);
    });
  }

  private emitMask(dir: Dir, fragments: { seq: number; data: Buffer }[], start: number, bytes: Buffer): void {
    let base = 0;
    let at = 0;
    for (const f of fragments) {
      const fs = base;
      const fe = base + f.data.length;
      const s = Math.max(fs, start + at);
      const e = Math.min(fe, start + bytes.length);
      if (s < e) {
        const m: Mask = { dir, start: f.seq + (s - fs), bytes: bytes.subarray(s - start, e - start) };
        this.sink.mask(m);
        at = e - start;
      }
      base = fe;
    }
  }

  private ended(st: Stream, side: Side): void {
    side.ended = true;
    if (st.req.ended && st.res.ended) this.finish(st);
  }

  private finish(st: Stream, cut?: string): void {
    this.streams.delete(st.id);
    const notes: string[] = [];
    if (cut) notes.push(cut);
    if (st.pushed) notes.push(`pushed by the server (PUSH_PROMISE) on stream ${st.id}`);
    const msg = (side: Side): Omit<HttpRequestMessage, 'method' | 'target'> => ({
      startSeq: side.startSeq ?? 0,
      endSeq: side.endSeq ?? 0,
      firstNs: side.firstNs ?? 0n,
      lastNs: side.lastNs ?? 0n,
      headers: side.headers ?? [],
      trailers: side.trailers,
      body: Buffer.concat(side.body),
      bodyMissing: side.bodyMissing,
      headBytes: -1,
      complete: side.ended && side.bodyMissing === 0,
      notes: side.notes,
    });
    const request: HttpRequestMessage | undefined = st.req.headers
      ? {
          ...msg(st.req),
          method: st.req.pseudo[':method'] ?? '',
          target: st.req.pseudo[':path'] ?? '',
          ...(st.req.pseudo[':authority'] !== undefined ? { authority: st.req.pseudo[':authority'] } : {}),
          ...(st.req.pseudo[':scheme'] !== undefined ? { scheme: st.req.pseudo[':scheme'] } : {}),
        }
      : undefined;
    const response: HttpResponseMessage | undefined = st.res.headers
      ? { ...msg(st.res), status: Number(st.res.pseudo[':status'] ?? 0), statusText: '', interim: st.res.interim }
      : undefined;
    if (!request && !response) return; // a stream whose headers were never seen: nothing to pair
    this.sink.exchange({ protocol: 'HTTP/2', streamId: st.id, ...(request ? { request } : {}), ...(response ? { response } : {}), notes, ...(st.reset ? { reset: st.reset } : {}) });
  }
}
