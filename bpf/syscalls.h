// syscalls.h: syscall numbers, and what a socket syscall inside a TLS call or handshake tells
// (the connection's fd) or ends (close()).
// One part of capture.bpf.c (a single compilation unit: every program shares these maps),
// split out by job as libbpf-tools keep helpers in headers; capture.bpf.c holds the programs.
#ifndef CAP_SYSCALLS_H
#define CAP_SYSCALLS_H

#include "go.h"

// Syscalls: the fd of socket I/O made inside a TLS call or handshake, and close() of a
// connection's socket. tp_btf attaches without tracefs. The syscall numbers are the arch's
// (arch.h).

// The socket write that follows a call on a connection without socket (pending_ssl): it names
// the connection's socket if it is a TCP/IP one. Only the first is taken: a mapped connection
// keeps its socket.
static __always_inline void socket_written(__u32 tgid, struct thread_state *t, int fd)
{
	__u64 ssl = t->pending_ssl;
	struct conn_state *s;
	struct cap_sock probe = {};

	t->pending_ssl = 0;
	s = conn_get(tgid, ssl);
	if (!s || s->sock.fd >= 0)
		return;
	if (!sock_resolve(fd, &probe) || !probe.family)
		return; // a pipe, a file, a Unix socket: not the connection's
	conn_set_fd(tgid, ssl, s, fd);
}

// A syscall of goroutine g: the first socket I/O inside a crypto/tls call names the fd as the
// OpenSSL calls' does; inside a handshake, it sets the connection's socket at once.
// g is r14 at the syscall, and the runtime makes syscalls of its own while a goroutine runs
// (netpollBreak writes to an eventfd): a first I/O that is not a socket names nothing, and the
// handshake waits for one that is. A call whose connection has no socket yet sets it at its
// first I/O, not at its return: another goroutine may close the fd while the call blocks.
static __always_inline void go_syscall(__u32 tgid, __u64 g, int fd)
{
	struct go_key gk = { .tgid = tgid, .g = g };
	struct call_args *a = bpf_map_lookup_elem(&go_calls, &gk);
	struct conn_state *s;
	__u64 conn;

	if (!a)
		return;
	conn = a->ssl;
	if (a->func) {
		if (a->fd >= 0)
			return;
		a->fd = fd;
		s = bpf_map_lookup_elem(&conns, &(struct conn_key){ .tgid = tgid, .ssl = conn });
		if (s && s->sock.fd < 0)
			conn_set_fd(tgid, conn, s, fd);
		return;
	}
	s = conn_get(tgid, conn);
	if (!s)
		return;
	if (s->sock.fd < 0)
		conn_set_fd(tgid, conn, s, fd);
	if (s->sock.fd >= 0)
		bpf_map_delete_elem(&go_calls, &gk);
}

// close() of a socket that carries a connection ends it.
static __always_inline void fd_closed(int fd)
{
	struct fd_key fk = { .tgid = bpf_get_current_pid_tgid() >> 32, .fd = fd };
	__u64 *ssl = bpf_map_lookup_elem(&fd_conns, &fk);

	if (ssl)
		conn_end(fk.tgid, *ssl, CAP_CLOSE_FD);
}

#endif /* CAP_SYSCALLS_H */
