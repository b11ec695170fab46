// many_conns.js: a node TLS client that holds N connections to 127.0.0.1:PORT open at once, then
// makes one HTTP/1.1 GET on each and reads the whole response, and only then closes them all.
//   node many_conns.js PORT N PATH [HANDSHAKES_AT_ONCE]
// The fd limit must allow N sockets (run it under `prlimit --nofile=...`). Prints one JSON line:
// {"ports": [local port of connection i], "sent": [...bytes], "received": [...bytes], "ms": {...}}.
'use strict';
const tls = require('tls');

const [port, n, urlPath, atOnce] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4] || '/', Number(process.argv[5] || 200)];
const t0 = Date.now();
const socks = new Array(n);

function open(i) {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] }, () => resolve(s));
    s.once('error', (e) => reject(new Error(`connection ${i}: ${e.message}`)));
    socks[i] = s;
  });
}

/** One request on connection i; resolves with the bytes of the whole response. */
function request(i) {
  const s = socks[i];
  const req = Buffer.from(`GET ${urlPath}${urlPath.includes('?') ? '&' : '?'}i=${i} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n`);
  return new Promise((resolve, reject) => {
    const chunks = [];
    let got = 0;
    let want = -1;
    s.on('data', (d) => {
      chunks.push(d);
      got += d.length;
      if (want < 0) {
        const head = Buffer.concat(chunks).toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end >= 0) want = end + 4 + Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      }
      if (want >= 0 && got >= want) {
        s.removeAllListeners('data');
        resolve({ sent: req.length, received: got });
      }
    });
    s.once('error', reject);
    s.write(req);
  });
}

async function main() {
  // Handshakes a few hundred at a time (the server's listen backlog), all kept open.
  let next = 0;
  const worker = async () => {
    while (next < n) await open(next++);
  };
  await Promise.all(Array.from({ length: Math.min(atOnce, n) }, worker));
  const tOpen = Date.now();
  const results = await Promise.all(socks.map((_, i) => request(i)));
  const tDone = Date.now();
  const ports = socks.map((s) => s.localPort);
  await Promise.all(socks.map((s) => new Promise((resolve) => { s.once('close', resolve); s.end(); })));
  process.stdout.write(
    `${JSON.stringify({
      ports,
      sent: results.map((r) => r.sent),
      received: results.map((r) => r.received),
      ms: { open: tOpen - t0, requests: tDone - tOpen, close: Date.now() - tDone },
    })}\n`,
  );
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`many_conns.js: ${e.stack || e}\n`);
    process.exit(1);
  },
);
