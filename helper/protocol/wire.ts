// wire.ts: the framing of the protocol (docs/protocol.md): a 4-byte big-endian length, then
// one msgpack map. FrameEncoder packs, FrameDecoder unpacks incrementally across chunks, and
// FrameWriter owns an output stream, keeps frames in order and bounds the memory it queues.
import { Packr, Unpackr } from 'msgpackr';
import { Writable } from 'stream';
import { SegmentFrame, WriterCounters } from './generated';
import { FrameSchemas, frameSchemas } from './schema';

/** Largest frame the helper writes: a segment of 16 KiB plus its fields, with room to spare. */
export const MAX_FRAME_BYTES = 64 * 1024;
/** Default bound on one frame read (control frames on stdin, frames from a recording). */
export const MAX_CONTROL_FRAME_BYTES = 1024 * 1024;
/** Most plaintext bytes in one segment. */
export const MAX_DATA_BYTES = 16384;
/** Default bound on the bytes the writer queues for a host that does not read. */
export const DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024;

export type FrameErrorCode = 'bad_frame_length' | 'bad_msgpack' | 'bad_frame' | 'truncated_frame';

/** A frame that could not be read or is not valid; the decoder has already skipped it. */
export class FrameError extends Error {
  override name = 'FrameError';
  constructor(
    readonly code: FrameErrorCode,
    message: string,
    readonly fix: string,
    /** The frame's `type`, when it could be read. */
    readonly frameType?: string,
  ) {
    super(message);
  }
}

/** A decoded frame: a map with a string type. Known types are checked against their schema. */
export interface RawFrame {
  type: string;
  [field: string]: unknown;
}

// Plain msgpack maps (no msgpackr records or extensions), so any msgpack library reads them.
// bigint goes out as int64 (0xd3) or uint64 (0xcf); 8-byte integers come back as bigint.
const packr = new Packr({ useRecords: false, variableMapSize: true });

export class FrameEncoder {
  /** The frame as it goes on the wire: length prefix and body. */
  encode(frame: object): Buffer {
    const body = packr.pack(plainValue(frame));
    const out = Buffer.allocUnsafe(4 + body.length);
    out.writeUInt32BE(body.length, 0);
    body.copy(out, 4);
    return out;
  }
}

/**
 * A frame as msgpackr should pack it: an absent optional field is left out (msgpackr would
 * write `undefined` as an extension), and an integer of 2^32 or more becomes a bigint, which
 * msgpackr writes as an 8-byte integer (it writes such a number as a float64, which is not an
 * integer to a host: counters pass 2^32 on a long capture). Nested maps too (stats, bye).
 */
function plainValue(v: unknown): unknown {
  if (typeof v === 'number') {
    // (Beyond 64 bits a number is only a float, and stays one.)
    const wide = v >= 0 ? v >= 2 ** 32 && v < 2 ** 64 : v < -(2 ** 31) && v >= -(2 ** 63);
    return wide && Number.isInteger(v) ? BigInt(v) : v;
  }
  if (v === null || typeof v !== 'object' || Buffer.isBuffer(v) || v instanceof Uint8Array) return v;
  if (Array.isArray(v)) return v.map(plainValue);
  const plain: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) if (x !== undefined) plain[k] = plainValue(x);
  return plain;
}

export interface DecoderOptions {
  /** Longest frame body accepted; a longer length prefix is a FrameError (default 1 MiB). */
  maxFrameBytes?: number;
  /** Check known frame types against the schemas (default true). */
  validate?: boolean;
  schemas?: FrameSchemas;
}

/**
 * Incremental frame reader. push() takes chunks as they come (any boundaries) and returns,
 * in order, the frames they complete and the errors met. State (a partial prefix or body)
 * is kept across chunks.
 *
 * Recovery rules (docs/protocol.md, "Bad frames"):
 * - bad msgpack, a body that is not a map with a string type, or a known type that fails its
 *   schema: the frame's bytes are skipped; framing is intact, the next frame reads normally;
 * - a length prefix above maxFrameBytes: an error, then the announced number of bytes is
 *   discarded as it arrives (never buffered) and reading resumes after them, which keeps the
 *   stream in step when a peer sent one frame too large;
 * - a frame cut short: `abandonPartial()` (called at end of input, or by a caller's timer)
 *   reports it and drops the partial bytes, so reading resumes with the next bytes.
 */
export class FrameDecoder {
  private readonly max: number;
  private readonly validate: boolean;
  private readonly schemas: FrameSchemas;
  private readonly unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'bigint' });
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Bytes still to discard of an oversized frame. */
  private skipping = 0;
  /** Bytes consumed since the start of the stream (for error messages). */
  private offset = 0;

  constructor(opts: DecoderOptions = {}) {
    this.max = opts.maxFrameBytes ?? MAX_CONTROL_FRAME_BYTES;
    this.validate = opts.validate ?? true;
    this.schemas = opts.schemas ?? frameSchemas();
  }

  /** Bytes of an incomplete frame held now. */
  get pending(): number {
    return this.buffered + this.skipping;
  }

  push(chunk: Buffer): (RawFrame | FrameError)[] {
    const out: (RawFrame | FrameError)[] = [];
    let at = 0;
    if (this.skipping > 0) {
      const n = Math.min(this.skipping, chunk.length);
      this.skipping -= n;
      this.offset += n;
      at = n;
    }
    if (at < chunk.length) {
      this.chunks.push(at === 0 ? chunk : chunk.subarray(at));
      this.buffered += chunk.length - at;
    }
    while (this.buffered >= 4) {
      const head = this.peek(4);
      const len = head.readUInt32BE(0);
      if (len > this.max) {
        out.push(
          new FrameError(
            'bad_frame_length',
            `a frame at byte ${this.offset} announces ${len} bytes, more than the ${this.max} allowed`,
            `send frames of at most ${this.max} bytes: 4-byte big-endian length of the msgpack body, then the body; the ${len} bytes announced are skipped`,
          ),
        );
        this.take(4);
        const n = Math.min(len, this.buffered);
        this.take(n);
        this.skipping = len - n;
        continue;
      }
      if (this.buffered < 4 + len) break;
      this.take(4);
      const body = this.take(len);
      out.push(this.decodeBody(body, this.offset - len - 4));
    }
    return out;
  }

  /** Reports and drops an incomplete frame (end of input, or no progress for too long). */
  abandonPartial(): FrameError | undefined {
    if (this.buffered === 0 && this.skipping === 0) return undefined;
    const had = this.buffered;
    const want = had >= 4 ? this.peek(4).readUInt32BE(0) + 4 : 4;
    const wasSkipping = this.skipping > 0;
    this.offset += had;
    this.chunks = [];
    this.buffered = 0;
    this.skipping = 0;
    if (wasSkipping) return undefined; // already reported as bad_frame_length
    return new FrameError(
      'truncated_frame',
      `a frame was cut short: ${had} of its ${want} bytes arrived`,
      'write each frame whole (length prefix and body) without pausing inside it; the partial bytes were dropped',
    );
  }

  private decodeBody(body: Buffer, at: number): RawFrame | FrameError {
    let value: unknown;
    try {
      value = this.unpackr.unpack(body);
    } catch (e) {
      return new FrameError(
        'bad_msgpack',
        `the frame at byte ${at} (${body.length} bytes) is not one msgpack value: ${(e as Error).message}`,
        'encode each frame body as exactly one msgpack map; the length prefix must count only the body',
      );
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value) || value instanceof Uint8Array || value instanceof Date) {
      return new FrameError('bad_frame', `the frame at byte ${at} is a msgpack ${Array.isArray(value) ? 'array' : typeof value}, not a map`, 'send a msgpack map with a string field "type"');
    }
    const frame = value as Record<string, unknown>;
    this.schemas.normalize(frame);
    const t = typeof frame.type === 'string' ? frame.type : undefined;
    if (this.validate || t === undefined) {
      const v = this.schemas.check(frame);
      if (v) return new FrameError('bad_frame', `invalid ${t ?? ''} frame at byte ${at}: ${v.message}`.replace('  ', ' '), 'see schemas/ and docs/protocol.md for the fields of each frame type; the frame was ignored', t);
    }
    return frame as RawFrame;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!.subarray(0, n);
  }

  private take(n: number): Buffer {
    this.offset += n;
    this.buffered -= n;
    if (n === 0) return Buffer.alloc(0);
    let first = this.chunks[0]!;
    if (first.length < n) {
      first = Buffer.concat(this.chunks);
      this.chunks = [first];
    }
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    return out;
  }
}


export interface WriterOptions {
  /** Most bytes handed to the stream and not yet flushed; segments beyond it are dropped. */
  maxQueueBytes?: number;
  /** Validate every frame against the schemas before writing it (tests, --validate). */
  validate?: boolean;
  /** Also write every frame here (--record). Never dropped: the recording is the stream as sent. */
  tee?: (bytes: Buffer) => void;
  schemas?: FrameSchemas;
}

/**
 * The only writer of a frame stream. Frames go out in the order they are written, collected in
 * one output buffer and handed to the stream in one write: at once for a single write(), at the
 * end of a batch() for everything written inside it (a ring-buffer batch: one pipe write for
 * thousands of segments). What the stream has not flushed yet is counted; when that reaches
 * maxQueueBytes, segment and stats frames are dropped (segments with eos never are), the loss
 * is counted, and the next segment of the same connection and direction carries it in
 * lost_before. Other frames (hello, conn_*, process, loss, error, bye) are always queued: they
 * are small and few.
 */
export class FrameWriter {
  readonly maxQueueBytes: number;
  private readonly encoder = new FrameEncoder();
  private readonly validate: boolean;
  private readonly schemas: FrameSchemas;
  private readonly tee?: (bytes: Buffer) => void;
  /** Bytes handed to the stream and not yet flushed by it. */
  private queued = 0;
  private readonly counters = { frames_written: 0, bytes_written: 0, dropped_segments: 0, dropped_bytes: 0 };
  /** Bytes dropped per connection and direction (conn_id * 2 + dir), not yet reported in a segment's lost_before. */
  private readonly lostBefore = new Map<number, number>();
  private broken?: Error;
  private idle: (() => void)[] = [];
  /** Frames not yet handed to the stream: out[0, pos). */
  private out: Buffer = Buffer.allocUnsafeSlow(OUT_BYTES);
  private outView = new DataView(this.out.buffer, this.out.byteOffset, this.out.length);
  private pos = 0;
  /** Output buffers the stream is done with, for reuse (not with a tee, which may hold them). */
  private readonly spare: Buffer[] = [];
  private batching = 0;
  private readonly checker?: Unpackr;

  constructor(
    private readonly stream: Writable,
    opts: WriterOptions = {},
  ) {
    this.maxQueueBytes = opts.maxQueueBytes ?? DEFAULT_MAX_QUEUE_BYTES;
    this.validate = opts.validate ?? false;
    this.schemas = opts.schemas ?? frameSchemas();
    if (opts.tee) this.tee = opts.tee;
    if (this.validate) this.checker = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'bigint' });
    stream.on('error', (e: Error) => {
      this.broken ??= e;
      this.wake();
    });
  }

  /** The host went away (EPIPE) or the stream failed. */
  get error(): Error | undefined {
    return this.broken;
  }

  get queuedBytes(): number {
    return this.queued + this.pos;
  }

  private get full(): boolean {
    return this.queued + this.pos >= this.maxQueueBytes;
  }

  /** Writes a frame, or drops it (segments, stats) when the queue is full; true if written. */
  write(frame: RawFrame | { type: string }): boolean {
    if (this.broken) return false;
    const f = frame as RawFrame;
    if (f.type === 'segment' && f.eos !== true) {
      const s = f as unknown as SegmentFrame;
      const lost = this.admitSegment(Number(s.conn_id) * 2 + s.dir, s.data.length, s.lost_before);
      if (lost < 0) return false;
      s.lost_before = lost;
    } else if (f.type === 'stats' && this.full) return false;
    if (this.validate) {
      const v = this.schemas.check(f);
      if (v) throw new Error(`the helper built an invalid ${f.type} frame: ${v.message} (a bug: report it with this message)`);
    }
    const bytes = this.encoder.encode(f);
    if (bytes.length - 4 > MAX_FRAME_BYTES) throw new Error(`the helper built a ${bytes.length}-byte ${f.type} frame, above its limit of ${MAX_FRAME_BYTES} (a bug)`);
    bytes.copy(this.reserve(bytes.length), this.pos);
    this.pos += bytes.length;
    this.count(bytes.length);
    if (this.batching === 0) this.flush();
    return true;
  }

  /**
   * Whether a segment of `dataBytes` bytes, with `lostBefore` bytes missing before it, may be
   * queued now: the lost_before it must carry (what was dropped before it included), or -1 if
   * it is dropped, which is counted and owed to the next segment of `key` (conn_id * 2 + dir).
   */
  admitSegment(key: number, dataBytes: number, lostBefore: number): number {
    if (this.broken) return -1;
    const owed = this.lostBefore.get(key) ?? 0;
    if (this.full) {
      this.counters.dropped_segments++;
      this.counters.dropped_bytes += dataBytes;
      this.lostBefore.set(key, owed + lostBefore + dataBytes);
      return -1;
    }
    if (owed) this.lostBefore.delete(key);
    return lostBefore + owed;
  }

  /** The output buffer, with room for `n` more bytes at `position`. */
  reserve(n: number): Buffer {
    if (this.pos + n > this.out.length) {
      this.flush(); // what is there goes out now, in order (inside a batch too)
      if (n > this.out.length) this.setOut(Buffer.allocUnsafeSlow(Math.max(n, OUT_BYTES)));
    }
    return this.out;
  }

  /** A DataView of the buffer reserve() returned. */
  get view(): DataView {
    return this.outView;
  }

  private setOut(b: Buffer): void {
    this.out = b;
    this.outView = new DataView(b.buffer, b.byteOffset, b.length);
  }

  /** Where the next frame goes in the buffer reserve() returned. */
  get position(): number {
    return this.pos;
  }

  /** One frame was encoded into the buffer, ending at `end`. */
  commit(end: number): void {
    const n = end - this.pos;
    if (this.checker) this.check(this.out.subarray(this.pos, end));
    this.pos = end;
    this.count(n);
  }

  /** Runs `fn`, then hands every frame it wrote to the stream in one write. */
  batch<T>(fn: () => T): T {
    this.batching++;
    try {
      return fn();
    } finally {
      if (--this.batching === 0) this.flush();
    }
  }

  /** Bytes owed to segments not yet written (dropped, reported in the next lost_before). */
  owed(): number {
    let n = 0;
    for (const v of this.lostBefore.values()) n += v;
    return n;
  }

  snapshot(): WriterCounters {
    return { ...this.counters, queued_bytes: this.queuedBytes, max_queue_bytes: this.maxQueueBytes };
  }

  /** Resolves when everything written so far has been flushed (or the stream failed). */
  flushed(timeoutMs = 5000): Promise<boolean> {
    this.flush();
    if (this.queued === 0 || this.broken) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.idle.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  private count(n: number): void {
    this.counters.frames_written++;
    this.counters.bytes_written += n;
  }

  /** A frame of the binary path, decoded and checked against its schema (--validate, tests). */
  private check(bytes: Buffer): void {
    const frame = this.checker!.unpack(bytes.subarray(4)) as RawFrame;
    this.schemas.normalize(frame);
    const v = this.schemas.check(frame);
    if (v || bytes.readUInt32BE(0) !== bytes.length - 4) throw new Error(`the helper built an invalid ${frame.type} frame: ${v?.message ?? 'length prefix'} (a bug: report it with this message)`);
  }

  private flush(): void {
    if (this.pos > 0) this.handOff();
  }

  private handOff(): void {
    const used = this.out.subarray(0, this.pos);
    this.pos = 0;
    if (this.broken) return;
    // Behind a host that is not keeping up, a small batch is copied out and the buffer kept:
    // queued as it is, the whole buffer would wait with it (measured: a 64 MiB queue of small
    // batches held 230 MiB). Otherwise the batch goes as it is, and its buffer serves again once
    // written (not with a tee, which may hold on to it): a copy per batch cost the helper 0.29
    // instead of 0.21 CPU s per 100 MB (its external memory drives V8's full collections).
    let bytes: Buffer;
    let reuse: Buffer | undefined;
    if (this.queued > 0 && used.length < this.out.length / 2) bytes = Buffer.from(used);
    else {
      bytes = used;
      reuse = this.tee || this.out.length !== OUT_BYTES ? undefined : this.out;
      this.setOut(this.spare.pop() ?? Buffer.allocUnsafeSlow(OUT_BYTES));
    }
    this.tee?.(bytes);
    this.queued += bytes.length;
    this.stream.write(bytes, () => {
      this.queued -= bytes.length;
      if (reuse && this.spare.length < 4) this.spare.push(reuse);
      if (this.queued === 0) this.wake();
    });
  }

  private wake(): void {
    const waiting = this.idle;
    this.idle = [];
    for (const w of waiting) w();
  }
}

/** Size of the writer's output buffers: room for a ring-buffer batch of segments. */
const OUT_BYTES = 1 << 20;
