// Self-test of test/lib/servers.ts: the TLS test servers and clients work on loopback (no root or eBPF needed).
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import {
  curl,
  makeCert,
  pattern,
  pyClient,
  run,
  startNginx,
  startPyServer,
  startSServer,
  stopAll,
  tmpDir,
  waitFor,
} from '../lib/servers';

const MiB = 1024 * 1024;

function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  assert.strictEqual(actual.length, expected.length, `${what}: length`);
  assert.ok(actual.equals(expected), `${what}: bytes differ`);
}

describe('test servers', () => {
  const dirs: string[] = [];
  const newDir = (prefix: string): string => {
    const d = tmpDir(prefix);
    dirs.push(d);
    return d;
  };
  after(async () => {
    await stopAll();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  describe('helpers', () => {
    it('pattern() is deterministic printable ASCII of exactly n bytes', () => {
      for (const n of [0, 1, 57, 1000, 100_000]) assert.strictEqual(pattern(n, 7).length, n);
      const p = pattern(10_000, 1);
      assert.ok(p.equals(pattern(10_000, 1)));
      assert.ok(!p.equals(pattern(10_000, 2)));
      assert.ok(pattern(100, 5).equals(pattern(1000, 5).subarray(0, 100)));
      assert.match(p.toString('latin1'), /^[\x20-\x7e\n]*$/);
    });

    it('run() resolves on non-zero exit, passes stdin and exposes the pid', async () => {
      const r = await run('sh', ['-c', 'cat; echo err >&2; exit 3'], { input: Buffer.from('in') });
      assert.strictEqual(r.code, 3);
      assert.strictEqual(r.stdout.toString(), 'in');
      assert.strictEqual(r.stderr.toString(), 'err\n');
      assert.ok(r.pid > 0);
    });

    it('run() rejects on timeout and on spawn error', async () => {
      await assert.rejects(run('sleep', ['30'], { timeoutMs: 200 }), /timed out/);
      await assert.rejects(run('/nonexistent/binary', []), /ENOENT/);
    });

    it('waitFor() names what it waited for', async () => {
      let n = 0;
      assert.strictEqual(await waitFor(() => ++n >= 3 && n), 3);
      await assert.rejects(waitFor(() => false, { timeoutMs: 100, what: 'godot' }), /godot/);
    });
  });

  describe('nginx', () => {
    const big = pattern(MiB, 1);

    it('serves a 1 MiB static file byte-identically over IPv4 and IPv6, logs the client port', async () => {
      const dir = newDir('https-capture-nginx-');
      const files = { 'big.bin': big, 'sub/small.txt': pattern(100) };
      const nginx = await startNginx({ dir, files, ipv6: true, workers: 2 });
      assert.strictEqual(nginx.workerPids().length, 2);

      const r = await curl(`https://127.0.0.1:${nginx.port}/big.bin`);
      assert.strictEqual(r.code, 0, r.stderr.toString());
      assertSameBytes(r.stdout, big, 'nginx GET big.bin');

      const r6 = await curl(`https://[::1]:${nginx.port}/sub/small.txt`);
      assert.strictEqual(r6.code, 0, r6.stderr.toString());
      assertSameBytes(r6.stdout, pattern(100), 'nginx GET over ::1');

      const url = `https://127.0.0.1:${nginx.port}/sub/small.txt`;
      const lp = await curl(url, ['-o', '/dev/null', '-w', '%{local_port}']);
      const line = `127.0.0.1:${lp.stdout.toString()} GET /sub/small.txt 200 100 `;
      const logged = (): boolean => fs.readFileSync(nginx.accessLog, 'utf8').includes(line);
      await waitFor(logged, { what: `access log line "${line}"` });
    });

    it('keeps the connection alive across requests', async () => {
      const dir = newDir('https-capture-nginx-');
      const nginx = await startNginx({ dir, files: { 'a.txt': pattern(10) } });
      const url = `https://127.0.0.1:${nginx.port}/a.txt`;
      const r = await curl(url, [url]);
      assert.strictEqual(r.stdout.toString(), pattern(10).toString().repeat(2));
      const lines = await waitFor(
        () => {
          const l = fs.readFileSync(nginx.accessLog, 'utf8').trim().split('\n');
          return l.length === 2 && l;
        },
        { what: 'two access log lines' },
      );
      const [conn1, req1] = lines[0].split(' ').slice(-2);
      const [conn2, req2] = lines[1].split(' ').slice(-2);
      assert.strictEqual(conn1, conn2, 'same connection');
      assert.deepStrictEqual([req1, req2], ['1', '2']);
      await nginx.stop();
      assert.deepStrictEqual(nginx.workerPids(), []);
    });
  });

  describe('python tls_server.py', () => {
    let dir: string;
    before(() => {
      dir = newDir('https-capture-py-');
    });

    it('GET /bytes/<n>?seed=<s> equals pattern(n, s) and POST /echo echoes 1 MiB', async () => {
      const { cert, key } = await makeCert(dir);
      const py = await startPyServer({ dir, cert, key });
      const base = `https://127.0.0.1:${py.port}`;

      const r = await pyClient(`${base}/bytes/${MiB}?seed=3`);
      assert.strictEqual(r.code, 0, r.stderr.toString());
      assertSameBytes(r.stdout, pattern(MiB, 3), 'GET /bytes/1048576?seed=3');

      for (const [n, seed] of [[0, 0], [1, 0], [57, 9], [58, 10], [100_000, 12345]]) {
        const c = await curl(`${base}/bytes/${n}?seed=${seed}`);
        assertSameBytes(c.stdout, pattern(n, seed), `python pattern(${n}, ${seed})`);
      }

      const body = pattern(MiB, 4);
      const e = await pyClient(`${base}/echo`, { method: 'POST', body });
      assert.strictEqual(e.code, 0, e.stderr.toString());
      assertSameBytes(e.stdout, body, 'POST /echo');

      const nf = await pyClient(`${base}/nope`);
      assert.strictEqual(nf.code, 1);
    });

    it('listens on ::1', async () => {
      const sub = path.join(dir, 'v6');
      fs.mkdirSync(sub);
      const { cert, key } = await makeCert(sub, 'rsa');
      const py = await startPyServer({ dir: sub, cert, key, ipv6: true });
      const r = await pyClient(`https://[::1]:${py.port}/bytes/5000?seed=6`);
      assert.strictEqual(r.code, 0, r.stderr.toString());
      assertSameBytes(r.stdout, pattern(5000, 6), 'GET over ::1');
    });
  });

  describe('openssl s_server', () => {
    let dir: string;
    let cert: string;
    let key: string;
    before(async () => {
      dir = newDir('https-capture-sserver-');
      ({ cert, key } = await makeCert(dir));
    });

    it('-www answers curl', async () => {
      const s = await startSServer({ dir, cert, key, mode: 'www' });
      const r = await curl(`https://127.0.0.1:${s.port}/`);
      assert.strictEqual(r.code, 0, r.stderr.toString());
      assert.match(r.stdout.toString(), /s_server -accept/);
    });

    it('-WWW serves files from dir', async () => {
      fs.writeFileSync(path.join(dir, 'f.txt'), pattern(3000, 2));
      const s = await startSServer({ dir, cert, key, mode: 'WWW' });
      const r = await curl(`https://127.0.0.1:${s.port}/f.txt`);
      assertSameBytes(r.stdout, pattern(3000, 2), 's_server -WWW');
    });

    it('-rev reverses lines', async () => {
      const s = await startSServer({ dir, cert, key, mode: 'rev' });
      const r = await run('openssl', ['s_client', '-brief', '-ign_eof', '-connect', `127.0.0.1:${s.port}`], {
        input: Buffer.from('hello world\nCLOSE\n'),
      });
      assert.match(r.stdout.toString(), /dlrow olleh/);
    });
  });
});
