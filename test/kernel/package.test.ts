// package.test.ts: the tarball `npm pack` makes installs and captures on a PATH with no
// compiler. It packs this clone (prepack: scripts/pack.sh), installs the tarball into a fresh
// prefix with npm's --ignore-scripts (nothing is built at install: no binding.gyp is packed)
// and a PATH of node, npm, a shell, ldconfig and curl only (no clang, gcc, make, bpftool,
// python3), runs the installed `https-capture` and captures curl <-> nginx from it.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { spawn } from 'child_process';
import { requireKernel } from '../lib/kernel';
import { curl, NginxServer, run, startNginx, tmpDir, waitFor } from '../lib/servers';
import { ROOT } from '../lib/paths';
import { cleanUpAfter } from '../lib/hooks';

const TOOLS = ['node', 'sh', 'env', 'ldconfig', 'curl'];

describe('package: npm pack, install without a compiler, capture (kernel, npm, nginx, curl)', function () {
  let dir: string;
  let nginx: NginxServer;
  const text = 'served to an installed https-capture\n'.repeat(40);

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-pkg-');
    nginx = await startNginx({ dir, files: { 'p.txt': Buffer.from(text) } });
  });
  cleanUpAfter(() => dir);

  it('packs, installs into a clean prefix with no compiler on PATH, and captures curl <-> nginx', async function () {
    this.timeout(300_000);
    const pack = await run('npm', ['pack', '--loglevel=error', '--pack-destination', dir], { cwd: ROOT, timeoutMs: 240_000 });
    assert.strictEqual(pack.code, 0, pack.stderr.toString());
    const tgz = path.join(dir, pack.stdout.toString().trim().split('\n').pop()!);
    const listing = (await run('tar', ['tzf', tgz])).stdout.toString().split('\n');
    for (const f of ['package/prebuilds/linux-x64/https-capture.node', 'package/prebuilds/bpf/capture.bpf.o', 'package/dist/helper/cli.js', 'package/schemas/frame.schema.json']) assert.ok(listing.includes(f), `${f} is packed`);
    assert.ok(!listing.some((f) => /binding\.gyp|\.cc$|\.bpf\.c$|\/test\//.test(f)), 'no sources to build, no tests');
    console.log(`      tarball ${fs.statSync(tgz).size} bytes`);

    const bin = path.join(dir, 'bin');
    fs.mkdirSync(bin);
    for (const t of TOOLS) {
      const which = await run('sh', ['-c', `command -v ${t} || echo /sbin/${t}`]);
      fs.symlinkSync(which.stdout.toString().trim(), path.join(bin, t));
    }
    fs.symlinkSync(fs.realpathSync((await run('sh', ['-c', 'command -v npm'])).stdout.toString().trim()), path.join(bin, 'npm'));
    // What npm needs to reach the registry stays (its config, the CA bundle and proxy of a network
    // that intercepts TLS): without them npm waits on the registry until the timeout when its cache
    // lacks a package's metadata, as on a fresh machine. Only the PATH is what the test is about.
    const passed = Object.entries(process.env).filter(([k]) => /^(npm_config_.*|NODE_EXTRA_CA_CERTS|SSL_CERT_FILE|SSL_CERT_DIR|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY)$/.test(k));
    const env = { ...Object.fromEntries(passed), PATH: bin, HOME: process.env.HOME ?? '/root' };
    const none = await run('sh', ['-c', 'for t in clang gcc cc make bpftool python3 node-gyp; do command -v $t; done; true'], { env });
    assert.strictEqual(none.stdout.toString(), '', 'no compiler on the PATH');
    const prefix = path.join(dir, 'prefix');
    const t0 = Date.now();
    const inst = await run('npm', ['install', '-g', '--prefer-offline', '--ignore-scripts', '--no-audit', '--no-fund', '--prefix', prefix, tgz], { env, timeoutMs: 240_000 });
    assert.strictEqual(inst.code, 0, inst.stderr.toString());
    console.log(`      installed in ${Date.now() - t0} ms`);

    const helper = spawn(path.join(prefix, 'bin', 'https-capture'), ['--format', 'jsonl', '--port', String(nginx.port), '--comm', 'curl'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    helper.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    helper.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    const exited = new Promise<number | null>((resolve) => helper.once('exit', (code) => resolve(code)));
    try {
      await waitFor(() => err.includes('capturing TLS plaintext') || helper.exitCode !== null, { timeoutMs: 60_000, what: 'the installed helper to attach' });
      assert.ok(err.includes('capturing TLS plaintext'), err);
      const r = await curl(`https://127.0.0.1:${nginx.port}/p.txt`, ['-o', '/dev/null']);
      assert.strictEqual(r.code, 0, r.stderr.toString());
      await waitFor(() => out.includes('/p.txt'), { timeoutMs: 20_000, what: 'the exchange' });
    } finally {
      helper.kill('SIGTERM');
    }
    assert.strictEqual(await exited, 0, err);
    const ex = out.trim().split('\n').map((l) => JSON.parse(l) as { type: string; request?: { url: string }; response?: { body: { data: string } } }).filter((l) => l.type === 'exchange' && l.request?.url.endsWith('/p.txt'));
    assert.strictEqual(ex.length, 1, out.slice(0, 2000));
    assert.strictEqual(ex[0]!.response!.body.data, text);
  });
});
