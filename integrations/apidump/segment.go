// segment.go: a decoder for segment frames, the one frame type that comes by the hundred
// thousand per second. It walks the msgpack map once, without reflection, and Data points into
// the frame's own bytes instead of a copy. Anything it does not expect (a field of another
// type, a format it does not read) sends the frame to the general decoder (msgpack.Unmarshal),
// so it is only ever a shortcut: TestSegmentDecoderAgreesWithMsgpack holds the two together.
package apidump

import (
	"encoding/binary"
	"errors"
	"math"
)

var errSlowPath = errors.New("not for the fast decoder")

type mpReader struct {
	b []byte
	i int
}

func (r *mpReader) byte1() (byte, error) {
	if r.i >= len(r.b) {
		return 0, errSlowPath
	}
	c := r.b[r.i]
	r.i++
	return c, nil
}

func (r *mpReader) take(n int) ([]byte, error) {
	if n < 0 || r.i+n > len(r.b) {
		return nil, errSlowPath
	}
	s := r.b[r.i : r.i+n : r.i+n] // capped: an append to a field reallocates, never writes past it
	r.i += n
	return s, nil
}

// mapLen reads a map header.
func (r *mpReader) mapLen() (int, error) {
	c, err := r.byte1()
	switch {
	case err != nil:
		return 0, err
	case c&0xf0 == 0x80:
		return int(c & 0x0f), nil
	case c == 0xde:
		s, err := r.take(2)
		if err != nil {
			return 0, err
		}
		return int(binary.BigEndian.Uint16(s)), nil
	case c == 0xdf:
		s, err := r.take(4)
		if err != nil {
			return 0, err
		}
		return int(binary.BigEndian.Uint32(s)), nil
	}
	return 0, errSlowPath
}

// str reads a string (or bin) as bytes of the frame.
func (r *mpReader) str() ([]byte, error) {
	c, err := r.byte1()
	if err != nil {
		return nil, err
	}
	n := 0
	switch {
	case c&0xe0 == 0xa0:
		n = int(c & 0x1f)
	case c == 0xd9 || c == 0xc4:
		s, err := r.take(1)
		if err != nil {
			return nil, err
		}
		n = int(s[0])
	case c == 0xda || c == 0xc5:
		s, err := r.take(2)
		if err != nil {
			return nil, err
		}
		n = int(binary.BigEndian.Uint16(s))
	case c == 0xdb || c == 0xc6:
		s, err := r.take(4)
		if err != nil {
			return nil, err
		}
		n = int(binary.BigEndian.Uint32(s))
	default:
		return nil, errSlowPath
	}
	return r.take(n)
}

// int reads any msgpack integer as an int64 (uint64 values above 2^63 wrap, as the callers
// that want them unsigned read them back).
func (r *mpReader) int() (int64, error) {
	c, err := r.byte1()
	if err != nil {
		return 0, err
	}
	switch {
	case c <= 0x7f:
		return int64(c), nil
	case c >= 0xe0:
		return int64(int8(c)), nil
	}
	var size int
	switch c {
	case 0xcc, 0xd0:
		size = 1
	case 0xcd, 0xd1:
		size = 2
	case 0xce, 0xd2:
		size = 4
	case 0xcf, 0xd3:
		size = 8
	default:
		return 0, errSlowPath
	}
	s, err := r.take(size)
	if err != nil {
		return 0, err
	}
	switch c {
	case 0xcc:
		return int64(s[0]), nil
	case 0xcd:
		return int64(binary.BigEndian.Uint16(s)), nil
	case 0xce:
		return int64(binary.BigEndian.Uint32(s)), nil
	case 0xcf:
		return int64(binary.BigEndian.Uint64(s)), nil
	case 0xd0:
		return int64(int8(s[0])), nil
	case 0xd1:
		return int64(int16(binary.BigEndian.Uint16(s))), nil
	case 0xd2:
		return int64(int32(binary.BigEndian.Uint32(s))), nil
	}
	return int64(binary.BigEndian.Uint64(s)), nil
}

func (r *mpReader) boolean() (bool, error) {
	c, err := r.byte1()
	switch {
	case err != nil:
		return false, err
	case c == 0xc2:
		return false, nil
	case c == 0xc3:
		return true, nil
	}
	return false, errSlowPath
}

// decodeSegment fills e from a segment frame's body; errSlowPath when the frame holds
// something it does not read (the caller then uses msgpack.Unmarshal).
func decodeSegment(body []byte, e *SSLEvent, strs *interner) error {
	r := mpReader{b: body}
	n, err := r.mapLen()
	if err != nil {
		return err
	}
	for ; n > 0; n-- {
		k, err := r.str()
		if err != nil {
			return err
		}
		var v int64
		switch string(k) { // no allocation: the compiler compares in place
		case "type":
			_, err = r.str()
		case "comm", "local_ip", "remote_ip":
			var s []byte
			if s, err = r.str(); err == nil {
				switch string(k) {
				case "comm":
					e.Comm = strs.get(s)
				case "local_ip":
					e.LocalIP = strs.get(s)
				default:
					e.RemoteIP = strs.get(s)
				}
			}
		case "data":
			e.Data, err = r.str()
		case "eos":
			e.EOS, err = r.boolean()
		case "truncated":
			e.Truncated, err = r.boolean()
		case "mid_stream":
			e.MidStream, err = r.boolean()
		case "rate_limited":
			e.RateLimited, err = r.boolean()
		case "shed":
			e.Shed, err = r.boolean()
		case "conn_id", "pid", "tid", "ssl_ptr", "fd", "dir", "local_port", "remote_port", "seq", "ack", "ts_ns", "len_total", "lost_before":
			if v, err = r.int(); err != nil {
				return err
			}
			if !setInt(e, string(k), v) {
				return errSlowPath
			}
		default:
			return errSlowPath // a field of a later version: the general decoder
		}
		if err != nil {
			return err
		}
	}
	if r.i != len(body) {
		return errSlowPath
	}
	return nil
}

// setInt stores an integer field, refusing what the field's type cannot hold.
func setInt(e *SSLEvent, k string, v int64) bool {
	u := uint64(v)
	switch k {
	case "conn_id":
		e.ConnID = u
	case "ssl_ptr":
		e.SSLPtr = u
	case "seq":
		e.Seq = u
	case "ack":
		e.Ack = u
	case "ts_ns":
		e.TsNs = u
	case "len_total":
		e.LenTotal = u
	case "lost_before":
		e.LostBefore = u
	case "pid", "tid":
		if v < 0 || v > math.MaxUint32 {
			return false
		}
		if k == "pid" {
			e.Pid = uint32(v)
		} else {
			e.Tid = uint32(v)
		}
	case "fd":
		if v < math.MinInt32 || v > math.MaxInt32 {
			return false
		}
		e.Fd = int32(v)
	case "dir":
		if v < 0 || v > math.MaxUint8 {
			return false
		}
		e.Dir = uint8(v)
	case "local_port", "remote_port":
		if v < 0 || v > math.MaxUint16 {
			return false
		}
		if k == "local_port" {
			e.LocalPort = uint16(v)
		} else {
			e.RemotePort = uint16(v)
		}
	}
	return true
}

// interner hands out one string per distinct comm and address: every segment of a connection
// carries the same three, and a new string each was three allocations per segment. Bounded:
// it starts over past internMax entries. A nil interner makes new strings.
type interner struct{ m map[string]string }

const internMax = 4096

func (in *interner) get(b []byte) string {
	if in == nil {
		return string(b)
	}
	if s, ok := in.m[string(b)]; ok { // no allocation: the compiler looks up in place
		return s
	}
	if in.m == nil || len(in.m) >= internMax {
		in.m = make(map[string]string, 64)
	}
	s := string(b)
	in.m[s] = s
	return s
}
