// ipc-child.ts: starts runIpc() in a child process for the tests, with options as JSON in argv[2],
// until cli.ts exposes `--ipc` (then tests can spawn `cli.js --ipc` the same way).
import { IpcOptions, runIpc } from '../../helper/commands/ipc';

const opts = JSON.parse(process.argv[2] ?? '{}') as IpcOptions;
runIpc(opts).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`https-capture: error: ${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit(70);
  },
);
