// layout.test.ts: the folder boundaries of helper/ (docs/architecture.md) hold. The pure
// folders (protocol, http, formats, host, records) never import the folders that touch the
// kernel or the process (kernel, discovery, session, commands), and `https-capture replay`
// runs without loading any of them. No kernel needed.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ROOT } from '../lib/paths';

const HELPER = path.join(ROOT, 'helper');
const PURE = ['protocol', 'http', 'formats', 'host', 'records'];
const IMPURE = ['kernel', 'discovery', 'session', 'commands'];

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []));
}

/** Every relative import of a file (static, dynamic and require), as a path under helper/. */
function imports(file: string): string[] {
  const src = fs.readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of src.matchAll(/(?:\bfrom\s+|\bimport\s*\(\s*|\brequire\s*\(\s*)['"](\.[^'"]+)['"]/g)) out.push(path.relative(HELPER, path.resolve(path.dirname(file), m[1]!)));
  return out;
}

describe('helper/ layout', function () {
  it('has the folders docs/architecture.md names, and each pure folder imports no kernel-side folder', function () {
    for (const d of [...PURE, ...IMPURE]) assert.ok(fs.statSync(path.join(HELPER, d)).isDirectory(), `helper/${d}/ is missing`);
    const bad: string[] = [];
    for (const folder of PURE) {
      for (const file of sources(path.join(HELPER, folder))) {
        for (const target of imports(file)) {
          if (IMPURE.includes(target.split(path.sep)[0]!)) bad.push(`${path.relative(ROOT, file)} imports helper/${target}`);
        }
      }
    }
    assert.deepStrictEqual(bad, []);
  });

  it('the import scan sees imports (a pure file that imported kernel/ would be caught)', function () {
    // The check above is only as good as the scan: it must find the imports that exist.
    const host = imports(path.join(HELPER, 'host', 'host.ts'));
    assert.ok(host.includes(path.join('protocol', 'wire')), host.join(', '));
    const ipc = imports(path.join(HELPER, 'commands', 'ipc.ts'));
    assert.ok(ipc.includes(path.join('session', 'session')), ipc.join(', '));
  });

  it('`https-capture replay` loads no module of kernel/, discovery/ or session/, nor the addon', function () {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'layout-'));
    try {
      const loaded = path.join(dir, 'loaded.json');
      const preload = path.join(dir, 'preload.js');
      fs.writeFileSync(preload, `process.on('exit', () => require('fs').writeFileSync(${JSON.stringify(loaded)}, JSON.stringify(Object.keys(require.cache))));\n`);
      const out = path.join(dir, 'out.jsonl');
      const r = spawnSync(process.execPath, ['-r', preload, path.join(ROOT, 'dist', 'helper', 'cli.js'), 'replay', path.join(ROOT, 'fixtures', 'curl-get.frames'), '--format', 'jsonl', '-o', out], { encoding: 'utf8', timeout: 30000 });
      assert.strictEqual(r.status, 0, r.stderr);
      assert.match(fs.readFileSync(out, 'utf8'), /"method":"GET"/);
      const modules = (JSON.parse(fs.readFileSync(loaded, 'utf8')) as string[]).map((m) => path.relative(path.join(ROOT, 'dist', 'helper'), m));
      assert.ok(modules.some((m) => m.startsWith(`commands${path.sep}replay`)), 'the scan of loaded modules saw replay itself');
      const kernelSide = modules.filter((m) => /^(kernel|discovery|session)\//.test(m) || m.endsWith('bridge.node'));
      assert.deepStrictEqual(kernelSide, []);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
