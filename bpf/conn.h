// conn.h: the state of one connection (process, SSL*): creation, its socket and role, the
// port filter, the per-process rate cap, and its end (close, free, exit).
// One part of capture.bpf.c (a single compilation unit: every program shares these maps),
// split out by job as libbpf-tools keep helpers in headers; capture.bpf.c holds the programs.
#ifndef CAP_CONN_H
#define CAP_CONN_H

#include "emit.h"

static __always_inline __u64 new_conn_id(void)
{
	return __sync_fetch_and_add(&last_conn_id, 1) + 1;
}

// The state of (process, SSL*), created on first sight.
static __always_inline struct conn_state *conn_get(__u32 tgid, __u64 ssl)
{
	struct conn_key key = { .tgid = tgid, .ssl = ssl };
	struct conn_state *s = bpf_map_lookup_elem(&conns, &key);
	struct conn_state fresh = {};
	__u8 one = 1;

	if (s)
		return s;
	fresh.conn_id = new_conn_id();
	fresh.sock.fd = -1;
	bpf_map_update_elem(&conns, &key, &fresh, BPF_NOEXIST);
	bpf_map_update_elem(&procs, &tgid, &one, BPF_ANY);
	return bpf_map_lookup_elem(&conns, &key);
}

// The port filter: a connection passes if its local or remote port is listed. One whose
// socket is unknown does not, when the filter is set.
static __always_inline bool port_passes(struct cap_config *cfg, struct cap_sock *sock)
{
	__u16 port;

	if (!cfg || !(cfg->filter & CAP_FILTER_PORT))
		return true;
	port = sock->lport;
	if (bpf_map_lookup_elem(&filter_ports, &port))
		return true;
	port = sock->rport;
	return bpf_map_lookup_elem(&filter_ports, &port) != NULL;
}

// The per-process byte-rate cap (cap_config.rate_cap): a token bucket per tgid, in
// byte-nanoseconds so that refills of a few ns lose nothing, holding at most one second.
// Threads of one process on several CPUs may race on it and capture a little more than the
// rate; what was not captured is still counted exactly, by the caller.
struct rate_state {
	__u64 tokens;  /* bytes * 1e9 */
	__u64 last_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct rate_state);
} rates SEC(".maps");

// Of `want` bytes of a call, how many the process may have captured now.
static __always_inline __u64 rate_take(__u32 tgid, __u64 want, __u64 rate)
{
	const __u64 NS = 1000000000ULL;
	struct rate_state *b, fresh;
	__u64 now, dt, full, got;

	if (!rate || !want)
		return want;
	if (rate > CAP_RATE_CAP_MAX)
		rate = CAP_RATE_CAP_MAX;
	full = rate * NS;
	now = bpf_ktime_get_ns();
	b = bpf_map_lookup_elem(&rates, &tgid);
	if (!b) {
		fresh.tokens = full;
		fresh.last_ns = now;
		bpf_map_update_elem(&rates, &tgid, &fresh, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&rates, &tgid);
		if (!b)
			return want;
	}
	dt = now - b->last_ns;
	if (dt > NS)
		dt = NS;
	b->last_ns = now;
	b->tokens += dt * rate;
	if (b->tokens > full)
		b->tokens = full;
	got = b->tokens / NS;
	if (got > want)
		got = want;
	b->tokens -= got * NS;
	return got;
}

static __always_inline struct cap_config *settings_now(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&settings, &zero);
}

static __always_inline void conn_open(__u32 tgid, __u64 ssl, struct conn_state *s, struct cap_config *cfg)
{
	if (s->opened || !port_passes(cfg, &s->sock))
		return;
	s->opened = 1;
	emit_conn(CAP_EV_CONN_OPEN, tgid, ssl, s, 0);
}

// The connection's socket is `fd`. A different fd than before means the SSL* was reused for
// another connection: the old one ends, and a new conn_id starts from offset 0.
static __always_inline void conn_set_fd(__u32 tgid, __u64 ssl, struct conn_state *s, int fd)
{
	struct fd_key fk = { .tgid = tgid, .fd = fd };
	struct cap_sock probe = {};
	__u8 role;

	if (fd < 0 || s->sock.fd == fd)
		return;
	// The first I/O inside a call is not always the connection's (a random device, an
	// eventfd): only a socket can be its transport.
	if (!sock_resolve(fd, &probe))
		return;
	if (s->sock.fd >= 0) {
		if (s->opened)
			emit_conn(CAP_EV_CONN_CLOSE, tgid, ssl, s, CAP_CLOSE_REUSED);
		fk.fd = s->sock.fd;
		if (!s->fd_gone)
			bpf_map_delete_elem(&fd_conns, &fk);
		fk.fd = fd;
		role = s->sock.role;
		__builtin_memset(&s->sock, 0, sizeof(s->sock));
		s->sock.role = role; // a new connection on this SSL*, seen from its start
		s->conn_id = new_conn_id();
		s->off[0] = s->off[1] = 0;
		s->opened = 0;
		s->shut = 0;
		s->closing = 0;
		s->fd_gone = 0;
	}
	s->sock.fd = fd;
	s->sock.family = probe.family;
	s->sock.lport = probe.lport;
	s->sock.rport = probe.rport;
	__builtin_memcpy(s->sock.laddr, probe.laddr, sizeof(probe.laddr));
	__builtin_memcpy(s->sock.raddr, probe.raddr, sizeof(probe.raddr));
	bpf_map_update_elem(&fd_conns, &fk, &ssl, BPF_ANY);
}

// End of stream for (tgid, ssl): emits CONN_CLOSE if it was opened, and forgets it.
static __always_inline void conn_forget(__u32 tgid, __u64 ssl, struct conn_state *s, __u8 reason)
{
	struct conn_key key = { .tgid = tgid, .ssl = ssl };
	struct fd_key fk = { .tgid = tgid };

	if (__sync_fetch_and_add(&s->ended, 1))
		return; // the other side of the race ended it
	if (s->shut && (reason == CAP_CLOSE_FD || reason == CAP_CLOSE_FREE))
		reason = CAP_CLOSE_SHUTDOWN;
	if (s->opened)
		emit_conn(CAP_EV_CONN_CLOSE, tgid, ssl, s, reason);
	if (s->sock.fd >= 0 && !s->fd_gone) {
		fk.fd = s->sock.fd;
		bpf_map_delete_elem(&fd_conns, &fk);
	}
	bpf_map_delete_elem(&conns, &key);
}

// A connection ends when its socket is closed, but not under a call still running on it on
// another thread (Go's HTTP/2 server writes its last frame while its reader closes the
// socket): that call's bytes went out on the socket and belong to it. The last such call to
// return ends it (conn_release). SSL_free ends it at once: nothing may use the SSL* after.
static __always_inline void conn_end(__u32 tgid, __u64 ssl, __u8 reason)
{
	struct conn_state *s = bpf_map_lookup_elem(&conns, &(struct conn_key){ .tgid = tgid, .ssl = ssl });
	struct fd_key fk = { .tgid = tgid };

	if (!s)
		return;
	if (reason == CAP_CLOSE_FD) {
		s->closing = reason; // before looking at busy: a call leaving now sees it and ends it
		if (__sync_fetch_and_add(&s->busy, 0)) {
			// The fd number is free for the next socket once this close() is done.
			fk.fd = s->sock.fd;
			bpf_map_delete_elem(&fd_conns, &fk);
			s->fd_gone = 1;
			return;
		}
	}
	conn_forget(tgid, ssl, s, reason);
}

// At a call's entry: a connection it finds is held open until the call returns.
static __always_inline void conn_hold(__u32 tgid, struct call_args *a)
{
	struct conn_state *s = bpf_map_lookup_elem(&conns, &(struct conn_key){ .tgid = tgid, .ssl = a->ssl });

	a->held = 0;
	if (s && !s->closing) {
		__sync_fetch_and_add(&s->busy, 1);
		a->held = 1;
	}
}

// At a call's return (or when it is replaced): the last call to leave a closed connection ends it.
static __always_inline void conn_release(__u32 tgid, struct call_args *a, struct conn_state *s)
{
	if (!a->held)
		return;
	a->held = 0;
	if (!s)
		s = bpf_map_lookup_elem(&conns, &(struct conn_key){ .tgid = tgid, .ssl = a->ssl });
	if (!s)
		return;
	if (__sync_fetch_and_add(&s->busy, -1) == 1 && s->closing)
		conn_forget(tgid, a->ssl, s, s->closing);
}

// SSL_set_fd and the like: the connection's socket, named by the program.
static __always_inline int set_fd(void *ssl, int fd)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct conn_state *s;

	if (!traced(tgid))
		return 0;
	s = conn_get(tgid, (__u64)ssl);
	if (s)
		conn_set_fd(tgid, (__u64)ssl, s, fd);
	return 0;
}

// SSL_set_connect_state/accept_state, gnutls_init, Go's handshakes: the connection's role.
static __always_inline int set_role(void *ssl, __u8 role)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct conn_state *s;

	if (!traced(tgid))
		return 0;
	s = conn_get(tgid, (__u64)ssl);
	if (s)
		s->sock.role = role;
	return 0;
}

#endif /* CAP_CONN_H */
