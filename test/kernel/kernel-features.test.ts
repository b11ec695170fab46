// kernel-features.test.ts: the preflight's verdict on the running kernel agrees with the
// kernel. Where the BTF has every feature the BPF program uses, the program loads and the
// command starts; where it lacks one (Debian 11's 5.10 in scripts/test-kernels.sh --kernel
// 5.10), the program indeed fails to load, and the command says why in one line naming the
// feature, never the verifier's log. Runs on every kernel; its verdict is printed.
import * as assert from 'assert';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import { BridgeError, kernelFeatureProblem } from '../../helper/errors';
import { Capture } from '../../helper/kernel/capture';
import { CLI } from '../lib/paths';

function runCli(args: string[], timeoutMs: number): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, '--no-color', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

describe('kernel features: the preflight agrees with the running kernel (root, real BPF load)', function () {
  let problem: ReturnType<typeof kernelFeatureProblem>;

  before(function () {
    if (process.getuid?.() !== 0 || !fs.existsSync('/sys/kernel/btf/vmlinux')) {
      if (process.env.CI === 'true') throw new Error('kernel-features.test needs root and /sys/kernel/btf/vmlinux under CI=true');
      this.skip();
    }
    problem = kernelFeatureProblem(fs.readFileSync('/sys/kernel/btf/vmlinux'), os.release());
    process.stdout.write(`      ${os.release()}: ${problem ? `preflight: ${problem.message}` : 'preflight: every BPF feature the program uses is in the BTF'}\n`);
  });

  it('no feature missing: the program loads and attaches; a feature missing: loading it fails too', async function () {
    let loadError: unknown;
    try {
      const c = new Capture({});
      await c.stop();
    } catch (e) {
      loadError = e;
    }
    if (!problem) {
      assert.strictEqual(loadError, undefined, `the preflight found every feature, but loading failed: ${String(loadError)}`);
    } else {
      assert.ok(loadError instanceof BridgeError, `the preflight said "${problem.message}", but the program ${loadError ? `failed otherwise: ${String(loadError)}` : 'loaded'}`);
      process.stdout.write(`      loading anyway fails as predicted: ${loadError.op} ${loadError.code}: ${loadError.message.split('\n')[0]}\n`);
    }
  });

  it('the command: starts and stops after --duration, or exits 1 with the cause and the fix, two lines', async function () {
    const r = await runCli(['--duration', '1'], 60000);
    if (!problem) {
      assert.strictEqual(r.code, 0, r.stderr);
      assert.ok(!r.stderr.includes('error:'), r.stderr);
      return;
    }
    assert.strictEqual(r.code, 1, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.strictEqual(lines.length, 2, r.stderr);
    assert.strictEqual(lines[0], `https-capture: error: ${problem.message}`);
    assert.match(lines[1]!, /^ {2}fix: run it on Linux \d+\.\d+ or later/);
    process.stdout.write(`      ${lines.join('\n      ')}\n`);
  });
});
