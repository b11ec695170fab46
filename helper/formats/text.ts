// text.ts: `--format text`, the default for people: per connection, each request and its
// response with method, URL, status, headers and bodies (decoded, JSON pretty-printed, binary
// as a hex preview), and plainly what is missing or not HTTP: gaps, cut messages, connections
// joined mid-stream, and bytes no exchange took, shown call by call as the raw view does.
import { decodeBody, mimeType, showBody } from '../http/body';
import { ConnInfo, HttpExchange, Session, SessionEvent } from '../http/exchanges';
import { Dir, HttpMessage } from '../http/messages';
import { redactHeaders } from '../http/redact';
import { COLORS, formatTime, Palette, PLAIN, showBytes } from './show';
import { hostPort } from '../http/bytes';
import { RawFrame } from '../protocol/wire';
import { Renderer, RenderOptions, Sink } from './output';


/** "client 127.0.0.1:50312 -> 127.0.0.1:443" (the process's side first). */
export function connWhere(c: ConnInfo): string {
  const known = !(c.localPort === 0 && c.remotePort === 0);
  const where = known ? `${hostPort(c.localIp, c.localPort)} -> ${hostPort(c.remoteIp, c.remotePort)}` : c.fd >= 0 ? `fd ${c.fd}` : 'socket unknown';
  return `${c.role === 'unknown' ? '' : `${c.role} `}${where}`;
}

const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;

function ms(a: bigint, b: bigint): string {
  const d = Number(b - a) / 1e6;
  return d < 10 ? `${d.toFixed(2)} ms` : d < 1000 ? `${d.toFixed(1)} ms` : `${(d / 1000).toFixed(2)} s`;
}

/** A run of raw bytes being shown: later contiguous pieces continue it. */
interface Run {
  key: string;
  dir: Dir;
  next: number;
  shown: number;
  hidden: number;
}

export class TextRenderer implements Renderer {
  private readonly session: Session;
  private readonly c: Palette;
  private run?: Run;

  constructor(
    private readonly out: Sink,
    private readonly o: RenderOptions,
  ) {
    this.c = o.color ? COLORS : PLAIN;
    this.session = new Session((e) => this.event(e));
  }

  push(f: RawFrame): void {
    this.session.push(f);
  }

  end(): void {
    this.session.end();
    this.endRun();
  }

  private who(conn: ConnInfo, ts: bigint): string {
    const c = this.c;
    return `${c.dim}${formatTime(ts)}${c.reset} ${c.bold}${conn.comm}${c.reset}[${conn.pid}] ${c.yellow}conn ${conn.connId}${c.reset}`;
  }

  private endRun(): void {
    const r = this.run;
    this.run = undefined;
    if (r && r.hidden) this.out.write(`${this.c.yellow}[${r.hidden} more bytes not shown (--print-limit)]${this.c.reset}\n`);
  }

  private event(e: SessionEvent): void {
    const c = this.c;
    if (e.type === 'data') {
      this.data(e);
      return;
    }
    if (e.type === 'frame') {
      if (e.frame.type === 'loss') {
        this.endRun();
        this.out.write(
          e.frame.source === 'shed'
            ? `${c.yellow}[${e.frame.bytes} body bytes shed under load (the capture fell behind: calls cut to their heads, every exchange kept)]${c.reset}\n`
            : `${c.yellow}[${e.frame.bytes} bytes lost (${e.frame.source}); they show as gaps in their connections]${c.reset}\n`,
        );
      }
      return;
    }
    this.endRun();
    if (e.type === 'open') {
      this.out.write(`${this.who(e.conn, e.conn.openNs)} ${c.yellow}opened ${connWhere(e.conn)}${e.conn.midStream ? ' (joined mid-stream: the capture began after the connection did)' : ''}${c.reset}\n`);
    } else if (e.type === 'protocol') {
      if (e.protocol === 'other') this.out.write(`${this.who(e.conn, e.tsNs)} ${c.yellow}not HTTP: shown call by call${c.reset}\n`);
    } else if (e.type === 'note') {
      this.out.write(`${this.who(e.conn, e.tsNs)} ${c.yellow}[${e.text}]${c.reset}\n`);
    } else if (e.type === 'close') {
      const t = e.totals;
      const missing = t.missing[0] + t.missing[1];
      const shed = t.shed[0] + t.shed[1];
      const proto = e.protocol && e.protocol !== 'other' ? `${plural(t.exchanges, `${e.protocol} exchange`)}, ` : '';
      this.out.write(
        `${this.who(e.conn, e.tsNs)} ${c.yellow}closed (${e.reason === 'process_exit' ? 'process exit' : e.reason}): ${proto}${t.captured[0]} bytes sent, ${t.captured[1]} received` +
          `${missing ? `, ${missing} not captured` : ''}${shed ? ` (${shed} shed under load)` : ''}${c.reset}\n`,
      );
    } else if (e.type === 'exchange') {
      this.out.write(this.exchange(e.exchange));
    }
  }

  private data(e: Extract<SessionEvent, { type: 'data' }>): void {
    const c = this.c;
    const r = this.run;
    const continues = r && r.key === e.conn.key && r.dir === e.dir && r.next === e.seq;
    if (!continues) {
      this.endRun();
      const arrow = e.dir === 0 ? `${c.green}>> sent${c.reset}` : `${c.cyan}<< received${c.reset}`;
      const [first, ...more] = e.why.split('\n');
      this.out.write(`${this.who(e.conn, e.tsNs)} ${arrow} ${e.data.length} bytes at offset ${e.seq} ${c.dim}(${first})${c.reset}\n`);
      for (const m of more) this.out.write(`${c.dim}  ${m}${c.reset}\n`);
      this.run = { key: e.conn.key, dir: e.dir, next: e.seq, shown: 0, hidden: 0 };
    } else if (e.why.includes('\n')) {
      for (const m of e.why.split('\n').slice(1)) this.out.write(`${c.dim}  ${m}${c.reset}\n`);
    }
    const run = this.run!;
    run.next = e.seq + e.data.length;
    const room = this.o.printLimit > 0 ? Math.max(0, this.o.printLimit - run.shown) : e.data.length;
    const shown = e.data.subarray(0, Math.min(room, e.data.length));
    run.shown += shown.length;
    run.hidden += e.data.length - shown.length;
    if (shown.length) {
      this.out.write(`${showBytes(shown)}\n`);
    }
  }

  private headerLines(prefix: string, color: string, headers: [string, string][]): string {
    const c = this.c;
    return redactHeaders(headers, this.o.redact)
      .map(([k, v]) => `${color}${prefix}${c.reset} ${k}: ${v}\n`)
      .join('');
  }

  private body(m: HttpMessage): string {
    const c = this.c;
    const lines: string[] = [];
    if (m.body.length) {
      const d = decodeBody(m.body, m.headers);
      const mime = mimeType(m.headers);
      const shown = showBody(d.data, mime, this.o.printLimit);
      if (d.decoded.length) lines.push(`${c.dim}[${d.decoded.join(', ')}: ${m.body.length} bytes decoded to ${d.data.length}]${c.reset}`);
      if (d.error) lines.push(`${c.yellow}[${d.error}]${c.reset}`);
      lines.push(`\n${shown.text.replace(/\r\n/g, '\n').replace(/\n$/, '')}`);
      if (shown.omitted) lines.push(`${c.yellow}[${shown.omitted} more bytes not shown (--print-limit)]${c.reset}`);
    }
    if (m.bodyMissing) lines.push(`${c.yellow}[${m.bodyMissing} bytes of the body were not captured]${c.reset}`);
    for (const n of m.notes) lines.push(`${c.yellow}[${n}]${c.reset}`);
    if (!m.complete && !m.notes.length) lines.push(`${c.yellow}[incomplete]${c.reset}`);
    return lines.length ? `${lines.join('\n')}\n` : '';
  }

  private exchange(x: HttpExchange): string {
    const c = this.c;
    const req = x.request;
    const res = x.response;
    const ts = req?.firstNs ?? res?.firstNs ?? 0n;
    const h2 = x.protocol === 'HTTP/2';
    const what = `${x.protocol}${x.streamId !== undefined ? ` stream ${x.streamId}` : ''}${x.grpc ? ` gRPC ${x.grpc.service}/${x.grpc.method}` : ''}`;
    let s = `\n${this.who(x.conn, ts)} ${c.bold}${what}${c.reset} ${c.dim}(${connWhere(x.conn)})${c.reset}\n`;
    if (req) {
      s += `${c.green}>${c.reset} ${c.bold}${req.method} ${h2 ? x.url : req.target} ${req.version ?? x.protocol}${c.reset}\n`;
      s += this.headerLines('>', c.green, req.headers);
      if (req.trailers.length) s += this.headerLines('> trailer', c.green, req.trailers);
      s += this.body(req);
    } else s += `${c.yellow}[the request was not captured]${c.reset}\n`;
    if (res) {
      for (const i of res.interim) s += `${c.cyan}<${c.reset} ${i.status} ${c.dim}(interim)${c.reset}\n${this.headerLines('<', c.cyan, i.headers)}`;
      const color = res.status >= 500 ? c.red : res.status >= 400 ? c.yellow : res.status >= 300 ? c.cyan : c.green;
      const timing = req && res.firstNs ? `, ${ms(req.firstNs, res.lastNs)}` : '';
      const size = `${res.body.length + res.bodyMissing} bytes${timing}`;
      s += `${c.cyan}<${c.reset} ${c.bold}${h2 ? '' : `${res.version ?? x.protocol} `}${color}${res.status}${c.reset}${c.bold}${res.statusText ? ` ${res.statusText}` : ''}${c.reset} ${c.dim}(${size})${c.reset}\n`;
      s += this.headerLines('<', c.cyan, res.headers);
      s += this.body(res);
      if (res.trailers.length) s += this.headerLines('< trailer', c.cyan, res.trailers);
    } else if (req) s += `${c.yellow}[no response captured]${c.reset}\n`;
    if (x.grpc) s += `${c.dim}[gRPC: ${x.grpc.requestMessages} request and ${x.grpc.responseMessages} response messages${x.grpc.status !== undefined ? `, grpc-status ${x.grpc.status}${x.grpc.message ? ` (${x.grpc.message})` : ''}` : ''}]${c.reset}\n`;
    if (x.reset) s += `${c.yellow}[stream reset: ${x.reset}]${c.reset}\n`;
    if (x.switchedTo) s += `${c.yellow}[the connection switched to ${x.switchedTo}; what follows is shown call by call]${c.reset}\n`;
    for (const n of x.notes) s += `${c.yellow}[${n}]${c.reset}\n`;
    return s;
  }
}
