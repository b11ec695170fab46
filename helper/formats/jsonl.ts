// jsonl.ts: `--format jsonl`: one JSON object per line, for jq and scripts. "exchange" lines
// hold one complete request/response pair each; "data" lines hold bytes no exchange took (not
// HTTP, out of step, HTTP/2 frames that cannot be decoded), so nothing is hidden; a
// "connection" line closes each connection with its totals and notes. The contract is
// schemas/jsonl/line.schema.json.
import { decodeBody, mimeType, textOrBase64 } from '../http/body';
import { upTo } from '../http/bytes';
import { ConnInfo, HttpExchange, Session, SessionEvent } from '../http/exchanges';
import { HttpMessage } from '../http/messages';
import { redactHeaders } from '../http/redact';
import { RawFrame } from '../protocol/wire';
import { Renderer, RenderOptions, Sink } from './output';

const iso = (ns: bigint): string => {
  const d = new Date(Number(ns / 1_000_000n));
  return d.toISOString().replace(/\.\d{3}Z$/, `.${String(ns % 1_000_000_000n).padStart(9, '0')}Z`);
};

export function connJson(c: ConnInfo): Record<string, unknown> {
  return {
    id: c.connId.toString(),
    pid: c.pid,
    comm: c.comm,
    role: c.role,
    local: { ip: c.localIp, port: c.localPort },
    remote: { ip: c.remoteIp, port: c.remotePort },
    mid_stream: c.midStream,
  };
}

/** A body: decoded text when it reads as text, else base64; what was left out is said. */
export function bodyJson(m: HttpMessage, limit: number): Record<string, unknown> {
  const d = decodeBody(m.body, m.headers);
  const cut = upTo(d.data, limit);
  return {
    size: d.data.length,
    wire_size: m.body.length,
    content_encoding: d.decoded,
    ...(d.error ? { decode_error: d.error } : {}),
    mime_type: mimeType(m.headers),
    ...textOrBase64(cut),
    omitted_bytes: d.data.length - cut.length,
    missing_bytes: m.bodyMissing,
  };
}

function messageJson(m: HttpMessage, o: RenderOptions): Record<string, unknown> {
  return {
    ts: iso(m.firstNs),
    ts_ns: m.firstNs.toString(),
    end_ts_ns: m.lastNs.toString(),
    headers: redactHeaders(m.headers, o.redact),
    trailers: redactHeaders(m.trailers, o.redact),
    body: bodyJson(m, o.printLimit),
    head_bytes: m.headBytes,
    complete: m.complete,
    notes: m.notes,
  };
}

export function exchangeJson(x: HttpExchange, o: RenderOptions): Record<string, unknown> {
  const req = x.request;
  const res = x.response;
  return {
    type: 'exchange',
    id: x.id,
    conn: connJson(x.conn),
    protocol: x.protocol,
    ...(x.streamId !== undefined ? { stream_id: x.streamId } : {}),
    request: req ? { method: req.method, url: x.url, target: req.target, ...messageJson(req, o) } : null,
    response: res
      ? {
          status: res.status,
          status_text: res.statusText,
          interim: res.interim.map((i) => ({ status: i.status, headers: redactHeaders(i.headers, o.redact), ts_ns: i.tsNs.toString() })),
          ...messageJson(res, o),
        }
      : null,
    duration_ms: req && res ? Number(res.lastNs - req.firstNs) / 1e6 : null,
    ...(x.grpc ? { grpc: x.grpc } : {}),
    ...(x.reset ? { reset: x.reset } : {}),
    ...(x.switchedTo ? { switched_to: x.switchedTo } : {}),
    notes: x.notes,
  };
}

export class JsonlRenderer implements Renderer {
  private readonly session: Session;
  private readonly notes = new Map<string, string[]>();

  constructor(
    private readonly out: Sink,
    private readonly o: RenderOptions,
  ) {
    this.session = new Session((e) => this.event(e));
  }

  push(f: RawFrame): void {
    this.session.push(f);
  }

  end(): void {
    this.session.end();
  }

  private line(v: Record<string, unknown>): void {
    this.out.write(`${JSON.stringify(v)}\n`);
  }

  private event(e: SessionEvent): void {
    if (e.type === 'exchange') this.line(exchangeJson(e.exchange, this.o));
    else if (e.type === 'note' || e.type === 'protocol') {
      const list = this.notes.get(e.conn.key) ?? [];
      list.push(e.type === 'note' ? e.text : `${e.protocol}${e.joined ? ' (joined mid-stream)' : ''}`);
      this.notes.set(e.conn.key, list);
    } else if (e.type === 'data') {
      const cut = upTo(e.data, this.o.printLimit);
      this.line({
        type: 'data',
        conn: connJson(e.conn),
        dir: e.dir === 0 ? 'sent' : 'received',
        offset: e.seq,
        ts: iso(e.tsNs),
        ts_ns: e.tsNs.toString(),
        why: e.why,
        size: e.data.length,
        ...textOrBase64(cut),
        omitted_bytes: e.data.length - cut.length,
      });
    } else if (e.type === 'close') {
      const notes = this.notes.get(e.conn.key) ?? [];
      this.notes.delete(e.conn.key);
      this.line({
        type: 'connection',
        conn: connJson(e.conn),
        protocol: e.protocol ?? null,
        opened_ns: e.conn.openNs.toString(),
        closed_ns: e.tsNs.toString(),
        reason: e.reason,
        exchanges: e.totals.exchanges,
        bytes_sent: e.totals.captured[0],
        bytes_received: e.totals.captured[1],
        missing_sent: e.totals.missing[0],
        missing_received: e.totals.missing[1],
        shed_sent: e.totals.shed[0],
        shed_received: e.totals.shed[1],
        notes,
      });
    }
  }
}
