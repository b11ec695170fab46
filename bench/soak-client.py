# soak-client.py: an HTTPS/1.1 client for bench/soak.ts that counts, exactly, the plaintext bytes
# it hands to and gets from TLS: COUNT requests on one connection (keep-alive), GET or POST.
#   python3 soak-client.py PORT COUNT METHOD PATH BODY_BYTES [PAUSE_S]
# COUNT 0: until stdin closes, one request every PAUSE_S seconds (a long-lived connection).
# Prints "SENT <bytes> RECEIVED <bytes> REQUESTS <n>" at the end.
import select
import socket
import ssl
import sys

port, count, method, path, body_bytes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
pause = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
ctx = ssl._create_unverified_context()
tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
body = bytes((97 + i % 26 for i in range(body_bytes))) if method == "POST" else b""
sent = received = done = 0


def one() -> None:
    global sent, received
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n\r\n" if method == "POST" else f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    req = head.encode() + body
    tls.sendall(req)
    sent += len(req)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = tls.recv(65536)
        if not chunk:
            raise SystemExit("connection closed before the response head")
        got += chunk
    headers, _, rest = got.partition(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in headers.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    want = len(headers) + 4 + length
    while len(got) < want:
        chunk = tls.recv(65536)
        if not chunk:
            raise SystemExit("connection closed inside the response body")
        got += chunk
    received += len(got)


while count == 0 or done < count:
    one()
    done += 1
    if count == 0 and select.select([sys.stdin], [], [], pause)[0] and not sys.stdin.readline():
        break
    elif count and pause:
        select.select([], [], [], pause)
tls.close()
print(f"SENT {sent} RECEIVED {received} REQUESTS {done}", flush=True)
