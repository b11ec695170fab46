// fuzz-ipc.test.ts: the control-frame handler of a real --ipc helper (kernel) under generated
// config frames, valid and not (fast-check): each one is either applied or answered with one
// error frame that changes nothing, the helper's state is what a model of the protocol says
// (docs/protocol.md: a present field replaces, an absent one keeps, a bad frame changes
// nothing), and afterwards it still captures a curl exchange whole.
import * as assert from 'assert';
import fc from 'fast-check';
import { ConfigState, ErrorFrame, StatsFrame } from '../../helper/protocol/generated';
import { Exchange, HelperHost } from '../../helper/host/host';
import { SUPPORTED_LIBRARIES } from '../../helper/protocol/hello';
import { frameSchemas } from '../../helper/protocol/schema';
import { FrameEncoder, RawFrame } from '../../helper/protocol/wire';
import { requireKernel } from '../lib/kernel';
import { curl, NginxServer, pattern, startNginx, tmpDir, waitFor } from '../lib/servers';
import { IPC_CHILD } from '../lib/paths';
import { cleanUpAfter, closeAfterEach } from '../lib/hooks';

const startHelper = (opts: object): HelperHost => new HelperHost({ command: process.execPath, args: [IPC_CHILD, JSON.stringify({ validate: true, ...opts })], validate: true });

const SEED = process.env.FUZZ_SEED === 'random' ? Date.now() : Number(process.env.FUZZ_SEED ?? 0);
const FRAMES = Number(process.env.FUZZ_RUNS ?? 150);

const configFrame = fc.record(
  {
    pids: fc.array(fc.oneof(fc.integer({ min: 1, max: 4_000_000 }), fc.constantFrom(0, -1, 2 ** 32, 1.5)), { maxLength: 4 }),
    comms: fc.array(fc.oneof(fc.string({ minLength: 1, maxLength: 15 }), fc.constantFrom('', 'a'.repeat(16), 'curl')), { maxLength: 3 }),
    ports: fc.array(fc.integer({ min: -1, max: 70_000 }), { maxLength: 3 }),
    call_cap: fc.oneof(fc.integer({ min: 0, max: 64 << 20 }), fc.constantFrom(-1, (64 << 20) + 1, 2.5)),
    rate_cap: fc.oneof(fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.constantFrom(-1, 2 ** 32)),
    stats_interval_ms: fc.oneof(fc.integer({ min: 100, max: 3_600_000 }), fc.constantFrom(99, 0)),
    // The full set, or one with a kind no helper knows. Not [] or another subset: detaching
    // and attaching again takes seconds each; the ipc tests cover it.
    libraries: fc.constantFrom([...SUPPORTED_LIBRARIES], ['openssl', 'other'], ['go', 'gnutls', 'other']),
    later_field: fc.anything({ maxDepth: 1 }),
  },
  { requiredKeys: [] },
);

describe('fuzz: control frames of a running --ipc helper (kernel)', function () {
  let dir: string;
  let nginx: NginxServer;
  let host: HelperHost | undefined;

  before(async function () {
    requireKernel(this);
    dir = tmpDir('https-capture-fuzz-ipc-');
    nginx = await startNginx({ dir, files: { 'f.bin': pattern(70_000, 3) } });
  });
  closeAfterEach(() => host, () => (host = undefined));
  cleanUpAfter(() => dir);

  it(`${FRAMES} generated config frames: each applied or refused alone, the state follows the model, capture goes on`, async function () {
    this.timeout(60_000);
    const frames = fc.sample(configFrame, { seed: SEED, numRuns: FRAMES });
    const schemas = frameSchemas();
    const enc = new FrameEncoder();
    host = startHelper({ statsIntervalMs: 3_600_000, comms: ['curl'] });
    const errors: ErrorFrame[] = [];
    const stats: StatsFrame[] = [];
    host.on('error', (e) => errors.push(e));
    host.on('stats', (s) => stats.push(s));
    await host.ready;
    await waitFor(() => host!.stderr.includes('capturing TLS plaintext'), { what: 'the helper to attach' });

    // The model: the protocol's rules, with the schemas as the judge of a frame's validity.
    const model: Required<ConfigState> = { pids: [], comms: ['curl'], ports: [], call_cap: 1 << 20, rate_cap: 0, libraries: [...SUPPORTED_LIBRARIES], stats_interval_ms: 3_600_000 };
    let refused = 0;
    for (const f of frames) {
      const frame = { type: 'config', ...f } as RawFrame;
      const copy = { ...frame };
      schemas.normalize(copy);
      const valid = schemas.check(copy) === undefined && (f.libraries ?? []).every((l) => (SUPPORTED_LIBRARIES as readonly string[]).includes(l));
      if (valid) {
        const { later_field: _, ...known } = f;
        Object.assign(model, known);
      } else refused++;
      host.sendRaw(enc.encode(frame));
    }
    // Then one that says what the end state is to look like, with a stats frame soon.
    host.configure({ stats_interval_ms: 150, comms: ['curl'], pids: [], ports: [], call_cap: 1 << 20, rate_cap: 0 });
    Object.assign(model, { stats_interval_ms: 150, comms: ['curl'], pids: [], ports: [], call_cap: 1 << 20, rate_cap: 0 });
    const s = await waitFor(() => stats.find((x) => x.config.stats_interval_ms === 150), { timeoutMs: 20_000, what: 'a stats frame after the last config' });
    assert.strictEqual(errors.length, refused, `one error frame per refused config (${refused} of ${frames.length}): ${errors.slice(0, 3).map((e) => e.message).join('; ')}`);
    assert.ok(errors.every((e) => !e.fatal && e.frame_type === 'config' && e.fix.length > 0));
    assert.deepStrictEqual(s.config, model);
    assert.ok(refused > 0 && refused < frames.length, `the generator makes both kinds (${refused} refused of ${frames.length})`);

    const ex: Exchange[] = [];
    host.on('exchange', (e) => ex.push(e));
    const r = await curl(`https://127.0.0.1:${nginx.port}/f.bin`, ['-o', '/dev/null']);
    assert.strictEqual(r.code, 0, r.stderr.toString());
    const got = await waitFor(() => ex.find((e) => e.pid === r.pid), { what: 'the exchange of curl after the fuzzing' });
    assert.ok(got.response.body.equals(pattern(70_000, 3)), 'captured whole');
    const bye = await host.close();
    assert.strictEqual(bye?.reason, 'shutdown');
  });
});
