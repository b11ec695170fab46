// procfs.ts: what /proc says of a process, its memory and its CPU time, for the tests and bench/.
import * as fs from 'fs';

/** A "kB" field of /proc/<pid>/status (VmRSS, VmHWM, RssAnon …) in KiB; throws when it is not there. */
export function statusKiB(pid: number, field = 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]);
}

/** CPU seconds (user + system) a process has used, from /proc/<pid>/stat; throws when it is gone. */
export function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ is 100 on Linux)
}
