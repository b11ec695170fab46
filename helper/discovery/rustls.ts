// rustls.ts: where to probe rustls (Rust's TLS library, linked into the executable as a
// crate) by its symbols.
//
// rustls does its own I/O: the program hands plaintext to Writer::write, which ends in
// CommonState::send_some_plaintext(&mut self, data) -> usize (the bytes taken); decrypted
// data goes through CommonState::take_received_plaintext(&mut self, Payload) into the buffer
// Reader::read drains in order; records go to the socket in CommonState::write_tls(&mut self,
// wr). The three share their first argument, the connection's CommonState, which bpf/rustls.h
// uses as the connection's handle. Writer::write and Reader::read themselves see other
// pointers (the ConnectionCommon<T>, at a type-dependent distance from its CommonState, and the
// received-plaintext buffer inside it), so they are not probed.
//
// Measured with rustls 0.20.8 (Debian 12's librust-rustls-dev), rustc 1.63, a release build:
// the three are separate functions (send_some_plaintext is called through the GOT by both
// ConnectionCommon<T>'s PlaintextSink::write; the other two by the state machine and by
// complete_io). send_some_plaintext starts with `cmp byte [rdi+0x126], 0`, which the kernel
// single-steps (≈20 µs a hit here, docs/design.md), then a `je`, which it emulates: the probe
// goes on the first emulated instruction before anything moves the stack or the argument
// registers, and its return probe works from there, since the return address is still on top
// of the stack. write_tls and take_received_plaintext start with `push`, emulated already.
//
// A stripped build has none of these names; an LTO build (lto = true) may inline them into
// their callers: either way the plan fails with the reason, and discovery reports the process
// through unknownTlsIn (libraries.ts) as TLS code the helper does not know.
import { Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, Register } from 'iced-x86';
import { ElfFile, ElfSymbol, EM_X86_64 } from './elf';

export class RustlsPlanError extends Error {
  override name = 'RustlsPlanError';
}

/** One place to probe: a file offset, and whether the kernel emulates the instruction there. */
export interface RustlsSite {
  symbol: string;
  offset: number;
  emulated: boolean;
}

export interface RustlsPlan {
  /** CommonState::send_some_plaintext: entry and return. */
  write: RustlsSite[];
  /** CommonState::write_tls: entry and return (the socket). */
  writeTls: RustlsSite[];
  /** CommonState::take_received_plaintext: entry only. */
  received: RustlsSite[];
}

/** A Rust symbol (legacy `_ZN…17h<hash>E` or v0 `_R…`) for rustls::conn::CommonState::<method>. */
function commonStateMethod(method: string): (name: string) => boolean {
  const m = `${method.length}${method}`;
  const legacy = new RegExp(`^_ZN6rustls4conn11CommonState${m}17h[0-9a-f]{16}E(\\.llvm\\.\\d+)?$`);
  const v0 = new RegExp(`^_R.*6rustls.*4conn.*11CommonState${m}(\\.llvm\\.\\d+)?$`);
  return (name) => legacy.test(name) || v0.test(name);
}

const METHODS = { write: 'send_some_plaintext', writeTls: 'write_tls', received: 'take_received_plaintext' } as const;

/** Whether the kernel emulates this instruction when a uprobe sits on it (x86-64). */
function emulated(instr: Instruction): boolean {
  if (instr.mnemonic === Mnemonic.Nop) return true;
  if (instr.mnemonic === Mnemonic.Push && instr.op0Register !== Register.None) return true;
  const f = instr.flowControl;
  return (f === FlowControl.ConditionalBranch || f === FlowControl.UnconditionalBranch || f === FlowControl.Call) && instr.nearBranch64 !== 0n;
}

const KEPT = new Set([Register.RSP, Register.RDI, Register.RSI, Register.RDX, Register.ESP, Register.EDI, Register.ESI, Register.EDX, Register.DI, Register.SI, Register.DX, Register.SP, Register.DIL, Register.SIL, Register.DL, Register.SPL]);

/**
 * Where to probe a function whose arguments the programs read from rdi, rsi (and rdx) and
 * whose return they catch: the first instruction the kernel emulates among the first few,
 * if nothing before it is a branch or writes rsp or an argument register; else the entry.
 */
export function probeSite(elf: ElfFile, sym: ElfSymbol): RustlsSite {
  const code = elf.code(sym.addr, Math.min(sym.size || 64, 64));
  const decoder = new Decoder(64, code, DecoderOptions.None);
  const instr = new Instruction();
  const infos = new InstructionInfoFactory();
  let site = sym.addr;
  let emu = false;
  try {
    decoder.ip = BigInt(sym.addr);
    for (let n = 0; n < 4 && decoder.canDecode; n++) {
      decoder.decodeOut(instr);
      if (emulated(instr)) {
        site = Number(instr.ip);
        emu = true;
        break;
      }
      if (instr.flowControl !== FlowControl.Next) break;
      const info = infos.info(instr);
      const used = info.usedRegisters();
      const writes = used.some((u) => KEPT.has(u.register) && u.access !== OpAccess.Read && u.access !== OpAccess.CondRead && u.access !== OpAccess.None);
      for (const u of used) u.free();
      if (writes) break;
    }
  } finally {
    infos.free();
    instr.free();
    decoder.free();
  }
  const offset = elf.execOffset(site);
  if (offset === undefined) throw new RustlsPlanError(`${sym.name}: 0x${site.toString(16)} is outside executable code`);
  return { symbol: sym.name, offset, emulated: emu };
}

/** Whether the ELF file at `path` has rustls's connection code (any of the three methods). */
export function rustlsIn(path: string): boolean | undefined {
  let elf: ElfFile | undefined;
  try {
    elf = ElfFile.open(path);
    const write = commonStateMethod(METHODS.write);
    return elf.functionsMatching(write).length > 0;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ? undefined : false;
  } finally {
    elf?.close();
  }
}

/**
 * Where to probe rustls in the executable or library at `path`. Throws RustlsPlanError (or
 * ElfError) with the reason when it cannot: not x86-64, or one of the three methods is not
 * there as a function (stripped, or inlined by LTO).
 */
export function planRustls(path: string): RustlsPlan {
  const elf = ElfFile.open(path);
  try {
    if (elf.machine !== EM_X86_64) throw new RustlsPlanError(`rustls is probed on x86-64 only (this file is for machine ${elf.machine})`);
    const plan: Partial<RustlsPlan> = {};
    const methods = Object.entries(METHODS).map(([key, method]) => [key as keyof RustlsPlan, method, commonStateMethod(method)] as const);
    // One pass over the symbol tables (tens of thousands of names in a Rust executable).
    const all = elf.functionsMatching((n) => n.includes('CommonState') && methods.some(([, , m]) => m(n)));
    for (const [key, method, match] of methods) {
      const syms = all.filter((s) => match(s.name));
      if (syms.length === 0) {
        throw new RustlsPlanError(`no rustls::conn::CommonState::${method} function (a stripped build, or one whose optimiser inlined it, as lto = true may): rustls is not captured in it`);
      }
      plan[key] = syms.map((s) => probeSite(elf, s));
    }
    return plan as RustlsPlan;
  } finally {
    elf.close();
  }
}

const cache = new Map<string, RustlsPlan | string>();

/** planRustls, once per file (by path, size and mtime); the reason as a string when it fails. */
export function planRustlsCached(path: string, key: string): RustlsPlan | string {
  const k = `${key}:${path}`;
  let p = cache.get(k);
  if (p === undefined) {
    try {
      p = planRustls(path);
    } catch (e) {
      p = (e as Error).message;
    }
    cache.set(k, p);
  }
  return p;
}
