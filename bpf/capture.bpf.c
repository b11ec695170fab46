// capture.bpf.c: uprobes on OpenSSL's SSL_write/SSL_read and their _ex forms; every byte a
// call really moved is copied into the ring buffer, in chunks, up to a per-call cap.
//
// Flow: the entry probe stashes the call's arguments per thread (task storage `threads`); the return
// probe reads how many bytes the call moved, advances the connection's per-direction byte
// offset (map `conns`) by exactly that many, and writes up to `call_cap` bytes as records of
// at most CAP_CHUNK_MAX bytes each. Bytes past the cap, or in records the ring buffer had no
// room for, are still counted in the offsets, so user space sees every missing byte as a gap
// of exact size; `counters` says why each one is missing.
//
// This file holds the programs (SEC), grouped by library; their helpers are in headers by job:
// maps.h, emit.h, conn.h, calls.h, go.h, discovery.h, syscalls.h (docs/architecture.md#bpf).
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "capture.h"
#include "arch.h"

char LICENSE[] SEC("license") = "GPL";

#include "maps.h"
#include "emit.h"
#include "conn.h"
#include "calls.h"
#include "go.h"
#include "nss.h"
#include "discovery.h"
#include "syscalls.h"
#include "rustls.h"

SEC("uprobe")
int BPF_KPROBE(ssl_write_enter, void *ssl, const void *buf)
{
	return call_enter(ssl, buf, NULL, CAP_FN_SSL_WRITE);
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_write_exit)
{
	return call_return(ctx, CAP_FN_SSL_WRITE, CAP_DIR_EGRESS, false);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read_enter, void *ssl, void *buf)
{
	return call_enter(ssl, buf, NULL, CAP_FN_SSL_READ);
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_read_exit)
{
	return call_return(ctx, CAP_FN_SSL_READ, CAP_DIR_INGRESS, false);
}

SEC("uprobe")
int BPF_KPROBE(ssl_write_ex_enter, void *ssl, const void *buf, size_t num, size_t *written)
{
	return call_enter(ssl, buf, written, CAP_FN_SSL_WRITE_EX);
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_write_ex_exit)
{
	return call_return(ctx, CAP_FN_SSL_WRITE_EX, CAP_DIR_EGRESS, true);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read_ex_enter, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return call_enter(ssl, buf, readbytes, CAP_FN_SSL_READ_EX);
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_read_ex_exit)
{
	return call_return(ctx, CAP_FN_SSL_READ_EX, CAP_DIR_INGRESS, true);
}

// ssl_write_internal/ssl_read_internal have the _ex signature. Their first instruction is
// one the kernel emulates, so these are the cheap probes (see helper/discovery/openssl.ts).
SEC("uprobe")
int BPF_KPROBE(ssl_write_internal_enter, void *ssl, const void *buf, size_t num, size_t *written)
{
	return call_enter(ssl, buf, written, CAP_FN_SSL_WRITE_INTERNAL);
}

// From OpenSSL 3.3: ssl_write_internal(s, buf, num, flags, written), the count pointer 5th.
SEC("uprobe")
int BPF_KPROBE(ssl_write_internal_flags_enter, void *ssl, const void *buf, size_t num, __u64 flags, size_t *written)
{
	return call_enter(ssl, buf, written, CAP_FN_SSL_WRITE_INTERNAL);
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_write_internal_exit)
{
	return call_return(ctx, CAP_FN_SSL_WRITE_INTERNAL, CAP_DIR_EGRESS, true);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read_internal_enter, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return call_enter(ssl, buf, readbytes, CAP_FN_SSL_READ_INTERNAL);
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_read_internal_exit)
{
	return call_return(ctx, CAP_FN_SSL_READ_INTERNAL, CAP_DIR_INGRESS, true);
}

// GnuTLS: gnutls_record_send/recv(session, buf, size) return the bytes moved (ssize_t), as
// SSL_write/SSL_read do; the session pointer identifies the connection.
SEC("uprobe")
int BPF_KPROBE(gnutls_send_enter, void *session, const void *buf)
{
	return call_enter(session, buf, NULL, CAP_FN_GNUTLS_RECORD_SEND);
}

SEC("uretprobe")
int BPF_KRETPROBE(gnutls_send_exit)
{
	return call_return(ctx, CAP_FN_GNUTLS_RECORD_SEND, CAP_DIR_EGRESS, false);
}

SEC("uprobe")
int BPF_KPROBE(gnutls_recv_enter, void *session, void *buf)
{
	return call_enter(session, buf, NULL, CAP_FN_GNUTLS_RECORD_RECV);
}

SEC("uretprobe")
int BPF_KRETPROBE(gnutls_recv_exit)
{
	return call_return(ctx, CAP_FN_GNUTLS_RECORD_RECV, CAP_DIR_INGRESS, false);
}

// ---- connection life: fd, role, handshake, end of stream ----------------------------------

SEC("uprobe")
int BPF_KPROBE(ssl_set_fd, void *ssl, int fd)
{
	return set_fd(ssl, fd);
}

SEC("uprobe")
int BPF_KPROBE(ssl_set_connect_state, void *ssl)
{
	return set_role(ssl, CAP_ROLE_CLIENT);
}

SEC("uprobe")
int BPF_KPROBE(ssl_set_accept_state, void *ssl)
{
	return set_role(ssl, CAP_ROLE_SERVER);
}

SEC("uprobe")
int BPF_KPROBE(ssl_do_handshake_enter, void *ssl)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call_args args = { .ssl = (__u64)ssl, .fd = -1 };
	struct thread_state *t;

	if (!traced(id >> 32))
		return 0;
	t = thread_now(true);
	if (t)
		t->handshake = args;
	return 0;
}

// After a handshake (done or in progress) the connection is open, with its socket if the
// handshake did socket I/O.
SEC("uretprobe")
int BPF_KRETPROBE(ssl_do_handshake_exit)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct thread_state *t = thread_now(false);
	struct conn_state *s;
	__u64 ssl;
	int fd;

	if (!t || !t->handshake.ssl)
		return 0;
	ssl = t->handshake.ssl;
	fd = t->handshake.fd;
	t->handshake.ssl = 0;
	s = conn_get(id >> 32, ssl);
	if (!s)
		return 0;
	conn_set_fd(id >> 32, ssl, s, fd);
	if (s->sock.fd >= 0)
		conn_open(id >> 32, ssl, s, settings_now());
	else
		t->pending_ssl = ssl;
	return 0;
}

// SSL_shutdown/gnutls_bye send close_notify, but the program may still read the peer's last
// bytes (node's http2 reads the server's GOAWAY after it; gnutls-cli reads the response after
// GNUTLS_SHUT_WR): the connection is only marked, and ends at close(), free or exit, reported
// as an orderly shutdown.
SEC("uprobe")
int BPF_KPROBE(ssl_shutdown, void *ssl)
{
	struct conn_key key = { .tgid = bpf_get_current_pid_tgid() >> 32, .ssl = (__u64)ssl };
	struct conn_state *s = bpf_map_lookup_elem(&conns, &key);

	if (s)
		s->shut = 1;
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(ssl_free, void *ssl)
{
	conn_end(bpf_get_current_pid_tgid() >> 32, (__u64)ssl, CAP_CLOSE_FREE);
	return 0;
}

// ---- Go crypto/tls: entry and RET-site probes (helpers in go.h) ----------------------------

SEC("uprobe")
int go_tls_write_enter(struct pt_regs *ctx)
{
	return go_enter(ctx, CAP_FN_GO_TLS_WRITE);
}

SEC("uprobe")
int go_tls_write_ret(struct pt_regs *ctx)
{
	return go_return(ctx, CAP_FN_GO_TLS_WRITE, CAP_DIR_EGRESS);
}

SEC("uprobe")
int go_tls_read_enter(struct pt_regs *ctx)
{
	return go_enter(ctx, CAP_FN_GO_TLS_READ);
}

SEC("uprobe")
int go_tls_read_ret(struct pt_regs *ctx)
{
	return go_return(ctx, CAP_FN_GO_TLS_READ, CAP_DIR_INGRESS);
}

SEC("uprobe")
int go_tls_client_handshake(struct pt_regs *ctx)
{
	return go_handshake(ctx, CAP_ROLE_CLIENT);
}

SEC("uprobe")
int go_tls_server_handshake(struct pt_regs *ctx)
{
	return go_handshake(ctx, CAP_ROLE_SERVER);
}

// ---- NSS: PR_* on SSL descriptors only (helpers and why in nss.h) --------------------------

SEC("uretprobe")
int BPF_KRETPROBE(nss_import_fd_exit)
{
	struct conn_key key = { .tgid = bpf_get_current_pid_tgid() >> 32, .ssl = PT_REGS_RC(ctx) };
	__u8 one = 1;

	if (!key.ssl || !traced(key.tgid))
		return 0;
	bpf_map_update_elem(&nss_fds, &key, &one, BPF_ANY);
	nss_fds_seen = 1;
	return 0;
}

SEC("uprobe")
int nss_write_enter(struct pt_regs *ctx)
{
	return nss_enter(ctx, CAP_FN_PR_WRITE);
}

SEC("uretprobe")
int nss_write_exit(struct pt_regs *ctx)
{
	return nss_return(ctx, CAP_FN_PR_WRITE, CAP_DIR_EGRESS);
}

SEC("uprobe")
int nss_send_enter(struct pt_regs *ctx)
{
	return nss_enter(ctx, CAP_FN_PR_SEND);
}

SEC("uretprobe")
int nss_send_exit(struct pt_regs *ctx)
{
	return nss_return(ctx, CAP_FN_PR_SEND, CAP_DIR_EGRESS);
}

SEC("uprobe")
int nss_read_enter(struct pt_regs *ctx)
{
	return nss_enter(ctx, CAP_FN_PR_READ);
}

SEC("uretprobe")
int nss_read_exit(struct pt_regs *ctx)
{
	return nss_return(ctx, CAP_FN_PR_READ, CAP_DIR_INGRESS);
}

SEC("uprobe")
int nss_recv_enter(struct pt_regs *ctx)
{
	return nss_enter(ctx, CAP_FN_PR_RECV);
}

SEC("uretprobe")
int nss_recv_exit(struct pt_regs *ctx)
{
	return nss_return(ctx, CAP_FN_PR_RECV, CAP_DIR_INGRESS);
}
SEC("uprobe")
int BPF_KPROBE(nss_writev_enter, void *fd, const void *iov, int iov_size)
{
	struct thread_state *t;

	if (!nss_fd(fd) || iov_size <= 0 || iov_size > NSS_MAX_IOV)
		return 0;
	call_enter(fd, iov, (void *)(long)iov_size, CAP_FN_PR_WRITEV);
	t = thread_now(false);
	if (t && t->call.func == CAP_FN_PR_WRITEV && t->call.ssl == (__u64)fd)
		t->call.sp = (__u32)PT_REGS_SP(ctx);
	return 0;
}

SEC("uretprobe")
int nss_writev_exit(struct pt_regs *ctx)
{
	struct thread_state *t;
	struct nss_iov_ctx *c;
	int rc = (int)PT_REGS_RC(ctx);
	__u32 zero = 0;

	if (!nss_fds_seen)
		return 0;
	t = thread_now(false);
	if (!t || t->call.func != CAP_FN_PR_WRITEV || t->call.sp != (__u32)(PT_REGS_SP(ctx) - 8))
		return 0;
	c = bpf_map_lookup_elem(&nss_iov_scratch, &zero);
	if (!c)
		return 0;
	c->a = t->call;
	c->iov = c->a.buf;
	c->n = c->a.outlen;
	c->id = bpf_get_current_pid_tgid();
	c->left = rc;
	// As in call_return: the call this one ran inside is the one in progress again.
	t->call = t->outer;
	t->outer.func = 0;
	if (t->call.func && t->call.fd < 0)
		t->call.fd = c->a.fd;
	for (__u32 i = 0; rc > 0 && i < NSS_MAX_IOV; i++)
		if (nss_iov(c, i))
			break;
	return nss_iov_done(c);
}

SEC("uprobe")
int BPF_KPROBE(nss_accept_enter, void *fd)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u8 one = 1;

	if (nss_fd(fd))
		bpf_map_update_elem(&nss_accepts, &id, &one, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(nss_accept_exit)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct conn_key key = { .tgid = id >> 32, .ssl = PT_REGS_RC(ctx) };
	__u8 one = 1;

	if (!nss_fds_seen || !bpf_map_lookup_elem(&nss_accepts, &id))
		return 0;
	bpf_map_delete_elem(&nss_accepts, &id);
	if (key.ssl) {
		bpf_map_update_elem(&nss_fds, &key, &one, BPF_ANY);
		set_role((void *)key.ssl, CAP_ROLE_SERVER);
	}
	return 0;
}

// SSL_ResetHandshake(fd, asServer): the role, as the program declares it.
SEC("uprobe")
int BPF_KPROBE(nss_reset_handshake, void *fd, int as_server)
{
	return set_role(fd, as_server ? CAP_ROLE_SERVER : CAP_ROLE_CLIENT);
}

// PR_Connect on an SSL descriptor: a client (NSS then starts a client handshake).
SEC("uprobe")
int BPF_KPROBE(nss_connect, void *fd)
{
	if (nss_fd(fd))
		set_role(fd, CAP_ROLE_CLIENT);
	return 0;
}

// PR_Close of an SSL descriptor frees it (a later descriptor may get its address).
SEC("uprobe")
int BPF_KPROBE(nss_close, void *fd)
{
	struct conn_key key = { .tgid = bpf_get_current_pid_tgid() >> 32, .ssl = (__u64)fd };

	if (!nss_fd(fd))
		return 0;
	bpf_map_delete_elem(&nss_fds, &key);
	conn_end(key.tgid, key.ssl, CAP_CLOSE_FREE);
	return 0;
}

// GnuTLS's role: gnutls_init(gnutls_session_t *session, unsigned flags), GNUTLS_SERVER = 1.
// The session exists only once it returns.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); // pid_tgid
	__type(value, struct call_args); // .outlen: the session **, .func: the flags
} gnutls_inits SEC(".maps");

SEC("uprobe")
int BPF_KPROBE(gnutls_init_enter, void *session, unsigned int flags)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call_args args = { .outlen = (__u64)session, .func = flags };

	if (traced(id >> 32))
		bpf_map_update_elem(&gnutls_inits, &id, &args, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(gnutls_init_exit)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call_args *a = bpf_map_lookup_elem(&gnutls_inits, &id);
	__u64 session = 0;
	__u32 flags;

	if (!a)
		return 0;
	flags = a->func;
	if (PT_REGS_RC(ctx) == 0 && !bpf_probe_read_user(&session, sizeof(session), (void *)a->outlen) && session)
		set_role((void *)session, (flags & 1) ? CAP_ROLE_SERVER : CAP_ROLE_CLIENT);
	bpf_map_delete_elem(&gnutls_inits, &id);
	return 0;
}

// ---- rustls (helpers in rustls.h; where they sit: helper/discovery/rustls.ts) -------------

// CommonState::send_some_plaintext(&mut self, data: &[u8]) -> usize: the bytes taken.
SEC("uprobe")
int BPF_KPROBE(rustls_write_enter, void *common, const void *buf)
{
	return call_enter(common, buf, NULL, CAP_FN_RUSTLS_WRITE);
}

SEC("uretprobe")
int BPF_KRETPROBE(rustls_write_exit)
{
	return call_return(ctx, CAP_FN_RUSTLS_WRITE, CAP_DIR_EGRESS, false);
}

// CommonState::write_tls(&mut self, wr: &mut dyn Write) -> io::Result<usize> (returned
// through the pointer in rdi): the socket.
SEC("uprobe")
int BPF_KPROBE(rustls_write_tls_enter, void *ret, void *common)
{
	return rustls_tls_enter(ret, common);
}

SEC("uretprobe")
int BPF_KRETPROBE(rustls_write_tls_exit)
{
	return rustls_tls_exit();
}

// CommonState::take_received_plaintext(&mut self, bytes: Payload): the bytes read.
SEC("uprobe")
int BPF_KPROBE(rustls_received, void *common, const void *payload)
{
	return rustls_plaintext_in(common, payload);
}

// ---- discovery (helpers in discovery.h) -----------------------------------------------------


SEC("tp_btf/sched_process_exec")
int BPF_PROG(process_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct cap_config *cfg;
	struct cap_proc *e;
	__u32 zero = 0;

	// A new program on this thread: a call or a pending socket of the old one means nothing now.
	bpf_task_storage_delete(&threads, p);
	cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!cfg || !(cfg->flags & CAP_CFG_EXEC_EVENTS))
		return 0;
	e = proc_event(CAP_EV_EXEC);
	if (!e)
		return 0;
	bpf_probe_read_kernel_str(e->path, sizeof(e->path), BPF_CORE_READ(bprm, filename));
	// At once: a new program is probed (or judged) before it gets far.
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	return 0;
}

// ---- syscalls (numbers and helpers in syscalls.h) --------------------------------------------

SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long nr)
{
	struct thread_state *t;
	bool inside = false, write = false;
	__u32 tgid;
	int fd;

	switch (nr) {
	case NR_write: case NR_writev: case NR_sendto: case NR_sendmsg: case NR_sendmmsg:
		write = true;
		break;
	case NR_read: case NR_readv: case NR_recvfrom: case NR_recvmsg: case NR_recvmmsg:
		break;
	case NR_close:
		fd_closed((int)SYS_ARG1(regs));
		return 0;
#ifdef NR_open
	case NR_open:
		lib_open((const char *)SYS_ARG1(regs));
		return 0;
#endif
	case NR_openat:
		lib_open((const char *)SYS_ARG2(regs));
		return 0;
	default:
		return 0;
	}
	fd = (int)SYS_ARG1(regs);
	// Threads that never made a TLS call have no state: this is all they pay.
	t = thread_now(false);
	if (t) {
		if (t->call.func) {
			inside = true;
			if (t->call.fd < 0)
				t->call.fd = fd;
		}
		if (t->handshake.ssl) {
			inside = true;
			if (t->handshake.fd < 0)
				t->handshake.fd = fd;
		}
		// A write outside any TLS call may be a memory BIO's output (pending_ssl); one
		// inside a call belongs to that call's connection.
		if (write && !inside && t->pending_ssl)
			socket_written(bpf_get_current_pid_tgid() >> 32, t, fd);
	}
	if (go_procs_seen) {
		tgid = bpf_get_current_pid_tgid() >> 32;
		if (bpf_map_lookup_elem(&go_procs, &tgid))
			go_syscall(tgid, GO_G(regs), fd);
	}
	return 0;
}

// A process that made captured calls ended: user space ends its connections.
SEC("tp_btf/sched_process_exit")
int BPF_PROG(process_exit, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct cap_exit *e;

	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0; // other threads of the process live on
	if (go_procs_seen)
		bpf_map_delete_elem(&go_procs, &tgid); // a later process with this pid is judged anew
	if (!bpf_map_lookup_elem(&procs, &tgid))
		return 0;
	bpf_map_delete_elem(&procs, &tgid);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CAP_CTR_EVENTS_LOST, 1);
		return 0;
	}
	e->h.size = sizeof(*e);
	e->h.kind = CAP_EV_EXIT;
	e->h.flags = 0;
	e->h.ts_ns = bpf_ktime_get_ns();
	e->h.pid = tgid;
	e->h.tid = BPF_CORE_READ(task, pid);
	e->exit_code = BPF_CORE_READ(task, exit_code);
	e->pad = 0;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), task->comm);
	bpf_ringbuf_submit(e, wakeup());
	return 0;
}

// ---- the probe floor (benchmarks: --probe-floor) -------------------------------------------
// Attached at every site in place of the programs above: the traced programs then pay the
// traps and the BPF dispatch of the same probe set, and nothing else.
SEC("uprobe")
int floor_uprobe(struct pt_regs *ctx)
{
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(floor_sys_enter, struct pt_regs *regs, long nr)
{
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(floor_process_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(floor_process_exit, struct task_struct *task)
{
	return 0;
}
