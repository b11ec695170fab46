// cli-record.test.ts: `https-capture --record FILE` without --ipc, through the command: the
// human output is printed as usual and FILE (mode 0600) holds the protocol's frame stream, which
// `https-capture replay` turns back into the same curl exchange.
import * as assert from 'assert';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { replayExchanges, replayFrames } from '../../helper/commands/replay';
import { RawFrame } from '../../helper/protocol/wire';
import { requireKernel } from '../lib/kernel';
import { curl, pattern, run, Server, startPyServer, tmpDir, waitFor, makeCert } from '../lib/servers';
import { CLI } from '../lib/paths';
import { cleanUpAfter } from '../lib/hooks';


describe('https-capture --record (standalone, kernel)', function () {
  let dir: string;
  let py: Server;

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-record-');
    py = await startPyServer({ dir, ...(await makeCert(dir)) });
  });

  cleanUpAfter(() => dir);

  it('prints the capture and saves the same traffic as frames that replay rebuilds', async function () {
    this.timeout(40_000);
    const file = path.join(dir, 'run.frames');
    fs.writeFileSync(file, 'old contents, readable by all');
    fs.chmodSync(file, 0o644);
    const child = spawn(process.execPath, [CLI, '--no-color', '--comm', 'curl', '--record', file, '--validate'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      await waitFor(() => err.includes('capturing TLS plaintext'), { timeoutMs: 20_000, what: `the helper to attach (stderr: ${err})` });
      assert.match(err, /frames into .*run\.frames/);
      const r = await curl(`https://127.0.0.1:${py.port}/bytes/40000?seed=5`, ['-H', 'X-Record: standalone']);
      assert.strictEqual(r.code, 0, r.stderr.toString());
      await waitFor(() => out.includes(`curl[${r.pid}]`) && out.includes('closed'), { what: `the human output of curl ${r.pid} (stdout: ${out})` });
      assert.match(out, /X-Record: standalone/, 'the human output is printed as without --record');
      child.kill('SIGTERM');
      assert.strictEqual(await exited, 0, err);

      assert.strictEqual(fs.statSync(file).mode & 0o777, 0o600, 'the recording is private even though the file existed');
      const frames: RawFrame[] = [];
      for await (const f of replayFrames(file)) frames.push(f);
      assert.strictEqual(frames[0]!.type, 'hello');
      assert.ok(frames.some((f) => f.type === 'process' && f.state === 'attached'), 'process frames for the attached libraries');
      const bye = frames[frames.length - 1]!;
      assert.strictEqual(bye.type, 'bye');
      assert.strictEqual(bye.reason, 'signal');
      assert.ok(frames.some((f) => f.type === 'conn_close' && f.pid === r.pid), "curl's connection is closed in the stream");

      const ex = (await replayExchanges(file)).filter((e) => e.pid === r.pid);
      assert.strictEqual(ex.length, 1);
      assert.strictEqual(ex[0]!.request.url, '/bytes/40000?seed=5');
      assert.ok(ex[0]!.response.body.equals(pattern(40000, 5)), 'the response body, byte for byte');
      assert.ok(ex[0]!.response.body.equals(r.stdout), 'what curl printed');

      // And through the command, as a person replays it.
      const shown = await run(process.execPath, [CLI, 'replay', file]);
      assert.strictEqual(shown.code, 0, shown.stderr.toString());
      assert.match(shown.stdout.toString(), new RegExp(`curl\\[${r.pid}\\] conn \\d+ HTTP/1\\.1 \\(client [^)]+\\)\\n> GET /bytes/40000\\?seed=5 HTTP/1\\.1\\n[^]*> X-Record: standalone\\n`));
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  it('a recording that cannot be created is a one-line error naming the file and a fix', async () => {
    const r = await run(process.execPath, [CLI, '--record', path.join(dir, 'no', 'such', 'dir', 'x.frames'), '--duration', '1']);
    assert.strictEqual(r.code, 1, r.stderr.toString());
    assert.match(r.stderr.toString(), /^https-capture: error: cannot create the recording .*x\.frames: ENOENT\n {2}fix: name a file in a directory you can write to\n$/);
  });
});
