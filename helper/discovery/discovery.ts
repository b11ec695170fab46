// discovery.ts: keeps the probes on every OpenSSL library file (and executable with OpenSSL
// linked in, such as /usr/bin/node) that matters, as files appear,
// change and go. Sources, fastest first: the kernel's report of a process opening a file
// named libssl.so*, libgnutls.so*, libssl3.so or libnspr4.so (before the loader maps it), exec reports (targeted mode), a /proc scan at
// start and every `pollMs` as the safety net, the linker cache, and file watches (chokidar)
// that notice a library replaced by an upgrade.
//
// System-wide (default): one attachment per file (device, inode) for all processes, so a
// process started later is covered before its first call. Targeted (--pid/--comm): probes
// planted only in target processes, so the others pay nothing.
import * as chokidar from 'chokidar';
import * as fs from 'fs';
import * as path from 'path';
import { AttachResult, Capture, ProbeMode } from '../kernel/capture';
import { fileVersion, findTlsLibraries, LibraryFile, libraryKind, mappedFiles, mappedLibraries, statKey, TlsKind, tlsExecutableAt, tlsExecutables, tlsKindIn, unknownTlsIn } from './libraries';
import { CaptureRecord, kernelComm } from '../records/records';

export interface DiscoveryReport {
  attached(lib: LibraryFile, result: AttachResult, pid: number): void;
  failed(lib: LibraryFile, reason: string, pid: number): void;
  detached(lib: LibraryFile, why: string, pid: number): void;
  /** Something people should know about a file with probes (deleted or replaced on disk). */
  note?(lib: LibraryFile, message: string): void;
  /**
   * A process runs an executable with TLS code inside that no planner can probe (a static,
   * stripped OpenSSL; a TLS library the helper does not know): reported once per file, with
   * the first process seen running it.
   */
  unsupported?(exe: { path: string; dev: number; ino: number }, reason: string, pid: number): void;
}

export interface DiscoveryOptions {
  /** Library files named by the user (--library). */
  extra?: string[];
  /** /proc rescan interval in ms (0: never). */
  pollMs?: number;
  /** Targeted mode: only these pids and process names get probes. */
  targets?: { pids: number[]; comms: string[] };
  mode?: ProbeMode;
  /** Only these kinds of TLS code (default: all). */
  kinds?: TlsKind[];
}

interface Known {
  lib: LibraryFile;
  /** Replaced on disk by another file, or deleted: detached once no process maps it. */
  replaced: boolean;
  /** Deleted, with no file at its path when that was noticed. */
  deleted?: boolean;
}

const key = (dev: number, ino: number): string => `${dev}:${ino}`;

const stat = statKey;

export class Discovery {
  private readonly files = new Map<string, Known>();
  /** Targeted mode: target pid → file keys with probes planted for it. */
  private readonly targets = new Map<number, Set<string>>();
  /** Targeted mode: the system's library files, planted in a new target at its exec. */
  private common: LibraryFile[] = [];
  private watcher?: chokidar.FSWatcher;
  private timer?: NodeJS.Timeout;
  private readonly selfPid = process.pid;
  /** Executables already judged for OpenSSL inside, by device:inode. */
  private readonly judged = new Set<string>();
  /** Files that could not be probed, with their size and mtime then: tried again once changed. */
  private readonly failedAs = new Map<string, string>();
  /** Executables with TLS code no planner knows (device:inode → why), and those reported. */
  private readonly unknownTls = new Map<string, string>();
  private readonly unknownReported = new Set<string>();

  /**
   * Judges an executable for TLS code, as tlsKindIn does, and, when it has none the planners
   * know, looks for TLS in its data (libraries.ts unknownTlsIn): read once per file, as part of
   * the judgement every executable gets anyway (a few ms; the labels are searched in its data
   * segments only).
   */
  private readonly judge = (p: string): TlsKind | null | undefined => {
    const kind = tlsKindIn(p);
    if (kind === null) {
      const why = unknownTlsIn(p);
      const st = why ? stat(p) : undefined;
      if (why && st) this.unknownTls.set(key(st.dev, st.ino), why);
    }
    return kind;
  };

  constructor(
    private readonly capture: Capture,
    private readonly opts: DiscoveryOptions,
    private readonly report: DiscoveryReport,
  ) {}

  get targeted(): boolean {
    return this.opts.targets !== undefined;
  }

  /** First attachments; throws nothing (each failure is reported). */
  start(): void {
    // A library being copied into place is reported once its size has held for 200 ms: read
    // while half written it would plan, and fail, as some other file.
    this.watcher = chokidar.watch([], { ignoreInitial: true, persistent: false, atomic: false, awaitWriteFinish: { stabilityThreshold: 200, pollInterval: 50 } });
    this.watcher.on('add', (p) => this.fileChanged(p)).on('change', (p) => this.fileChanged(p));
    this.watcher.on('unlink', (p) => {
      for (const known of this.files.values()) if (!known.replaced && known.lib.path === p) this.checkOnDisk(known);
    });
    if (this.targeted) {
      this.common = findTlsLibraries(this.opts.extra ?? []);
      // Decoding a library takes tens of ms once; a new target must get its probes in ~1 ms.
      for (const lib of this.common) this.capture.prepare(lib, this.opts.mode ?? 'auto');
      for (const pid of this.opts.targets!.pids) this.addTarget(pid);
      for (const pid of this.pidsByComm()) this.addTarget(pid);
    } else {
      for (const lib of findTlsLibraries(this.opts.extra ?? [])) this.attachFile(lib);
      this.scanExecutables();
    }
    if (this.opts.pollMs) {
      this.timer = setInterval(() => this.poll(), this.opts.pollMs);
      this.timer.unref();
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.watcher?.close();
  }

  /** Feed every capture record here: lib-open, exec and exit records drive discovery. */
  onRecord(r: CaptureRecord): void {
    if (r.kind === 'lib-open') this.libraryOpened(r.pid, r.path);
    else if (r.kind === 'exec' && this.targeted && this.isTargetComm(r.comm)) this.addTarget(r.pid, true);
    else if (r.kind === 'exec' && !this.targeted) this.executed(r.pid, r.path);
    else if (r.kind === 'exit' && this.targets.has(r.pid)) this.dropTarget(r.pid, 'target process exited');
  }

  /** The safety net: new library files in /proc/<pid>/maps; replaced files nobody maps any more. */
  poll(): void {
    const mapped = mappedLibraries();
    const mappedKeys = new Set<string>();
    for (const m of mapped) {
      const st = stat(m.path);
      if (!st) continue;
      mappedKeys.add(key(st.dev, st.ino));
      if (this.targeted) {
        if (this.targets.has(m.pid)) this.attachFor(m.pid, { path: m.path, ...st, source: 'maps', kind: libraryKind(m.path) });
      } else if (!this.files.has(key(st.dev, st.ino))) {
        this.attachFile({ path: m.path, ...st, source: 'maps', kind: libraryKind(m.path) });
      }
    }
    if (!this.targeted) this.scanExecutables();
    if (this.targeted) {
      for (const pid of this.pidsByComm()) if (!this.targets.has(pid)) this.addTarget(pid);
      for (const pid of [...this.targets.keys()]) if (!fs.existsSync(`/proc/${pid}`)) this.dropTarget(pid, 'target process is gone');
    }
    // A file whose path no longer leads to it was deleted or replaced: its probes stay while a
    // process maps it (they keep capturing there), and go once none does, which also lets the
    // kernel free the deleted file.
    for (const known of this.files.values()) if (!known.replaced) this.checkOnDisk(known);
    const gone = [...this.files].filter(([k, known]) => known.replaced && !mappedKeys.has(k));
    const stillMapped = mappedFiles(new Set(gone.map(([k]) => k)));
    for (const [k, known] of gone) {
      if (stillMapped.has(k)) continue;
      this.capture.detachLibrary(known.lib.path);
      this.files.delete(k);
      this.report.detached(known.lib, `${known.deleted ? 'deleted' : 'replaced'} on disk and no longer mapped by any process`, -1);
    }
  }

  /**
   * Marks a file with probes as replaced (another file at its path) or deleted (none), and
   * says so once. Files reached through /proc/<pid>/root are left alone: their path ends with
   * that process, not with the file.
   */
  private checkOnDisk(known: Known, replacedBy?: LibraryFile): void {
    if (!replacedBy && known.lib.path.startsWith('/proc/')) return;
    const now = replacedBy ?? stat(known.lib.path);
    if (now && now.dev === known.lib.dev && now.ino === known.lib.ino) return;
    known.replaced = true;
    known.deleted = !now;
    const what = now ? 'replaced by another file' : 'deleted';
    this.report.note?.(known.lib, `${known.lib.path} was ${what} on disk; its probes stay while processes map it`);
    this.rekeyReplaced(known);
  }

  // ---- system-wide ------------------------------------------------------------------

  private wanted(lib: LibraryFile): boolean {
    return !this.opts.kinds || this.opts.kinds.includes(lib.kind);
  }

  private attachFile(lib: LibraryFile): void {
    const k = key(lib.dev, lib.ino);
    if (this.files.has(k) || !this.wanted(lib)) return;
    const now = fileVersion(lib.path);
    if (this.failedAs.get(k) === now) return; // the same file failed before
    // Another file under this path before: replaced on disk. Its probes stay (processes may
    // still map it) but move aside, and go once nobody maps it (poll()).
    for (const known of this.files.values()) {
      if (known.lib.path === lib.path) this.checkOnDisk(known, lib);
    }
    this.files.set(k, { lib, replaced: false });
    try {
      this.report.attached(lib, this.capture.attachLibrary(lib, this.opts.mode ?? 'auto'), -1);
      if (!lib.path.startsWith('/proc/')) this.watcher?.add(lib.path);
    } catch (e) {
      // Not for good: a file caught while being written gets another try once it has changed.
      this.files.delete(k);
      this.failedAs.set(k, now);
      this.report.failed(lib, e instanceof Error ? e.message : String(e), -1);
    }
  }

  /**
   * A program started: its executable gets probes if it has TLS code inside (node, Go). A
   * process already gone (a short client) is judged by the path it executed, so its next run
   * is covered.
   */
  private executed(pid: number, file: string): void {
    if (pid === this.selfPid) return;
    const exe = tlsExecutableAt(`/proc/${pid}/exe`, this.judged, this.judge) ?? (path.isAbsolute(file) ? tlsExecutableAt(file, this.judged, this.judge) : undefined);
    if (exe) this.attachFile(exe);
    else this.reportUnknown(pid, path.isAbsolute(file) ? file : undefined);
  }

  /** Executables of running processes: probes for those with TLS code inside, a report for those with TLS code no planner knows. */
  private scanExecutables(): void {
    let pids: number[];
    try {
      pids = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number);
    } catch {
      return;
    }
    // Our own executable too: /usr/bin/node is probed for the other node processes, now and later.
    for (const pid of pids) {
      const exe = tlsExecutableAt(`/proc/${pid}/exe`, this.judged, this.judge);
      if (exe) this.attachFile(exe);
      else this.reportUnknown(pid);
    }
  }

  /**
   * Says once per file that process `pid` runs TLS code no planner knows, if its executable
   * (or `file`, the path it executed, when it is already gone) was judged so.
   */
  private reportUnknown(pid: number, file?: string): void {
    if (this.unknownTls.size === 0 || pid === this.selfPid) return;
    let exe: string | undefined;
    try {
      exe = fs.readlinkSync(`/proc/${pid}/exe`);
    } catch {
      exe = file;
    }
    const st = (exe && stat(`/proc/${pid}/exe`)) || (exe ? stat(exe) : undefined);
    if (!exe || !st) return;
    const k = key(st.dev, st.ino);
    const why = this.unknownTls.get(k);
    if (!why || this.unknownReported.has(k)) return;
    this.unknownReported.add(k);
    this.report.unsupported?.({ path: exe, ...st }, why, pid);
  }

  /** A watched library path changed: if it is another file now, that file gets probes too. */
  private fileChanged(p: string): void {
    const st = stat(p);
    if (!st || this.targeted) return;
    this.attachFile({ path: p, ...st, source: 'maps', kind: libraryKind(p) });
  }

  /** Probes are kept by path: move a replaced file's probes out of the way of its successor. */
  private rekeyReplaced(known: Known): void {
    // The kernel holds the old inode through the probes themselves; only our book-keeping
    // changes name, so that detaching later finds them.
    const oldPath = known.lib.path;
    const alias = `${oldPath} (replaced ${known.lib.dev}:${known.lib.ino})`;
    this.capture.renameLibrary(oldPath, alias);
    known.lib = { ...known.lib, path: alias };
  }

  /** A process opens a file named libssl.so* or libgnutls.so*: attach before the loader maps it. */
  private libraryOpened(pid: number, given: string): void {
    if (pid === this.selfPid) return;
    if (this.targeted && !this.targets.has(pid)) return;
    let abs = given;
    if (!path.isAbsolute(given)) {
      try {
        abs = path.join(fs.readlinkSync(`/proc/${pid}/cwd`), given);
      } catch {
        return; // the process is gone
      }
    }
    // Through the process's root: right in any mount namespace, and the same file here.
    const viaRoot = `/proc/${pid}/root${abs}`;
    const st = stat(viaRoot);
    if (!st) return; // the loader tries paths that do not exist
    const plain = stat(abs);
    const p = plain && plain.dev === st.dev && plain.ino === st.ino ? abs : viaRoot;
    const lib: LibraryFile = { path: p, ...st, source: 'maps', kind: libraryKind(abs) };
    if (this.targeted) this.attachFor(pid, lib);
    else this.attachFile(lib);
  }

  // ---- targeted -----------------------------------------------------------------------

  private isTargetComm(comm: string): boolean {
    return (this.opts.targets?.comms ?? []).some((c) => kernelComm(c) === comm);
  }

  private pidsByComm(): number[] {
    if (!this.opts.targets?.comms.length) return [];
    const pids: number[] = [];
    for (const d of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(d) || Number(d) === this.selfPid) continue;
      try {
        if (this.isTargetComm(fs.readFileSync(`/proc/${d}/comm`, 'utf8').replace(/\n$/, ''))) pids.push(Number(d));
      } catch {
        // gone
      }
    }
    return pids;
  }

  /**
   * Plants probes in a target process. At its exec (`fresh`) nothing is mapped yet: the probes
   * go on the system's library files, and the kernel arms them when the loader maps one, so
   * the first call is seen. Files it opens later come through libraryOpened().
   */
  private addTarget(pid: number, fresh = false): void {
    if (!this.targets.has(pid)) this.targets.set(pid, new Set());
    if (fresh) for (const lib of this.common) this.attachFor(pid, lib);
    // Its executable, if it has TLS code inside (node's OpenSSL, Go's crypto/tls).
    const exes = tlsExecutables(new Set(), [pid], this.judge);
    for (const exe of exes) this.attachFor(pid, exe);
    if (!exes.length) this.reportUnknown(pid);
    let maps = '';
    try {
      maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
    } catch {
      return; // not yet, or gone: its lib-open report or the next poll will do
    }
    for (const line of maps.split('\n')) {
      const m = /^\S+ \S+ \S+ \S+ (\d+)\s+(\/.*lib(?:ssl|gnutls|ssl3|nspr4)\.so[^/]*)$/.exec(line);
      if (m) this.libraryOpened(pid, m[2]!);
    }
  }

  private attachFor(pid: number, lib: LibraryFile): void {
    const mine = this.targets.get(pid);
    const k = key(lib.dev, lib.ino);
    if (!mine || mine.has(k) || !this.wanted(lib)) return;
    mine.add(k);
    try {
      this.report.attached(lib, this.capture.attachLibrary(lib, this.opts.mode ?? 'auto', pid), pid);
    } catch (e) {
      this.report.failed(lib, e instanceof Error ? e.message : String(e), pid);
    }
  }

  private dropTarget(pid: number, why: string): void {
    this.targets.delete(pid);
    for (const p of this.capture.detachPid(pid)) {
      const st = stat(p) ?? { dev: 0, ino: 0 };
      this.report.detached({ path: p, ...st, source: 'maps', kind: libraryKind(p) }, why, pid);
    }
  }
}
