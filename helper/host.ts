// host.ts: a host of the helper in TypeScript, playing apidump's role: spawns `https-capture
// --ipc`, checks hello, decodes (and optionally validates) frames, reassembles each
// connection's two directions by seq, and hands complete HTTP/1.x exchanges to listeners.
import { ChildProcess, spawn } from 'child_process';
import * as path from 'path';
// http-parser-js: the pure-JS port of the http_parser that node itself used until v12 (MIT,
// no dependencies, used by websocket-driver and faye). It exposes message boundaries within a
// chunk (parser.offset), which we need to keep each message's exact bytes; node's own llhttp
// binding is internal and not an API.
import { HTTPParser } from 'http-parser-js';
import { ByeFrame, ConfigFrame, ConnCloseFrame, ConnOpenFrame, ErrorFrame, HelloFrame, HelperFrame, LossFrame, ProcessFrame, SegmentFrame, StatsFrame } from './generated/protocol';
import { PROTOCOL_VERSION } from './ipc';
import { FrameDecoder, FrameEncoder, FrameError, MAX_CONTROL_FRAME_BYTES, RawFrame } from './wire';

export interface HttpMessage {
  /** The message's bytes exactly as they crossed the TLS call (head and body). */
  raw: Buffer;
  headers: [string, string][];
  /** Body after transfer decoding (chunked removed); content encodings are left as they are. */
  body: Buffer;
  versionMajor: number;
  versionMinor: number;
  /** Unix ns of the first segment of the message. */
  tsNs: bigint;
}
export interface HttpRequest extends HttpMessage {
  method: string;
  url: string;
}
export interface HttpResponse extends HttpMessage {
  statusCode: number;
  statusMessage: string;
}

export interface Exchange {
  connId: bigint;
  pid: number;
  comm: string;
  /** 'client': the process sent the request; 'server': it received it. */
  role: 'client' | 'server';
  request: HttpRequest;
  response: HttpResponse;
}

/** Bytes missing in one direction of a connection: never spliced over. */
export interface Gap {
  connId: bigint;
  pid: number;
  dir: 0 | 1;
  at: bigint;
  bytes: bigint;
}

type Parser = InstanceType<typeof HTTPParser>;

/** One direction of HTTP/1 messages: feeds bytes to http-parser-js and keeps each message's bytes. */
class MessageStream<T extends HttpRequest | HttpResponse> {
  private parser: Parser;
  private pending: Buffer[] = [];
  private pendingTs: bigint[] = [];
  private current?: { headers: [string, string][]; body: Buffer[]; info: Record<string, unknown> };
  broken = false;

  constructor(
    private readonly kind: 'REQUEST' | 'RESPONSE',
    private readonly onMessage: (m: T) => void,
    /** For responses: the method of the request being answered (HEAD has no body). */
    private readonly methodOf: () => string | undefined = () => undefined,
  ) {
    this.parser = this.make();
  }

  private make(): Parser {
    const p = new HTTPParser(this.kind === 'REQUEST' ? HTTPParser.REQUEST : HTTPParser.RESPONSE);
    p[HTTPParser.kOnHeadersComplete] = (info) => {
      const headers: [string, string][] = [];
      for (let i = 0; i + 1 < info.headers.length; i += 2) headers.push([info.headers[i]!, info.headers[i + 1]!]);
      this.current = { headers, body: [], info: info as unknown as Record<string, unknown> };
      // Like node's http client: a response to HEAD, and 1xx/204/304, have no body.
      if (this.kind === 'RESPONSE' && this.methodOf() === 'HEAD') return 1;
      return 0;
    };
    p[HTTPParser.kOnBody] = (chunk, offset, length) => {
      this.current?.body.push(Buffer.from(chunk.subarray(offset, offset + length)));
    };
    p[HTTPParser.kOnMessageComplete] = () => {
      const end = (p as unknown as { offset: number }).offset;
      this.complete(end);
    };
    return p;
  }

  private chunkStart = 0;
  private chunk: Buffer = Buffer.alloc(0);

  private complete(endInChunk: number): void {
    const c = this.current;
    if (!c) return;
    this.current = undefined;
    const tail = this.chunk.subarray(this.chunkStart, endInChunk);
    const raw = Buffer.concat([...this.pending, tail]);
    const tsNs = this.pendingTs[0] ?? 0n;
    this.pending = [];
    this.pendingTs = [];
    this.chunkStart = endInChunk;
    const i = c.info;
    const base = { raw, tsNs, headers: c.headers, body: Buffer.concat(c.body), versionMajor: Number(i.versionMajor), versionMinor: Number(i.versionMinor) };
    if (this.kind === 'REQUEST') {
      const method = (HTTPParser.methods as string[])[Number(i.method)] ?? String(i.method);
      this.onMessage({ ...base, method, url: String(i.url) } as T);
    } else {
      this.onMessage({ ...base, statusCode: Number(i.statusCode), statusMessage: String(i.statusMessage) } as T);
    }
  }

  push(data: Buffer, tsNs: bigint): void {
    if (this.broken || data.length === 0) return;
    this.chunk = data;
    this.chunkStart = 0;
    this.pendingTs.push(tsNs);
    const r = this.parser.execute(data);
    if (r instanceof Error) {
      this.broken = true;
      return;
    }
    if (this.chunkStart < data.length) this.pending.push(Buffer.from(data.subarray(this.chunkStart)));
    this.chunk = Buffer.alloc(0);
  }

  /** Bytes are missing: whatever message was in progress is dropped, and parsing stops. */
  gap(): void {
    this.broken = true;
    this.pending = [];
    this.current = undefined;
  }

  /** The connection ended: a response delimited by the close completes now. */
  end(): void {
    if (this.broken) return;
    this.chunk = Buffer.alloc(0);
    this.chunkStart = 0;
    this.parser.finish();
  }
}

/** Rebuilds HTTP/1 exchanges of every connection from segment frames. Pure: no process. */
export class ExchangeAssembler {
  private readonly conns = new Map<string, ConnState>();

  constructor(
    private readonly onExchange: (e: Exchange) => void,
    private readonly onGap: (g: Gap) => void = () => undefined,
  ) {}

  push(f: RawFrame): void {
    if (f.type === 'segment') this.segment(f as unknown as SegmentFrame);
    else if (f.type === 'conn_close') this.close(f as unknown as ConnCloseFrame);
  }

  /** Ends every connection (end of a recording). */
  finish(): void {
    for (const c of this.conns.values()) c.end();
    this.conns.clear();
  }

  private key(pid: number, connId: bigint): string {
    return `${pid}:${connId}`;
  }

  private segment(s: SegmentFrame): void {
    const k = this.key(s.pid, s.conn_id);
    let c = this.conns.get(k);
    if (!c) {
      c = new ConnState(s, this.onExchange);
      this.conns.set(k, c);
    }
    const expected = c.next[s.dir];
    if (s.seq > expected) {
      this.onGap({ connId: s.conn_id, pid: s.pid, dir: s.dir, at: expected, bytes: s.seq - expected });
      c.gap(s.dir);
    }
    if (s.seq < expected) return; // already seen (cannot happen from one helper): never splice
    c.next[s.dir] = s.seq + BigInt(s.data.length);
    c.push(s.dir, Buffer.from(s.data), s.ts_ns);
  }

  private close(f: ConnCloseFrame): void {
    const k = this.key(f.pid, f.conn_id);
    const c = this.conns.get(k);
    if (!c) return;
    this.conns.delete(k);
    c.end();
  }
}

const REQUEST_LINE = /^[A-Z][A-Z-]* \S+ HTTP\/1\.[01]\r?\n/;
const STATUS_LINE = /^HTTP\/1\.[01] \d{3}[ \r]/;

class ConnState {
  readonly next: [bigint, bigint] = [0n, 0n];
  private role?: 'client' | 'server';
  private requests?: MessageStream<HttpRequest>;
  private responses?: MessageStream<HttpResponse>;
  private readonly waiting: HttpRequest[] = [];
  private readonly early: [0 | 1, Buffer, bigint][] = [];
  /** The first bytes are not HTTP/1 (HTTP/2, another protocol): not parsed. */
  private notHttp = false;

  constructor(
    private readonly first: SegmentFrame,
    private readonly onExchange: (e: Exchange) => void,
  ) {}

  push(dir: 0 | 1, data: Buffer, ts: bigint): void {
    if (this.notHttp) return;
    if (!this.role) {
      this.early.push([dir, data, ts]);
      // The side whose first bytes are a request line sends requests; a status line answers.
      const head = Buffer.concat(this.early.filter((e) => e[0] === dir).map((e) => e[1])).subarray(0, 8192);
      const text = head.toString('latin1');
      let requestDir: 0 | 1 | undefined;
      if (REQUEST_LINE.test(text)) requestDir = dir;
      else if (STATUS_LINE.test(text)) requestDir = dir === 0 ? 1 : 0;
      if (requestDir === undefined) {
        if (head.length >= 8192 || (text.includes('\n') && !text.startsWith('HTTP/'))) this.notHttp = true; // HTTP/2 or another protocol
        return;
      }
      this.setRole(requestDir === 0 ? 'client' : 'server');
      for (const [d, b, t] of this.early.splice(0)) this.route(d, b, t);
      return;
    }
    this.route(dir, data, ts);
  }

  private setRole(role: 'client' | 'server'): void {
    this.role = role;
    this.requests = new MessageStream<HttpRequest>('REQUEST', (m) => this.waiting.push(m));
    this.responses = new MessageStream<HttpResponse>(
      'RESPONSE',
      (m) => {
        const req = this.waiting.shift();
        if (!req) return; // a response without a request seen: not an exchange
        if (m.statusCode >= 100 && m.statusCode < 200 && m.statusCode !== 101) {
          this.waiting.unshift(req); // an interim response; the final one follows
          return;
        }
        this.onExchange({ connId: this.first.conn_id, pid: this.first.pid, comm: this.first.comm, role, request: req, response: m });
      },
      () => this.waiting[0]?.method,
    );
  }

  private route(dir: 0 | 1, data: Buffer, ts: bigint): void {
    const reqDir = this.role === 'client' ? 0 : 1;
    (dir === reqDir ? this.requests : this.responses)?.push(data, ts);
  }

  gap(dir: 0 | 1): void {
    const reqDir = this.role === 'client' ? 0 : 1;
    if (!this.role) this.early.length = 0;
    else (dir === reqDir ? this.requests : this.responses)?.gap();
  }

  end(): void {
    this.requests?.end();
    this.responses?.end();
  }
}

export interface HostEvents {
  hello: HelloFrame;
  frame: RawFrame;
  segment: SegmentFrame;
  conn_open: ConnOpenFrame;
  conn_close: ConnCloseFrame;
  process: ProcessFrame;
  loss: LossFrame;
  stats: StatsFrame;
  error: ErrorFrame;
  bye: ByeFrame;
  exchange: Exchange;
  gap: Gap;
  /** A frame the host could not read, or a protocol violation (validation on). */
  protocol_error: FrameError | Error;
  stderr: string;
  exit: { code: number | null; signal: NodeJS.Signals | null };
}

export interface HostOptions {
  /** The command to run; default: this package's cli.js with --ipc. */
  command?: string;
  args?: string[];
  /** Validate every frame against the schemas (default true). */
  validate?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** The helper as a child process. Listen with on(); stop with close(). */
export class HelperHost {
  readonly child: ChildProcess;
  /** Resolves with hello (rejects if the first frame is not a hello of a known version). */
  readonly ready: Promise<HelloFrame>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly listeners: { [K in keyof HostEvents]?: ((e: HostEvents[K]) => void)[] } = {};
  private readonly decoder: FrameDecoder;
  private readonly encoder = new FrameEncoder();
  private readonly assembler: ExchangeAssembler;
  private hello?: HelloFrame;
  private byeFrame?: ByeFrame;
  private stderrText = '';

  constructor(opts: HostOptions = {}) {
    const command = opts.command ?? process.execPath;
    const args = opts.args ?? [path.resolve(__dirname, 'cli.js'), '--ipc'];
    this.decoder = new FrameDecoder({ maxFrameBytes: MAX_CONTROL_FRAME_BYTES, validate: opts.validate ?? true });
    this.assembler = new ExchangeAssembler(
      (e) => this.emit('exchange', e),
      (g) => this.emit('gap', g),
    );
    this.child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], ...(opts.env ? { env: opts.env } : {}) });
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
    void this.exited.then((x) => this.emit('exit', x));
    this.child.stdin!.on('error', () => undefined); // the helper may exit first
    this.child.stderr!.on('data', (b: Buffer) => {
      this.stderrText += b.toString();
      this.emit('stderr', b.toString());
    });
    this.ready = new Promise<HelloFrame>((resolve, reject) => {
      const fail = (e: Error): void => reject(e);
      this.child.once('error', fail);
      void this.exited.then(() => reject(new Error(`the helper exited before hello; its stderr:\n${this.stderrText}`)));
      this.on('hello', resolve);
      this.on('protocol_error', (e) => {
        if (!this.hello) reject(e);
      });
    });
    this.ready.catch(() => undefined);
    this.child.stdout!.on('data', (b: Buffer) => {
      for (const x of this.decoder.push(b)) {
        if (x instanceof FrameError) this.emit('protocol_error', x);
        else this.frame(x);
      }
    });
  }

  get stderr(): string {
    return this.stderrText;
  }

  on<K extends keyof HostEvents>(event: K, fn: (e: HostEvents[K]) => void): this {
    ((this.listeners[event] ??= []) as ((e: HostEvents[K]) => void)[]).push(fn);
    return this;
  }

  private emit<K extends keyof HostEvents>(event: K, e: HostEvents[K]): void {
    for (const fn of (this.listeners[event] ?? []) as ((e: HostEvents[K]) => void)[]) fn(e);
  }

  private frame(f: RawFrame): void {
    if (!this.hello) {
      if (f.type !== 'hello') {
        this.emit('protocol_error', new Error(`the helper's first frame is ${f.type}, not hello: is this an https-capture --ipc?`));
        this.child.kill('SIGTERM');
        return;
      }
      const h = f as unknown as HelloFrame;
      if (h.protocol !== PROTOCOL_VERSION) {
        this.emit('protocol_error', new Error(`the helper speaks protocol ${h.protocol}; this host knows ${PROTOCOL_VERSION}: use a matching https-capture`));
        this.sendRaw({ type: 'shutdown', reason: 'protocol version' });
        return;
      }
      this.hello = h;
    }
    this.emit('frame', f);
    this.assembler.push(f);
    if (f.type === 'bye') this.byeFrame = f as unknown as ByeFrame;
    if ((['hello', 'segment', 'conn_open', 'conn_close', 'process', 'loss', 'stats', 'error', 'bye'] as string[]).includes(f.type)) {
      this.emit(f.type as keyof HostEvents, f as unknown as HostEvents[keyof HostEvents] as never);
    }
    if (f.type === 'bye') this.assembler.finish();
  }

  /** Sends a frame to the helper (config, shutdown, or raw bytes for tests). */
  sendRaw(frame: object | Buffer): void {
    this.child.stdin!.write(Buffer.isBuffer(frame) ? frame : this.encoder.encode(frame));
  }

  configure(c: Omit<ConfigFrame, 'type'>): void {
    this.sendRaw({ type: 'config', ...c });
  }

  /**
   * Sends shutdown and waits for bye and the exit (SIGKILL after timeoutMs: a stop takes 3 s
   * here, and 5-9 s on a machine under heavy load; docs/protocol.md).
   */
  async close(timeoutMs = 30000): Promise<ByeFrame | undefined> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.sendRaw({ type: 'shutdown', reason: 'host closing' });
      const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
      await this.exited;
      clearTimeout(t);
    }
    return this.byeFrame;
  }
}

export type { HelperFrame };
