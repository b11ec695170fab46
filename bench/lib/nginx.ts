// nginx.ts: the benchmark's server: Debian's nginx over TLS on 127.0.0.1 with one worker,
// HTTP/1.1 and HTTP/2 (ALPN), a 1 KiB and a 256 KiB file and an upload location, and a buffered
// access log that says how many requests it answered (the ground truth for "exchanges made").
// The tests' startNginx with the bench's settings.
import * as fs from 'fs';
import { startNginx, waitFor } from '../../test/lib/servers';

export interface BenchServer {
  port: number;
  /** The worker process: the one that makes the TLS calls. */
  workerPid: number;
  /** Requests answered so far (lines of the access log, flushed). */
  requests(): number;
  stop(): Promise<void>;
}

export async function startBenchNginx(dir: string): Promise<BenchServer> {
  const nginx = await startNginx({
    dir,
    // Base64 text, like an API's JSON: no byte of it looks like an HTTP line to the counters.
    files: { '1k': Buffer.from(Buffer.alloc(768, 7).toString('base64')), '256k': Buffer.from(Buffer.alloc(196608, 9).toString('base64')) },
    http2: true,
    workerConnections: 16384,
    // One write per 256 KiB of log, not per request: the log is not what is measured.
    accessLogParams: 'buffer=256k flush=200ms',
    extraConf: `    keepalive_requests 10000000;
    client_max_body_size 1m;
    client_body_buffer_size 1m;
    # A POST's body is read (and captured) before the answer.
    location = /upload { if ($request_method = POST) { return 200 "ok\\n"; } }
`,
  });
  const workerPid = await waitFor(() => nginx.workerPids()[0], { what: 'the nginx worker', timeoutMs: 10_000 });
  return {
    port: nginx.port,
    workerPid,
    requests: () => (fs.existsSync(nginx.accessLog) ? fs.readFileSync(nginx.accessLog, 'utf8').split('\n').filter(Boolean).length : 0),
    stop: nginx.stop,
  };
}
