// go.test.ts (kernel): runs the Go package for apidump (integrations/apidump) and its tests, which spawn
// the real helper (dist/helper/cli.js) and drive curl and python on 127.0.0.1. Built offline
// from Debian's golang-go and golang-github-vmihailenco-msgpack.v5-dev by offline.sh. Without
// go: skipped loudly, or failed under CI=true.
import * as assert from 'assert';
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { requireKernel } from '../lib/kernel';
import { ROOT } from '../lib/paths';

const PKG = path.join(ROOT, 'integrations', 'apidump');
const MSGPACK = '/usr/share/gocode/src/github.com/vmihailenco/msgpack/v5';

function goProblem(): string | undefined {
  if (spawnSync('go', ['version']).error) return 'go is not installed';
  if (!fs.existsSync(MSGPACK)) return `${MSGPACK} is missing`;
  return undefined;
}

describe('Go package for apidump (integrations/apidump)', function () {
  this.timeout(180_000);

  before(function () {
    // Its tests spawn the real helper and capture curl and python: the kernel path.
    requireKernel(this);
    const problem = goProblem();
    if (!problem) return;
    if (process.env.CI === 'true') throw new Error(`Go tests cannot run under CI=true: ${problem}`);
    process.stderr.write(
      `\n  !!! SKIPPING the Go tests: ${problem}\n  !!! apt-get install -y golang-go golang-github-vmihailenco-msgpack.v5-dev\n\n`,
    );
    this.skip();
  });

  it('go vet and go test ./... pass against the real helper', async function () {
    const run = (args: string[]): Promise<{ code: number | null; out: string }> =>
      new Promise((resolve, reject) => {
        const child = spawn(path.join(PKG, 'offline.sh'), args, { cwd: PKG, env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
        const chunks: Buffer[] = [];
        child.stdout.on('data', (b: Buffer) => chunks.push(b));
        child.stderr.on('data', (b: Buffer) => chunks.push(b));
        child.once('error', reject);
        child.once('close', (code) => resolve({ code, out: Buffer.concat(chunks).toString('utf8') }));
      });
    const vet = await run(['go', 'vet', './...']);
    assert.strictEqual(vet.code, 0, `go vet ./... failed:\n${vet.out}`);
    const test = await run(['go', 'test', '-count=1', '-v', './...']);
    assert.strictEqual(test.code, 0, `go test ./... failed (exit ${test.code}):\n${test.out}`);
    // Go tests that skipped (not root) say so loudly; show those lines.
    const skipped = test.out.split('\n').filter((l) => l.includes('SKIPPED'));
    if (skipped.length) process.stderr.write(`\n  !!! Go tests skipped:\n${skipped.map((l) => `  !!! ${l.trim()}`).join('\n')}\n\n`);
  });
});
