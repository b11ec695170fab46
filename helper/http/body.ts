// body.ts: turns an HTTP body into what a person reads: content encodings undone (gzip,
// deflate, br, through node's zlib), JSON pretty-printed, text as text, and binary summarized
// with a hex preview. Pure code.
import * as zlib from 'zlib';
import { hexDump, isText, upTo } from './bytes';

/** Bodies are not inflated beyond this (a decompression bomb stays a note). */
export const MAX_DECODED_BYTES = 64 * 1024 * 1024;

/** Bytes in a JSON file (jsonl, HAR): UTF-8 when they read as text (show.ts isText), else base64. */
export function textOrBase64(b: Buffer): { encoding: 'utf8' | 'base64'; data: string } {
  return isText(b) ? { encoding: 'utf8', data: b.toString('utf8') } : { encoding: 'base64', data: b.toString('base64') };
}

export function headerValue(headers: [string, string][], name: string): string | undefined {
  const n = name.toLowerCase();
  return headers.find(([k]) => k.toLowerCase() === n)?.[1];
}

export function mimeType(headers: [string, string][]): string {
  return (headerValue(headers, 'content-type') ?? '').split(';')[0]!.trim().toLowerCase();
}

export interface DecodedBody {
  data: Buffer;
  /** The content codings undone, in the order they were undone. */
  decoded: string[];
  /** Why the body could not be decoded (then `data` is the body as it came). */
  error?: string;
}

/** Undoes Content-Encoding (gzip, x-gzip, deflate, br; identity). */
export function decodeBody(body: Buffer, headers: [string, string][]): DecodedBody {
  const codings = (headerValue(headers, 'content-encoding') ?? '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s && s !== 'identity');
  if (codings.length === 0 || body.length === 0) return { data: body, decoded: [] };
  let data = body;
  const done: string[] = [];
  const opts = { maxOutputLength: MAX_DECODED_BYTES };
  for (const c of codings.reverse()) {
    try {
      if (c === 'gzip' || c === 'x-gzip') data = zlib.gunzipSync(data, opts);
      else if (c === 'br') data = zlib.brotliDecompressSync(data, opts);
      else if (c === 'deflate') {
        // RFC 9110 says zlib-wrapped; some servers send raw deflate.
        try {
          data = zlib.inflateSync(data, opts);
        } catch {
          data = zlib.inflateRawSync(data, opts);
        }
      } else return { data: body, decoded: [], error: `content coding "${c}" is not one this tool decodes` };
      done.push(c);
    } catch (e) {
      return { data: body, decoded: [], error: `${c} body does not decode: ${(e as Error).message}` };
    }
  }
  return { data, decoded: done };
}

export function isJsonType(mime: string): boolean {
  return mime === 'application/json' || mime.endsWith('+json') || mime === 'text/json';
}

export interface ShownBody {
  kind: 'empty' | 'text' | 'json' | 'binary';
  /** What to print (for binary: the summary line and a hex preview). */
  text: string;
  /** Bytes of the (decoded) body left out by the limit. */
  omitted: number;
}

/**
 * A body for people: JSON pretty-printed (when it parses), text as text, else a line saying what
 * it is with a hex dump of its first bytes. `limit` bounds the bytes shown (0: all).
 */
export function showBody(data: Buffer, mime: string, limit: number, hexBytes = 64): ShownBody {
  if (data.length === 0) return { kind: 'empty', text: '', omitted: 0 };
  const cut = upTo(data, limit);
  // JSON by its type, or by its look (servers often send it as octet-stream or text/plain).
  if (isJsonType(mime) || /^\s*[[{]/.test(cut.toString('latin1', 0, 64))) {
    try {
      const pretty = JSON.stringify(JSON.parse(data.toString('utf8')), null, 2);
      const shown = limit > 0 && pretty.length > limit ? pretty.slice(0, limit) : pretty;
      return { kind: 'json', text: shown, omitted: limit > 0 && pretty.length > limit ? Buffer.byteLength(pretty.slice(limit)) : 0 };
    } catch {
      // not JSON after all (or cut): shown as text below
    }
  }
  if (isText(cut)) return { kind: 'text', text: cut.toString('utf8'), omitted: data.length - cut.length };
  const preview = data.subarray(0, Math.min(hexBytes, data.length));
  return {
    kind: 'binary',
    text: `[binary, ${data.length} bytes${mime ? `, ${mime}` : ''}]\n${hexDump(preview)}`,
    omitted: data.length - preview.length,
  };
}
