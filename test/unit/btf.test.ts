// btf.test.ts: the preflight that names a BPF feature the kernel lacks, from its BTF
// (helper/btf.ts, helper/errors.ts kernelFeatureProblem). Against BTF blobs made here, and
// against this machine's own /sys/kernel/btf/vmlinux with one name renamed away, so that a
// reader that stopped seeing a feature (or saw one that is not there) fails here.
import * as assert from 'assert';
import * as fs from 'fs';
import { btfNames, KERNEL_FEATURES, missingKernelFeatures } from '../../helper/btf';
import { kernelFeatureProblem } from '../../helper/errors';

/** A BTF blob with these typedefs (to int) and enums, laid out as the kernel lays it out. */
function makeBtf(typedefs: string[], enums: Record<string, string[]>, extra: Buffer[] = []): Buffer {
  const strs: Buffer[] = [Buffer.from([0])];
  let strLen = 1;
  const str = (s: string): number => {
    const off = strLen;
    strs.push(Buffer.from(`${s}\0`, 'latin1'));
    strLen += s.length + 1;
    return off;
  };
  const types: Buffer[] = [];
  const type = (nameOff: number, kind: number, vlen: number, sizeOrType: number, trailer: Buffer = Buffer.alloc(0)): void => {
    const t = Buffer.alloc(12);
    t.writeUInt32LE(nameOff, 0);
    t.writeUInt32LE(((kind & 0x1f) << 24) | vlen, 4);
    t.writeUInt32LE(sizeOrType, 8);
    types.push(t, trailer);
  };
  const intTrailer = Buffer.alloc(4);
  intTrailer.writeUInt32LE(32, 0); // 32 bits, no encoding
  type(str('int'), 1, 0, 4, intTrailer); // type id 1
  type(0, 2, 0, 1); // an anonymous pointer, no trailer
  for (const t of typedefs) type(str(t), 8, 0, 1);
  for (const [name, values] of Object.entries(enums)) {
    const vals = Buffer.alloc(8 * values.length);
    values.forEach((v, i) => {
      vals.writeUInt32LE(str(v), 8 * i);
      vals.writeInt32LE(i, 8 * i + 4);
    });
    type(str(name), 6, values.length, 4, vals);
  }
  // A struct with two members between them, so that the walk must skip vlen * 12 bytes.
  const members = Buffer.alloc(24);
  members.writeUInt32LE(str('a'), 0);
  members.writeUInt32LE(1, 4);
  members.writeUInt32LE(str('b'), 12);
  members.writeUInt32LE(1, 16);
  members.writeUInt32LE(32, 20);
  type(str('pair'), 4, 2, 8, members);
  types.push(...extra);
  const typeSec = Buffer.concat(types);
  const strSec = Buffer.concat(strs);
  const hdr = Buffer.alloc(24);
  hdr.writeUInt16LE(0xeb9f, 0);
  hdr.writeUInt8(1, 2);
  hdr.writeUInt32LE(24, 4);
  hdr.writeUInt32LE(0, 8);
  hdr.writeUInt32LE(typeSec.length, 12);
  hdr.writeUInt32LE(typeSec.length, 16);
  hdr.writeUInt32LE(strSec.length, 20);
  return Buffer.concat([hdr, typeSec, strSec]);
}

/** Every name KERNEL_FEATURES looks for, as a kernel that has them all would have them. */
function complete(): { typedefs: string[]; enums: Record<string, string[]> } {
  const typedefs = ['btf_trace_sched_switch'];
  const enums: Record<string, string[]> = { bpf_func_id: ['BPF_FUNC_unspec'], bpf_map_type: ['BPF_MAP_TYPE_UNSPEC'], other: ['BPF_FUNC_loop'] };
  for (const f of KERNEL_FEATURES) {
    if ('typedefs' in f) typedefs.push(...f.typedefs);
    if ('funcs' in f) enums.bpf_func_id!.push(...f.funcs.map((h) => `BPF_FUNC_${h}`));
    if ('maps' in f) enums.bpf_map_type!.push(...f.maps.map((m) => `BPF_MAP_TYPE_${m}`));
  }
  return { typedefs, enums };
}

/** `btf` with each occurrence of the string `name` (NUL-delimited) renamed to one of the same length. */
function rename(btf: Buffer, name: string): Buffer {
  const out = Buffer.from(btf);
  const needle = Buffer.from(`\0${name}\0`);
  let n = 0;
  for (let at = out.indexOf(needle); at >= 0; at = out.indexOf(needle, at + 1)) {
    out.write('X', at + 1); // BPF_FUNC_loop -> XPF_FUNC_loop
    n++;
  }
  assert.ok(n > 0, `${name} is not in the blob`);
  return out;
}

describe('kernel features from BTF (preflight)', () => {
  it('a blob with every name: nothing missing, no error', () => {
    const { typedefs, enums } = complete();
    const btf = makeBtf(typedefs, enums);
    const names = btfNames(btf);
    assert.ok(names.typedefs.has('btf_trace_sys_enter'));
    assert.ok(names.enums.get('bpf_func_id')!.has('BPF_FUNC_loop'));
    assert.deepStrictEqual(missingKernelFeatures(names), []);
    assert.strictEqual(kernelFeatureProblem(btf, '6.1.0'), undefined);
  });

  it('each feature, its names removed, is the one reported, with its version', () => {
    for (const f of KERNEL_FEATURES) {
      const { typedefs, enums } = complete();
      const drop = new Set<string>([
        ...('typedefs' in f ? f.typedefs : []),
        ...('funcs' in f ? f.funcs.map((h) => `BPF_FUNC_${h}`) : []),
        ...('maps' in f ? f.maps.map((m) => `BPF_MAP_TYPE_${m}`) : []),
      ]);
      const btf = makeBtf(
        typedefs.filter((t) => !drop.has(t)),
        Object.fromEntries(Object.entries(enums).map(([k, v]) => [k, v.filter((x) => !drop.has(x))])),
      );
      const missing = missingKernelFeatures(btfNames(btf));
      assert.deepStrictEqual(missing.map((m) => m.feature.what), [f.what]);
      const e = kernelFeatureProblem(btf, '5.4.0-test');
      assert.ok(e, f.what);
      assert.ok(e.message.includes(`${f.what} (Linux ${f.since}`), e.message);
      assert.ok(e.message.includes('5.4.0-test'), e.message);
      assert.ok(!e.message.includes('\n') && !e.fix.includes('\n'));
    }
  });

  it('a name in another enum, or only in the strings, does not count', () => {
    const { typedefs, enums } = complete();
    enums.bpf_func_id = enums.bpf_func_id!.filter((x) => x !== 'BPF_FUNC_loop'); // still in enum "other"
    const missing = missingKernelFeatures(btfNames(makeBtf(typedefs, enums)));
    assert.deepStrictEqual(missing.map((m) => m.missing), ['BPF_FUNC_loop']);
  });

  it('a 5.10-like kernel (no bpf_loop, no task storage): one line naming both, and the newest version in the fix', () => {
    const { typedefs, enums } = complete();
    const gone = new Set(['BPF_FUNC_loop', 'BPF_FUNC_task_storage_get', 'BPF_FUNC_task_storage_delete', 'BPF_MAP_TYPE_TASK_STORAGE', 'BPF_FUNC_get_current_task_btf']);
    for (const k of Object.keys(enums)) enums[k] = enums[k]!.filter((x) => !gone.has(x));
    const e = kernelFeatureProblem(makeBtf(typedefs, enums), '5.10.0-35-amd64')!;
    assert.match(e.message, /^this kernel \(5\.10\.0-35-amd64\) lacks task local storage \(Linux 5\.11; no BPF_MAP_TYPE_TASK_STORAGE in its BTF\), bpf_get_current_task_btf \(Linux 5\.11;.*, bpf_loop \(Linux 5\.17; no BPF_FUNC_loop in its BTF\), which the helper's eBPF program needs$/);
    assert.match(e.fix, /^run it on Linux 5\.17 or later/);
  });

  it('blobs it cannot walk are errors of the reader, and the preflight then lets loading decide', () => {
    assert.throws(() => btfNames(Buffer.from('not btf at all, not at all')), /magic/);
    const { typedefs, enums } = complete();
    const future = Buffer.alloc(12);
    future.writeUInt32LE(30 << 24, 4); // kind 30: not yet defined
    assert.throws(() => btfNames(makeBtf(typedefs, enums, [future])), /kind 30/);
    const cut = makeBtf(typedefs, enums).subarray(0, 100);
    assert.throws(() => btfNames(cut), /past the end/);
    assert.strictEqual(kernelFeatureProblem(cut, '6.1.0'), undefined);
  });

  describe("this machine's /sys/kernel/btf/vmlinux", function () {
    let vmlinux: Buffer;
    before(function () {
      try {
        vmlinux = fs.readFileSync('/sys/kernel/btf/vmlinux');
      } catch {
        if (process.env.CI === 'true') throw new Error('/sys/kernel/btf/vmlinux is unreadable under CI=true');
        this.skip();
      }
    });

    it('has every feature (this machine runs the kernel tests)', () => {
      const names = btfNames(vmlinux);
      assert.ok(names.enums.get('bpf_func_id')!.size > 150, `${names.enums.get('bpf_func_id')!.size} helpers`);
      assert.ok(names.typedefs.size > 500, `${names.typedefs.size} tracepoint typedefs`);
      assert.deepStrictEqual(missingKernelFeatures(names), []);
    });

    it('with BPF_FUNC_loop renamed away: bpf_loop (Linux 5.17) is missing, and nothing else', () => {
      const e = kernelFeatureProblem(rename(vmlinux, 'BPF_FUNC_loop'), 'renamed');
      assert.ok(e);
      assert.strictEqual(e.message, "this kernel (renamed) lacks bpf_loop (Linux 5.17; no BPF_FUNC_loop in its BTF), which the helper's eBPF program needs");
    });

    it('with btf_trace_sys_enter and BPF_MAP_TYPE_RINGBUF renamed away: tp_btf and the ring buffer', () => {
      const btf = rename(rename(vmlinux, 'btf_trace_sys_enter'), 'BPF_MAP_TYPE_RINGBUF');
      const missing = missingKernelFeatures(btfNames(btf));
      assert.deepStrictEqual(missing.map((m) => m.missing), ['btf_trace_sys_enter', 'BPF_MAP_TYPE_RINGBUF']);
    });
  });
});
