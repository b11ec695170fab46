// openssl.test.ts: helper/discovery/openssl.ts planOpenSsl and helper/discovery/elf.ts ElfFile on this machine's libssl.so.3, on non-OpenSSL and non-ELF files, and on a truncated libssl.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Decoder, DecoderOptions, Mnemonic } from 'iced-x86';
import { ElfFile, EM_X86_64 } from '../../helper/discovery/elf';
import { planOpenSsl, ProbePlan } from '../../helper/discovery/openssl';

const LIBSSL = '/usr/lib/x86_64-linux-gnu/libssl.so.3';

/** Bytes of a file at an offset, read without helper/discovery/elf.ts. */
function fileBytes(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(length);
    assert.strictEqual(fs.readSync(fd, b, 0, length, offset), length);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

/** The mnemonic of the first instruction in `code`. */
function firstMnemonic(code: Buffer): Mnemonic {
  const d = new Decoder(64, code, DecoderOptions.None);
  try {
    const i = d.decode();
    try {
      return i.mnemonic;
    } finally {
      i.free();
    }
  } finally {
    d.free();
  }
}

/** Targets of the direct calls in `code` (linked at `addr`). */
function callTargets(code: Buffer, addr: number): number[] {
  const d = new Decoder(64, code, DecoderOptions.None);
  const out: number[] = [];
  try {
    d.ip = BigInt(addr);
    while (d.canDecode) {
      const i = d.decode();
      if (i.mnemonic === Mnemonic.Call && i.isCallNear) out.push(Number(i.nearBranch64));
      i.free();
    }
    return out;
  } finally {
    d.free();
  }
}

/** A copy of `file` whose SHT_DYNSYM section header points past the end of the file. */
function withDynsymPastEnd(file: string, out: string): void {
  patchDynsym(file, out, 24, (b) => BigInt(b.length + (1 << 20)));
}

/** A copy of `file` with one 64-bit field (at `field` in the SHT_DYNSYM section header) replaced. */
function patchDynsym(file: string, out: string, field: number, value: (b: Buffer) => bigint): void {
  const b = fs.readFileSync(file);
  const shoff = Number(b.readBigUInt64LE(0x28));
  const shentsize = b.readUInt16LE(0x3a);
  const shnum = b.readUInt16LE(0x3c);
  let patched = 0;
  for (let i = 0; i < shnum; i++) {
    const at = shoff + i * shentsize;
    if (b.readUInt32LE(at + 4) === 11) {
      b.writeBigUInt64LE(value(b), at + field);
      patched++;
    }
  }
  assert.strictEqual(patched, 1, 'one .dynsym');
  fs.writeFileSync(out, b);
}

function assertExported(plan: ProbePlan, what: string): void {
  assert.strictEqual(plan.kind, 'exported', `${what}: ${JSON.stringify(plan)}`);
  if (plan.kind !== 'exported') return;
  assert.strictEqual(typeof plan.reason, 'string');
  assert.ok(plan.reason.length > 0, `${what}: a reason`);
}

describe('openssl: probe plan', function () {
  let tmp: string;

  before(function () {
    if (process.arch !== 'x64' || !fs.existsSync(LIBSSL)) this.skip();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'https-capture-openssl-'));
  });

  after(function () {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it(`plans the internal functions of ${LIBSSL}, at two offsets that start with push`, function () {
    const plan = planOpenSsl(LIBSSL);
    assert.strictEqual(plan.kind, 'internal', JSON.stringify(plan));
    if (plan.kind !== 'internal') return;
    assert.notStrictEqual(plan.write, plan.read);
    const size = fs.statSync(LIBSSL).size;
    for (const [name, off] of [
      ['write', plan.write],
      ['read', plan.read],
    ] as const) {
      assert.ok(Number.isSafeInteger(off) && off > 0 && off < size, `${name} offset ${off} is in the file`);
      const code = fileBytes(LIBSSL, off, 16);
      assert.strictEqual(firstMnemonic(code), Mnemonic.Push, `${name}: first instruction at 0x${off.toString(16)} (${code.toString('hex')})`);
      // the same by hand: push r64 is 50+r, or 41 50+r for r8–r15
      const b0 = code[0]!;
      const b1 = code[1]!;
      assert.ok((b0 >= 0x50 && b0 <= 0x57) || (b0 === 0x41 && b1 >= 0x50 && b1 <= 0x57), `${name}: push opcode`);
    }
  });

  it('plans the functions that SSL_write_ex and SSL_read_ex call', function () {
    const plan = planOpenSsl(LIBSSL);
    assert.strictEqual(plan.kind, 'internal');
    if (plan.kind !== 'internal') return;
    const elf = ElfFile.open(LIBSSL);
    try {
      const syms = elf.functions(['SSL_write_ex', 'SSL_read_ex']);
      for (const [name, want] of [
        ['SSL_write_ex', plan.write],
        ['SSL_read_ex', plan.read],
      ] as const) {
        const s = syms.get(name)!;
        assert.ok(s && s.size > 0, name);
        const targets = callTargets(elf.code(s.addr, s.size), s.addr).map((t) => elf.execOffset(t));
        assert.ok(targets.includes(want), `${name} calls file offset ${want} (its calls go to ${targets.join(', ')})`);
      }
    } finally {
      elf.close();
    }
  });

  it('does not plan the exported functions themselves', function () {
    const plan = planOpenSsl(LIBSSL);
    assert.strictEqual(plan.kind, 'internal');
    if (plan.kind !== 'internal') return;
    const elf = ElfFile.open(LIBSSL);
    try {
      const syms = elf.functions(['SSL_write', 'SSL_read', 'SSL_write_ex', 'SSL_read_ex']);
      const exported = [...syms.values()].map((s) => elf.execOffset(s.addr));
      assert.strictEqual(exported.length, 4);
      assert.ok(!exported.includes(plan.write), 'write is not an exported wrapper');
      assert.ok(!exported.includes(plan.read), 'read is not an exported wrapper');
    } finally {
      elf.close();
    }
  });

  it('ElfFile.functions finds SSL_write and SSL_read with nonzero size, in executable code', function () {
    const elf = ElfFile.open(LIBSSL);
    try {
      assert.strictEqual(elf.machine, EM_X86_64);
      const syms = elf.functions(['SSL_write', 'SSL_read', 'no_such_function_in_libssl']);
      assert.deepStrictEqual([...syms.keys()].sort(), ['SSL_read', 'SSL_write']);
      for (const name of ['SSL_write', 'SSL_read']) {
        const s = syms.get(name)!;
        assert.strictEqual(s.name, name);
        assert.ok(s.size > 0, `${name} size ${s.size}`);
        assert.ok(s.addr > 0, `${name} address`);
        const off = elf.execOffset(s.addr);
        assert.notStrictEqual(off, undefined, `${name} is in an executable segment`);
        assert.ok(elf.code(s.addr, 16).equals(fileBytes(LIBSSL, off!, 16)), `${name}: code() reads the bytes at its file offset`);
        assert.ok(!elf.inPlt(s.addr), `${name} is not a PLT stub`);
      }
      assert.notStrictEqual(syms.get('SSL_write')!.addr, syms.get('SSL_read')!.addr);
      // BIO_ctrl: a function libssl imports (undefined here); OPENSSL_3.0.0: the version
      // definition, an absolute OBJECT symbol. Neither is a function defined in libssl.
      assert.deepStrictEqual([...elf.functions(['BIO_ctrl', 'OPENSSL_3.0.0']).keys()], []);
    } finally {
      elf.close();
    }
  });

  it('an executable without OpenSSL gives exported with a reason', function () {
    assert.ok(fs.existsSync('/bin/true'));
    let plan: ProbePlan | undefined;
    assert.doesNotThrow(() => (plan = planOpenSsl('/bin/true')));
    assertExported(plan!, '/bin/true');
  });

  it('a text file gives exported with a reason', function () {
    for (const [name, text] of [
      ['short.txt', 'hello\n'],
      ['long.txt', 'not an ELF file at all, but longer than an ELF header is. '.repeat(20)],
    ] as const) {
      const file = path.join(tmp, name);
      fs.writeFileSync(file, text);
      let plan: ProbePlan | undefined;
      assert.doesNotThrow(() => (plan = planOpenSsl(file)));
      assertExported(plan!, name);
    }
  });

  it('a missing file, an empty file and a directory give exported with a reason', function () {
    const empty = path.join(tmp, 'empty');
    fs.writeFileSync(empty, '');
    for (const p of [path.join(tmp, 'does-not-exist'), empty, tmp]) {
      let plan: ProbePlan | undefined;
      assert.doesNotThrow(() => (plan = planOpenSsl(p)));
      assertExported(plan!, p);
    }
  });

  it('a truncated copy of libssl gives exported with a reason', function () {
    const file = path.join(tmp, 'libssl-truncated.so.3');
    fs.writeFileSync(file, fileBytes(LIBSSL, 0, 4096));
    let plan: ProbePlan | undefined;
    assert.doesNotThrow(() => (plan = planOpenSsl(file)));
    assertExported(plan!, 'truncated libssl');
    assert.throws(() => ElfFile.open(file), { name: 'ElfError' });
  });

  it('a libssl whose symbol table lies past its end gives exported with a reason', function () {
    const file = path.join(tmp, 'libssl-bad-dynsym.so.3');
    withDynsymPastEnd(LIBSSL, file);
    let plan: ProbePlan | undefined;
    assert.doesNotThrow(() => (plan = planOpenSsl(file)));
    assertExported(plan!, 'libssl with a bad .dynsym');
  });

  // A section header whose size is absurd (1 TiB) must not reach Buffer.alloc: ElfFile checks
  // every read against the file's size.
  it('a libssl whose symbol table claims 1 TiB gives exported with a reason', function () {
    const file = path.join(tmp, 'libssl-huge-dynsym.so.3');
    patchDynsym(LIBSSL, file, 32, () => 1n << 40n);
    let plan: ProbePlan | undefined;
    assert.doesNotThrow(() => (plan = planOpenSsl(file)));
    assertExported(plan!, 'libssl with a 1 TiB .dynsym');
  });
});
