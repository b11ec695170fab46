// messages.ts: the types shared by the HTTP parsers (http1.ts, http2.ts), the exchange builder
// (exchanges.ts) and the outputs (formats/): one HTTP message, one exchange, and what a parser
// reports to the connection that feeds it. Types only.
import { Mask } from './redact';

export type Dir = 0 | 1;

export interface HttpMessage {
  /** Stream offsets of the message's first byte and just past its last (HTTP/1: head and body). */
  startSeq: number;
  endSeq: number;
  /** Unix ns of the first and the last segment that carried it. */
  firstNs: bigint;
  lastNs: bigint;
  /** Regular headers in order (HTTP/2: without pseudo-headers), exactly as captured. */
  headers: [string, string][];
  trailers: [string, string][];
  /** The body without transfer framing (chunked, DATA frames); content codings still applied. */
  body: Buffer;
  /** Bytes of the body that were not captured (a gap inside it); the body holds the rest. */
  bodyMissing: number;
  /** Bytes of the head on the wire (HTTP/1), -1 when not meaningful (HTTP/2, HPACK). */
  headBytes: number;
  /** False when the message was cut short (the connection or the capture ended, bytes lost). */
  complete: boolean;
  /** HTTP/1: the version on the request or status line ("HTTP/1.0", "HTTP/1.1"). */
  version?: HttpProtocol;
  /** HTTP/1 only: the message's captured bytes exactly as they crossed the TLS calls. */
  raw?: Buffer;
  /** Why it is incomplete, gaps inside it, and the like: for people. */
  notes: string[];
}

export interface HttpRequestMessage extends HttpMessage {
  method: string;
  /** HTTP/1: the request-target as sent; HTTP/2: :path. */
  target: string;
  /** HTTP/2 :authority / :scheme (HTTP/1: from Host). */
  authority?: string;
  scheme?: string;
}

export interface InterimResponse {
  status: number;
  headers: [string, string][];
  tsNs: bigint;
}

export interface HttpResponseMessage extends HttpMessage {
  status: number;
  statusText: string;
  /** 1xx responses that came before this one (100 Continue, 103 Early Hints). */
  interim: InterimResponse[];
}

export type HttpProtocol = 'HTTP/1.0' | 'HTTP/1.1' | 'HTTP/2';

/** One request and its response as a parser pairs them; either may be absent (never invented). */
export interface ParsedExchange {
  protocol: HttpProtocol;
  /** HTTP/2 stream id. */
  streamId?: number;
  request?: HttpRequestMessage;
  response?: HttpResponseMessage;
  notes: string[];
  /** The connection switched to another protocol after this exchange (101, CONNECT). */
  switchedTo?: string;
  /** HTTP/2 stream reset by either side: the RST_STREAM error code's name. */
  reset?: string;
}

/** What a protocol parser reports to the connection that feeds it. */
export interface ParserSink {
  exchange(e: ParsedExchange): void;
  /** Bytes no message could take (not HTTP, before a resync, after a switch): shown as calls. */
  unparsed(dir: Dir, seq: number, data: Buffer, tsNs: bigint, why: string): void;
  /** Bytes to mask in the outputs that keep positions (pcapng, raw). */
  mask(m: Mask): void;
  /** Something a person should know about the connection (a gap, a resync, a parse error). */
  note(tsNs: bigint, text: string): void;
}

/** A protocol parser of one connection: bytes in stream order per direction, gaps explicit. */
export interface ConnParser {
  push(dir: Dir, seq: number, data: Buffer, tsNs: bigint): void;
  /** `bytes` bytes at `at` will never come (`why`: lost or past the cap). */
  gap(dir: Dir, at: number, bytes: number, why: string, tsNs: bigint): void;
  /** The connection ended (`why`: its close reason); whatever is in progress is handed out. */
  end(why: string, tsNs: bigint): void;
  /** Offset up to which the bytes of `dir` will get no more masks. */
  settled(dir: Dir): number;
}
