// output.ts: where the human commands (standalone and replay) write: stdout, or a file created
// with mode 0600 (plaintext holds secrets); and the checks of --format before anything starts.
import * as fs from 'fs';
import { UserError } from '../errors';
import { BINARY_FORMATS, Format, FORMATS, isFormat, Sink } from '../formats';

/** Where the output goes: stdout, or a file created with mode 0600. */
export function openOutput(file: string | undefined): Sink & { close(): Promise<void>; pending(): number } {
  if (!file) {
    // A reader that went away (| head) ends the output, not the capture's clean stop.
    process.stdout.on('error', () => undefined);
    return { write: (s) => void process.stdout.write(s), close: () => Promise.resolve(), pending: () => process.stdout.writableLength };
  }
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
  } catch (e) {
    throw new UserError(`cannot create the output file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 'name a file in a directory you can write to');
  }
  // Private even if it existed before with other permissions.
  fs.fchmodSync(fd, 0o600);
  // Written synchronously. An fs.WriteStream writes one chunk per turn of the event loop, and
  // a capture under load renders many batches per turn: its queue grew to 100 MiB of 256 KiB
  // chunks (a heap snapshot at the peak of a text capture, issue #15) however fast the disk
  // was. A write to a file is a copy into the page cache; when the disk is slower than that
  // (a full page cache, a network file system), the write blocks the event loop, the records
  // wait in the ring, arrive late, and the renderer sheds bodies (formats/shed.ts), as it does
  // when it cannot render fast enough. Writing a string with fs.writeSync leaves no Buffer
  // behind for the collector. The renderers write many short strings: joined here and written
  // once per turn of the event loop (or every 256 KiB).
  let parts: string[] = [];
  let held = 0;
  let scheduled = false;
  let failed: UserError | undefined;
  const writeAll = (chunk: string | Buffer): void => {
    if (failed) return;
    try {
      let done = typeof chunk === 'string' ? fs.writeSync(fd, chunk) : 0;
      // Whole writes are the rule for a file; a short one (a signal, a full disk) goes on as bytes.
      if (typeof chunk !== 'string' || done < Buffer.byteLength(chunk)) {
        const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
        while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done);
      }
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      failed = new UserError(`cannot write the output file ${file} (${code}): the output stopped there`, code === 'ENOSPC' ? 'free space on its file system, or write it elsewhere with --output' : 'write it elsewhere with --output');
    }
  };
  const flush = (): void => {
    scheduled = false;
    if (!parts.length) return;
    const joined = parts.join('');
    parts = [];
    held = 0;
    writeAll(joined);
  };
  return {
    write: (s) => {
      if (typeof s !== 'string') {
        flush();
        writeAll(s);
        return;
      }
      parts.push(s);
      held += s.length;
      if (held >= 256 << 10) flush();
      else if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    },
    // The first write error, if any, is the command's error (the capture itself went on).
    close: () => {
      flush();
      fs.closeSync(fd);
      return failed ? Promise.reject(failed) : Promise.resolve();
    },
    // Only what is joined and not yet written: writes are synchronous.
    pending: () => held,
  };
}

/** The format named by --format, checked; binary formats never go to a terminal. */
export function checkFormat(format: string, output: string | undefined, extra: string[] = []): Format {
  if (!isFormat(format)) throw new UserError(`unknown format "${format}"`, `use --format ${[...FORMATS, ...extra].join(', ')}`, 2);
  if ((BINARY_FORMATS as readonly string[]).includes(format) && !output && process.stdout.isTTY) {
    throw new UserError(`${format} is binary and stdout is a terminal`, `write it to a file with --output capture.${format}, or pipe it (| tshark -r -)`, 2);
  }
  return format;
}
