// ready-file.test.ts: --ready-file, the readiness check of deploy/kubernetes/daemonset.yaml: the
// file appears once capture is live (mode 0600, the ready frame as JSON, after the startup
// line), a stale one is replaced, it is gone after SIGTERM, and --ipc refuses it.
import * as assert from 'assert';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { requireKernel } from '../lib/kernel';
import { run, tmpDir, waitFor } from '../lib/servers';
import { CLI } from '../lib/paths';

describe('--ready-file (kernel)', function () {
  let dir: string;
  before(function () {
    requireKernel(this);
    dir = tmpDir('https-capture-ready-');
  });
  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('appears (0600, the ready frame) once capture is live, replaces a stale one, and is removed at SIGTERM', async function () {
    this.timeout(90_000);
    const file = path.join(dir, 'ready');
    fs.writeFileSync(file, 'stale\n', { mode: 0o644 });
    const child = spawn(process.execPath, [CLI, '--no-color', '--comm', 'no-such-comm', '--ready-file', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await waitFor(() => child.exitCode !== null || (fs.existsSync(file) && fs.readFileSync(file, 'utf8') !== 'stale\n'), { timeoutMs: 60_000, what: 'the ready file' });
      assert.strictEqual(child.exitCode, null, err);
      const ready = JSON.parse(fs.readFileSync(file, 'utf8')) as { type: string; libraries: number; failed: number; ts_ns: string };
      assert.strictEqual(ready.type, 'ready');
      assert.ok(ready.libraries >= 1 && /^\d+$/.test(ready.ts_ns), JSON.stringify(ready));
      assert.strictEqual(fs.statSync(file).mode & 0o777, 0o600);
      await waitFor(() => err.includes('capturing TLS plaintext'), { timeoutMs: 5000, what: 'the startup line' });
    } finally {
      child.kill('SIGTERM');
    }
    assert.strictEqual(await exited, 0, err);
    assert.ok(!fs.existsSync(file), 'removed at exit');
  });

  it('is refused with --ipc (its host reads the ready frame)', async () => {
    const r = await run(process.execPath, [CLI, '--ipc', '--ready-file', path.join(dir, 'x')]);
    assert.strictEqual(r.code, 2);
    assert.match(r.stderr.toString(), /--ready-file is for people/);
    assert.ok(!fs.existsSync(path.join(dir, 'x')));
  });
});
