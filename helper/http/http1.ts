// http1.ts: HTTP/1.x of one connection, through http-parser-js: requests and responses split
// across any number of calls, pipelining, chunked and Content-Length bodies, HEAD, 1xx, 204/304,
// Upgrade/101 and CONNECT, bodies read until the close. Gaps inside a body of known length are
// stepped over (the body is marked incomplete); any other gap, and a connection joined
// mid-stream, resynchronizes at the next call that starts a message, and nothing is paired
// across a loss that could make the pair wrong. Pure code.
//
// http-parser-js is the pure-JS port of the http_parser node used until v12 (MIT, no
// dependencies, used by websocket-driver and faye); it reports where each message ends within
// a chunk (parser.offset), which keeps each message's exact bytes. Node's own llhttp binding is
// internal and not an API; no other maintained pure-JS HTTP/1 parser on npm does this.
import { HTTPParser } from 'http-parser-js';
import { ConnParser, Dir, HttpProtocol, HttpRequestMessage, HttpResponseMessage, ParserSink } from './messages';
import { headMasks } from './redact';

type Parser = InstanceType<typeof HTTPParser>;
/** What the parser exposes beyond its typings: its state and the body bytes still expected. */
interface ParserInternals {
  state: string;
  body_bytes: number | null;
  offset: number;
}

export const REQUEST_LINE = /^[A-Z][A-Z-]* \S+ HTTP\/1\.[01]\r?\n/;
export const STATUS_LINE = /^HTTP\/1\.[01] \d{3}( |\r?\n)/;

interface Building {
  startSeq: number;
  firstNs: bigint;
  lastNs: bigint;
  raw: Buffer[];
  headEnd?: number;
  info?: Record<string, unknown>;
  headers: [string, string][];
  trailers: [string, string][];
  body: Buffer[];
  bodyMissing: number;
  notes: string[];
  /** Gaps of the body that had the same cause, told in one note (load shedding cuts every call of a body). */
  gapNote?: { at: number; why: string; bytes: number; pieces: number };
}

type Message = HttpRequestMessage | HttpResponseMessage;
const ZEROS = Buffer.alloc(64 * 1024);
/** Most missing bytes stepped over inside a body (the largest per-call cap). */
const MAX_STEP = 64 * 1024 * 1024;

/** `m.raw`: the pieces joined on first read, then kept (an own, enumerable property as before). */
function lazyRaw(m: Message, parts: Buffer[]): void {
  let raw: Buffer | undefined;
  Object.defineProperty(m, 'raw', {
    enumerable: true,
    configurable: true,
    get: () => (raw ??= parts.length === 1 ? parts[0]! : Buffer.concat(parts)),
    set: (v: Buffer) => void (raw = v),
  });
}

/** One direction's messages. */
class Reader {
  private parser!: Parser;
  /** Next stream offset expected. */
  pos = 0;
  /** 'message': parsing; 'lost': waiting for a call that starts a message; 'held': an upgrade
   *  request waits for its answer; 'switched': another protocol follows. */
  sync: 'message' | 'lost' | 'held' | 'switched' = 'message';
  private cur?: Building;
  private chunk: Buffer = Buffer.alloc(0);
  private chunkSeq = 0;
  private chunkStart = 0;
  private ts = 0n;
  private filling = false;
  /** Index in the chunk where another protocol starts (after 101, CONNECT 2xx). */
  private switchAt?: number;
  private readonly held: [number, Buffer, bigint][] = [];

  constructor(
    readonly kind: 'request' | 'response',
    readonly dir: Dir,
    private readonly conn: Http1Connection,
    private readonly sink: ParserSink,
  ) {
    this.reset();
  }

  private reset(): void {
    const p = new HTTPParser(this.kind === 'request' ? HTTPParser.REQUEST : HTTPParser.RESPONSE);
    p[HTTPParser.kOnHeadersComplete] = (info) => this.headersComplete(info as unknown as Record<string, unknown>);
    p[HTTPParser.kOnBody] = (chunk, offset, length) => {
      if (!this.cur) return;
      if (this.filling) this.cur.bodyMissing += length;
      // A view, not a copy: the bytes given to push() are the caller's to keep (a record's own
      // copy, a frame read from a file), and complete() joins the pieces once.
      else this.cur.body.push(chunk.subarray(offset, offset + length));
    };
    p[HTTPParser.kOnHeaders] = (trailers) => {
      if (this.cur) for (let i = 0; i + 1 < trailers.length; i += 2) this.cur.trailers.push([trailers[i]!, trailers[i + 1]!]);
    };
    p[HTTPParser.kOnMessageComplete] = () => this.complete(this.internals.offset, true);
    this.parser = p;
    this.cur = undefined;
  }

  private get internals(): ParserInternals {
    return this.parser as unknown as ParserInternals;
  }

  settled(): number {
    if (this.sync === 'held') return this.held[0]?.[0] ?? this.pos;
    if (this.sync === 'message' && this.cur && this.cur.headEnd === undefined) return this.cur.startSeq;
    return this.pos;
  }

  private begin(seq: number, ts: bigint): Building {
    return { startSeq: seq, firstNs: ts, lastNs: ts, raw: [], headers: [], trailers: [], body: [], bodyMissing: 0, notes: [] };
  }

  private headersComplete(info: Record<string, unknown>): number {
    if (this.sync === 'switched') return 1;
    const c = (this.cur ??= this.begin(this.chunkSeq, this.ts));
    const end = this.internals.offset;
    c.headEnd = this.chunkSeq + end;
    c.info = info;
    const h = info.headers as string[];
    for (let i = 0; i + 1 < h.length; i += 2) c.headers.push([h[i]!, h[i + 1]!]);
    const head = Buffer.concat([...c.raw, this.chunk.subarray(this.chunkStart, end)]);
    for (const m of headMasks(head, c.startSeq, this.dir)) this.sink.mask(m);
    if (this.kind === 'response') {
      const status = Number(info.statusCode);
      const method = this.conn.methodAnswered();
      // Like node's http client: a response to HEAD has no body; a 2xx to CONNECT opens a tunnel.
      if (method === 'CONNECT' && status >= 200 && status < 300) {
        this.switchAt = end;
        return 1;
      }
      if (status === 101) this.switchAt = end;
      if (method === 'HEAD') return 1;
    } else if (info.upgrade) {
      this.switchAt = end; // the rest waits for the answer: 101 or not
    }
    return 0;
  }

  private complete(endInChunk: number, framed: boolean): void {
    const c = this.cur;
    if (!c || !c.info || this.sync === 'switched') return;
    this.cur = undefined;
    const filler = this.filling;
    // The message's bytes are joined only when asked for (the host's raw, replay's check):
    // the renderers never read them, and joining copied every body a second time.
    const rawParts = filler ? c.raw : [...c.raw, this.chunk.subarray(this.chunkStart, endInChunk)];
    this.chunkStart = endInChunk;
    const i = c.info;
    const minor = Number(i.versionMinor);
    const protocol: HttpProtocol = Number(i.versionMajor) === 1 && minor === 0 ? 'HTTP/1.0' : 'HTTP/1.1';
    const endSeq = this.chunkSeq + endInChunk;
    const base = {
      startSeq: c.startSeq,
      endSeq,
      firstNs: c.firstNs,
      lastNs: this.ts,
      headers: c.headers,
      trailers: c.trailers,
      body: c.body.length === 1 ? c.body[0]! : Buffer.concat(c.body),
      bodyMissing: c.bodyMissing,
      headBytes: (c.headEnd ?? endSeq) - c.startSeq,
      complete: framed && c.bodyMissing === 0,
      notes: c.notes,
      version: protocol,
    };
    let m: Message;
    if (this.kind === 'request') {
      const method = (HTTPParser.methods as string[])[Number(i.method)] ?? String(i.method);
      m = { ...base, method, target: String(i.url) };
    } else {
      m = { ...base, status: Number(i.statusCode), statusText: String(i.statusMessage ?? ''), interim: [] };
    }
    lazyRaw(m, rawParts);
    if (endInChunk < this.chunk.length && this.switchAt === undefined) this.cur = this.begin(this.chunkSeq + endInChunk, this.ts);
    this.conn.message(this, m, protocol);
  }

  push(seq: number, data: Buffer, ts: bigint): void {
    this.pos = seq + data.length;
    if (this.sync === 'held') {
      this.held.push([seq, data, ts]);
      return;
    }
    if (this.sync === 'lost') {
      if (!this.conn.canResync(this, data)) {
        this.sink.unparsed(this.dir, seq, data, ts, this.conn.lostWhy(this));
        return;
      }
      this.reset();
      this.sync = 'message';
      this.conn.resynced(this, ts);
    }
    if (this.sync === 'switched') {
      this.sink.unparsed(this.dir, seq, data, ts, this.conn.switchedWhy());
      return;
    }
    this.feed(seq, data, ts);
  }

  private feed(seq: number, data: Buffer, ts: bigint): void {
    this.chunk = data;
    this.chunkSeq = seq;
    this.chunkStart = 0;
    this.ts = ts;
    this.cur ??= this.begin(seq, ts);
    this.cur.lastNs = ts;
    const r = this.parser.execute(data);
    const switchAt = this.switchAt;
    if (r instanceof Error) {
      const at = switchAt ?? this.internals.offset;
      if (switchAt === undefined) {
        const from = this.chunkStart;
        this.lose(`not HTTP/1 at offset ${seq + at}: ${(r as Error & { code?: string }).code ?? r.message}`, ts, seq + from, true);
        const rest = data.subarray(from);
        if (rest.length) this.sink.unparsed(this.dir, seq + from, rest, ts, 'not HTTP/1');
        this.chunk = Buffer.alloc(0);
        return;
      }
    }
    if (switchAt !== undefined) {
      this.switchAt = undefined;
      // The message before the switch is complete (101, CONNECT 2xx) or waits for its answer.
      if (this.cur?.info && this.kind === 'request') this.complete(switchAt, true);
      this.cur = undefined;
      const rest = data.subarray(switchAt);
      if (this.kind === 'request') {
        this.sync = 'held';
        if (rest.length) this.held.push([seq + switchAt, Buffer.from(rest), ts]);
      } else {
        this.sync = 'switched';
        if (rest.length) this.sink.unparsed(this.dir, seq + switchAt, rest, ts, this.conn.switchedWhy());
      }
      this.chunk = Buffer.alloc(0);
      return;
    }
    if (this.cur && this.chunkStart < data.length) this.cur.raw.push(data.subarray(this.chunkStart));
    this.chunk = Buffer.alloc(0);
    this.chunkStart = 0;
  }

  /**
   * `bytes` bytes at `at` are missing. Inside a body whose remaining length is known they are
   * stepped over (fed as filler the body does not keep); otherwise the message is handed out
   * incomplete and the reader waits for a call that starts a message.
   */
  gap(at: number, bytes: number, why: string, ts: bigint): boolean {
    this.pos = at + bytes;
    if (this.sync === 'held') {
      this.held.push([at, Buffer.alloc(0), ts]);
      return false;
    }
    if (this.sync !== 'message') return false;
    const s = this.internals;
    // Bounded: a gap is at most one call past the cap (64 MiB), or lost records.
    const inBody = bytes <= MAX_STEP && this.cur?.headEnd !== undefined && (s.state === 'BODY_RAW' || ((s.state === 'BODY_SIZED' || s.state === 'BODY_CHUNK') && (s.body_bytes ?? 0) >= bytes));
    if (inBody && this.cur) {
      const g = this.cur.gapNote;
      if (g && g.why === why) {
        g.bytes += bytes;
        g.pieces++;
        this.cur.notes[g.at] = `${g.bytes} bytes of the body in ${g.pieces} pieces were not captured (${why})`;
      } else {
        this.cur.gapNote = { at: this.cur.notes.length, why, bytes, pieces: 1 };
        this.cur.notes.push(`${bytes} bytes of the body at offset ${at} were not captured (${why})`);
      }
      // Inside a body whose end is further on (or that ends at the close), the parser only
      // needs to know how much is left: no need to run it over the missing bytes (load
      // shedding makes most of every body such a gap, and zeros cost as much as data).
      if (s.state === 'BODY_RAW' || ((s.state === 'BODY_SIZED' || s.state === 'BODY_CHUNK') && (s.body_bytes ?? 0) > bytes)) {
        if (s.state !== 'BODY_RAW') s.body_bytes = (s.body_bytes ?? 0) - bytes;
        this.cur.bodyMissing += bytes;
        return false;
      }
      this.filling = true;
      this.chunk = ZEROS;
      this.chunkSeq = at;
      this.ts = ts;
      try {
        for (let left = bytes; left > 0; left -= ZEROS.length) {
          this.chunkSeq = at + bytes - left;
          this.chunkStart = 0;
          const r = this.parser.execute(ZEROS, 0, Math.min(left, ZEROS.length));
          if (r instanceof Error) break;
        }
      } finally {
        this.filling = false;
        this.chunk = Buffer.alloc(0);
        this.chunkStart = 0;
      }
      return false;
    }
    const between = !this.cur || (this.cur.raw.length === 0 && this.cur.info === undefined);
    const what = `${bytes} bytes missing at offset ${at} (${why})`;
    if (between) {
      // Between two messages: the next call tells whether a message starts there.
      this.cur = undefined;
      this.sync = 'lost';
      this.conn.lost(this, what, ts);
    } else this.lose(what, ts, at, true);
    return true;
  }

  /** Hands out what is in progress, incomplete, and waits for a call that starts a message. */
  private lose(why: string, ts: bigint, at: number, notify: boolean): void {
    const c = this.cur;
    this.cur = undefined;
    if (c?.info) {
      c.notes.push(`cut short: ${why}`);
      this.cur = c;
      this.chunk = Buffer.alloc(0);
      this.chunkSeq = at;
      this.chunkStart = 0;
      this.ts = ts;
      this.complete(0, false);
    } else if (c && c.raw.length) {
      const bytes = Buffer.concat(c.raw);
      this.sink.unparsed(this.dir, c.startSeq, bytes, c.firstNs, `an incomplete message head (${why})`);
    }
    this.sync = 'lost';
    if (notify) this.conn.lost(this, why, ts);
  }

  /** The connection ended. A body delimited by the close completes; anything else is cut. */
  end(why: string, ts: bigint): void {
    if (this.sync === 'held') {
      for (const [seq, data, t] of this.held.splice(0)) if (data.length) this.sink.unparsed(this.dir, seq, data, t, 'after an upgrade request that got no answer');
      return;
    }
    if (this.sync !== 'message' || !this.cur) return;
    if (this.cur.info && this.internals.state === 'BODY_RAW') {
      this.chunk = Buffer.alloc(0);
      this.chunkStart = 0;
      this.chunkSeq = this.pos;
      if (why === 'helper_exit') this.cur.notes.push('read until the close, but the capture stopped first: may be incomplete');
      this.parser.finish();
      return;
    }
    if (this.cur.info || this.cur.raw.length) this.lose(`the connection ended (${why})`, ts, this.pos, false);
  }

  /** An upgrade request's answer came: 101 switches; anything else resumes HTTP/1. */
  release(switched: boolean): void {
    if (this.sync !== 'held') return;
    const held = this.held.splice(0);
    if (switched) {
      this.sync = 'switched';
      for (const [seq, data, t] of held) if (data.length) this.sink.unparsed(this.dir, seq, data, t, this.conn.switchedWhy());
      return;
    }
    this.sync = 'message';
    this.reset();
    for (const [seq, data, t] of held) {
      if (data.length) this.push(seq, data, t);
    }
  }

  /** A request (or response) whose head is parsed is in progress: its body is being read. */
  headed(): boolean {
    return this.sync === 'message' && this.cur?.info !== undefined;
  }

  switchNow(): void {
    this.sync = 'switched';
    this.cur = undefined;
  }
}

/**
 * HTTP/1 exchanges of one connection. `reqDir` is the direction that carries requests (0 when
 * the process is the client). `joined`: the capture joined mid-stream, so both directions start
 * by waiting for a call that starts a message.
 */
export class Http1Connection implements ConnParser {
  private readonly requests: Reader;
  private readonly responses: Reader;
  /** Requests waiting for their responses; each says its version (the exchange's protocol). */
  private readonly waiting: HttpRequestMessage[] = [];
  private interim: HttpResponseMessage[] = [];
  /** A response that came while its request's body was still being read (an early answer). */
  private early?: HttpResponseMessage;
  private switched?: string;
  /** A request was lost: responses are paired again only with requests seen after it. */
  private requestLost = false;
  /** Requests and responses can no longer be paired safely (a loss on a pipelined connection). */
  private unpairable = false;

  constructor(
    private readonly reqDir: Dir,
    private readonly sink: ParserSink,
    opts: { joined?: boolean } = {},
  ) {
    this.requests = new Reader('request', reqDir, this, sink);
    this.responses = new Reader('response', reqDir === 0 ? 1 : 0, this, sink);
    if (opts.joined) {
      this.requests.sync = 'lost';
      this.responses.sync = 'lost';
      this.requestLost = true;
    }
  }

  private reader(dir: Dir): Reader {
    return dir === this.reqDir ? this.requests : this.responses;
  }

  push(dir: Dir, seq: number, data: Buffer, ts: bigint): void {
    if (data.length) this.reader(dir).push(seq, data, ts);
  }

  gap(dir: Dir, at: number, bytes: number, why: string, ts: bigint): void {
    if (bytes > 0) this.reader(dir).gap(at, bytes, why, ts);
  }

  end(why: string, ts: bigint): void {
    this.requests.end(why, ts);
    if (this.early) {
      // Its request never ended, nor was it handed out cut: the answer stands alone.
      const early = this.early;
      this.early = undefined;
      this.answer(this.waiting.shift(), early);
    }
    this.responses.end(why, ts);
    for (const r of this.waiting.splice(0)) {
      this.sink.exchange({ protocol: r.version ?? 'HTTP/1.1', request: r, notes: [`no response seen before the connection ended (${why})`] });
    }
  }

  settled(dir: Dir): number {
    return this.reader(dir).settled();
  }

  /** The method of the request the next response answers (HEAD and CONNECT change its framing). */
  methodAnswered(): string | undefined {
    return this.waiting[0]?.method;
  }

  canResync(r: Reader, data: Buffer): boolean {
    const head = data.toString('latin1', 0, Math.min(data.length, 8192));
    if (r === this.requests) return REQUEST_LINE.test(head);
    // A response is only taken once a request it can answer was seen after the loss.
    return STATUS_LINE.test(head) && this.waiting.length > 0 && !this.unpairable;
  }

  lostWhy(r: Reader): string {
    return r === this.requests ? 'HTTP/1 requests out of sync (joined mid-stream or bytes missing): waiting for a call that starts a request' : 'HTTP/1 responses out of sync: waiting for a response to a request seen whole';
  }

  switchedWhy(): string {
    return `after the switch to ${this.switched ?? 'another protocol'}`;
  }

  resynced(r: Reader, ts: bigint): void {
    if (r === this.requests && this.requestLost) {
      // Responses to the lost requests may still be queued behind those before the loss, if
      // the client pipelines: then no response can be paired for sure any more.
      if (this.waiting.length > 0) {
        this.unpairable = true;
        this.sink.note(ts, 'HTTP/1 requests and responses can no longer be paired: a request was lost on a pipelined connection');
      }
      this.requestLost = false;
    }
  }

  lost(r: Reader, why: string, ts: bigint): void {
    this.sink.note(ts, `${r === this.requests ? 'requests' : 'responses'}: ${why}`);
    if (r === this.requests) {
      this.requestLost = true;
    } else {
      // The response being read is lost: the requests waiting cannot be answered for sure.
      for (const q of this.waiting.splice(0)) this.sink.exchange({ protocol: q.version ?? 'HTTP/1.1', request: q, notes: [`its response was lost: ${why}`] });
    }
  }

  message(r: Reader, m: HttpRequestMessage | HttpResponseMessage, protocol: HttpProtocol): void {
    if (r === this.requests) {
      const req = m as HttpRequestMessage;
      if (this.unpairable) {
        this.sink.exchange({ protocol, request: req, notes: ['its response cannot be paired (see the notes of the connection)'] });
        return;
      }
      this.waiting.push(req);
      const early = this.early;
      if (early) {
        this.early = undefined;
        this.answer(this.waiting.shift(), early);
      }
      return;
    }
    const res = m as HttpResponseMessage;
    if (res.status >= 100 && res.status < 200 && res.status !== 101 && res.complete) {
      this.interim.push(res);
      return;
    }
    res.interim = this.interim.splice(0).map((x) => ({ status: x.status, headers: x.headers, tsNs: x.firstNs }));
    // A server may answer before it has read the whole request body (nginx's `return`, a 413
    // or 401 before an upload): the response answers the request in progress, paired once
    // that request ends. Pairing it with the next request instead paired every later one wrong.
    if (this.waiting.length === 0 && !this.unpairable && this.requests.headed()) {
      this.early = res;
      return;
    }
    this.answer(this.waiting.shift(), res);
  }

  private answer(req: HttpRequestMessage | undefined, res: HttpResponseMessage): void {
    const notes: string[] = [];
    if (!req) notes.push('a response to a request that was not seen');
    let switchedTo: string | undefined;
    const upgrade = req?.headers.find(([k]) => k.toLowerCase() === 'upgrade')?.[1];
    if (req && res.status === 101) switchedTo = upgrade ?? 'another protocol';
    else if (req?.method === 'CONNECT' && res.status >= 200 && res.status < 300) switchedTo = `a tunnel to ${req.target}`;
    if (switchedTo) {
      this.switched = switchedTo;
      this.responses.switchNow();
      this.requests.release(true);
    } else if (upgrade !== undefined || req?.method === 'CONNECT') {
      this.requests.release(false);
    }
    this.sink.exchange({ protocol: req?.version ?? res.version ?? 'HTTP/1.1', ...(req ? { request: req } : {}), response: res, notes, ...(switchedTo ? { switchedTo } : {}) });
  }
}
