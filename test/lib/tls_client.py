# Minimal HTTPS/1.1 test client (stdlib http.client): writes the raw response body to stdout, exits 1 on non-2xx.
import argparse
import http.client
import ssl
import sys
from urllib.parse import urlsplit


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--method", default="GET", choices=["GET", "POST"])
    args = ap.parse_args()

    url = urlsplit(args.url)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    body = sys.stdin.buffer.read() if args.method == "POST" else None

    conn = http.client.HTTPSConnection(
        url.hostname, url.port or 443, context=ssl._create_unverified_context(), timeout=60
    )
    conn.request(args.method, path, body=body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    if not 200 <= resp.status < 300:
        sys.stderr.write(f"HTTP {resp.status} {resp.reason}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
