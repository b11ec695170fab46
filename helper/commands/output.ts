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
  const stream = fs.createWriteStream('', { fd });
  // The renderers write many short strings: joined here and written once per turn of the event
  // loop (or every 256 KiB), each write costs the stream a Buffer and a callback otherwise.
  let parts: string[] = [];
  let held = 0;
  let scheduled = false;
  const flush = (): void => {
    scheduled = false;
    if (!parts.length) return;
    const joined = parts.join('');
    parts = [];
    held = 0;
    stream.write(joined);
  };
  return {
    write: (s) => {
      if (typeof s !== 'string') {
        flush();
        stream.write(s);
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
    close: () => {
      flush();
      return new Promise((resolve) => stream.end(resolve));
    },
    // Bytes written but not yet on disk: the standalone command sheds above a bound (formats/shed.ts).
    pending: () => stream.writableLength + held,
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
