package apidump

import (
	"bytes"
	"math/rand"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// The fast segment decoder gives what msgpack.Unmarshal gives, for any segment in any integer
// format and field order, and refuses (never misreads) what it does not handle.
func TestSegmentDecoderAgreesWithMsgpack(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	u64 := func() uint64 {
		switch rng.Intn(4) {
		case 0:
			return uint64(rng.Intn(200))
		case 1:
			return uint64(rng.Uint32())
		case 2:
			return 1<<63 + uint64(rng.Int63n(1000))
		}
		return rng.Uint64()
	}
	fast, slow := 0, 0
	shared := &interner{}
	for i := 0; i < 3000; i++ {
		data := make([]byte, rng.Intn([]int{1, 10, 300, 70000}[rng.Intn(4)]))
		rng.Read(data)
		m := map[string]interface{}{
			"type": "segment", "conn_id": u64(), "pid": uint32(rng.Uint32()), "tid": uint32(rng.Intn(1 << 20)), "comm": string(bytes.Repeat([]byte("é"), rng.Intn(8))),
			"ssl_ptr": u64(), "fd": int32(rng.Intn(1<<16) - 1), "dir": uint8(rng.Intn(2)), "local_ip": "::ffff:127.0.0.1", "local_port": uint16(rng.Intn(65536)),
			"remote_ip": "127.0.0.1", "remote_port": uint16(rng.Intn(65536)), "seq": u64(), "ack": u64(), "ts_ns": u64(), "len_total": u64(),
			"data": data, "eos": rng.Intn(2) == 0, "truncated": rng.Intn(2) == 0, "lost_before": u64(), "mid_stream": rng.Intn(2) == 0,
		}
		if rng.Intn(5) == 0 {
			m["rate_limited"] = true
		}
		if rng.Intn(5) == 0 {
			m["shed"] = true
		}
		if rng.Intn(10) == 0 {
			m["from_a_later_version"] = []int{1, 2}
		}
		var buf bytes.Buffer
		enc := msgpack.NewEncoder(&buf)
		enc.UseCompactInts(rng.Intn(2) == 0)
		enc.SetSortMapKeys(rng.Intn(2) == 0)
		if err := enc.Encode(m); err != nil {
			t.Fatal(err)
		}
		body := buf.Bytes()
		var want SSLEvent
		if err := msgpack.Unmarshal(body, &want); err != nil {
			t.Fatal(err)
		}
		var got SSLEvent
		// Strings new, or from an interner shared by every case (its hits must give the
		// same strings), or from a fresh one.
		var strs *interner
		switch i % 3 {
		case 1:
			strs = shared
		case 2:
			strs = &interner{}
		}
		if err := decodeSegment(body, &got, strs); err != nil {
			if _, later := m["from_a_later_version"]; !later {
				t.Fatalf("case %d: the fast decoder refused a plain segment: %v", i, err)
			}
			slow++
		} else {
			fast++
			if len(want.Data) == 0 && len(got.Data) == 0 {
				got.Data, want.Data = nil, nil
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("case %d:\nfast %+v\nslow %+v", i, got, want)
			}
		}
		// Cut anywhere: an error, never a panic or a wrong event.
		cut := body[:rng.Intn(len(body))]
		var e SSLEvent
		if decodeSegment(cut, &e, nil) == nil {
			t.Fatalf("case %d: a segment cut at %d of %d bytes decoded", i, len(cut), len(body))
		}
	}
	if fast == 0 || slow == 0 {
		t.Fatalf("both paths must be tried: %d fast, %d slow", fast, slow)
	}
}
