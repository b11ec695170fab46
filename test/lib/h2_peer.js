// h2_peer.js: a Node.js HTTP/2 (TLS) server that sends trailers, and a client that runs several
// streams at once on one session, for the host's HTTP/2 kernel tests (test/host-http2-kernel).
//   node h2_peer.js server PORT CERT KEY   prints READY when listening; every response has
//                                          the trailer x-body-sha256 (of the response body)
//        GET  /az?size=N   N bytes of a-z           POST /echo   the request body back, and
//        the trailer x-request-sha256 (of the body it read) and x-got-trailer (the request's
//        x-client-trailer trailer, or "none")
//   node h2_peer.js client PORT JSON       JSON: [{ method, path, size?, trailer? }]: every
//        request at once on one session (size: a POST body of N bytes of A-Z; trailer: send it
//        as the x-client-trailer trailer); prints the results as JSON in the same order
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http2 = require('http2');

const [mode, port, a, b] = process.argv.slice(2);
const az = (n, base = 97) => Buffer.from(Array.from({ length: n }, (_, i) => base + (i % 26)));
const sha = (buf) => crypto.createHash('sha256').update(buf).digest('hex');

if (mode === 'server') {
  const srv = http2.createSecureServer({ cert: fs.readFileSync(a), key: fs.readFileSync(b) });
  srv.on('stream', (stream, headers) => {
    const chunks = [];
    stream.on('data', (d) => chunks.push(d));
    let reqTrailers = {};
    stream.on('trailers', (t) => (reqTrailers = t));
    stream.on('end', () => {
      const got = Buffer.concat(chunks);
      const url = new URL(headers[':path'], 'https://x');
      const body = url.pathname === '/echo' ? got : az(Number(url.searchParams.get('size') || 0));
      stream.respond({ ':status': 200, 'content-type': 'application/octet-stream', 'x-request-bytes': String(got.length) }, { waitForTrailers: true });
      stream.on('wantTrailers', () => {
        const t = { 'x-body-sha256': sha(body) };
        if (url.pathname === '/echo') Object.assign(t, { 'x-request-sha256': sha(got), 'x-got-trailer': String(reqTrailers['x-client-trailer'] ?? 'none') });
        stream.sendTrailers(t);
      });
      stream.end(body);
    });
  });
  srv.listen(Number(port), '127.0.0.1', () => console.log('READY'));
} else if (mode === 'client') {
  const session = http2.connect(`https://127.0.0.1:${port}`, { rejectUnauthorized: false });
  session.on('error', (e) => {
    console.error(`h2_peer client: ${e.message}`);
    process.exit(1);
  });
  const one = (r) =>
    new Promise((resolve, reject) => {
      const body = r.size !== undefined ? az(r.size, 65) : undefined;
      const s = session.request({ ':method': r.method, ':path': r.path, 'x-test': 'h2-host' }, { endStream: !body, waitForTrailers: r.trailer !== undefined });
      if (r.trailer !== undefined) s.on('wantTrailers', () => s.sendTrailers({ 'x-client-trailer': r.trailer }));
      const chunks = [];
      let status = 0;
      let trailers = {};
      s.on('response', (h) => (status = h[':status']));
      s.on('trailers', (t) => (trailers = t));
      s.on('data', (d) => chunks.push(d));
      s.on('end', () => {
        const got = Buffer.concat(chunks);
        resolve({ path: r.path, status, bytes: got.length, sha256: sha(got), requestSha256: body ? sha(body) : undefined, trailers });
      });
      s.on('error', reject);
      if (body) s.end(body);
    });
  Promise.all(JSON.parse(a).map(one)).then(
    (res) => {
      console.log(JSON.stringify(res));
      session.close();
    },
    (e) => {
      console.error(`h2_peer client: ${e.message}`);
      process.exit(1);
    },
  );
} else {
  console.error('usage: see the header of h2_peer.js');
  process.exit(2);
}
