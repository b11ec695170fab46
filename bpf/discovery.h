// discovery.h: exec and TLS-library-open records, so user space attaches to new programs and
// library files before they run TLS code.
// One part of capture.bpf.c (a single compilation unit: every program shares these maps),
// split out by job as libbpf-tools keep helpers in headers; capture.bpf.c holds the programs.
#ifndef CAP_DISCOVERY_H
#define CAP_DISCOVERY_H

#include "maps.h"

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

// Whether the last path component starts with "libssl.so", "libgnutls.so", "libssl3.so" or
// "libnspr4.so" (NSS): the loader and
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
	// NSS: its SSL layer (libssl3.so) and NSPR (libnspr4.so), whose PR_Write/PR_Read carry it.
	if (b.base + 10 <= n && path[at + 3] == 's' && path[at + 4] == 's' && path[at + 5] == 'l' &&
	    path[at + 6] == '3' && path[at + 7] == '.' && path[at + 8] == 's' && path[at + 9] == 'o')
		return true;
	if (b.base + 11 <= n && path[at + 3] == 'n' && path[at + 4] == 's' && path[at + 5] == 'p' &&
	    path[at + 6] == 'r' && path[at + 7] == '4' && path[at + 8] == '.' && path[at + 9] == 's' &&
	    path[at + 10] == 'o')
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

#endif /* CAP_DISCOVERY_H */
