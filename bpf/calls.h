// calls.h: the entry and return halves of every TLS data call (SSL_write/SSL_read and the
// others): stash the arguments, then at return advance the offsets and emit the bytes.
// One part of capture.bpf.c (a single compilation unit: every program shares these maps),
// split out by job as libbpf-tools keep helpers in headers; capture.bpf.c holds the programs.
#ifndef CAP_CALLS_H
#define CAP_CALLS_H

#include "conn.h"

static __always_inline int call_enter(void *ssl, const void *buf, void *outlen, __u32 func)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call_args args = {
		.ssl = (__u64)ssl,
		.buf = (__u64)buf,
		.outlen = (__u64)outlen,
		.func = func,
		.fd = -1,
	};

	struct thread_state *t;

	if (!traced(id >> 32))
		return 0;
	t = thread_now(true);
	if (!t) {
		count(CAP_CTR_CALLS_MISSED, 1); // no memory for the thread's state: said, not silent
		return 0;
	}
	// A TLS call inside another on the same thread:
	// - on the same SSL*, a wrapper calling the real function: the inner call replaces the
	//   outer one and reports the bytes; the outer return then finds nothing;
	// - on another SSL*, TLS inside TLS (the BIO of one connection writes into a second one,
	//   as a client does through an HTTPS proxy): the outer call waits in `outer` and returns
	//   after the inner one. A third level is not followed: counted, not silent.
	if (t->call.func) {
		if (t->call.ssl != args.ssl && !t->outer.func)
			t->outer = t->call;
		else {
			if (t->call.ssl != args.ssl)
				count(CAP_CTR_CALLS_MISSED, 1); // the third level
			conn_release(id >> 32, &t->call, NULL);
		}
	}
	conn_hold(id >> 32, &args);
	t->call = args;
	return 0;
}

// Whether a call's bytes start like an HTTP/1 message: "HTTP/" or a method (3 to 7 capitals)
// and a space. A server that answers before it has read the whole request body (nginx
// discarding a POST body) reads the next request after its answer with nothing moving the other
// way in between: while shedding, such a call keeps its head too, or its exchange is lost.
static __always_inline bool starts_http1(__u64 buf)
{
	char b[8];
	int i, n = 0;

	if (bpf_probe_read_user(b, sizeof(b), (const void *)buf))
		return false;
	if (b[0] == 'H' && b[1] == 'T' && b[2] == 'T' && b[3] == 'P' && b[4] == '/')
		return true;
#pragma unroll
	for (i = 0; i < 8; i++) {
		if (b[i] == ' ')
			return n >= 3;
		if (b[i] < 'A' || b[i] > 'Z')
			return false;
		n++;
	}
	return false;
}

// Emits the records of a call; returns the call's connection (NULL if it has none).
static __always_inline struct conn_state *emit_call(__u64 id, struct call_args *a, __u64 len, __u32 dir)
{
	__u32 zero = 0, tgid = id >> 32;
	struct cap_config *cfg = bpf_map_lookup_elem(&settings, &zero);
	struct conn_state *s;
	struct emit_ctx c = {};
	__u64 cap = cfg ? cfg->call_cap : 0;
	__u64 want, shed = 0, head;
	bool turned;

	dir &= 1;
	s = bpf_map_lookup_elem(&conns, &(struct conn_key){ .tgid = tgid, .ssl = a->ssl });
	if (!s) {
		s = conn_get(tgid, a->ssl);
		if (!s)
			return NULL;
		s->sock.flags |= CAP_SOCK_MID_STREAM;
	}
	conn_set_fd(tgid, a->ssl, s, a->fd);
	if (!port_passes(cfg, &s->sock)) {
		s->off[dir] += len; // not captured, but offsets stay exact should the filter change
		return s;
	}
	conn_open(tgid, a->ssl, s, cfg);
	c.tmpl.seq = s->off[dir];
	c.tmpl.ack = s->off[dir ^ 1];
	// A call that starts a direction, or the first since the other direction moved, is where a
	// message starts (a request after a response, a response after its request): while
	// shedding, only such calls keep a head; the rest of a long message keeps none.
	turned = s->off[dir] == 0 || s->other_at[dir] != s->off[dir ^ 1];
	s->other_at[dir] = s->off[dir ^ 1];
	// One SSL* is used by one thread at a time (OpenSSL requires it), so this is no race.
	s->off[dir] += len;

	if (cap > (__u64)CAP_CHUNK_MAX * CAP_MAX_CHUNKS)
		cap = (__u64)CAP_CHUNK_MAX * CAP_MAX_CHUNKS;
	c.tmpl.h.kind = CAP_EV_DATA;
	c.tmpl.h.flags = len > cap ? CAP_F_TRUNCATED : 0;
	c.tmpl.h.ts_ns = bpf_ktime_get_ns();
	c.tmpl.h.pid = tgid;
	c.tmpl.h.tid = (__u32)id;
	c.tmpl.conn_id = s->conn_id;
	c.tmpl.ssl = a->ssl;
	c.tmpl.call_len = len;
	c.tmpl.dir = dir;
	c.tmpl.func = a->func;
	__builtin_memcpy(&c.tmpl.sock, &s->sock, sizeof(c.tmpl.sock));
	bpf_get_current_comm(c.tmpl.comm, sizeof(c.tmpl.comm));
	c.buf = a->buf;
	want = len < cap ? len : cap;
	// Shed bodies, not exchanges: once the ring is filling (the reader is behind), take only
	// the head of a call that starts a message (HTTP's request line, status and headers: the
	// first since the other direction moved, or one that starts like HTTP/1) and none of a
	// call that continues one (only its marked record), and count the rest, so that
	// what is left of the ring holds the heads of every exchange rather than the whole of a
	// few. Records are dropped (counted as lost) only when even heads find no room.
	// A call that continues a message is shed however short it is: nginx reads a POST body in
	// calls of 4 KiB at most, which a test of the call's size against the head let through whole.
	if (cfg && cfg->shed_above && want && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > cfg->shed_above) {
		head = turned || starts_http1(a->buf) ? cfg->shed_head : 0;
		if (want > head) {
			shed = want - head;
			want = head;
			c.tmpl.h.flags = CAP_F_TRUNCATED | CAP_F_SHED;
		}
	}
	c.ncap = rate_take(tgid, want, cfg ? cfg->rate_cap : 0);
	if (c.ncap < want) {
		c.tmpl.h.flags |= CAP_F_TRUNCATED | CAP_F_RATE_LIMITED;
		count(CAP_CTR_BYTES_RATE_LIMITED, want - c.ncap);
	}
	c.tmpl.cap_len = c.ncap;

	count(CAP_CTR_CALLS, 1);
	count(CAP_CTR_BYTES_MOVED, len);
	count(CAP_CTR_BYTES_TRUNCATED, len - (len < cap ? len : cap));
	// A call with nothing captured still gets one record of no data, marked, so that its
	// bytes show as cut off rather than as lost. Most calls are one chunk: no loop for them.
	if (c.ncap <= CAP_CHUNK_MAX)
		emit_chunk(0, &c);
	else
		bpf_loop((c.ncap + CAP_CHUNK_MAX - 1) / CAP_CHUNK_MAX, emit_chunk, &c, 0);
	// A shed call is one record (its head, at most CAP_CHUNK_MAX). Its cut is shed only if
	// that record reached the ring: a host that never sees the head cannot tell a cut from a
	// loss, so then the whole call counts as lost (or faulted), as the host's gap will say.
	if (shed) {
		if (c.res == EMIT_SUBMITTED) {
			count(CAP_CTR_BYTES_SHED, shed);
			s->shed += shed;
		} else {
			count(c.res == EMIT_FAULTED ? CAP_CTR_BYTES_FAULTED : CAP_CTR_BYTES_LOST, shed);
		}
	}
	return s;
}

// After any call (with or without bytes, a handshake step included): its socket I/O names the
// connection's socket; when it had none and the socket is still unknown, the thread's next
// socket write will (memory BIOs; see pending_ssl). `s` is the connection of a call that moved
// bytes (emit_call has given it the call's socket already), NULL for one that moved none.
static __always_inline struct conn_state *after_call(__u64 id, struct call_args *a, struct thread_state *t, struct conn_state *s)
{
	if (!s) {
		s = bpf_map_lookup_elem(&conns, &(struct conn_key){ .tgid = id >> 32, .ssl = a->ssl });
		if (s && a->fd >= 0)
			conn_set_fd(id >> 32, a->ssl, s, a->fd);
	}
	if (!s || s->sock.fd < 0)
		t->pending_ssl = a->ssl;
	return s;
}

static __always_inline int call_return(struct pt_regs *ctx, __u32 func, __u32 dir, bool ex)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct thread_state *t = thread_now(false);
	struct call_args a;
	int rc = (int)PT_REGS_RC(ctx);
	__u64 len = 0;

	if (!t || !t->call.func)
		return 0;
	a = t->call;
	// The call it ran inside, if any, is the one in progress again. The socket this inner call
	// did its I/O on carries the outer connection too (an HTTPS proxy's socket).
	t->call = t->outer;
	t->outer.func = 0;
	if (t->call.func && t->call.fd < 0)
		t->call.fd = a.fd;
	if (a.func != func) {
		// Another function's entry is pending: this call's entry was not seen, or that
		// call's return was not. Either way some call's bytes are unknown.
		count(CAP_CTR_CALLS_MISSED, 1);
		conn_release(id >> 32, &a, NULL);
		return 0;
	}
	if (ex) {
		// SSL_*_ex and the internal functions: > 0 on success, the count through the
		// size_t * argument.
		if (rc <= 0)
			len = 0;
		else if (bpf_probe_read_user(&len, sizeof(len), (const void *)a.outlen)) {
			count(CAP_CTR_CALLS_MISSED, 1); // it moved bytes, but how many is unreadable
			len = 0;
		}
	} else {
		// SSL_write/SSL_read: the count, or <= 0 (WANT_READ/WANT_WRITE, error, close).
		len = rc > 0 ? rc : 0;
	}
	struct conn_state *s = len ? emit_call(id, &a, len, dir) : NULL;

	conn_release(id >> 32, &a, after_call(id, &a, t, s));
	return 0;
}

#endif /* CAP_CALLS_H */
