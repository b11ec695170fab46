// malloc-threshold.test.ts: loading the bridge pins glibc's mmap threshold (helper/kernel/bridge.ts
// MMAP_THRESHOLD), so that large buffers allocated after a larger one was freed still get their
// own mapping instead of growing the brk heap, which never shrinks (peak RSS, issue #15). Checked
// by what it is for: the [heap] mapping's growth while 40 buffers of 256 KiB live, in a process
// that loaded the bridge and, as the control, in one that did not.
import * as assert from 'assert';
import { execFileSync } from 'child_process';
import * as path from 'path';
import { ROOT as PACKAGE_ROOT } from '../lib/paths';

const BRIDGE = path.join(PACKAGE_ROOT, 'dist', 'helper', 'kernel', 'bridge.js');

/** KiB the [heap] mapping grew by while 40 × 256 KiB native buffers were held, after a 4 MiB one was freed. */
function heapGrowthKiB(loadBridge: boolean): number {
  const script = `
    const fs = require('fs');
    if (${loadBridge}) { if (!require(${JSON.stringify(BRIDGE)}).mmapThresholdPinned()) throw new Error('mallopt refused'); }
    const heap = () => { const l = fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').find((x) => x.endsWith('[heap]'));
      if (!l) return 0; const [a, b] = l.split(' ')[0].split('-'); return (parseInt(b, 16) - parseInt(a, 16)) / 1024; };
    let big = Buffer.allocUnsafeSlow(4 << 20); big.fill(1); big = null; global.gc(); global.gc();
    const before = heap(); const keep = [];
    for (let i = 0; i < 40; i++) { const b = Buffer.allocUnsafeSlow(256 << 10); b.fill(i); keep.push(b); }
    process.stdout.write(String(heap() - before));`;
  return Number(execFileSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8' }));
}

describe('malloc threshold of the capture process (no root)', () => {
  it('with the bridge loaded, 10 MiB of 256 KiB buffers do not grow the brk heap; without it they do', function () {
    this.timeout(30_000);
    const without = heapGrowthKiB(false);
    const pinned = heapGrowthKiB(true);
    assert.ok(without >= 8 * 1024, `control: glibc's dynamic threshold should put the buffers on the heap (grew ${without} KiB)`);
    assert.ok(pinned < 2 * 1024, `pinned: the heap grew ${pinned} KiB for buffers that should each be mmapped`);
  });
});
