// replay.ts: reads a frame recording (--record FILE) back as frames, and renders it for people:
// `https-capture replay FILE` prints it in any output format (helper/formats/), or the frames
// as JSON lines.
import { createHash } from 'crypto';
import * as fs from 'fs';
import { Exchange, ExchangeAssembler } from '../host/host';
import { UserError } from '../errors';
import { PREFACE } from '../http/http2';
import { createRenderer, Format, RenderOptions, Sink } from '../formats';
import { FrameDecoder, FrameError, MAX_CONTROL_FRAME_BYTES, RawFrame } from '../protocol/wire';

/** Yields the frames of a recording in order; a damaged recording throws, naming the byte. */
export async function* replayFrames(file: string, opts: { validate?: boolean } = {}): AsyncGenerator<RawFrame> {
  const decoder = new FrameDecoder({ maxFrameBytes: MAX_CONTROL_FRAME_BYTES, validate: opts.validate ?? true });
  const stream = fs.createReadStream(file, { highWaterMark: 256 * 1024 });
  const fail = (e: FrameError): Error =>
    new UserError(`${file} is not a whole frame recording: ${e.message} (the frames before it were read)`, 'record it again with https-capture --ipc --record FILE');
  try {
    fs.accessSync(file, fs.constants.R_OK);
  } catch (e) {
    throw new UserError(`cannot read the recording ${file}: ${(e as NodeJS.ErrnoException).code ?? e}`, 'check the path and its permissions (recordings are written with mode 0600)');
  }
  for await (const chunk of stream) {
    for (const x of decoder.push(chunk as Buffer)) {
      if (x instanceof FrameError) throw fail(x);
      yield x;
    }
  }
  const cut = decoder.abandonPartial();
  if (cut) throw fail(cut);
}

/** The HTTP exchanges of a recording, in the order they completed. */
export async function replayExchanges(file: string): Promise<Exchange[]> {
  const out: Exchange[] = [];
  const asm = new ExchangeAssembler((e) => out.push(e));
  for await (const f of replayFrames(file)) asm.push(f);
  asm.finish();
  return out;
}

/** JSON for a frame: bigints as decimal strings, bytes as UTF-8 when they are text, else base64. */
export function frameToJson(f: RawFrame): string {
  return JSON.stringify(f, (_k, v: unknown) => {
    if (typeof v === 'bigint') return v.toString();
    if (v && typeof v === 'object' && (v as { type?: unknown }).type === 'Buffer' && Array.isArray((v as { data?: unknown }).data)) {
      const b = Buffer.from((v as { data: number[] }).data);
      return b.toString('utf8').includes('\ufffd') ? { base64: b.toString('base64') } : b.toString('utf8');
    }
    return v;
  });
}

/**
 * An exchange in the form the fixtures keep beside each recording (expected.json): digests, not
 * bodies. HTTP/2 ones also say so, with their stream, authority and trailers (HTTP/1 has raw).
 */
export function exchangeSummary(e: Exchange): Record<string, unknown> {
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
  const msg = (m: Exchange['request'] | Exchange['response']): Record<string, unknown> => ({
    headers: m.headers,
    ...(m.trailers.length ? { trailers: m.trailers } : {}),
    body_length: m.body.length,
    body_sha256: sha(m.body),
    ...(m.raw ? { raw_length: m.raw.length, raw_sha256: sha(m.raw) } : {}),
  });
  return {
    pid: e.pid,
    comm: e.comm,
    role: e.role,
    ...(e.protocol === 'HTTP/2' ? { protocol: e.protocol, stream_id: e.streamId } : {}),
    request: { method: e.request.method, url: e.request.url, ...(e.protocol === 'HTTP/2' ? { authority: e.request.authority } : {}), ...msg(e.request) },
    response: { status: e.response.statusCode, ...msg(e.response) },
  };
}

/**
 * Each connection of a recording at the level of frames, for protocols the host does not parse
 * (HTTP/2): bytes and digest per direction, the gaps, and whether the process's first bytes out
 * are the HTTP/2 client preface. In the order the connections opened.
 */
export function connectionSummaries(frames: RawFrame[]): Record<string, unknown>[] {
  const sha = (b: Buffer[]): string => b.reduce((h, x) => h.update(x), createHash('sha256')).digest('hex');
  const conns = new Map<string, { open: RawFrame; data: [Buffer[], Buffer[]]; next: [bigint, bigint]; gaps: bigint }>();
  for (const f of frames) {
    const k = `${f.pid}:${f.conn_id}`;
    if (f.type === 'conn_open') conns.set(k, { open: f, data: [[], []], next: [0n, 0n], gaps: 0n });
    const c = conns.get(k);
    if (!c) continue;
    if (f.type === 'segment') {
      const d = f.dir as 0 | 1;
      c.gaps += (f.seq as bigint) - c.next[d];
      c.data[d].push(f.data as Buffer);
      c.next[d] = (f.seq as bigint) + BigInt((f.data as Buffer).length);
    } else if (f.type === 'conn_close') {
      c.gaps += (f.egress_end as bigint) - c.next[0] + ((f.ingress_end as bigint) - c.next[1]);
    }
  }
  return [...conns.values()].map((c) => {
    const out = Buffer.concat(c.data[0]);
    return {
      pid: c.open.pid,
      comm: c.open.comm,
      role: c.open.role,
      egress_bytes: out.length,
      egress_sha256: sha(c.data[0]),
      ingress_bytes: c.data[1].reduce((n, b) => n + b.length, 0),
      ingress_sha256: sha(c.data[1]),
      gap_bytes: Number(c.gaps),
      http2_client_preface: out.subarray(0, PREFACE.length).equals(PREFACE),
    };
  });
}

/**
 * `https-capture replay FILE [--format text|jsonl|har|pcapng|raw|frames]`: renders a recording
 * through the same renderers as the live command; writes to `out`; returns the exit code.
 */
export async function replayCommand(file: string, format: Format | 'frames', out: Sink, o: RenderOptions): Promise<number> {
  if (format === 'frames') {
    for await (const f of replayFrames(file)) out.write(`${frameToJson(f)}\n`);
    return 0;
  }
  const r = createRenderer(format, out, o);
  for await (const f of replayFrames(file)) r.push(f);
  r.end();
  return 0;
}
