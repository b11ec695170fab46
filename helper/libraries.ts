// libraries.ts: finds the OpenSSL library files to attach to: those in the linker cache
// (`ldconfig -p`) and those mapped by running processes (/proc/*/maps), one entry per file
// (device, inode) however many paths and processes lead to it.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import { ElfError, ElfFile } from './elf';

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

export type TlsKind = 'openssl' | 'gnutls';

const TLS_LIBRARY = /(^|\/)lib(ssl|gnutls)\.so(\.[0-9.]+)?$/;

/** The kind of a library file, from its name (libgnutls.so* is GnuTLS; the rest OpenSSL). */
export function libraryKind(path: string): TlsKind {
  return /(^|\/)libgnutls\.so[^/]*$/.test(path) ? 'gnutls' : 'openssl';
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
  let pids: string[];
  try {
    pids = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  } catch {
    return [];
  }
  for (const pid of pids) {
    let maps: string;
    try {
      maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
    } catch {
      continue; // the process ended, or is not ours to read
    }
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
  }
  return [...found.values()];
}

/** Every OpenSSL and GnuTLS library file on the system, once each. `extra` are files the user named. */
export function findTlsLibraries(extra: string[] = []): LibraryFile[] {
  const byFile = new Map<string, LibraryFile>();
  const add = (path: string, source: LibraryFile['source']): void => {
    const key = statKey(path);
    if (!key) return;
    const id = `${key.dev}:${key.ino}`;
    if (!byFile.has(id)) byFile.set(id, { path, ...key, source, kind: libraryKind(path) });
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
 * Executables of running processes with OpenSSL linked in, once per file. `seen` holds the
 * (device:inode) of files already judged, so each is read once; a file that could not be read
 * (its process ended between the stat and the open) is judged again at its next sighting.
 */
export function openSslExecutables(seen: Set<string>, pids?: number[], judge: (path: string) => boolean | undefined = openSslIn): LibraryFile[] {
  const out: LibraryFile[] = [];
  let all: number[] = pids ?? [];
  if (!pids) {
    try {
      all = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number);
    } catch {
      return [];
    }
  }
  for (const pid of all) {
    const exe = `/proc/${pid}/exe`;
    const st = statKey(exe);
    if (!st || seen.has(`${st.dev}:${st.ino}`)) continue;
    const has = judge(exe);
    if (has === undefined) continue; // gone meanwhile: not judged
    seen.add(`${st.dev}:${st.ino}`);
    if (!has) continue;
    let real = exe;
    try {
      const target = fs.readlinkSync(exe);
      const t = statKey(target);
      if (t && t.dev === st.dev && t.ino === st.ino) real = target; // same file from here
    } catch {
      // keep the /proc path: it opens the process's own file
    }
    out.push({ path: real, ...st, source: 'maps', kind: 'openssl' });
  }
  return out;
}
