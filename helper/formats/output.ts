// output.ts: what every output format shares: the sink it writes to, the options people set,
// and the stage that masks secrets in the bytes of segments for the formats that keep bytes
// (pcapng, raw), in stream order per connection. Pure code (the sink is given).
import { Session } from '../http/exchanges';
import { Dir } from '../http/messages';
import { Mask } from '../http/redact';
import { RawFrame } from '../protocol/wire';

export const FORMATS = ['text', 'jsonl', 'har', 'pcapng', 'raw'] as const;
export type Format = (typeof FORMATS)[number];

/** Where a format writes. Binary formats write Buffers. */
export interface Sink {
  write(chunk: string | Buffer): void;
}

export interface RenderOptions {
  /** Mask Authorization, Proxy-Authorization, Cookie and Set-Cookie values (default true). */
  redact: boolean;
  /** ANSI colors (text and raw, on a terminal only). */
  color: boolean;
  /** Most bytes of a body or a call shown (0: all). */
  printLimit: number;
  /** The helper's version, for file headers (HAR creator, pcapng application). */
  version: string;
}

/** A format: takes every frame in order; end() writes what is left (HAR: the whole file). */
export interface Renderer {
  push(f: RawFrame): void;
  end(): void;
}

/**
 * Passes frames on with the secrets in segment data masked (same length, so offsets hold).
 * A segment waits until the parsers say no more masks can fall in it (a header block still
 * incomplete); segments of one connection keep their order, and conn_close follows them.
 */
export class MaskedFrames {
  private readonly session: Session;
  private readonly queues = new Map<string, RawFrame[]>();
  private readonly masks = new Map<string, Mask[]>();

  constructor(
    private readonly redact: boolean,
    private readonly out: (f: RawFrame) => void,
  ) {
    this.session = new Session(() => undefined, { onMask: (conn, m) => this.addMask(conn.key, m) });
  }

  private addMask(key: string, m: Mask): void {
    let list = this.masks.get(key);
    if (!list) this.masks.set(key, (list = []));
    list.push(m);
  }

  push(f: RawFrame): void {
    if (!this.redact) {
      this.out(f);
      return;
    }
    this.session.push(f);
    const key = `${f.pid}:${f.conn_id}`;
    if (f.type === 'segment') {
      let q = this.queues.get(key);
      if (!q) this.queues.set(key, (q = []));
      q.push(f);
      this.drain(key, false);
    } else if (f.type === 'conn_close') {
      this.drain(key, true);
      this.queues.delete(key);
      this.masks.delete(key);
      this.out(f);
    } else this.out(f);
  }

  end(): void {
    if (!this.redact) return;
    this.session.end();
    for (const key of [...this.queues.keys()]) this.drain(key, true);
    this.queues.clear();
  }

  private drain(key: string, force: boolean): void {
    const q = this.queues.get(key);
    if (!q) return;
    while (q.length) {
      const s = q[0]!;
      const dir = s.dir as Dir;
      const seq = Number(s.seq as bigint);
      const data = s.data as Buffer;
      if (!force && seq + data.length > this.session.settled(key, dir)) break;
      q.shift();
      this.out(this.apply(key, s, dir, seq, data));
    }
  }

  private apply(key: string, s: RawFrame, dir: Dir, seq: number, data: Buffer): RawFrame {
    const list = this.masks.get(key);
    if (!list?.length) return s;
    let copy: Buffer | undefined;
    const end = seq + data.length;
    for (const m of list) {
      if (m.dir !== dir || m.start >= end || m.start + m.bytes.length <= seq) continue;
      copy ??= Buffer.from(data);
      const from = Math.max(m.start, seq);
      const to = Math.min(m.start + m.bytes.length, end);
      m.bytes.copy(copy, from - seq, from - m.start, to - m.start);
    }
    // Masks wholly before this segment's end in its direction are done with.
    this.masks.set(key, list.filter((m) => m.dir !== dir || m.start + m.bytes.length > end));
    return copy ? { ...s, data: copy } : s;
  }
}
