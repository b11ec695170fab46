// container.test.ts: the image (scripts/build-image.sh) under rootful podman, run with the
// settings of deploy/kubernetes/daemonset.yaml as test/lib/daemonset.ts translates them (host
// PID namespace, root with only CAP_SYS_ADMIN and CAP_SYS_PTRACE, no-new-privileges, read-only
// root, /sys/kernel/btf read-only, a network namespace of its own, the memory limit, the args
// and the readiness command), captures a curl started on the host and one started in another
// container (the image's base with Debian's curl and its own libssl.so.3, another file than
// the host's), both against an nginx over TLS on the host's 127.0.0.1. The client container
// shares the host's network namespace, so its 127.0.0.1 is the host's, where nginx listens.
// Each exchange's 4-tuple must be the one nginx logged ($remote_addr:$remote_port, and the
// port it listens on), and its plaintext the file nginx served.
//
// Not in the default suite (`npm run test:container` builds the images and runs it): building
// them takes minutes. Without podman or the images it skips loudly, and fails under CI=true.
import * as assert from 'assert';
import * as fs from 'fs';
import { ChildProcess, spawn, spawnSync } from 'child_process';
import { requireKernel } from '../lib/kernel';
import { daemonSetPod, podmanRun } from '../lib/daemonset';
import { curl, NginxServer, run, startNginx, stopAll, tmpDir, waitFor } from '../lib/servers';

const IMAGE = process.env.HTTPS_CAPTURE_IMAGE ?? 'localhost/https-capture:latest';
const CLIENT_IMAGE = process.env.HTTPS_CAPTURE_CLIENT_IMAGE ?? 'localhost/https-capture-testclient:latest';

/**
 * Options for podman itself on hosts like this one (scripts/build-image.sh does the same): runc
 * where /sys/fs/cgroup is not cgroup v2 (crun refuses hybrid hosts), and, without
 * CAP_SYS_RESOURCE, the current nofile/nproc limits instead of podman's higher defaults.
 */
function podmanQuirks(): { global: string[]; run: string[] } {
  const global: string[] = [];
  const cg = spawnSync('stat', ['-fc', '%T', '/sys/fs/cgroup'], { encoding: 'utf8' }).stdout.trim();
  if (cg !== 'cgroup2fs') global.push('--runtime', 'runc');
  const runOpts: string[] = [];
  const eff = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]}`);
  if (((eff >> 24n) & 1n) === 0n) {
    const limits = fs.readFileSync('/proc/self/limits', 'utf8');
    const hard = (name: string): string => new RegExp(`^${name}\\s+\\S+\\s+(\\S+)`, 'm').exec(limits)![1]!;
    const nofile = hard('Max open files');
    const nproc = hard('Max processes') === 'unlimited' ? 32768 : Math.min(32768, Number(hard('Max processes')));
    runOpts.push(`--ulimit=nofile=${nofile}:${nofile}`, `--ulimit=nproc=${nproc}:${nproc}`);
  }
  return { global, run: runOpts };
}

/** Why the test cannot run here, or undefined. */
function missing(): string | undefined {
  if (spawnSync('podman', ['--version']).status !== 0) return 'podman is not installed (apt-get install podman)';
  for (const image of [IMAGE, CLIENT_IMAGE]) {
    if (spawnSync('podman', ['image', 'exists', image]).status !== 0) return `image ${image} is absent (bash scripts/build-image.sh --test-client)`;
  }
  return undefined;
}

interface Conn {
  pid: number;
  comm: string;
  role: string;
  local: { ip: string; port: number };
  remote: { ip: string; port: number };
}
const addr = (a: { ip: string; port: number }): string => `${a.ip}:${a.port}`;
interface Exchange {
  type: string;
  conn: Conn;
  request?: { url: string; target: string; method: string };
  response?: { status: number; body: { data: string; encoding: string } };
}

describe('container: the image under podman with the DaemonSet settings (kernel, podman, nginx, curl)', function () {
  const q = podmanQuirks();
  const podman = (args: string[], timeoutMs = 120_000) => run('podman', [...q.global, ...args], { timeoutMs });
  const name = `https-capture-test-${process.pid}`;
  const clientName = `https-capture-testclient-${process.pid}`;
  let dir: string;
  let nginx: NginxServer;
  let helper: ChildProcess | undefined;
  let out = '';
  let err = '';
  const hostText = 'served to curl on the host\n'.repeat(50);
  const containerText = 'served to curl in another container\n'.repeat(60);

  before(async function () {
    this.timeout(120_000);
    requireKernel(this);
    const why = missing();
    if (why) {
      if (process.env.CI === 'true') throw new Error(`container test under CI=true: ${why}`);
      process.stderr.write(`\n  !!! SKIPPING the container test: ${why}\n  !!! npm run test:container builds the images and runs it\n\n`);
      this.skip();
    }
    dir = tmpDir('https-capture-ctr-');
    nginx = await startNginx({ dir, files: { 'host.txt': Buffer.from(hostText), 'container.txt': Buffer.from(containerText) } });
  });

  after(async function () {
    this.timeout(90_000);
    if (helper && helper.exitCode === null) await podman(['stop', '--time', '30', name]);
    await podman(['rm', '--force', '--ignore', clientName]);
    await podman(['rm', '--force', '--ignore', name]);
    await stopAll();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('runs as the DaemonSet says, is ready by its readiness command, captures curl on the host and in another container with the 4-tuples nginx logged', async function () {
    this.timeout(300_000);
    const ds = podmanRun(daemonSetPod());
    // The DaemonSet's args, and a port filter so other traffic on this machine stays out.
    const args = [...q.global, 'run', '--rm', '--name', name, ...q.run, ...ds.options, IMAGE, ...ds.args, '--port', String(nginx.port)];
    console.log(`      podman ${args.join(' ')}`);
    const t0 = Date.now();
    helper = spawn('podman', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    helper.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    helper.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    const exited = new Promise<number | null>((resolve) => helper!.once('exit', (code) => resolve(code)));

    // Ready: the DaemonSet's readiness command, run in the container as the kubelet would.
    const probe = ds.readiness!;
    let ready = '';
    await waitFor(
      async () => {
        if (helper!.exitCode !== null) return true;
        const r = await podman(['exec', name, ...probe], 20_000);
        if (r.code !== 0) return false;
        ready = (await podman(['exec', name, 'cat', probe[probe.length - 1]!])).stdout.toString();
        return true;
      },
      { timeoutMs: 90_000, intervalMs: 500, what: `the readiness command ${probe.join(' ')}` },
    );
    assert.strictEqual(helper.exitCode, null, `the container exited:\n${err}`);
    console.log(`      ready in ${Date.now() - t0} ms: ${ready.trim()}`);
    const readyFrame = JSON.parse(ready) as { type: string; libraries: number; failed: number };
    assert.strictEqual(readyFrame.type, 'ready');
    assert.ok(readyFrame.libraries >= 1, ready);
    assert.ok(err.includes('capturing TLS plaintext'), err);

    // The helper itself (the container's first process): root, exactly the two capabilities,
    // no_new_privs, in the host's PID namespace.
    const hp = Number((await podman(['inspect', '--format', '{{.State.Pid}}', name])).stdout.toString().trim());
    const status = fs.readFileSync(`/proc/${hp}/status`, 'utf8');
    assert.match(fs.readFileSync(`/proc/${hp}/cmdline`, 'utf8'), /https-capture/);
    assert.match(status, /^Uid:\s+0\s/m);
    assert.match(status, /^CapEff:\s*0*280000$/m, 'CAP_SYS_ADMIN (21) and CAP_SYS_PTRACE (19) only');
    assert.match(status, /^CapBnd:\s*0*280000$/m);
    assert.match(status, /^NoNewPrivs:\s*1$/m);
    assert.strictEqual(fs.readlinkSync(`/proc/${hp}/ns/pid`), fs.readlinkSync('/proc/self/ns/pid'));
    assert.notStrictEqual(fs.readlinkSync(`/proc/${hp}/ns/net`), fs.readlinkSync('/proc/self/ns/net'), 'a network namespace of its own');

    // 1. curl on the host.
    const h = await curl(`https://127.0.0.1:${nginx.port}/host.txt`, ['-o', '/dev/null']);
    assert.strictEqual(h.code, 0, h.stderr.toString());

    // 2. curl in another container: its own mount, PID and UTS namespaces and its own
    // libssl.so.3, the host's network namespace (where 127.0.0.1 is nginx's). The container
    // lives on while curl runs in it twice: the first curl, whose libssl file is new to the
    // helper, may finish before that file has its probes (docs/deploy.md); the second must be
    // captured.
    const c = await podman(['run', '-d', '--name', clientName, ...q.run, '--network=host', CLIENT_IMAGE, 'sleep', '600']);
    assert.strictEqual(c.code, 0, c.stderr.toString());
    const before = err.length;
    const first = await podman(['exec', clientName, 'curl', '-sS', '-k', '--http1.1', '--noproxy', '*', '-o', '/dev/null', `https://127.0.0.1:${nginx.port}/container.txt?first`]);
    assert.strictEqual(first.code, 0, first.stderr.toString());
    // The helper names the file it attached to: the container's libssl, through /proc/<pid>/root.
    await waitFor(() => /attached to \/proc\/\d+\/root\/\S*libssl\.so\.3: /.test(err.slice(before)), {
      timeoutMs: 20_000,
      what: `the helper to attach to the client container's libssl.so.3:\n${err}`,
    });
    const second = await podman(['exec', clientName, 'curl', '-sS', '-k', '--http1.1', '--noproxy', '*', '-o', '/dev/null', `https://127.0.0.1:${nginx.port}/container.txt`]);
    assert.strictEqual(second.code, 0, second.stderr.toString());

    const lines = (): Exchange[] => out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Exchange).filter((l) => l.type === 'exchange');
    const got = (target: string, role: string): Exchange[] => lines().filter((e) => e.request?.target === target && e.conn.role === role);
    await waitFor(() => got('/host.txt', 'client').length >= 1 && got('/container.txt', 'client').length >= 1 && got('/host.txt', 'server').length >= 1 && got('/container.txt', 'server').length >= 1, {
      timeoutMs: 30_000,
      what: `both exchanges, client and server side, in the output:\n${out.slice(0, 3000)}\n${err}`,
    });

    // Ground truth: nginx's access log, "$remote_addr:$remote_port $request_method $request_uri …".
    await waitFor(() => fs.readFileSync(nginx.accessLog, 'utf8').includes('/container.txt '), { timeoutMs: 5000, what: 'nginx access log' });
    const log = fs.readFileSync(nginx.accessLog, 'utf8');
    const peer = (uri: string): string => {
      const m = new RegExp(`^(\\S+) GET ${uri.replace(/[?.]/g, '\\$&')} 200 `, 'm').exec(log);
      assert.ok(m, `nginx logged ${uri}:\n${log}`);
      return m[1]!;
    };
    const server = `127.0.0.1:${nginx.port}`;
    const clientPid = Number((await podman(['inspect', '--format', '{{.State.Pid}}', clientName])).stdout.toString().trim());
    for (const [target, text, comm] of [
      ['/host.txt', hostText, 'curl'],
      ['/container.txt', containerText, 'curl'],
    ] as const) {
      const client = peer(target);
      const [cx] = got(target, 'client');
      const [sx] = got(target, 'server');
      assert.deepStrictEqual([addr(cx!.conn.local), addr(cx!.conn.remote)], [client, server], `${target}: curl's 4-tuple is the one nginx logged`);
      assert.deepStrictEqual([addr(sx!.conn.local), addr(sx!.conn.remote)], [server, client], `${target}: nginx's 4-tuple is the one it logged`);
      assert.strictEqual(cx!.conn.comm, comm);
      assert.strictEqual(sx!.conn.comm, 'nginx');
      for (const e of [cx!, sx!]) {
        assert.strictEqual(e.response!.status, 200);
        assert.strictEqual(e.response!.body.data, text, `${target} ${e.conn.role}: the plaintext nginx served`);
      }
    }
    // The container's curl ran in the client container, as a child of its PID namespace.
    const [cc] = got('/container.txt', 'client');
    const ns = (pid: number, kind: string): string => fs.readlinkSync(`/proc/${pid}/ns/${kind}`);
    assert.notStrictEqual(ns(clientPid, 'mnt'), ns(process.pid, 'mnt'), 'the client container has its own mount namespace');
    console.log(`      host curl ${peer('/host.txt')}, container curl pid ${cc!.conn.pid} ${peer('/container.txt')}; first container curl ${got('/container.txt?first', 'client').length ? 'captured' : 'not captured (its libssl was new)'}`);

    // Memory: the helper's peak RSS and the container's memory cgroup peak, for the DaemonSet's limits.
    const hwm = /^VmHWM:\s*(\d+) kB$/m.exec(fs.readFileSync(`/proc/${hp}/status`, 'utf8'));
    const stats = (await podman(['stats', '--no-stream', '--format', '{{.MemUsage}}', name])).stdout.toString().trim();
    console.log(`      helper peak RSS ${hwm ? Math.round(Number(hwm[1]) / 1024) : '?'} MiB; podman stats ${stats}`);

    // SIGTERM (podman stop, as the kubelet does): detaches and exits 0, the ready file gone.
    const stop = await podman(['stop', '--time', '30', name]);
    assert.strictEqual(stop.code, 0, stop.stderr.toString());
    assert.strictEqual(await exited, 0, err);
    assert.match(err, /stopped: /);
  });
});
