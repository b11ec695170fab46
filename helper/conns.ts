// conns.ts: the connections user space knows are open, per process, so that a process's exit
// ends each of them (the kernel reports the exit once, not per connection). Pure code.
import { ConnRecord } from './records';

export class OpenConnections {
  private readonly byPid = new Map<number, Map<bigint, ConnRecord>>();

  /** Notes an open (or a later, more complete open of the same id) and forgets a close. */
  track(r: ConnRecord): void {
    const mine = this.byPid.get(r.pid) ?? new Map<bigint, ConnRecord>();
    if (r.kind === 'open') mine.set(r.connId, r);
    else mine.delete(r.connId);
    if (mine.size) this.byPid.set(r.pid, mine);
    else this.byPid.delete(r.pid);
  }

  /** The connections of a process that ended, now ended with it. */
  endProcess(pid: number): ConnRecord[] {
    const mine = [...(this.byPid.get(pid)?.values() ?? [])];
    this.byPid.delete(pid);
    return mine;
  }

  get size(): number {
    let n = 0;
    for (const m of this.byPid.values()) n += m.size;
    return n;
  }
}
