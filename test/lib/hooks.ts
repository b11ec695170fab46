// hooks.ts: the mocha hooks most kernel suites share, so that each test file registers in one
// line what every one of them needs and says in full only what is its own.
import * as fs from 'fs';
import { Recorder } from './kernel';
import { stopAll } from './servers';

/** after(): stops every server and process test/lib started, then removes the suite's scratch directory. */
export function cleanUpAfter(dir: () => string | undefined): void {
  after(async () => {
    await stopAll();
    const d = dir();
    if (d) fs.rmSync(d, { recursive: true, force: true });
  });
}

/** afterEach(): closes the helper a test started (a HelperHost), if any, and forgets it. */
export function closeAfterEach(get: () => { close(): Promise<unknown> } | undefined, forget: () => void): void {
  afterEach(async () => {
    await get()?.close();
    forget();
  });
}

/**
 * afterEach(): stops the test's in-process capture (a Recorder) and every server it started;
 * after(): removes the suite's scratch directory. For suites that start servers per test.
 */
export function recorderHooks(rec: () => Recorder | undefined, forget: () => void, dir: () => string | undefined): void {
  afterEach(async () => {
    await rec()?.stop();
    forget();
    await stopAll();
  });
  after(() => {
    const d = dir();
    if (d) fs.rmSync(d, { recursive: true, force: true });
  });
}
