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
// another library version), the exported functions are probed instead.
import { Decoder, DecoderOptions, FlowControl, Instruction } from 'iced-x86';
import { ElfError, ElfFile, EM_X86_64 } from './elf';

export type ProbePlan = (
  | {
      kind: 'internal';
      /** File offsets of ssl_write_internal and ssl_read_internal. */
      write: number;
      read: number;
    }
  | { kind: 'exported'; reason: string }
  | { kind: 'go'; reason: string }
) & {
  /**
   * File offsets of the exported functions asked for that the file has, so that attaching
   * (once per process in targeted mode) needs no further symbol lookup.
   */
  offsets: Map<string, number>;
};

/** The first direct call in a function's body (decoding stops at a return or a trap). */
function firstCall(elf: ElfFile, addr: number, size: number): number | undefined {
  const code = elf.code(addr, Math.min(size || 128, 256));
  const decoder = new Decoder(64, code, DecoderOptions.None);
  const instr = new Instruction();
  try {
    decoder.ip = BigInt(addr);
    while (decoder.canDecode) {
      decoder.decodeOut(instr);
      const flow = instr.flowControl;
      if (flow === FlowControl.Call) return Number(instr.nearBranch64);
      if (flow === FlowControl.Return || flow === FlowControl.Interrupt || flow === FlowControl.Exception) return undefined;
    }
    return undefined;
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
  const offsets = new Map<string, number>();
  try {
    elf = ElfFile.open(path);
  } catch (e) {
    return { kind: 'exported', reason: e instanceof Error ? e.message : String(e), offsets };
  }
  try {
    const syms = elf.functions([...new Set(['SSL_write', 'SSL_write_ex', 'SSL_read', 'SSL_read_ex', ...exported])]);
    for (const name of exported) {
      const s = syms.get(name);
      const off = s && elf.execOffset(s.addr);
      if (off !== undefined) offsets.set(name, off);
    }
    if (elf.machine !== EM_X86_64) return { kind: 'exported', reason: `machine ${elf.machine} is not x86-64`, offsets };
    const target = (a: string, b: string): number | string => {
      const sa = syms.get(a);
      const sb = syms.get(b);
      if (!sa || !sb) return `${!sa ? a : b} is not in the symbol table`;
      const ta = firstCall(elf, sa.addr, sa.size);
      const tb = firstCall(elf, sb.addr, sb.size);
      if (ta === undefined || ta !== tb) return `${a} and ${b} do not call one common function`;
      if (elf.inPlt(ta)) return `${a} calls a PLT stub first`;
      const off = elf.execOffset(ta);
      return off === undefined ? `the target of ${a} is outside executable code` : off;
    };
    const write = target('SSL_write', 'SSL_write_ex');
    const read = target('SSL_read', 'SSL_read_ex');
    if (typeof write === 'string') return { kind: 'exported', reason: write, offsets };
    if (typeof read === 'string') return { kind: 'exported', reason: read, offsets };
    if (write === read) return { kind: 'exported', reason: 'the internal functions are inlined in this build (SSL_write and SSL_read first call one shared helper)', offsets };
    return { kind: 'internal', write, read, offsets };
  } catch (e) {
    if (e instanceof ElfError) return { kind: 'exported', reason: e.message, offsets };
    throw e;
  } finally {
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
