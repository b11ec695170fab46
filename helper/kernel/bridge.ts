// bridge.ts: the typed face of bridge/ (the native addon over libbpf) and its only importer.
// It finds the built addon, validates arguments before they cross, and turns the addon's
// errors into BridgeError {code, op, target, errno, log}.
import * as fs from 'fs';

import { ADDON_PATH, BPF_OBJECT_PATH, PACKAGE_ROOT } from '../package';
import { BridgeError } from '../errors';

export { ADDON_PATH, BPF_OBJECT_PATH, BridgeError, PACKAGE_ROOT };


export interface UprobeOptions {
  /** Symbol to attach at; `offset` is then relative to it. */
  func?: string;
  /** File offset (or offset from `func`). */
  offset?: number;
  /** Only this process; -1 (default) for every process mapping the file. */
  pid?: number;
  retprobe?: boolean;
}

export interface RingOptions {
  /** A batch is handed over once it holds this many bytes (default 1 MiB). */
  batchBytes?: number;
  /** Batches JavaScript may have pending before the ring thread waits (default 16). */
  queue?: number;
  /**
   * How many buffers (default 4), allocated once, the ring thread fills in turn: `onBatch` gets
   * a view that is valid only until it returns (copy what must outlive the call).
   */
  reuse?: number;
  /** Also drain the ring this often, in ms (needed when BPF wakes the thread only past a watermark). */
  drainMs?: number;
  /**
   * Called on the event loop if the ring thread ends on its own (a failed epoll_wait, say):
   * from then on no record arrives, and the error says which call failed and why.
   */
  onError?: (e: BridgeError) => void;
}

export interface RingStats {
  batches: number;
  records: number;
  bytes: number;
  /** Records that crossed the end of the ring's data and were put together from two pieces. */
  wrapped: number;
}

interface NativeCapture {
  attachUprobe(prog: string, file: string, opts: UprobeOptions): number;
  attach(prog: string): number;
  detach(id: number): boolean;
  detachMany(ids: number[]): number;
  mapLookup(map: string, key: Buffer): Buffer | null;
  mapUpdate(map: string, key: Buffer, value: Buffer): void;
  mapDelete(map: string, key: Buffer): boolean;
  mapKeys(map: string): Buffer[];
  startRing(map: string, onBatch: (batch: Buffer, records: number, used: number) => void, opts: RingOptions): void;
  stopRing(): Promise<void>;
  ringStats(): RingStats;
  ringPending(): number;
  close(): void;
}

interface Addon {
  Capture: new (
    objectPath: string,
    opts: { consts: Record<string, number | bigint>; maxEntries: Record<string, number> },
  ) => NativeCapture;
  clock(): [bigint, bigint];
  possibleCpus(): number;
  libbpfVersion(): string;
  pinMmapThreshold(bytes: number): boolean;
}

/**
 * Buffers at least this large get their own mmap from glibc and go back to the kernel when
 * freed. By default glibc raises that threshold to the size of each large block freed (up to
 * 32 MiB), so once the first 256 KiB body is freed, later bodies, batches and rendered output
 * are carved from the brk heap, which fragments and never shrinks. Pinned, the standalone
 * command's peak RSS under 256 KiB and 64 KiB bodies was 8-25 MiB lower at the same CPU
 * (README, overload). Set once, when the addon loads: only the capture process loads it.
 */
export const MMAP_THRESHOLD = 128 << 10;
let thresholdPinned = false;

/** Whether glibc took MMAP_THRESHOLD (after the addon loaded; false on a libc without mallopt). */
export function mmapThresholdPinned(): boolean {
  load();
  return thresholdPinned;
}

let addon: Addon | undefined;

function load(): Addon {
  if (!addon) {
    if (!fs.existsSync(ADDON_PATH)) {
      throw new BridgeError(
        `the native bridge is not built (${ADDON_PATH})`,
        'ENOENT',
        2,
        'load addon',
        ADDON_PATH,
        '',
      );
    }
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    addon = require(ADDON_PATH) as Addon;
    thresholdPinned = addon.pinMmapThreshold(MMAP_THRESHOLD);
  }
  return addon;
}

function wrap<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw toBridgeError(e);
  }
}

function toBridgeError(e: unknown): unknown {
  if (e instanceof Error && typeof (e as { op?: unknown }).op === 'string') {
    const x = e as Error & { code: string; errno: number; op: string; target: string; log: string };
    return new BridgeError(x.message, x.code, x.errno, x.op, x.target, x.log);
  }
  return e;
}

/** Nanoseconds to add to a BPF (CLOCK_MONOTONIC) timestamp to get Unix wall-clock time. */
export function monotonicToWallOffset(): bigint {
  const [real, mono] = load().clock();
  return real - mono;
}

export function possibleCpus(): number {
  return load().possibleCpus();
}

export function libbpfVersion(): string {
  return load().libbpfVersion();
}

/**
 * One loaded BPF object. Owns its probes (links), its ring-buffer thread and its maps;
 * `close()` releases all of them. The kernel releases them too if the process dies,
 * because nothing is pinned.
 */
export class BpfObject {
  private readonly native: NativeCapture;
  private closed = false;

  constructor(
    objectPath: string,
    opts: { consts?: Record<string, number | bigint>; maxEntries?: Record<string, number> } = {},
  ) {
    const a = load();
    this.native = wrap(() => new a.Capture(objectPath, { consts: opts.consts ?? {}, maxEntries: opts.maxEntries ?? {} }));
  }

  /** Attaches `prog` to a function or offset of an executable or library; returns a link id. */
  attachUprobe(prog: string, file: string, opts: UprobeOptions): number {
    if (opts.func === undefined && opts.offset === undefined) throw new TypeError('attachUprobe needs func or offset');
    if (opts.offset !== undefined && (!Number.isSafeInteger(opts.offset) || opts.offset < 0)) {
      throw new TypeError(`attachUprobe: bad offset ${opts.offset}`);
    }
    return wrap(() => this.native.attachUprobe(prog, file, opts));
  }

  /** Attaches a program whose section names its attach point (tp_btf/…, raw_tp/…). */
  attach(prog: string): number {
    return wrap(() => this.native.attach(prog));
  }

  detach(linkId: number): boolean {
    return this.native.detach(linkId);
  }

  /** Detaches several probes at once (their kernel-side waits overlap); returns how many. */
  detachMany(linkIds: number[]): number {
    return this.native.detachMany(linkIds);
  }

  lookup(map: string, key: Buffer): Buffer | null {
    return wrap(() => this.native.mapLookup(map, key));
  }

  update(map: string, key: Buffer, value: Buffer): void {
    wrap(() => this.native.mapUpdate(map, key, value));
  }

  delete(map: string, key: Buffer): boolean {
    return wrap(() => this.native.mapDelete(map, key));
  }

  keys(map: string): Buffer[] {
    return wrap(() => this.native.mapKeys(map));
  }

  /**
   * Starts the native thread that drains ring buffer `map` and calls `onBatch` on the event
   * loop with a buffer of whole records, back to back (each starts with its u32 size).
   */
  startRing(map: string, onBatch: (batch: Buffer, records: number) => void, opts: RingOptions = {}): void {
    if (opts.reuse !== undefined && (!Number.isInteger(opts.reuse) || opts.reuse < 1 || opts.reuse > 64)) throw new TypeError(`startRing: reuse must be 1..64, not ${opts.reuse}`);
    const safe = (batch: Buffer, records: number, used: number): void => {
      try {
        onBatch(batch.subarray(0, used), records);
      } catch (e) {
        process.nextTick(() => {
          throw e;
        });
      }
    };
    const { onError } = opts;
    const native = onError ? { ...opts, onError: (e: unknown) => onError(toBridgeError(e) as BridgeError) } : opts;
    wrap(() => this.native.startRing(map, safe, native));
  }

  /** Resolves once everything in the ring has been delivered and the thread has ended. */
  stopRing(): Promise<void> {
    return this.native.stopRing();
  }

  ringStats(): RingStats {
    return this.native.ringStats();
  }

  /** Bytes waiting in the ring buffer now (its producer and consumer positions; no syscall). */
  ringPending(): number {
    return this.native.ringPending();
  }

  /** Detaches every probe and frees the object (after the ring thread, if running, ends). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.native.close();
  }
}
