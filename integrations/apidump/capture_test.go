package apidump

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests run the real helper with real eBPF: as root, on 127.0.0.1 only.
// Not root: skipped with a loud message; with CI=true: failed instead.

var repo = filepath.Join("..", "..")

func helperCommand() []string {
	if c := os.Getenv("HTTPS_CAPTURE_COMMAND"); c != "" {
		return strings.Fields(c)
	}
	return []string{"node", filepath.Join(repo, "dist", "helper", "cli.js")}
}

func needKernel(t *testing.T) {
	t.Helper()
	why := ""
	switch {
	case os.Geteuid() != 0:
		why = "not root: the helper needs root (or CAP_BPF and CAP_PERFMON)"
	case !exists(filepath.Join(repo, "dist", "helper", "cli.js")) && os.Getenv("HTTPS_CAPTURE_COMMAND") == "":
		why = "dist/helper/cli.js is missing: run npm run build"
	}
	for _, p := range []string{"node", "curl", "openssl", "/usr/bin/python3"} {
		if _, err := exec.LookPath(p); err != nil && why == "" {
			why = p + " is not installed"
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and the real helper cannot run: %s", why)
	}
	fmt.Fprintf(os.Stderr, "\n*** SKIPPED %s: %s ***\n\n", t.Name(), why)
	t.Skipf("SKIPPED: %s", why)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// pattern is test/lib/tls_server.py's pattern(n, seed).
func pattern(n, seed int) []byte {
	var b bytes.Buffer
	for k := 0; b.Len() < n; k++ {
		fmt.Fprintf(&b, "seed-%d line %d the quick brown fox jumps over the lazy dog\n", seed, k)
	}
	return b.Bytes()[:n]
}

// startServer runs test/lib/tls_server.py on 127.0.0.1 with a fresh self-signed cert.
func startServer(t *testing.T) (port, pid int) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	out, err := exec.Command("openssl", "req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
		"-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
	cmd := exec.Command("/usr/bin/python3", filepath.Join(repo, "test", "lib", "tls_server.py"), "--port", "0", "--cert", cert, "--key", key)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		b := make([]byte, 64)
		n, _ := stdout.Read(b)
		line <- string(b[:n])
	}()
	select {
	case l := <-line:
		m := regexp.MustCompile(`READY (\d+)`).FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("tls_server.py said %q", l)
		}
		port, _ = strconv.Atoi(m[1])
	case <-time.After(10 * time.Second):
		t.Fatal("tls_server.py did not start")
	}
	return port, cmd.Process.Pid
}

// collector keeps every event and lets a test wait for a condition on them.
type collector struct {
	mu     sync.Mutex
	events []Event
	more   chan struct{}
	closed chan struct{}
}

func collect(c *Capture) *collector {
	col := &collector{more: make(chan struct{}, 1), closed: make(chan struct{})}
	go func() {
		for ev := range c.Events {
			col.mu.Lock()
			col.events = append(col.events, ev)
			col.mu.Unlock()
			select {
			case col.more <- struct{}{}:
			default:
			}
		}
		close(col.closed)
	}()
	return col
}

func (col *collector) waitFor(t *testing.T, what string, d time.Duration, ok func([]Event) bool) {
	t.Helper()
	deadline := time.After(d)
	for {
		col.mu.Lock()
		done := ok(col.events)
		col.mu.Unlock()
		if done {
			return
		}
		select {
		case <-col.more:
		case <-col.closed:
			col.mu.Lock()
			done = ok(col.events)
			col.mu.Unlock()
			if !done {
				t.Fatalf("the helper's output ended before %s", what)
			}
			return
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// conn is what one connection delivered, rebuilt from its events.
type conn struct {
	open    *ConnOpen
	segs    []*SSLEvent
	close   *ConnClose
	data    [2][]byte
	order   []string // "open", "seg", "close", in arrival order
	errors  []string
	firstAt [2]int // index in segs of the first segment of each direction, -1 if none
}

func rebuild(events []Event) map[uint64]*conn {
	conns := map[uint64]*conn{}
	get := func(id uint64) *conn {
		if conns[id] == nil {
			conns[id] = &conn{firstAt: [2]int{-1, -1}}
		}
		return conns[id]
	}
	for _, ev := range events {
		switch e := ev.(type) {
		case *ConnOpen:
			c := get(e.ConnID)
			c.open = e
			c.order = append(c.order, "open")
		case *SSLEvent:
			c := get(e.ConnID)
			c.order = append(c.order, "seg")
			d := e.Dir
			if d > 1 {
				c.errors = append(c.errors, fmt.Sprintf("dir %d", d))
				continue
			}
			if c.firstAt[d] < 0 {
				c.firstAt[d] = len(c.segs)
			}
			if e.Seq != uint64(len(c.data[d])) || e.LostBefore != 0 || e.Truncated {
				c.errors = append(c.errors, fmt.Sprintf("dir %d: seq %d after %d bytes (lost_before %d, truncated %v)", d, e.Seq, len(c.data[d]), e.LostBefore, e.Truncated))
			}
			if e.Ack != uint64(len(c.data[1-d])) {
				c.errors = append(c.errors, fmt.Sprintf("dir %d seq %d: ack %d, but %d bytes went the other way before", d, e.Seq, e.Ack, len(c.data[1-d])))
			}
			c.data[d] = append(c.data[d], e.Data...)
			c.segs = append(c.segs, e)
		case *ConnClose:
			c := get(e.ConnID)
			c.close = e
			c.order = append(c.order, "close")
		}
	}
	return conns
}

func (c *conn) check(t *testing.T, name string) {
	t.Helper()
	if c.open == nil || c.close == nil {
		t.Errorf("%s: open %v, close %v: want both", name, c.open != nil, c.close != nil)
		return
	}
	if c.order[0] != "open" || c.order[len(c.order)-1] != "close" || strings.Count(strings.Join(c.order, " "), "close") != 1 {
		t.Errorf("%s: frames in order %v: want open, segments, one close", name, c.order)
	}
	for _, e := range c.errors {
		t.Errorf("%s: %s", name, e)
	}
	if !c.close.EOS || c.close.EgressEnd != uint64(len(c.data[DirEgress])) || c.close.IngressEnd != uint64(len(c.data[DirIngress])) {
		t.Errorf("%s: conn_close %+v, but %d bytes out and %d in", name, *c.close, len(c.data[0]), len(c.data[1]))
	}
	for _, s := range c.segs {
		if s.Pid != c.open.Pid || s.Fd != c.open.Fd || s.LocalPort != c.open.LocalPort || s.RemotePort != c.open.RemotePort || s.SSLPtr != c.open.SSLPtr {
			t.Errorf("%s: segment %d/%d of pid %d fd %d ports %d->%d differs from conn_open %+v", name, s.Dir, s.Seq, s.Pid, s.Fd, s.LocalPort, s.RemotePort, *c.open)
			break
		}
	}
	if c.open.Fd < 0 || c.open.LocalIP != "127.0.0.1" || c.open.RemoteIP != "127.0.0.1" || c.open.LocalPort == 0 || c.open.RemotePort == 0 {
		t.Errorf("%s: fd %d, %s:%d -> %s:%d: want a loopback 4-tuple and fd >= 0", name, c.open.Fd, c.open.LocalIP, c.open.LocalPort, c.open.RemoteIP, c.open.RemotePort)
	}
}

func connsOf(conns map[uint64]*conn, pid int) []*conn {
	var out []*conn
	for _, c := range conns {
		if c.open != nil && int(c.open.Pid) == pid {
			out = append(out, c)
		}
	}
	return out
}

// peer finds the server side of a client connection by its ports.
func peer(conns []*conn, client *conn) *conn {
	for _, s := range conns {
		if s.open.LocalPort == client.open.RemotePort && s.open.RemotePort == client.open.LocalPort {
			return s
		}
	}
	return nil
}

func TestCurlAndPythonAgainstTLSServer(t *testing.T) {
	needKernel(t)
	port, serverPid := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	c, err := Start(ctx, Options{Command: helperCommand(), Comms: []string{"curl", "python3"}, StatsInterval: time.Second, Stderr: &stderr})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if c.Hello.Protocol != 1 || !contains(c.Hello.Capabilities.Libraries, "openssl") || c.Hello.Limits.MaxDataBytes != 16384 {
		t.Errorf("hello: %+v", c.Hello)
	}
	col := collect(c)
	defer func() {
		if t.Failed() {
			t.Logf("helper stderr:\n%s", stderr.String())
		}
	}()
	// Ready: every TLS file found at start has its probes. The first attached Process event
	// alone is not enough: curl could start while libssl's connection probes (SSL_set_fd, the
	// role) are still going in, and its connection would have no socket or role.
	rctx, rcancel := context.WithTimeout(ctx, 15*time.Second)
	defer rcancel()
	if _, err := c.WaitReady(rctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}

	// curl: a POST of 40000 bytes, then on the same connection a GET of 70000 (both over 16 KiB).
	url := fmt.Sprintf("https://127.0.0.1:%d", port)
	post := pattern(40000, 7)
	bodyFile := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(bodyFile, post, 0o600); err != nil {
		t.Fatal(err)
	}
	curl := exec.Command("curl", "-sS", "-k", "--http1.1", "--noproxy", "*", "-H", "Content-Type: application/octet-stream",
		"--data-binary", "@"+bodyFile, url+"/echo", "--next", "-sS", "-k", "--http1.1", "--noproxy", "*", url+"/bytes/70000?seed=3")
	curlOut, err := curl.Output()
	if err != nil {
		t.Fatalf("curl: %v", err)
	}
	if want := append(append([]byte{}, post...), pattern(70000, 3)...); !bytes.Equal(curlOut, want) {
		t.Fatalf("curl printed %d bytes, want %d", len(curlOut), len(want))
	}
	// python http.client: a POST of 20000 bytes.
	pyBody := pattern(20000, 9)
	py := exec.Command("/usr/bin/python3", filepath.Join(repo, "test", "lib", "tls_client.py"), "--url", url+"/echo", "--method", "POST")
	py.Stdin = bytes.NewReader(pyBody)
	pyOut, err := py.Output()
	if err != nil || !bytes.Equal(pyOut, pyBody) {
		t.Fatalf("python client: %v, %d bytes back", err, len(pyOut))
	}
	clients := map[string]int{"curl": curl.Process.Pid, "python": py.Process.Pid}

	// Both clients and the server's two connections end on their own.
	col.waitFor(t, "end of stream of the clients' and the server's connections", 10*time.Second, func(evs []Event) bool {
		conns := rebuild(evs)
		n := 0
		for _, pid := range []int{clients["curl"], clients["python"], serverPid} {
			for _, c := range connsOf(conns, pid) {
				if c.close != nil {
					n++
				}
			}
		}
		return n >= 4
	})
	// The config frame Start sent (stats every second) is in force.
	col.waitFor(t, "a stats event with stats_interval_ms 1000", 5*time.Second, func(evs []Event) bool {
		for _, ev := range evs {
			if st, ok := ev.(*Stats); ok && st.Config.StatsIntervalMs == 1000 {
				return true
			}
		}
		return false
	})
	// Shutdown, not Stop: Stop reads Events too, and the collector must see every event.
	if err := c.Shutdown(); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	<-col.closed
	if err := c.Wait(); err != nil {
		t.Errorf("Wait: %v", err)
	}
	evs := col.events
	if _, ok := evs[len(evs)-1].(*Bye); !ok {
		t.Errorf("last event is %T, want *Bye", evs[len(evs)-1])
	}
	for _, ev := range evs {
		switch e := ev.(type) {
		case *HelperError:
			t.Errorf("helper error: %v", e)
		case *Loss:
			// Any source: a calls_missed loss has no bytes, only calls.
			t.Errorf("loss: %+v", *e)
		}
	}
	// Should anything below fail: the kernel's last word on what it saw and missed, and how
	// each connection of the clients began.
	defer func() {
		if !t.Failed() {
			return
		}
		for i := len(evs) - 1; i >= 0; i-- {
			if st, ok := evs[i].(*Stats); ok {
				t.Logf("last stats: kernel %+v writer %+v", st.Kernel, st.Writer)
				break
			}
		}
		for _, ev := range evs {
			if o, ok := ev.(*ConnOpen); ok && o.Pid != uint32(serverPid) {
				t.Logf("conn_open %+v", *o)
			}
		}
	}()

	conns := rebuild(evs)
	for id, cn := range conns {
		cn.check(t, fmt.Sprintf("conn %d", id))
	}
	server := connsOf(conns, serverPid)
	for name, pid := range clients {
		mine := connsOf(conns, pid)
		if len(mine) != 1 {
			t.Errorf("%s (pid %d): %d connections, want 1", name, pid, len(mine))
			continue
		}
		cl := mine[0]
		if int(cl.open.RemotePort) != port || cl.open.Role != "client" {
			t.Errorf("%s: remote port %d role %s, want the server's port %d and client", name, cl.open.RemotePort, cl.open.Role, port)
		}
		// Request before response: the first bytes out precede the first bytes in.
		if cl.firstAt[DirEgress] < 0 || cl.firstAt[DirIngress] < 0 || cl.firstAt[DirEgress] > cl.firstAt[DirIngress] {
			t.Errorf("%s: first egress segment at %d, first ingress at %d", name, cl.firstAt[0], cl.firstAt[1])
		}
		srv := peer(server, cl)
		if srv == nil {
			t.Errorf("%s: no server connection for %s:%d -> :%d", name, cl.open.LocalIP, cl.open.LocalPort, cl.open.RemotePort)
			continue
		}
		if srv.open.Role != "server" || int(srv.open.LocalPort) != port {
			t.Errorf("%s: server side role %s local port %d", name, srv.open.Role, srv.open.LocalPort)
		}
		// Byte-identical: what one end wrote is what the other read, both captured.
		if !bytes.Equal(cl.data[DirEgress], srv.data[DirIngress]) || !bytes.Equal(cl.data[DirIngress], srv.data[DirEgress]) {
			t.Errorf("%s: client wrote %d, server read %d; server wrote %d, client read %d (or the bytes differ)",
				name, len(cl.data[0]), len(srv.data[1]), len(srv.data[0]), len(cl.data[1]))
		}
	}
	// And the plaintext holds exactly what was sent, in order.
	if cs := connsOf(conns, clients["curl"]); len(cs) == 1 {
		out, in := cs[0].data[DirEgress], cs[0].data[DirIngress]
		i := bytes.Index(out, []byte("\r\n\r\n"))
		if !bytes.HasPrefix(out, []byte("POST /echo HTTP/1.1\r\n")) || i < 0 || !bytes.HasPrefix(out[i+4:], post) ||
			!bytes.HasPrefix(out[i+4+len(post):], []byte("GET /bytes/70000?seed=3 HTTP/1.1\r\n")) {
			t.Errorf("curl's egress is not POST /echo with its body then GET /bytes/70000: %q…", trim(out))
		}
		if !bytes.HasPrefix(in, []byte("HTTP/1.1 200 ")) || !bytes.Contains(in, post) || !bytes.HasSuffix(in, pattern(70000, 3)) {
			t.Errorf("curl's ingress is not the echo then the 70000 bytes: %q…", trim(in))
		}
	}
	if cs := connsOf(conns, clients["python"]); len(cs) == 1 {
		out, in := cs[0].data[DirEgress], cs[0].data[DirIngress]
		if !bytes.HasPrefix(out, []byte("POST /echo HTTP/1.1\r\n")) || !bytes.HasSuffix(out, pyBody) || !bytes.HasSuffix(in, pyBody) {
			t.Errorf("python's bytes: out %q…, in %q…", trim(out), trim(in))
		}
	}
	if err := c.Wait(); err != nil {
		t.Errorf("Wait: %v", err)
	}
}

func trim(b []byte) []byte {
	if len(b) > 200 {
		return b[:200]
	}
	return b
}

// A context that ends stops the helper: shutdown, then bye, then a nil Wait.
func TestContextStopsHelper(t *testing.T) {
	needKernel(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := Start(ctx, Options{Command: helperCommand(), Comms: []string{"no-such-comm"}, Ports: []int{443}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	// A bad config is answered with a non-fatal error event; capture goes on.
	if err := c.Configure(Config{Libraries: []string{"no-such-tls"}}); err != nil {
		t.Fatal(err)
	}
	var got *HelperError
	for ev := range c.Events {
		if e, ok := ev.(*HelperError); ok {
			got = e
			cancel()
		}
	}
	if got == nil || got.Code != "unknown_library" || got.Fatal {
		t.Errorf("error event %+v, want a non-fatal unknown_library", got)
	}
	if err := c.Wait(); err != nil {
		t.Errorf("Wait after the context ended: %v", err)
	}
}

// A helper that exits without frames is an error from Start, with its stderr.
func TestHelperThatFailsToStart(t *testing.T) {
	_, err := Start(context.Background(), Options{Command: []string{"sh", "-c", "echo no capture here >&2; exit 3; :"}})
	if err == nil || !strings.Contains(err.Error(), "no capture here") || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Start: %v; want the exit status and the stderr", err)
	}
}
