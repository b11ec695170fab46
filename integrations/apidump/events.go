package apidump

import "time"

// Event is one value read from the helper: *SSLEvent, *ConnOpen, *ConnClose,
// *Loss, *Stats, *Process, *HelperError or *Bye.
type Event interface{ frameType() string }

// Directions of an SSLEvent, as in the agent's events package.
const (
	DirEgress  uint8 = 0 // written by the process (SSL_write)
	DirIngress uint8 = 1 // read by the process (SSL_read)
)

// SSLEvent is one segment frame: the plaintext of (part of) one TLS call. Its
// fields are those of the agent's events.SSLEvent as docs/protocol.md maps
// them. Offsets are exact: within a connection and direction, the next
// event's Seq is Seq+len(Data), plus the bytes cut by the per-call cap when
// Truncated, plus the next event's LostBefore. Never splice across a gap.
type SSLEvent struct {
	ConnID     uint64 `msgpack:"conn_id"`     // changes when an SSL object is reused
	Pid        uint32 `msgpack:"pid"`         // tgid
	Tid        uint32 `msgpack:"tid"`         // thread
	Comm       string `msgpack:"comm"`        // process name, at most 15 bytes
	SSLPtr     uint64 `msgpack:"ssl_ptr"`     // address of the SSL object
	Fd         int32  `msgpack:"fd"`          // socket fd, -1 when unknown
	Dir        uint8  `msgpack:"dir"`         // DirEgress or DirIngress
	LocalIP    string `msgpack:"local_ip"`    // "0.0.0.0" or "::" when unknown
	LocalPort  uint16 `msgpack:"local_port"`  // 0 when unknown
	RemoteIP   string `msgpack:"remote_ip"`   // "0.0.0.0" or "::" when unknown
	RemotePort uint16 `msgpack:"remote_port"` // 0 when unknown
	Seq        uint64 `msgpack:"seq"`         // offset of Data[0] in this direction
	Ack        uint64 `msgpack:"ack"`         // bytes moved the other way before this call
	TsNs       uint64 `msgpack:"ts_ns"`       // wall clock, Unix ns, when the call returned
	LenTotal   uint64 `msgpack:"len_total"`   // bytes the whole call moved
	Data       []byte `msgpack:"data"`        // at most 16384 bytes
	EOS        bool   `msgpack:"eos"`         // no more segments of ConnID follow
	Truncated  bool   `msgpack:"truncated"`   // the rest of the call was cut by the cap
	LostBefore uint64 `msgpack:"lost_before"` // bytes lost just before Data[0]
	MidStream  bool   `msgpack:"mid_stream"`  // the helper joined after the start
	// RateLimited: Truncated because the process was over the rate cap (config rate_cap).
	RateLimited bool `msgpack:"rate_limited"`
	// Shed: Truncated to the call's head because the helper's ring buffer was filling (load
	// shedding: bodies are cut so that every exchange keeps its request line, status and
	// headers). The bytes cut are in KernelCounters.BytesShed.
	Shed bool `msgpack:"shed"`
}

// Time is TsNs as a time.Time.
func (e *SSLEvent) Time() time.Time { return time.Unix(0, int64(e.TsNs)) }

// ConnOpen is a conn_open frame: sent once per ConnID, before its first SSLEvent.
type ConnOpen struct {
	ConnID     uint64 `msgpack:"conn_id"`
	Pid        uint32 `msgpack:"pid"`
	Tid        uint32 `msgpack:"tid"`
	Comm       string `msgpack:"comm"`
	SSLPtr     uint64 `msgpack:"ssl_ptr"`
	Fd         int32  `msgpack:"fd"`
	LocalIP    string `msgpack:"local_ip"`
	LocalPort  uint16 `msgpack:"local_port"`
	RemoteIP   string `msgpack:"remote_ip"`
	RemotePort uint16 `msgpack:"remote_port"`
	TsNs       uint64 `msgpack:"ts_ns"`
	MidStream  bool   `msgpack:"mid_stream"`
	Role       string `msgpack:"role"` // "client", "server" or "unknown"
}

// ConnClose is a conn_close frame: the end of stream of ConnID; no SSLEvent of
// it follows. EgressEnd and IngressEnd are the offsets past the last byte of
// each direction: a host that has fewer bytes lost the tail.
type ConnClose struct {
	ConnID     uint64 `msgpack:"conn_id"`
	Pid        uint32 `msgpack:"pid"`
	TsNs       uint64 `msgpack:"ts_ns"`
	Reason     string `msgpack:"reason"` // shutdown, free, close, reused, process_exit, helper_exit, …
	EgressEnd  uint64 `msgpack:"egress_end"`
	IngressEnd uint64 `msgpack:"ingress_end"`
	EOS        bool   `msgpack:"eos"`
	// BytesShed: bytes of the connection's calls shed under load (SSLEvent.Shed), exact;
	// nil when the helper made the close up (process_exit, helper_exit) or is older.
	BytesShed *uint64 `msgpack:"bytes_shed,omitempty"`
}

// Loss is a loss frame: bytes that will never arrive, since the previous loss
// frame of the same Source (ring_buffer, memory_fault, events, calls_missed,
// writer_queue, shed, …). A shed "loss" counts bytes cut from calls under load (not lost
// records: Records is 0). A calls_missed loss has Bytes 0 (unknown) and counts calls in Records.
type Loss struct {
	Source     string `msgpack:"source"`
	Bytes      uint64 `msgpack:"bytes"`
	Records    uint64 `msgpack:"records"`
	TotalBytes uint64 `msgpack:"total_bytes"`
	TsNs       uint64 `msgpack:"ts_ns"`
}

// KernelCounters are the BPF side's counters since the helper started.
type KernelCounters struct {
	Calls          uint64 `msgpack:"calls"`
	BytesMoved     uint64 `msgpack:"bytes_moved"`
	BytesCaptured  uint64 `msgpack:"bytes_captured"`
	BytesTruncated uint64 `msgpack:"bytes_truncated"`
	RecordsLost    uint64 `msgpack:"records_lost"`
	BytesLost      uint64 `msgpack:"bytes_lost"`
	ReadFaults     uint64 `msgpack:"read_faults"`
	BytesFaulted   uint64 `msgpack:"bytes_faulted"`
	EventsLost     uint64 `msgpack:"events_lost"`
	// BytesRateLimited: bytes not captured because their process was over the rate cap.
	BytesRateLimited uint64 `msgpack:"bytes_rate_limited"`
	// DiscoveryEventsLost: reports of new programs and library files the helper missed.
	DiscoveryEventsLost uint64 `msgpack:"discovery_events_lost"`
	// CallsMissed: traced calls whose bytes could not be taken (their byte count is unknown).
	CallsMissed uint64 `msgpack:"calls_missed"`
	// BytesShed: bytes within the per-call cap not captured because the ring buffer was
	// filling (segments marked Shed).
	BytesShed uint64 `msgpack:"bytes_shed"`
}

// WriterCounters are the counters of the helper's stdout queue.
type WriterCounters struct {
	FramesWritten   uint64 `msgpack:"frames_written"`
	BytesWritten    uint64 `msgpack:"bytes_written"`
	QueuedBytes     uint64 `msgpack:"queued_bytes"`
	MaxQueueBytes   uint64 `msgpack:"max_queue_bytes"`
	DroppedSegments uint64 `msgpack:"dropped_segments"`
	DroppedBytes    uint64 `msgpack:"dropped_bytes"`
}

// Settings are the capture settings in force (stats.config).
type Settings struct {
	Pids            []uint32 `msgpack:"pids"`
	Comms           []string `msgpack:"comms"`
	Ports           []uint16 `msgpack:"ports"`
	CallCap         uint64   `msgpack:"call_cap"`
	Libraries       []string `msgpack:"libraries"`
	StatsIntervalMs uint64   `msgpack:"stats_interval_ms"`
}

// Stats is a stats frame, sent every stats interval (5 s by default).
type Stats struct {
	TsNs        uint64         `msgpack:"ts_ns"`
	Kernel      KernelCounters `msgpack:"kernel"`
	Writer      WriterCounters `msgpack:"writer"`
	Libraries   uint64         `msgpack:"libraries"`
	Connections uint64         `msgpack:"connections"`
	Config      Settings       `msgpack:"config"`
}

// Process is a process frame: probes attached to a library, detached, or
// failed. Pid is -1 for probes that fire in every process mapping Library.
// State "unsupported" (Kind "unknown"): process Pid runs the executable
// Library, whose TLS code the helper cannot probe; Reason says why.
type Process struct {
	Pid       int64    `msgpack:"pid"`
	Library   string   `msgpack:"library"`
	Kind      string   `msgpack:"kind"`
	State     string   `msgpack:"state"` // attached, detached, failed, unsupported
	Functions []string `msgpack:"functions"`
	Reason    string   `msgpack:"reason"`
	TsNs      uint64   `msgpack:"ts_ns"`
}

// Bye is the helper's last frame, with its final counters.
type Bye struct {
	Reason string         `msgpack:"reason"` // shutdown, signal, stdin_closed, parent_exited, fatal_error, …
	TsNs   uint64         `msgpack:"ts_ns"`
	Kernel KernelCounters `msgpack:"kernel"`
	Writer WriterCounters `msgpack:"writer"`
}

// Ready says that every TLS file found at start has its probes (or failed):
// from here on capture is live. It comes once, after the Process events of
// those files and before any connection; files found later get their own
// Process events.
type Ready struct {
	TsNs      uint64 `msgpack:"ts_ns"`
	Libraries uint64 `msgpack:"libraries"` // files with probes attached now
	Failed    uint64 `msgpack:"failed"`    // files found at start that could not be probed
}

// HelperError is an error frame. When Fatal, the helper stops and Wait
// returns it; otherwise capture goes on with the previous settings.
type HelperError struct {
	Code      string `msgpack:"code"`
	Message   string `msgpack:"message"`
	Fix       string `msgpack:"fix"`
	Fatal     bool   `msgpack:"fatal"`
	FrameType string `msgpack:"frame_type"`
}

func (e *HelperError) Error() string {
	s := "https-capture: " + e.Code + ": " + e.Message
	if e.Fix != "" {
		s += " (fix: " + e.Fix + ")"
	}
	return s
}

// Hello is the helper's first frame.
type Hello struct {
	Protocol      int    `msgpack:"protocol"`
	HelperVersion string `msgpack:"helper_version"`
	Pid           uint32 `msgpack:"pid"`
	Capabilities  struct {
		Libraries []string `msgpack:"libraries"`
	} `msgpack:"capabilities"`
	Limits struct {
		MaxFrameBytes        uint64 `msgpack:"max_frame_bytes"`
		MaxControlFrameBytes uint64 `msgpack:"max_control_frame_bytes"`
		MaxDataBytes         uint64 `msgpack:"max_data_bytes"`
		MaxQueueBytes        uint64 `msgpack:"max_queue_bytes"`
	} `msgpack:"limits"`
	Clock string `msgpack:"clock"`
	TsNs  uint64 `msgpack:"ts_ns"`
}

func (*SSLEvent) frameType() string    { return "segment" }
func (*ConnOpen) frameType() string    { return "conn_open" }
func (*ConnClose) frameType() string   { return "conn_close" }
func (*Loss) frameType() string        { return "loss" }
func (*Stats) frameType() string       { return "stats" }
func (*Process) frameType() string     { return "process" }
func (*Bye) frameType() string         { return "bye" }
func (*Ready) frameType() string       { return "ready" }
func (*HelperError) frameType() string { return "error" }

// newEvent returns an empty value for a frame type, nil for types not known here.
func newEvent(typ string) Event {
	switch typ {
	case "segment":
		return &SSLEvent{}
	case "conn_open":
		return &ConnOpen{}
	case "conn_close":
		return &ConnClose{}
	case "loss":
		return &Loss{}
	case "stats":
		return &Stats{}
	case "process":
		return &Process{}
	case "ready":
		return &Ready{}
	case "bye":
		return &Bye{}
	case "error":
		return &HelperError{}
	}
	return nil
}
