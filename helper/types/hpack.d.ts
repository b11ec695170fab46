// hpack.d.ts: the part of hpack.js (no typings of its own) that http2.ts uses.
declare module 'hpack.js' {
  import { Duplex } from 'stream';
  interface Decompressor extends Duplex {
    execute(cb?: (err: Error | null) => void): void;
    updateTableSize(size: number): void;
  }
  export const decompressor: { create(options: { table: { maxSize: number } }): Decompressor };
}
