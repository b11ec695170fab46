// capture-stats runs the helper through this package, as apidump would, and accounts for what
// it delivered, per process: connections, segments, bytes delivered and bytes the TLS calls
// moved (from each connection's final offsets), bytes lost, and the HTTP/1.1 request and status
// lines and HTTP/2 HEADERS frames in the delivered bytes. It prints "ready PID" (the helper's
// pid) once probes are attached, runs until SIGINT, SIGTERM or the end of its stdin, then
// stops the helper and prints the accounts as one JSON object. bench/ uses it; it is also a
// quick check of a host's view:
//
//	./offline.sh go run ./cmd/capture-stats [-pid N] [-comm NAME] -- node ../../dist/helper/cli.js [helper options]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/https-capture/integrations/apidump"
)

// Proc is what one process's connections delivered.
type Proc struct {
	Comm     string    `json:"comm"`
	Conns    int       `json:"conns"`
	Segments uint64    `json:"segments"`
	Bytes    [2]uint64 `json:"bytes"` // delivered, per direction (egress, ingress)
	Moved    [2]uint64 `json:"moved"` // moved by the TLS calls: the connections' final offsets
	// LostBefore: bytes the helper reported lost (ring buffer, writer queue, faults).
	LostBefore uint64 `json:"lost_before"`
	// Truncated: bytes past a cap (per call or rate), not delivered by design.
	Truncated uint64 `json:"truncated"`
	// Shed: bytes cut from calls under load (segments marked shed), not delivered by design.
	Shed         uint64 `json:"shed"`
	RequestLines uint64 `json:"h1_request_lines"`
	StatusLines  uint64 `json:"h1_status_lines"`
	// Unanswered: HTTP/1.1 connections with one request line more than status lines: their last
	// request was in flight when they ended (a load tool that stops closes its connections
	// without reading the answers nginx logged).
	Unanswered uint64    `json:"h1_unanswered"`
	H2Headers  [2]uint64 `json:"h2_headers"` // HEADERS frames per direction
}

// Summary is the JSON the tool prints at the end.
type Summary struct {
	HelperPid uint32                  `json:"helper_pid"`
	Bye       *apidump.Bye            `json:"bye"`
	Losses    map[string]uint64       `json:"losses"`
	Procs     map[string]*Proc        `json:"procs"`
	Errors    []string                `json:"errors"`
	Processes []string                `json:"processes"`
	Config    *apidump.Settings       `json:"config,omitempty"`
	Conns     map[uint64]*connSummary `json:"-"`
}

type connSummary struct {
	pid    uint32
	next   [2]uint64
	ended  bool
	h1     [2][2]scanner // per direction: request lines, status lines (a scanner keeps one pattern's tail)
	h2     [2]h2walker
	truncd [2]bool
	shedd  [2]bool
	lines  [2]uint64 // request lines, status lines (both directions)
}

var preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// scanner counts a pattern in a byte stream cut anywhere: each piece is searched alone, and the
// pattern across the cut is looked for in the tail kept from before plus the piece's start.
type scanner struct{ tail []byte }

func (s *scanner) count(data, pat []byte) uint64 {
	n := uint64(bytes.Count(data, pat))
	k := len(pat) - 1
	if len(s.tail) > 0 {
		head := data
		if len(head) > k {
			head = head[:k]
		}
		joined := append(append(make([]byte, 0, len(s.tail)+len(head)), s.tail...), head...)
		n += uint64(bytes.Count(joined, pat)) // neither side holds a whole match: these cross the cut
	}
	if len(data) >= k {
		s.tail = append(s.tail[:0], data[len(data)-k:]...)
	} else {
		s.tail = append(s.tail, data...)
		if len(s.tail) > k {
			s.tail = s.tail[len(s.tail)-k:]
		}
	}
	return n
}

// h2walker follows HTTP/2 frame headers through one direction of a connection.
type h2walker struct {
	started bool
	broken  bool
	skip    uint64
	hdr     []byte
	pre     []byte
}

func (w *h2walker) feed(data []byte, headers *uint64) {
	for len(data) > 0 && !w.broken {
		if !w.started {
			// The client's direction opens with the preface; the server's with a SETTINGS frame.
			need := len(preface) - len(w.pre)
			if need > len(data) {
				need = len(data)
			}
			w.pre = append(w.pre, data[:need]...)
			if !bytes.HasPrefix(preface, w.pre) {
				data = append(w.pre, data[need:]...) // not a preface: frames from the start
				w.pre = nil
				w.started = true
				continue
			}
			data = data[need:]
			if len(w.pre) == len(preface) {
				w.started = true
			}
			continue
		}
		if w.skip > 0 {
			n := uint64(len(data))
			if n > w.skip {
				n = w.skip
			}
			w.skip -= n
			data = data[n:]
			continue
		}
		need := 9 - len(w.hdr)
		if need > len(data) {
			need = len(data)
		}
		w.hdr = append(w.hdr, data[:need]...)
		data = data[need:]
		if len(w.hdr) == 9 {
			length := uint64(w.hdr[0])<<16 | uint64(w.hdr[1])<<8 | uint64(w.hdr[2])
			if w.hdr[3] == 0x1 {
				*headers++
			}
			w.skip = length
			w.hdr = w.hdr[:0]
		}
	}
}

func main() {
	var pids, comms string
	flag.StringVar(&pids, "pid", "", "only these processes (comma-separated)")
	flag.StringVar(&comms, "comm", "", "only processes with these names (comma-separated)")
	flag.Parse()
	command := flag.Args()
	if len(command) == 0 {
		fmt.Fprintln(os.Stderr, "capture-stats: give the helper's command after --, e.g. -- node dist/helper/cli.js")
		os.Exit(2)
	}
	opts := apidump.Options{Command: command, Stderr: os.Stderr, StatsInterval: time.Hour, Batch: 256} // in slices, as a busy host would take them
	for _, p := range strings.Split(pids, ",") {
		if n, err := strconv.Atoi(p); err == nil {
			opts.Pids = append(opts.Pids, n)
		}
	}
	if comms != "" {
		opts.Comms = strings.Split(comms, ",")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := apidump.Start(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "capture-stats:", err)
		os.Exit(1)
	}
	stop := make(chan os.Signal, 2)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop <- syscall.SIGTERM
	}()
	go func() {
		<-stop
		// Shutdown, not Stop: Stop reads Batches itself, and every event must reach the loop below.
		_ = c.Shutdown()
		<-stop
		cancel() // a second signal: the package stops the helper harder (SIGTERM, then SIGKILL)
	}()

	sum := Summary{HelperPid: c.Hello.Pid, Losses: map[string]uint64{}, Procs: map[string]*Proc{}, Conns: map[uint64]*connSummary{}}
	ready := false
	proc := func(pid uint32, comm string) *Proc {
		k := strconv.FormatUint(uint64(pid), 10)
		p := sum.Procs[k]
		if p == nil {
			p = &Proc{Comm: comm}
			sum.Procs[k] = p
		}
		return p
	}
	for batch := range c.Batches {
		for _, ev := range batch {
			switch e := ev.(type) {
			case *apidump.Process:
				sum.Processes = append(sum.Processes, fmt.Sprintf("%s %s pid %d: %s", e.State, e.Library, e.Pid, e.Reason))
				if e.State == "attached" && !ready {
					ready = true
					fmt.Printf("ready %d\n", c.Hello.Pid)
				}
			case *apidump.ConnOpen:
				proc(e.Pid, e.Comm).Conns++
				sum.Conns[e.ConnID] = &connSummary{pid: e.Pid}
			case *apidump.SSLEvent:
				p := proc(e.Pid, e.Comm)
				cs := sum.Conns[e.ConnID]
				if cs == nil {
					cs = &connSummary{pid: e.Pid}
					sum.Conns[e.ConnID] = cs
				}
				d := e.Dir & 1
				p.Segments++
				p.Bytes[d] += uint64(len(e.Data))
				p.LostBefore += e.LostBefore
				if e.Seq > cs.next[d] && !cs.truncd[d] {
					// A gap that lost_before does not explain would be a helper bug: count it as lost.
					if gap := e.Seq - cs.next[d]; gap > e.LostBefore {
						p.LostBefore += gap - e.LostBefore
					}
				} else if e.Seq > cs.next[d] && cs.shedd[d] {
					p.Shed += e.Seq - cs.next[d] - e.LostBefore
				} else if e.Seq > cs.next[d] {
					p.Truncated += e.Seq - cs.next[d] - e.LostBefore
				}
				if e.Seq > cs.next[d] {
					cs.h2[d].broken = true // missing bytes, lost or cut off: frame headers can no longer be followed
				}
				cs.next[d] = e.Seq + uint64(len(e.Data))
				cs.truncd[d] = e.Truncated
				cs.shedd[d] = e.Truncated && e.Shed
				rl := cs.h1[d][0].count(e.Data, []byte("HTTP/1.1\r\n"))
				sl := cs.h1[d][1].count(e.Data, []byte("HTTP/1.1 "))
				p.RequestLines += rl
				p.StatusLines += sl
				cs.lines[0] += rl
				cs.lines[1] += sl
				cs.h2[d].feed(e.Data, &p.H2Headers[d])
			case *apidump.ConnClose:
				cs := sum.Conns[e.ConnID]
				if cs == nil || cs.ended {
					continue
				}
				cs.ended = true
				p := proc(cs.pid, "")
				ends := [2]uint64{e.EgressEnd, e.IngressEnd}
				for d := 0; d < 2; d++ {
					p.Moved[d] += ends[d]
					if ends[d] > cs.next[d] {
						// The tail: past the last call's cap, or lost at the very end.
						if cs.shedd[d] {
							p.Shed += ends[d] - cs.next[d]
						} else if cs.truncd[d] {
							p.Truncated += ends[d] - cs.next[d]
						} else {
							p.LostBefore += ends[d] - cs.next[d]
						}
					}
				}
			case *apidump.Loss:
				sum.Losses[e.Source] += e.Bytes
			case *apidump.Stats:
				cfg := e.Config
				sum.Config = &cfg
			case *apidump.HelperError:
				sum.Errors = append(sum.Errors, e.Error())
			case *apidump.Bye:
				sum.Bye = e
			}
		}
	}
	if err := c.Wait(); err != nil {
		sum.Errors = append(sum.Errors, err.Error())
	}
	for _, cs := range sum.Conns {
		if cs.lines[0] == cs.lines[1]+1 {
			proc(cs.pid, "").Unanswered++
		}
	}
	out, _ := json.Marshal(sum)
	fmt.Println(string(out))
}
