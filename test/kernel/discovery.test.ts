// discovery.test.ts: every TLS process is found, however it starts: processes started after
// the helper, late imports, private copies of libssl (another inode, another mount
// namespace), a library replaced on disk; and targeted probes are planted only in targets.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { devNumber, mappedFiles } from '../../helper/discovery/libraries';
import { planOpenSsl } from '../../helper/discovery/openssl';
import { Recorder, requireKernel } from '../lib/kernel';
import { CertPair, curl, makeCert, NginxServer, run, Server, startNginx, startPyServer, startRequester, tmpDir, waitFor } from '../lib/servers';
import { cleanUpAfter } from '../lib/hooks';

const SYSTEM_LIBSSL = '/usr/lib/x86_64-linux-gnu/libssl.so.3';

/** A python client that imports ssl, waits, then makes one request (body to stdout). */
function pyLate(port: number, waitS: number, pathName: string, afterImportS = 0): string[] {
  return [
    '-c',
    `import time; time.sleep(${waitS}); import ssl, http.client; time.sleep(${afterImportS})
c = http.client.HTTPSConnection('127.0.0.1', ${port}, context=ssl._create_unverified_context())
c.request('GET', '${pathName}'); print(c.getresponse().read().decode(), end='')`,
  ];
}

/** The byte at a libssl file offset in a process's memory: 0xcc where a uprobe is planted. */
function byteAt(pid: number, file: { dev: number; ino: number }, offset: number): number {
  for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    // start-end perms offset dev inode path
    const m = /^([0-9a-f]+)-([0-9a-f]+) r-xp ([0-9a-f]+) \S+ (\d+)/.exec(line);
    if (!m || Number(m[4]) !== file.ino) continue;
    const start = parseInt(m[1]!, 16);
    const end = parseInt(m[2]!, 16);
    const addr = start + offset - parseInt(m[3]!, 16);
    if (addr < start || addr >= end) continue;
    const fd = fs.openSync(`/proc/${pid}/mem`, 'r');
    try {
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, addr);
      return b[0]!;
    } finally {
      fs.closeSync(fd);
    }
  }
  throw new Error(`pid ${pid} does not map inode ${file.ino} at offset ${offset}`);
}

describe('discovery: files in /proc/<pid>/maps by device and inode (no kernel needed)', function () {
  it('devNumber() turns the major:minor of maps into stat()\'s st_dev, and mappedFiles() finds a mapped file by it', () => {
    // Each file mapped by this process: the device and inode maps shows are the ones stat() gives.
    const lines = fs.readFileSync('/proc/self/maps', 'utf8').split('\n');
    let checked = 0;
    for (const l of lines) {
      const m = /^\S+ \S+ \S+ ([0-9a-f]+):([0-9a-f]+) (\d+)\s+(\/\S+)$/.exec(l);
      if (!m || m[3] === '0') continue;
      const st = fs.statSync(m[4]!);
      assert.strictEqual(devNumber(parseInt(m[1]!, 16), parseInt(m[2]!, 16)), st.dev, l);
      assert.strictEqual(Number(m[3]), st.ino);
      checked++;
    }
    assert.ok(checked > 0, 'this process maps files');
    assert.strictEqual(devNumber(0x103, 0x1234), 0x103 * 256 + 0x34 + 0x1200 * 0x1000, 'minor above 255 (glibc makedev)');
    const exe = fs.statSync(process.execPath);
    const found = mappedFiles(new Set([`${exe.dev}:${exe.ino}`, '1:1']));
    assert.deepStrictEqual([...found], [`${exe.dev}:${exe.ino}`], 'node is mapped (by this process), 1:1 is not');
  });
});

describe('discovery (kernel, real processes)', function () {
  let dir: string;
  let cert: CertPair;
  let nginx: NginxServer;
  let py: Server;
  let rec: Recorder | undefined;

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-disc-');
    cert = await makeCert(dir);
    nginx = await startNginx({ dir: `${dir}/nginx`, files: { 'small.txt': Buffer.from('hello\n') }, cert });
    py = await startPyServer({ dir, ...cert });
  });

  afterEach(async () => {
    if (rec) await rec.stop();
    rec = undefined;
  });

  cleanUpAfter(() => dir);

  it('100 curl processes started one after another after the helper: every request and response', async function () {
    this.timeout(120000);
    rec = new Recorder({ comms: ['curl'], discovery: { pollMs: 0 } });
    const pids: number[] = [];
    for (let i = 0; i < 100; i++) {
      const res = await curl(`https://127.0.0.1:${nginx.port}/small.txt?n=${i}`);
      assert.strictEqual(res.code, 0);
      pids.push(res.pid);
    }
    await waitFor(() => pids.every((pid) => rec!.of(pid, 'ingress').length > 0), { what: 'all 100 responses' });
    pids.forEach((pid, i) => {
      assert.match(rec!.stream(pid, 'egress').toString(), new RegExp(`^GET /small\\.txt\\?n=${i} HTTP/1\\.1\\r\\n`));
      assert.match(rec!.stream(pid, 'ingress').toString(), /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nhello\n$/);
    });
  });

  it('python that sleeps, then imports ssl and makes a request', async () => {
    rec = new Recorder({ discovery: { pollMs: 0 } });
    const res = await run('/usr/bin/python3', pyLate(py.port, 0.3, '/bytes/50?seed=1'));
    assert.strictEqual(res.code, 0, res.stderr.toString());
    await waitFor(() => rec!.bytes(res.pid, 'ingress') >= 50, { what: 'the response' });
    assert.match(rec.stream(res.pid, 'egress').toString(), /^GET \/bytes\/50\?seed=1 HTTP\/1\.1\r\n/);
  });

  it('a private copy of libssl (LD_LIBRARY_PATH, another inode) is found as it is opened, and captured', async () => {
    const lib = path.join(dir, 'private');
    fs.mkdirSync(lib, { recursive: true });
    fs.copyFileSync(SYSTEM_LIBSSL, path.join(lib, 'libssl.so.3'));
    rec = new Recorder({ discovery: { pollMs: 0 } });
    assert.ok(!rec.reports.some((r) => r.includes(lib)), 'not known at start');
    const env = { ...process.env, LD_LIBRARY_PATH: lib };
    // The first process to load it gives the helper a moment: a file never seen before gets its
    // probes 10-21 ms after the open here (README), and a slower machine takes longer.
    const first = await run('/usr/bin/python3', pyLate(py.port, 0.3, '/bytes/20?seed=2', 0.3), { env });
    assert.strictEqual(first.code, 0, first.stderr.toString());
    assert.ok(rec.reports.some((r) => r.startsWith(`attached ${lib}/libssl.so.3 -1`)), rec.reports.join('\n'));
    await waitFor(() => rec!.bytes(first.pid, 'ingress') >= 20, { what: "the first client's response" });
    // Later processes are covered from their first call.
    const second = await curl(`https://127.0.0.1:${nginx.port}/small.txt`, [], { env });
    assert.strictEqual(second.code, 0);
    await waitFor(() => rec!.bytes(second.pid, 'ingress') > 0, { what: "curl's response through the private copy" });
  });

  it('an executable with OpenSSL linked in (node): its https client is captured', async () => {
    rec = new Recorder({ execEvents: true, discovery: { pollMs: 0 } });
    assert.ok(rec.reports.some((r) => r.startsWith(`attached ${fs.realpathSync(process.execPath)} -1`)), rec.reports.join('\n'));
    const script = `require('https').get({ host: '127.0.0.1', port: ${nginx.port}, path: '/small.txt?from=node', rejectUnauthorized: false },
      (r) => { r.resume(); r.on('end', () => process.exit(0)); });`;
    const res = await run(process.execPath, ['-e', script]);
    assert.strictEqual(res.code, 0, res.stderr.toString());
    await waitFor(() => rec!.bytes(res.pid, 'ingress') > 0, { what: "node's response" });
    assert.match(rec.stream(res.pid, 'egress').toString(), /^GET \/small\.txt\?from=node HTTP\/1\.1\r\n/);
    assert.match(rec.stream(res.pid, 'ingress').toString(), /\r\n\r\nhello\n$/);
  });

  it('a process in its own mount namespace with another libssl at the usual path', async () => {
    const copy = path.join(dir, 'ns-libssl.so.3');
    fs.copyFileSync(SYSTEM_LIBSSL, copy);
    rec = new Recorder({ discovery: { pollMs: 0 } });
    // A file never seen before: the process gives the helper a moment after loading it, as above.
    const script = pyLate(py.port, 0.3, '/bytes/30?seed=3', 0.3)[1]!.replace(/'/g, `'"'"'`);
    const res = await run('unshare', ['-m', '--propagation', 'private', 'sh', '-c', `mount --bind ${copy} ${SYSTEM_LIBSSL} && exec /usr/bin/python3 -c '${script}'`]);
    assert.strictEqual(res.code, 0, res.stderr.toString());
    // ld.so opens the path from its cache (/lib/… or /usr/lib/…); through /proc/<pid>/root it
    // is the namespace's file.
    assert.ok(rec.reports.some((r) => /^attached \/proc\/\d+\/root\/(usr\/)?lib\/x86_64-linux-gnu\/libssl\.so\.3 -1/.test(r)), rec.reports.join('\n'));
    await waitFor(() => rec!.bytes(res.pid, 'ingress') >= 30, { what: 'the response of the namespaced process' });
  });

  it('a library upgraded during capture: a process running across the upgrade stays captured through the old file, later ones through the new', async () => {
    const lib = path.join(dir, 'upgrade');
    fs.mkdirSync(lib, { recursive: true });
    const file = path.join(lib, 'libssl.so.3');
    fs.copyFileSync(SYSTEM_LIBSSL, file);
    rec = new Recorder({ discovery: { pollMs: 200, extra: [file] } });
    const env = { ...process.env, LD_LIBRARY_PATH: lib };
    const egress = (pid: number): string => rec!.of(pid, 'egress').map((r) => r.data.toString('latin1')).join('');
    // A process that maps the old file for its whole life, and makes a request before, during
    // and after the upgrade.
    const long = await startRequester(nginx.port, env);
    assert.strictEqual((await long.get('/small.txt?long=before')).status, 200);
    await waitFor(() => egress(long.pid).includes('GET /small.txt?long=before '), { timeoutMs: 30_000, what: "the long-lived client's request through the old file" });
    const before = await curl(`https://127.0.0.1:${nginx.port}/small.txt`, [], { env });
    await waitFor(() => rec!.bytes(before.pid, 'ingress') > 0, { timeoutMs: 30_000, what: 'capture through the old file' });
    // An upgrade: a new file renamed over the old one (the old inode lives on, deleted, in the
    // long-lived process's memory).
    fs.copyFileSync(SYSTEM_LIBSSL, `${file}.new`);
    fs.renameSync(`${file}.new`, file);
    // The file watch sees the new file (or the next process's open of it does).
    await waitFor(() => rec!.reports.filter((r) => r.startsWith(`attached ${file} -1`)).length === 2, { timeoutMs: 30_000, what: 'the new file to be attached' });
    assert.ok(rec.reports.includes(`note ${file} ${file} was replaced by another file on disk; its probes stay while processes map it`), rec.reports.join('\n'));
    const after = await curl(`https://127.0.0.1:${nginx.port}/small.txt`, [], { env });
    assert.strictEqual(after.code, 0);
    await waitFor(() => rec!.bytes(after.pid, 'ingress') > 0, { timeoutMs: 30_000, what: 'capture through the new file' });
    // Several polls later the old file keeps its probes: a process still maps it.
    await new Promise((r) => setTimeout(r, 1000));
    assert.ok(!rec.reports.some((r) => r.startsWith(`detached ${file} (replaced`)), `the old file was detached while mapped:\n${rec.reports.join('\n')}`);
    assert.strictEqual((await long.get('/small.txt?long=across')).status, 200);
    await waitFor(() => egress(long.pid).includes('GET /small.txt?long=across '), { timeoutMs: 30_000, what: "the long-lived client's request after the upgrade, through the old file" });
    assert.match(rec.stream(long.pid, 'ingress', rec.connections(long.pid)[1]).toString(), /\r\n\r\nhello\n$/);
    // Once nobody maps the old file, its probes go at the next poll.
    await long.stop();
    await waitFor(() => rec!.reports.some((r) => r.startsWith(`detached ${file} (replaced`)), { timeoutMs: 30_000, what: 'the old file to be detached' });
  });

  it('targeted mode plants probes only in the target (the uprobe breakpoint is in its memory alone)', async () => {
    const plan = planOpenSsl(SYSTEM_LIBSSL);
    assert.strictEqual(plan.kind, 'internal');
    const offset = plan.kind === 'internal' ? plan.write : 0;
    const st = fs.statSync(SYSTEM_LIBSSL);
    const sleeper = ['-c', 'import ssl, time; time.sleep(30)'];
    const { spawn } = await import('child_process');
    const target = spawn('/usr/bin/python3', sleeper);
    const other = spawn('/usr/bin/python3', sleeper);
    try {
      await waitFor(() => [target.pid!, other.pid!].every((p) => fs.readFileSync(`/proc/${p}/maps`, 'utf8').includes('libssl')), { what: 'both to load libssl' });
      const original = byteAt(other.pid!, st, offset);
      assert.notStrictEqual(original, 0xcc, 'a probe is in libssl before this capture: another capture runs on this machine (stop it to run this test)');
      rec = new Recorder({ pids: [target.pid!], discovery: { pollMs: 0, targets: { pids: [target.pid!], comms: [] } } });
      assert.strictEqual(byteAt(target.pid!, st, offset), 0xcc, 'breakpoint planted in the target');
      assert.strictEqual(byteAt(other.pid!, st, offset), original, 'nothing planted in the other process');
      await rec.stop();
      rec = undefined;
      assert.strictEqual(byteAt(target.pid!, st, offset), original, 'removed when the helper stops');
      // System-wide, by contrast, plants it in every process that maps the file.
      rec = new Recorder({ discovery: { pollMs: 0 } });
      assert.strictEqual(byteAt(other.pid!, st, offset), 0xcc);
    } finally {
      target.kill('SIGKILL');
      other.kill('SIGKILL');
    }
  });
});
