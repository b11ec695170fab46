// errors.ts: what a user sees when something is wrong: one line naming the cause and one
// naming the fix. Checks what can be checked before touching the kernel (privileges, BTF,
// built artifacts) and translates BridgeError codes into the same form.
import * as fs from 'fs';
import { ADDON_PATH, BPF_OBJECT_PATH, BridgeError } from './bridge';

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

const CAP_SYS_ADMIN = 21;
const CAP_PERFMON = 38;
const CAP_BPF = 39;

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
      `loading eBPF uprobes needs root or ${missing} (this process has neither)`,
      'run it as root (sudo), or grant the capabilities: sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search+ep "$(command -v node)"',
    );
  }
  if (!fs.existsSync('/sys/kernel/btf/vmlinux')) {
    throw new UserError(
      'this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing), which CO-RE eBPF needs',
      'use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian, Ubuntu, Fedora and RHEL kernels since 2021 have it)',
    );
  }
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
    if (e.op === 'load') {
      return new UserError(`the kernel rejected the eBPF program: ${e.message}${said}`, 'report this with the kernel version (uname -r); set HTTPS_CAPTURE_LIBBPF_DEBUG=1 for the full verifier log');
    }
    if (e.op.startsWith('attach') && (e.code === 'EPERM' || e.code === 'EACCES')) {
      return new UserError(`the kernel refused a probe: ${e.message}`, 'run as root, or grant CAP_PERFMON and CAP_BPF');
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
