// arm64.ts: what the OpenSSL probe planner (openssl.ts) reads from arm64 code: the first direct
// call of a wrapper (SSL_write's `bl ssl_write_internal`), and where in the internal function
// a probe costs least.
//
// Where a uprobe goes on arm64: the kernel (arch/arm64/kernel/probes/decode-insn.c) simulates
// the branches and PC-relative instructions (b, bl, b.cond, cbz/cbnz, tbz/tbnz, adr/adrp,
// br/blr/ret; ldr literal once, refused for uprobes since the fix of CVE-2024-50099 in 6.1.114,
// 6.6.58 and 6.11.5; kernels newer than 6.1 add nop and `stp x29, x30, [sp, #-N]!`, not counted
// here: 6.1's set is the floor) and steps every other instruction out of line, which costs a
// second exception. An internal function starts with `sub sp, sp, #N` (stepped) and then, in
// Debian 12's libssl3, `adrp x4, …` (simulated).
// The probe goes on that first simulated instruction when every instruction before it only
// moves sp or stores registers other than x30 to the frame: there the arguments (x0–x7) are
// still the caller's and x30 still holds the return address, which the return probe replaces
// (arm64 uretprobes hijack x30 at the probe, wherever it is). Only x30 being saved
// (`stp x29, x30`) or signed (`paciasp`) first, or anything else, leaves the probe at the entry.
//
// The return instance then records sp less the frame size instead of the caller's sp. The
// kernel uses that value only to tell a nested probed call's return from a longjmp: it could
// misjudge only a probed function called with no frame at all between it and the outer
// function's body, which none of OpenSSL's callers of the internal functions is (each has its
// own frame).
import * as fs from 'fs';
import * as path from 'path';
import { MessageChannel, MessagePort, receiveMessageOnPort, Worker } from 'worker_threads';

/** The decoder could not start or answer (the planner then probes the exported functions). */
export class Arm64DecoderError extends Error {
  override name = 'Arm64DecoderError';
}

/** One decoded instruction. */
export interface Arm64Insn {
  addr: number;
  size: number;
  mnemonic: string;
  /** Operands as capstone prints them ("x3, sp", "#0x35774"). */
  ops: string;
  /** The 32-bit instruction word. */
  word: number;
}

/** Waits this long for capstone to start (WebAssembly compile; slow under emulation) and for one answer. */
const START_MS = 120_000;
const ANSWER_MS = 30_000;
/** The shared decoder ends after this long unused. */
const IDLE_MS = 60_000;

/**
 * Capstone's arm64 decoder, used synchronously: it runs in a worker thread (arm64-worker.ts)
 * and each decode() blocks until the worker answers. close() ends the worker.
 */
export class Arm64Decoder {
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly signal = new Int32Array(new SharedArrayBuffer(4));

  constructor() {
    const script = path.join(__dirname, 'arm64-worker.js');
    // (A worker that cannot start would never answer: the wait below would only time out.)
    if (!fs.existsSync(script)) throw new Arm64DecoderError(`${script} is missing: rebuild with npx tsc -p . (or reinstall https-capture)`);
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.worker = new Worker(script, { workerData: { port: port2, signal: this.signal }, transferList: [port2] });
    this.worker.unref();
    try {
      this.wait(START_MS, 'start');
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** Decodes `code` (at virtual address `addr`), at most `max` instructions, up to the first undecodable word. */
  decode(code: Buffer, addr: number, max = 0): Arm64Insn[] {
    Atomics.store(this.signal, 0, 0);
    this.port.postMessage({ code, addr, max });
    return (this.wait(ANSWER_MS, 'answer') as { insns: Arm64Insn[] }).insns;
  }

  close(): void {
    this.port.close();
    void this.worker.terminate();
  }

  private static shared: { decoder: Arm64Decoder; timer?: NodeJS.Timeout } | undefined;

  /**
   * One decoder for the whole process, ended after IDLE_MS without use: starting capstone
   * (compiling its 3 MB of WebAssembly) takes 0.3–1 s here and much longer in an emulated
   * guest, and every Capture plans its files anew. done() after each use starts the idle clock.
   */
  static acquire(): { decoder: Arm64Decoder; done: () => void } {
    const s = (Arm64Decoder.shared ??= { decoder: new Arm64Decoder() });
    clearTimeout(s.timer);
    return {
      decoder: s.decoder,
      done: () => {
        clearTimeout(s.timer);
        s.timer = setTimeout(() => {
          if (Arm64Decoder.shared === s) Arm64Decoder.shared = undefined;
          s.decoder.close();
        }, IDLE_MS).unref();
      },
    };
  }

  /** Ends the shared decoder now (after an error, so that the next plan starts a fresh one). */
  static discard(): void {
    const s = Arm64Decoder.shared;
    Arm64Decoder.shared = undefined;
    if (s) {
      clearTimeout(s.timer);
      s.decoder.close();
    }
  }

  private wait(ms: number, what: string): unknown {
    if (Atomics.wait(this.signal, 0, 0, ms) === 'timed-out') throw new Arm64DecoderError(`the arm64 decoder (capstone) did not ${what} within ${ms / 1000} s`);
    const m = receiveMessageOnPort(this.port)?.message as { error?: string } | undefined;
    if (!m) throw new Arm64DecoderError('the arm64 decoder (capstone) sent nothing');
    if (m.error) throw new Arm64DecoderError(`the arm64 decoder (capstone): ${m.error}`);
    return m;
  }
}

/**
 * Whether the arm64 kernel simulates this instruction word when a uprobe hits it (no step out
 * of line): the encoding classes decode-insn.c gives a simulate_* handler, by the same masks as
 * arch/arm64/include/asm/insn.h. ldr (literal) is left out: refused for uprobes since the fix
 * of CVE-2024-50099 (6.1.114, 6.6.58, 6.11.5).
 */
export function simulated(word: number): string | undefined {
  const w = word >>> 0;
  if ((w & 0xfc000000) >>> 0 === 0x14000000) return 'b';
  if ((w & 0xfc000000) >>> 0 === 0x94000000) return 'bl';
  if ((w & 0xff000010) >>> 0 === 0x54000000) return 'b.cond';
  if ((w & 0x7e000000) >>> 0 === 0x34000000) return 'cbz/cbnz';
  if ((w & 0x7e000000) >>> 0 === 0x36000000) return 'tbz/tbnz';
  if ((w & 0x1f000000) >>> 0 === 0x10000000) return 'adr/adrp';
  if ((w & 0xfffffc1f) >>> 0 === 0xd61f0000) return 'br';
  if ((w & 0xfffffc1f) >>> 0 === 0xd63f0000) return 'blr';
  if ((w & 0xfffffc1f) >>> 0 === 0xd65f0000) return 'ret';
  return undefined;
}

/** The registers an instruction writes as its destination operands (the first, or the first two for a load pair). */
function destinations(i: Arm64Insn): string[] {
  const m = i.mnemonic;
  // Stores, compares and branches name no destination first.
  if (/^(st|cmp|cmn|tst|ccmp|ccmn|fcmp|cbz|cbnz|tbz|tbnz|prfm|b$|b\.|bl$|br$|blr$|ret$|nop$|bti$|hint$)/.test(m)) return [];
  const ops = i.ops.split(',').map((s) => s.trim());
  return /^ld.*p$/.test(m) ? ops.slice(0, 2) : ops.slice(0, 1);
}

/** x3 for w3: the register as a 64-bit name. */
function full(r: string): string {
  return r.replace(/^w(\d+)$/, 'x$1');
}

/**
 * The first direct call (`bl`) in a wrapper's body (`code`, linked at `addr`), and the argument then carrying a pointer
 * into the wrapper's frame (x3: the 4th, x4: the 5th), the count the wrapper returns. Undefined
 * when the body returns, jumps away or calls through a register first.
 */
export function firstCallArm64(d: Arm64Decoder, code: Buffer, addr: number): { target: number; stackArg?: 4 | 5 } | undefined {
  const insns = d.decode(code, addr);
  const toStack = new Map<string, boolean>();
  for (const i of insns) {
    if (i.mnemonic === 'bl') {
      const t = /^#(0x[0-9a-f]+|\d+)$/.exec(i.ops);
      if (!t) return undefined;
      return { target: Number(t[1]), stackArg: toStack.get('x4') ? 5 : toStack.get('x3') ? 4 : undefined };
    }
    if (['ret', 'b', 'br', 'blr', 'brk', 'udf'].includes(i.mnemonic) || /^(reta|bra|blra)/.test(i.mnemonic)) return undefined;
    for (const r of destinations(i).map(full)) {
      if (r !== 'x3' && r !== 'x4') continue;
      // `mov x3, sp` (add x3, sp, #0) or `add x3, sp, #n`: the address of a local.
      toStack.set(r, (i.mnemonic === 'mov' && /^[xw]\d+, sp$/.test(i.ops)) || (i.mnemonic === 'add' && /^[xw]\d+, sp, #/.test(i.ops)));
    }
  }
  return undefined;
}

export interface Arm64Site {
  /** Virtual address of the probed instruction. */
  addr: number;
  /** Its offset from the function's start, and the instruction as capstone prints it. */
  delta: number;
  insn: string;
  /** The simulated class (decode-insn.c), or undefined where the kernel steps it out of line. */
  simulated?: string;
}

/**
 * Where to probe a function (`code` from its start at `addr`) entered by `bl`, for entry and return alike: its first simulated
 * instruction, if every instruction before it leaves the arguments and x30 alone (the file's
 * header says why that is enough); else its first instruction.
 */
export function probeSiteArm64(d: Arm64Decoder, code: Buffer, addr: number): Arm64Site {
  const insns = d.decode(code.subarray(0, 64), addr, 16);
  const at = (i: Arm64Insn): Arm64Site => ({ addr: i.addr, delta: i.addr - addr, insn: `${i.mnemonic} ${i.ops}`.trim(), simulated: simulated(i.word) });
  for (const i of insns) {
    if (simulated(i.word)) return at(i);
    if (!harmlessBefore(i)) break;
  }
  if (!insns.length) return { addr, delta: 0, insn: '(not decodable)' };
  return at(insns[0]);
}

/**
 * Prologue instructions a probe may come after: moving sp or x29 by an immediate, storing
 * registers other than x30 into the frame, bti and nop. None changes x0–x7 or x30.
 */
function harmlessBefore(i: Arm64Insn): boolean {
  const m = i.mnemonic;
  if (m === 'nop' || m === 'bti') return true;
  if ((m === 'sub' || m === 'add') && /^(sp|x29), sp, #/.test(i.ops)) return true;
  if (m === 'mov' && i.ops === 'x29, sp') return true;
  if ((m === 'stp' || m === 'str' || m === 'stur') && /\[sp\b/.test(i.ops) && !/\b(x30|lr)\b/.test(i.ops)) return true;
  return false;
}
