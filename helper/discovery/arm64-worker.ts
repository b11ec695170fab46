// arm64-worker.ts: the worker thread behind helper/discovery/arm64.ts's Arm64Decoder. Capstone
// (@alexaltea/capstone-js, capstone 5 compiled to WebAssembly) starts only asynchronously, and
// the probe planner is synchronous (it runs inside attach, between two BPF calls): so capstone
// runs here and the planner waits for each answer (Atomics.wait on a shared word).
import { MessagePort, workerData } from 'worker_threads';

interface CsInsn {
  address: number | bigint;
  size: number;
  mnemonic: string;
  op_str: string;
  bytes: number[];
}
interface CsDecoder {
  disasm(buffer: Uint8Array, addr: number, max?: number): CsInsn[];
  close(): void;
}
interface CsModule {
  Capstone: new (arch: number, mode: number) => CsDecoder;
  ARCH_ARM64: number;
  MODE_ARM: number;
  MODE_LITTLE_ENDIAN: number;
}

const { port, signal } = workerData as { port: MessagePort; signal: Int32Array };
const reply = (message: unknown): void => {
  port.postMessage(message);
  Atomics.store(signal, 0, 1);
  Atomics.notify(signal, 0);
};

let load: Promise<CsModule>;
try {
  load = (require('@alexaltea/capstone-js') as () => Promise<CsModule>)();
} catch (e) {
  load = Promise.reject(e);
}
load.then(
  (cs) => {
    const decoder = new cs.Capstone(cs.ARCH_ARM64, cs.MODE_LITTLE_ENDIAN);
    port.on('message', (m: { code: Uint8Array; addr: number; max: number }) => {
      try {
        // Stops at the first byte sequence that is no instruction (data in code, padding).
        const out = decoder.disasm(m.code, m.addr, m.max).map((i) => ({
          addr: Number(i.address),
          size: i.size,
          mnemonic: i.mnemonic,
          ops: i.op_str,
          word: (i.bytes[0] | (i.bytes[1] << 8) | (i.bytes[2] << 16) | (i.bytes[3] << 24)) >>> 0,
        }));
        reply({ insns: out });
      } catch (e) {
        reply({ error: e instanceof Error ? e.message : String(e) });
      }
    });
    reply({ ready: true });
  },
  (e: unknown) => reply({ error: `capstone did not start: ${(e instanceof Error ? e.message : String(e)).split('\n')[0]}` }),
);
