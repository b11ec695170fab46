// soak-client.ts: a node TLS client for bench/soak.ts (node's built-in OpenSSL, memory BIOs) that
// counts, exactly, the plaintext bytes it writes and reads: COUNT GETs of /?size=SIZE on one
// keep-alive connection, to test/lib/node_tls.js's server.
//   node dist/bench/soak-client.js PORT SIZE COUNT
// Prints "SENT <bytes> RECEIVED <bytes> REQUESTS <n>".
import * as tls from 'tls';

const [port, size, count] = process.argv.slice(2).map(Number) as [number, number, number];

async function main(): Promise<void> {
  const sock = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] }, () => resolve(s));
    s.once('error', reject);
  });
  let sent = 0;
  let received = 0;
  for (let i = 0; i < count; i++) {
    const req = Buffer.from(`GET /?size=${size}&i=${i} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: keep-alive\r\n\r\n`);
    sent += req.length;
    received += await new Promise<number>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let got = 0;
      let want = -1;
      const onData = (d: Buffer): void => {
        chunks.push(d);
        got += d.length;
        if (want < 0) {
          const head = Buffer.concat(chunks).toString('latin1');
          const end = head.indexOf('\r\n\r\n');
          if (end >= 0) {
            const len = /\r\ncontent-length: *(\d+)/i.exec(head);
            if (!len) return reject(new Error(`no content-length in ${head.slice(0, end)}`));
            want = end + 4 + Number(len[1]);
          }
        }
        if (want >= 0 && got >= want) {
          sock.off('data', onData);
          resolve(got);
        }
      };
      sock.on('data', onData);
      sock.once('error', reject);
      sock.write(req);
    });
  }
  await new Promise<void>((resolve) => sock.end(resolve));
  process.stdout.write(`SENT ${sent} RECEIVED ${received} REQUESTS ${count}\n`);
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`soak-client: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  },
);
