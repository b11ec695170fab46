// arch.h: what differs between the architectures capture.bpf.c is built for, chosen at build
// time by the Makefile's -D__TARGET_ARCH_<arch> (the arch the object is built on; vmlinux.h
// comes from the same machine's BTF, so struct pt_regs is that arch's). The uprobe argument
// macros (PT_REGS_PARM*, PT_REGS_RC) already come per arch from libbpf's bpf_tracing.h; what
// is here is what libbpf does not know: syscall numbers, the syscall tracepoint's registers,
// and Go's register ABI.
#ifndef CAPTURE_ARCH_H
#define CAPTURE_ARCH_H

#if defined(__TARGET_ARCH_x86)

// arch/x86/entry/syscalls/syscall_64.tbl
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

// The syscall's first two arguments in the struct pt_regs of tp_btf/sys_enter.
#define SYS_ARG1(r) ((r)->di)
#define SYS_ARG2(r) ((r)->si)

// Go's ABIInternal on amd64 (Go >= 1.17): integer arguments and results in rax, rbx, rcx, …;
// the current goroutine's g in r14.
#define GO_ARG1(r) ((r)->ax)
#define GO_ARG2(r) ((r)->bx)
#define GO_RET1(r) ((r)->ax)
#define GO_G(r) ((r)->r14)

#elif defined(__TARGET_ARCH_arm64)

// include/uapi/asm-generic/unistd.h: arm64 has no open(2), only openat(2).
#define NR_read 63
#define NR_write 64
#define NR_close 57
#define NR_openat 56
#define NR_readv 65
#define NR_writev 66
#define NR_sendto 206
#define NR_recvfrom 207
#define NR_sendmsg 211
#define NR_recvmsg 212
#define NR_recvmmsg 243
#define NR_sendmmsg 269

// At sys_enter x0 still holds the first argument (the return value overwrites it only at
// the syscall's end; orig_x0 keeps a copy for restarts).
#define SYS_ARG1(r) ((r)->regs[0])
#define SYS_ARG2(r) ((r)->regs[1])

// Go's ABIInternal on arm64 (Go >= 1.18): integer arguments and results in x0, x1, x2, …;
// g in x28. helper/discovery/golang.ts plans the arm64 sites (planArm64Function).
#define GO_ARG1(r) ((r)->regs[0])
#define GO_ARG2(r) ((r)->regs[1])
#define GO_RET1(r) ((r)->regs[0])
#define GO_G(r) ((r)->regs[28])

#else
#error "capture.bpf.c is built for x86 (x86-64) and arm64 only: build it with -D__TARGET_ARCH_x86 or -D__TARGET_ARCH_arm64"
#endif

#endif
