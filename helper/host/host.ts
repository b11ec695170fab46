// host.ts: a host of the helper in TypeScript, playing apidump's role: spawns `https-capture
// --ipc`, checks hello, decodes (and optionally validates) frames, reassembles each
// connection's two directions by seq, and hands complete HTTP exchanges to listeners: HTTP/1.x
// and HTTP/2 streams through the same callback, in the same shape (docs/apidump.md).
import { ChildProcess, spawn } from 'child_process';
import * as path from 'path';
import { HttpExchange, Session, SessionEvent } from '../http/exchanges';
import { headerValue } from '../http/body';
import { HttpProtocol } from '../http/messages';
import { ByeFrame, ConfigFrame, ConnCloseFrame, ConnOpenFrame, ErrorFrame, HelloFrame, HelperFrame, LossFrame, ProcessFrame, ReadyFrame, SegmentFrame, StatsFrame } from '../protocol/generated';
import { PROTOCOL_VERSION } from '../protocol/hello';
import { FrameDecoder, FrameEncoder, FrameError, MAX_CONTROL_FRAME_BYTES, RawFrame } from '../protocol/wire';

export interface HttpMessage {
  /**
   * HTTP/1.x: the message's bytes exactly as they crossed the TLS calls (head and body).
   * HTTP/2: absent: a stream's frames are interleaved with the other streams' on the
   * connection, and its header blocks are HPACK-coded against the connection's table.
   */
  raw?: Buffer;
  /**
   * Regular header fields in the order sent, names as sent (HTTP/2: lower case). HTTP/2
   * pseudo-headers are not in this list: they are method, url, authority, scheme, statusCode.
   */
  headers: [string, string][];
  /** Trailer fields: HTTP/1.1 chunked trailers, HTTP/2 a HEADERS block after the DATA. */
  trailers: [string, string][];
  /** Body after transfer decoding (chunked removed, DATA frames joined); content codings are left as they are. */
  body: Buffer;
  /** 1.0, 1.1 or 2.0. */
  versionMajor: number;
  versionMinor: number;
  /** Unix ns of the first and of the last segment that carried the message. */
  tsNs: bigint;
  endNs: bigint;
}
export interface HttpRequest extends HttpMessage {
  method: string;
  /** The request-target as sent (HTTP/1) or :path (HTTP/2): "/a?b=1". */
  url: string;
  /** :authority (HTTP/2) or the Host header (HTTP/1); '' when the request names neither. */
  authority: string;
  /** :scheme (HTTP/2); "https" for HTTP/1 (it crossed TLS). */
  scheme: string;
}
export interface HttpResponse extends HttpMessage {
  statusCode: number;
  /** The reason phrase (HTTP/1); '' for HTTP/2, which has none. */
  statusMessage: string;
}

export interface Exchange {
  /** 'HTTP/1.0', 'HTTP/1.1' (the request line's version) or 'HTTP/2'. */
  protocol: HttpProtocol;
  /** HTTP/2: the stream's id (odd: opened by the client; even: pushed by the server). HTTP/1: absent. */
  streamId?: number;
  /** The connection: unique per pid within a capture; the exchanges of one connection share it. */
  connId: bigint;
  pid: number;
  /** The thread that first used the connection. */
  tid: number;
  comm: string;
  /** 'client': the process sent the request; 'server': it received it. */
  role: 'client' | 'server';
  /** The socket, seen from the process (-1 and 0.0.0.0:0 when the helper could not map it). */
  fd: number;
  localIp: string;
  localPort: number;
  remoteIp: string;
  remotePort: number;
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

const VERSIONS: Record<HttpProtocol, [number, number]> = { 'HTTP/1.0': [1, 0], 'HTTP/1.1': [1, 1], 'HTTP/2': [2, 0] };

/**
 * The host's shape of an exchange of the shared analysis (exchanges.ts), or undefined when it
 * is not whole: a request and a response both captured to their end, nothing missing inside.
 */
export function hostExchange(x: HttpExchange): Exchange | undefined {
  const req = x.request;
  const res = x.response;
  if (!req || !res || !req.complete || !res.complete) return undefined;
  const h2 = x.protocol === 'HTTP/2';
  if (!h2 && (!req.raw || !res.raw)) return undefined;
  const [qMaj, qMin] = VERSIONS[x.protocol];
  const [sMaj, sMin] = h2 ? VERSIONS['HTTP/2'] : VERSIONS[res.version ?? 'HTTP/1.1'];
  const c = x.conn;
  return {
    protocol: x.protocol,
    ...(h2 && x.streamId !== undefined ? { streamId: x.streamId } : {}),
    connId: c.connId,
    pid: c.pid,
    tid: c.tid,
    comm: c.comm,
    role: c.role === 'server' ? 'server' : 'client',
    fd: c.fd,
    localIp: c.localIp,
    localPort: c.localPort,
    remoteIp: c.remoteIp,
    remotePort: c.remotePort,
    request: {
      ...(req.raw ? { raw: req.raw } : {}),
      headers: req.headers,
      trailers: req.trailers,
      body: req.body,
      versionMajor: qMaj,
      versionMinor: qMin,
      tsNs: req.firstNs,
      endNs: req.lastNs,
      method: req.method,
      url: req.target,
      authority: req.authority ?? headerValue(req.headers, 'host') ?? '',
      scheme: req.scheme ?? 'https',
    },
    response: {
      ...(res.raw ? { raw: res.raw } : {}),
      headers: res.headers,
      trailers: res.trailers,
      body: res.body,
      versionMajor: sMaj,
      versionMinor: sMin,
      tsNs: res.firstNs,
      endNs: res.lastNs,
      statusCode: res.status,
      statusMessage: res.statusText,
    },
  };
}

/**
 * Rebuilds complete HTTP/1.x exchanges and HTTP/2 streams of every connection from frames,
 * through the same analysis as the human outputs (exchanges.ts, http1.ts, http2.ts): an
 * exchange is handed out only when both its request and its response were captured whole.
 * Pure: no process.
 */
export class ExchangeAssembler {
  private readonly session: Session;

  constructor(
    private readonly onExchange: (e: Exchange) => void,
    onGap: (g: Gap) => void = () => undefined,
  ) {
    this.session = new Session((e) => this.event(e), {
      onGap: (conn, dir, at, bytes) => onGap({ connId: conn.connId, pid: conn.pid, dir, at: BigInt(at), bytes: BigInt(bytes) }),
    });
  }

  push(f: RawFrame): void {
    if (f.type === 'segment' || f.type === 'conn_open' || f.type === 'conn_close') this.session.push(f);
  }

  /** Ends every connection (end of a recording). */
  finish(): void {
    this.session.end();
  }

  private event(e: SessionEvent): void {
    if (e.type !== 'exchange') return;
    const x = hostExchange(e.exchange);
    if (x) this.onExchange(x);
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
  /** Every TLS file found at start has its probes (or failed): capture is live. */
  ready: ReadyFrame;
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
    const args = opts.args ?? [path.resolve(__dirname, '..', 'cli.js'), '--ipc'];
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
    if ((['hello', 'segment', 'conn_open', 'conn_close', 'process', 'loss', 'stats', 'error', 'ready', 'bye'] as string[]).includes(f.type)) {
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
