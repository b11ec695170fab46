# Minimal HTTPS forward proxy for tests (stdlib only): TLS from the client, then
# "CONNECT host:port" opens a TCP tunnel to the target (loopback only) and relays both ways.
# A client that speaks TLS to the target through it runs TLS inside TLS (curl --proxy https://).
import argparse
import select
import socket
import ssl
import sys
import threading


def relay(conn: ssl.SSLSocket, up: socket.socket) -> None:
    """Both ways on one thread: an SSL object is not to be read and written at once."""
    while True:
        ready = [conn] if conn.pending() else select.select([conn, up], [], [], 60)[0]
        if not ready:
            return
        for src in ready:
            try:
                data = src.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            except OSError:
                return
            if not data:
                return
            (up if src is conn else conn).sendall(data)


def serve(conn: socket.socket) -> None:
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(line) < 2 or line[0] != "CONNECT":
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port = line[1].rpartition(":")
        host = host.strip("[]")
        if host not in ("127.0.0.1", "::1", "localhost"):
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        with socket.create_connection((host, int(port))) as up:
            conn.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            relay(conn, up)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ls = socket.create_server(("127.0.0.1", args.port))
    print(f"READY {ls.getsockname()[1]}", flush=True)
    while True:
        raw, _ = ls.accept()
        try:
            conn = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
