// tshark.ts: what tshark reads in a pcapng we wrote: HTTP and HTTP/2 messages (the server
// ports decoded as HTTP with -d, as Wireshark's "Decode As"), to compare with our exchanges.
import { execFileSync } from 'child_process';
import { HttpExchange, Session } from '../../helper/http/exchanges';
import { RawFrame } from '../../helper/protocol/wire';

export function ourExchanges(frames: RawFrame[]): HttpExchange[] {
  const ex: HttpExchange[] = [];
  const s = new Session((e) => e.type === 'exchange' && ex.push(e.exchange));
  for (const f of frames) s.push(f);
  s.end();
  return ex;
}

/** method/path and status counts as "GET /x" and "200" strings, sorted. */
export function ours(frames: RawFrame[]): { requests: string[]; statuses: string[] } {
  const ex = ourExchanges(frames);
  return {
    requests: ex.filter((x) => x.request).map((x) => `${x.request!.method} ${x.request!.target}`).sort(),
    statuses: ex.filter((x) => x.response).map((x) => String(x.response!.status)).sort(),
  };
}

/** tshark's view of a pcapng: one row per HTTP or HTTP/2 message, the server ports decoded as HTTP. */
export function tsharkMessages(file: string, ports: number[], fields: string[], filter: string, decodeAs: 'http' | 'http2'): string[][] {
  const args = ['-r', file, '-o', 'tcp.check_checksum:TRUE', ...ports.flatMap((p) => ['-d', `tcp.port==${p},${decodeAs}`]), '-Y', filter, '-T', 'fields', '-E', 'separator=\t', '-E', 'occurrence=a', '-E', 'aggregator=,'];
  for (const f of fields) args.push('-e', f);
  const out = execFileSync('tshark', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return out.split('\n').filter(Boolean).map((l) => l.split('\t'));
}

function serverPorts(frames: RawFrame[]): number[] {
  const ports = new Set<number>();
  for (const f of frames) if (f.type === 'conn_open') ports.add((f.role === 'server' ? f.local_port : f.remote_port) as number);
  return [...ports].filter((p) => p > 0);
}

export function tsharkCounts(file: string, frames: RawFrame[]): { requests: string[]; statuses: string[] } {
  // A port may serve both (ALPN): decode it once as HTTP/1 and once as HTTP/2 and add them up.
  const ex = ourExchanges(frames);
  const ports = serverPorts(frames);
  const out = { requests: [] as string[], statuses: [] as string[] };
  for (const h2 of [false, true]) {
    if (!ex.some((x) => (x.protocol === 'HTTP/2') === h2)) continue;
    const got = tsharkCountsOn(file, ports, h2);
    // As HTTP/1, the HTTP/2 preface reads as a request "PRI *".
    out.requests.push(...got.requests.filter((r) => r !== 'PRI *'));
    out.statuses.push(...got.statuses);
  }
  return { requests: out.requests.sort(), statuses: out.statuses.sort() };
}

/** Requests ("GET /x") and statuses tshark finds in a pcapng, with `ports` decoded as HTTP or HTTP/2. */
export function tsharkCountsOn(file: string, ports: number[], h2: boolean): { requests: string[]; statuses: string[] } {
  // One packet may carry several messages (pipelining, HTTP/2 frames): fields come comma-joined.
  const [fields, filter, proto] = h2
    ? [['http2.headers.method', 'http2.headers.path', 'http2.headers.status'], 'http2.type == 1', 'http2' as const]
    : [['http.request.method', 'http.request.uri', 'http.response.code'], 'http', 'http' as const];
  const rows = tsharkMessages(file, ports, fields, filter, proto);
  const requests: string[] = [];
  const statuses: string[] = [];
  for (const r of rows) {
    const methods = (r[0] ?? '').split(',').filter(Boolean);
    const paths = (r[1] ?? '').split(',').filter(Boolean);
    methods.forEach((m, i) => requests.push(`${m} ${paths[i]}`));
    for (const s of (r[2] ?? '').split(',').filter(Boolean)) statuses.push(s);
  }
  return { requests: requests.sort(), statuses: statuses.sort() };
}

