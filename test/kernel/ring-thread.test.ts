// ring-thread.test.ts: the native thread that drains the ring buffer ends on its own (kernel,
// real BPF). The failure is real, not simulated: the test closes the thread's epoll fd under it,
// as a stray close() elsewhere in the process would, and epoll_wait then fails with EBADF. The
// bridge must say so to JavaScript, and the session must turn it into a fatal error frame and
// a bye, instead of going on capturing nothing in silence.
import * as assert from 'assert';
import * as fs from 'fs';
import { Writable } from 'stream';
import { BridgeError } from '../../helper/errors';
import { Capture } from '../../helper/kernel/capture';
import { FrameDecoder, FrameError, FrameWriter, RawFrame } from '../../helper/protocol/wire';
import { Session } from '../../helper/session/session';
import { requireKernel } from '../lib/kernel';
import { waitFor } from '../lib/servers';

/** This process's epoll fds, each with the fds it watches (from /proc/self/fdinfo). */
function epolls(): Map<number, number[]> {
  const out = new Map<number, number[]>();
  for (const name of fs.readdirSync('/proc/self/fd')) {
    const fd = Number(name);
    try {
      if (fs.readlinkSync(`/proc/self/fd/${fd}`) !== 'anon_inode:[eventpoll]') continue;
      const info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
      out.set(fd, [...info.matchAll(/^tfd:\s+(\d+)/gm)].map((m) => Number(m[1])));
    } catch {
      // closed while we looked
    }
  }
  return out;
}

/** What an fd of this process is (its /proc/self/fd link), or '' once it is closed. */
function fdKind(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return '';
  }
}

/**
 * The ring thread's epoll fd: new since `before`, and watching the ring buffer map itself
 * (anon_inode:bpf-map), where libuv's epoll fds watch none.
 */
async function ringThreadEpoll(before: Set<number>): Promise<number> {
  return waitFor(
    () => [...epolls()].find(([fd, watched]) => !before.has(fd) && watched.some((w) => fdKind(w) === 'anon_inode:bpf-map'))?.[0],
    { what: "the ring thread's epoll fd", timeoutMs: 5000 },
  );
}

class Collect extends Writable {
  readonly chunks: Buffer[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.chunks.push(Buffer.from(chunk)); // the writer may reuse its buffer
    cb();
  }
  frames(): RawFrame[] {
    return new FrameDecoder({ validate: true }).push(Buffer.concat(this.chunks)).map((x) => {
      if (x instanceof FrameError) throw x;
      return x;
    });
  }
}

describe('ring thread failure (kernel, real BPF)', function () {
  this.timeout(60_000);
  before(function () {
    requireKernel(this);
  });

  it('the bridge tells JavaScript which call failed and why; stop() still resolves', async () => {
    const before = new Set(epolls().keys());
    const capture = new Capture({});
    let failure: BridgeError | undefined;
    capture.start(() => {}, { onError: (e) => (failure = e) });
    try {
      const fd = await ringThreadEpoll(before);
      assert.strictEqual(failure, undefined, 'no error while the thread runs');
      fs.closeSync(fd);
      const e = await waitFor(() => failure, { what: 'the ring thread error', timeoutMs: 5000 });
      assert.ok(e instanceof BridgeError, String(e));
      assert.strictEqual(e.op, 'epoll_wait');
      // The fd number may be taken again at once by another open: then it is not an epoll.
      assert.ok(['EBADF', 'EINVAL'].includes(e.code), `${e.code}: ${e.message}`);
      assert.match(e.message, /ring buffer thread/);
    } finally {
      await capture.stop();
    }
  });

  it('the session sends a fatal ring_failed error, then bye with fatal_error, and stops', async () => {
    const before = new Set(epolls().keys());
    const out = new Collect();
    const writer = new FrameWriter(out, { validate: true });
    const logged: string[] = [];
    const session = new Session(
      { pids: [], comms: [], ports: [], callCap: 1 << 20, rateCap: 0, targeted: false, floor: false, pollMs: 0, libraries: [], statsIntervalMs: 0, lossIntervalMs: 0, log: (l) => logged.push(l) },
      { writer, encode: true },
    );
    session.open();
    session.attach();
    let failed = false;
    session.start(() => (failed = true));
    fs.closeSync(await ringThreadEpoll(before));
    await waitFor(() => failed || undefined, { what: 'the session to hear of the failure', timeoutMs: 5000 });
    await session.stop('fatal_error');
    const frames = out.frames();
    const error = frames.find((f) => f.type === 'error');
    assert.ok(error, `an error frame: ${frames.map((f) => f.type).join(' ')}`);
    assert.strictEqual(error.code, 'ring_failed');
    assert.strictEqual(error.fatal, true);
    assert.match(String(error.message), /epoll_wait/);
    assert.ok(String(error.fix).length > 0);
    assert.strictEqual(frames.at(-1)?.type, 'bye');
    assert.strictEqual(frames.at(-1)?.reason, 'fatal_error');
    assert.ok(logged.some((l) => /^error: the thread that reads the ring buffer stopped/.test(l)), logged.join('\n'));
  });
});
