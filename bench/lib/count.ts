// count.ts: what a capture's output holds, counted the same way for every format: per pid, the
// exchanges with a request line, a status and headers on both sides (what apidump learns
// endpoints from), and per connection whether its last exchange was a request left unanswered
// (in flight when the load stopped). bench.ts and overload.ts both count with these.
import * as fs from 'fs';
import * as readline from 'readline';
import { replayFrames } from '../../helper/commands/replay';
import { HttpExchange, Session } from '../../helper/http/exchanges';

export type Counts = { perPid: Map<number, number>; unanswered: Map<number, number> };

/** Exchanges of a frame recording with a request line, a status and headers on both sides, per pid. */
export async function countFrames(file: string): Promise<Counts & { kernel?: Record<string, number>; writer?: Record<string, number> }> {
  const t = new Tally();
  let kernel: Record<string, number> | undefined;
  let writer: Record<string, number> | undefined;
  const session = new Session((e) => {
    if (e.type !== 'exchange') return;
    const x = e.exchange;
    t.add(x.conn.pid, x.conn.key, headed(x), !!x.request && x.request.headers.length > 0 && !x.response);
  });
  for await (const f of replayFrames(file, { validate: false })) {
    if (f.type === 'bye') {
      kernel = f.kernel as Record<string, number>;
      writer = f.writer as Record<string, number>;
    }
    session.push(f);
  }
  session.end();
  return { ...t.counts(), ...(kernel ? { kernel } : {}), ...(writer ? { writer } : {}) };
}

function headed(x: HttpExchange): boolean {
  return !!x.request && !!x.response && !!x.request.method && x.request.headers.length > 0 && x.response.status > 0 && x.response.headers.length > 0;
}

/**
 * The same count from the text output: an exchange block starts with `TIME comm[pid] conn N
 * HTTP/1.x (...)` or `... conn N HTTP/2 stream S (...)`; it counts when it has `> METHOD target
 * HTTP/x`, a status line (`< HTTP/1.x NNN`, HTTP/2: `< NNN`), and a header line on each side.
 * Bodies here are base64 or 'x' runs: no line of them starts with '> ' or '< '.
 */
export async function countText(file: string): Promise<Counts> {
  const t = new Tally();
  const head = /^\d\d:\d\d:\d\d\.\d+ \S+\[(\d+)\] conn (\d+) HTTP\/(?:1\.[01]|2 stream \d+) /;
  let cur: { conn: string; pid: number; req: boolean; res: boolean; reqH: boolean; resH: boolean; noResponse: boolean } | undefined;
  const done = (): void => {
    if (cur) t.add(cur.pid, cur.conn, cur.req && cur.res && cur.reqH && cur.resH, cur.req && cur.reqH && !cur.res && cur.noResponse);
    cur = undefined;
  };
  const rl = readline.createInterface({ input: fs.createReadStream(file, { highWaterMark: 1 << 20 }), crlfDelay: Infinity });
  for await (const line of rl) {
    const m = head.exec(line);
    if (m) {
      done();
      cur = { conn: `${m[1]}:${m[2]}`, pid: Number(m[1]), req: false, res: false, reqH: false, resH: false, noResponse: false };
      continue;
    }
    if (cur && line === '[no response captured]') cur.noResponse = true;
    if (!cur || line.length < 3 || (line[0] !== '>' && line[0] !== '<') || line[1] !== ' ') continue;
    if (line[0] === '>') {
      if (/^> [A-Z]+ \S+ HTTP\/(?:1\.[01]|2)$/.test(line)) cur.req = true;
      else if (/^> :?[^ :]+: /.test(line)) cur.reqH = true;
    } else if (/^< (?:HTTP\/1\.[01] )?\d{3}\b/.test(line)) cur.res = true;
    else if (/^< :?[^ :]+: /.test(line)) cur.resH = true;
  }
  done();
  return t.counts();
}

/** Tallies exchanges per pid, and per connection whether its last one was a request left unanswered. */
class Tally {
  readonly perPid = new Map<number, number>();
  private readonly last = new Map<string, { pid: number; unanswered: boolean }>();
  add(pid: number, conn: string, headed: boolean, unanswered: boolean): void {
    if (headed) this.perPid.set(pid, (this.perPid.get(pid) ?? 0) + 1);
    this.last.set(conn, { pid, unanswered });
  }
  counts(): Counts {
    const unanswered = new Map<number, number>();
    for (const l of this.last.values()) if (l.unanswered) unanswered.set(l.pid, (unanswered.get(l.pid) ?? 0) + 1);
    return { perPid: this.perPid, unanswered };
  }
}

/** The same count from JSON Lines: "exchange" lines (schemas/jsonl/line.schema.json). */
export async function countJsonl(file: string): Promise<Counts> {
  const t = new Tally();
  const rl = readline.createInterface({ input: fs.createReadStream(file, { highWaterMark: 1 << 20 }), crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.startsWith('{"type":"exchange"')) continue;
    const l = JSON.parse(line) as { conn: { id: string; pid: number }; request?: { method?: string; headers: unknown[] }; response?: { status?: number; headers: unknown[] } };
    const q = l.request;
    const r = l.response;
    t.add(l.conn.pid, `${l.conn.pid}:${l.conn.id}`, !!q?.method && q.headers.length > 0 && !!r?.status && r.headers.length > 0, !!q && q.headers.length > 0 && !r);
  }
  return t.counts();
}

/**
 * The same count from the HAR (streamed by formats/har.ts, an entry per block at six spaces):
 * a method, a status above 0, non-empty request and response headers, and _process.pid.
 * Line by line: the file can be larger than a string may be.
 */
export async function countHar(file: string): Promise<Counts> {
  const t = new Tally();
  let cur: { method: boolean; status: boolean; headers: number; pid: number; conn: string } | undefined;
  const rl = readline.createInterface({ input: fs.createReadStream(file, { highWaterMark: 1 << 20 }), crlfDelay: Infinity });
  for await (const line of rl) {
    if (line === '      {') cur = { method: false, status: false, headers: 0, pid: -1, conn: '' };
    else if (cur && (line === '      }' || line === '      },')) {
      t.add(cur.pid, `${cur.pid}:${cur.conn}`, cur.method && cur.status && cur.headers >= 2, false);
      cur = undefined;
    } else if (cur) {
      let m: RegExpExecArray | null;
      if (/^ {10}"method": "[A-Z]+",$/.test(line)) cur.method = true;
      else if (/^ {10}"status": [1-9]\d\d,$/.test(line)) cur.status = true;
      else if (/^ {10}"headers": \[$/.test(line)) cur.headers++;
      else if ((m = /^ {10}"pid": (\d+),?$/.exec(line))) cur.pid = Number(m[1]);
      else if ((m = /^ {8}"connection": "(\d+)",?$/.exec(line))) cur.conn = m[1]!;
    }
  }
  return t.counts();
}

/** The counters of the text mode's closing line (stderr): `stopped: N calls, N bytes moved, ...`. */
export function textCounters(stderr: string): Record<string, number> {
  const line = /stopped: (.*)/.exec(stderr)?.[1] ?? '';
  const n = (re: RegExp): number | undefined => {
    const m = re.exec(line);
    return m ? Number(m[1]) : undefined;
  };
  const out: Record<string, number> = {};
  const put = (k: string, v: number | undefined): void => void (v !== undefined && (out[k] = v));
  put('bytes_moved', n(/(\d+) bytes moved/));
  put('bytes_captured', n(/(\d+) captured/));
  put('bytes_shed', n(/(\d+) shed under load/));
  put('bytes_lost', n(/(\d+) lost/));
  put('output_shed', n(/(\d+) more shed because the renderer or its output fell behind/));
  put('calls_missed', n(/(\d+) calls missed/));
  return out;
}
