// show.ts: renders captured calls for people: a header line (time, process, direction,
// function, length, connection) then the bytes, as text when they are text and as a hex
// dump when they are not. Pure code.
import { Call } from '../records/calls';
import { ConnRecord, SockInfo } from '../records/records';
import { hexDump, hostPort, isText, upTo } from '../http/bytes';

export interface ShowOptions {
  /** Most bytes of a call to print (0: all). */
  limit: number;
  /** Add to tsNs for Unix time in ns. */
  wallOffsetNs: bigint;
  color: boolean;
}

/** The terminal colors of every human output, and the same names for no color. */
export const COLORS = { dim: '\x1b[2m', bold: '\x1b[1m', green: '\x1b[32m', cyan: '\x1b[36m', yellow: '\x1b[33m', red: '\x1b[31m', reset: '\x1b[0m' };
export type Palette = typeof COLORS;
export const PLAIN: Palette = { dim: '', bold: '', green: '', cyan: '', yellow: '', red: '', reset: '' };

export function formatTime(ns: bigint): string {
  const ms = Number(ns / 1_000_000n);
  const d = new Date(ms);
  const pad = (n: number, w = 2): string => String(n).padStart(w, '0');
  const us = Number((ns / 1000n) % 1_000_000n);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(us, 6)}`;
}

/** Bytes for a person: as text (CRLF as LF, no final newline) when they read as text, else a hex dump. */
export function showBytes(b: Buffer): string {
  return isText(b) ? b.toString('utf8').replace(/\r\n/g, '\n').replace(/\n$/, '') : hexDump(b);
}

/** "client 127.0.0.1:50312 -> 127.0.0.1:443" (local side first), or "fd unknown". */
export function showSock(s: SockInfo): string {
  const where = s.family === 'unknown' ? (s.fd >= 0 ? `fd ${s.fd}, not an IP socket` : 'socket unknown') : `${hostPort(s.localIp, s.localPort)} -> ${hostPort(s.remoteIp, s.remotePort)}`;
  return `${s.role === 'unknown' ? '' : `${s.role} `}${where}`;
}

export function showConn(r: ConnRecord, o: ShowOptions): string {
  const c = o.color ? COLORS : PLAIN;
  const what =
    r.kind === 'open'
      ? `opened ${showSock(r.sock)}`
      : r.reason === 'exit'
        ? 'closed (process exit)'
        : `closed (${r.reason}) after ${r.egressBytes} bytes sent, ${r.ingressBytes} received`;
  return `${c.dim}${formatTime(r.tsNs + o.wallOffsetNs)}${c.reset} ${c.bold}${r.comm}${c.reset}[${r.pid}] ${c.yellow}conn ${r.connId} ${what}${c.reset}\n`;
}

export function showCall(call: Call, o: ShowOptions): string {
  const c = o.color ? COLORS : PLAIN;
  const arrow = call.dir === 'egress' ? `${c.green}>> sent${c.reset}` : `${c.cyan}<< received${c.reset}`;
  const head =
    `${c.dim}${formatTime(call.tsNs + o.wallOffsetNs)}${c.reset} ` +
    `${c.bold}${call.comm}${c.reset}[${call.pid}${call.tid !== call.pid ? `/${call.tid}` : ''}] ` +
    `${arrow} ${call.callLen} bytes ${c.dim}(conn ${call.connId} ${showSock(call.sock)}, offset ${call.seq}${call.func ? `, ${call.func}` : ''})${c.reset}`;
  const notes: string[] = [];
  if (call.truncatedBytes) notes.push(`${call.truncatedBytes} bytes ${call.shed ? 'shed under load' : call.rateLimited ? 'over the rate cap' : 'past the per-call cap'} not captured`);
  if (call.lostBytes) notes.push(`${call.lostBytes} bytes LOST (ring buffer full or memory unreadable)`);
  const shown = upTo(call.data, o.limit);
  if (shown.length < call.data.length) notes.push(`${call.data.length - shown.length} more bytes not shown (--print-limit)`);
  const body = showBytes(shown);
  const tail = notes.length ? `\n${c.yellow}[${notes.join('; ')}]${c.reset}` : '';
  return `${head}\n${body}${tail}\n`;
}
