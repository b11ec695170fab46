// elf.ts: reads what the probe planner needs from an ELF64 little-endian file: function
// symbols (.dynsym, then .symtab), the file offset of an address (PT_LOAD segments), the
// bytes at an address, and the sections that hold PLT stubs.
// Hand-written because no well-kept npm package reads ELF symbol tables, and libbpf keeps its
// own lookup private; it reads only headers and the symbol tables, by position, so a 100 MB
// executable such as /usr/bin/node costs a few reads, not a full load.
import * as fs from 'fs';

export class ElfError extends Error {
  override name = 'ElfError';
}

export interface ElfSymbol {
  name: string;
  /** Virtual address as linked. */
  addr: number;
  size: number;
  /** The section that holds it (a BPF object's program sections: "uprobe", "tp_btf/…"). */
  section: string;
}

interface Section {
  name: string;
  type: number;
  addr: number;
  offset: number;
  size: number;
  link: number;
  entsize: number;
}

interface Segment {
  vaddr: number;
  offset: number;
  filesz: number;
  exec: boolean;
}

const SHT_SYMTAB = 2;
const SHT_DYNSYM = 11;
const SHT_NOTE = 7;
const PT_LOAD = 1;
const PF_X = 1;
const STT_FUNC = 2;
const STT_GNU_IFUNC = 10;
export const EM_X86_64 = 62;
export const EM_AARCH64 = 183;

export class ElfFile {
  readonly machine: number;
  private readonly fileSize: number;
  private readonly sections: Section[];
  private readonly segments: Segment[];

  private constructor(
    readonly path: string,
    readonly fd: number,
  ) {
    this.fileSize = fs.fstatSync(fd).size;
    if (this.fileSize < 64) throw new ElfError(`${path} is not an ELF file (${this.fileSize} bytes)`);
    const ident = this.read(0, 64);
    if (ident.readUInt32BE(0) !== 0x7f454c46) throw new ElfError(`${path} is not an ELF file`);
    if (ident[4] !== 2 || ident[5] !== 1) throw new ElfError(`${path} is not a 64-bit little-endian ELF file`);
    this.machine = ident.readUInt16LE(18);
    const phoff = Number(ident.readBigUInt64LE(32));
    const shoff = Number(ident.readBigUInt64LE(40));
    const phentsize = ident.readUInt16LE(54);
    const phnum = ident.readUInt16LE(56);
    const shentsize = ident.readUInt16LE(58);
    const shnum = ident.readUInt16LE(60);
    const shstrndx = ident.readUInt16LE(62);
    if ((phnum > 0 && phentsize < 56) || shentsize < 64 || shnum > 65535 || phnum > 65535) throw new ElfError(`${path}: bad ELF header`);

    this.segments = [];
    const ph = this.read(phoff, phentsize * phnum); // none in a relocatable object (a BPF .o)
    for (let i = 0; i < phnum; i++) {
      const at = i * phentsize;
      if (ph.readUInt32LE(at) !== PT_LOAD) continue;
      this.segments.push({
        exec: (ph.readUInt32LE(at + 4) & PF_X) !== 0,
        offset: Number(ph.readBigUInt64LE(at + 8)),
        vaddr: Number(ph.readBigUInt64LE(at + 16)),
        filesz: Number(ph.readBigUInt64LE(at + 32)),
      });
    }

    const sh = this.read(shoff, shentsize * shnum);
    const raw = [];
    for (let i = 0; i < shnum; i++) {
      const at = i * shentsize;
      raw.push({
        nameOff: sh.readUInt32LE(at),
        type: sh.readUInt32LE(at + 4),
        addr: Number(sh.readBigUInt64LE(at + 16)),
        offset: Number(sh.readBigUInt64LE(at + 24)),
        size: Number(sh.readBigUInt64LE(at + 32)),
        link: sh.readUInt32LE(at + 40),
        entsize: Number(sh.readBigUInt64LE(at + 56)),
      });
    }
    const names = shstrndx < raw.length ? this.read(raw[shstrndx]!.offset, raw[shstrndx]!.size) : Buffer.alloc(0);
    this.sections = raw.map((s) => ({ ...s, name: cstr(names, s.nameOff) }));
  }

  /** Opens `path`; the caller must close() it. */
  static open(path: string): ElfFile {
    const fd = fs.openSync(path, 'r');
    try {
      return new ElfFile(path, fd);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  /**
   * The build's identity from its notes: the GNU build id (`.note.gnu.build-id`, a hash of the
   * linked contents) or, failing that, Go's (`.note.go.buildid`); undefined without either.
   * Two files with the same one are copies of one build, so a probe plan of one holds for the
   * other (every offset in a plan is a file offset).
   */
  buildId(): string | undefined {
    for (const [name, owner, type] of [['.note.gnu.build-id', 'GNU', 3], ['.note.go.buildid', 'Go', 4]] as const) {
      const sec = this.sections.find((x) => x.name === name && x.type === SHT_NOTE);
      if (!sec || sec.size < 12 || sec.size > 4096) continue;
      const b = this.read(sec.offset, sec.size);
      const namesz = b.readUInt32LE(0);
      const descsz = b.readUInt32LE(4);
      const desc = 12 + ((namesz + 3) & ~3);
      if (b.readUInt32LE(8) !== type || desc + descsz > b.length || cstr(b.subarray(12, 12 + namesz), 0) !== owner) continue;
      return `${owner}:${b.subarray(desc, desc + descsz).toString('hex')}`;
    }
    return undefined;
  }

  /** Bytes at a file offset; throws ElfError if the file is shorter (headers may lie). */
  read(offset: number, length: number): Buffer {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.fileSize) {
      throw new ElfError(`${this.path}: truncated or corrupt (${length} bytes at offset ${offset}, file has ${this.fileSize})`);
    }
    const b = Buffer.alloc(length);
    const n = fs.readSync(this.fd, b, 0, length, offset);
    if (n !== length) throw new ElfError(`${this.path}: truncated (wanted ${length} bytes at ${offset}, got ${n})`);
    return b;
  }

  /** Function symbols with these names (defined ones only), from .dynsym and then .symtab. */
  functions(names: string[]): Map<string, ElfSymbol> {
    const want = new Set(names);
    return this.scanFunctions((name) => want.has(name), want.size);
  }

  /**
   * Defined function symbols whose name passes `match`, from .dynsym and .symtab (a name in
   * both once): for names that carry a hash or a crate disambiguator, as Rust's do.
   */
  functionsMatching(match: (name: string) => boolean): ElfSymbol[] {
    return [...this.scanFunctions(match).values()];
  }

  /** The symbol tables' defined functions whose name passes `match`; stops after a table once `enough` are found. */
  private scanFunctions(match: (name: string) => boolean, enough = Infinity): Map<string, ElfSymbol> {
    const found = new Map<string, ElfSymbol>();
    for (const type of [SHT_DYNSYM, SHT_SYMTAB]) {
      for (const tab of this.sections.filter((s) => s.type === type)) {
        const strtab = this.sections[tab.link];
        if (!strtab || tab.entsize < 24) continue;
        const syms = this.read(tab.offset, tab.size);
        const strs = this.read(strtab.offset, strtab.size);
        for (let at = 0; at + 24 <= syms.length; at += tab.entsize) {
          const kind = syms[at + 4]! & 0xf;
          const shndx = syms.readUInt16LE(at + 6);
          if ((kind !== STT_FUNC && kind !== STT_GNU_IFUNC) || shndx === 0) continue;
          const name = cstr(strs, syms.readUInt32LE(at));
          if (found.has(name) || !match(name)) continue;
          found.set(name, { name, addr: Number(syms.readBigUInt64LE(at + 8)), size: Number(syms.readBigUInt64LE(at + 16)), section: this.sections[shndx]?.name ?? '' });
        }
      }
      if (found.size >= enough) break;
    }
    return found;
  }

  /** File offset of a virtual address in an executable segment, as uprobes want it. */
  execOffset(addr: number): number | undefined {
    const seg = this.segments.find((s) => s.exec && addr >= s.vaddr && addr < s.vaddr + s.filesz);
    return seg ? addr - seg.vaddr + seg.offset : undefined;
  }

  /** Bytes of code at a virtual address (up to the end of its segment). */
  code(addr: number, length: number): Buffer {
    const seg = this.segments.find((s) => s.exec && addr >= s.vaddr && addr < s.vaddr + s.filesz);
    if (!seg) throw new ElfError(`${this.path}: address 0x${addr.toString(16)} is not in executable code`);
    return this.read(addr - seg.vaddr + seg.offset, Math.min(length, seg.vaddr + seg.filesz - addr));
  }

  /** A section by name (the first of that name), or undefined. */
  section(name: string): { addr: number; offset: number; size: number } | undefined {
    const s = this.sections.find((x) => x.name === name);
    return s ? { addr: s.addr, offset: s.offset, size: s.size } : undefined;
  }

  /** Bytes at a virtual address in any loaded segment (code or data). */
  atAddress(addr: number, length: number): Buffer {
    const seg = this.segments.find((s) => addr >= s.vaddr && addr + length <= s.vaddr + s.filesz);
    if (!seg) throw new ElfError(`${this.path}: address 0x${addr.toString(16)} is not in the file's loaded data`);
    return this.read(addr - seg.vaddr + seg.offset, length);
  }

  /** File ranges of the loaded segments that are not code (read-only data, data). */
  dataRanges(): { offset: number; size: number }[] {
    return this.segments.filter((s) => !s.exec).map((s) => ({ offset: s.offset, size: s.filesz }));
  }

  /** True if the address is in a PLT section (a stub that jumps to another library). */
  inPlt(addr: number): boolean {
    return this.sections.some((s) => s.name.startsWith('.plt') && addr >= s.addr && addr < s.addr + s.size);
  }
}

/** The build id of the ELF file at `path` (ElfFile.buildId), with its size: undefined if unreadable or none. */
export function buildKey(path: string): string | undefined {
  let elf: ElfFile | undefined;
  try {
    elf = ElfFile.open(path);
    const id = elf.buildId();
    return id && `${id}:${fs.fstatSync(elf.fd).size}`;
  } catch {
    return undefined;
  } finally {
    elf?.close();
  }
}

function cstr(b: Buffer, at: number): string {
  if (at >= b.length) return '';
  const end = b.indexOf(0, at);
  return b.toString('latin1', at, end < 0 ? b.length : end);
}
