// output-file.test.ts: the standalone command's --output file (helper/commands/output.ts). It is
// written synchronously, so nothing waits in memory for the disk (an fs.WriteStream's queue held
// 100 MiB at the peak of a text capture under load, issue #15): bytes arrive in order, the file
// is private, nothing is pending once a write returns, and a write that fails is the command's
// error, with its cause and a fix. The failure is a real one: the child runs with a file size
// limit (prlimit --fsize, SIGXFSZ ignored), so the kernel answers EFBIG.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { openOutput } from '../../helper/commands/output';
import { UserError } from '../../helper/errors';
import { ROOT } from '../lib/paths';

const OUTPUT_JS = path.join(ROOT, 'dist', 'helper', 'commands', 'output.js');

describe('output file (no root)', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'https-capture-output-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writes strings and buffers in order, mode 0600, with nothing pending after a large write', async () => {
    const file = path.join(dir, 'out.txt');
    fs.writeFileSync(file, 'old contents that must go', { mode: 0o644 });
    const out = openOutput(file);
    const big = 'x'.repeat(300 << 10); // past the 256 KiB join: written at once
    out.write('first ');
    out.write(Buffer.from('second '));
    out.write(big);
    assert.strictEqual(out.pending(), 0, 'a write past the join size is on its way to disk when it returns');
    out.write('ünïcode ');
    assert.ok(out.pending() > 0, 'short strings are joined until the next turn of the event loop');
    await new Promise((r) => setImmediate(r));
    assert.strictEqual(out.pending(), 0);
    out.write('last');
    await out.close();
    assert.strictEqual(fs.readFileSync(file, 'utf8'), `first second ${big}ünïcode last`);
    assert.strictEqual(fs.statSync(file).mode & 0o777, 0o600);
  });

  it('a failed write (EFBIG under a file size limit) is a UserError with its cause and a fix, at close', function () {
    this.timeout(20_000);
    const file = path.join(dir, 'limited.txt');
    const script = `
      const { openOutput } = require(${JSON.stringify(OUTPUT_JS)});
      const out = openOutput(${JSON.stringify(file)});
      for (let i = 0; i < 4; i++) out.write('y'.repeat(300 << 10));
      out.close().then(() => console.log(JSON.stringify({ ok: true })), (e) => console.log(JSON.stringify({ name: e.name, cause: e.cause, fix: e.fix })));`;
    const r = spawnSync('sh', ['-c', `trap '' XFSZ; exec prlimit --fsize=65536 "$0" -e "$1"`, process.execPath, script], { encoding: 'utf8' });
    assert.strictEqual(r.status, 0, r.stderr);
    const e = JSON.parse(r.stdout) as { name: string; cause: string; fix: string };
    assert.strictEqual(e.name, 'UserError');
    assert.match(e.cause, /^cannot write the output file .*limited\.txt \(EFBIG\)/);
    assert.match(e.fix, /--output/);
    assert.strictEqual(fs.statSync(file).size, 65536, 'written up to the limit');
  });

  it('a file that cannot be created is a UserError before anything starts', () => {
    assert.throws(() => openOutput(path.join(dir, 'no', 'such', 'dir', 'out.txt')), (e: unknown) => e instanceof UserError && /ENOENT/.test(e.cause));
  });
});
