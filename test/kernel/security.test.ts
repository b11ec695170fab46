// security.test.ts: what docs/security.md promises about where plaintext goes, checked on a
// running helper (kernel, strace, nginx, curl): while it captures, it holds no socket but AF_UNIX
// ones (its stdio, and the pipe of the `ldconfig -p` it runs once), it makes no socket(),
// connect(), bind(), listen() or accept() call at all, and the only file it opens for writing
// is the recording it was told to write, created with mode 0600.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { Exchange, HelperHost } from '../../helper/host/host';
import { requireKernel } from '../lib/kernel';
import { curl, NginxServer, pattern, run, startNginx, tmpDir, waitFor } from '../lib/servers';
import { CLI } from '../lib/paths';
import { cleanUpAfter, closeAfterEach } from '../lib/hooks';


/** Inodes of the sockets a process holds (fd -> inode), from /proc/<pid>/fd. */
function socketsOf(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    let target = '';
    try {
      target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // closed meanwhile
    }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m) out.set(fd, Number(m[1]));
  }
  return out;
}

/** Inodes listed in one of /proc/<pid>/net/* (the process's network namespace). */
function inodesIn(pid: number, table: string): Set<number> {
  let text = '';
  try {
    text = fs.readFileSync(`/proc/${pid}/net/${table}`, 'utf8');
  } catch {
    return new Set();
  }
  const lines = text.split('\n').slice(1).filter(Boolean);
  // unix: "Num RefCount Protocol Flags Type St Inode Path"; tcp/udp/raw: the 10th field.
  const col = table === 'unix' ? 6 : 9;
  return new Set(lines.map((l) => Number(l.trim().split(/\s+/)[col])));
}

describe('security: where plaintext goes (kernel, strace, nginx, curl)', function () {
  let dir: string;
  let nginx: NginxServer;
  let host: HelperHost | undefined;
  const body = pattern(300_000, 12);

  before(async function () {
    requireKernel(this);
    if ((await run('strace', ['-V'])).code !== 0) throw new Error('strace is needed for this test: apt-get install strace (scripts/setup.sh --test installs it)');
    dir = tmpDir('https-capture-sec-');
    nginx = await startNginx({ dir, files: { 'b.bin': body } });
  });
  closeAfterEach(() => host, () => (host = undefined));
  cleanUpAfter(() => dir);

  it('opens no network socket and writes no file but the recording (0600), while it captures curl <-> nginx', async function () {
    this.timeout(60_000);
    const trace = path.join(dir, 'strace.out');
    const record = path.join(dir, 'run.frames');
    const traced = 'trace=%network,openat,open,creat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,unlink,unlinkat,mkdir,mkdirat,truncate';
    // -ff: a file per thread, so that no call is split into "<unfinished ...>" and "resumed" lines
    // by another thread's (libuv's pool opens files while the main thread runs).
    host = new HelperHost({ command: 'strace', args: ['-ff', '-qq', '-e', traced, '-o', trace, process.execPath, CLI, '--ipc', '--port', String(nginx.port), '--record', record] });
    const ex: Exchange[] = [];
    host.on('exchange', (e) => ex.push(e));
    const hello = await host.ready;
    const pid = hello.pid; // the helper itself, under strace
    await waitFor(() => host!.stderr.includes('capturing TLS plaintext'), { timeoutMs: 30_000, what: 'the helper to attach' });

    // While it captures: every socket it holds is an AF_UNIX one.
    const seen = new Map<number, string>();
    const sample = (): void => {
      const unix = inodesIn(pid, 'unix');
      for (const [fd, ino] of socketsOf(pid)) if (!seen.has(ino)) seen.set(ino, `fd ${fd}: ${unix.has(ino) ? 'unix' : 'NOT unix'}`);
    };
    const sampler = setInterval(sample, 50);
    let pids: number[] = [];
    try {
      sample();
      for (let i = 0; i < 5; i++) {
        const r = await curl(`https://127.0.0.1:${nginx.port}/b.bin`, ['-o', '/dev/null']);
        assert.strictEqual(r.code, 0, r.stderr.toString());
        pids = [...pids, r.pid];
      }
      await waitFor(() => pids.every((p) => ex.some((e) => e.pid === p && e.response.body.equals(body))), { what: 'every exchange, whole' });
      sample();
    } finally {
      clearInterval(sampler);
    }
    const net = new Set<number>(['tcp', 'tcp6', 'udp', 'udp6', 'raw', 'raw6', 'udplite', 'udplite6'].flatMap((t) => [...inodesIn(pid, t)]));
    assert.ok(seen.size >= 3, `its stdio are sockets from the host (${[...seen.values()]})`);
    for (const [ino, what] of seen) {
      assert.match(what, /: unix$/, `socket inode ${ino} (${what}) is not AF_UNIX`);
      assert.ok(!net.has(ino), `socket inode ${ino} is a network socket`);
    }
    const bye = await host.close();
    host = undefined;
    assert.strictEqual(bye?.reason, 'shutdown');

    // The whole run, every process of the helper (and the ldconfig it runs): no network
    // socket, no connection, nothing written but the recording.
    const traces = fs.readdirSync(dir).filter((f) => f.startsWith('strace.out.'));
    const lines = traces.flatMap((f) => fs.readFileSync(path.join(dir, f), 'utf8').split('\n')).filter((l) => /^[a-z_0-9]+\(/.test(l));
    const calls = (name: RegExp): string[] => lines.filter((l) => name.test(l));
    assert.ok(lines.length > 50, `strace saw the helper (${lines.length} lines)`);
    assert.deepStrictEqual(calls(/^(socket|connect|bind|listen|accept4?|sendto|recvfrom)\(/), [], 'no socket of its own, no connection, no datagram');
    assert.deepStrictEqual(calls(/^socketpair\(/).filter((l) => !l.includes('socketpair(AF_UNIX,')), [], 'socket pairs only of AF_UNIX');
    assert.deepStrictEqual(calls(/^(rename|renameat2?|link|linkat|symlink|symlinkat|unlink|unlinkat|mkdir|mkdirat|truncate)\(/), [], 'no file renamed, linked, removed or made');
    const writes = calls(/^(open|openat|creat)\(/).filter((l) => /O_WRONLY|O_RDWR|O_CREAT|^creat/.test(l) && !/= -1 /.test(l));
    const other = writes.filter((l) => !l.includes(`"${record}", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0600)`) && !/"\/dev\/null", O_RDWR\)/.test(l));
    assert.deepStrictEqual(other, [], 'files opened for writing other than the recording (and /dev/null for ldconfig)');
    assert.ok(writes.some((l) => l.includes(`"${record}"`)), 'the recording was opened for writing, mode 0600');
    assert.strictEqual(fs.statSync(record).mode & 0o777, 0o600);
    process.stderr.write(`      ${lines.length} traced calls; sockets held: ${[...seen.values()].join(', ')}; written: ${writes.length} opens (${record}, /dev/null)\n`);
  });
});
