/* capture.h: the records bpf/capture.bpf.c writes to the ring buffer and the maps
 * user space fills. Shared by bpf/ and bridge/; helper/records/layout.ts is generated
 * from it (scripts/gen-layout.js). Fixed-width types, explicit padding, payload last. */
#ifndef HTTPS_CAPTURE_H
#define HTTPS_CAPTURE_H

#define CAP_COMM_LEN 16
/* Most plaintext bytes one ring-buffer record carries; a larger call becomes
 * several records (chunks) with consecutive chunk_off. */
#define CAP_CHUNK_MAX 16384
/* Upper bound on chunks per call, so the per-call cap is at most 64 MiB. */
#define CAP_MAX_CHUNKS 4096

enum cap_kind {
	CAP_EV_DATA = 1,       /* plaintext moved by one TLS call (one chunk of it) */
	CAP_EV_EXIT = 2,       /* a traced process ended (its connections end with it) */
	CAP_EV_CONN_OPEN = 3,  /* a connection was first seen, or its socket became known */
	CAP_EV_CONN_CLOSE = 4, /* end of stream: no more records of this conn_id */
	CAP_EV_EXEC = 5,       /* a process started a new program */
	CAP_EV_LIB_OPEN = 6,   /* a process opens a file named like a TLS library */
};

#define CAP_PATH_LEN 256

/* Which side of the TLS connection the process is. */
enum cap_role {
	CAP_ROLE_UNKNOWN = 0,
	CAP_ROLE_CLIENT = 1, /* SSL_set_connect_state / SSL_connect */
	CAP_ROLE_SERVER = 2, /* SSL_set_accept_state / SSL_accept */
};

enum cap_sock_flags {
	/* First seen at a data call, not at SSL_set_fd, a role or a handshake: the capture
	 * joined a connection already under way (offsets count from there). */
	CAP_SOCK_MID_STREAM = 1,
};

/* Why a connection ended. */
enum cap_close {
	CAP_CLOSE_SHUTDOWN = 1, /* closed, freed or reused after SSL_shutdown/gnutls_bye */
	CAP_CLOSE_FREE = 2,     /* SSL_free */
	CAP_CLOSE_FD = 3,       /* close() of its socket */
	CAP_CLOSE_REUSED = 4,   /* the SSL* moved to another fd (SSL_clear + SSL_set_fd) */
};

/* The function whose call produced a data record. */
enum cap_func {
	CAP_FN_SSL_WRITE = 1,
	CAP_FN_SSL_READ = 2,
	CAP_FN_SSL_WRITE_EX = 3,
	CAP_FN_SSL_READ_EX = 4,
	/* ssl_write_internal/ssl_read_internal: what SSL_write(_ex), SSL_read(_ex) and the
	 * SSL BIO all call (found by helper/discovery/openssl.ts) */
	CAP_FN_SSL_WRITE_INTERNAL = 5,
	CAP_FN_SSL_READ_INTERNAL = 6,
	/* GnuTLS: the session pointer stands where OpenSSL has the SSL* */
	CAP_FN_GNUTLS_RECORD_SEND = 7,
	CAP_FN_GNUTLS_RECORD_RECV = 8,
	/* Go crypto/tls: (*Conn).Write/(*Conn).Read; the *tls.Conn stands for the SSL* */
	CAP_FN_GO_TLS_WRITE = 9,
	CAP_FN_GO_TLS_READ = 10,
	/* NSS: NSPR's PR_Write/PR_Send/PR_Read/PR_Recv on a descriptor SSL_ImportFD returned; the
	 * PRFileDesc * stands for the SSL* */
	CAP_FN_PR_WRITE = 11,
	CAP_FN_PR_SEND = 12,
	CAP_FN_PR_READ = 13,
	CAP_FN_PR_RECV = 14,
	CAP_FN_PR_WRITEV = 15, /* each vector's share a call of its own */
	/* rustls: CommonState::send_some_plaintext (what Writer::write calls) and
	 * CommonState::take_received_plaintext (decrypted data, in the order Reader::read gives
	 * it); the &mut CommonState stands for the SSL* (bpf/rustls.h) */
	CAP_FN_RUSTLS_WRITE = 16,
	CAP_FN_RUSTLS_RECEIVED = 17,
};

enum cap_dir {
	CAP_DIR_EGRESS = 0,  /* written by the traced process */
	CAP_DIR_INGRESS = 1, /* read by the traced process */
};

enum cap_flags {
	CAP_F_TRUNCATED = 1, /* bytes of the call past cap_len were not captured (a cap below) */
	CAP_F_RATE_LIMITED = 2, /* ...because the process was over its byte-rate cap */
	CAP_F_SHED = 4, /* ...because the ring buffer was filling: only the call's head was taken */
};

/* Every record starts with this; `size` is the number of meaningful bytes of the
 * record (records are reserved in a few size classes, the rest is slack). */
struct cap_hdr {
	__u32 size;
	__u16 kind;
	__u16 flags;
	__u64 ts_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u32 pid;   /* tgid */
	__u32 tid;
};

/* The socket under a connection, resolved in BPF from the fd (task -> files -> file ->
 * socket -> sock) when the fd is first known. Zero addresses and ports when unknown. */
struct cap_sock {
	__s32 fd;      /* -1 when unknown */
	__u8 role;     /* enum cap_role */
	__u8 family;   /* AF_INET (2), AF_INET6 (10), 0 when unknown or not an IP socket */
	__u16 lport;   /* host byte order */
	__u16 rport;
	__u16 flags;   /* enum cap_sock_flags */
	__u32 pad;
	__u8 laddr[16]; /* IPv4: first 4 bytes */
	__u8 raddr[16];
};

struct cap_data {
	struct cap_hdr h;
	__u64 conn_id;    /* new for every (process, SSL*) lifetime seen */
	__u64 ssl;        /* the SSL* */
	__u64 seq;        /* offset, within this connection and direction, of data[0] */
	__u64 ack;        /* bytes moved so far in the other direction */
	__u64 call_len;   /* bytes the whole call moved */
	__u32 chunk_off;  /* offset of data[0] within the call */
	__u32 data_len;   /* bytes of data[] */
	__u8 dir;         /* enum cap_dir */
	__u8 func;        /* enum cap_func */
	__u16 pad;
	__u32 cap_len;    /* bytes of the call captured: min(call_len, call_cap) */
	char comm[CAP_COMM_LEN];
	struct cap_sock sock;
	/* data_len plaintext bytes follow the struct */
};

struct cap_exit {
	struct cap_hdr h;
	__s32 exit_code;
	__u32 pad;
	char comm[CAP_COMM_LEN];
};

struct cap_conn {
	struct cap_hdr h;
	__u64 conn_id;
	__u64 ssl;
	__u64 off[2];  /* bytes moved per enum cap_dir so far (final on close) */
	__u8 reason;   /* enum cap_close, on close */
	__u8 pad[7];
	char comm[CAP_COMM_LEN];
	struct cap_sock sock;
	__u64 shed;    /* bytes of the connection's calls shed so far, both directions (CAP_F_SHED) */
};

/* CAP_EV_EXEC and CAP_EV_LIB_OPEN: the process, and for LIB_OPEN the path as given to
 * open/openat (relative to the process's root and working directory). */
struct cap_proc {
	struct cap_hdr h;
	char comm[CAP_COMM_LEN];
	char path[CAP_PATH_LEN];
};

/* Counters, one slot each in the per-CPU array `counters`. */
enum cap_counter {
	CAP_CTR_CALLS = 0,          /* calls that moved at least one byte */
	CAP_CTR_BYTES_MOVED,        /* bytes those calls moved */
	CAP_CTR_BYTES_CAPTURED,     /* bytes written to the ring buffer */
	CAP_CTR_BYTES_TRUNCATED,    /* bytes past the per-call cap */
	CAP_CTR_RECORDS_LOST,       /* records the ring buffer had no room for */
	CAP_CTR_BYTES_LOST,         /* plaintext bytes in those records */
	CAP_CTR_READ_FAULTS,        /* records dropped: user memory unreadable */
	CAP_CTR_BYTES_FAULTED,      /* plaintext bytes in those records */
	CAP_CTR_EVENTS_LOST,        /* connection and exit records the ring had no room for */
	CAP_CTR_BYTES_RATE_LIMITED, /* bytes not captured: the process was over rate_cap */
	CAP_CTR_DISCOVERY_LOST,     /* exec and lib-open records the ring had no room for */
	CAP_CTR_CALLS_MISSED,       /* traced calls whose bytes could not be taken (count unknown) */
	CAP_CTR_BYTES_SHED,         /* bytes within the per-call cap not captured: the ring was filling */
	CAP_CTR_MAX,
};

/* Live settings, one entry in the array map `settings`. */
enum cap_filter {
	CAP_FILTER_PID = 1,  /* only tgids in map `filter_pids` */
	CAP_FILTER_COMM = 2, /* only comms in map `filter_comms` */
	CAP_FILTER_PORT = 4, /* and only connections with a local or remote port in `filter_ports` */
};

enum cap_config_flags {
	CAP_CFG_EXEC_EVENTS = 1, /* report every exec (targeted mode wants them) */
};

struct cap_config {
	__u32 filter;   /* enum cap_filter bits: a process passes if it matches the pid or the comm
			 * filter (when either is set); its connection, if the port filter is set */
	__u32 flags;    /* enum cap_config_flags */
	__u64 call_cap; /* most bytes captured per call (<= CAP_CHUNK_MAX * CAP_MAX_CHUNKS) */
	__u64 rate_cap; /* most bytes captured per second per process (token bucket, burst of
			 * one second); 0: no limit. At most CAP_RATE_CAP_MAX. */
	__u32 shed_head;  /* while shedding, most bytes captured per call (<= CAP_CHUNK_MAX) */
	__u32 shed_above; /* shed once more than this many bytes wait in the ring; 0: never */
};
#define CAP_RATE_CAP_MAX 0xffffffffULL

#ifdef __cplusplus
#define _Static_assert static_assert
#endif
_Static_assert(sizeof(struct cap_hdr) == 24, "cap_hdr layout");
_Static_assert(sizeof(struct cap_sock) == 48, "cap_sock layout");
_Static_assert(sizeof(struct cap_data) == 144, "cap_data layout");
_Static_assert(sizeof(struct cap_conn) == 136, "cap_conn layout");
_Static_assert(sizeof(struct cap_proc) == 296, "cap_proc layout");
_Static_assert(sizeof(struct cap_exit) == 48, "cap_exit layout");
_Static_assert(sizeof(struct cap_config) == 32, "cap_config layout");

#endif
