// libraries.ts: finds the OpenSSL library files to attach to: those in the linker cache
// (`ldconfig -p`) and those mapped by running processes (/proc/*/maps), one entry per file
// (device, inode) however many paths and processes lead to it.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import { ElfError, ElfFile } from './elf';
import { isGo, isGoTls } from './golang';
import { rustlsIn } from './rustls';

export interface LibraryFile {
  /** A path that opens this file from our mount namespace. */
  path: string;
  dev: number;
  ino: number;
  /** How it was found. */
  source: 'ldconfig' | 'maps' | 'user';
  /** Which TLS library it is (an executable with OpenSSL inside counts as openssl). */
  kind: TlsKind;
}

export type TlsKind = 'openssl' | 'boringssl' | 'gnutls' | 'nss' | 'go' | 'rustls';

const TLS_LIBRARY = /(^|\/)lib(ssl|gnutls|ssl3|nspr4)\.so(\.[0-9.]+)?$/;

/**
 * The kind of a library file: libgnutls.so* is GnuTLS; NSS's SSL layer libssl3.so and NSPR's
 * libnspr4.so (whose PR_Write/PR_Read carry it) are NSS; a libssl.so* is BoringSSL when it has
 * BoringSSL's own API (boringSslIn), else OpenSSL.
 */
export function libraryKind(path: string): TlsKind {
  if (/(^|\/)libgnutls\.so[^/]*$/.test(path)) return 'gnutls';
  if (NSS_LIBRARY.test(path)) return 'nss';
  return boringSslIn(path) ? 'boringssl' : 'openssl';
}

/** NSS's SSL layer (libssl3.so) and NSPR (libnspr4.so): both get probes for NSS. */
export const NSS_LIBRARY = /(^|\/)lib(ssl3|nspr4)\.so[^/]*$/;

/**
 * A function only BoringSSL's libssl exports (since 2016; OpenSSL has no such name): Debian's
 * android-libboringssl names its library libssl.so.0, like an old OpenSSL, so the name does not
 * tell them apart.
 */
const BORINGSSL_MARK = 'SSL_CTX_set_strict_cipher_list';
/** Verdicts by file version (device:inode:size:mtime): a libssl is read once. */
const boringVerdicts = new Map<string, boolean>();

/** Whether the libssl at `path` is BoringSSL (false when it cannot be read: OpenSSL's planner then says why). */
export function boringSslIn(path: string): boolean {
  const st = statKey(path);
  if (!st) return false;
  const k = `${st.dev}:${st.ino}:${fileVersion(path)}`;
  let v = boringVerdicts.get(k);
  if (v === undefined) {
    let elf: ElfFile | undefined;
    try {
      elf = ElfFile.open(path);
      v = elf.functions([BORINGSSL_MARK, 'SSL_write', 'SSL_read']).size === 3;
    } catch {
      v = false;
    } finally {
      elf?.close();
    }
    if (boringVerdicts.size > 4096) boringVerdicts.clear();
    boringVerdicts.set(k, v);
  }
  return v;
}

/** (device, inode) of a regular file, or undefined if it is not one (or is gone). */
export function statKey(path: string): { dev: number; ino: number } | undefined {
  try {
    const st = fs.statSync(path);
    return st.isFile() ? { dev: st.dev, ino: st.ino } : undefined;
  } catch {
    return undefined;
  }
}

/** A file's size and mtime ('gone' when it cannot be read): what changes while it is written. */
export function fileVersion(path: string): string {
  try {
    const st = fs.statSync(path);
    return `${st.size}:${st.mtimeMs}`;
  } catch {
    return 'gone';
  }
}

/** Paths of libssl in the system linker cache. */
export function ldconfigLibraries(): string[] {
  let out = '';
  for (const cmd of ['ldconfig', '/sbin/ldconfig', '/usr/sbin/ldconfig']) {
    try {
      out = execFileSync(cmd, ['-p'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      break;
    } catch {
      // try the next location; a system without ldconfig still has /proc/*/maps
    }
  }
  const paths: string[] = [];
  for (const line of out.split('\n')) {
    const m = /=>\s*(\S+)$/.exec(line.trim());
    if (m && TLS_LIBRARY.test(m[1]!)) paths.push(m[1]!);
  }
  return paths;
}

/**
 * libssl files mapped by running processes. A file of another mount namespace is opened
 * through /proc/<pid>/root, so it is the same inode the process maps.
 */
export function mappedLibraries(): { path: string; pid: number }[] {
  const found = new Map<string, { path: string; pid: number }>();
  eachProcessMaps((pid, maps) => {
    for (const line of maps.split('\n')) {
      // address perms offset dev inode path
      const m = /^\S+ \S+ \S+ \S+ (\d+)\s+(\/.*)$/.exec(line);
      if (!m || !TLS_LIBRARY.test(m[2]!)) continue;
      const ino = Number(m[1]);
      const key = `${ino}:${m[2]}`;
      if (found.has(key)) continue;
      const direct = statKey(m[2]!);
      const path = direct && direct.ino === ino ? m[2]! : `/proc/${pid}/root${m[2]}`;
      found.set(key, { path, pid: Number(pid) });
    }
    return true;
  });
  return [...found.values()];
}

/**
 * Calls `fn` with the text of every process's /proc/<pid>/maps it can read, until `fn` returns
 * false. A process that ends meanwhile, or is not ours to read, is passed over.
 */
function eachProcessMaps(fn: (pid: string, maps: string) => boolean): void {
  let pids: string[];
  try {
    pids = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  } catch {
    return;
  }
  for (const pid of pids) {
    let maps: string;
    try {
      maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
    } catch {
      continue;
    }
    if (!fn(pid, maps)) return;
  }
}

/** st_dev as stat() reports it (glibc's makedev) from the major and minor numbers /proc/<pid>/maps shows. */
export function devNumber(major: number, minor: number): number {
  return (major & 0xfff) * 0x100 + (minor & 0xff) + (minor & ~0xff) * 0x1000 + Math.floor(major / 0x1000) * 0x1000 * 2 ** 32;
}

/**
 * Which of the files `wanted` (keys "dev:ino") some process maps, by the device and inode
 * fields of /proc/<pid>/maps: a file deleted or replaced on disk (whose path shows "(deleted)"
 * and no longer opens it) still counts while it is mapped.
 */
export function mappedFiles(wanted: Set<string>): Set<string> {
  const found = new Set<string>();
  if (wanted.size === 0) return found;
  const line = /^\S+ \S+ \S+ ([0-9a-f]+):([0-9a-f]+) (\d+)/gm;
  eachProcessMaps((_pid, maps) => {
    for (const m of maps.matchAll(line)) {
      if (m[3] === '0') continue; // anonymous memory
      const k = `${devNumber(parseInt(m[1]!, 16), parseInt(m[2]!, 16))}:${m[3]}`;
      if (wanted.has(k)) found.add(k);
    }
    return found.size < wanted.size;
  });
  return found;
}

/** Every OpenSSL, BoringSSL, GnuTLS and NSS (libssl3, libnspr4) library file on the system, once each. `extra` are files the user named. */
export function findTlsLibraries(extra: string[] = []): LibraryFile[] {
  const byFile = new Map<string, LibraryFile>();
  const add = (path: string, source: LibraryFile['source']): void => {
    const key = statKey(path);
    if (!key) return;
    const id = `${key.dev}:${key.ino}`;
    // A file the user named may be a Go or rustls executable; the others are found by name.
    const kind: TlsKind = source === 'user' && isGoTls(path) ? 'go' : source === 'user' && rustlsIn(path) ? 'rustls' : libraryKind(path);
    if (!byFile.has(id)) byFile.set(id, { path, ...key, source, kind });
  };
  for (const p of extra) add(p, 'user');
  for (const p of ldconfigLibraries()) add(p, 'ldconfig');
  for (const m of mappedLibraries()) add(m.path, 'maps');
  return [...byFile.values()];
}

/** Whether an executable or library carries OpenSSL's TLS functions (e.g. /usr/bin/node). */
export function hasOpenSsl(path: string): boolean {
  return openSslIn(path) === true;
}

/**
 * hasOpenSsl, telling "no" (an ELF file without them, or not ELF) from "cannot tell" (the file
 * could not be opened or read: gone with its process, or not readable by us).
 */
export function openSslIn(path: string): boolean | undefined {
  let elf: ElfFile | undefined;
  try {
    elf = ElfFile.open(path);
    return elf.functions(['SSL_write', 'SSL_read']).size === 2;
  } catch (e) {
    return e instanceof ElfError ? false : undefined;
  } finally {
    elf?.close();
  }
}

/**
/**
 * What TLS code an executable has inside: 'openssl' (linked in, as node), 'boringssl' (the
 * same API with BoringSSL's own functions, as Envoy links it), 'go' (Go's
 * crypto/tls), 'rustls' (the rustls crate, by its symbols: helper/discovery/rustls.ts), null for none (or not ELF), undefined when it cannot tell (the file could not be
 * opened: gone with its process, or not readable by us).
 */
export function tlsKindIn(path: string): TlsKind | null | undefined {
  try {
    fs.closeSync(fs.openSync(path, 'r'));
  } catch {
    return undefined;
  }
  // Go first: telling a Go program apart costs one header read, and its plan is kept for
  // attaching; reading its whole symbol table for OpenSSL would only cost time.
  if (isGo(path)) return isGoTls(path) ? 'go' : null;
  const o = openSslIn(path);
  if (o === undefined) return undefined;
  if (o) return boringSslIn(path) ? 'boringssl' : 'openssl';
  const r = rustlsIn(path);
  return r === undefined ? undefined : r ? 'rustls' : null;
}

/**
 * The file at `path` if it is an executable with TLS code inside. `seen` holds the
 * (device:inode) of files already judged, so each is read once; a file that could not be read
 * (its process ended between the stat and the open) is judged again at its next sighting.
 */
export function tlsExecutableAt(path: string, seen: Set<string>, judge: (path: string) => TlsKind | null | undefined = tlsKindIn): LibraryFile | undefined {
  const st = statKey(path);
  if (!st || seen.has(`${st.dev}:${st.ino}`)) return undefined;
  // The file's own path first, while the link leads to it: judging a Go executable takes a
  // while, and a short process is gone by then, with its /proc/<pid>/exe (the probes would
  // then go to a path that no longer opens, and the file, judged, would never get them).
  let real = path;
  try {
    const target = fs.readlinkSync(path);
    const t = statKey(target);
    if (t && t.dev === st.dev && t.ino === st.ino) real = target; // same file from here
  } catch {
    // not a link (or /proc/<pid>/exe of another namespace): keep the path, it opens the file
  }
  const kind = judge(real);
  if (kind === undefined) return undefined; // gone meanwhile: not judged
  seen.add(`${st.dev}:${st.ino}`);
  if (!kind) return undefined;
  return { path: real, ...st, source: 'maps', kind };
}

/** Executables of running processes (all, or `pids`) with TLS code inside, once per file. */
export function tlsExecutables(seen: Set<string>, pids?: number[], judge: (path: string) => TlsKind | null | undefined = tlsKindIn): LibraryFile[] {
  let all: number[] = pids ?? [];
  if (!pids) {
    try {
      all = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number);
    } catch {
      return [];
    }
  }
  const out: LibraryFile[] = [];
  for (const pid of all) {
    const exe = tlsExecutableAt(`/proc/${pid}/exe`, seen, judge);
    if (exe) out.push(exe);
  }
  return out;
}

/**
 * Strings every TLS implementation carries, because the protocol defines them as key-schedule
 * labels: TLS 1.3's HKDF labels (RFC 8446 section 7.1) and TLS 1.2's PRF labels (RFC 5246). A
 * file with a full set of either has TLS code inside, whoever wrote it.
 */
const TLS13_LABELS = ['c hs traffic', 's hs traffic', 'c ap traffic', 's ap traffic'];
const TLS12_LABELS = ['master secret', 'key expansion', 'client finished', 'server finished'];
/** Most bytes of data read from one file to look for them (a huge executable is judged by its first 64 MiB of data). */
const LABEL_SCAN_BYTES = 64 << 20;

/**
 * Why an executable has TLS code the helper does not know, or undefined if it has none it can
 * see: the TLS 1.3 or TLS 1.2 key-schedule labels in its loaded data (not its code), while
 * it has none of the symbols the planners look for (the caller asks only after tlsKindIn said
 * null). Read once per file by the caller; a packed or compressed executable hides its labels.
 */
export function unknownTlsIn(path: string): string | undefined {
  let elf: ElfFile | undefined;
  try {
    elf = ElfFile.open(path);
    const wanted = [...TLS13_LABELS, ...TLS12_LABELS].map((l) => Buffer.from(l, 'latin1'));
    const found = new Set<string>();
    const overlap = Math.max(...wanted.map((w) => w.length)) - 1;
    let budget = LABEL_SCAN_BYTES;
    const chunk = 4 << 20;
    for (const r of elf.dataRanges()) {
      for (let at = 0; at < r.size && budget > 0 && found.size < wanted.length; at += chunk) {
        const len = Math.min(chunk + overlap, r.size - at, budget + overlap);
        const b = elf.read(r.offset + at, len);
        budget -= Math.min(chunk, len);
        for (const w of wanted) if (b.indexOf(w) >= 0) found.add(w.toString('latin1'));
      }
    }
    const tls13 = TLS13_LABELS.every((l) => found.has(l));
    const tls12 = TLS12_LABELS.every((l) => found.has(l));
    if (!tls13 && !tls12) return undefined;
    const labels = (tls13 ? TLS13_LABELS : TLS12_LABELS).map((l) => `"${l}"`).join(', ');
    return `TLS code the helper does not know (its data has the TLS ${tls13 ? '1.3' : '1.2'} key-schedule labels ${labels}, and it has no OpenSSL, GnuTLS, Go crypto/tls or rustls symbols: a static or stripped build): its TLS traffic is not captured`;
  } catch {
    return undefined; // not ELF, gone, or unreadable: nothing to say
  } finally {
    elf?.close();
  }
}
