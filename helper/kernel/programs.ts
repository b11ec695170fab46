// programs.ts: every program of bpf/capture.bpf.c the helper attaches, by name, and how.
// Attaching takes one of these types, so a name missing here does not compile, and
// test/unit/programs.test.ts checks without a kernel that each one is in the built object, in a
// section of its kind: a renamed program fails there, not at attach time on a user's machine.

/** Uprobe and uretprobe programs (SEC("uprobe"), SEC("uretprobe")), attached to file offsets. */
export const UPROBE_PROGRAMS = [
  'ssl_write_enter', 'ssl_write_exit', 'ssl_read_enter', 'ssl_read_exit',
  'ssl_write_ex_enter', 'ssl_write_ex_exit', 'ssl_read_ex_enter', 'ssl_read_ex_exit',
  'ssl_write_internal_enter', 'ssl_write_internal_flags_enter', 'ssl_write_internal_exit', 'ssl_read_internal_enter', 'ssl_read_internal_exit',
  'ssl_set_fd', 'ssl_set_connect_state', 'ssl_set_accept_state', 'ssl_do_handshake_enter', 'ssl_do_handshake_exit',
  'ssl_shutdown', 'ssl_free',
  'gnutls_send_enter', 'gnutls_send_exit', 'gnutls_recv_enter', 'gnutls_recv_exit', 'gnutls_init_enter', 'gnutls_init_exit',
  'nss_import_fd_exit', 'nss_write_enter', 'nss_write_exit', 'nss_send_enter', 'nss_send_exit', 'nss_read_enter', 'nss_read_exit', 'nss_recv_enter', 'nss_recv_exit',
  'nss_writev_enter', 'nss_writev_exit', 'nss_accept_enter', 'nss_accept_exit', 'nss_reset_handshake', 'nss_connect', 'nss_close',
  'go_tls_write_enter', 'go_tls_write_ret', 'go_tls_read_enter', 'go_tls_read_ret', 'go_tls_client_handshake', 'go_tls_server_handshake',
  'rustls_write_enter', 'rustls_write_exit', 'rustls_write_tls_enter', 'rustls_write_tls_exit', 'rustls_received',
  // The probe floor (--probe-floor): the same places, a program that does nothing.
  'floor_uprobe',
] as const;

/** Tracing programs (SEC("tp_btf/…")), attached once per capture; floor_* for the probe floor. */
export const TRACING_PROGRAMS = ['process_exit', 'process_exec', 'sys_enter', 'floor_process_exit', 'floor_process_exec', 'floor_sys_enter'] as const;

export type UprobeProgram = (typeof UPROBE_PROGRAMS)[number];
export type TracingProgram = (typeof TRACING_PROGRAMS)[number];
