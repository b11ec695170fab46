// Test fixtures: loopback TLS servers (nginx, s_server, python) and clients (curl, python), tracked for stopAll().
import { ChildProcess, SpawnOptions, spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';

export interface RunResult {
  pid: number;
  code: number | null;
  signal: string | null;
  stdout: Buffer;
  stderr: Buffer;
}

export interface RunOptions {
  input?: Buffer;
  timeoutMs?: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Called with the child's pid as soon as it has been spawned. */
  onSpawn?: (pid: number) => void;
}

export interface CertPair {
  cert: string;
  key: string;
}

export interface Server {
  port: number;
  pid: number;
  stop(): Promise<void>;
}

export interface NginxServer extends Server {
  /** pid of the master process */
  pid: number;
  workerPids(): number[];
  accessLog: string;
  root: string;
}

const PYTHON = '/usr/bin/python3';
const NGINX = '/usr/sbin/nginx';
/**
 * How much longer than here every wait of the tests may take: HTTPS_CAPTURE_TEST_TIME_SCALE,
 * which scripts/test-kernels.sh sets in an emulated (TCG) guest, where programs start and run
 * about ten times slower. 1 everywhere else.
 */
export const TIME_SCALE = Math.max(1, Number(process.env.HTTPS_CAPTURE_TEST_TIME_SCALE) || 1);
const START_TIMEOUT_MS = 10_000 * TIME_SCALE;

interface Proc {
  child: ChildProcess;
  exited: Promise<void>;
  output(): string;
}

/** Every process we started and that has not exited yet, with the function that stops it. */
const live = new Map<number, () => Promise<void>>();

process.once('exit', () => {
  for (const pid of live.keys()) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
});

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves true if p settles within ms, false otherwise. */
async function within(p: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function hasExited(child: ChildProcess): boolean {
  return child.pid === undefined || child.exitCode !== null || child.signalCode !== null;
}

/** SIGTERM, then SIGKILL if still alive after 2 s. */
async function terminate(proc: Proc): Promise<void> {
  if (hasExited(proc.child)) return;
  proc.child.kill('SIGTERM');
  if (!(await within(proc.exited, 2000))) {
    proc.child.kill('SIGKILL');
    await proc.exited;
  }
}

function spawnTracked(cmd: string, args: string[], opts: SpawnOptions, keepOutput = true): Proc {
  const child = spawn(cmd, args, opts);
  const chunks: Buffer[] = [];
  if (keepOutput) {
    child.stdout?.on('data', (b: Buffer) => chunks.push(b));
    child.stderr?.on('data', (b: Buffer) => chunks.push(b));
  }
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.on('error', () => {
      if (hasExited(child)) resolve();
    });
  });
  const proc: Proc = { child, exited, output: () => Buffer.concat(chunks).toString('utf8') };
  const pid = child.pid;
  if (pid !== undefined) {
    live.set(pid, () => terminate(proc));
    void exited.then(() => live.delete(pid));
  }
  return proc;
}

/** Kill every process started by this module that is still running. */
export async function stopAll(): Promise<void> {
  await Promise.all([...live.values()].map((stop) => stop()));
}

const tmpDirs: string[] = [];
process.on('exit', () => {
  if (process.env.KEEP_TMP === '1') return;
  for (const d of tmpDirs) {
    try {
      fs.rmSync(d, { recursive: true, force: true });
    } catch {
      // best effort: a leftover directory is no reason to fail the run
    }
  }
});

/**
 * A fresh private directory under the system's tmp, removed when the test process exits
 * (KEEP_TMP=1 keeps them, to look at a failure's files): the suite's certificates, recordings
 * and Go build caches (over 40 MB per run) do not pile up in /tmp.
 */
export function tmpDir(prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tmpDirs.push(d);
  return d;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => (port > 0 ? resolve(port) : reject(new Error('freePort: no port'))));
    });
  });
}

/** Deterministic printable ASCII, exactly n bytes; test/lib/tls_server.py implements the same. */
export function pattern(n: number, seed = 0): Buffer {
  const out = Buffer.alloc(n);
  for (let off = 0, k = 0; off < n; k++) {
    off += out.write(`seed-${seed} line ${k} the quick brown fox jumps over the lazy dog\n`, off, 'latin1');
  }
  return out;
}

export async function waitFor<T>(
  fn: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  opts: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<T> {
  const ms = (opts.timeoutMs ?? 10_000) * TIME_SCALE;
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== null && v !== false) return v;
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${opts.what ?? 'condition'}`);
    }
    await sleep(opts.intervalMs ?? 50);
  }
}

export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const proc = spawnTracked(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: 'pipe' }, false);
    const { child } = proc;
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let settled = false;
    const timeoutMs = (opts.timeoutMs ?? 30_000) * TIME_SCALE;
    const timer = setTimeout(() => {
      settled = true;
      void terminate(proc).then(() =>
        reject(
          new Error(
            `${cmd} ${args.join(' ')}: timed out after ${timeoutMs} ms; stderr: ${Buffer.concat(stderr).toString()}`,
          ),
        ),
      );
    }, timeoutMs);
    child.stdout?.on('data', (b: Buffer) => stdout.push(b));
    child.stderr?.on('data', (b: Buffer) => stderr.push(b));
    child.stdin?.on('error', () => undefined); // child may exit without reading its input
    child.stdin?.end(opts.input);
    child.once('spawn', () => {
      if (child.pid !== undefined) opts.onSpawn?.(child.pid);
    });
    child.once('error', (e) => {
      if (settled || !hasExited(child)) return;
      settled = true;
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({
        pid: child.pid ?? -1,
        code,
        signal,
        stdout: Buffer.concat(stdout),
        stderr: Buffer.concat(stderr),
      });
    });
  });
}

export async function makeCert(dir: string, alg: 'ec' | 'rsa' = 'ec'): Promise<CertPair> {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  const newkey = alg === 'ec' ? ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'] : ['-newkey', 'rsa:2048'];
  const r = await run('openssl', [
    'req', '-x509', '-nodes', ...newkey, '-keyout', key, '-out', cert, '-days', '2',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost',
  ]);
  if (r.code !== 0) throw new Error(`openssl req failed (${r.code}): ${r.stderr.toString()}`);
  return { cert, key };
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

/** Wait until host:port accepts TCP connections; fail early if proc exits. */
async function waitForPort(proc: Proc, host: string, port: number, diag: () => string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (hasExited(proc.child)) throw new Error(`server exited before listening on ${port}:\n${diag()}`);
    if (await canConnect(host, port)) return;
    if (Date.now() >= deadline) {
      await terminate(proc);
      throw new Error(`server did not listen on ${host}:${port} within ${START_TIMEOUT_MS} ms:\n${diag()}`);
    }
    await sleep(50);
  }
}

function readIfExists(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** pids whose parent is ppid, from /proc/<pid>/stat. */
function childPids(ppid: number): number[] {
  const pids: number[] = [];
  for (const ent of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(ent)) continue;
    const stat = readIfExists(`/proc/${ent}/stat`);
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[1]) === ppid) pids.push(Number(ent));
  }
  return pids.sort((a, b) => a - b);
}

export async function startNginx(opts: {
  dir: string;
  files?: Record<string, Buffer>;
  ipv6?: boolean;
  workers?: number;
  cert?: CertPair;
  /** Offer HTTP/2 by ALPN on the listen line (nginx built --with-http_v2_module, as Debian's is). */
  http2?: boolean;
  /** More directives inside the server block (locations, gzip …). */
  extraConf?: string;
  /** Connections per worker (default 512); the workers' fd limit is raised to fit. */
  workerConnections?: number;
  /** Parameters of the access_log directive, e.g. "buffer=256k flush=200ms" (a write per request without). */
  accessLogParams?: string;
}): Promise<NginxServer> {
  const { dir } = opts;
  const root = path.join(dir, 'root');
  fs.mkdirSync(path.join(dir, 'tmp'), { recursive: true });
  fs.mkdirSync(root, { recursive: true });
  for (const [rel, data] of Object.entries(opts.files ?? {})) {
    const file = path.resolve(root, rel);
    if (!file.startsWith(root + path.sep)) throw new Error(`startNginx: bad file name ${rel}`);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, data);
  }
  const { cert, key } = opts.cert ?? (await makeCert(dir));
  const port = await freePort();
  const accessLog = path.join(dir, 'access.log');
  const errorLog = path.join(dir, 'error.log');
  const q = (p: string): string => JSON.stringify(p);
  const conf = `# generated by test/lib/servers.ts
daemon off;
master_process on;
worker_processes ${opts.workers ?? 1};
${process.getuid?.() === 0 ? 'user root;' : ''}
pid ${q(path.join(dir, 'nginx.pid'))};
error_log ${q(errorLog)} warn;
worker_rlimit_nofile ${2 * (opts.workerConnections ?? 512) + 64};
events { worker_connections ${opts.workerConnections ?? 512}; }
http {
  log_format capture '$remote_addr:$remote_port $request_method $request_uri $status $body_bytes_sent '
                     '$connection $connection_requests';
  access_log ${q(accessLog)} capture${opts.accessLogParams ? ` ${opts.accessLogParams}` : ''};
  client_body_temp_path ${q(path.join(dir, 'tmp/body'))};
  proxy_temp_path ${q(path.join(dir, 'tmp/proxy'))};
  fastcgi_temp_path ${q(path.join(dir, 'tmp/fastcgi'))};
  uwsgi_temp_path ${q(path.join(dir, 'tmp/uwsgi'))};
  scgi_temp_path ${q(path.join(dir, 'tmp/scgi'))};
  types {}
  default_type application/octet-stream;
  sendfile off;
  keepalive_timeout 65s;
  keepalive_requests 10000;
  server {
    listen 127.0.0.1:${port} ssl${opts.http2 ? ' http2' : ''};
${opts.ipv6 ? `    listen [::1]:${port} ssl${opts.http2 ? ' http2' : ''};\n` : ''}    server_name localhost;
    ssl_certificate ${q(cert)};
    ssl_certificate_key ${q(key)};
    root ${q(root)};
    location / { }
${opts.extraConf ?? ''}
  }
}
`;
  const confFile = path.join(dir, 'nginx.conf');
  fs.writeFileSync(confFile, conf);
  const proc = spawnTracked(NGINX, ['-p', dir, '-c', confFile, '-e', errorLog], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const pid = proc.child.pid;
  if (pid === undefined) throw new Error(`cannot spawn ${NGINX}`);
  const workerPids = (): number[] => childPids(pid);
  const stop = async (): Promise<void> => {
    const workers = workerPids();
    await terminate(proc);
    for (const w of workers) {
      // only if the master had to be SIGKILLed and left an orphaned worker behind
      if (readIfExists(`/proc/${w}/cmdline`).startsWith('nginx: worker')) {
        try {
          process.kill(w, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  };
  live.set(pid, stop);
  const diag = (): string => `${proc.output()}\n--- ${errorLog} ---\n${readIfExists(errorLog)}`;
  await waitForPort(proc, '127.0.0.1', port, diag);
  return { port, pid, workerPids, accessLog, root, stop };
}

export async function startSServer(opts: {
  dir: string;
  cert: string;
  key: string;
  mode: 'www' | 'WWW' | 'rev';
}): Promise<Server> {
  const port = await freePort();
  const args = ['s_server', '-accept', `127.0.0.1:${port}`, '-cert', opts.cert, '-key', opts.key, `-${opts.mode}`];
  const proc = spawnTracked('openssl', args, { cwd: opts.dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const pid = proc.child.pid;
  if (pid === undefined) throw new Error('cannot spawn openssl');
  await waitForPort(proc, '127.0.0.1', port, proc.output);
  return { port, pid, stop: () => terminate(proc) };
}

function libFile(name: string): string {
  // compiled code runs from dist/test/lib; the python scripts stay in test/lib
  const candidates = [path.join(__dirname, name), path.resolve(__dirname, '../../../test/lib', name)];
  const found = candidates.find((f) => fs.existsSync(f));
  if (found === undefined) throw new Error(`${name} not found in ${candidates.join(', ')}`);
  return found;
}

export function startPyServer(opts: {
  dir: string;
  cert: string;
  key: string;
  ipv6?: boolean;
  /** Listen address (overrides ipv6): '::' is dual-stack, IPv4 clients appear v4-mapped. */
  host?: string;
}): Promise<Server> {
  const args = ['--port', '0', '--cert', opts.cert, '--key', opts.key];
  if (opts.host) args.push('--host', opts.host);
  else if (opts.ipv6) args.push('--host', '::1');
  return startPyScript('tls_server.py', args, opts.dir);
}

/** An HTTPS forward proxy on 127.0.0.1 (tls_proxy.py): TLS, then CONNECT to a loopback port. */
export function startPyProxy(opts: { dir: string; cert: string; key: string }): Promise<Server> {
  return startPyScript('tls_proxy.py', ['--port', '0', '--cert', opts.cert, '--key', opts.key], opts.dir);
}

/** Runs one of test/lib's python servers; it prints "READY <port>" once it listens. */
async function startPyScript(script: string, args: string[], cwd: string): Promise<Server> {
  const proc = spawnTracked(PYTHON, [libFile(script), ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  const pid = proc.child.pid;
  if (pid === undefined) throw new Error(`cannot spawn ${PYTHON}`);
  const stop = (): Promise<void> => terminate(proc);
  try {
    const port = await waitFor(
      () => {
        const m = /^READY (\d+)$/m.exec(proc.output());
        if (m) return Number(m[1]);
        if (hasExited(proc.child)) throw new Error(`${script} exited:\n${proc.output()}`);
        return undefined;
      },
      { timeoutMs: START_TIMEOUT_MS, what: `${script} READY` },
    );
    return { port, pid, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/**
 * A server program of our own (Go, node, gnutls-serv) started with `args`, listening on
 * 127.0.0.1:`port`; ready when the port accepts connections.
 */
export async function startServer(cmd: string, args: string[], port: number, dir: string): Promise<Server> {
  const proc = spawnTracked(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const pid = proc.child.pid;
  if (pid === undefined) throw new Error(`cannot spawn ${cmd}`);
  try {
    await waitForPort(proc, '127.0.0.1', port, proc.output);
  } catch (e) {
    await terminate(proc);
    throw e;
  }
  return { port, pid, stop: () => terminate(proc) };
}

/** A long-lived python client (test/lib/requester.py): one GET per get(), on a new connection. */
export interface Requester {
  pid: number;
  /** Makes one request and resolves with the response's status and body length. */
  get(urlPath: string): Promise<{ status: number; bytes: number }>;
  stop(): Promise<void>;
}

export async function startRequester(port: number, env?: NodeJS.ProcessEnv): Promise<Requester> {
  const proc = spawnTracked(PYTHON, [libFile('requester.py'), String(port)], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  const pid = proc.child.pid;
  if (pid === undefined) throw new Error(`cannot spawn ${PYTHON}`);
  let done = 0;
  const answers = (): RegExpMatchArray[] => [...proc.output().matchAll(/^DONE (\d+) (\d+)$/gm)];
  const alive = (): void => {
    if (hasExited(proc.child)) throw new Error(`requester.py exited:\n${proc.output()}`);
  };
  await waitFor(() => /^READY$/m.test(proc.output()) || alive(), {
    timeoutMs: START_TIMEOUT_MS,
    what: 'requester.py READY',
  });
  return {
    pid,
    get: async (urlPath) => {
      const n = ++done;
      proc.child.stdin!.write(`${urlPath}\n`);
      const m = await waitFor(() => answers()[n - 1] ?? alive(), {
        what: `requester.py's answer to ${urlPath}`,
      });
      return { status: Number(m[1]), bytes: Number(m[2]) };
    },
    stop: async () => {
      proc.child.stdin!.end();
      if (!(await within(proc.exited, 5000))) await terminate(proc);
    },
  };
}

/** A file of test/lib (the compiled tests run from dist/test). */
export function testLibFile(name: string): string {
  return libFile(name);
}

export function curl(url: string, extra: string[] = [], opts: RunOptions = {}): Promise<RunResult> {
  // -g: no URL globbing, so [::1] is taken literally; --noproxy: never leave loopback
  return run('curl', ['-sS', '-k', '--http1.1', '-g', '--noproxy', '*', ...extra, url], opts);
}

export function pyClient(
  url: string,
  opts: { method?: 'GET' | 'POST'; body?: Buffer } & RunOptions = {},
): Promise<RunResult> {
  const method = opts.method ?? (opts.body ? 'POST' : 'GET');
  return run(PYTHON, [libFile('tls_client.py'), '--url', url, '--method', method], {
    ...opts,
    input: opts.body ?? opts.input,
  });
}
