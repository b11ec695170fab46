// index.ts: picks the renderer of an output format. Every format takes the same frames (live
// from FrameBuilder, or from a recording in replay), so both paths print the same.
import { HarRenderer } from './har';
import { JsonlRenderer } from './jsonl';
import { Format, FORMATS, Renderer, RenderOptions, Sink } from './output';
import { PcapngRenderer } from './pcapng';
import { RawRenderer } from './raw';
import { TextRenderer } from './text';

export { FORMATS };
export type { Format, Renderer, RenderOptions, Sink };

export function isFormat(s: string): s is Format {
  return (FORMATS as readonly string[]).includes(s);
}

/** Formats written as bytes, not text: never to a terminal. */
export const BINARY_FORMATS: readonly Format[] = ['pcapng'];

export function createRenderer(format: Format, out: Sink, o: RenderOptions): Renderer {
  switch (format) {
    case 'text':
      return new TextRenderer(out, o);
    case 'jsonl':
      return new JsonlRenderer(out, o);
    case 'har':
      return new HarRenderer(out, o);
    case 'pcapng':
      return new PcapngRenderer(out, o);
    case 'raw':
      return new RawRenderer(out, o);
  }
}
