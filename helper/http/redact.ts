// redact.ts: hides secrets in the human outputs (text, jsonl, har, pcapng): the values of
// Authorization, Proxy-Authorization, Cookie and Set-Cookie. Two forms: a readable one for
// decoded headers ("Bearer [redacted, 32 bytes]"), and a same-length one ('*' for every secret
// byte) for outputs that keep the bytes' positions (pcapng, raw), so offsets and HPACK stay
// consistent. The auth scheme, cookie names and Set-Cookie attributes stay visible. Pure code.

export const SENSITIVE_HEADERS = ['authorization', 'proxy-authorization', 'cookie', 'set-cookie'] as const;

export function isSensitive(name: string): boolean {
  return (SENSITIVE_HEADERS as readonly string[]).includes(name.toLowerCase());
}

/** [start, end) ranges of the secret parts of a header value (its characters). */
function secretRanges(name: string, value: string): [number, number][] {
  const n = name.toLowerCase();
  if (n === 'authorization' || n === 'proxy-authorization') {
    // "<scheme> <credentials>": the scheme is not secret.
    const m = /^([A-Za-z][A-Za-z0-9._~+-]*)( +)(?=\S)/.exec(value);
    return [[m ? m[0].length : 0, value.length]];
  }
  const out: [number, number][] = [];
  // Cookie: "a=1; b=2" (every pair); Set-Cookie: "a=1; Path=/; HttpOnly" (the first pair only).
  let at = 0;
  for (const part of value.split(';')) {
    const eq = part.indexOf('=');
    const start = at + (eq >= 0 ? eq + 1 : 0);
    const end = at + part.length;
    if (eq >= 0 || n === 'cookie') {
      let s = start;
      while (s < end && value[s] === ' ') s++;
      if (s < end) out.push([s, end]);
    }
    at += part.length + 1;
    if (n === 'set-cookie') break;
  }
  return out;
}

/** The value for people: secret parts replaced by "[redacted, N bytes]". */
export function redactValue(name: string, value: string): string {
  if (!isSensitive(name)) return value;
  let out = '';
  let at = 0;
  for (const [s, e] of secretRanges(name, value)) {
    out += value.slice(at, s) + `[redacted, ${Buffer.byteLength(value.slice(s, e), 'latin1')} bytes]`;
    at = e;
  }
  return out + value.slice(at);
}

/** The value with each secret character replaced by '*': same length, same positions. */
export function maskValue(name: string, value: string): string {
  if (!isSensitive(name)) return value;
  const chars = [...value];
  for (const [s, e] of secretRanges(name, value)) for (let i = s; i < e; i++) chars[i] = '*';
  return chars.join('');
}

/** Headers for people, redacted unless `redact` is false. */
export function redactHeaders(headers: [string, string][], redact: boolean): [string, string][] {
  return redact ? headers.map(([k, v]) => [k, redactValue(k, v)]) : headers;
}

/** Bytes to put at a stream offset in place of the captured ones (same length). */
export interface Mask {
  dir: 0 | 1;
  start: number;
  bytes: Buffer;
}

/**
 * Masks of the sensitive header values in an HTTP/1 head (request or status line, header lines,
 * blank line) that starts at stream offset `base`. The head was already parsed by http-parser-js;
 * this only finds where each value lies in it.
 */
export function headMasks(head: Buffer, base: number, dir: 0 | 1): Mask[] {
  const out: Mask[] = [];
  let at = head.indexOf(0x0a) + 1; // past the first line
  while (at > 0 && at < head.length) {
    let end = head.indexOf(0x0a, at);
    if (end < 0) end = head.length;
    const line = head.toString('latin1', at, end).replace(/\r$/, '');
    const colon = line.indexOf(':');
    if (colon > 0 && isSensitive(line.slice(0, colon).trim())) {
      let vs = colon + 1;
      while (line[vs] === ' ' || line[vs] === '\t') vs++;
      const value = line.slice(vs).replace(/[ \t]+$/, '');
      const masked = maskValue(line.slice(0, colon).trim(), value);
      if (masked !== value) out.push({ dir, start: base + at + vs, bytes: Buffer.from(masked, 'latin1') });
    }
    at = end + 1;
  }
  return out;
}
