package apidump

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// ProtocolVersion is the version of docs/protocol.md this package speaks.
const ProtocolVersion = 1

// maxFrameBytes bounds a frame read from the helper (hello.limits.max_frame_bytes
// is 64 KiB today); a longer length prefix means the stream is out of step.
const maxFrameBytes = 16 << 20

// Options says how to run the helper and what to capture. The zero value runs
// "https-capture --ipc" from PATH for every process.
type Options struct {
	// Command is the helper's program and its first arguments, before the
	// ones Start adds (--ipc and the options below). Default
	// {"https-capture"}; from a checkout: {"node", "/path/to/dist/helper/cli.js"}.
	Command []string
	// Pids and Comms: capture only these processes, and those with these
	// names (at most 15 bytes). Both empty: every process.
	Pids  []int
	Comms []string
	// Ports: only connections with one of these local or remote ports. Sent
	// in a config frame; helpers of protocol 1 store it but may not apply it.
	Ports []int
	// CallCap: most bytes captured of one TLS call (0: the helper's default,
	// 1 MiB). The rest is counted, and the event is marked Truncated.
	CallCap int
	// Libraries: OpenSSL libraries or executables to attach to beyond the
	// ones the helper finds itself (--library).
	Libraries []string
	// LibraryKinds: kinds of TLS library to hook ("openssl"); each must be in
	// the helper's hello.capabilities.libraries. Empty: all it can.
	LibraryKinds []string
	// StatsInterval: period of Stats events (0: the helper's default, 5 s).
	StatsInterval time.Duration
	// MaxQueueBytes: the helper's bound on frames not yet read (0: 64 MiB).
	MaxQueueBytes int
	// Stderr receives the helper's log lines (nil: discarded; the last 4 KiB
	// are kept for the errors of Start and Wait).
	Stderr io.Writer
	// StopTimeout: how long to wait for the helper to exit after the shutdown
	// frame before SIGTERM, and after SIGTERM before SIGKILL (default 15 s;
	// the helper takes about 4 s to detach its probes and stop).
	StopTimeout time.Duration
	// Buffer: capacity of the Events channel (default 1024), or of Batches.
	Buffer int
	// Batch > 0 delivers the events on Batches, in slices of up to Batch events, instead of
	// one by one on Events (which is then closed at once). A slice holds the events of the
	// frames that had already arrived together: none waits for later ones. One channel
	// operation per slice instead of per event: at 1 KiB exchanges the channel's lock was a
	// quarter of this package's CPU time.
	Batch int
}

// Config changes the capture settings of a running helper (a config frame).
// A nil slice or pointer, or a zero StatsInterval, keeps the current value; an
// empty non-nil slice clears it (for Pids and Comms: every process).
type Config struct {
	Pids          []int
	Comms         []string
	Ports         []int
	CallCap       *int
	Libraries     []string // kinds, from Hello.Capabilities.Libraries
	StatsInterval time.Duration
}

// Capture is a running helper.
type Capture struct {
	// Hello is the helper's first frame.
	Hello Hello
	// Events yields what the helper captured, in its order; it is closed when
	// the helper's output ends. Read it until then.
	Events <-chan Event
	// Batches yields the same events in slices when Options.Batch is set (nil
	// otherwise); it is closed when the helper's output ends. A slice is the
	// reader's: the package never touches it again.
	Batches <-chan []Event

	events  chan Event
	batches chan []Event
	batch   int
	cmd     *exec.Cmd
	stdout  *bufio.Reader
	stdin   io.WriteCloser
	writeMu sync.Mutex
	stderr  *tail
	timeout time.Duration
	done    chan struct{} // closed after the helper was reaped and Events closed
	ready   chan struct{} // closed when the ready frame arrives
	readyEv *Ready
	err     error
	stopped sync.Once
}

// Start runs the helper, reads and checks its hello frame, and applies
// opts.Ports, opts.LibraryKinds and opts.StatsInterval with a config frame.
// When ctx ends the helper is stopped (shutdown frame, SIGTERM, SIGKILL).
func Start(ctx context.Context, opts Options) (*Capture, error) {
	argv := append([]string(nil), opts.Command...)
	if len(argv) == 0 {
		argv = []string{"https-capture"}
	}
	argv = append(argv, "--ipc")
	if len(opts.Pids) > 0 {
		argv = append(argv, "--pid", joinInts(opts.Pids))
	}
	if len(opts.Comms) > 0 {
		argv = append(argv, "--comm", strings.Join(opts.Comms, ","))
	}
	if opts.CallCap > 0 {
		argv = append(argv, "--call-cap", strconv.Itoa(opts.CallCap))
	}
	for _, l := range opts.Libraries {
		argv = append(argv, "--library", l)
	}
	if opts.MaxQueueBytes > 0 {
		argv = append(argv, "--max-queue-bytes", strconv.Itoa(opts.MaxQueueBytes))
	}

	c := &Capture{
		cmd:     exec.Command(argv[0], argv[1:]...),
		stderr:  &tail{max: 4096},
		timeout: opts.StopTimeout,
		done:    make(chan struct{}),
		ready:   make(chan struct{}),
	}
	if c.timeout <= 0 {
		c.timeout = 15 * time.Second
	}
	buf := opts.Buffer
	if buf <= 0 {
		buf = 1024
	}
	c.events = make(chan Event, buf)
	c.Events = c.events
	if opts.Batch > 0 {
		c.batch = opts.Batch
		c.batches = make(chan []Event, buf)
		c.Batches = c.batches
		close(c.events)
	}
	c.cmd.Stderr = c.stderr
	if opts.Stderr != nil {
		c.cmd.Stderr = io.MultiWriter(opts.Stderr, c.stderr)
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("https-capture: cannot start %q: %w", argv[0], err)
	}
	c.stdout = bufio.NewReaderSize(stdout, 1<<16)
	go func() {
		select {
		case <-ctx.Done():
			c.stop()
		case <-c.done:
		}
	}()

	if err := c.readHello(opts.LibraryKinds); err != nil {
		c.stop()
		_, _ = io.Copy(io.Discard, c.stdout)
		if werr := c.cmd.Wait(); werr != nil {
			err = fmt.Errorf("%w (helper: %v; stderr: %s)", err, werr, c.stderr)
		}
		c.stdin.Close()
		c.closeEvents()
		close(c.done)
		return nil, err
	}
	go c.read()

	cfg := Config{Ports: opts.Ports, Libraries: opts.LibraryKinds, StatsInterval: opts.StatsInterval}
	if cfg.Ports != nil || cfg.Libraries != nil || cfg.StatsInterval > 0 {
		if err := c.Configure(cfg); err != nil {
			if werr := c.Stop(); werr != nil {
				err = werr
			}
			return nil, err
		}
	}
	return c, nil
}

func (c *Capture) readHello(kinds []string) error {
	body, err := readFrame(c.stdout)
	if err != nil {
		return fmt.Errorf("https-capture: no hello frame: %w", err)
	}
	var typ struct {
		Type string `msgpack:"type"`
	}
	if err := msgpack.Unmarshal(body, &typ); err != nil || typ.Type != "hello" {
		return fmt.Errorf("https-capture: first frame is %q, not hello (%v)", typ.Type, err)
	}
	if err := msgpack.Unmarshal(body, &c.Hello); err != nil {
		return fmt.Errorf("https-capture: bad hello frame: %w", err)
	}
	if c.Hello.Protocol != ProtocolVersion {
		return fmt.Errorf("https-capture: helper %s speaks protocol %d; this package knows only %d",
			c.Hello.HelperVersion, c.Hello.Protocol, ProtocolVersion)
	}
	if c.Hello.Clock != "" && c.Hello.Clock != "realtime-ns" {
		return fmt.Errorf("https-capture: unknown clock %q in hello", c.Hello.Clock)
	}
	have := c.Hello.Capabilities.Libraries
	if len(have) == 0 {
		return errors.New("https-capture: the helper can hook no TLS library (hello.capabilities.libraries is empty)")
	}
	for _, k := range kinds {
		if !contains(have, k) {
			return fmt.Errorf("https-capture: the helper cannot hook %q libraries (it can: %s)", k, strings.Join(have, ", "))
		}
	}
	return nil
}

// read delivers frames until the helper's stdout ends, then reaps the helper
// and closes Events.
func (c *Capture) read() {
	var err error
	var fatal *HelperError
	var batch []Event
	var slab []byte
	var strs interner
	sawBye := false
	for {
		// A batch goes out before the reader would wait for more input, and when it is full.
		if len(batch) > 0 && (len(batch) >= c.batch || !frameBuffered(c.stdout)) {
			c.batches <- batch
			batch = nil
		}
		var body []byte
		body, err = readFrameInto(c.stdout, &slab)
		if err != nil {
			break
		}
		var ev Event
		if ev, err = decodeWith(body, &strs); err != nil {
			break
		}
		switch e := ev.(type) {
		case nil:
			continue // a frame type this package does not know
		case *HelperError:
			if e.Fatal && fatal == nil {
				fatal = e
			}
		case *Bye:
			sawBye = true
		case *Ready:
			if c.readyEv == nil {
				c.readyEv = e
				close(c.ready)
			}
		}
		if c.batches != nil {
			if batch == nil {
				batch = make([]Event, 0, c.batch)
			}
			batch = append(batch, ev)
			continue
		}
		c.events <- ev
	}
	if len(batch) > 0 {
		c.batches <- batch
	}
	if err == io.EOF {
		err = nil
	} else if err != nil {
		err = fmt.Errorf("https-capture: bad frame stream: %w", err)
		c.stop()
		_, _ = io.Copy(io.Discard, c.stdout)
	}
	waitErr := c.cmd.Wait()
	c.stdin.Close()
	switch {
	case err != nil:
	case fatal != nil:
		err = fatal
	case waitErr != nil:
		err = fmt.Errorf("https-capture exited: %w; stderr: %s", waitErr, c.stderr)
	case !sawBye:
		err = fmt.Errorf("https-capture exited without a bye frame; stderr: %s", c.stderr)
	}
	c.err = err
	c.closeEvents()
	close(c.done)
}

// closeEvents closes the channel the events went out on (Events was closed at Start when
// they go out on Batches).
func (c *Capture) closeEvents() {
	if c.batches != nil {
		close(c.batches)
		return
	}
	close(c.events)
}

// decode returns the event of one frame, or nil for a type not known here.
func decode(body []byte) (Event, error) { return decodeWith(body, nil) }

// decodeWith is decode with the segments' strings taken from strs (nil: new ones).
func decodeWith(body []byte, strs *interner) (Event, error) {
	typ, ok := peekType(body)
	if !ok {
		var t struct {
			Type string `msgpack:"type"`
		}
		if err := msgpack.Unmarshal(body, &t); err != nil {
			return nil, err
		}
		typ = t.Type
	}
	if typ == "segment" {
		// The fast path; Data then points into body, which is this frame's alone.
		if e := new(SSLEvent); decodeSegment(body, e, strs) == nil {
			return e, nil
		}
	}
	ev := newEvent(typ)
	if ev == nil {
		return nil, nil
	}
	if err := msgpack.Unmarshal(body, ev); err != nil {
		return nil, fmt.Errorf("%s frame: %w", typ, err)
	}
	return ev, nil
}

// peekType reads a frame's type without decoding the frame when "type" is its first
// field, as the helper writes it; ok is false otherwise (any order is valid msgpack, and
// decode then reads the type the slow way). It halves the cost of a segment here.
func peekType(body []byte) (typ string, ok bool) {
	r := mpReader{b: body}
	if _, err := r.mapLen(); err != nil {
		return "", false
	}
	if k, err := r.str(); err != nil || string(k) != "type" {
		return "", false
	}
	v, err := r.str()
	if err != nil {
		return "", false
	}
	return string(v), true
}

// frameBuffered says whether the next whole frame is already in r's buffer (reading it
// cannot block).
func frameBuffered(r *bufio.Reader) bool {
	if r.Buffered() < 4 {
		return false // Peek would wait for input
	}
	head, err := r.Peek(4)
	if err != nil {
		return false
	}
	return uint64(binary.BigEndian.Uint32(head))+4 <= uint64(r.Buffered())
}

func readFrame(r *bufio.Reader) ([]byte, error) {
	return readFrameInto(r, nil)
}

// slabBytes: small frame bodies are cut from buffers of this size, one allocation for many
// frames instead of one each (the allocator's and collector's work per frame was most of this
// package's CPU at 1 KiB exchanges). 32 KiB is Go's largest small-object class: a bigger slab
// is a large object, which takes the heap lock, and was slower on 16 KiB segments than one
// allocation each. A frame above slabBytes/8 gets its own buffer, so an event kept long holds
// at most 32 KiB besides its own bytes.
const slabBytes = 32 << 10

// readFrameInto reads one frame's body into *slab's free space when it fits (slab nil: a
// buffer of its own). The body is never reused: events point into it.
func readFrameInto(r *bufio.Reader, slab *[]byte) ([]byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, err // io.EOF between frames: the stream ended cleanly
	}
	n := binary.BigEndian.Uint32(head[:])
	if n > maxFrameBytes {
		return nil, fmt.Errorf("frame length %d is above %d", n, maxFrameBytes)
	}
	var body []byte
	switch {
	case slab == nil || n > slabBytes/8:
		body = make([]byte, n)
	default:
		if int(n) > len(*slab) {
			*slab = make([]byte, slabBytes)
		}
		body = (*slab)[:n:n] // full slice expression: an append to body cannot reach the next frame
		*slab = (*slab)[n:]
	}
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("frame cut short: %w", io.ErrUnexpectedEOF)
	}
	return body, nil
}

// Ready is closed when the helper says capture is live: every TLS file found
// at start has its probes (the Ready event, also delivered on Events). It is
// never closed if the helper stops first; WaitReady returns that error.
func (c *Capture) Ready() <-chan struct{} { return c.ready }

// WaitReady blocks until capture is live, the helper stops before that (its
// error), or ctx ends. The Process events before Ready wait on Events (its
// buffer holds them unless there are more than Options.Buffer).
func (c *Capture) WaitReady(ctx context.Context) (*Ready, error) {
	select {
	case <-c.ready:
		return c.readyEv, nil
	case <-c.done:
		select {
		case <-c.ready:
			return c.readyEv, nil
		default:
		}
		if c.err != nil {
			return nil, c.err
		}
		return nil, errors.New("https-capture stopped before capture was live (no ready frame)")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Configure sends a config frame. The helper answers a bad one with a
// non-fatal *HelperError on Events and keeps its settings; the next Stats
// shows the settings in force.
func (c *Capture) Configure(cfg Config) error {
	m := map[string]interface{}{"type": "config"}
	if cfg.Pids != nil {
		m["pids"] = cfg.Pids
	}
	if cfg.Comms != nil {
		m["comms"] = cfg.Comms
	}
	if cfg.Ports != nil {
		m["ports"] = cfg.Ports
	}
	if cfg.CallCap != nil {
		m["call_cap"] = *cfg.CallCap
	}
	if cfg.Libraries != nil {
		m["libraries"] = cfg.Libraries
	}
	if cfg.StatsInterval > 0 {
		m["stats_interval_ms"] = cfg.StatsInterval.Milliseconds()
	}
	return c.send(m)
}

// Shutdown asks the helper to stop: it detaches its probes, closes every
// connection (ConnClose with reason helper_exit), sends Bye and exits.
func (c *Capture) Shutdown() error {
	return c.send(map[string]interface{}{"type": "shutdown"})
}

func (c *Capture) send(frame map[string]interface{}) error {
	// Integers in their smallest format: the helper reads an 8-byte integer
	// as a 64-bit value and refuses it where the schema wants a count.
	var buf bytes.Buffer
	buf.Write([]byte{0, 0, 0, 0})
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err := enc.Encode(frame); err != nil {
		return err
	}
	b := buf.Bytes()
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if _, err := c.stdin.Write(b); err != nil {
		return fmt.Errorf("https-capture: cannot send %s: %w", frame["type"], err)
	}
	return nil
}

// stop asks the helper to stop, then signals it if it takes too long.
func (c *Capture) stop() {
	c.stopped.Do(func() {
		go func() {
			_ = c.Shutdown()
			for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
				select {
				case <-c.done:
					return
				case <-time.After(c.timeout):
					_ = c.cmd.Process.Signal(sig)
				}
			}
		}()
	})
}

// Stop asks the helper to stop (as when the context ends) and waits for it. It reads and
// discards what is left on Events: call it only where nothing else reads Events; a reader that
// wants every event up to the bye calls Shutdown and reads Events until it closes.
func (c *Capture) Stop() error {
	c.stop()
	for range c.events {
	}
	if c.batches != nil {
		for range c.batches {
		}
	}
	return c.Wait()
}

// Wait waits until Events is closed and returns why the helper ended: nil
// after a bye frame and exit status 0; the fatal *HelperError it sent; or an
// error for a bad frame stream, a non-zero exit or a death by signal.
func (c *Capture) Wait() error {
	<-c.done
	return c.err
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
