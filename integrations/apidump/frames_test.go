package apidump

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// A canned frame stream, played by `cat` in place of the helper: no root needed.
func TestDecodesFramesAsTheProtocolSays(t *testing.T) {
	var stream bytes.Buffer
	frame := func(m map[string]interface{}) {
		body, err := msgpack.Marshal(m) // 64-bit formats for every integer, as the helper writes u64s
		if err != nil {
			t.Fatal(err)
		}
		var head [4]byte
		binary.BigEndian.PutUint32(head[:], uint32(len(body)))
		stream.Write(head[:])
		stream.Write(body)
	}
	frame(map[string]interface{}{"type": "hello", "protocol": 1, "helper_version": "0.1.0", "pid": 42, "clock": "realtime-ns", "ts_ns": int64(1),
		"capabilities": map[string]interface{}{"libraries": []string{"openssl"}},
		"limits":       map[string]interface{}{"max_frame_bytes": 65536, "max_control_frame_bytes": 1 << 20, "max_data_bytes": 16384, "max_queue_bytes": 64 << 20}})
	frame(map[string]interface{}{"type": "from_the_future", "x": 1})
	frame(map[string]interface{}{"type": "segment", "conn_id": uint64(1<<63 + 5), "pid": 7, "tid": 8, "comm": "curl", "ssl_ptr": uint64(0xffff_8000_0000_0010),
		"fd": -1, "dir": 1, "local_ip": "::1", "local_port": 50000, "remote_ip": "::1", "remote_port": 443, "seq": int64(10), "ack": uint64(20),
		"ts_ns": int64(1_700_000_000_000_000_000), "len_total": 3, "data": []byte("abc"), "eos": false, "truncated": true, "lost_before": 2,
		"mid_stream": true, "new_field": map[string]interface{}{"a": 1}})
	frame(map[string]interface{}{"type": "bye", "reason": "shutdown", "ts_ns": 3, "kernel": map[string]interface{}{}, "writer": map[string]interface{}{}})
	file := filepath.Join(t.TempDir(), "frames")
	if err := os.WriteFile(file, stream.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Start(context.Background(), Options{Command: []string{"sh", "-c", `exec cat "$1"`, "sh", file}})
	if err != nil {
		t.Fatal(err)
	}
	var got []Event
	for ev := range c.Events {
		got = append(got, ev)
	}
	if err := c.Wait(); err != nil {
		t.Errorf("Wait: %v", err)
	}
	if c.Hello.Pid != 42 || c.Hello.Limits.MaxDataBytes != 16384 {
		t.Errorf("hello %+v", c.Hello)
	}
	if len(got) != 2 {
		t.Fatalf("%d events, want the segment and bye (the unknown type ignored): %#v", len(got), got)
	}
	s, ok := got[0].(*SSLEvent)
	want := SSLEvent{ConnID: 1<<63 + 5, Pid: 7, Tid: 8, Comm: "curl", SSLPtr: 0xffff_8000_0000_0010, Fd: -1, Dir: DirIngress,
		LocalIP: "::1", LocalPort: 50000, RemoteIP: "::1", RemotePort: 443, Seq: 10, Ack: 20, TsNs: 1_700_000_000_000_000_000,
		LenTotal: 3, Data: []byte("abc"), Truncated: true, LostBefore: 2, MidStream: true}
	if !ok || s.ConnID != want.ConnID || s.SSLPtr != want.SSLPtr || s.Fd != -1 || s.TsNs != want.TsNs || !bytes.Equal(s.Data, want.Data) ||
		s.LocalPort != want.LocalPort || s.RemotePort != 443 || !s.Truncated || s.LostBefore != 2 || !s.MidStream || s.Seq != 10 || s.Ack != 20 || s.Dir != 1 {
		t.Errorf("segment %+v, want %+v", got[0], want)
	}
	if s.Time().Unix() != 1_700_000_000 {
		t.Errorf("Time() %v", s.Time())
	}
	if b, ok := got[1].(*Bye); !ok || b.Reason != "shutdown" {
		t.Errorf("last event %#v", got[1])
	}
}

// A stream that is not the protocol (a helper of another version) fails Start.
func TestRefusesAnotherProtocolVersion(t *testing.T) {
	body, _ := msgpack.Marshal(map[string]interface{}{"type": "hello", "protocol": 2, "capabilities": map[string]interface{}{"libraries": []string{"openssl"}}})
	var head [4]byte
	binary.BigEndian.PutUint32(head[:], uint32(len(body)))
	file := filepath.Join(t.TempDir(), "frames")
	_ = os.WriteFile(file, append(head[:], body...), 0o600)
	_, err := Start(context.Background(), Options{Command: []string{"sh", "-c", `exec cat "$1"`, "sh", file}})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("protocol 2")) {
		t.Errorf("Start: %v, want a protocol version error", err)
	}
}

// The fast path reads the type of a frame that starts with it (as the helper writes every
// frame); any other order still decodes, the slow way.
func TestDecodesWhateverTheFieldOrder(t *testing.T) {
	first := []byte("\x83\xa4type\xa7segment\xa3pid\x07\xa4data\xc4\x02hi")
	if typ, ok := peekType(first); !ok || typ != "segment" {
		t.Fatalf("peekType(type first) = %q, %v", typ, ok)
	}
	later := []byte("\x83\xa3pid\x07\xa4type\xa7segment\xa4data\xc4\x02hi")
	if _, ok := peekType(later); ok {
		t.Fatal("peekType must give up when type is not the first field")
	}
	for _, body := range [][]byte{first, later} {
		ev, err := decode(body)
		if err != nil {
			t.Fatal(err)
		}
		seg, ok := ev.(*SSLEvent)
		if !ok || seg.Pid != 7 || string(seg.Data) != "hi" {
			t.Fatalf("decode(%q) = %#v", body, ev)
		}
	}
	for _, bad := range [][]byte{nil, {0x83}, []byte("\x83\xa4type"), []byte("\x83\xa4type\xa9seg")} {
		if typ, ok := peekType(bad); ok {
			t.Fatalf("peekType(%q) = %q: must not read past the end", bad, typ)
		}
	}
}

// WaitReady returns at the ready frame, with its counts, while the process
// frames before it stay on Events; and it returns an error when the helper
// ends without one (a helper that could not attach).
func TestWaitReady(t *testing.T) {
	stream := func(frames ...map[string]interface{}) string {
		var b bytes.Buffer
		for _, m := range frames {
			body, err := msgpack.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			var head [4]byte
			binary.BigEndian.PutUint32(head[:], uint32(len(body)))
			b.Write(head[:])
			b.Write(body)
		}
		file := filepath.Join(t.TempDir(), "frames")
		if err := os.WriteFile(file, b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		return file
	}
	hello := map[string]interface{}{"type": "hello", "protocol": 1, "capabilities": map[string]interface{}{"libraries": []string{"openssl"}}}
	process := map[string]interface{}{"type": "process", "pid": -1, "library": "/usr/lib/libssl.so.3", "kind": "openssl", "state": "attached", "functions": []string{"SSL_write"}, "reason": "", "ts_ns": 1}
	bye := map[string]interface{}{"type": "bye", "reason": "shutdown", "ts_ns": 3, "kernel": map[string]interface{}{}, "writer": map[string]interface{}{}}

	// The helper's stdout stays open after ready (sleep) until we stop it, as a live helper's does.
	file := stream(hello, process, map[string]interface{}{"type": "ready", "ts_ns": 2, "libraries": 1, "failed": 0}, bye)
	c, err := Start(context.Background(), Options{Command: []string{"sh", "-c", `cat "$1"; exec sleep 30`, "sh", file}, StopTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := c.WaitReady(ctx)
	if err != nil || r.Libraries != 1 || r.Failed != 0 || r.TsNs != 2 {
		t.Fatalf("WaitReady: %+v, %v", r, err)
	}
	select {
	case <-c.Ready():
	default:
		t.Error("Ready() not closed after WaitReady returned")
	}
	if p, ok := (<-c.Events).(*Process); !ok || p.Library != "/usr/lib/libssl.so.3" {
		t.Errorf("first event %#v, want the process frame", p)
	}
	if _, ok := (<-c.Events).(*Ready); !ok {
		t.Error("second event is not *Ready")
	}
	go func() {
		for range c.Events {
		}
	}()
	_ = c.Stop()

	// No ready: an attach failure, then bye.
	file = stream(hello, map[string]interface{}{"type": "error", "code": "attach_failed", "message": "no TLS library", "fix": "install OpenSSL", "fatal": true},
		map[string]interface{}{"type": "bye", "reason": "fatal_error", "ts_ns": 3, "kernel": map[string]interface{}{}, "writer": map[string]interface{}{}})
	c, err = Start(context.Background(), Options{Command: []string{"sh", "-c", `exec cat "$1"`, "sh", file}})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range c.Events {
		}
	}()
	r, err = c.WaitReady(ctx)
	var he *HelperError
	if r != nil || !errors.As(err, &he) || he.Code != "attach_failed" {
		t.Errorf("WaitReady without ready: %+v, %v; want the fatal attach_failed error", r, err)
	}
}

// Batches carries the same events as Events, in the same order, on every recorded fixture
// stream (frames of real captures); a segment's Data stays its own when neighbours share a slab.
func TestBatchesDeliverWhatEventsDo(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "fixtures", "*.frames"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixture streams (%v)", err)
	}
	read := func(file string, batch int) []Event {
		c, err := Start(context.Background(), Options{Command: []string{"sh", "-c", `exec cat "$1"`, "sh", file}, Batch: batch})
		if err != nil {
			t.Fatal(err)
		}
		var got []Event
		if batch > 0 {
			if _, open := <-c.Events; open {
				t.Fatal("Events must be closed when events go out on Batches")
			}
			for b := range c.Batches {
				if len(b) == 0 || len(b) > batch {
					t.Fatalf("a batch of %d events (Batch %d)", len(b), batch)
				}
				got = append(got, b...)
			}
		} else {
			if c.Batches != nil {
				t.Fatal("Batches must be nil without Options.Batch")
			}
			for ev := range c.Events {
				got = append(got, ev)
			}
		}
		if err := c.Wait(); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		return got
	}
	for _, file := range files {
		want := read(file, 0)
		// Appending to one segment's Data must not reach the next frame's bytes.
		tail := bytes.Repeat([]byte("appended"), 128) // fits in the rest of a shared buffer
		mine := read(file, 0)
		segments := 0
		for _, ev := range mine {
			if s, ok := ev.(*SSLEvent); ok {
				s.Data = append(s.Data, tail...)
			}
		}
		for i, ev := range mine {
			if s, ok := ev.(*SSLEvent); ok {
				segments++
				if w := want[i].(*SSLEvent).Data; !bytes.Equal(s.Data, append(append([]byte(nil), w...), tail...)) {
					t.Fatalf("%s: event %d's Data changed by an append to another's", file, i)
				}
			}
		}
		if segments == 0 {
			t.Fatalf("%s: no segments", file)
		}
		for _, batch := range []int{1, 3, 256} {
			if got := read(file, batch); !reflect.DeepEqual(got, want) {
				t.Fatalf("%s, Batch %d: %d events differ from Events' %d", file, batch, len(got), len(want))
			}
		}
	}
}
