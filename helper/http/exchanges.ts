// exchanges.ts: the one analysis every human output shares, live and in replay: frames in
// (conn_open, segment, conn_close … from FrameBuilder or a recording), events out: connections,
// the protocol each speaks (HTTP/1, HTTP/2, other), HTTP exchanges, bytes no exchange took
// (shown per call, never hidden), gaps and notes. It also reports where secrets lie in the
// byte stream (masks) for the outputs that keep bytes (pcapng, raw). Pure code.
import { Http1Connection, REQUEST_LINE, STATUS_LINE } from './http1';
import { Http2Connection, looksLikeFrames, PREFACE } from './http2';
import { ConnParser, Dir, HttpRequestMessage, ParsedExchange, ParserSink } from './messages';
import { Mask } from './redact';
import { hostPort } from './bytes';
import { headerValue } from './body';
import { RawFrame } from '../protocol/wire';

export interface ConnInfo {
  /** `${pid}:${connId}`: unique within a capture. */
  key: string;
  connId: bigint;
  pid: number;
  tid: number;
  comm: string;
  role: 'client' | 'server' | 'unknown';
  fd: number;
  localIp: string;
  localPort: number;
  remoteIp: string;
  remotePort: number;
  openNs: bigint;
  midStream: boolean;
}

export interface GrpcInfo {
  service: string;
  method: string;
  /** grpc-status from the trailers (or a trailers-only response), absent if not seen. */
  status?: number;
  message?: string;
  requestMessages: number;
  responseMessages: number;
}

export interface HttpExchange extends ParsedExchange {
  /** Order of completion within the capture, from 1. */
  id: number;
  conn: ConnInfo;
  /** The request's full URL (https://host/path), or '' without a request. */
  url: string;
  grpc?: GrpcInfo;
}

export type Protocol = 'HTTP/1' | 'HTTP/2' | 'other';

export interface ConnTotals {
  /** Bytes captured per direction (0 egress, 1 ingress). */
  captured: [number, number];
  /** Bytes that never arrived (lost or past the caps), per direction. */
  missing: [number, number];
  /** Of `missing`, the bytes shed under load (segments marked shed), per direction. */
  shed: [number, number];
  exchanges: number;
}

export type SessionEvent =
  | { type: 'open'; conn: ConnInfo }
  | { type: 'protocol'; conn: ConnInfo; protocol: Protocol; joined: boolean; tsNs: bigint }
  | { type: 'exchange'; exchange: HttpExchange }
  | {
      type: 'data';
      conn: ConnInfo;
      dir: Dir;
      seq: number;
      data: Buffer;
      tsNs: bigint;
      /** Why these bytes are shown raw (not HTTP, out of step, HTTP/2 frames …). */
      why: string;
    }
  | { type: 'note'; conn: ConnInfo; tsNs: bigint; text: string }
  | { type: 'close'; conn: ConnInfo; tsNs: bigint; reason: string; protocol: Protocol | undefined; totals: ConnTotals }
  /** Frames not about one connection (hello, process, loss, stats, error, bye). */
  | { type: 'frame'; frame: RawFrame };

interface Pending {
  dir: Dir;
  seq: number;
  data: Buffer;
  tsNs: bigint;
}

class Conn {
  readonly next: [number, number] = [0, 0];
  /** Why the bytes after the last segment of each direction may be missing (cap, rate cap). */
  readonly cutWhy: [string | undefined, string | undefined] = [undefined, undefined];
  readonly totals: ConnTotals = { captured: [0, 0], missing: [0, 0], shed: [0, 0], exchanges: 0 };
  /** The last segment of each direction was cut by load shedding. */
  readonly cutShed: [boolean, boolean] = [false, false];
  parser?: ConnParser;
  protocol?: Protocol;
  joined: boolean;
  readonly pending: Pending[] = [];

  constructor(readonly info: ConnInfo) {
    this.joined = info.midStream;
  }
}

function connInfo(f: RawFrame): ConnInfo {
  return {
    key: `${f.pid}:${f.conn_id}`,
    connId: f.conn_id as bigint,
    pid: f.pid as number,
    tid: (f.tid as number | undefined) ?? (f.pid as number),
    comm: String(f.comm ?? ''),
    role: (f.role as ConnInfo['role'] | undefined) ?? 'unknown',
    fd: (f.fd as number | undefined) ?? -1,
    localIp: String(f.local_ip ?? '0.0.0.0'),
    localPort: (f.local_port as number | undefined) ?? 0,
    remoteIp: String(f.remote_ip ?? '0.0.0.0'),
    remotePort: (f.remote_port as number | undefined) ?? 0,
    openNs: f.ts_ns as bigint,
    midStream: f.mid_stream === true,
  };
}


/** The full URL of a request, from :scheme/:authority (HTTP/2), Host (HTTP/1) or the socket. */
export function requestUrl(req: HttpRequestMessage, conn: ConnInfo): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(req.target)) return req.target;
  const server = conn.role === 'server' ? hostPort(conn.localIp, conn.localPort) : hostPort(conn.remoteIp, conn.remotePort);
  const host = req.authority ?? headerValue(req.headers, 'host') ?? server;
  if (req.method === 'CONNECT') return `https://${req.target}`;
  return `${req.scheme ?? 'https'}://${host}${req.target.startsWith('/') || req.target === '*' ? '' : '/'}${req.target === '*' ? '' : req.target}`;
}

/** gRPC messages in a body: 1 byte compressed flag, 4 bytes length, the message. */
function grpcMessages(body: Buffer): number {
  let n = 0;
  for (let at = 0; at + 5 <= body.length; n++) at += 5 + body.readUInt32BE(at + 1);
  return n;
}

/** grpc-message is percent-encoded; a malformed one is shown as it came. */
function percentDecoded(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

export function grpcInfo(e: ParsedExchange): GrpcInfo | undefined {
  const req = e.request;
  if (!req || !(headerValue(req.headers, 'content-type') ?? '').startsWith('application/grpc')) return undefined;
  const m = /^\/([^/]+)\/([^/]+)$/.exec(req.target);
  const res = e.response;
  const all = res ? [...res.trailers, ...res.headers] : [];
  const status = headerValue(all, 'grpc-status');
  const message = headerValue(all, 'grpc-message');
  return {
    service: m?.[1] ?? '',
    method: m?.[2] ?? req.target,
    ...(status !== undefined ? { status: Number(status) } : {}),
    ...(message !== undefined ? { message: percentDecoded(message) } : {}),
    requestMessages: grpcMessages(req.body),
    responseMessages: res ? grpcMessages(res.body) : 0,
  };
}

export interface SessionOptions {
  /** Every mask of a secret, in stream offsets (pcapng, raw). */
  onMask?: (conn: ConnInfo, m: Mask) => void;
  /** Every gap: bytes of a direction that will never come. */
  onGap?: (conn: ConnInfo, dir: Dir, at: number, bytes: number, why: string) => void;
}

/** How long to wait for a direction's first bytes to say what they are. */
const DETECT_BYTES = 8192;
const PARTIAL_REQUEST_LINE = /^[A-Z][A-Z-]* ?\S*( H?T?T?P?\/?1?\.?[01]?)?\r?$/;

type Decision = { protocol: 'HTTP/1'; reqDir: Dir } | { protocol: 'HTTP/2'; clientDir: Dir } | { protocol: 'other' } | undefined;

/** What the first bytes of one direction say (undefined: wait for more). */
function classify(data: Buffer, dir: Dir, joined: boolean, role: ConnInfo['role']): Decision {
  const other: Dir = dir === 0 ? 1 : 0;
  const text = data.toString('latin1', 0, Math.min(data.length, DETECT_BYTES));
  if (REQUEST_LINE.test(text)) return { protocol: 'HTTP/1', reqDir: dir };
  if (STATUS_LINE.test(text)) return { protocol: 'HTTP/1', reqDir: other };
  if (joined) {
    if (looksLikeFrames(data)) return { protocol: 'HTTP/2', clientDir: role === 'server' ? 1 : 0 };
    return { protocol: 'other' };
  }
  // An HTTP/2 server may send its SETTINGS before the client's preface has arrived.
  if (data.length >= 9 && data[3] === 4 && looksLikeFrames(data)) return undefined;
  const n = Math.min(data.length, PREFACE.length);
  if (data.subarray(0, n).equals(PREFACE.subarray(0, n))) return n === PREFACE.length ? { protocol: 'HTTP/2', clientDir: dir } : undefined;
  if (data.length < DETECT_BYTES && !text.includes('\n') && (PARTIAL_REQUEST_LINE.test(text) || /^H?T?T?P?\/?1?\.?[01]? ?\d{0,3}$/.test(text))) return undefined;
  return { protocol: 'other' };
}

/**
 * Turns a frame stream into session events. push() takes every frame in order; end() closes
 * what is still open (the end of a recording, or of a live capture).
 */
export class Session {
  private readonly conns = new Map<string, Conn>();
  private exchangeCount = 0;
  /** The newest capture timestamp seen: what is still open at end() ends then, not at its open. */
  private lastNs = 0n;

  constructor(
    private readonly emit: (e: SessionEvent) => void,
    private readonly opts: SessionOptions = {},
  ) {}

  push(f: RawFrame): void {
    if (typeof f.ts_ns === 'bigint' && f.ts_ns > this.lastNs) this.lastNs = f.ts_ns;
    if (f.type === 'conn_open') this.open(f);
    else if (f.type === 'segment') this.segment(f);
    else if (f.type === 'conn_close') this.close(f);
    else this.emit({ type: 'frame', frame: f });
  }

  end(reason = 'end of capture'): void {
    for (const c of [...this.conns.values()]) this.finish(c, reason, this.lastNs > c.info.openNs ? this.lastNs : c.info.openNs);
  }

  /** Offset up to which no more masks will come for this direction of the connection. */
  settled(key: string, dir: Dir): number {
    const c = this.conns.get(key);
    if (!c) return Number.MAX_SAFE_INTEGER;
    if (c.parser) return c.parser.settled(dir);
    if (c.protocol === 'other') return c.next[dir];
    return c.pending.find((p) => p.dir === dir)?.seq ?? c.next[dir];
  }

  private open(f: RawFrame): Conn {
    const key = `${f.pid}:${f.conn_id}`;
    let c = this.conns.get(key);
    if (c) return c;
    c = new Conn(connInfo(f));
    this.conns.set(key, c);
    this.emit({ type: 'open', conn: c.info });
    return c;
  }

  private segment(f: RawFrame): void {
    const c = this.conns.get(`${f.pid}:${f.conn_id}`) ?? this.open(f);
    const dir = f.dir as Dir;
    const seq = Number(f.seq as bigint);
    const data = f.data as Buffer;
    const ts = f.ts_ns as bigint;
    if (seq > c.next[dir]) this.gap(c, dir, c.next[dir], seq - c.next[dir], (f.lost_before as number) > 0 ? 'lost: the ring buffer was full, memory was unreadable or the output fell behind' : (c.cutWhy[dir] ?? 'not captured'), ts, (f.lost_before as number) === 0 && c.cutShed[dir]);
    if (seq < c.next[dir]) return; // seen already: never spliced
    c.next[dir] = seq + data.length;
    c.totals.captured[dir] += data.length;
    c.cutWhy[dir] = f.truncated ? (f.shed === true ? 'shed under load: the ring buffer was filling, only the head of the call was captured (--shed-head)' : f.rate_limited ? 'over the --rate-cap' : 'past the --call-cap') : undefined;
    c.cutShed[dir] = f.truncated === true && f.shed === true;
    if (data.length === 0) return;
    if (c.parser) {
      c.parser.push(dir, seq, data, ts);
      return;
    }
    if (c.protocol === 'other') {
      this.emit({ type: 'data', conn: c.info, dir, seq, data, tsNs: ts, why: c.joined ? 'joined mid-stream; not recognized as HTTP' : 'not HTTP' });
      return;
    }
    c.pending.push({ dir, seq, data, tsNs: ts });
    this.detect(c, ts);
  }

  private detect(c: Conn, ts: bigint): void {
    if (c.joined) {
      // Joined mid-stream: each call is tried as the start of a message (or of frames).
      const p = c.pending[c.pending.length - 1]!;
      const d = classify(p.data, p.dir, true, c.info.role);
      if (d && d.protocol !== 'other') this.start(c, d, ts);
      else {
        c.pending.length = 0;
        this.emit({ type: 'data', conn: c.info, ...p, why: 'joined mid-stream; not recognized as HTTP yet' });
      }
      return;
    }
    // The first direction that says HTTP decides; 'other' only once both have said no.
    const says: Decision[] = [];
    for (const dir of [0, 1] as Dir[]) {
      const bytes = c.pending.filter((p) => p.dir === dir).map((p) => p.data);
      says.push(bytes.length ? classify(Buffer.concat(bytes), dir, false, c.info.role) : undefined);
    }
    const http = says.find((d) => d && d.protocol !== 'other');
    if (http) this.start(c, http, ts);
    else if (says.every((d) => d?.protocol === 'other') || c.pending.reduce((n, p) => n + p.data.length, 0) > 4 * DETECT_BYTES) this.start(c, { protocol: 'other' }, ts);
  }

  private start(c: Conn, d: NonNullable<Decision>, ts: bigint): void {
    c.protocol = d.protocol;
    this.emit({ type: 'protocol', conn: c.info, protocol: d.protocol, joined: c.joined, tsNs: ts });
    const pending = c.pending.splice(0);
    if (d.protocol === 'other') {
      for (const p of pending) this.emit({ type: 'data', conn: c.info, ...p, why: 'not HTTP' });
      return;
    }
    const sink = this.sink(c);
    c.parser = d.protocol === 'HTTP/1' ? new Http1Connection(d.reqDir, sink, { joined: c.joined }) : new Http2Connection(d.clientDir, sink, { joined: c.joined });
    for (const p of pending) c.parser.push(p.dir, p.seq, p.data, p.tsNs);
  }

  private sink(c: Conn): ParserSink {
    return {
      exchange: (e) => {
        c.totals.exchanges++;
        const grpc = grpcInfo(e);
        this.emit({ type: 'exchange', exchange: { ...e, id: ++this.exchangeCount, conn: c.info, url: e.request ? requestUrl(e.request, c.info) : '', ...(grpc ? { grpc } : {}) } });
      },
      unparsed: (dir, seq, data, tsNs, why) => this.emit({ type: 'data', conn: c.info, dir, seq, data, tsNs, why }),
      mask: (m) => this.opts.onMask?.(c.info, m),
      note: (tsNs, text) => this.emit({ type: 'note', conn: c.info, tsNs, text }),
    };
  }

  private gap(c: Conn, dir: Dir, at: number, bytes: number, why: string, ts: bigint, shed = false): void {
    c.totals.missing[dir] += bytes;
    if (shed) c.totals.shed[dir] += bytes;
    this.opts.onGap?.(c.info, dir, at, bytes, why);
    if (c.parser) c.parser.gap(dir, at, bytes, why, ts);
    else if (c.protocol !== 'other') {
      // Before the protocol is known: what is pending cannot be parsed from its start any more.
      for (const p of c.pending.splice(0)) this.emit({ type: 'data', conn: c.info, ...p, why: `bytes missing after these (${why})` });
      c.joined = true;
    }
    // Under load every call of a body is shed: its parser marks the message (body_missing),
    // the connection's close says how many bytes were shed, and no note per call floods the output.
    if (shed && c.parser) return;
    this.emit({ type: 'note', conn: c.info, tsNs: ts, text: `${bytes} bytes ${dir === 0 ? 'sent' : 'received'} at offset ${at} were not captured (${why})` });
  }

  private close(f: RawFrame): void {
    const c = this.conns.get(`${f.pid}:${f.conn_id}`);
    if (!c) return;
    const ends = [Number(f.egress_end as bigint), Number(f.ingress_end as bigint)];
    for (const dir of [0, 1] as Dir[]) if (ends[dir]! > c.next[dir]) {
      this.gap(c, dir, c.next[dir], ends[dir]! - c.next[dir], c.cutWhy[dir] ?? 'lost before the end', f.ts_ns as bigint, c.cutShed[dir]);
      c.next[dir] = ends[dir]!;
    }
    this.finish(c, String(f.reason ?? 'close'), f.ts_ns as bigint);
  }

  private finish(c: Conn, reason: string, ts: bigint): void {
    this.conns.delete(c.info.key);
    if (!c.parser && c.pending.length) this.start(c, { protocol: 'other' }, ts);
    c.parser?.end(reason, ts);
    this.emit({ type: 'close', conn: c.info, tsNs: ts, reason, protocol: c.protocol, totals: c.totals });
  }
}
