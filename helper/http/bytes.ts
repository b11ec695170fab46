// bytes.ts: small helpers over captured bytes shared by the HTTP model and every renderer:
// an address as host:port, a print limit, a text-or-binary test, a hex dump. Pure code.
import { StringDecoder } from 'string_decoder';

/** "127.0.0.1:443", "[::1]:443". */
export const hostPort = (ip: string, port: number): string => (ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`);

/** The first `limit` bytes of `b` (all of them when limit is 0): --print-limit. */
export function upTo(b: Buffer, limit: number): Buffer {
  return limit > 0 && b.length > limit ? b.subarray(0, limit) : b;
}

/**
 * True when the bytes read well as text: UTF-8 with no control characters but tab, CR, LF.
 * A character cut in two at the end (by a print limit or the capture cap) does not count.
 */
export function isText(b: Buffer): boolean {
  if (b.length === 0) return true;
  const s = new StringDecoder('utf8').write(b); // holds back an incomplete last character
  if (s.includes('\ufffd')) return false;
  // eslint-disable-next-line no-control-regex
  return !/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/.test(s);
}

/** `xxd`-style lines: offset, 16 bytes in hex, the printable ones as ASCII. */
export function hexDump(b: Buffer): string {
  const lines: string[] = [];
  for (let at = 0; at < b.length; at += 16) {
    const row = b.subarray(at, at + 16);
    const hex = [...row].map((x) => x.toString(16).padStart(2, '0')).join(' ');
    const ascii = [...row].map((x) => (x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : '.')).join('');
    lines.push(`${at.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${ascii}`);
  }
  return lines.join('\n');
}
