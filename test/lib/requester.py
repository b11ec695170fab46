# A long-lived HTTPS client (stdlib): for each line "PATH" on stdin, one GET on a new connection to
# 127.0.0.1:PORT; prints "DONE <status> <body bytes>" per request. It keeps the libssl it loaded
# at start mapped for its whole life: the tests change that file on disk under it.
import http.client
import ssl
import sys

port = int(sys.argv[1])
ctx = ssl._create_unverified_context()
print("READY", flush=True)
for line in sys.stdin:
    path = line.strip()
    if not path:
        continue
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    print(f"DONE {resp.status} {len(body)}", flush=True)
