// btf.ts: the few names the helper looks up in the kernel's BTF (/sys/kernel/btf/vmlinux) to
// tell, before loading anything, whether this kernel has the BPF features its program uses.
// Written by hand: the format is a header, a type section and a string section
// (Documentation/bpf/btf.rst), walking it takes fifty lines, and no maintained npm package reads
// BTF (libbpf would, but only through the addon, which must not be needed for this check).

/** Names found in a BTF blob: tp_btf typedefs, and the enumerators of each named enum. */
export interface BtfNames {
  /** The btf_trace_<tracepoint> typedefs (the only typedefs kept: decoding all costs time). */
  typedefs: Set<string>;
  /** Enum name → its enumerators' names (enum bpf_func_id → BPF_FUNC_loop, …), for the enums asked for. */
  enums: Map<string, Set<string>>;
}

const BTF_MAGIC = 0xeb9f;
// Bytes that follow struct btf_type (12 bytes) for each kind, given vlen (include/uapi/linux/btf.h).
const TRAILER: Record<number, (vlen: number) => number> = {
  1: () => 4, // INT
  2: () => 0, // PTR
  3: () => 12, // ARRAY
  4: (n) => 12 * n, // STRUCT
  5: (n) => 12 * n, // UNION
  6: (n) => 8 * n, // ENUM
  7: () => 0, // FWD
  8: () => 0, // TYPEDEF
  9: () => 0, // VOLATILE
  10: () => 0, // CONST
  11: () => 0, // RESTRICT
  12: () => 0, // FUNC
  13: (n) => 8 * n, // FUNC_PROTO
  14: () => 4, // VAR
  15: (n) => 12 * n, // DATASEC
  16: () => 0, // FLOAT
  17: () => 4, // DECL_TAG
  18: () => 0, // TYPE_TAG
  19: (n) => 12 * n, // ENUM64
};
const KIND_TYPEDEF = 8;
const KIND_ENUM = 6;
const KIND_ENUM64 = 19;
const TRACE_PREFIX = Buffer.from('btf_trace_');

/**
 * The tracepoint typedefs and enum names of a raw BTF blob. Throws on a blob it cannot walk (bad magic,
 * a kind newer than this reader, offsets outside the blob): the caller then cannot tell.
 */
export function btfNames(btf: Buffer, enums: readonly string[] = ['bpf_func_id', 'bpf_map_type']): BtfNames {
  if (btf.length < 24 || btf.readUInt16LE(0) !== BTF_MAGIC) throw new Error('not BTF (no 0xeB9F magic)');
  const hdrLen = btf.readUInt32LE(4);
  const typeOff = hdrLen + btf.readUInt32LE(8);
  const typeEnd = typeOff + btf.readUInt32LE(12);
  const strOff = hdrLen + btf.readUInt32LE(16);
  const strEnd = strOff + btf.readUInt32LE(20);
  if (typeEnd > btf.length || strEnd > btf.length) throw new Error('BTF sections run past the end of the blob');
  const name = (off: number): string => {
    const at = strOff + off;
    if (off === 0 || at >= strEnd) return '';
    const end = btf.indexOf(0, at);
    return btf.toString('latin1', at, end < 0 || end > strEnd ? strEnd : end);
  };
  const out: BtfNames = { typedefs: new Set(), enums: new Map() };
  for (let p = typeOff; p < typeEnd; ) {
    const nameOff = btf.readUInt32LE(p);
    const info = btf.readUInt32LE(p + 4);
    const kind = (info >>> 24) & 0x1f;
    const vlen = info & 0xffff;
    const trailer = TRAILER[kind];
    if (!trailer) throw new Error(`BTF kind ${kind} is newer than this reader`);
    const at = strOff + nameOff;
    if (kind === KIND_TYPEDEF && btf.compare(TRACE_PREFIX, 0, TRACE_PREFIX.length, at, Math.min(at + TRACE_PREFIX.length, strEnd)) === 0) {
      out.typedefs.add(name(nameOff));
    }
    if ((kind === KIND_ENUM || kind === KIND_ENUM64) && nameOff !== 0 && enums.includes(name(nameOff))) {
      const values = new Set<string>();
      const step = kind === KIND_ENUM ? 8 : 12;
      for (let i = 0; i < vlen; i++) values.add(name(btf.readUInt32LE(p + 12 + i * step)));
      out.enums.set(name(nameOff), values);
    }
    p += 12 + trailer(vlen);
  }
  return out;
}

/**
 * The kernel features the BPF program relies on, each with the BTF names that show the kernel
 * has it: a helper is its enumerator in enum bpf_func_id, a map type its enumerator in enum
 * bpf_map_type, a tp_btf attach point the btf_trace_<tracepoint> typedef libbpf resolves.
 * Looked up by name rather than by version, because distributions backport BPF features (RHEL
 * 9's 5.14 has bpf_loop). docs/kernels.md has the same table, with what each is used for.
 */
export const KERNEL_FEATURES = [
  {
    what: 'BTF-typed tracepoints (tp_btf) on sched_process_exec, sched_process_exit and sys_enter',
    since: '5.5',
    typedefs: ['btf_trace_sched_process_exec', 'btf_trace_sched_process_exit', 'btf_trace_sys_enter'],
  },
  { what: 'bpf_probe_read_user and bpf_probe_read_kernel', since: '5.5', funcs: ['probe_read_user', 'probe_read_user_str', 'probe_read_kernel', 'probe_read_kernel_str'] },
  { what: 'the BPF ring buffer', since: '5.8', maps: ['RINGBUF'], funcs: ['ringbuf_reserve', 'ringbuf_submit', 'ringbuf_discard', 'ringbuf_query'] },
  { what: 'task local storage', since: '5.11', maps: ['TASK_STORAGE'], funcs: ['task_storage_get', 'task_storage_delete'] },
  { what: 'bpf_get_current_task_btf', since: '5.11', funcs: ['get_current_task_btf'] },
  { what: 'bpf_loop', since: '5.17', funcs: ['loop'] },
] as const satisfies readonly { what: string; since: string; typedefs?: readonly string[]; funcs?: readonly string[]; maps?: readonly string[] }[];

export type KernelFeature = (typeof KERNEL_FEATURES)[number];

/** Which KERNEL_FEATURES the BTF names lack, each with the first name not found. */
export function missingKernelFeatures(names: BtfNames): { feature: KernelFeature; missing: string }[] {
  const funcs = names.enums.get('bpf_func_id') ?? new Set<string>();
  const maps = names.enums.get('bpf_map_type') ?? new Set<string>();
  const out: { feature: KernelFeature; missing: string }[] = [];
  for (const f of KERNEL_FEATURES) {
    const lacking = [
      ...('typedefs' in f ? f.typedefs.filter((t) => !names.typedefs.has(t)) : []),
      ...('maps' in f ? f.maps.map((m) => `BPF_MAP_TYPE_${m}`).filter((m) => !maps.has(m)) : []),
      ...('funcs' in f ? f.funcs.map((h) => `BPF_FUNC_${h}`).filter((h) => !funcs.has(h)) : []),
    ];
    if (lacking.length > 0) out.push({ feature: f, missing: lacking[0]! });
  }
  return out;
}

/** Whether version a ("5.17") is above b. */
export function versionAbove(a: string, b: string): boolean {
  const [x, y] = [a, b].map((v) => v.split('.').map(Number));
  return x![0] !== y![0] ? x![0]! > y![0]! : x![1]! > y![1]!;
}
