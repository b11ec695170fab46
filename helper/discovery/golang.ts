// golang.ts: decides where to probe Go's crypto/tls in a Go executable, by reading its code.
//
// Go programs never call a TLS library: crypto/tls is compiled into each binary. The
// plaintext passes through (*tls.Conn).Write(b) and (*tls.Conn).Read(b). Under Go's register
// ABI (Go >= 1.17 on amd64) the receiver is in rax, b's pointer and length in rbx and rcx,
// and n comes back in rax. Probes:
// - at entry: on the conditional jump of the stack-bound check that starts almost every Go
//   function (`cmp rsp|r12, [r14+0x10]; jbe morestack`): the kernel emulates a jump (no
//   single step, ≈0.6 µs a hit here) and no argument register has been touched yet; the
//   function's first instruction when that shape is not there;
// - at every RET instruction of the function, never a uretprobe: Go grows goroutine stacks by
//   copying them, which would carry the trampoline address a uretprobe plants into the new
//   stack and crash the program.
// Functions are found in the ELF symbol table, or, in a stripped binary, in the Go runtime's
// own function table (.gopclntab), which stripping keeps.
// Hand-written because no npm package reads Go's pclntab or build info; the formats are those
// of Go's debug/gosym and debug/buildinfo packages (Go 1.16 and later).
import * as fs from 'fs';
import { Decoder, DecoderOptions, FlowControl, Instruction, Register } from 'iced-x86';
import { buildKey, ElfError, ElfFile, EM_AARCH64, EM_X86_64 } from './elf';

export const GO_WRITE = 'crypto/tls.(*Conn).Write';
export const GO_READ = 'crypto/tls.(*Conn).Read';
export const GO_CLIENT_HANDSHAKE = 'crypto/tls.(*Conn).clientHandshake';
export const GO_SERVER_HANDSHAKE = 'crypto/tls.(*Conn).serverHandshake';
const WANTED = [GO_WRITE, GO_READ, GO_CLIENT_HANDSHAKE, GO_SERVER_HANDSHAKE];

/** Probe sites of one function, as file offsets. */
export interface GoFunctionPlan {
  /** Where the entry probe goes. */
  entry: number;
  /** True if `entry` is past the stack check (an emulated jump), false if it is the first instruction. */
  emulated: boolean;
  /** Every RET instruction. */
  rets: number[];
}

export interface GoPlan {
  /** The Go version that built the file, e.g. go1.19.8. */
  version: string;
  /** Where the symbols came from. */
  symbols: 'symtab' | 'pclntab';
  write: GoFunctionPlan;
  read: GoFunctionPlan;
  /** Entry probes of the handshakes (role and socket); absent if the file lacks one. */
  clientHandshake?: number;
  serverHandshake?: number;
}

export class GoPlanError extends Error {
  override name = 'GoPlanError';
}

/** The Go version in the file's build info, or undefined if it is not a Go executable. */
export function goVersion(elf: ElfFile): string | undefined {
  const sec = elf.section('.go.buildinfo');
  if (!sec || sec.size < 32) return undefined;
  const head = elf.read(sec.offset, Math.min(sec.size, 64 + 32));
  if (head.toString('latin1', 0, 14) !== '\xff Go buildinf:') return undefined;
  const ptrSize = head[14]!;
  const inline = (head[15]! & 2) !== 0;
  if (inline) {
    // Go 1.18+: the version string follows the header, length-prefixed (uvarint).
    const [len, at] = uvarint(head, 32);
    const s = elf.read(sec.offset + at, Math.min(len, 128));
    return s.toString('utf8');
  }
  if (ptrSize !== 8) return undefined;
  // Up to Go 1.17: a pointer to a Go string header {data, len}.
  const strAddr = Number(head.readBigUInt64LE(16));
  const hdr = elf.atAddress(strAddr, 16);
  const data = Number(hdr.readBigUInt64LE(0));
  const len = Number(hdr.readBigUInt64LE(8));
  return elf.atAddress(data, Math.min(len, 128)).toString('utf8');
}

function uvarint(b: Buffer, at: number): [number, number] {
  let v = 0;
  for (let shift = 0; at < b.length && shift < 35; shift += 7) {
    const byte = b[at++]!;
    v += (byte & 0x7f) * 2 ** shift;
    if (byte < 0x80) return [v, at];
  }
  throw new ElfError('bad build info: unterminated length');
}

/** Whether a Go version has the register ABI: amd64 from go1.17, arm64 from go1.18 (devel builds too). */
export function hasRegisterAbi(version: string, machine: number = EM_X86_64): boolean {
  const m = /^go1\.(\d+)/.exec(version);
  return m ? Number(m[1]) >= (machine === EM_AARCH64 ? 18 : 17) : version.startsWith('devel');
}

/** Address and size of the named functions from the Go runtime's function table. */
export function pclntabFunctions(elf: ElfFile, names: string[]): Map<string, { addr: number; size: number }> {
  const sec = elf.section('.gopclntab');
  if (!sec) throw new ElfError(`${elf.path} has no symbol table and no .gopclntab`);
  const tab = elf.read(sec.offset, sec.size);
  const magic = tab.readUInt32LE(0);
  const ptr = tab[7]!;
  if (ptr !== 8) throw new ElfError(`${elf.path}: .gopclntab pointer size ${ptr}`);
  const word = (at: number): number => Number(tab.readBigUInt64LE(at));
  let nfunc: number, textStart: number, funcnames: number, pcln: number, modern: boolean;
  if (magic === 0xfffffff1 || magic === 0xfffffff0) {
    // Go 1.18+ (and 1.20's variant): entries are 32-bit offsets from textStart.
    modern = true;
    nfunc = word(8);
    textStart = word(8 + 2 * 8) || (elf.section('.text')?.addr ?? 0);
    funcnames = word(8 + 3 * 8);
    pcln = word(8 + 7 * 8);
  } else if (magic === 0xfffffffa) {
    // Go 1.16-1.17: entries are full addresses.
    modern = false;
    nfunc = word(8);
    textStart = 0;
    funcnames = word(8 + 2 * 8);
    pcln = word(8 + 6 * 8);
  } else {
    throw new ElfError(`${elf.path}: .gopclntab of an unknown Go version (magic 0x${magic.toString(16)})`);
  }
  const want = new Set(names);
  const found = new Map<string, { addr: number; size: number }>();
  const entrySize = modern ? 8 : 16;
  if (pcln + (nfunc + 1) * entrySize > tab.length) throw new ElfError(`${elf.path}: .gopclntab is truncated`);
  const entry = (i: number): number => (modern ? textStart + tab.readUInt32LE(pcln + i * 8) : word(pcln + i * 16));
  const funcOff = (i: number): number => (modern ? tab.readUInt32LE(pcln + i * 8 + 4) : word(pcln + i * 16 + 8));
  for (let i = 0; i < nfunc && found.size < want.size; i++) {
    const f = pcln + funcOff(i);
    if (f + entrySize > tab.length) continue;
    const nameOff = tab.readInt32LE(f + (modern ? 4 : 8));
    const at = funcnames + nameOff;
    if (at < 0 || at >= tab.length) continue;
    const end = tab.indexOf(0, at);
    const name = tab.toString('latin1', at, end < 0 ? tab.length : end);
    if (want.has(name)) found.set(name, { addr: entry(i), size: entry(i + 1) - entry(i) });
  }
  return found;
}

/**
 * The same on arm64, where every instruction is one aligned 32-bit word: the few encodings
 * needed are matched by hand (a decoder would add a dependency for three masks).
 * LDR Xt, [X28, #16] (64-bit, unsigned offset: imm12 = 2, Rn = 28) loads g.stackguard0;
 * B.cond is 0x54000000 | imm19 << 5 | cond; RET Xn is 0xd65f0000 | Rn << 5 (RET = RET X30).
 * Both branches are simulated by arm64's uprobes (no step out of line).
 */
function planArm64Function(name: string, addr: number, code: Buffer): { entry: number; emulated: boolean; rets: number[] } {
  if (addr % 4 !== 0 || code.length % 4 !== 0) throw new GoPlanError(`${name}: arm64 code not on 4-byte boundaries (0x${addr.toString(16)}, ${code.length} bytes)`);
  const rets: number[] = [];
  let entry = addr;
  let emulated = false;
  let sawCheck = false;
  for (let i = 0; i < code.length; i += 4) {
    const insn = code.readUInt32LE(i);
    if (i < 4 * 4 && !emulated) {
      if ((insn & 0xffffffe0) >>> 0 === 0xf9400b80) sawCheck = true; // >>> 0: JS's & gives a signed result
      else if (sawCheck && (insn & 0xff000010) >>> 0 === 0x54000000) {
        entry = addr + i;
        emulated = true;
      }
    }
    if ((insn & 0xfffffc1f) >>> 0 === 0xd65f0000) rets.push(addr + i);
  }
  return { entry, emulated, rets };
}

/** Entry probe site and RET instructions of one function. */
function planFunction(elf: ElfFile, name: string, addr: number, size: number): GoFunctionPlan {
  if (size <= 0 || size > 1 << 20) throw new GoPlanError(`${name} has an implausible size (${size} bytes)`);
  const code = elf.code(addr, size);
  if (elf.machine === EM_AARCH64) return sites(elf, name, planArm64Function(name, addr, code));
  const decoder = new Decoder(64, code, DecoderOptions.None);
  const instr = new Instruction();
  const rets: number[] = [];
  let entry = addr;
  let emulated = false;
  try {
    decoder.ip = BigInt(addr);
    let n = 0;
    let sawCheck = false;
    while (decoder.canDecode) {
      decoder.decodeOut(instr);
      const ip = Number(instr.ip);
      n++;
      if (n <= 4 && !emulated) {
        // lea r12,[rsp-X] (large frames), then cmp rsp|r12,[r14+0x10], then jbe/jb.
        if (instr.memoryBase === Register.R14 && instr.memoryDisplacement === 0x10n) sawCheck = true;
        else if (sawCheck && instr.flowControl === FlowControl.ConditionalBranch) {
          entry = ip;
          emulated = true;
        }
      }
      if (instr.flowControl === FlowControl.Return) rets.push(ip);
    }
  } finally {
    instr.free();
    decoder.free();
  }
  return sites(elf, name, { entry, emulated, rets });
}

/** A function's sites as file offsets, where the probes are attached. */
function sites(elf: ElfFile, name: string, at: { entry: number; emulated: boolean; rets: number[] }): GoFunctionPlan {
  if (at.rets.length === 0) throw new GoPlanError(`${name}: no RET instruction found in its code`);
  const off = (a: number): number => {
    const o = elf.execOffset(a);
    if (o === undefined) throw new GoPlanError(`${name}: 0x${a.toString(16)} is outside executable code`);
    return o;
  };
  return { entry: off(at.entry), emulated: at.emulated, rets: at.rets.map(off) };
}

/**
 * Where to probe crypto/tls in the Go executable at `path`. Throws GoPlanError (or ElfError)
 * with the reason when it cannot be probed: not Go, too old for the register ABI, not this
 * machine's architecture (`planningOnly`: plan another's, for tests), or without crypto/tls.
 */
export function planGo(path: string, planningOnly = false): GoPlan {
  const elf = ElfFile.open(path);
  try {
    const version = goVersion(elf);
    if (!version) throw new GoPlanError(`${path} is not a Go executable (no Go build info)`);
    if (elf.machine !== EM_X86_64 && elf.machine !== EM_AARCH64) throw new GoPlanError(`${path} is neither x86-64 nor arm64 (machine ${elf.machine})`);
    // The BPF object reads the registers of the architecture it was built for.
    const host = process.arch === 'arm64' ? EM_AARCH64 : EM_X86_64;
    if (elf.machine !== host && !planningOnly) throw new GoPlanError(`${path} is an ${elf.machine === EM_AARCH64 ? 'arm64' : 'x86-64'} executable; this helper runs on ${process.arch}`);
    if (!hasRegisterAbi(version, elf.machine)) {
      throw new GoPlanError(`${path} was built by ${version}; crypto/tls is probed in Go ${elf.machine === EM_AARCH64 ? '1.18' : '1.17'} and later on this architecture (register ABI)`);
    }
    let symbols: GoPlan['symbols'] = 'symtab';
    let syms: Map<string, { addr: number; size: number }> = elf.functions(WANTED);
    if (!syms.has(GO_WRITE) || !syms.has(GO_READ)) {
      symbols = 'pclntab';
      syms = pclntabFunctions(elf, WANTED);
    }
    const w = syms.get(GO_WRITE);
    const r = syms.get(GO_READ);
    if (!w || !r) throw new GoPlanError(`${path} (${version}) does not use crypto/tls`);
    const plan: GoPlan = {
      version,
      symbols,
      write: planFunction(elf, GO_WRITE, w.addr, w.size),
      read: planFunction(elf, GO_READ, r.addr, r.size),
    };
    const hs = (name: string): number | undefined => {
      const s = syms.get(name);
      return s ? planFunction(elf, name, s.addr, s.size).entry : undefined;
    };
    plan.clientHandshake = hs(GO_CLIENT_HANDSHAKE);
    plan.serverHandshake = hs(GO_SERVER_HANDSHAKE);
    return plan;
  } finally {
    elf.close();
  }
}

/** Whether a file is a Go executable (its build info is there); cheap: section headers only. */
export function isGo(path: string): boolean {
  let elf: ElfFile | undefined;
  try {
    elf = ElfFile.open(path);
    return goVersion(elf) !== undefined;
  } catch {
    return false; // not ELF, unreadable, gone: not ours to probe
  } finally {
    elf?.close();
  }
}

// Plans by file identity: a new Go program must get its probes within milliseconds of its
// exec, so its file is read once, when it is judged, and attaching reuses that.
const planned = new Map<string, GoPlan | string>();
/** Plans by build id and size: a copy of a known build (another inode) is not read again. */
const byBuild = new Map<string, GoPlan>();

/**
 * planGo() once per file (device, inode, size, mtime), and once per build: a copy of an
 * executable already planned (same build id and size) reuses that plan, so the first run of a
 * copied binary gets its probes in a fraction of a millisecond. The reason as a string if it fails.
 */
export function planGoCached(path: string): GoPlan | string {
  let id: string;
  try {
    const st = fs.statSync(path);
    id = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch (e) {
    return `${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`;
  }
  let plan = planned.get(id);
  if (plan === undefined) {
    const build = buildKey(path);
    plan = build === undefined ? undefined : byBuild.get(build);
    if (plan === undefined) {
      try {
        plan = planGo(path);
      } catch (e) {
        if (!(e instanceof GoPlanError || e instanceof ElfError)) throw e;
        plan = e.message;
      }
      if (build !== undefined && typeof plan !== 'string') {
        if (byBuild.size > 1000) byBuild.clear();
        byBuild.set(build, plan);
      }
    }
    if (planned.size > 1000) planned.clear();
    planned.set(id, plan);
  }
  return plan;
}

/** Whether a file is a Go executable that uses crypto/tls and can be probed. */
export function isGoTls(path: string): boolean {
  return isGo(path) && typeof planGoCached(path) !== 'string';
}
