// unsupported-tls.test.ts: a process running TLS code the helper cannot probe (a TLS client
// built with `gcc -static` against Debian's libssl.a and stripped: OpenSSL inside, none of its
// symbols) is reported once, in a `process` frame with state "unsupported" and a reason, and
// once on the standalone command's stderr; its traffic is indeed not captured, while a known
// client next to it is. Also the heuristic (libraries.ts unknownTlsIn) on files of this machine.
import * as assert from 'assert';
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { HelperHost } from '../../helper/host/host';
import { IpcOptions } from '../../helper/commands/ipc';
import { tlsKindIn, unknownTlsIn } from '../../helper/discovery/libraries';
import { RawFrame } from '../../helper/protocol/wire';
import { requireKernel } from '../lib/kernel';
import { CertPair, curl, makeCert, run, Server, startSServer, tmpDir, waitFor } from '../lib/servers';
import { CLI, IPC_CHILD, ROOT } from '../lib/paths';
import { cleanUpAfter } from '../lib/hooks';

const SOURCE = path.join(ROOT, 'test', 'lib', 'static_tls.c');

function startHelper(opts: IpcOptions): HelperHost {
  return new HelperHost({ command: process.execPath, args: [IPC_CHILD, JSON.stringify({ validate: true, ...opts })], validate: true });
}

const unsupported = (frames: RawFrame[]): RawFrame[] => frames.filter((f) => f.type === 'process' && f.state === 'unsupported');

describe('TLS code the helper does not know', function () {
  let dir: string;
  let exe: string;
  let cert: CertPair;
  let server: Server;

  before(async function () {
    dir = tmpDir('https-capture-unsupported-');
    exe = path.join(dir, 'static_tls');
    const cc = await run('gcc', ['-O1', '-static', '-s', '-o', exe, SOURCE, '-lssl', '-lcrypto', '-pthread'], { timeoutMs: 60_000 });
    assert.strictEqual(cc.code, 0, `gcc -static against libssl.a (libssl-dev): ${cc.stderr.toString()}`);
    cert = await makeCert(dir);
  });

  cleanUpAfter(() => dir);

  describe('the heuristic (no kernel)', () => {
    it('a static, stripped OpenSSL client: no known symbols, the TLS 1.3 key-schedule labels in its data', () => {
      assert.strictEqual(tlsKindIn(exe), null, 'no planner knows it');
      assert.match(unknownTlsIn(exe) ?? '', /^TLS code the helper does not know \(its data has the TLS 1\.3 key-schedule labels "c hs traffic"/);
    });

    it('programs whose TLS is in a shared library, and programs without TLS, are not reported', () => {
      for (const f of ['/usr/bin/curl', '/usr/bin/openssl', '/usr/bin/wget', '/bin/ls', '/usr/bin/gcc']) {
        assert.strictEqual(unknownTlsIn(f), undefined, f);
      }
    });

    it('a file with the labels that is not ELF, and a missing file, are not reported', () => {
      const text = path.join(dir, 'labels.txt');
      fs.writeFileSync(text, 'c hs traffic s hs traffic c ap traffic s ap traffic master secret key expansion');
      assert.strictEqual(unknownTlsIn(text), undefined);
      assert.strictEqual(unknownTlsIn(path.join(dir, 'missing')), undefined);
    });
  });

  describe('kernel', function () {
    let host: HelperHost | undefined;
    let cli: ChildProcess | undefined;
    let sleeper: ChildProcess | undefined;

    before(async function () {
      requireKernel(this);
      server = await startSServer({ dir, ...cert, mode: 'www' });
    });

    afterEach(async () => {
      await host?.close();
      host = undefined;
      if (cli && cli.exitCode === null && cli.signalCode === null) cli.kill('SIGKILL');
      cli = undefined;
      if (sleeper && sleeper.exitCode === null && sleeper.signalCode === null) sleeper.kill('SIGKILL');
      sleeper = undefined;
    });

    it('--ipc: one process frame (unsupported) for two runs of it, none of its bytes; curl next to it captured', async () => {
      host = startHelper({});
      const frames: RawFrame[] = [];
      host.on('frame', (f) => frames.push(f));
      await host.ready;
      await waitFor(() => frames.some((f) => f.type === 'process' && f.state === 'attached'), { what: 'a process frame (attached)' });

      const first = await run(exe, [String(server.port)]);
      assert.strictEqual(first.code, 0, first.stderr.toString());
      assert.match(first.stdout.toString(), /^HTTP\/1\.0 200 ok\r\n/, 'it did talk TLS');
      const second = await run(exe, [String(server.port)]);
      assert.strictEqual(second.code, 0, second.stderr.toString());
      const c = await curl(`https://127.0.0.1:${server.port}/`);
      assert.strictEqual(c.code, 0, c.stderr.toString());
      await waitFor(() => frames.some((f) => f.type === 'segment' && f.pid === c.pid && f.dir === 1), { what: "curl's response" });
      await waitFor(() => unsupported(frames).length > 0, { what: 'the unsupported process frame', timeoutMs: 5000 });
      await host.close();
      host = undefined;

      const reports = unsupported(frames);
      assert.strictEqual(reports.length, 1, `reported once: ${reports.map((f) => `${f.pid} ${f.library}`).join(', ')}`);
      const r = reports[0]!;
      assert.strictEqual(r.pid, first.pid, 'with the first process that ran it');
      assert.strictEqual(r.library, exe);
      assert.strictEqual(r.kind, 'unknown');
      assert.deepStrictEqual(r.functions, []);
      assert.match(String(r.reason), /TLS 1\.3 key-schedule labels .* its TLS traffic is not captured$/);
      // The reason is true: nothing of either run was captured.
      assert.strictEqual(frames.filter((f) => f.type === 'segment' && (f.pid === first.pid || f.pid === second.pid)).length, 0);
    });

    it('a process running it before the helper starts is reported at the start', async () => {
      sleeper = spawn(exe, [String(server.port), '30'], { stdio: ['ignore', 'pipe', 'ignore'] });
      let out = '';
      sleeper.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      await waitFor(() => out.startsWith('HTTP/1.0 200 ok'), { what: 'the static client to finish its exchange' });
      host = startHelper({});
      const frames: RawFrame[] = [];
      host.on('frame', (f) => frames.push(f));
      await host.ready;
      await waitFor(() => unsupported(frames).length > 0, { what: 'the unsupported process frame', timeoutMs: 10_000 });
      const reports = unsupported(frames);
      assert.strictEqual(reports.length, 1);
      assert.strictEqual(reports[0]!.pid, sleeper.pid);
      assert.strictEqual(reports[0]!.library, exe);
    });

    it('standalone: said once on stderr, for two runs', async () => {
      cli = spawn(process.execPath, [CLI, '--no-color'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      cli.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      cli.stdout!.resume();
      await waitFor(() => err.includes('capturing TLS plaintext'), { timeoutMs: 20_000, what: `the helper to attach (stderr: ${err})` });
      const first = await run(exe, [String(server.port)]);
      await run(exe, [String(server.port)]);
      const line = `https-capture: process ${first.pid} runs ${exe}: TLS code the helper does not know`;
      await waitFor(() => err.includes(line), { timeoutMs: 5000, what: `"${line}" (stderr: ${err})` });
      const exited = new Promise((resolve) => cli!.once('exit', resolve));
      cli.kill('SIGINT');
      await exited;
      const lines = err.split('\n').filter((l) => l.includes(`runs ${exe}:`));
      assert.strictEqual(lines.length, 1, lines.join('\n'));
      assert.match(lines[0]!, /its TLS traffic is not captured$/);
    });
  });
});
