// errors.ts: what a user sees when something is wrong: one line naming the cause and one
// naming the fix. Checks what can be checked before touching the kernel (privileges, BTF,
// built artifacts) and translates BridgeError codes into the same form. Loads no kernel code:
// kernel/bridge.ts throws BridgeError, defined here so that explain() needs no addon.
import * as fs from 'fs';
import * as os from 'os';
import { btfNames, missingKernelFeatures, versionAbove } from './btf';
import { ADDON_PATH, BPF_OBJECT_PATH } from './package';

export class UserError extends Error {
  override name = 'UserError';
  constructor(
    override readonly cause: string,
    readonly fix: string,
    readonly exitCode = 1,
  ) {
    super(cause);
  }
}

/** A failed libbpf/kernel operation: `code` is the errno name (EPERM, ENOENT, …). */
export class BridgeError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly errno: number,
    readonly op: string,
    readonly target: string,
    /** What libbpf printed while it failed (verifier log, ELF errors). */
    readonly log: string,
  ) {
    super(message);
    this.name = 'BridgeError';
  }
}

const CAP_SYS_PTRACE = 19;
const CAP_SYS_ADMIN = 21;
const CAP_PERFMON = 38;
const CAP_BPF = 39;
/** The capabilities the helper uses (docs/security.md says what each one is for). */
export const CAPABILITIES = { CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF } as const;
/** How to run with exactly those (as a user other than root, the file owner needs them too). */
const GRANT = 'setpriv --inh-caps=-all,+sys_admin,+sys_ptrace --ambient-caps=-all,+sys_admin,+sys_ptrace --bounding-set=-all,+sys_admin,+sys_ptrace https-capture …';

/** Effective capabilities of this process, from /proc/self/status. */
export function effectiveCaps(): bigint {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return m ? BigInt(`0x${m[1]}`) : 0n;
  } catch {
    return 0n;
  }
}

const has = (caps: bigint, bit: number): boolean => ((caps >> BigInt(bit)) & 1n) === 1n;

/** Checks that need no kernel call; throws UserError naming what is missing. */
export function preflight(): void {
  if (!fs.existsSync(BPF_OBJECT_PATH) || !fs.existsSync(ADDON_PATH)) {
    const what = !fs.existsSync(BPF_OBJECT_PATH) ? BPF_OBJECT_PATH : ADDON_PATH;
    throw new UserError(`https-capture is not built (${what} is missing)`, 'run `npm run build` (or `npm start`, which builds first)');
  }
  const caps = effectiveCaps();
  const bpfOk = has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON));
  if (!bpfOk) {
    const missing = [!has(caps, CAP_BPF) && 'CAP_BPF', !has(caps, CAP_PERFMON) && 'CAP_PERFMON'].filter(Boolean).join(' and ');
    throw new UserError(
      `eBPF uprobes need CAP_SYS_ADMIN (or, on kernels without the CVE-2025-38466 fix, CAP_BPF and CAP_PERFMON); this process lacks CAP_SYS_ADMIN and ${missing}`,
      `run it as root, or with exactly the capabilities of docs/security.md: ${GRANT}`,
    );
  }
  if (!fs.existsSync('/sys/kernel/btf/vmlinux')) {
    throw new UserError(
      'this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing), which CO-RE eBPF needs',
      'use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian, Ubuntu, Fedora and RHEL kernels since 2021 have it)',
    );
  }
  const problem = kernelFeatureProblem(fs.readFileSync('/sys/kernel/btf/vmlinux'), os.release());
  if (problem) throw problem;
}

/**
 * The UserError for a kernel whose BTF lacks a BPF feature the program uses (btf.ts), or
 * undefined when it has them all or its BTF cannot be read (then loading says what is wrong).
 */
export function kernelFeatureProblem(vmlinux: Buffer, release: string): UserError | undefined {
  let names;
  try {
    names = btfNames(vmlinux);
  } catch {
    return undefined;
  }
  const lacking = missingKernelFeatures(names);
  if (lacking.length === 0) return undefined;
  const newest = lacking.map((l) => l.feature.since).reduce((a, b) => (versionAbove(b, a) ? b : a));
  return new UserError(
    `this kernel (${release}) lacks ${lacking.map((l) => `${l.feature.what} (Linux ${l.feature.since}; no ${l.missing} in its BTF)`).join(', ')}, which the helper's eBPF program needs`,
    `run it on Linux ${newest} or later (Debian 12's 6.1 works); docs/kernels.md lists what each kernel feature is for`,
  );
}

/**
 * What the helper cannot do with the capabilities it has, though it runs: one line each,
 * naming the capability. Empty as root.
 */
export function privilegeWarnings(caps = effectiveCaps()): string[] {
  const out: string[] = [];
  if (!has(caps, CAP_SYS_PTRACE)) {
    out.push(
      "no CAP_SYS_PTRACE: other users' processes are looked into only through /proc/<pid>/maps, not /proc/<pid>/{exe,root,cwd}: executables with OpenSSL inside (node), libraries in other mount namespaces and libraries opened by relative path are missed for them, and --pid probes in them may come late",
    );
  }
  return out;
}

/**
 * Why no library could be probed, if it was the kernel refusing (EACCES/EPERM): names the
 * capability that is missing. `reasons` are the attach failures as reported.
 */
export function attachRefused(reasons: string[], targeted: boolean, caps = effectiveCaps()): UserError | undefined {
  if (!reasons.some((r) => /\b(EACCES|EPERM)\b/.test(r))) return undefined;
  if (!has(caps, CAP_SYS_ADMIN)) {
    return new UserError(
      'the kernel refused to create uprobes (EACCES): this process lacks CAP_SYS_ADMIN, which uprobes through perf_event_open need since the CVE-2025-38466 fix (Linux 6.16, and stable kernels since July 2025); CAP_PERFMON is not enough there',
      `grant CAP_SYS_ADMIN, or run as root: ${GRANT}`,
    );
  }
  if (targeted && !has(caps, CAP_SYS_PTRACE)) {
    return new UserError('the kernel refused to plant uprobes in the chosen processes (EACCES): this process lacks CAP_SYS_PTRACE, needed for processes of other users', `grant CAP_SYS_PTRACE, or run as root: ${GRANT}`);
  }
  return new UserError(`the kernel refused the probes: ${reasons.find((r) => /\b(EACCES|EPERM)\b/.test(r))}`, 'check lockdown mode (/sys/kernel/security/lockdown), seccomp and LSM policies; or run as root');
}

/** Turns an error from the bridge into the user's terms. */
export function explain(e: unknown): UserError {
  if (e instanceof UserError) return e;
  if (e instanceof BridgeError) {
    const detail = e.log.trim().split('\n').filter(Boolean).slice(-3).join(' | ');
    const said = detail ? ` (libbpf: ${detail})` : '';
    if (e.op === 'load' && (e.code === 'EPERM' || e.code === 'EACCES')) {
      return new UserError(
        `the kernel refused to load the eBPF program: ${e.message}${said}`,
        'run as root on the host (not in an unprivileged container); check kernel.unprivileged_bpf_disabled, lockdown mode and seccomp',
      );
    }
    if (e.op === 'load' && e.code === 'EAGAIN') {
      return new UserError(
        'the kernel gave up verifying the eBPF program (EAGAIN: interrupted, or out of memory for the verifier)',
        'run it again; if it keeps happening, report it with the kernel version (uname -r)',
      );
    }
    if (e.op === 'load') {
      return new UserError(`the kernel rejected the eBPF program: ${e.message}${said}`, 'report this with the kernel version (uname -r); set HTTPS_CAPTURE_LIBBPF_DEBUG=1 for the full verifier log');
    }
    if (e.op.startsWith('attach') && (e.code === 'EPERM' || e.code === 'EACCES')) {
      return attachRefused([`${e.code}: ${e.message}`], false) ?? new UserError(`the kernel refused a probe: ${e.message}`, 'run as root');
    }
    if (e.op === 'open' || e.op === 'load addon') {
      return new UserError(`${e.message}`, 'run `npm run build` to build bpf/ and bridge/');
    }
    return new UserError(`${e.message}${said}`, 'set HTTPS_CAPTURE_LIBBPF_DEBUG=1 to see what libbpf says, and report it');
  }
  if (e instanceof RangeError) return new UserError(e.message, 'change the option to a value in range', 2);
  const msg = e instanceof Error ? e.message : String(e);
  return new UserError(`unexpected failure: ${msg}`, 'report this as a bug, with the command line you ran');
}
