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

/**
 * Options node runs the helper with: the shebang of helper/cli.ts (what `https-capture`, the
 * package's bin, the image and the systemd unit run), `npm start`, and the benchmarks that
 * spawn it say the same (test/unit/node-flags.test.ts checks). A young generation of 4 MiB semi-
 * spaces instead of V8's 16: under load the helper allocates fast and short-lived (segments,
 * parsed messages, rendered text) and a large new space is resident memory that buys nothing
 * (issue #15, measured on 256 KiB responses in text: peak RSS 278 -> 223 MiB, the same CPU).
 * V8 fixes the young generation when the process starts (`v8.setFlagsFromString` after that
 * changes nothing, measured), so it must come from the command line.
 * And an old generation that grows by at most 2x its live size between full collections
 * (`--heap-growing-percent=100`; V8 picks up to 4x when collections look cheap): the HAR renderer's
 * old space peaked at 100-145 MiB with 50 MiB live (a heap snapshot), the rest garbage waiting
 * for the collector (issue #15: HAR at saturation 296 -> 204 MiB peak RSS, the same CPU).
 */
export const NODE_FLAGS = ['--max-semi-space-size=4', '--heap-growing-percent=100'];

/** Root of the package: the nearest ancestor whose package.json names https-capture. */
export const PACKAGE_ROOT = findRoot(__dirname);

/** The first of the paths that exists (the last one if none does, for its error message). */
function firstExisting(...candidates: string[]): string {
  return candidates.find((p) => fs.existsSync(p)) ?? candidates[candidates.length - 1]!;
}

/**
 * The native addon: in a clone as node-gyp builds it (bridge/build), in an installed package
 * prebuilt by scripts/pack.sh in prebuildify's layout (prebuilds/<platform>-<arch>/).
 */
export const ADDON_PATH = firstExisting(
  path.join(PACKAGE_ROOT, 'bridge', 'build', 'Release', 'bridge.node'),
  path.join(PACKAGE_ROOT, 'prebuilds', `${process.platform}-${process.arch}`, 'https-capture.node'),
);
/** The CO-RE BPF object: bpf/build in a clone, prebuilds/bpf in an installed package. */
export const BPF_OBJECT_PATH = firstExisting(path.join(PACKAGE_ROOT, 'bpf', 'build', 'capture.bpf.o'), path.join(PACKAGE_ROOT, 'prebuilds', 'bpf', 'capture.bpf.o'));

/** The package's version from its package.json ('0.0.0' if unreadable). */
export function packageVersion(): string {
  try {
    return String((JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: unknown }).version ?? '0.0.0');
  } catch {
    return '0.0.0';
  }
}
