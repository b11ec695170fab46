// bench-count.test.ts: the benchmarks count exchanges in each output format (bench/lib/count.ts)
// with patterns of their own; on the recorded fixtures, the text, JSON Lines and HAR counts
// must agree with the frames' own exchanges (helper/http/exchanges.ts), per pid, HTTP/1.1 and
// HTTP/2 alike, or the bench's "heads at both ends" column would say something untrue.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { countFrames, countHar, countJsonl, countText, textCounters } from '../../bench/lib/count';
import { replayCommand } from '../../helper/commands/replay';
import { tmpDir } from '../lib/servers';
import { FIXTURES } from '../lib/paths';

const plain = (m: Map<number, number>): Record<number, number> => Object.fromEntries([...m].sort((a, b) => a[0] - b[0]));

describe('bench counts (no root)', () => {
  let dir: string;
  before(() => (dir = tmpDir('https-capture-count-test-')));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const render = async (name: string, format: 'text' | 'jsonl' | 'har'): Promise<string> => {
    const file = path.join(dir, `${name}.${format}`);
    let out = '';
    await replayCommand(path.join(FIXTURES, `${name}.frames`), format, { write: (s) => void (out += String(s)) }, { redact: true, color: false, printLimit: 0, version: '0' });
    fs.writeFileSync(file, out);
    return file;
  };

  for (const name of ['nginx-keepalive', 'nginx-mixed', 'curl-http2-nginx', 'python-post', 'curl-get', 'node-get']) {
    it(`${name}: text, jsonl and har count what the frames hold`, async () => {
      const frames = await countFrames(path.join(FIXTURES, `${name}.frames`));
      const want = plain(frames.perPid);
      assert.ok(Object.values(want).some((n) => n > 0), `${name}: no exchange with heads in the frames`);
      assert.deepStrictEqual(plain((await countText(await render(name, 'text'))).perPid), want, 'text');
      assert.deepStrictEqual(plain((await countJsonl(await render(name, 'jsonl'))).perPid), want, 'jsonl');
      assert.deepStrictEqual(plain((await countHar(await render(name, 'har'))).perPid), want, 'har');
    });
  }

  it('nginx-keepalive: two exchanges at each end', async () => {
    const c = await countText(await render('nginx-keepalive', 'text'));
    assert.deepStrictEqual([...c.perPid.values()], [2, 2]);
  });

  it("reads the standalone command's closing counters", () => {
    const k = textCounters(
      'https-capture: stopped: 12 calls, 5000 bytes moved, 4000 captured, 0 past the per-call cap, 900 shed under load (bodies cut to their heads), 60 more shed because the renderer or its output fell behind, 40 lost (1 records: ring buffer full; 0: memory unreadable), 2 calls missed (bytes unknown: docs/protocol.md, calls_missed)\n',
    );
    assert.deepStrictEqual(k, { bytes_moved: 5000, bytes_captured: 4000, bytes_shed: 900, bytes_lost: 40, output_shed: 60, calls_missed: 2 });
  });
});
