// emit.h: writing records into the ring buffer: a call's bytes in chunks, and connection
// open/close records with their socket.
// One part of capture.bpf.c (a single compilation unit: every program shares these maps),
// split out by job as libbpf-tools keep helpers in headers; capture.bpf.c holds the programs.
#ifndef CAP_EMIT_H
#define CAP_EMIT_H

#include "maps.h"

// What every chunk of one call shares, plus where its bytes are.
struct emit_ctx {
	struct cap_data tmpl;
	__u64 buf;
	__u64 ncap; // bytes of the call to capture: min(call_len, call_cap)
	__u32 res;  // what became of the last chunk: enum emit_res
};

enum emit_res { EMIT_SUBMITTED = 1, EMIT_LOST = 2, EMIT_FAULTED = 3 };

// One chunk in a record of CLS data bytes: records are reserved in a few size classes so
// that small calls do not take 16 KiB of ring each; the record's `size` says what is used.
static __always_inline long emit_sized(struct emit_ctx *c, __u32 off, __u32 n, const __u32 cls)
{
	struct cap_data *r = bpf_ringbuf_reserve(&events, sizeof(*r) + cls, 0);

	if (!r) {
		count(CAP_CTR_RECORDS_LOST, 1);
		count(CAP_CTR_BYTES_LOST, n);
		c->res = EMIT_LOST;
		return 0; // keep going: later chunks may find room, and each loss is counted
	}
	__builtin_memcpy(r, &c->tmpl, sizeof(*r));
	r->seq = c->tmpl.seq + off;
	r->chunk_off = off;
	r->data_len = n;
	r->h.size = sizeof(*r) + n;
	barrier_var(n);
	if (n > cls)
		n = cls;
	if (bpf_probe_read_user((void *)(r + 1), n, (const void *)(c->buf + off))) {
		bpf_ringbuf_discard(r, 0);
		count(CAP_CTR_READ_FAULTS, 1);
		count(CAP_CTR_BYTES_FAULTED, n);
		c->res = EMIT_FAULTED;
		return 0;
	}
	c->res = EMIT_SUBMITTED;
	bpf_ringbuf_submit(r, wakeup());
	count(CAP_CTR_BYTES_CAPTURED, n);
	return 0;
}

static long emit_chunk(__u32 i, void *ctx)
{
	struct emit_ctx *c = ctx;
	__u64 off = (__u64)i * CAP_CHUNK_MAX;
	__u64 n;

	if (off >= c->ncap && off)
		return 1;
	n = c->ncap - off;
	if (n > CAP_CHUNK_MAX)
		n = CAP_CHUNK_MAX;
	if (n <= 256)
		return emit_sized(c, off, n, 256);
	if (n <= 1024)
		return emit_sized(c, off, n, 1024);
	if (n <= 4096)
		return emit_sized(c, off, n, 4096);
	return emit_sized(c, off, n, CAP_CHUNK_MAX);
}

#define AF_INET 2
#define AF_INET6 10
#define S_IFMT 00170000
#define S_IFSOCK 0140000

// fd -> file -> socket -> sock, in the current task; fills family, ports and addresses when
// the fd is an IPv4/IPv6 socket. CO-RE reads, so it follows the running kernel's layout.
// Returns whether the fd is a socket at all.
static __always_inline bool sock_resolve(int fd, struct cap_sock *out)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file = NULL;
	struct socket *sock;
	struct sock *sk;
	__u16 family;

	if (!fdt || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return false;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return false;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return false;
	sock = BPF_CORE_READ(file, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return true;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	// (The address fields are byte arrays here: sizes are given, not taken from them.)
	if (family == AF_INET) {
		bpf_core_read(out->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(out->raddr, 4, &sk->__sk_common.skc_daddr);
	} else if (family == AF_INET6) {
		bpf_core_read(out->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(out->raddr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		return true;
	}
	out->family = family;
	out->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	out->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return true;
}

static __always_inline void emit_conn(__u16 kind, __u32 tgid, __u64 ssl, struct conn_state *s, __u8 reason)
{
	struct cap_conn *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count(CAP_CTR_EVENTS_LOST, 1);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->h.size = sizeof(*e);
	e->h.kind = kind;
	e->h.ts_ns = bpf_ktime_get_ns();
	e->h.pid = tgid;
	e->h.tid = (__u32)bpf_get_current_pid_tgid();
	e->conn_id = s->conn_id;
	e->ssl = ssl;
	e->off[0] = s->off[0];
	e->off[1] = s->off[1];
	e->reason = reason;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	__builtin_memcpy(&e->sock, &s->sock, sizeof(e->sock));
	e->shed = s->shed;
	bpf_ringbuf_submit(e, wakeup());
}

#endif /* CAP_EMIT_H */
