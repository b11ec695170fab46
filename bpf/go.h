// go.h: Go crypto/tls: the calls' arguments from Go's register ABI and the goroutine (g)
// that keys them.
// One part of capture.bpf.c (a single compilation unit: every program shares these maps),
// split out by job as libbpf-tools keep helpers in headers; capture.bpf.c holds the programs.
#ifndef CAP_GO_H
#define CAP_GO_H

#include "calls.h"

// ---- Go crypto/tls -------------------------------------------------------------------------
// Go >= 1.17 passes arguments and results in registers (ABIInternal, amd64; arch.h has the
// registers, arm64's too): the receiver
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
	struct go_key gk = { .tgid = id >> 32, .g = GO_G(ctx) };
	struct call_args args = {
		.ssl = GO_ARG1(ctx),
		.buf = GO_ARG2(ctx),
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
	struct go_key gk = { .tgid = id >> 32, .g = GO_G(ctx) };
	struct call_args *ap = bpf_map_lookup_elem(&go_calls, &gk);
	struct call_args a;
	long n = (long)GO_RET1(ctx);

	if (!ap || ap->func != func)
		return 0;
	a = *ap;
	bpf_map_delete_elem(&go_calls, &gk);
	conn_release(gk.tgid, &a, n > 0 ? emit_call(id, &a, n, dir) : NULL);
	return 0;
}


// (*Conn).clientHandshake / serverHandshake: the role, and the socket from the handshake's
// first socket I/O (net/http does the handshake before any Read or Write). A handshake inside
// a Write or Read leaves that call's entry in place: the call learns the socket itself.
static __always_inline int go_handshake(struct pt_regs *ctx, __u8 role)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct go_key gk = { .tgid = id >> 32, .g = GO_G(ctx) };
	struct call_args args = { .ssl = GO_ARG1(ctx), .fd = -1 };

	set_role((void *)GO_ARG1(ctx), role);
	if (!traced(id >> 32))
		return 0;
	go_proc_seen(gk.tgid);
	bpf_map_update_elem(&go_calls, &gk, &args, BPF_NOEXIST);
	return 0;
}

#endif /* CAP_GO_H */
