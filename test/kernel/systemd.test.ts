// systemd.test.ts: deploy/systemd/https-capture.service, exercised from the unit file itself.
// PID 1 here is not systemd, so systemd-run cannot start it. Instead the test reads the unit's
// [Service] lines and builds the same process systemd would: the user (DynamicUser: an unused
// uid picked by systemd; 65534 stands in, an unprivileged uid that owns nothing), the ambient,
// inheritable and bounding capability sets and no_new_privs (setpriv: the same prctl/capset calls
// systemd makes), LimitCORE (prlimit), UMask, PrivateNetwork (unshare --net), StateDirectory
// (a 0700 directory of that user, in $STATE_DIRECTORY) and ExecStart, with the installed command
// replaced by this clone's dist/helper/cli.js. It captures curl <-> nginx into the unit's
// output file, stops it with KillSignal within TimeoutStopSec, and checks what the process had.
// The remaining hardening lines need systemd's mount namespaces: `systemd-analyze verify` checks
// that systemd 252 accepts them, not that they hold.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { requireKernel } from '../lib/kernel';
import { curl, NginxServer, run, startNginx, tmpDir, waitFor } from '../lib/servers';
import { spawn } from 'child_process';
import { ROOT, CLI } from '../lib/paths';
import { cleanUpAfter } from '../lib/hooks';

const UNIT = path.join(ROOT, 'deploy', 'systemd', 'https-capture.service');
const STAND_IN_UID = 65534;
const BITS: Record<string, number> = { CAP_SYS_PTRACE: 19, CAP_SYS_ADMIN: 21, CAP_PERFMON: 38, CAP_BPF: 39 };

/** [Service] keys of a unit file; a key given several times keeps every value, in order. */
function serviceSection(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) {
      section = s[1]!;
      continue;
    }
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (section === 'Service' && kv) out.set(kv[1]!, [...(out.get(kv[1]!) ?? []), kv[2]!]);
  }
  return out;
}

function one(unit: Map<string, string[]>, key: string): string {
  const v = unit.get(key);
  assert.ok(v && v.length === 1, `the unit sets ${key} once`);
  return v[0]!;
}

function capMask(names: string[]): bigint {
  return names.reduce((m, c) => m | (1n << BigInt(BITS[c] ?? assert.fail(`unexpected capability ${c}`))), 0n);
}

function status(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const l of fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const m = /^(\w+):\s+(.*)$/.exec(l);
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

describe('systemd unit: deploy/systemd/https-capture.service run with its own properties (kernel, setpriv, nginx, curl)', function () {
  let dir: string;
  let nginx: NginxServer;
  const text = 'hello from nginx through a systemd unit\n'.repeat(50);

  before(async function () {
    requireKernel(this);
    for (const tool of ['setpriv', 'prlimit', 'unshare']) {
      const r = await run(tool, ['--version']);
      if (r.code !== 0) throw new Error(`${tool} (util-linux) is needed for this test: apt-get install util-linux`);
    }
    dir = tmpDir('https-capture-systemd-');
    fs.chmodSync(dir, 0o755);
    nginx = await startNginx({ dir, files: { 's.txt': Buffer.from(text) } });
  });
  cleanUpAfter(() => dir);

  it('systemd-analyze verify accepts the unit (ExecStart pointed at this clone)', async function () {
    this.timeout(30_000);
    const probe = await run('systemd-analyze', ['--version']);
    if (probe.code !== 0) this.skip();
    const copy = path.join(dir, 'https-capture.service');
    fs.writeFileSync(copy, fs.readFileSync(UNIT, 'utf8').replace(/^ExecStart=\S+/m, `ExecStart=${process.execPath} ${CLI}`));
    const r = await run('systemd-analyze', ['verify', copy]);
    const complaints = r.stderr.toString().split('\n').filter((l) => l.includes('https-capture.service'));
    assert.strictEqual(r.code, 0, r.stderr.toString());
    assert.deepStrictEqual(complaints, [], 'no warning about the unit');
  });

  it('captures curl <-> nginx into its StateDirectory as an unprivileged user with exactly its two capabilities', async function () {
    this.timeout(90_000);
    const unit = serviceSection(fs.readFileSync(UNIT, 'utf8'));
    assert.strictEqual(one(unit, 'DynamicUser'), 'yes');
    const ambient = one(unit, 'AmbientCapabilities').split(/\s+/);
    const bounding = one(unit, 'CapabilityBoundingSet').split(/\s+/);
    assert.deepStrictEqual(ambient.sort(), ['CAP_SYS_ADMIN', 'CAP_SYS_PTRACE'], 'the set docs/security.md measures');
    const caps = (names: string[]): string => ['-all', ...names.map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`)].join(',');
    const nnp = one(unit, 'NoNewPrivileges') === 'yes';
    const umask = one(unit, 'UMask');
    const core = one(unit, 'LimitCORE');
    const stateDir = path.join(dir, 'state', one(unit, 'StateDirectory'));
    fs.mkdirSync(stateDir, { recursive: true, mode: 0o755 });
    fs.chmodSync(path.dirname(stateDir), 0o755);
    fs.chownSync(stateDir, STAND_IN_UID, STAND_IN_UID);
    fs.chmodSync(stateDir, parseInt(one(unit, 'StateDirectoryMode'), 8));
    const exec = one(unit, 'ExecStart').replace(/\$\{STATE_DIRECTORY\}/g, stateDir).split(/\s+/);
    assert.ok(exec[0]!.endsWith('/https-capture'), `ExecStart runs https-capture: ${exec[0]}`);
    const killSignal = one(unit, 'KillSignal') as NodeJS.Signals;
    const stopMs = Number(one(unit, 'TimeoutStopSec')) * 1000;
    const output = exec[exec.indexOf('--output') + 1]!;

    const argv = [
      ...(one(unit, 'PrivateNetwork') === 'yes' ? ['unshare', '--net'] : []),
      'prlimit', `--core=${core}:${core}`,
      'sh', '-c', `umask ${umask} && exec "$@"`, 'sh',
      'setpriv', `--reuid=${STAND_IN_UID}`, `--regid=${STAND_IN_UID}`, '--clear-groups', ...(nnp ? ['--no-new-privs'] : []),
      `--inh-caps=${caps(ambient)}`, `--ambient-caps=${caps(ambient)}`, `--bounding-set=${caps(bounding)}`,
      process.execPath, CLI, ...exec.slice(1),
    ];
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH, STATE_DIRECTORY: stateDir } });
    let stderr = '';
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    try {
      await waitFor(() => stderr.includes('capturing TLS plaintext') || child.exitCode !== null, { timeoutMs: 45_000, what: 'the service to attach' });
      assert.ok(stderr.includes('capturing TLS plaintext'), `the service started: ${stderr}`);
      assert.ok(!/warning|error/.test(stderr), `no warning under the unit's settings: ${stderr}`);
      // The exec chain (unshare, prlimit, sh, setpriv) ends in node with the same pid.
      const st = status(child.pid!);
      assert.ok(/node/.test(st.Name!), `the service process is node: ${st.Name}`);
      assert.strictEqual(Number(st.Uid!.split(/\s+/)[1]), STAND_IN_UID);
      assert.strictEqual(BigInt(`0x${st.CapEff}`), capMask(ambient), 'effective: exactly the unit capabilities');
      assert.strictEqual(BigInt(`0x${st.CapAmb}`), capMask(ambient), 'ambient: AmbientCapabilities');
      assert.strictEqual(BigInt(`0x${st.CapBnd}`), capMask(bounding), 'bounding: CapabilityBoundingSet');
      assert.strictEqual(st.NoNewPrivs, nnp ? '1' : '0');
      assert.match(fs.readFileSync(`/proc/${child.pid}/limits`, 'utf8'), /^Max core file size\s+0\s+0\s/m, 'LimitCORE=0');
      if (one(unit, 'PrivateNetwork') === 'yes') assert.notStrictEqual(fs.readlinkSync(`/proc/${child.pid}/ns/net`), fs.readlinkSync('/proc/self/ns/net'), 'its own network namespace');

      const r = await curl(`https://127.0.0.1:${nginx.port}/s.txt`, ['-o', '/dev/null']);
      assert.strictEqual(r.code, 0, r.stderr.toString());
      await waitFor(() => fs.existsSync(output) && fs.readFileSync(output, 'utf8').includes('/s.txt'), { timeoutMs: 20_000, what: 'the exchange in the output file' });
    } finally {
      child.kill(killSignal);
    }
    const t0 = Date.now();
    const end = await Promise.race([exited, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), stopMs))]);
    assert.ok(end, `stopped by ${killSignal} within TimeoutStopSec (${stopMs} ms)`);
    assert.strictEqual(end.code, 0, `exit 0 after ${killSignal}: ${stderr}`);
    const stopped = Date.now() - t0;
    const st = fs.statSync(output);
    assert.strictEqual(st.mode & 0o777, 0o600, 'the output is 0600');
    assert.strictEqual(st.uid, STAND_IN_UID, "the output belongs to the service's user");
    const lines = fs.readFileSync(output, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; conn?: { pid: number; role: string }; request?: { url: string }; response?: { status: number; body: { data: string; encoding: string } } });
    const mine = lines.filter((l) => l.type === 'exchange' && l.conn!.role === 'client' && l.request?.url.endsWith('/s.txt'));
    assert.strictEqual(mine.length, 1, `curl's exchange once: ${JSON.stringify(lines).slice(0, 2000)}`);
    assert.strictEqual(mine[0]!.response!.status, 200);
    assert.strictEqual(mine[0]!.response!.body.data, text, 'the response body');
    console.log(`      stopped in ${stopped} ms`);
  });
});
