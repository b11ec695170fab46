// programs.test.ts (no kernel): every program the helper attaches exists in the built BPF
// object, in a section of the kind it is attached as. Read from the object's ELF symbol table,
// as libbpf finds programs by function name; a renamed or removed program fails here.
import * as assert from 'assert';
import { ElfFile } from '../../helper/discovery/elf';
import { BPF_OBJECT_PATH } from '../../helper/package';
import { TRACING_PROGRAMS, UPROBE_PROGRAMS } from '../../helper/kernel/programs';

const EM_BPF = 247;

describe('BPF programs the helper attaches (no kernel)', () => {
  let elf: ElfFile;
  before(() => {
    elf = ElfFile.open(BPF_OBJECT_PATH);
  });
  after(() => elf?.close());

  it('reads the built object: a BPF ELF whose symbol table the check can see', () => {
    assert.strictEqual(elf.machine, EM_BPF, `${BPF_OBJECT_PATH} is not a BPF object`);
    // A name that is no program is not found: the lookup below can fail.
    assert.strictEqual(elf.functions(['no_such_program']).size, 0);
  });

  it('has every uprobe program in a uprobe or uretprobe section', () => {
    const found = elf.functions([...UPROBE_PROGRAMS]);
    const missing = UPROBE_PROGRAMS.filter((p) => !found.has(p));
    assert.deepStrictEqual(missing, [], `not in ${BPF_OBJECT_PATH}`);
    const wrong = [...found.values()].filter((s) => !/^u(ret)?probe(\/|$)/.test(s.section)).map((s) => `${s.name} in ${s.section}`);
    assert.deepStrictEqual(wrong, []);
  });

  it('has every tracing program in a tp_btf section', () => {
    const found = elf.functions([...TRACING_PROGRAMS]);
    const missing = TRACING_PROGRAMS.filter((p) => !found.has(p));
    assert.deepStrictEqual(missing, [], `not in ${BPF_OBJECT_PATH}`);
    const wrong = [...found.values()].filter((s) => !s.section.startsWith('tp_btf/')).map((s) => `${s.name} in ${s.section}`);
    assert.deepStrictEqual(wrong, []);
  });
});
