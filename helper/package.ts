// package.ts: where this package's own files are (schemas/, bpf/build, bridge/build,
// package.json), wherever the compiled file that asks sits in dist/ (or helper/ under ts-node).
import * as fs from 'fs';
import * as path from 'path';

function findRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const manifest = path.join(dir, 'package.json');
    try {
      if ((JSON.parse(fs.readFileSync(manifest, 'utf8')) as { name?: unknown }).name === 'https-capture') return dir;
    } catch {
      // not here (or not ours): keep walking up
    }
    if (path.dirname(dir) === dir) return path.resolve(from, '..', '..');
  }
}

/** Root of the package: the nearest ancestor whose package.json names https-capture. */
export const PACKAGE_ROOT = findRoot(__dirname);

/** The native addon (bridge/) as node-gyp builds it. */
export const ADDON_PATH = path.join(PACKAGE_ROOT, 'bridge', 'build', 'Release', 'bridge.node');
/** The CO-RE BPF object (bpf/). */
export const BPF_OBJECT_PATH = path.join(PACKAGE_ROOT, 'bpf', 'build', 'capture.bpf.o');

/** The package's version from its package.json ('0.0.0' if unreadable). */
export function packageVersion(): string {
  try {
    return String((JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: unknown }).version ?? '0.0.0');
  } catch {
    return '0.0.0';
  }
}
