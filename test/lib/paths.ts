// paths.ts: where the tests find the package's files, from test/unit and test/kernel alike.
import * as path from 'path';
import { PACKAGE_ROOT } from '../../helper/package';

/** The package's root (the source tree). */
export const ROOT = PACKAGE_ROOT;
/** The compiled command line, run as a child process. */
export const CLI = path.join(PACKAGE_ROOT, 'dist', 'helper', 'cli.js');
/** A child that runs the --ipc command in-process (test/lib/ipc-child.ts, compiled). */
export const IPC_CHILD = path.join(__dirname, 'ipc-child.js');
/** Recorded captures. */
export const FIXTURES = path.join(PACKAGE_ROOT, 'fixtures');
