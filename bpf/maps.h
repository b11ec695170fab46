// maps.h: load-time settings, the maps every program shares, and the small helpers over them
// (counting, waking the reader, the pid/comm filter).
// One part of capture.bpf.c (a single compilation unit: every program shares these maps),
// split out by job as libbpf-tools keep helpers in headers; capture.bpf.c holds the programs.
#ifndef CAP_MAPS_H
#define CAP_MAPS_H

#include "capture.h"

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
	__u32 sp;     // NSS: low bits of the stack pointer at entry, to pair the return with it
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

#endif /* CAP_MAPS_H */
