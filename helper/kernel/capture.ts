// capture.ts: one capture session. Loads bpf/capture.bpf.o through the bridge, sets the
// filters and the per-call cap, attaches the OpenSSL probe set to library files, drains the
// ring buffer into decoded records, and reads the kernel-side counters.
import * as fs from 'fs';
import { BpfObject, BPF_OBJECT_PATH, BridgeError, monotonicToWallOffset, RingStats, UprobeOptions } from './bridge';
import { fileVersion, LibraryFile } from '../discovery/libraries';
import { GO_READ, GO_WRITE, planGoCached } from '../discovery/golang';
import { exportedOffsets, planOpenSsl, ProbePlan } from '../discovery/openssl';
import { planRustlsCached } from '../discovery/rustls';
import { buildKey } from '../discovery/elf';
import { TracingProgram, UprobeProgram } from './programs';
import { cap_config_flags, cap_counter, cap_filter } from '../records/layout';
import { CALL_CAP_MAX, CaptureRecord, CHUNK_MAX, COMM_LEN, decodeBatch, DEFAULT_CALL_CAP, joinShedRecords, DEFAULT_RING_BYTES, DEFAULT_SHED_FILL, DEFAULT_SHED_HEAD, encodeConfig, RATE_CAP_MAX } from '../records/records';

export { DEFAULT_CALL_CAP, DEFAULT_RING_BYTES, DEFAULT_SHED_FILL, DEFAULT_SHED_HEAD, RATE_CAP_MAX };
/** The ring thread is woken once this many bytes wait (bpf targ_wakeup_bytes)... */
const WAKEUP_BYTES = 1 << 20;
/** ...and drains the ring this often in any case: the most a record waits, in ms. */
export const DRAIN_MS = 4;

/** Entry and return programs of bpf/capture.bpf.c for each exported OpenSSL function. */
export const OPENSSL_PROBES = [
  { func: 'SSL_write', enter: 'ssl_write_enter', exit: 'ssl_write_exit' },
  { func: 'SSL_read', enter: 'ssl_read_enter', exit: 'ssl_read_exit' },
  { func: 'SSL_write_ex', enter: 'ssl_write_ex_enter', exit: 'ssl_write_ex_exit' },
  { func: 'SSL_read_ex', enter: 'ssl_read_ex_enter', exit: 'ssl_read_ex_exit' },
] as const;

/**
 * Probes that follow a connection's life in each OpenSSL file: its socket (SSL_set_fd and
 * the socket I/O inside the handshake), its role, and its end. Hit once or twice per
 * connection, not per call.
 */
export const OPENSSL_CONN_PROBES: { func: string; prog: UprobeProgram; retprobe?: boolean }[] = [
  { func: 'SSL_set_fd', prog: 'ssl_set_fd' },
  { func: 'SSL_set_rfd', prog: 'ssl_set_fd' },
  { func: 'SSL_set_wfd', prog: 'ssl_set_fd' },
  { func: 'SSL_set_connect_state', prog: 'ssl_set_connect_state' },
  { func: 'SSL_set_accept_state', prog: 'ssl_set_accept_state' },
  { func: 'SSL_do_handshake', prog: 'ssl_do_handshake_exit', retprobe: true },
  { func: 'SSL_do_handshake', prog: 'ssl_do_handshake_enter' },
  { func: 'SSL_shutdown', prog: 'ssl_shutdown' },
  { func: 'SSL_free', prog: 'ssl_free' },
];

/**
 * BoringSSL: OpenSSL's probe set on its exported functions (its internal functions have other
 * signatures, so the planner's shape is never used), and SSL_connect/SSL_accept for the role:
 * BoringSSL inlines SSL_set_connect_state/SSL_set_accept_state into them (measured in Debian's
 * android-libboringssl 13.0.0: `SSL_connect` sets the handshake function itself, then jumps to
 * `SSL_do_handshake`).
 */
export const BORINGSSL_CONN_PROBES: { func: string; prog: UprobeProgram; retprobe?: boolean }[] = [
  ...OPENSSL_CONN_PROBES,
  { func: 'SSL_connect', prog: 'ssl_set_connect_state' },
  { func: 'SSL_accept', prog: 'ssl_set_accept_state' },
];

/** GnuTLS: its record functions, and the connection-life functions mapped onto the same programs. */
export const GNUTLS_PROBES = [
  { func: 'gnutls_record_send', enter: 'gnutls_send_enter', exit: 'gnutls_send_exit' },
  { func: 'gnutls_record_recv', enter: 'gnutls_recv_enter', exit: 'gnutls_recv_exit' },
] as const;

export const GNUTLS_CONN_PROBES: { func: string; prog: UprobeProgram; retprobe?: boolean }[] = [
  // gnutls_transport_set_ptr is left out: its argument is only an fd by convention.
  { func: 'gnutls_transport_set_int2', prog: 'ssl_set_fd' },
  // The role: gnutls_init's flags (GNUTLS_SERVER), applied to the session it returns.
  { func: 'gnutls_init', prog: 'gnutls_init_exit', retprobe: true },
  { func: 'gnutls_init', prog: 'gnutls_init_enter' },
  { func: 'gnutls_handshake', prog: 'ssl_do_handshake_exit', retprobe: true },
  { func: 'gnutls_handshake', prog: 'ssl_do_handshake_enter' },
  { func: 'gnutls_bye', prog: 'ssl_shutdown' },
  { func: 'gnutls_deinit', prog: 'ssl_free' },
];

/**
 * NSS: the plaintext moves through NSPR's PR_Write/PR_Send/PR_Read/PR_Recv (libnspr4.so) on the
 * descriptors NSS's SSL_ImportFD returned (libssl3.so); the BPF programs trace only those
 * descriptors (bpf/capture.bpf.c `nss_fds`), so plain files, pipes and sockets that go through
 * the same functions are not read. The SSL layer's own read and write functions are static
 * (in no symbol table of Debian's build), reached only through the descriptor's method table.
 */
export const NSPR_PROBES = [
  { func: 'PR_Write', enter: 'nss_write_enter', exit: 'nss_write_exit' },
  { func: 'PR_Send', enter: 'nss_send_enter', exit: 'nss_send_exit' },
  { func: 'PR_Read', enter: 'nss_read_enter', exit: 'nss_read_exit' },
  { func: 'PR_Recv', enter: 'nss_recv_enter', exit: 'nss_recv_exit' },
  { func: 'PR_Writev', enter: 'nss_writev_enter', exit: 'nss_writev_exit' },
] as const;

export const NSPR_CONN_PROBES: { func: string; prog: UprobeProgram; retprobe?: boolean }[] = [
  { func: 'PR_Connect', prog: 'nss_connect' },
  // An SSL listening descriptor's PR_Accept returns a new SSL descriptor (selfserv's way).
  { func: 'PR_Accept', prog: 'nss_accept_exit', retprobe: true },
  { func: 'PR_Accept', prog: 'nss_accept_enter' },
  { func: 'PR_Shutdown', prog: 'ssl_shutdown' },
  { func: 'PR_Close', prog: 'nss_close' },
];

/** libssl3.so: where SSL descriptors are made (their PRFileDesc * is the connection), roles, handshakes. */
export const NSS_SSL_PROBES: { func: string; prog: UprobeProgram; retprobe?: boolean }[] = [
  { func: 'SSL_ImportFD', prog: 'nss_import_fd_exit', retprobe: true },
  { func: 'DTLS_ImportFD', prog: 'nss_import_fd_exit', retprobe: true },
  { func: 'SSL_ResetHandshake', prog: 'nss_reset_handshake' },
  { func: 'SSL_ForceHandshake', prog: 'ssl_do_handshake_exit', retprobe: true },
  { func: 'SSL_ForceHandshake', prog: 'ssl_do_handshake_enter' },
  { func: 'SSL_ForceHandshakeWithTimeout', prog: 'ssl_do_handshake_exit', retprobe: true },
  { func: 'SSL_ForceHandshakeWithTimeout', prog: 'ssl_do_handshake_enter' },
];

export interface CaptureOptions {
  /** Only these processes (and any process whose name is in `comms`). */
  pids?: number[];
  comms?: string[];
  /** And only connections with one of these local or remote ports. */
  ports?: number[];
  /** Most bytes captured of one call; the rest is counted. */
  callCap?: number;
  /** Most bytes captured per second per process (0: no limit); the rest is counted. */
  rateCap?: number;
  /** Size of the ring buffer in bytes (a power of two, at least one page). */
  ringBytes?: number;
  /**
   * Load shedding: once more than `shedFill` of the ring buffer waits to be read, only the
   * first `shedHead` bytes of a call that starts a message (the first since the other direction
   * moved) are captured, none of one that continues it, and the rest is counted (bytes_shed).
   * shedFill 1 (or above): never shed.
   */
  shedHead?: number;
  shedFill?: number;
  /** Report every exec (CAP_EV_EXEC records). */
  execEvents?: boolean;
  /** Never trace this process (default: ourselves). */
  selfPid?: number;
  /**
   * The probe floor (benchmarks): every probe goes to the same place, with a program that does
   * nothing (bpf/capture.bpf.c `floor_*`), so traced programs pay only the traps and the BPF
   * dispatch. Nothing is captured.
   */
  floor?: boolean;
}

/**
 * 'auto': the internal functions when helper/openssl.ts recognizes the build, else the
 * exported ones; 'exported': always the four exported functions.
 */
export type ProbeMode = 'auto' | 'exported';

/** How records are handed over (bridge.ts RingOptions says more). */
export interface StartOptions {
  batchBytes?: number;
  queue?: number;
  /** The ring thread ended on its own: no record comes any more (why, in the error). */
  onError?: (e: BridgeError) => void;
}

export interface AttachResult {
  library: LibraryFile;
  plan: ProbePlan;
  /** Functions whose calls are captured (entry and return probes). */
  attached: string[];
  /** Functions the file lacks or that could not be probed, with the reason. */
  failed: { func: string; reason: string }[];
}

/** Counters kept by the BPF program, summed over CPUs. */
export interface KernelCounters {
  calls: number;
  bytesMoved: number;
  bytesCaptured: number;
  bytesTruncated: number;
  recordsLost: number;
  bytesLost: number;
  readFaults: number;
  bytesFaulted: number;
  eventsLost: number;
  bytesRateLimited: number;
  /** Bytes within the per-call cap not captured because the ring buffer was filling (load shedding). */
  bytesShed: number;
  /** exec and lib-open records lost (discovery's; the /proc rescan makes up for them). */
  discoveryEventsLost: number;
  /**
   * Traced calls whose bytes could not be taken, and whose count is unknown: no memory for the
   * thread's state at entry, an unreadable byte count, a return that did not match its entry.
   */
  callsMissed: number;
}

/** Each counter's slot in the per-CPU array `counters` (enum cap_counter). */
const COUNTER_SLOTS: Record<keyof KernelCounters, cap_counter> = {
  calls: cap_counter.CAP_CTR_CALLS,
  bytesMoved: cap_counter.CAP_CTR_BYTES_MOVED,
  bytesCaptured: cap_counter.CAP_CTR_BYTES_CAPTURED,
  bytesTruncated: cap_counter.CAP_CTR_BYTES_TRUNCATED,
  recordsLost: cap_counter.CAP_CTR_RECORDS_LOST,
  bytesLost: cap_counter.CAP_CTR_BYTES_LOST,
  readFaults: cap_counter.CAP_CTR_READ_FAULTS,
  bytesFaulted: cap_counter.CAP_CTR_BYTES_FAULTED,
  eventsLost: cap_counter.CAP_CTR_EVENTS_LOST,
  bytesRateLimited: cap_counter.CAP_CTR_BYTES_RATE_LIMITED,
  discoveryEventsLost: cap_counter.CAP_CTR_DISCOVERY_LOST,
  callsMissed: cap_counter.CAP_CTR_CALLS_MISSED,
  bytesShed: cap_counter.CAP_CTR_BYTES_SHED,
};

interface DataProbe {
  name: string;
  enter: UprobeProgram;
  exit: UprobeProgram;
  where: UprobeOptions;
}

/** Where to attach to a function: its offset worked out here, or libbpf's lookup by name. */
function at(plan: ProbePlan, func: string): UprobeOptions {
  const offset = plan.offsets.get(func);
  return offset !== undefined ? { offset } : { func };
}

// Probes of a library for all processes are kept under its path; those planted for one
// process under path#pid.
const linkKey = (path: string, pid: number): string => (pid < 0 ? path : `${path}#${pid}`);
function splitKey(key: string): [string, number] {
  const at = key.lastIndexOf('#');
  return at < 0 ? [key, -1] : [key.slice(0, at), Number(key.slice(at + 1))];
}

export class Capture {
  readonly bpf: BpfObject;
  /** Add to a record's tsNs (CLOCK_MONOTONIC) to get Unix time in ns. */
  readonly wallOffsetNs: bigint;
  private readonly links = new Map<string, number[]>();
  /** Files held open while their probes are attached: path → /proc/self/fd/N (pin()). */
  private readonly pinned = new Map<string, string>();
  private running = false;
  private readonly plans = new Map<string, ProbePlan>();
  /** The same plans by build id, size and mode (plan()). */
  private readonly plansByBuild = new Map<string, ProbePlan>();
  /** Path → kind of the files with probes. */
  private readonly kinds = new Map<string, LibraryFile['kind']>();
  private stopped?: Promise<KernelCounters>;
  private readonly floor: boolean;
  /** Load shedding's settings (cap_config.shed_head, shed_above), fixed for the capture's life. */
  private readonly shedHead: number;
  private readonly shedAbove: number;
  /** shedNow(true): shed whatever the ring's fill, until shedNow(false); the settings last written. */
  private shedAlways = false;
  private settings?: [filter: number, cap: number, flags: number, rate: number];

  constructor(opts: CaptureOptions = {}) {
    this.floor = opts.floor === true;
    const ringBytes = opts.ringBytes ?? DEFAULT_RING_BYTES;
    if (ringBytes < 4096 || (ringBytes & (ringBytes - 1)) !== 0) {
      throw new RangeError(`ring buffer size ${ringBytes} is not a power of two of at least 4096 bytes`);
    }
    this.shedHead = opts.shedHead ?? DEFAULT_SHED_HEAD;
    if (!Number.isSafeInteger(this.shedHead) || this.shedHead < 0 || this.shedHead > CHUNK_MAX) {
      throw new RangeError(`shed head ${this.shedHead} bytes is outside 0..${CHUNK_MAX}`);
    }
    const fill = opts.shedFill ?? DEFAULT_SHED_FILL;
    if (!(fill > 0)) throw new RangeError(`shed fill ${fill} is not above 0 (a fraction of the ring buffer; 1 never sheds)`);
    this.shedAbove = fill >= 1 ? 0 : Math.max(1, Math.floor(ringBytes * fill));
    this.bpf = new BpfObject(BPF_OBJECT_PATH, {
      // Wake the ring thread once a batch's worth waits (or an eighth of a small ring); it
      // also drains every DRAIN_MS (start()).
      consts: { targ_self_tgid: opts.selfPid ?? process.pid, targ_wakeup_bytes: BigInt(Math.min(WAKEUP_BYTES, ringBytes / 8)) },
      maxEntries: { events: ringBytes },
    });
    try {
      this.configure(opts);
      for (const prog of ['process_exit', 'process_exec', 'sys_enter'] as const) this.bpf.attach((this.floor ? `floor_${prog}` : prog) satisfies TracingProgram);
    } catch (e) {
      this.bpf.close();
      throw e;
    }
    this.wallOffsetNs = monotonicToWallOffset();
  }

  /**
   * Sets filters, cap and whether every exec is reported (targeted mode wants them; others need
   * not pay); takes effect for calls that start afterwards.
   */
  configure(opts: Pick<CaptureOptions, 'pids' | 'comms' | 'ports' | 'callCap' | 'rateCap' | 'execEvents'>): void {
    const cap = opts.callCap ?? DEFAULT_CALL_CAP;
    if (!Number.isSafeInteger(cap) || cap < 0 || cap > CALL_CAP_MAX) {
      throw new RangeError(`per-call cap ${cap} is outside 0..${CALL_CAP_MAX}`);
    }
    const rate = opts.rateCap ?? 0;
    if (!Number.isSafeInteger(rate) || rate < 0 || rate > RATE_CAP_MAX) {
      throw new RangeError(`rate cap ${rate} bytes/s is outside 0..${RATE_CAP_MAX}`);
    }
    const u16 = (port: number): Buffer => {
      const k = Buffer.alloc(2);
      k.writeUInt16LE(port);
      return k;
    };
    const u32 = (pid: number): Buffer => {
      const k = Buffer.alloc(4);
      k.writeUInt32LE(pid);
      return k;
    };
    // The kernel keeps the first 15 bytes of a process name (bytes, not characters), then a NUL.
    const comm = (name: string): Buffer => {
      const k = Buffer.alloc(COMM_LEN);
      Buffer.from(name, 'utf8').copy(k, 0, 0, COMM_LEN - 1);
      return k;
    };
    const wanted: [string, Buffer[], number][] = [
      ['filter_ports', (opts.ports ?? []).map(u16), cap_filter.CAP_FILTER_PORT],
      ['filter_pids', (opts.pids ?? []).map(u32), cap_filter.CAP_FILTER_PID],
      ['filter_comms', (opts.comms ?? []).map(comm), cap_filter.CAP_FILTER_COMM],
    ];
    // Calls go on while this changes, so at no moment may less be traced than what the old and
    // the new settings have in common: the new keys go in first, then the settings, then the
    // keys no longer wanted (emptying a map first left every process it names untraced until
    // it was filled again, even when the config did not change it).
    let filter = 0;
    for (const [map, keys, bit] of wanted) {
      for (const k of keys) this.bpf.update(map, k, Buffer.from([1]));
      if (keys.length) filter |= bit;
    }
    this.settings = [filter, cap, opts.execEvents ? cap_config_flags.CAP_CFG_EXEC_EVENTS : 0, rate];
    this.writeSettings();
    for (const [map, keys] of wanted) {
      const keep = new Set(keys.map((k) => k.toString('hex')));
      for (const k of this.bpf.keys(map)) if (!keep.has(k.toString('hex'))) this.bpf.delete(map, k);
    }
  }

  /**
   * Load shedding at run time: `true` sheds bodies whatever the ring's fill (a reader that
   * knows it is behind, before the ring fills: commands/standalone.ts), `false` goes back to
   * shedding above the configured fill. No effect when shedding is off (shedFill 1).
   */
  shedNow(always: boolean): void {
    if (always === this.shedAlways || this.stopped) return; // (stopping: the probes are gone)
    this.shedAlways = always;
    this.writeSettings();
  }

  private writeSettings(): void {
    if (!this.settings) return;
    const [filter, cap, flags, rate] = this.settings;
    // shed_above 1: shed as soon as anything waits in the ring (the reader says it is behind).
    const above = this.shedAlways && this.shedAbove ? 1 : this.shedAbove;
    this.bpf.update('settings', Buffer.alloc(4), encodeConfig(filter, cap, flags, rate, this.shedHead, above));
  }

  /**
   * Attaches the OpenSSL probe set to one library file for all processes. Functions the file
   * does not export are reported in `failed`; it throws only if nothing could be attached.
   */
  attachOpenSsl(library: LibraryFile, mode: ProbeMode = 'auto', pid = -1): AttachResult {
    const boring = library.kind === 'boringssl';
    const plan = this.plan(library, boring ? 'exported' : mode);
    const data: DataProbe[] =
      plan.kind === 'internal'
        ? [
            { name: 'ssl_write_internal', enter: plan.writeCountArg === 5 ? 'ssl_write_internal_flags_enter' : 'ssl_write_internal_enter', exit: 'ssl_write_internal_exit', where: { offset: plan.write } },
            { name: 'ssl_read_internal', enter: 'ssl_read_internal_enter', exit: 'ssl_read_internal_exit', where: { offset: plan.read } },
          ]
        : OPENSSL_PROBES.filter((p) => !boring || plan.offsets.has(p.func)).map((p) => ({ name: p.func, enter: p.enter, exit: p.exit, where: at(plan, p.func) }));
    return this.attachSet(library, plan, data, boring ? BORINGSSL_CONN_PROBES : OPENSSL_CONN_PROBES, pid);
  }

  /** Attaches the GnuTLS probe set (gnutls_record_send/recv and the connection's life). */
  attachGnutls(library: LibraryFile, pid = -1): AttachResult {
    const k = `${library.dev}:${library.ino}:gnutls`;
    let plan = this.plans.get(k);
    if (!plan) {
      plan = { kind: 'exported', reason: 'GnuTLS', offsets: exportedOffsets(library.path, [...GNUTLS_PROBES.map((p) => p.func), ...GNUTLS_CONN_PROBES.map((p) => p.func)]) };
      this.plans.set(k, plan);
    }
    const data = GNUTLS_PROBES.map((p) => ({ name: p.func, enter: p.enter, exit: p.exit, where: at(plan!, p.func) }));
    return this.attachSet(library, plan, data, GNUTLS_CONN_PROBES, pid);
  }

  /**
   * Attaches to Go's crypto/tls in a Go executable: entry probes on (*Conn).Write and
   * (*Conn).Read and a probe on each of their RET instructions (helper/golang.ts), and the
   * handshakes' entries for role and socket. Throws if the file cannot be probed.
   */
  attachGo(library: LibraryFile, pid = -1): AttachResult {
    const plan = planGoCached(library.path);
    if (typeof plan === 'string') throw new BridgeError(`cannot probe ${library.path}: ${plan}`, 'ENOENT', 2, 'attach', library.path, '');
    const result: AttachResult = {
      library,
      plan: { kind: 'go', reason: `${plan.version}, symbols from ${plan.symbols}`, offsets: new Map() },
      attached: [],
      failed: [],
    };
    const ids: number[] = [];
    const add = (prog: UprobeProgram, offset: number): void => {
      ids.push(this.uprobe(prog, library.path, { offset, pid }));
    };
    const unpin = this.pin(library);
    try {
      for (const [fn, p, enter, ret] of [
        [GO_WRITE, plan.write, 'go_tls_write_enter', 'go_tls_write_ret'],
        [GO_READ, plan.read, 'go_tls_read_enter', 'go_tls_read_ret'],
      ] as const) {
        // Returns first: an entry without its returns would leave a stale stash.
        for (const r of p.rets) add(ret, r);
        add(enter, p.entry);
        result.attached.push(fn);
      }
      if (plan.clientHandshake !== undefined) add('go_tls_client_handshake', plan.clientHandshake);
      if (plan.serverHandshake !== undefined) add('go_tls_server_handshake', plan.serverHandshake);
    } catch (e) {
      this.bpf.detachMany(ids);
      throw e;
    } finally {
      unpin();
    }
    this.links.set(linkKey(library.path, pid), ids);
    this.kinds.set(library.path, 'go');
    return result;
  }

  /**
   * Attaches to rustls in an executable (helper/discovery/rustls.ts): CommonState's
   * send_some_plaintext (entry and return), take_received_plaintext (entry) and write_tls
   * (entry and return: the socket, the role). Throws if the file cannot be probed.
   */
  attachRustls(library: LibraryFile, pid = -1): AttachResult {
    const plan = planRustlsCached(library.path, `${library.dev}:${library.ino}:${fileVersion(library.path)}`);
    if (typeof plan === 'string') throw new BridgeError(`cannot probe ${library.path}: ${plan}`, 'ENOENT', 2, 'attach', library.path, '');
    const sites = [...plan.write, ...plan.writeTls, ...plan.received];
    const result: AttachResult = {
      library,
      plan: { kind: 'rustls', reason: `${sites.filter((s) => s.emulated).length} of ${sites.length} probe sites emulated`, offsets: new Map() },
      attached: [],
      failed: [],
    };
    const ids: number[] = [];
    const add = (prog: UprobeProgram, offset: number, retprobe = false): void => {
      ids.push(this.uprobe(prog, library.path, { offset, pid, retprobe }));
    };
    const unpin = this.pin(library);
    try {
      // Returns first: an entry without its return would leave a stale stash.
      for (const s of plan.writeTls) add('rustls_write_tls_exit', s.offset, true);
      for (const s of plan.writeTls) add('rustls_write_tls_enter', s.offset);
      for (const s of plan.received) add('rustls_received', s.offset);
      for (const s of plan.write) add('rustls_write_exit', s.offset, true);
      for (const s of plan.write) add('rustls_write_enter', s.offset);
      result.attached.push('rustls::conn::CommonState::write_tls', 'rustls::conn::CommonState::take_received_plaintext', 'rustls::conn::CommonState::send_some_plaintext');
    } catch (e) {
      this.bpf.detachMany(ids);
      throw e;
    } finally {
      unpin();
    }
    this.links.set(linkKey(library.path, pid), ids);
    this.kinds.set(library.path, 'rustls');
    return result;
  }

  /**
   * Attaches NSS's probes to one of its two files: NSPR's data functions (libnspr4.so), or the
   * SSL layer's descriptor, role and handshake functions (libssl3.so). Either is of use only
   * with the other; each is found and attached as any library file.
   */
  attachNss(library: LibraryFile, pid = -1): AttachResult {
    const nspr = /(^|\/)libnspr4\.so[^/]*$/.test(library.path.replace(/ \(replaced [0-9:]+\)$/, ''));
    const k = `${library.dev}:${library.ino}:${fileVersion(library.path)}:nss`;
    let plan = this.plans.get(k);
    const names = nspr ? [...NSPR_PROBES.map((p) => p.func), ...NSPR_CONN_PROBES.map((p) => p.func)] : NSS_SSL_PROBES.map((p) => p.func);
    if (!plan) {
      plan = { kind: 'exported', reason: nspr ? 'NSS: NSPR on SSL descriptors' : 'NSS: SSL layer', offsets: exportedOffsets(library.path, names) };
      this.plans.set(k, plan);
    }
    if (nspr) return this.attachSet(library, plan, NSPR_PROBES.map((p) => ({ name: p.func, enter: p.enter, exit: p.exit, where: at(plan!, p.func) })), NSPR_CONN_PROBES, pid);
    return this.attachSet(library, plan, [], NSS_SSL_PROBES, pid);
  }

  /** The probe set that fits the file: OpenSSL, BoringSSL, GnuTLS, NSS or Go. */
  attachLibrary(library: LibraryFile, mode: ProbeMode = 'auto', pid = -1): AttachResult {
    if (library.kind === 'go') return this.attachGo(library, pid);
    if (library.kind === 'rustls') return this.attachRustls(library, pid);
    if (library.kind === 'nss') return this.attachNss(library, pid);
    return library.kind === 'gnutls' ? this.attachGnutls(library, pid) : this.attachOpenSsl(library, mode, pid);
  }

  private attachSet(library: LibraryFile, plan: ProbePlan, probes: DataProbe[], conn: typeof OPENSSL_CONN_PROBES, pid: number): AttachResult {
    const unpin = this.pin(library);
    try {
      return this.attachSetPinned(library, plan, probes, conn, pid);
    } finally {
      unpin();
    }
  }

  private attachSetPinned(library: LibraryFile, plan: ProbePlan, probes: DataProbe[], conn: typeof OPENSSL_CONN_PROBES, pid: number): AttachResult {
    const result: AttachResult = { library, plan, attached: [], failed: [] };
    const ids: number[] = [];
    for (const p of probes) {
      let exitId: number | undefined;
      try {
        // Return probe first: an entry without its return would leave a stale argument stash.
        exitId = this.uprobe(p.exit, library.path, { ...p.where, pid, retprobe: true });
        ids.push(this.uprobe(p.enter, library.path, { ...p.where, pid }), exitId);
        result.attached.push(p.name);
      } catch (e) {
        if (exitId !== undefined) this.bpf.detach(exitId);
        result.failed.push({ func: p.name, reason: e instanceof BridgeError ? `${e.code}: ${e.message}` : String(e) });
      }
    }
    // A set with no data probes (NSS's libssl3.so) attaches its other probes all the same.
    if (ids.length > 0 || probes.length === 0) {
      for (const p of conn) {
        try {
          ids.push(this.uprobe(p.prog, library.path, { ...at(plan, p.func), pid, retprobe: p.retprobe === true }));
          if (probes.length === 0 && !result.attached.includes(p.func)) result.attached.push(p.func);
        } catch (e) {
          result.failed.push({ func: p.func, reason: e instanceof BridgeError ? `${e.code}: ${e.message}` : String(e) });
        }
      }
    }
    if (ids.length === 0) {
      const why = result.failed.map((f) => `${f.func}: ${f.reason}`).join('; ');
      throw new BridgeError(`no TLS function of ${library.path} could be probed (${why})`, 'ENOENT', 2, 'attach', library.path, '');
    }
    this.links.set(linkKey(library.path, pid), ids);
    this.kinds.set(library.path, library.kind);
    return result;
  }

  /** One uprobe of `prog`, or of the do-nothing program at the same place (the floor). */
  private uprobe(prog: UprobeProgram, file: string, opts: UprobeOptions): number {
    const fdPath = this.pinned.get(file);
    try {
      return this.bpf.attachUprobe(this.floor ? 'floor_uprobe' : prog, fdPath ?? file, opts);
    } catch (e) {
      if (fdPath && e instanceof Error) e.message = e.message.split(fdPath).join(file);
      throw e;
    }
  }

  /**
   * Holds the file open while its probes are attached, and has them attached through
   * /proc/self/fd/N. A file found through /proc/<pid>/root of a short-lived process (curl in a
   * container) is otherwise gone from that path between one probe and the next (ENOENT), when
   * the process exits; the kernel keeps the inode of each probe, so the fd is closed after.
   * Not pinned when the path now opens another file than the one planned (replaced).
   */
  private pin(library: LibraryFile): () => void {
    let fd: number;
    try {
      fd = fs.openSync(library.path, 'r');
    } catch {
      return () => {}; // gone already: the attach names the error
    }
    const st = fs.fstatSync(fd);
    if (st.dev !== library.dev || st.ino !== library.ino || this.pinned.has(library.path)) {
      fs.closeSync(fd);
      return () => {};
    }
    this.pinned.set(library.path, `/proc/self/fd/${fd}`);
    return () => {
      this.pinned.delete(library.path);
      fs.closeSync(fd);
    };
  }

  /** Works out a file's probe plan ahead of time, so that attaching later is quick. */
  prepare(library: LibraryFile, mode: ProbeMode = 'auto'): void {
    if (library.kind === 'openssl') this.plan(library, mode);
    if (library.kind === 'boringssl') this.plan(library, 'exported');
    if (library.kind === 'go') planGoCached(library.path);
    if (library.kind === 'rustls') planRustlsCached(library.path, `${library.dev}:${library.ino}:${fileVersion(library.path)}`);
  }

  /** The probe plan of a file, worked out once per version of it (device, inode, size, mtime) and mode. */
  private plan(library: LibraryFile, mode: ProbeMode): ProbePlan {
    // Size and mtime too: a plan of a file read while being written must not outlive it.
    const k = `${library.dev}:${library.ino}:${fileVersion(library.path)}:${mode}:${library.kind}`;
    let plan = this.plans.get(k);
    if (!plan) {
      // A copy of a build already planned (a private libssl, a container's layer: another
      // inode, the same build id and size) reuses that plan: every offset in it is a file offset.
      const build = buildKey(library.path);
      const b = build && `${build}:${mode}`;
      plan = b ? this.plansByBuild.get(b) : undefined;
      if (!plan) {
        const names = [...OPENSSL_PROBES.map((p) => p.func), ...BORINGSSL_CONN_PROBES.map((p) => p.func)];
        plan = planOpenSsl(library.path, names);
        if (library.kind === 'boringssl') plan = { kind: 'exported', reason: 'BoringSSL', offsets: plan.offsets };
        else if (mode === 'exported') plan = { kind: 'exported', reason: 'asked for', offsets: plan.offsets };
        // (A reason that names this file's path is this file's alone.)
        if (b && !('reason' in plan && plan.reason.includes(library.path))) this.plansByBuild.set(b, plan);
      }
      this.plans.set(k, plan);
    }
    return plan;
  }

  /** Detaches the probes of one library (all processes, or only those planted for `pid`). */
  detachLibrary(path: string, pid?: number): void {
    for (const key of [...this.links.keys()]) {
      const [p, forPid] = splitKey(key);
      if (p !== path || (pid !== undefined && forPid !== pid)) continue;
      this.bpf.detachMany(this.links.get(key)!);
      this.links.delete(key);
    }
  }

  /** Detaches every probe planted for one process (targeted mode). */
  detachPid(pid: number): string[] {
    const paths: string[] = [];
    for (const key of [...this.links.keys()]) {
      const [p, forPid] = splitKey(key);
      if (forPid !== pid) continue;
      this.bpf.detachMany(this.links.get(key)!);
      this.links.delete(key);
      paths.push(p);
    }
    return paths;
  }

  /** Files its probes (for all processes) under another name: see Discovery's upgrades. */
  renameLibrary(from: string, to: string): void {
    const ids = this.links.get(from);
    if (!ids) return;
    this.links.delete(from);
    this.links.set(to, ids);
    const kind = this.kinds.get(from);
    if (kind) this.kinds.set(to, kind);
  }

  /** The kind of TLS code probed in a file with probes, by its path. */
  kindOf(path: string): LibraryFile['kind'] | undefined {
    return this.kinds.get(path);
  }

  isAttached(path: string, pid = -1): boolean {
    return this.links.has(linkKey(path, pid));
  }

  /** Library files with probes, each once. */
  get attachedLibraries(): string[] {
    return [...new Set([...this.links.keys()].map((k) => splitKey(k)[0]))];
  }

  /**
   * Starts delivering records; `onRecords` runs on the event loop, once per batch. Each data
   * record's bytes are its own (a copy), so records may outlive the call.
   */
  start(onRecords: (records: CaptureRecord[]) => void, opts: StartOptions = {}): void {
    // The batches are the bridge's few reused slots, and each record's bytes are copied out of
    // them. A buffer per batch instead (the bridge's other mode), which the records' views
    // keep alive until V8 collects it, held 150 MiB of batches at the peak of a text capture
    // of 256 KiB responses (heaptrack): memory then followed the GC, not the load.
    this.bpf.startRing(
      'events',
      (batch) => {
        const records = joinShedRecords(decodeBatch(batch));
        for (const r of records) if (r.kind === 'data' && r.data.length) r.data = Buffer.from(r.data);
        onRecords(records);
      },
      { reuse: 4, drainMs: DRAIN_MS, ...opts },
    );
    this.running = true;
  }

  /**
   * Starts delivering batches of records undecoded (bpf/capture.h layout, back to back), each
   * in one of a few buffers the bridge fills again once `onBatch` returns: copy what must
   * outlive the call.
   */
  startRaw(onBatch: (batch: Buffer) => void, opts: StartOptions = {}): void {
    this.bpf.startRing('events', onBatch, { reuse: 4, drainMs: DRAIN_MS, ...opts });
    this.running = true;
  }

  /**
   * Detaches every probe, delivers what is left in the ring buffer, frees everything, and
   * returns the final counters.
   */
  stop(): Promise<KernelCounters> {
    this.stopped ??= (async () => {
      this.bpf.detachMany([...this.links.values()].flat());
      this.links.clear();
      if (this.running) await this.bpf.stopRing();
      this.running = false;
      const final = this.counters();
      this.bpf.close();
      return final;
    })();
    return this.stopped;
  }

  counters(): KernelCounters {
    const out = {} as KernelCounters;
    for (const [name, slot] of Object.entries(COUNTER_SLOTS) as [keyof KernelCounters, cap_counter][]) {
      const key = Buffer.alloc(4);
      key.writeUInt32LE(slot);
      const v = this.bpf.lookup('counters', key);
      let sum = 0n;
      for (let at = 0; v && at < v.length; at += 8) sum += v.readBigUInt64LE(at);
      out[name] = Number(sum);
    }
    return out;
  }

  ringStats(): RingStats {
    return this.bpf.ringStats();
  }

  /** Bytes waiting in the ring buffer now. */
  ringPending(): number {
    return this.running ? this.bpf.ringPending() : 0;
  }
}
