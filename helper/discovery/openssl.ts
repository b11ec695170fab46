// openssl.ts: decides where to probe an OpenSSL build, by reading its code.
//
// SSL_write and SSL_write_ex are thin wrappers around one internal function,
// ssl_write_internal(SSL *, const void *buf, size_t num, size_t *written), and SSL_read and
// SSL_read_ex around ssl_read_internal. The SSL BIO (BIO_f_ssl, used by `openssl s_server`
// and others) calls the internal functions directly, so probes on the exported functions
// never see its traffic. Probing the internal functions sees every caller once, and their
// first instruction (`push`) is one the kernel emulates: about 0.6 µs a hit here, against
// about 19 µs for the single-stepped `sub` that starts SSL_write (docs/design.md).
//
// The internal functions are not exported, so they are found as the common target of the
// first direct call in both wrappers. When that shape is not there (another architecture,
// another library version), the exported functions are probed instead. arm64 code is read
// with capstone (arm64.ts): there the probe goes on the internal function's first instruction
// the kernel simulates (Debian 12: the `adrp` after `sub sp`), arm64.ts says why that is safe.
//
// Shapes measured (README, "OpenSSL versions"): 1.1.1 and 3.0 as above. From 3.3 (3.5 in
// Debian 13) ssl_write_internal takes a flags argument before the count pointer
// (s, buf, num, flags, written), SSL_write_ex only jumps to the new SSL_write_ex2 through the
// PLT, and SSL_write_ex2 holds the call: so the write pair is SSL_write/SSL_write_ex2 there, and
// which argument carries the count pointer is read from SSL_write itself (the register it
// loads with the address of its local before the call). Debian 13's build also starts the
// internal functions with `endbr64`, which the kernel single-steps; the probe goes on the
// instruction after it, which every call still passes with the return address on top of the
// stack, so the return probe works the same.
import { Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register } from 'iced-x86';
import { Arm64Decoder, Arm64DecoderError, Arm64Site, firstCallArm64, probeSiteArm64 } from './arm64';
import { ElfError, ElfFile, EM_AARCH64, EM_X86_64 } from './elf';

export type ProbePlan = (
  | {
      kind: 'internal';
      /** File offsets of ssl_write_internal and ssl_read_internal (past a leading endbr64). */
      write: number;
      read: number;
      /**
       * Which argument of ssl_write_internal is the count pointer: 4 (1.1.1 to 3.2) or 5
       * (3.3 and later, after the flags).
       */
      writeCountArg: 4 | 5;
      /** arm64: where in each internal function the probes sit and whether the kernel simulates that instruction (arm64.ts). */
      placement?: string;
    }
  | { kind: 'exported'; reason: string }
  | { kind: 'go'; reason: string }
  | { kind: 'rustls'; reason: string }
) & {
  /**
   * File offsets of the exported functions asked for that the file has, so that attaching
   * (once per process in targeted mode) needs no further symbol lookup.
   */
  offsets: Map<string, number>;
};

/** The first direct call in a function's body, and the argument carrying a pointer to the stack then. */
function firstCall(elf: ElfFile, addr: number, size: number): { target: number; stackArg?: 4 | 5 } | undefined {
  const code = elf.code(addr, Math.min(size || 128, 256));
  const decoder = new Decoder(64, code, DecoderOptions.None);
  const instr = new Instruction();
  // The last value loaded into rcx (4th argument) and r8 (5th): whether it is an address in
  // the caller's frame (`mov reg, rsp` or `lea reg, [rsp+d]`), the count the wrapper returns.
  const toStack = new Map<Register, boolean>();
  try {
    decoder.ip = BigInt(addr);
    while (decoder.canDecode) {
      decoder.decodeOut(instr);
      const flow = instr.flowControl;
      if (flow === FlowControl.Call) {
        const stackArg = toStack.get(Register.R8) ? 5 : toStack.get(Register.RCX) ? 4 : undefined;
        return { target: Number(instr.nearBranch64), stackArg };
      }
      if (flow === FlowControl.Return || flow === FlowControl.Interrupt || flow === FlowControl.Exception) return undefined;
      if (instr.opCount > 0 && instr.op0Kind === OpKind.Register) {
        const full = fullRegister(instr.op0Register);
        if (full === Register.RCX || full === Register.R8) {
          const fromRsp =
            (instr.mnemonic === Mnemonic.Mov && instr.op1Kind === OpKind.Register && instr.op1Register === Register.RSP) ||
            (instr.mnemonic === Mnemonic.Lea && instr.memoryBase === Register.RSP);
          toStack.set(full, fromRsp);
        }
      }
    }
    return undefined;
  } finally {
    instr.free();
    decoder.free();
  }
}

/** rcx for ecx/cx/cl, r8 for r8d/r8w/r8b; others as they are (only these two matter here). */
function fullRegister(r: Register): Register {
  if (r === Register.ECX || r === Register.CX || r === Register.CL) return Register.RCX;
  if (r === Register.R8D || r === Register.R8W || r === Register.R8L) return Register.R8;
  return r;
}

/** Where to probe a function: past a leading endbr64, which the kernel would single-step. */
function probeAddress(elf: ElfFile, addr: number): number {
  const decoder = new Decoder(64, elf.code(addr, 16), DecoderOptions.None);
  const instr = new Instruction();
  try {
    decoder.ip = BigInt(addr);
    decoder.decodeOut(instr);
    return instr.code === Code.Endbr64 ? addr + instr.length : addr;
  } finally {
    instr.free();
    decoder.free();
  }
}

/**
 * Where to probe the OpenSSL in `path` (a libssl or an executable with OpenSSL inside), and
 * the file offsets of the exported functions named in `exported`.
 */
export function planOpenSsl(path: string, exported: string[] = []): ProbePlan {
  let elf: ElfFile;
  let arm64: { decoder: Arm64Decoder; done: () => void } | undefined;
  let decoder: Arm64Decoder | undefined;
  const offsets = new Map<string, number>();
  try {
    elf = ElfFile.open(path);
  } catch (e) {
    return { kind: 'exported', reason: e instanceof Error ? e.message : String(e), offsets };
  }
  try {
    const syms = elf.functions([...new Set(['SSL_write', 'SSL_write_ex', 'SSL_write_ex2', 'SSL_read', 'SSL_read_ex', ...exported])]);
    for (const name of exported) {
      const s = syms.get(name);
      const off = s && elf.execOffset(s.addr);
      if (off !== undefined) offsets.set(name, off);
    }
    if (elf.machine !== EM_X86_64 && elf.machine !== EM_AARCH64) return { kind: 'exported', reason: `machine ${elf.machine} is neither x86-64 nor arm64`, offsets };
    // x86-64 code is decoded with iced-x86, arm64 code with capstone (arm64.ts).
    if (elf.machine === EM_AARCH64) {
      arm64 = Arm64Decoder.acquire();
      decoder = arm64.decoder;
    }
    const sites = new Map<number, Arm64Site>();
    const call = (addr: number, size: number) => (decoder ? firstCallArm64(decoder, elf.code(addr, Math.min(size || 128, 256)), addr) : firstCall(elf, addr, size));
    const site = (addr: number): number => {
      if (!decoder) return probeAddress(elf, addr);
      const s = probeSiteArm64(decoder, elf.code(addr, 64), addr);
      sites.set(s.addr, s);
      return s.addr;
    };
    // The internal function both wrappers call first, and which of its arguments the int
    // wrapper (`a`) points at its local count.
    const target = (a: string, b: string): { off: number; at: number; countArg?: 4 | 5 } | string => {
      const sa = syms.get(a);
      const sb = syms.get(b);
      if (!sa || !sb) return `${!sa ? a : b} is not in the symbol table`;
      const ca = call(sa.addr, sa.size);
      const cb = call(sb.addr, sb.size);
      if (!ca || !cb || ca.target !== cb.target) return `${a} and ${b} do not call one common function`;
      if (elf.inPlt(ca.target)) return `${a} calls a PLT stub first`;
      const at = site(ca.target);
      const off = elf.execOffset(at);
      return off === undefined ? `the target of ${a} is outside executable code` : { off, at, countArg: ca.stackArg };
    };
    // From 3.3, SSL_write_ex is a jump to SSL_write_ex2, which holds the call.
    let write = target('SSL_write', 'SSL_write_ex');
    if (typeof write === 'string' && syms.has('SSL_write_ex2')) {
      const viaEx2 = target('SSL_write', 'SSL_write_ex2');
      write = typeof viaEx2 === 'string' ? `${write}, nor SSL_write_ex2 (${viaEx2})` : viaEx2;
    }
    const read = target('SSL_read', 'SSL_read_ex');
    if (typeof write === 'string') return { kind: 'exported', reason: write, offsets };
    if (typeof read === 'string') return { kind: 'exported', reason: read, offsets };
    if (write.off === read.off) return { kind: 'exported', reason: 'the internal functions are inlined in this build (SSL_write and SSL_read first call one shared helper)', offsets };
    if (write.countArg === undefined) return { kind: 'exported', reason: 'SSL_write passes its count pointer to the internal function in no argument known here', offsets };
    if (read.countArg !== 4) return { kind: 'exported', reason: `SSL_read passes its count pointer in argument ${read.countArg ?? 'unknown'}, not the 4th`, offsets };
    const placed = (name: string, at: number): string => {
      const s = sites.get(at)!;
      return `${name}+${s.delta} ${s.insn} (${s.simulated ? `simulated ${s.simulated}` : 'stepped'})`;
    };
    const placement = decoder ? { placement: `${placed('ssl_write_internal', write.at)}, ${placed('ssl_read_internal', read.at)}` } : {};
    return { kind: 'internal', write: write.off, read: read.off, writeCountArg: write.countArg, ...placement, offsets };
  } catch (e) {
    if (e instanceof Arm64DecoderError) Arm64Decoder.discard();
    if (e instanceof ElfError || e instanceof Arm64DecoderError) return { kind: 'exported', reason: e.message, offsets };
    throw e;
  } finally {
    arm64?.done();
    elf.close();
  }
}

/** File offsets of the named functions a file has (an empty map if it cannot be read). */
export function exportedOffsets(path: string, names: string[]): Map<string, number> {
  const offsets = new Map<string, number>();
  let elf: ElfFile | undefined;
  try {
    elf = ElfFile.open(path);
    for (const [name, s] of elf.functions(names)) {
      const off = elf.execOffset(s.addr);
      if (off !== undefined) offsets.set(name, off);
    }
  } catch {
    // libbpf then looks the names up itself
  } finally {
    elf?.close();
  }
  return offsets;
}
