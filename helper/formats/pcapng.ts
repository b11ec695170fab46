// pcapng.ts: `--format pcapng`: the plaintext as synthesized Ethernet/IPv4|IPv6/TCP packets
// that Wireshark and tshark open: each connection with its real 4-tuple, a synthetic
// three-way handshake (none for a connection joined mid-stream), one packet per segment with
// the TCP sequence number taken from the byte offset (so a gap stays a gap: "previous segment
// not captured"), the ack from the bytes seen the other way, and FINs at the close. The
// process (comm, pid, role, conn id) is in the first packet's comment, gaps in the comment of
// the packet after them, and the direction in epb_flags.
//
// Both ends of one connection captured (curl and nginx on one host: the same 4-tuple mirrored,
// from two processes or two conn ids) are written as one TCP stream: the second end joins the
// first's connection, each byte range is written once (by whichever end saw it first), so a
// gap on one end only is filled from the other and a gap stays only where both ends missed the
// bytes; the second end's process is in the comment of the next packet written and in the FIN's.
//
// Written by hand: npm has no maintained pcapng writer (`pcap` binds libpcap for live capture,
// `pcap-parser` only reads classic pcap), and the format needs only three block types here
// (section header, interface description, enhanced packet; pcapng spec, IETF draft
// draft-ietf-opsawg-pcapng).
import * as ipaddr from 'ipaddr.js';
import { RawFrame } from '../protocol/wire';
import { MaskedFrames, Renderer, RenderOptions, Sink } from './output';

const LINKTYPE_ETHERNET = 1;
const TCP = { FIN: 0x01, SYN: 0x02, PSH: 0x08, ACK: 0x10 };
const MAX_PAYLOAD = 65535 - 20 - 20;
/**
 * How long (capture time) and how much bytes after a gap wait for the other end of the
 * connection: an end that stops reporting (its process filtered out, its calls no longer seen)
 * must not hold the stream, nor memory, until the capture ends.
 */
const HOLD_NS = 1_000_000_000n;
const HOLD_BYTES = 8 << 20;

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** A pcapng option: code, length, value padded to 4 bytes. */
function option(code: number, value: Buffer): Buffer {
  const b = Buffer.alloc(4 + value.length + pad4(value.length));
  b.writeUInt16LE(code, 0);
  b.writeUInt16LE(value.length, 2);
  value.copy(b, 4);
  return b;
}
const endOfOptions = (): Buffer => Buffer.alloc(4);

function block(type: number, body: Buffer): Buffer {
  const len = 12 + body.length;
  const b = Buffer.alloc(len);
  b.writeUInt32LE(type, 0);
  b.writeUInt32LE(len, 4);
  body.copy(b, 8);
  b.writeUInt32LE(len, len - 4);
  return b;
}

/** Section header (with the writing application) and one Ethernet interface, ns timestamps. */
export function pcapngHeader(version: string): Buffer {
  const shbFixed = Buffer.alloc(16);
  shbFixed.writeUInt32LE(0x1a2b3c4d, 0);
  shbFixed.writeUInt16LE(1, 4);
  shbFixed.writeUInt16LE(0, 6);
  shbFixed.writeBigInt64LE(-1n, 8); // section length unknown
  const shb = block(0x0a0d0d0a, Buffer.concat([shbFixed, option(4, Buffer.from(`https-capture ${version}`)), endOfOptions()]));
  const idbFixed = Buffer.alloc(8);
  idbFixed.writeUInt16LE(LINKTYPE_ETHERNET, 0);
  idbFixed.writeUInt32LE(0, 4); // no snap length
  const idb = block(
    1,
    Buffer.concat([
      idbFixed,
      option(2, Buffer.from('https-capture')),
      option(3, Buffer.from('plaintext of TLS calls, as synthetic TCP packets')),
      option(9, Buffer.from([9])), // if_tsresol: 10^-9 s
      endOfOptions(),
    ]),
  );
  return Buffer.concat([shb, idb]);
}

/** An enhanced packet block: timestamp in ns, the packet, a comment and the direction. */
export function packetBlock(tsNs: bigint, packet: Buffer, comment: string | undefined, inbound: boolean): Buffer {
  const fixed = Buffer.alloc(20);
  fixed.writeUInt32LE(0, 0);
  fixed.writeUInt32LE(Number((tsNs >> 32n) & 0xffffffffn), 4);
  fixed.writeUInt32LE(Number(tsNs & 0xffffffffn), 8);
  fixed.writeUInt32LE(packet.length, 12);
  fixed.writeUInt32LE(packet.length, 16);
  const flags = Buffer.alloc(4);
  flags.writeUInt32LE(inbound ? 1 : 2, 0); // epb_flags: inbound / outbound
  const opts = [option(2, flags)];
  if (comment) opts.unshift(option(1, Buffer.from(comment, 'utf8')));
  return block(6, Buffer.concat([fixed, packet, Buffer.alloc(pad4(packet.length)), ...opts, endOfOptions()]));
}

function checksum(...parts: Buffer[]): number {
  let sum = 0;
  for (const b of parts) {
    for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
    if (b.length % 2) sum += b[b.length - 1]! << 8;
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** The address as 4 bytes, or as 16 (an IPv4 address v4-mapped) when the packet is IPv6. */
function ipBytes(ip: string, v6: boolean): Buffer {
  let a = ipaddr.isValid(ip) ? ipaddr.parse(ip) : ipaddr.parse(v6 ? '::' : '0.0.0.0');
  if (v6 && a.kind() === 'ipv4') a = (a as ipaddr.IPv4).toIPv4MappedAddress();
  return Buffer.from(a.toByteArray());
}

interface Endpoint {
  ip: Buffer;
  port: number;
  mac: Buffer;
}

/** One TCP segment inside Ethernet and IP. */
function tcpPacket(src: Endpoint, dst: Endpoint, v6: boolean, seq: number, ack: number, flags: number, payload: Buffer, ipId: number): Buffer {
  const tcp = Buffer.alloc(20);
  tcp.writeUInt16BE(src.port, 0);
  tcp.writeUInt16BE(dst.port, 2);
  tcp.writeUInt32BE(seq >>> 0, 4);
  tcp.writeUInt32BE(flags & TCP.ACK ? ack >>> 0 : 0, 8);
  tcp.writeUInt8(5 << 4, 12);
  tcp.writeUInt8(flags, 13);
  tcp.writeUInt16BE(65535, 14);
  const pseudo = Buffer.alloc(v6 ? 40 : 12);
  if (v6) {
    src.ip.copy(pseudo, 0);
    dst.ip.copy(pseudo, 16);
    pseudo.writeUInt32BE(20 + payload.length, 32);
    pseudo.writeUInt8(6, 39);
  } else {
    src.ip.copy(pseudo, 0);
    dst.ip.copy(pseudo, 4);
    pseudo.writeUInt8(6, 9);
    pseudo.writeUInt16BE(20 + payload.length, 10);
  }
  tcp.writeUInt16BE(checksum(pseudo, tcp, payload), 16);
  let ip: Buffer;
  if (v6) {
    ip = Buffer.alloc(40);
    ip.writeUInt32BE(0x60000000, 0);
    ip.writeUInt16BE(20 + payload.length, 4);
    ip.writeUInt8(6, 6);
    ip.writeUInt8(64, 7);
    src.ip.copy(ip, 8);
    dst.ip.copy(ip, 24);
  } else {
    ip = Buffer.alloc(20);
    ip.writeUInt8(0x45, 0);
    ip.writeUInt16BE(20 + 20 + payload.length, 2);
    ip.writeUInt16BE(ipId & 0xffff, 4);
    ip.writeUInt16BE(0x4000, 6); // don't fragment
    ip.writeUInt8(64, 8);
    ip.writeUInt8(6, 9);
    src.ip.copy(ip, 12);
    dst.ip.copy(ip, 16);
    ip.writeUInt16BE(checksum(ip), 10);
  }
  const eth = Buffer.alloc(14);
  dst.mac.copy(eth, 0);
  src.mac.copy(eth, 6);
  eth.writeUInt16BE(v6 ? 0x86dd : 0x0800, 12);
  return Buffer.concat([eth, ip, tcp, payload]);
}

/** 32-bit FNV-1a: initial sequence numbers that both ends of one connection agree on. */
function isnOf(src: Endpoint, dst: Endpoint): number {
  let h = 0x811c9dc5;
  for (const b of [...src.ip, src.port >> 8, src.port & 255, ...dst.ip, dst.port >> 8, dst.port & 255]) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}

/** One captured end of a connection (a process's pid:conn_id). */
interface End {
  c: Conn;
  /** Its egress is the Conn's dir 1 (it is the second end, seeing the tuple mirrored). */
  flip: boolean;
  /** `comm[pid]`, kept from its first frame: conn_close frames carry no comm. */
  name: string;
  open: boolean;
  /** Per Conn direction, the offset this end has reported up to (data or gap). */
  prog: [number, number];
  /** Per Conn direction, the byte ranges this end did not capture, and why. */
  holes: [[number, number, string][], [number, number, string][]];
}

/** Bytes received from one end, not yet written: a gap before them may still be filled by the other end. */
interface Pending {
  a: number;
  b: number;
  data: Buffer;
  ts: bigint;
  by: End;
  /** The end's own ack (bytes it saw the other way), used while the connection has one end. */
  ack: number;
  reason: string;
  truncated?: string;
}

interface Conn {
  /** [0]: the first end's side (egress source), [1]: its peer. */
  ends: [Endpoint, Endpoint];
  isn: [number, number];
  v6: boolean;
  /** Per direction, the offset written up to (data, or a gap no end can fill any more). */
  next: [number, number];
  label: string;
  labelled: boolean;
  /** Per direction, byte ranges [start, end) written or pending (sorted, merged): each byte once. */
  seen: [[number, number][], [number, number][]];
  pending: [Pending[], Pending[]];
  /** The tuple key while the connection may still take its other end. */
  tuple?: string;
  captured: End[];
  closeWhy: string[];
  paired: boolean;
}

/** The parts of [a, b) not in `have` (sorted, merged). */
export function uncovered(have: [number, number][], a: number, b: number): [number, number][] {
  const out: [number, number][] = [];
  let at = a;
  for (const [s, e] of have) {
    if (e <= at) continue;
    if (s >= b) break;
    if (s > at) out.push([at, s]);
    at = Math.max(at, e);
    if (at >= b) break;
  }
  if (at < b) out.push([at, b]);
  return out;
}

function addRange(have: [number, number][], a: number, b: number): void {
  if (b <= a) return;
  have.push([a, b]);
  have.sort((x, y) => x[0] - y[0]);
  const merged: [number, number][] = [];
  for (const r of have) {
    const last = merged[merged.length - 1];
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else merged.push([r[0], r[1]]);
  }
  have.splice(0, have.length, ...merged);
}

export class PcapngRenderer implements Renderer {
  private readonly masked: MaskedFrames;
  private readonly conns = new Map<string, End>();
  /** Connections by their 4-tuple as seen from the first end, waiting for the mirrored end. */
  private readonly byTuple = new Map<string, Conn>();
  /** Connections with bytes waiting behind a gap: flushed on every frame, so time lets them go. */
  private readonly waiting = new Set<Conn>();
  private ipId = 1;
  /** The newest capture timestamp: connections still open at the end close then. */
  private lastNs = 0n;

  constructor(
    private readonly out: Sink,
    o: RenderOptions,
  ) {
    this.masked = new MaskedFrames(o.redact, (f) => this.frame(f));
    out.write(pcapngHeader(o.version));
  }

  push(f: RawFrame): void {
    this.masked.push(f);
  }

  end(): void {
    this.masked.end();
    const done = new Set<Conn>();
    for (const { c } of this.conns.values()) {
      if (done.has(c)) continue;
      done.add(c);
      this.flush(c, true);
      this.fin(c, this.lastNs, [...c.closeWhy, 'the capture ended'].join('; '));
    }
    this.conns.clear();
    this.byTuple.clear();
    this.waiting.clear();
  }

  private write(ts: bigint, c: Conn, fromPeer: boolean, seq: number, ack: number, flags: number, payload: Buffer, comment?: string): void {
    const [src, dst] = fromPeer ? [c.ends[1], c.ends[0]] : [c.ends[0], c.ends[1]];
    const notes: string[] = [];
    if (!c.labelled) {
      notes.push(c.label);
      c.labelled = true;
    }
    if (comment) notes.push(comment);
    this.out.write(packetBlock(ts, tcpPacket(src, dst, c.v6, seq, ack, flags, payload, this.ipId++), notes.join('; ') || undefined, fromPeer));
  }

  private conn(f: RawFrame): End {
    const key = `${f.pid}:${f.conn_id}`;
    const known = this.conns.get(key);
    if (known) return known;
    let localIp = String(f.local_ip);
    let remoteIp = String(f.remote_ip);
    let localPort = f.local_port as number;
    let remotePort = f.remote_port as number;
    const unknown = localPort === 0 && remotePort === 0;
    const role = String(f.role ?? 'unknown');
    if (unknown) {
      // No socket was mapped: made-up ports keep connections apart (said in the comment).
      localIp = '0.0.0.0';
      remoteIp = '0.0.0.0';
      const n = Number(BigInt(f.conn_id as bigint) % 50000n);
      localPort = role === 'server' ? 443 : 10000 + n;
      remotePort = role === 'server' ? 10000 + n : 443;
    }
    const v6 = localIp.includes(':') || remoteIp.includes(':');
    const name = `${f.comm}[${f.pid}]`;
    const label = `${name} ${role} conn ${f.conn_id}`;
    // The other end of a connection already here: its tuple mirrored. Offsets agree only when
    // both ends saw the connection from its first byte (not joined mid-stream).
    const joinable = !unknown && f.mid_stream !== true;
    const v6key = (ip: string): string => (v6 ? ipaddr.process(ip).toString() : ip);
    const tupleOf = (aIp: string, aPort: number, bIp: string, bPort: number): string => `${v6key(aIp)}|${aPort}|${v6key(bIp)}|${bPort}`;
    const other = joinable ? this.byTuple.get(tupleOf(remoteIp, remotePort, localIp, localPort)) : undefined;
    if (other) {
      this.byTuple.delete(other.tuple!);
      other.tuple = undefined;
      other.paired = true;
      other.label = `also captured at ${label}`;
      other.labelled = false;
      const end: End = { c: other, flip: true, name, open: true, prog: [0, 0], holes: [[], []] };
      other.captured.push(end);
      this.conns.set(key, end);
      return end;
    }
    const mine: Endpoint = { ip: ipBytes(localIp, v6), port: localPort, mac: Buffer.from([2, 0, 0, 0, 0, 1]) };
    const peer: Endpoint = { ip: ipBytes(remoteIp, v6), port: remotePort, mac: Buffer.from([2, 0, 0, 0, 0, 2]) };
    const c: Conn = {
      ends: [mine, peer],
      isn: [isnOf(mine, peer), isnOf(peer, mine)],
      v6,
      next: [0, 0],
      label: `${label}${unknown ? ' (socket unknown: addresses and ports made up)' : ''}`,
      labelled: false,
      seen: [[], []],
      pending: [[], []],
      captured: [],
      closeWhy: [],
      paired: false,
    };
    if (joinable) {
      c.tuple = tupleOf(localIp, localPort, remoteIp, remotePort);
      this.byTuple.set(c.tuple, c);
    }
    const end: End = { c, flip: false, name, open: true, prog: [0, 0], holes: [[], []] };
    c.captured.push(end);
    this.conns.set(key, end);
    const ts = f.ts_ns as bigint;
    if (f.mid_stream === true) {
      c.label += ' (joined mid-stream: no handshake, offsets count from the first byte seen)';
    } else {
      // The side that connected sends the SYN: the process if it is the client.
      const clientIsPeer = role === 'server';
      const [ci, si] = clientIsPeer ? [1, 0] : [0, 1];
      this.write(ts - 2000n, c, clientIsPeer, c.isn[ci]! - 1, 0, TCP.SYN, Buffer.alloc(0), 'synthetic handshake');
      this.write(ts - 1000n, c, !clientIsPeer, c.isn[si]! - 1, c.isn[ci]!, TCP.SYN | TCP.ACK, Buffer.alloc(0));
      this.write(ts, c, clientIsPeer, c.isn[ci]!, c.isn[si]!, TCP.ACK, Buffer.alloc(0));
    }
    return end;
  }

  private frame(f: RawFrame): void {
    if (typeof f.ts_ns === 'bigint' && f.ts_ns > this.lastNs) this.lastNs = f.ts_ns;
    for (const c of this.waiting) this.flush(c, false);
    if (f.type === 'conn_open') this.conn(f);
    else if (f.type === 'segment') {
      const e = this.conn(f);
      const { c } = e;
      const dir = ((f.dir as number) ^ (e.flip ? 1 : 0)) as 0 | 1;
      const seq = Number(f.seq as bigint);
      const data = f.data as Buffer;
      const reason = (f.lost_before as number) > 0 ? 'lost' : 'past the per-call or rate cap, or shed under load';
      if (seq > e.prog[dir]) e.holes[dir].push([e.prog[dir], seq, reason]);
      e.prog[dir] = Math.max(e.prog[dir], seq + data.length);
      const truncated = f.truncated === true ? `the rest of this ${f.len_total}-byte call was not captured (${f.shed ? 'shed under load, --shed-head' : f.rate_limited ? '--rate-cap' : '--call-cap'})` : undefined;
      const base = { ts: f.ts_ns as bigint, by: e, ack: Number(f.ack as bigint), reason };
      if (data.length === 0) {
        // Nothing to write but what it says (a gap, a cut call): only if no byte is past it yet.
        if (seq >= c.next[dir] && (seq > c.next[dir] || truncated) && uncovered(c.seen[dir], seq, seq + 1).length) c.pending[dir].push({ ...base, a: seq, b: seq, data, truncated });
      } else {
        // Only the bytes no end has given yet (all of them when one end is captured).
        for (const [a, b] of uncovered(c.seen[dir], seq, seq + data.length)) {
          addRange(c.seen[dir], a, b);
          c.pending[dir].push({ ...base, a, b, data: data.subarray(a - seq, b - seq), truncated: b === seq + data.length ? truncated : undefined });
        }
      }
      this.flush(c, false);
    } else if (f.type === 'conn_close') {
      const key = `${f.pid}:${f.conn_id}`;
      const e = this.conns.get(key);
      if (!e) return;
      this.conns.delete(key);
      const { c } = e;
      e.open = false;
      const ends = [Number(f.egress_end as bigint), Number(f.ingress_end as bigint)];
      if (e.flip) ends.reverse();
      for (const d of [0, 1] as const) {
        if (ends[d]! > e.prog[d]) e.holes[d].push([e.prog[d], ends[d]!, 'at the end']);
        e.prog[d] = Math.max(e.prog[d], ends[d]!);
      }
      c.closeWhy.push(c.paired ? `${e.name} closed (${f.reason})` : `closed (${f.reason})`);
      this.flush(c, false);
      if (c.captured.some((x) => x.open)) return; // the other end is still open
      if (c.tuple) this.byTuple.delete(c.tuple);
      // What the ends counted past the last byte written: from the first end's side (dir 0: sent by it).
      const endAt = [0, 1].map((d) => Math.max(...c.captured.map((x) => x.prog[d]!)));
      const missing = [0, 1].map((d) => endAt[d]! - c.next[d as 0 | 1]);
      c.next = [Math.max(c.next[0], endAt[0]!), Math.max(c.next[1], endAt[1]!)];
      const why = missing.some((m) => m > 0) ? `${c.closeWhy.join('; ')}; ${missing[0]} bytes sent and ${missing[1]} received at the end were not captured` : c.closeWhy.join('; ');
      this.fin(c, f.ts_ns as bigint, why);
    }
  }

  /**
   * Writes what is pending, in byte order per direction. Bytes after a gap wait while an end of
   * the connection that is still open has not yet reported that far: it may have the gap's
   * bytes, which then go first, so the stream stays in order (no retransmission, no
   * out-of-order). With one end captured nothing waits; nothing waits longer than HOLD_NS of
   * capture time or past HOLD_BYTES (a filler that comes later is then out of order, as tshark says).
   */
  private flush(c: Conn, force: boolean): void {
    for (const d of [0, 1] as const) {
      const q = c.pending[d];
      q.sort((x, y) => x.a - y.a);
      let held = q.reduce((n, p) => n + p.data.length, 0);
      while (q.length) {
        const p = q[0]!;
        const mayWait = !force && this.lastNs - p.ts < HOLD_NS && held < HOLD_BYTES;
        if (p.a > c.next[d] && mayWait && c.captured.some((x) => x.open && x.prog[d] < p.a)) break;
        held -= p.data.length;
        q.shift();
        this.writePending(c, d, p);
      }
    }
    if (c.pending[0].length || c.pending[1].length) this.waiting.add(c);
    else this.waiting.delete(c);
  }

  private writePending(c: Conn, d: 0 | 1, p: Pending): void {
    const notes: string[] = [];
    const others = c.captured.filter((x) => x !== p.by);
    if (p.a > c.next[d]) {
      const n = p.a - c.next[d];
      notes.push(c.paired ? `${n} bytes captured by neither ${p.by.name} nor ${others.map((x) => x.name).join(' nor ')} before this (${p.reason})` : `${n} bytes not captured before this (${p.reason})`);
    }
    // Bytes an end missed and this one has: said once, where they are written.
    for (const x of others) {
      let n = 0;
      const why = new Set<string>();
      for (const [s, e, r] of x.holes[d]) {
        const k = Math.min(e, p.b) - Math.max(s, p.a);
        if (k > 0) {
          n += k;
          why.add(r);
        }
      }
      if (n > 0) notes.push(`${n} bytes not captured by ${x.name} (${[...why].join(', ')}), taken from ${p.by.name}`);
    }
    if (p.truncated) notes.push(p.truncated);
    c.next[d] = Math.max(c.next[d], p.b);
    const o = d === 0 ? 1 : 0;
    // One end: its own ack (it may have seen bytes the other way that come later). Both ends:
    // what the file has the other way, so no packet acks bytes not (yet) in it.
    const ack = c.isn[o] + (c.paired ? c.next[o] : Math.max(p.ack, c.next[o]));
    for (let at = 0; at < p.data.length || at === 0; at += MAX_PAYLOAD) {
      if (p.data.length === 0 && notes.length === 0) break;
      this.write(p.ts, c, d === 1, c.isn[d] + p.a + at, ack, TCP.ACK | TCP.PSH, p.data.subarray(at, at + MAX_PAYLOAD), at === 0 ? notes.join('; ') : undefined);
      if (p.data.length === 0) break;
    }
  }

  private fin(c: Conn, ts: bigint, why: string): void {
    this.write(ts, c, false, c.isn[0] + c.next[0], c.isn[1] + c.next[1], TCP.FIN | TCP.ACK, Buffer.alloc(0), why);
    this.write(ts + 1000n, c, true, c.isn[1] + c.next[1], c.isn[0] + c.next[0] + 1, TCP.FIN | TCP.ACK, Buffer.alloc(0));
    this.write(ts + 2000n, c, false, c.isn[0] + c.next[0] + 1, c.isn[1] + c.next[1] + 1, TCP.ACK, Buffer.alloc(0));
  }
}
