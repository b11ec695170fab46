// node_tls.js: Node.js HTTPS and HTTP/2 servers and clients for the kernel tests (node's
// built-in OpenSSL, memory BIOs). Bodies are a repeating a-z pattern the test can check.
//   node node_tls.js server  PORT CERT KEY     https (HTTP/1.1); prints READY when listening
//   node node_tls.js server2 PORT CERT KEY     http2 secure server
//   node node_tls.js client  PORT SIZE COUNT   COUNT keep-alive GETs of /?size=SIZE
//   node node_tls.js client2 PORT SIZE COUNT   the same over one HTTP/2 session
'use strict';
const fs = require('fs');
const https = require('https');
const http2 = require('http2');

const [mode, port, a, b] = process.argv.slice(2);
const body = (n) => Buffer.from(Array.from({ length: n }, (_, i) => 97 + (i % 26)));
const sizeOf = (url) => Number(new URL(url, 'https://x').searchParams.get('size') || 0);

if (mode === 'server' || mode === 'server2') {
  const opts = { key: fs.readFileSync(b), cert: fs.readFileSync(a) };
  const handler = (req, res) => {
    let n = 0;
    req.on('data', (d) => (n += d.length));
    req.on('end', () => {
      res.setHeader('x-request-bytes', String(n));
      res.end(body(sizeOf(req.url)));
    });
  };
  const srv = mode === 'server' ? https.createServer(opts, handler) : http2.createSecureServer(opts, handler);
  srv.listen(Number(port), '127.0.0.1', () => console.log('READY'));
} else if (mode === 'client') {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  let left = Number(b);
  const one = () =>
    https.get({ host: '127.0.0.1', port: Number(port), path: `/?size=${a}`, rejectUnauthorized: false, agent }, (res) => {
      let n = 0;
      res.on('data', (d) => (n += d.length));
      res.on('end', () => {
        console.log(res.statusCode, n);
        if (--left > 0) one();
        else agent.destroy();
      });
    });
  one();
} else if (mode === 'client2') {
  const session = http2.connect(`https://127.0.0.1:${port}`, { rejectUnauthorized: false });
  let left = Number(b);
  const one = () => {
    const req = session.request({ ':path': `/?size=${a}` });
    let n = 0;
    let status = 0;
    req.on('response', (h) => (status = h[':status']));
    req.on('data', (d) => (n += d.length));
    req.on('end', () => {
      console.log(status, n);
      if (--left > 0) one();
      else session.close();
    });
    req.end();
  };
  one();
} else {
  console.error('usage: see the header of node_tls.js');
  process.exit(2);
}
