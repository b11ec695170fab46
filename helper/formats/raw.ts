// raw.ts: `--format raw`: every TLS call as it was captured (helper/show.ts): a header line
// (time, process, direction, length, connection, offset) and the bytes, as text or a hex dump,
// plus each connection's open and close. Built from the frames (segments joined back into
// calls by their len_total), so live capture and replay print the same; secrets masked in
// place unless --no-redact.
import { Call } from '../records/calls';
import { CloseReason, SockInfo } from '../records/records';
import { COLORS, PLAIN, showCall, showConn, ShowOptions } from './show';
import { RawFrame } from '../protocol/wire';
import { MaskedFrames, Renderer, RenderOptions, Sink } from './output';

function sockOf(f: RawFrame): SockInfo {
  const localIp = String(f.local_ip ?? '0.0.0.0');
  const remoteIp = String(f.remote_ip ?? '0.0.0.0');
  const known = !((f.local_port ?? 0) === 0 && (f.remote_port ?? 0) === 0);
  return {
    fd: (f.fd as number | undefined) ?? -1,
    role: (f.role as SockInfo['role'] | undefined) ?? 'unknown',
    family: !known ? 'unknown' : localIp.includes(':') ? 'ipv6' : 'ipv4',
    localIp,
    localPort: (f.local_port as number | undefined) ?? 0,
    remoteIp,
    remotePort: (f.remote_port as number | undefined) ?? 0,
    midStream: f.mid_stream === true,
  };
}

interface Pending {
  first: RawFrame;
  pieces: Buffer[];
  got: number;
  next: number;
  truncated: boolean;
  rateLimited: boolean;
  shed: boolean;
}

export class RawRenderer implements Renderer {
  private readonly masked: MaskedFrames;
  private readonly show: ShowOptions;
  private readonly pending = new Map<string, Pending>();
  /** The role each connection's conn_open gave (segments carry no role). */
  private readonly roles = new Map<string, SockInfo['role']>();

  constructor(
    private readonly out: Sink,
    o: RenderOptions,
  ) {
    this.show = { limit: o.printLimit, wallOffsetNs: 0n, color: o.color };
    this.masked = new MaskedFrames(o.redact, (f) => this.frame(f));
  }

  push(f: RawFrame): void {
    this.masked.push(f);
  }

  end(): void {
    this.masked.end();
    for (const key of [...this.pending.keys()]) this.flush(key);
  }

  private frame(f: RawFrame): void {
    const conn = `${f.pid}:${f.conn_id}`;
    if (f.type === 'conn_open') {
      this.comms.set(f.pid as number, String(f.comm));
      this.roles.set(conn, (f.role as SockInfo['role']) ?? 'unknown');
      this.out.write(showConn({ kind: 'open', tsNs: f.ts_ns as bigint, pid: f.pid as number, tid: f.tid as number, comm: String(f.comm), connId: f.conn_id as bigint, ssl: f.ssl_ptr as bigint, sock: sockOf(f), egressBytes: 0, ingressBytes: 0 }, this.show));
    } else if (f.type === 'segment') this.segment(f, conn);
    else if (f.type === 'conn_close') {
      for (const d of [0, 1]) this.flush(`${conn}:${d}`);
      this.roles.delete(conn);
      const reason = f.reason === 'process_exit' ? 'exit' : (String(f.reason) as CloseReason);
      this.out.write(
        showConn(
          { kind: 'close', reason, tsNs: f.ts_ns as bigint, pid: f.pid as number, tid: f.pid as number, comm: this.comms.get(f.pid as number) ?? '', connId: f.conn_id as bigint, ssl: 0n, sock: sockOf(f), egressBytes: Number(f.egress_end as bigint), ingressBytes: Number(f.ingress_end as bigint) },
          this.show,
        ),
      );
    }
  }

  private readonly comms = new Map<number, string>();

  /** Segments of one call are consecutive in their direction and share len_total. */
  private segment(f: RawFrame, conn: string): void {
    this.comms.set(f.pid as number, String(f.comm));
    const key = `${conn}:${f.dir}`;
    const seq = Number(f.seq as bigint);
    let p = this.pending.get(key);
    if (p && (p.next !== seq || p.first.len_total !== f.len_total || (f.lost_before as number) > 0)) {
      this.flush(key);
      p = undefined;
    }
    const data = f.data as Buffer;
    if (!p) {
      p = { first: f, pieces: [], got: 0, next: seq, truncated: false, rateLimited: false, shed: false };
      this.pending.set(key, p);
    }
    p.pieces.push(data);
    p.got += data.length;
    p.next = seq + data.length;
    p.truncated = f.truncated === true;
    p.rateLimited = f.rate_limited === true;
    p.shed = f.shed === true;
    if (p.truncated || p.got >= (f.len_total as number)) this.flush(key);
  }

  private flush(key: string): void {
    const p = this.pending.get(key);
    if (!p) return;
    this.pending.delete(key);
    const f = p.first;
    const conn = `${f.pid}:${f.conn_id}`;
    const sock = { ...sockOf(f), role: this.roles.get(conn) ?? 'unknown' };
    const lenTotal = f.len_total as number;
    const call: Call = {
      tsNs: f.ts_ns as bigint,
      pid: f.pid as number,
      tid: f.tid as number,
      comm: String(f.comm),
      connId: f.conn_id as bigint,
      ssl: f.ssl_ptr as bigint,
      dir: f.dir === 0 ? 'egress' : 'ingress',
      sock,
      seq: Number(f.seq as bigint),
      callLen: lenTotal,
      data: p.pieces.length === 1 ? p.pieces[0]! : Buffer.concat(p.pieces),
      truncatedBytes: p.truncated ? Math.max(0, lenTotal - p.got) : 0,
      rateLimited: p.rateLimited,
      ...(p.shed ? { shed: true } : {}),
      lostBytes: p.truncated ? 0 : Math.max(0, lenTotal - p.got),
    };
    if ((f.lost_before as number) > 0) {
      const c = this.show.color ? COLORS : PLAIN;
      this.out.write(`${c.yellow}[${f.lost_before} bytes lost before this call]${c.reset}\n`);
    }
    this.out.write(showCall(call, this.show));
  }
}
