// build-id.test.ts: the build identity that lets a copy of a planned file reuse its probe plan
// (a private libssl, a copied Go binary), read from ELF notes and checked against readelf.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { buildKey, ElfFile } from '../../helper/discovery/elf';
import { tmpDir } from '../lib/servers';

const LIBSSL = '/lib/x86_64-linux-gnu/libssl.so.3';

function readelfBuildId(file: string): string {
  const r = spawnSync('readelf', ['-n', file], { encoding: 'utf8' });
  const m = /Build ID: ([0-9a-f]+)/.exec(r.stdout);
  if (!m) throw new Error(`readelf -n ${file} shows no build id: ${r.stderr}`);
  return m[1]!;
}

describe('ELF build ids (plans reused across copies of one build)', function () {
  let dir: string;
  before(() => {
    dir = tmpDir('https-capture-build-id-');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("reads the GNU build id of libssl and curl as readelf does", () => {
    for (const f of [LIBSSL, '/usr/bin/curl']) {
      const elf = ElfFile.open(f);
      try {
        assert.strictEqual(elf.buildId(), `GNU:${readelfBuildId(f)}`, f);
      } finally {
        elf.close();
      }
    }
  });

  it('a copy (another inode) has the same key; a changed build id or size does not', () => {
    const copy = path.join(dir, 'libssl.so.3');
    fs.copyFileSync(LIBSSL, copy);
    assert.notStrictEqual(fs.statSync(copy).ino, fs.statSync(LIBSSL).ino);
    const key = buildKey(LIBSSL);
    assert.ok(key?.startsWith('GNU:'), String(key));
    assert.strictEqual(buildKey(copy), key);

    // Flip one byte of the build id note's descriptor: another build.
    const elf = ElfFile.open(copy);
    const id = elf.buildId()!.slice(4);
    elf.close();
    const bytes = fs.readFileSync(copy);
    const at = bytes.indexOf(Buffer.from(id, 'hex'));
    assert.ok(at > 0);
    bytes[at] = bytes[at]! ^ 0xff;
    fs.writeFileSync(copy, bytes);
    assert.notStrictEqual(buildKey(copy), key);

    // Same build id, another size: not taken for the same file.
    bytes[at] = bytes[at]! ^ 0xff;
    fs.writeFileSync(copy, Buffer.concat([bytes, Buffer.alloc(1)]));
    assert.notStrictEqual(buildKey(copy), key);
  });

  it('a file without notes or not ELF has none', () => {
    const f = path.join(dir, 'text');
    fs.writeFileSync(f, 'not an ELF file at all, but long enough to be read as one ........\n');
    assert.strictEqual(buildKey(f), undefined);
    assert.strictEqual(buildKey(path.join(dir, 'absent')), undefined);
  });
});
