// nss.h: NSS's SSL descriptors (map nss_fds) and the helpers of the nss_* programs.
// One part of capture.bpf.c (a single compilation unit: every program shares these maps),
// split out by job as libbpf-tools keep helpers in headers; capture.bpf.c holds the programs.
//
// NSS's SSL layer is an NSPR I/O layer: its read/write functions are static (not in any symbol
// table), reached through the PRFileDesc's method table. A program calls NSPR's exported
// PR_Write/PR_Read/PR_Send/PR_Recv on the descriptor SSL_ImportFD returned; the same functions
// also move plain files, pipes and sockets. So only descriptors SSL_ImportFD (or DTLS_ImportFD)
// returned in this process are traced (map nss_fds), until PR_Close: the PRFileDesc * stands
// where OpenSSL has the SSL *, and the socket's fd comes from the syscalls inside the call, as
// for OpenSSL. The SSL layer calls the layer below through its method table, never through
// PR_Write, so a traced call is one application call.
#ifndef CAP_NSS_H
#define CAP_NSS_H

#include "calls.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key); // .ssl: the PRFileDesc * SSL_ImportFD returned
	__type(value, __u8);
} nss_fds SEC(".maps");

__u32 nss_fds_seen = 0;

// PR_Accept on an SSL listening descriptor returns an SSL descriptor NSS made itself (not
// through SSL_ImportFD): selfserv's connections come so.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); // pid_tgid
	__type(value, __u8);
} nss_accepts SEC(".maps");

// An SSL descriptor this capture did not see made (before it started, or in a way not
// probed) is told by NSS's own layout: the SSL layer's PRFileDesc (prio.h: methods, secret,
// lower, higher, dtor, identity) has its sslSocket as secret, and an sslSocket's first field
// points back to that PRFileDesc (sslimpl.h: struct sslSocketStr { PRFileDesc *fd; ... }). A
// plain NSPR descriptor's secret is a PRFilePrivate, which starts with two small integers
// (state, nonblocking), never a pointer to the descriptor. Once told, it is traced as if
// SSL_ImportFD had returned it.
static __always_inline bool nss_layout_ssl(__u64 fd)
{
	__u64 secret = 0, back = 0;

	if (!fd || bpf_probe_read_user(&secret, sizeof(secret), (const void *)(fd + 8)) || !secret)
		return false;
	if (bpf_probe_read_user(&back, sizeof(back), (const void *)secret))
		return false;
	return back == fd;
}

static __always_inline bool nss_fd(void *fd)
{
	struct conn_key key = { .tgid = bpf_get_current_pid_tgid() >> 32, .ssl = (__u64)fd };
	__u8 one = 1;

	if (nss_fds_seen && bpf_map_lookup_elem(&nss_fds, &key))
		return true;
	if (!nss_layout_ssl((__u64)fd) || !traced(key.tgid))
		return false;
	bpf_map_update_elem(&nss_fds, &key, &one, BPF_ANY);
	nss_fds_seen = 1;
	return true;
}

// PR_Write(fd, buf, amount), PR_Send(fd, buf, amount, flags, timeout), and the reads alike:
// the result is the count, or -1. Entry and return are paired by the stack pointer too: a
// PR_* call on a plain descriptor has no entry stashed, and its return must not take the
// SSL call it may run inside.
static __always_inline int nss_enter(struct pt_regs *ctx, __u32 func)
{
	struct thread_state *t;

	if (!nss_fd((void *)PT_REGS_PARM1(ctx)))
		return 0;
	call_enter((void *)PT_REGS_PARM1(ctx), (void *)PT_REGS_PARM2(ctx), NULL, func);
	t = thread_now(false);
	if (t && t->call.func == func && t->call.ssl == PT_REGS_PARM1(ctx))
		t->call.sp = (__u32)PT_REGS_SP(ctx);
	return 0;
}

static __always_inline int nss_return(struct pt_regs *ctx, __u32 func, __u32 dir)
{
	struct thread_state *t;

	if (!nss_fds_seen)
		return 0;
	t = thread_now(false);
	// At the return probe the return address has been popped: sp is 8 above the entry's.
	if (!t || t->call.func != func || t->call.sp != (__u32)(PT_REGS_SP(ctx) - 8))
		return 0;
	return call_return(ctx, func, dir, false);
}

// PR_Writev(fd, const PRIOVec *iov, PRInt32 iov_size, timeout): at most PR_MAX_IOVECTOR_SIZE
// (16) vectors of { char *iov_base; PRInt32 iov_len; }; the result is the bytes written in
// all. Each vector's share is recorded as a call of its own, in order, so offsets stay exact.
#define NSS_MAX_IOV 16

struct nss_iov_ctx {
	struct call_args a; // the call; .buf is set to each vector's base in turn
	__u64 iov;          // the PRIOVec array
	__u64 n;            // how many vectors
	__u64 id;
	__s64 left;         // bytes of the result not yet given to a vector
};

// Per CPU, not on the stack: with emit_call's frame under it the stack would pass 512 bytes.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nss_iov_ctx);
} nss_iov_scratch SEC(".maps");

// One vector's share; returns 1 when there is nothing more to give. A global function: the
// verifier checks it once, on its own, not once per vector (16 inlined or static copies of
// emit_call are past its limit).
__noinline int nss_iov(struct nss_iov_ctx *c, __u32 i)
{
	struct {
		__u64 base;
		__s32 len;
		__u32 pad;
	} v;
	__u64 n;

	if (!c || c->left <= 0 || i >= c->n)
		return 1;
	if (bpf_probe_read_user(&v, sizeof(v), (const void *)(c->iov + (__u64)i * sizeof(v)))) {
		count(CAP_CTR_CALLS_MISSED, 1); // bytes were written, but where they were is unreadable
		return 1;
	}
	if (v.len <= 0)
		return 0;
	n = (__u64)v.len < (__u64)c->left ? (__u64)v.len : (__u64)c->left;
	c->a.buf = v.base;
	emit_call(c->id, &c->a, n, CAP_DIR_EGRESS);
	c->left -= n;
	return 0;
}

// The end of the call, as call_return's: its socket and its hold. Global, for the same reason.
__noinline int nss_iov_done(struct nss_iov_ctx *c)
{
	struct thread_state *t = thread_now(false);

	if (c && t)
		conn_release(c->id >> 32, &c->a, after_call(c->id, &c->a, t, NULL));
	return 0;
}

#endif
