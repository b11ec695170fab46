// har.ts: `--format har`: HTTP Archive 1.2 (browser devtools, Postman, har-validator), one
// entry per exchange with a request. A HAR is one JSON document: it is streamed, entries held
// only to keep them in the order their requests started (at most HAR_HOLD_BYTES of them), the
// end of the document written when the capture ends. Timings come from the capture's timestamps: each segment carries the time its
// TLS call returned, so send is the request's first to last call, wait its last call to the
// response's first, receive the response's first to last call. What the capture cannot know
// (blocked, dns, connect, ssl) is -1, as the spec says.
import type { Entry, Header } from 'har-format';
import { decodeBody, headerValue, textOrBase64 } from '../http/body';
import { upTo } from '../http/bytes';
import { HttpExchange, Session, SessionEvent } from '../http/exchanges';
import { HttpMessage } from '../http/messages';
import { redactHeaders } from '../http/redact';
import { RawFrame } from '../protocol/wire';
import { Renderer, RenderOptions, Sink } from './output';

const msBetween = (a: bigint, b: bigint): number => Math.max(0, Number(b - a) / 1e6);
const headersOf = (h: [string, string][], redact: boolean): Header[] => redactHeaders(h, redact).map(([name, value]) => ({ name, value }));

function cookies(m: HttpMessage, name: 'cookie' | 'set-cookie', redact: boolean): { name: string; value: string }[] {
  const out: { name: string; value: string }[] = [];
  for (const [k, v] of m.headers) {
    if (k.toLowerCase() !== name) continue;
    const pairs = name === 'cookie' ? v.split(';') : [v.split(';')[0]!];
    for (const p of pairs) {
      const eq = p.indexOf('=');
      if (eq < 0) continue;
      const value = p.slice(eq + 1).trim();
      out.push({ name: p.slice(0, eq).trim(), value: redact ? `[redacted, ${Buffer.byteLength(value, 'latin1')} bytes]` : value });
    }
  }
  return out;
}

function httpVersion(x: HttpExchange, m?: HttpMessage): string {
  return x.protocol === 'HTTP/2' ? 'HTTP/2.0' : (m?.version ?? x.protocol);
}

function entry(x: HttpExchange, o: RenderOptions): Entry | undefined {
  const req = x.request;
  if (!req) return undefined; // a HAR entry needs a request; such responses are in the notes
  const res = x.response;
  let query: { name: string; value: string }[] = [];
  try {
    query = [...new URL(x.url).searchParams].map(([name, value]) => ({ name, value }));
  } catch {
    // a request-target that makes no URL (captured as it was): no query string
  }
  const reqBody = decodeBody(req.body, req.headers);
  const send = msBetween(req.firstNs, req.lastNs);
  const wait = res ? msBetween(req.lastNs, res.firstNs) : 0;
  const receive = res ? msBetween(res.firstNs, res.lastNs) : 0;
  const notes = [...x.notes, ...req.notes, ...(res?.notes ?? [])];
  if (!res) notes.push('no response was captured');
  if (x.reset) notes.push(`stream reset: ${x.reset}`);
  const content = ((): Entry['response']['content'] => {
    if (!res) return { size: 0, mimeType: '' };
    const d = decodeBody(res.body, res.headers);
    const mime = headerValue(res.headers, 'content-type') ?? '';
    const data = upTo(d.data, o.printLimit);
    const c: Entry['response']['content'] = { size: d.data.length, mimeType: mime };
    if (d.decoded.length) c.compression = d.data.length - res.body.length;
    if (data.length) {
      const t = textOrBase64(data);
      c.text = t.data;
      if (t.encoding === 'base64') c.encoding = 'base64';
    }
    const comments: string[] = [];
    if (d.error) comments.push(d.error);
    if (data.length < d.data.length) comments.push(`${d.data.length - data.length} bytes left out (--print-limit)`);
    if (res.bodyMissing) comments.push(`${res.bodyMissing} bytes of the body were not captured`);
    if (comments.length) c.comment = comments.join('; ');
    return c;
  })();
  const e: Entry = {
    startedDateTime: new Date(Number(req.firstNs / 1_000_000n)).toISOString(),
    time: send + wait + receive,
    request: {
      method: req.method,
      url: x.url,
      httpVersion: httpVersion(x, req),
      cookies: cookies(req, 'cookie', o.redact),
      headers: headersOf(req.headers, o.redact),
      queryString: query,
      headersSize: req.headBytes,
      bodySize: req.body.length,
      ...(req.body.length
        ? { postData: postData(reqBody.data, headerValue(req.headers, 'content-type') ?? '', o.printLimit) }
        : {}),
    },
    response: res
      ? {
          status: res.status,
          statusText: res.statusText,
          httpVersion: httpVersion(x, res),
          cookies: cookies(res, 'set-cookie', o.redact),
          headers: headersOf(res.headers, o.redact),
          content,
          redirectURL: headerValue(res.headers, 'location') ?? '',
          headersSize: res.headBytes,
          bodySize: res.body.length,
        }
      : { status: 0, statusText: '', httpVersion: httpVersion(x), cookies: [], headers: [], content, redirectURL: '', headersSize: -1, bodySize: -1 },
    cache: {},
    timings: { blocked: -1, dns: -1, connect: -1, ssl: -1, send, wait, receive },
    serverIPAddress: x.conn.role === 'server' ? x.conn.localIp : x.conn.remoteIp,
    connection: String(x.conn.connId),
    ...(notes.length ? { comment: notes.join('; ') } : {}),
  };
  // Who made the exchange, in a custom field (HAR allows fields that start with "_").
  (e as unknown as Record<string, unknown>)._process = { pid: x.conn.pid, comm: x.conn.comm, role: x.conn.role, ...(x.streamId !== undefined ? { stream_id: x.streamId } : {}) };
  return e;
}

/** A request body: HAR 1.2's postData has no encoding field, so a binary one is said to be base64 in its comment. */
function postData(body: Buffer, mimeType: string, limit: number): { mimeType: string; text: string; comment?: string } {
  const data = upTo(body, limit);
  const t = textOrBase64(data);
  const notes: string[] = [];
  if (t.encoding === 'base64') notes.push('text is the body in base64 (not text)');
  if (data.length < body.length) notes.push(`${body.length - data.length} bytes left out (--print-limit)`);
  return { mimeType, text: t.data, ...(notes.length ? { comment: notes.join('; ') } : {}) };
}

/** Entries held for sorting at most (their JSON); past it the oldest are written out. 32 MiB held
 * (and the strings JSON.stringify made on the way) took the HAR capture 60–90 MiB above text. */
export const HAR_HOLD_BYTES = 8 << 20;

/**
 * Entries are held, as JSON, so that the archive lists them in the order their requests
 * started; a long capture cannot grow without bound: past `holdBytes` held, the older half is
 * written out (the document is streamed: header, entries, then the end at end()). Only an
 * exchange that finishes later than `holdBytes` of others can then come after later ones.
 */
export class HarRenderer implements Renderer {
  private readonly session: Session;
  private held: { ns: bigint; json: string }[] = [];
  private heldBytes = 0;
  private written = 0;
  private readonly unpaired: string[] = [];
  private done = false;

  constructor(
    private readonly out: Sink,
    private readonly o: RenderOptions,
    private readonly holdBytes = HAR_HOLD_BYTES,
  ) {
    this.session = new Session((e) => this.event(e));
  }

  push(f: RawFrame): void {
    this.session.push(f);
  }

  private event(e: SessionEvent): void {
    if (e.type !== 'exchange') return;
    const x = entry(e.exchange, this.o);
    if (!x) {
      this.unpaired.push(`${e.exchange.conn.comm}[${e.exchange.conn.pid}] conn ${e.exchange.conn.connId}: a ${e.exchange.response?.status ?? ''} response without its request`);
      return;
    }
    // Indented for its place in the document (6 spaces: log, entries, the entry) by stringifying
    // it three arrays deep and slicing it out. Indenting it after (replace) made each held entry
    // a rope of ~170 strings that kept the unindented JSON alive as well: 35 MiB of strings for
    // 8 MiB of held JSON (heap snapshot, issue #15).
    const deep = JSON.stringify([[[x]]], null, 2);
    const json = deep.slice(deep.indexOf('{'), deep.lastIndexOf('}') + 1);
    this.held.push({ ns: e.exchange.request!.firstNs, json });
    this.heldBytes += json.length;
    if (this.heldBytes > this.holdBytes) this.flush(this.holdBytes / 2);
  }

  /** Writes the oldest held entries until at most `keep` bytes of them are held. */
  private flush(keep: number): void {
    this.held.sort((a, b) => (a.ns < b.ns ? -1 : a.ns > b.ns ? 1 : 0));
    let n = 0;
    const parts: string[] = [];
    if (this.written === 0 && this.held.length) parts.push(`{\n  "log": {\n    "version": "1.2",\n    "creator": ${JSON.stringify({ name: 'https-capture', version: this.o.version })},\n    "entries": [\n`);
    while (n < this.held.length && this.heldBytes > keep) {
      parts.push(`${this.written++ ? ',\n' : ''}      ${this.held[n]!.json}`);
      this.heldBytes -= this.held[n]!.json.length;
      n++;
    }
    this.held = this.held.slice(n);
    if (parts.length) this.out.write(parts.join(''));
  }

  end(): void {
    if (this.done) return;
    this.done = true;
    this.session.end();
    this.flush(0);
    const comment = this.unpaired.length ? `,\n    "comment": ${JSON.stringify(this.unpaired.join('; '))}` : '';
    if (this.written === 0) this.out.write(`{\n  "log": {\n    "version": "1.2",\n    "creator": ${JSON.stringify({ name: 'https-capture', version: this.o.version })},\n    "entries": []${comment}\n  }\n}\n`);
    else this.out.write(`\n    ]${comment}\n  }\n}\n`);
  }
}
