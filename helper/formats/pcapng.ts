// pcapng.ts: `--format pcapng`: the plaintext as synthesized Ethernet/IPv4|IPv6/TCP packets
// that Wireshark and tshark open: each connection with its real 4-tuple, a synthetic
// three-way handshake (none for a connection joined mid-stream), one packet per segment with
// the TCP sequence number taken from the byte offset (so a gap stays a gap: "previous segment
// not captured"), the ack from the bytes seen the other way, and FINs at the close. The
// process (comm, pid, role, conn id) is in the first packet's comment, gaps in the comment of
// the packet after them, and the direction in epb_flags.
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

interface Conn {
  /** [0]: the process's side (egress source), [1]: its peer. */
  ends: [Endpoint, Endpoint];
  isn: [number, number];
  v6: boolean;
  next: [number, number];
  label: string;
  labelled: boolean;
}

export class PcapngRenderer implements Renderer {
  private readonly masked: MaskedFrames;
  private readonly conns = new Map<string, Conn>();
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
    for (const c of this.conns.values()) this.fin(c, this.lastNs, 'the capture ended');
    this.conns.clear();
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

  private conn(f: RawFrame): Conn {
    const key = `${f.pid}:${f.conn_id}`;
    let c = this.conns.get(key);
    if (c) return c;
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
    const mine: Endpoint = { ip: ipBytes(localIp, v6), port: localPort, mac: Buffer.from([2, 0, 0, 0, 0, 1]) };
    const peer: Endpoint = { ip: ipBytes(remoteIp, v6), port: remotePort, mac: Buffer.from([2, 0, 0, 0, 0, 2]) };
    c = {
      ends: [mine, peer],
      isn: [isnOf(mine, peer), isnOf(peer, mine)],
      v6,
      next: [0, 0],
      label: `${f.comm}[${f.pid}] ${role} conn ${f.conn_id}${unknown ? ' (socket unknown: addresses and ports made up)' : ''}`,
      labelled: false,
    };
    this.conns.set(key, c);
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
    return c;
  }

  private frame(f: RawFrame): void {
    if (typeof f.ts_ns === 'bigint' && f.ts_ns > this.lastNs) this.lastNs = f.ts_ns;
    if (f.type === 'conn_open') this.conn(f);
    else if (f.type === 'segment') {
      const c = this.conn(f);
      const dir = f.dir as 0 | 1;
      const seq = Number(f.seq as bigint);
      const data = f.data as Buffer;
      const other = dir === 0 ? 1 : 0;
      const notes: string[] = [];
      if (seq > c.next[dir]) notes.push(`${seq - c.next[dir]} bytes not captured before this (${(f.lost_before as number) > 0 ? 'lost' : 'past the per-call or rate cap'})`);
      if (f.truncated === true) notes.push(`the rest of this ${f.len_total}-byte call was not captured (${f.shed ? 'shed under load, --shed-head' : f.rate_limited ? '--rate-cap' : '--call-cap'})`);
      c.next[dir] = Math.max(c.next[dir], seq + data.length);
      const ack = c.isn[other] + Math.max(Number(f.ack as bigint), c.next[other]);
      for (let at = 0; at < data.length || (at === 0 && data.length === 0 && notes.length); at += MAX_PAYLOAD) {
        this.write(f.ts_ns as bigint, c, dir === 1, c.isn[dir] + seq + at, ack, TCP.ACK | TCP.PSH, data.subarray(at, at + MAX_PAYLOAD), at === 0 ? notes.join('; ') : undefined);
        if (data.length === 0) break;
      }
    } else if (f.type === 'conn_close') {
      const key = `${f.pid}:${f.conn_id}`;
      const c = this.conns.get(key);
      if (!c) return;
      this.conns.delete(key);
      const ends = [Number(f.egress_end as bigint), Number(f.ingress_end as bigint)];
      const missing = [0, 1].map((d) => ends[d]! - c.next[d as 0 | 1]);
      c.next = [Math.max(c.next[0], ends[0]!), Math.max(c.next[1], ends[1]!)];
      const why = missing.some((m) => m > 0) ? `closed (${f.reason}); ${missing[0]} bytes sent and ${missing[1]} received at the end were not captured` : `closed (${f.reason})`;
      this.fin(c, f.ts_ns as bigint, why);
    }
  }

  private fin(c: Conn, ts: bigint, why: string): void {
    this.write(ts, c, false, c.isn[0] + c.next[0], c.isn[1] + c.next[1], TCP.FIN | TCP.ACK, Buffer.alloc(0), why);
    this.write(ts + 1000n, c, true, c.isn[1] + c.next[1], c.isn[0] + c.next[0] + 1, TCP.FIN | TCP.ACK, Buffer.alloc(0));
    this.write(ts + 2000n, c, false, c.isn[0] + c.next[0] + 1, c.isn[1] + c.next[1] + 1, TCP.ACK, Buffer.alloc(0));
  }
}
