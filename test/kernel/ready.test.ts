// ready.test.ts: the `ready` frame (docs/protocol.md) comes after the process frames of every
// TLS file found at start (the linker cache's libraries, and the node executable this test runs
// in, which is running when the helper starts), before any connection, with counts that match
// those frames; and a curl started right after it is captured from its first call.
import * as assert from 'assert';
import * as fs from 'fs';
import { findTlsLibraries } from '../../helper/discovery/libraries';
import { Exchange, HelperHost } from '../../helper/host/host';
import { ProcessFrame, ReadyFrame } from '../../helper/protocol/generated';
import { RawFrame } from '../../helper/protocol/wire';
import { requireKernel } from '../lib/kernel';
import { curl, NginxServer, pattern, startNginx, stopAll, tmpDir, waitFor } from '../lib/servers';

describe('ready: capture is live once every TLS file found at start has its probes (kernel, nginx, curl)', function () {
  let dir: string;
  let nginx: NginxServer;
  let host: HelperHost | undefined;
  const body = pattern(20_000, 5);

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-ready-');
    nginx = await startNginx({ dir, files: { 'r.bin': body } });
  });
  after(async () => {
    await host?.close();
    await stopAll();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('comes once, after the process frames of the linker cache libraries and of the running node, before any conn_open', async function () {
    this.timeout(60_000);
    host = new HelperHost({ validate: true });
    const frames: RawFrame[] = [];
    const ex: Exchange[] = [];
    host.on('frame', (f) => frames.push(f));
    host.on('exchange', (e) => ex.push(e));
    await host.ready;
    const ready = await waitFor(() => frames.find((f) => f.type === 'ready') as ReadyFrame | undefined, { timeoutMs: 30_000, what: 'the ready frame' });
    const at = frames.findIndex((f) => f.type === 'ready');
    const before = frames.slice(0, at);
    assert.ok(!before.some((f) => f.type === 'conn_open' || f.type === 'segment'), 'no connection before ready');
    const procs = before.filter((f) => f.type === 'process') as unknown as ProcessFrame[];
    const seen = new Set(procs.filter((p) => p.state !== 'detached').map((p) => fs.realpathSync(p.library)));
    const expected = [...findTlsLibraries([]).map((l) => l.path), process.execPath];
    assert.ok(expected.length >= 2, `a linker-cache TLS library and node: ${expected.join(', ')}`);
    for (const file of expected) assert.ok(seen.has(fs.realpathSync(file)), `${file} has a process frame before ready; before it: ${procs.map((p) => `${p.library} ${p.state}`).join('; ')}`);
    const attached = procs.filter((p) => p.state === 'attached').length - procs.filter((p) => p.state === 'detached').length;
    assert.strictEqual(ready.libraries, attached, 'ready.libraries counts the attached files');
    assert.strictEqual(ready.failed, procs.filter((p) => p.state === 'failed').length, 'ready.failed counts the failed ones');
    assert.ok(ready.libraries >= 2);

    // Live from ready on: curl's very first request, started now, is captured whole.
    const r = await curl(`https://127.0.0.1:${nginx.port}/r.bin`, ['-o', '/dev/null']);
    assert.strictEqual(r.code, 0, r.stderr.toString());
    const e = await waitFor(() => ex.find((x) => x.pid === r.pid), { what: "curl's exchange" });
    assert.ok(e.response.body.equals(body), 'the response body, byte for byte');
    assert.ok(await host.close(), 'bye');
    assert.strictEqual(frames.filter((f) => f.type === 'ready').length, 1, 'ready comes once');
  });
});
