// capture.bpf.c: uprobes on OpenSSL's SSL_write/SSL_read and their _ex forms; every byte a
// call really moved is copied into the ring buffer, in chunks, up to a per-call cap.
//
// Flow: the entry probe stashes the call's arguments per thread (task storage `threads`); the return
// probe reads how many bytes the call moved, advances the connection's per-direction byte
// offset (map `conns`) by exactly that many, and writes up to `call_cap` bytes as records of
// at most CAP_CHUNK_MAX bytes each. Bytes past the cap, or in records the ring buffer had no
// room for, are still counted in the offsets, so user space sees every missing byte as a gap
// of exact size; `counters` says why each one is missing.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "capture.h"

char LICENSE[] SEC("license") = "GPL";

// Load-time settings (set by the bridge between open and load).
const volatile __u32 targ_self_tgid = 0; // the helper itself: never traced
// Wake the ring's reader only once this many bytes wait in the ring (0: at every record, the
// kernel's default). The reader also drains on a short timer, so nothing waits longer than
// that; waking it per record cost more than the capture itself (docs/performance.md).
const volatile __u64 targ_wakeup_bytes = 0;


struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 32 << 20); // resized at load time
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CAP_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cap_config);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} filter_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, char[CAP_COMM_LEN]);
	__type(value, __u8);
} filter_comms SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} filter_ports SEC(".maps");

// Arguments of a TLS call in progress, per thread, from entry to return.
struct call_args {
	__u64 ssl;
	__u64 buf;
	__u64 outlen; // size_t * of the _ex functions
	__u32 func;
	__s32 fd;     // fd of the first socket I/O syscall made inside the call, or -1
	__u32 held;   // the call holds its connection open (conn_state.busy): it existed at entry
	__u32 pad;
};

// What one thread is doing with TLS, in the thread's own storage: the syscall hook on every
// syscall of every process then costs threads that never made a TLS call one pointer lookup,
// not a hash lookup per map (measured: docs/performance.md). Freed with the thread.
struct thread_state {
	struct call_args call;      // the TLS call in progress (call.func != 0), the innermost
	struct call_args outer;     // the call on another connection that `call` runs inside
	                            // (TLS inside TLS: a BIO writing into a second connection)
	struct call_args handshake; // a handshake in progress (handshake.ssl != 0)
	__u64 pending_ssl;          // memory BIOs: the SSL* waiting for this thread's next socket write
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct thread_state);
} threads SEC(".maps");

static __always_inline struct thread_state *thread_now(bool create)
{
	return bpf_task_storage_get(&threads, bpf_get_current_task_btf(), 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

struct conn_key {
	__u32 tgid;
	__u32 pad;
	__u64 ssl;
};

struct conn_state {
	__u64 conn_id;
	__u64 off[2]; // bytes moved so far, per enum cap_dir
	struct cap_sock sock;
	__u8 opened;  // its CONN_OPEN was emitted
	__u8 shut;    // SSL_shutdown/gnutls_bye was called: the end, when it comes, was orderly
	__u8 closing; // its socket was closed while calls on it ran: the CAP_CLOSE_* to end with
	__u8 fd_gone; // and its fd_conns entry is gone (the fd number may name another socket now)
	__u32 busy;   // calls on it in progress (another thread may close the socket meanwhile)
	__u32 ended;  // set once by whoever ends it: close() and the last call may race
	__u32 pad2;
	__u64 shed;   // bytes of its calls shed (CAP_F_SHED), both directions
	__u64 other_at[2]; // per direction: the other direction's offset at this direction's last call
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct conn_state);
} conns SEC(".maps");


// (tgid, fd) -> SSL*, so that close() of the socket ends its connection.
struct fd_key {
	__u32 tgid;
	__s32 fd;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fd_key);
	__type(value, __u64);
} fd_conns SEC(".maps");

// Memory BIOs (Node.js): the library does no socket I/O inside its calls, the program moves
// the encrypted bytes itself, right after the call (node's TLSWrap writes what SSL_write or
// a handshake step produced at once, on the same thread). So after a call on a connection
// whose socket is still unknown, the thread's next socket write names it
// (thread_state.pending_ssl).

// Go crypto/tls: calls in progress per goroutine, not per thread (a goroutine that blocks in
// Read may return on another thread). The goroutine is its g pointer, in r14 under Go's
// register ABI, at the probes and at the syscalls the call makes.
struct go_key {
	__u32 tgid;
	__u32 pad;
	__u64 g;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_key);
	__type(value, struct call_args); // .func 0: a handshake, waiting for its first socket I/O
} go_calls SEC(".maps");

// Processes whose crypto/tls is probed, so that the syscall hook looks up go_calls only for
// them (go_procs_seen: whether there is any, not to look for none).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} go_procs SEC(".maps");

__u32 go_procs_seen = 0;

// Processes that made at least one captured call: only their exits are reported.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} procs SEC(".maps");

__u64 last_conn_id = 0;

#ifndef barrier_var
#define barrier_var(var) asm volatile("" : "+r"(var))
#endif

// Flags for bpf_ringbuf_submit: see targ_wakeup_bytes.
static __always_inline __u64 wakeup(void)
{
	if (!targ_wakeup_bytes)
		return 0;
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= targ_wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline void count(__u32 key, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &key);

	if (v)
		__sync_fetch_and_add(v, n);
}

static __always_inline bool traced(__u32 tgid)
{
	__u32 zero = 0;
	struct cap_config *cfg;
	char comm[CAP_COMM_LEN] = {};

	if (tgid == targ_self_tgid)
		return false;
	cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!cfg || !(cfg->filter & (CAP_FILTER_PID | CAP_FILTER_COMM)))
		return true;
	if ((cfg->filter & CAP_FILTER_PID) && bpf_map_lookup_elem(&filter_pids, &tgid))
		return true;
	if (cfg->filter & CAP_FILTER_COMM) {
		bpf_get_current_comm(comm, sizeof(comm));
		if (bpf_map_lookup_elem(&filter_comms, comm))
			return true;
	}
	return false;
}

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
	// the head of a call that starts a message (HTTP's request line, status and headers) and
	// none of a call that continues one (only its marked record), and count the rest, so that
	// what is left of the ring holds the heads of every exchange rather than the whole of a
	// few. Records are dropped (counted as lost) only when even heads find no room.
	if (cfg && cfg->shed_above && want > cfg->shed_head &&
	    bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > cfg->shed_above) {
		head = turned ? cfg->shed_head : 0;
		shed = want - head;
		want = head;
		c.tmpl.h.flags = CAP_F_TRUNCATED | CAP_F_SHED;
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

SEC("uprobe")
int BPF_KPROBE(ssl_set_fd, void *ssl, int fd)
{
	return set_fd(ssl, fd);
}

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

// ---- Go crypto/tls -------------------------------------------------------------------------
// Go >= 1.17 passes arguments and results in registers (ABIInternal, amd64): the receiver
// (*tls.Conn) in rax, the []byte in rbx (pointer) and rcx (length); n in rax at return; the
// current goroutine's g in r14. There is no return probe: Go moves goroutine stacks, which
// breaks the return address a uretprobe plants, so helper/discovery/golang.ts probes every RET
// instruction of the function instead.

static __always_inline void go_proc_seen(__u32 tgid)
{
	__u8 one = 1;

	if (!bpf_map_lookup_elem(&go_procs, &tgid)) {
		bpf_map_update_elem(&go_procs, &tgid, &one, BPF_ANY);
		go_procs_seen = 1;
	}
}

static __always_inline int go_enter(struct pt_regs *ctx, __u32 func)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct go_key gk = { .tgid = id >> 32, .g = ctx->r14 };
	struct call_args args = {
		.ssl = ctx->ax,
		.buf = ctx->bx,
		.func = func,
		.fd = -1,
	};

	struct call_args *was;

	if (!traced(id >> 32))
		return 0;
	go_proc_seen(gk.tgid);
	// The entry probe fires again when the call restarts on a grown stack: it keeps its hold.
	was = bpf_map_lookup_elem(&go_calls, &gk);
	if (was && was->func == func && was->ssl == args.ssl)
		args.held = was->held;
	else {
		if (was && was->func)
			conn_release(gk.tgid, was, NULL);
		conn_hold(gk.tgid, &args);
	}
	bpf_map_update_elem(&go_calls, &gk, &args, BPF_ANY);
	return 0;
}

static __always_inline int go_return(struct pt_regs *ctx, __u32 func, __u32 dir)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct go_key gk = { .tgid = id >> 32, .g = ctx->r14 };
	struct call_args *ap = bpf_map_lookup_elem(&go_calls, &gk);
	struct call_args a;
	long n = (long)ctx->ax;

	if (!ap || ap->func != func)
		return 0;
	a = *ap;
	bpf_map_delete_elem(&go_calls, &gk);
	conn_release(gk.tgid, &a, n > 0 ? emit_call(id, &a, n, dir) : NULL);
	return 0;
}

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

// (*Conn).clientHandshake / serverHandshake: the role, and the socket from the handshake's
// first socket I/O (net/http does the handshake before any Read or Write). A handshake inside
// a Write or Read leaves that call's entry in place: the call learns the socket itself.
static __always_inline int go_handshake(struct pt_regs *ctx, __u8 role)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct go_key gk = { .tgid = id >> 32, .g = ctx->r14 };
	struct call_args args = { .ssl = ctx->ax, .fd = -1 };

	set_role((void *)ctx->ax, role);
	if (!traced(id >> 32))
		return 0;
	go_proc_seen(gk.tgid);
	bpf_map_update_elem(&go_calls, &gk, &args, BPF_NOEXIST);
	return 0;
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

// ---- discovery: new programs and TLS library files, as they appear ------------------------

static __always_inline struct cap_proc *proc_event(__u16 kind)
{
	struct cap_proc *e = bpf_ringbuf_reserve(&events, sizeof(struct cap_proc), 0);
	__u64 id = bpf_get_current_pid_tgid();

	if (!e) {
		count(CAP_CTR_DISCOVERY_LOST, 1);
		return NULL;
	}
	e->h.size = sizeof(*e);
	e->h.kind = kind;
	e->h.flags = 0;
	e->h.ts_ns = bpf_ktime_get_ns();
	e->h.pid = id >> 32;
	e->h.tid = (__u32)id;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

// The scratch buffer has slack past CAP_PATH_LEN so that a masked index plus a short
// comparison stays inside it.
#define PATH_BUF (CAP_PATH_LEN + 16)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[PATH_BUF]);
} path_scratch SEC(".maps");

struct base_ctx {
	const char *path;
	__u32 n;
	__u32 base; // index just past the last '/'
};

static long find_base(__u32 i, void *ctx)
{
	struct base_ctx *b = ctx;

	if (i >= b->n)
		return 1;
	if (b->path[i & (CAP_PATH_LEN - 1)] == '/')
		b->base = i + 1;
	return 0;
}

// Whether the last path component starts with "libssl.so" or "libgnutls.so": the loader and
// dlopen open a library before mapping it, so user space can attach to a new copy before it
// is used.
static __always_inline bool tls_library_name(const char *path, __u32 n)
{
	struct base_ctx b = { .path = path, .n = n };
	__u32 at;

	bpf_loop(CAP_PATH_LEN, find_base, &b, 0);
	if (b.base + 9 > n)
		return false;
	at = b.base & (CAP_PATH_LEN - 1);
	if (path[at] != 'l' || path[at + 1] != 'i' || path[at + 2] != 'b')
		return false;
	if (path[at + 3] == 's' && path[at + 4] == 's' && path[at + 5] == 'l' && path[at + 6] == '.' &&
	    path[at + 7] == 's' && path[at + 8] == 'o')
		return true;
	return b.base + 12 <= n && path[at + 3] == 'g' && path[at + 4] == 'n' && path[at + 5] == 'u' &&
	       path[at + 6] == 't' && path[at + 7] == 'l' && path[at + 8] == 's' && path[at + 9] == '.' &&
	       path[at + 10] == 's' && path[at + 11] == 'o';
}

// Whether ".so" starts within the last 16 bytes of the path, as in libssl.so, libssl.so.3,
// libgnutls.so.30, libssl.so.1.0.0 or libgnutls.so.30.37.1: most paths opened (the files a server serves, /proc,
// /dev) are refused here, before the walk over the whole path.
static __always_inline bool so_near_end(const char *path, __u32 n)
{
	for (__u32 back = 3; back <= 16; back++) {
		__u32 at;

		if (back > n)
			return false;
		at = (n - back) & (CAP_PATH_LEN - 1);
		if (path[at] == '.' && path[at + 1] == 's' && path[at + 2] == 'o')
			return true;
	}
	return false;
}

static __always_inline void lib_open(const char *upath)
{
	__u32 zero = 0;
	char *path = bpf_map_lookup_elem(&path_scratch, &zero);
	struct cap_proc *e;
	int n;

	if (!path || !upath)
		return;
	n = bpf_probe_read_user_str(path, CAP_PATH_LEN, upath);
	if (n <= 1 || !so_near_end(path, n - 1) || !tls_library_name(path, n - 1))
		return;
	if (bpf_get_current_pid_tgid() >> 32 == targ_self_tgid)
		return;
	e = proc_event(CAP_EV_LIB_OPEN);
	if (!e)
		return;
	__builtin_memcpy(e->path, path, CAP_PATH_LEN);
	// At once: user space attaches to the file before the loader maps it and the program calls it.
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

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

// Syscalls: the fd of socket I/O made inside a TLS call or handshake, and close() of a
// connection's socket. tp_btf attaches without tracefs. x86-64 syscall numbers.
#define NR_read 0
#define NR_write 1
#define NR_open 2
#define NR_close 3
#define NR_openat 257
#define NR_readv 19
#define NR_writev 20
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_recvmmsg 299
#define NR_sendmmsg 307

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
		fd_closed((int)regs->di);
		return 0;
	case NR_open:
		lib_open((const char *)regs->di);
		return 0;
	case NR_openat:
		lib_open((const char *)regs->si);
		return 0;
	default:
		return 0;
	}
	fd = (int)regs->di;
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
			go_syscall(tgid, regs->r14, fd);
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
