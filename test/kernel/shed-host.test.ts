// shed-host.test.ts: --ipc behind a host that stops reading (apidump busy): the helper drains
// the ring buffer into its writer's queue, so the ring never fills and the kernel alone would
// never shed; the queue would fill and drop whole segments, heads with bodies. The queue's own
// fill must have the kernel shed (helper/session/session.ts checkWriter): every exchange
// reaches the host with its request line, status and headers, nothing is dropped, and every
// body byte is either delivered or counted as missing (issue #15).
import * as assert from 'assert';
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { replayFrames } from '../../helper/commands/replay';
import { HttpExchange, Session } from '../../helper/http/exchanges';
import { RawFrame } from '../../helper/protocol/wire';
import { requireKernel } from '../lib/kernel';
import { curl, NginxServer, startNginx, tmpDir, waitFor } from '../lib/servers';
import { CLI } from '../lib/paths';
import { cleanUpAfter } from '../lib/hooks';

const MiB = 1 << 20;
const BODY = 4 * MiB;
const CURLS = 4;
const GETS = 8;

describe('--ipc behind a host that stops reading (kernel, nginx and curl)', function () {
  let dir: string;
  let nginx: NginxServer;
  let helper: ChildProcess | undefined;

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-shed-host-');
    nginx = await startNginx({ dir, files: { 'big.bin': Buffer.alloc(BODY, 'y') } });
  });

  afterEach(() => {
    helper?.kill('SIGKILL'); // a failed test must not leave a privileged helper running
    helper = undefined;
  });

  cleanUpAfter(() => dir);

  it(`${CURLS} curls x ${GETS} GETs of 4 MiB (256 MiB at both ends, 4 x the queue) while the host reads nothing: every exchange, nothing dropped`, async function () {
    this.timeout(120_000);
    const child = spawn(process.execPath, [CLI, '--ipc', '--comm', 'nginx,curl', '--port', String(nginx.port)], { stdio: ['pipe', 'pipe', 'pipe'] });
    helper = child;
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await waitFor(() => err.includes('capturing TLS plaintext'), { timeoutMs: 30_000, what: `the helper to attach (stderr: ${err})` });
    // stdout is not read until the load is over: the pipe fills, then the writer's queue.
    const url = `https://127.0.0.1:${nginx.port}/big.bin`;
    const args = ['-w', '%{http_code} %{size_download}\\n'];
    for (let i = 0; i < GETS; i++) args.push('-o', '/dev/null');
    const runs = await Promise.all(Array.from({ length: CURLS }, () => curl(url, [...args, ...Array<string>(GETS - 1).fill(url)])));
    for (const r of runs) {
      assert.strictEqual(r.code, 0, r.stderr.toString());
      assert.deepStrictEqual(r.stdout.toString().trim().split('\n'), Array<string>(GETS).fill(`200 ${BODY}`));
    }
    const chunks: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => chunks.push(b));
    child.stdin!.end(); // the host is done: the helper drains, says bye and exits
    assert.strictEqual(await exited, 0, err);
    helper = undefined;
    assert.match(err, /the host reads frames slower than the traced programs move bytes/);

    const file = path.join(dir, 'frames');
    fs.writeFileSync(file, Buffer.concat(chunks), { mode: 0o600 });
    const exchanges: HttpExchange[] = [];
    let bye: RawFrame | undefined;
    const session = new Session((e) => void (e.type === 'exchange' && exchanges.push(e.exchange)));
    for await (const f of replayFrames(file)) {
      if (f.type === 'bye') bye = f;
      session.push(f);
    }
    session.end();
    assert.ok(bye, 'a bye frame');
    const k = bye.kernel as Record<string, number>;
    const w = bye.writer as Record<string, number>;
    process.stderr.write(`      kernel: ${k.bytes_moved} moved, ${k.bytes_captured} captured, ${k.bytes_shed} shed, ${k.bytes_lost} lost; writer: ${w.dropped_bytes} dropped, ${(w.bytes_written / MiB).toFixed(0)} MiB written\n`);
    assert.strictEqual(w.dropped_bytes, 0, 'nothing dropped from the writer queue');
    assert.strictEqual(k.bytes_lost, 0, 'nothing lost in the ring buffer');
    assert.ok(k.bytes_shed > 2 * BODY * CURLS * GETS * 0.5, `most body bytes were shed: ${k.bytes_shed}`);

    const headed = (x: HttpExchange): boolean => x.request?.method === 'GET' && x.request.target === '/big.bin' && x.request.headers.length >= 2 && x.response?.status === 200 && x.response.headers.length >= 3;
    const curlPids = new Set(runs.map((r) => r.pid));
    for (const p of curlPids) assert.strictEqual(exchanges.filter((x) => x.conn.pid === p && headed(x)).length, GETS, `curl ${p}: ${GETS} exchanges with request line, status and headers`);
    const server = exchanges.filter((x) => nginx.workerPids().includes(x.conn.pid));
    assert.strictEqual(server.filter(headed).length, CURLS * GETS, "nginx's side: every exchange with request line, status and headers");
    for (const x of exchanges.filter(headed)) assert.strictEqual(x.response!.body.length + x.response!.bodyMissing, BODY, 'body: delivered + missing = its length');
  });
});
