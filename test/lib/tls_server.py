# Minimal HTTPS/1.1 test server (stdlib only): GET /bytes/<n>?seed=<s> -> pattern(n, s); POST /echo echoes the body.
import argparse
import re
import socket
import socketserver
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LINE = "seed-{} line {} the quick brown fox jumps over the lazy dog\n"


def pattern(n: int, seed: int = 0) -> bytes:
    """Same bytes as pattern(n, seed) in servers.ts."""
    parts = []
    total = 0
    k = 0
    while total < n:
        line = LINE.format(seed, k).encode("ascii")
        parts.append(line)
        total += len(line)
        k += 1
    return b"".join(parts)[:n]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tls_server"

    def log_request(self, code="-", size="-"):
        pass  # no per-request noise; errors still go to stderr via log_message

    def reply(self, status: int, body: bytes, ctype: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)  # one write call for the whole body

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        m = re.fullmatch(r"/bytes/(\d+)", url.path)
        if not m:
            self.reply(404, b"not found\n", "text/plain")
            return
        seed = int(parse_qs(url.query).get("seed", ["0"])[0])
        self.reply(200, pattern(int(m.group(1)), seed))

    def do_POST(self) -> None:
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            self.reply(411, b"Content-Length required\n", "text/plain")
            return
        body = self.read_body()
        if urlsplit(self.path).path != "/echo":
            self.reply(404, b"not found\n", "text/plain")
            return
        self.reply(200, body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which may block on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "localhost"
        self.server_port = self.server_address[1]

    def finish_request(self, request, client_address) -> None:
        # Handshake in the per-connection thread, not in accept().
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            request.close()
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    srv = Server(args.host, args.port, ctx)
    print(f"READY {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
