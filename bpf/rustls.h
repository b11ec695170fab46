// rustls.h: rustls (Rust), which does its own I/O. A connection's plaintext goes in through
// CommonState::send_some_plaintext(&mut self, data) -> usize (what Writer::write ends in) and
// comes out of the decryption through CommonState::take_received_plaintext(&mut self, Payload)
// into the buffer Reader::read drains in order; its records go to the socket through
// CommonState::write_tls(&mut self, wr) -> io::Result<usize>. All three take the same
// `&mut CommonState` (the connection's shared state), which stands for the SSL* here:
// ConnectionCommon<T> holds it at an offset that differs between client and server, and
// Reader::read sees only a pointer into it, so the CommonState is the one handle the write,
// the read and the socket I/O share (helper/discovery/rustls.ts finds the three).
// One part of capture.bpf.c (a single compilation unit: every program shares these maps),
// split out by job as libbpf-tools keep helpers in headers; capture.bpf.c holds the programs.
#ifndef CAP_RUSTLS_H
#define CAP_RUSTLS_H

#include "calls.h"

// The TCP socket behind fd in the current process, or NULL.
static __always_inline struct tcp_sock *rustls_tcp(int fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file = NULL;
	struct socket *sock;
	struct sock *sk;

	if (!fdt || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != 6 /* IPPROTO_TCP */)
		return NULL;
	return (struct tcp_sock *)sk;
}

// rustls has no call that says client or server at a fixed place, so the role comes from TLS
// itself: the client speaks first. At the first write_tls of a connection seen from its
// start (everything the program ever sent on the socket is what this call wrote), a program
// that has read nothing yet is the client (its ClientHello), one that has read (the
// ClientHello) the server. A connection joined later keeps the role unknown.
static __always_inline __u8 rustls_role(int fd, __u64 wrote)
{
	struct tcp_sock *tp = rustls_tcp(fd);
	__u64 sent, got;

	if (!tp || !wrote)
		return CAP_ROLE_UNKNOWN;
	// Bytes the program handed to TCP: acknowledged ones (the client's count includes its
	// SYN) and those in flight. Bytes it took out: arrived ones less those still queued.
	sent = BPF_CORE_READ(tp, bytes_acked) + (__u32)(BPF_CORE_READ(tp, write_seq) - BPF_CORE_READ(tp, snd_una));
	got = BPF_CORE_READ(tp, bytes_received) - (__u32)(BPF_CORE_READ(tp, rcv_nxt) - BPF_CORE_READ(tp, copied_seq));
	if (sent != wrote && sent != wrote + 1)
		return CAP_ROLE_UNKNOWN;
	return got ? CAP_ROLE_SERVER : CAP_ROLE_CLIENT;
}

// A connection moves in memory when the program moves the value that holds it (async wrappers
// hand the stream back by value after the handshake, tokio-rustls at each poll of it): its
// CommonState, the handle here, is then at a new address. A socket carries one TLS connection,
// so when a new handle's write_tls goes to a socket another handle holds, that one is the
// same connection, left behind: the new one takes over its role, and the old one ends (with
// reason `reused` if it had moved data, silently if it had only done the handshake).
static __always_inline bool rustls_moved(__u32 tgid, __u64 ssl, struct conn_state *s, int fd)
{
	struct fd_key fk = { .tgid = tgid, .fd = fd };
	struct conn_state *old;
	__u64 *was, k;

	was = bpf_map_lookup_elem(&fd_conns, &fk);
	if (!was || *was == ssl)
		return false;
	k = *was;
	old = bpf_map_lookup_elem(&conns, &(struct conn_key){ .tgid = tgid, .ssl = k });
	if (!old || old->sock.fd != fd)
		return false;
	if (s->sock.role == CAP_ROLE_UNKNOWN)
		s->sock.role = old->sock.role;
	conn_forget(tgid, k, old, CAP_CLOSE_REUSED);
	return true;
}

// write_tls(ret, self, wr): the socket I/O inside names the connection's fd (the handshake
// slot, as for SSL_do_handshake); `ret` is the io::Result<usize> it fills.
static __always_inline int rustls_tls_enter(void *ret, void *common)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call_args args = { .ssl = (__u64)common, .outlen = (__u64)ret, .fd = -1 };
	struct thread_state *t;

	if (!traced(id >> 32))
		return 0;
	t = thread_now(true);
	if (t)
		t->handshake = args;
	return 0;
}

static __always_inline int rustls_tls_exit(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct thread_state *t = thread_now(false);
	struct conn_state *s;
	__u64 ssl, res[2] = {};
	int fd;

	if (!t || !t->handshake.ssl)
		return 0;
	ssl = t->handshake.ssl;
	fd = t->handshake.fd;
	t->handshake.ssl = 0;
	if (fd < 0)
		return 0; // nothing went out: nothing learnt
	s = conn_get(id >> 32, ssl);
	if (!s)
		return 0;
	if (s->sock.fd < 0 && rustls_moved(id >> 32, ssl, s, fd))
		; // its socket and role came along
	else if (s->sock.fd < 0 && s->sock.role == CAP_ROLE_UNKNOWN && !s->off[0] && !s->off[1]) {
		// Ok(n): tag 0, then n (rustc's layout of io::Result<usize>, checked by the test).
		if (!bpf_probe_read_user(res, sizeof(res), (const void *)t->handshake.outlen) && res[0] == 0)
			s->sock.role = rustls_role(fd, res[1]);
	}
	// The connection opens at its first data (emit_call), not here: a handshake's CommonState
	// may be left behind by a move (above) and should leave no empty connection behind.
	conn_set_fd(id >> 32, ssl, s, fd);
	return 0;
}

// take_received_plaintext(self, &Payload): decrypted application data, appended to the
// buffer the program reads from in order; emitted here, as it arrives. Payload is a Vec<u8>:
// {ptr, capacity, len} in rustc 1.63's layout, {capacity, ptr, len} in later ones; the
// pointer is told from the capacity by size (no mapping starts below vm.mmap_min_addr, 64 KiB
// by default, while a record's payload is at most about 16 KiB).
static __always_inline int rustls_plaintext_in(void *common, const void *payload)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call_args a = { .ssl = (__u64)common, .func = CAP_FN_RUSTLS_RECEIVED, .fd = -1 };
	__u64 v[3] = {};

	if (!traced(id >> 32))
		return 0;
	if (bpf_probe_read_user(v, sizeof(v), payload)) {
		count(CAP_CTR_CALLS_MISSED, 1); // bytes arrived, but where is unreadable
		return 0;
	}
	if (!v[2])
		return 0;
	a.buf = v[0] > v[1] ? v[0] : v[1];
	if (v[0] > v[1] ? v[1] < v[2] : v[0] < v[2]) {
		count(CAP_CTR_CALLS_MISSED, 1); // not a Vec<u8> as we know it
		return 0;
	}
	emit_call(id, &a, v[2], CAP_DIR_INGRESS);
	return 0;
}

#endif /* CAP_RUSTLS_H */
