// traffic.ts: turns a conversation (bytes per direction, in order, with optional gaps) into the
// frames a helper would write for it (conn_open, segments, conn_close), and records real HTTP/2
// traffic of node's http2 (nghttp2) through an in-process TCP relay: test inputs for the
// parsers and the output formats without root.
import * as http2 from 'http2';
import * as net from 'net';
import { Dir } from '../../helper/http/messages';
import { RawFrame } from '../../helper/protocol/wire';

export type Step =
  | { dir: Dir; data: Buffer | string }
  /** `bytes` bytes of `dir` that were not captured; `cut`: the previous call was truncated (cap). */
  | { dir: Dir; skip: number; cut?: boolean };

export interface ConvOptions {
  pid?: number;
  comm?: string;
  connId?: bigint;
  role?: 'client' | 'server' | 'unknown';
  midStream?: boolean;
  local?: [string, number];
  remote?: [string, number];
  /** ts of the first frame (ns); each step adds 1 ms. */
  t0?: bigint;
  /** Leave out conn_open / conn_close. */
  noOpen?: boolean;
  noClose?: boolean;
  closeReason?: string;
}

export function conversation(steps: Step[], o: ConvOptions = {}): RawFrame[] {
  const pid = o.pid ?? 4242;
  const comm = o.comm ?? 'client';
  const connId = o.connId ?? 1n;
  const [lip, lport] = o.local ?? ['127.0.0.1', 40000];
  const [rip, rport] = o.remote ?? ['127.0.0.1', 8443];
  let ts = o.t0 ?? 1_764_000_000_000_000_000n;
  const sock = { fd: 5, local_ip: lip, local_port: lport, remote_ip: rip, remote_port: rport };
  const out: RawFrame[] = [];
  if (!o.noOpen) out.push({ type: 'conn_open', conn_id: connId, pid, tid: pid, comm, ssl_ptr: 1n, ...sock, ts_ns: ts, mid_stream: o.midStream ?? false, role: o.role ?? 'client' });
  const next: [number, number] = [0, 0];
  const lost: [number, number] = [0, 0];
  let last: RawFrame | undefined;
  for (const s of steps) {
    ts += 1_000_000n;
    if ('skip' in s) {
      if (s.cut && last && last.dir === s.dir) {
        last.truncated = true;
        last.len_total = (last.len_total as number) + s.skip;
      } else lost[s.dir] += s.skip;
      next[s.dir] += s.skip;
      continue;
    }
    const data = Buffer.isBuffer(s.data) ? s.data : Buffer.from(s.data, 'latin1');
    for (let at = 0; at < data.length || at === 0; at += 16384) {
      const piece = data.subarray(at, at + 16384);
      last = {
        type: 'segment', conn_id: connId, pid, tid: pid, comm, ssl_ptr: 1n, dir: s.dir, ...sock,
        seq: BigInt(next[s.dir]), ack: BigInt(next[s.dir === 0 ? 1 : 0]), ts_ns: ts, len_total: data.length, data: piece,
        eos: false, truncated: false, lost_before: lost[s.dir], mid_stream: o.midStream ?? false,
      };
      lost[s.dir] = 0;
      next[s.dir] += piece.length;
      out.push(last);
      if (data.length === 0) break;
    }
  }
  if (!o.noClose) out.push({ type: 'conn_close', conn_id: connId, pid, ts_ns: ts + 1_000_000n, reason: o.closeReason ?? 'close', egress_end: BigInt(next[0]), ingress_end: BigInt(next[1]), eos: true });
  return out;
}

/** Every split of `text` into two calls, for parsers that must take a message across calls. */
export function splits(text: string): [string, string][] {
  const out: [string, string][] = [];
  for (let i = 1; i < text.length; i++) out.push([text.slice(0, i), text.slice(i)]);
  return out;
}

/**
 * Runs `scenario` against a node http2 server over cleartext TCP (h2 with prior knowledge),
 * through a relay that records every chunk each way in order: dir 0 client → server.
 */
export async function recordHttp2(
  handler: (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse, stream: http2.ServerHttp2Stream) => void,
  scenario: (client: http2.ClientHttp2Session) => Promise<void>,
): Promise<Step[]> {
  const server = http2.createServer();
  server.on('request', (req, res) => handler(req, res, req.stream));
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const steps: Step[] = [];
  const relay = net.createServer((inbound) => {
    const outbound = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    inbound.on('data', (d: Buffer) => {
      steps.push({ dir: 0, data: Buffer.from(d) });
      outbound.write(d);
    });
    outbound.on('data', (d: Buffer) => {
      steps.push({ dir: 1, data: Buffer.from(d) });
      inbound.write(d);
    });
    inbound.on('end', () => outbound.end());
    outbound.on('end', () => inbound.end());
    inbound.on('error', () => outbound.destroy());
    outbound.on('error', () => inbound.destroy());
  });
  await new Promise<void>((ok) => relay.listen(0, '127.0.0.1', ok));
  const client = http2.connect(`http://127.0.0.1:${(relay.address() as net.AddressInfo).port}`);
  try {
    await scenario(client);
  } finally {
    await new Promise<void>((ok) => client.close(() => ok()));
    await new Promise((ok) => setTimeout(ok, 50));
    relay.close();
    server.close();
  }
  return steps;
}

/** A request on an http2 client session: resolves with status, headers, body and trailers. */
export function h2request(
  client: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  body?: Buffer,
): Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: Buffer; trailers: http2.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const s = client.request(headers, { endStream: !body });
    const chunks: Buffer[] = [];
    let head: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    s.on('response', (h) => (head = h));
    s.on('trailers', (t) => (trailers = t));
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('end', () => resolve({ status: Number(head[':status']), headers: head, body: Buffer.concat(chunks), trailers }));
    s.on('error', reject);
    if (body) s.end(body);
  });
}

/** Asks for `path`, which the server pushes /pushed.css for: resolves once both streams ended. */
export async function h2requestWithPush(client: http2.ClientHttp2Session, path: string): Promise<void> {
  const pushed = new Promise<void>((ok) => client.once('stream', (s) => s.on('data', () => undefined).on('end', ok)));
  await h2request(client, { ':path': path });
  await pushed;
}

/** Opens a stream for `path` the server never answers, and resets it (CANCEL) after `ms`. */
export function h2cancel(client: http2.ClientHttp2Session, path: string, ms = 50): Promise<void> {
  return new Promise<void>((ok) => {
    const s = client.request({ ':path': path });
    s.on('error', () => undefined);
    setTimeout(() => {
      s.close(http2.constants.NGHTTP2_CANCEL);
      s.on('close', () => ok());
    }, ms);
  });
}

/** Server side of h2requestWithPush: pushes /pushed.css, then answers. */
export function pushCss(stream: http2.ServerHttp2Stream, res: http2.Http2ServerResponse): void {
  stream.pushStream({ ':path': '/pushed.css' }, (err, push) => {
    if (!err) {
      push.respond({ ':status': 200, 'content-type': 'text/css' });
      push.end('body{}');
    }
    res.end('with push');
  });
}
