// Package apidump runs the https-capture helper as a child process and turns its
// frames (docs/protocol.md, protocol version 1) into Go values for apidump.
//
// Start launches the helper with --ipc, checks its hello frame and returns a
// *Capture whose Events channel yields, in the order the helper wrote them:
//
//   - *SSLEvent: one segment frame, the fields of the Postman Insights Agent's
//     events.SSLEvent as docs/protocol.md maps them;
//   - *ConnOpen and *ConnClose: the start and the end of stream of a connection;
//   - *Loss, *Stats, *Process, *Bye: accounting and probe attachment;
//   - *HelperError: an error frame of the helper (it also implements error).
//
// With Options.Batch the same events come in slices on Batches instead (one
// channel operation per slice). Read Events (or Batches) until it is closed, then call Wait for the helper's exit as an
// error (nil after a clean bye and exit status 0). When the context given to
// Start ends, the helper is asked to stop with a shutdown frame, then SIGTERM,
// then SIGKILL; its last frames (conn_close of every open connection, bye) are
// still delivered before Events closes.
//
// Frame types and fields this package does not know are ignored, as the
// protocol requires. The helper needs root (or CAP_BPF and CAP_PERFMON).
package apidump
