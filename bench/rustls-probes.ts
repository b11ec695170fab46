// rustls-probes.ts: what the rustls probes cost a program, per write.
//
//   node dist/bench/rustls-probes.js [-n 20000] [-r 5]
//
// test/lib/rustls_tls (built by test/kernel/rustls.test.ts into its target/) sends N writes of
// 64 bytes through rustls::Stream to its own server: each write is one send_some_plaintext
// (entry and return probes) and one write_tls (entry and return) with its socket write, and
// the server's reads one take_received_plaintext each. The client's time is measured with no
// capture, with the probe floor (do-nothing programs at the same sites: the traps alone) and
// with the rustls programs (in-process capture, filtered to rustls_tls by name), in turn, R
// rounds; the difference over N is the cost per write. Needs root.
import { Command } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { Recorder } from '../test/lib/kernel';
import { freePort, makeCert, run, startServer, stopAll, tmpDir } from '../test/lib/servers';
import { ROOT } from '../test/lib/paths';

const EXE = path.join(ROOT, 'test', 'lib', 'rustls_tls', 'target', 'release', 'rustls_tls');

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const opts = new Command().option('-n <writes>', 'writes of 64 bytes per run', '20000').option('-r <rounds>', 'rounds', '5').parse().opts<{ n: string; r: string }>();
  const n = Number(opts.n);
  if (!fs.existsSync(EXE)) throw new Error(`${EXE} is missing: run test/kernel/rustls.test.ts once (it builds it)`);
  const dir = tmpDir('https-capture-rustls-bench-');
  const cert = await makeCert(dir);
  const der = { cert: path.join(dir, 'cert.der'), key: path.join(dir, 'key.der') };
  await run('openssl', ['x509', '-in', cert.cert, '-outform', 'der', '-out', der.cert]);
  await run('openssl', ['pkcs8', '-topk8', '-nocrypt', '-in', cert.key, '-outform', 'der', '-out', der.key]);
  fs.writeFileSync(path.join(dir, 'body.bin'), 'ok');
  const body = Buffer.alloc(64 * n, 'x');
  const request = Buffer.concat([Buffer.from(`POST / HTTP/1.0\r\nContent-Length: ${body.length}\r\n\r\n`), body]);
  const once = async (capture: 'none' | 'floor' | 'probes'): Promise<number> => {
    const port = await freePort();
    await startServer(EXE, ['server', String(port), der.cert, der.key, path.join(dir, 'body.bin')], port, dir);
    const rec = capture === 'none' ? undefined : new Recorder({ comms: ['rustls_tls'], floor: capture === 'floor', discovery: { pollMs: 0, extra: [EXE] } });
    const t = process.hrtime.bigint();
    const r = await run(EXE, ['client', String(port), der.cert, '64'], { input: request, timeoutMs: 300_000 });
    const ms = Number(process.hrtime.bigint() - t) / 1e6;
    if (r.code !== 0) throw new Error(r.stderr.toString());
    if (rec) {
      const k = await rec.stop();
      if (capture === 'probes' && k.calls < n) throw new Error(`only ${k.calls} calls captured of at least ${n}`);
    }
    await stopAll();
    return ms;
  };
  const runs: Record<'none' | 'floor' | 'probes', number[]> = { none: [], floor: [], probes: [] };
  for (let i = 0; i < Number(opts.r); i++) for (const m of ['none', 'floor', 'probes'] as const) runs[m].push(await once(m));
  const [a, f, b] = [median(runs.none), median(runs.floor), median(runs.probes)];
  const per = (x: number): string => (((x - a) * 1000) / n).toFixed(2);
  console.log(`${n} writes of 64 bytes, medians of ${opts.r}: no capture ${a.toFixed(0)} ms; probe floor (do-nothing programs at the same sites) ${f.toFixed(0)} ms, ${per(f)} µs per write; rustls programs ${b.toFixed(0)} ms, ${per(b)} µs per write`);
  for (const m of ['none', 'floor', 'probes'] as const) console.log(`  ${m}: ${runs[m].map((x) => x.toFixed(0)).join(' ')}`);
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((e: Error) => {
  console.error(`rustls-probes: ${e.message}`);
  process.exit(1);
});
