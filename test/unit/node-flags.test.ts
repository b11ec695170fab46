// node-flags.test.ts: the helper runs with helper/package.ts NODE_FLAGS however it is started:
// the shebang of the `https-capture` command (the package's bin, the image, the systemd unit)
// and `npm start` carry the same flags, and the flags do what they are there for (a small young
// generation, an old generation that grows less past what is live: resident memory under load,
// issue #15).
import * as assert from 'assert';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { NODE_FLAGS } from '../../helper/package';
import { ROOT as PACKAGE_ROOT } from '../lib/paths';

describe('node flags of the helper (no root)', () => {
  it('the shebang of helper/cli.ts and dist/helper/cli.js, and npm start, carry NODE_FLAGS', () => {
    const want = `#!/usr/bin/env -S node ${NODE_FLAGS.join(' ')}`;
    for (const f of ['helper/cli.ts', 'dist/helper/cli.js']) assert.strictEqual(fs.readFileSync(path.join(PACKAGE_ROOT, f), 'utf8').split('\n')[0], want, f);
    const pkg = JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    assert.strictEqual(pkg.scripts.start, `node ${NODE_FLAGS.join(' ')} dist/helper/cli.js`);
  });

  it('the shebang runs: the command prints its help through env -S', () => {
    const cli = path.join(PACKAGE_ROOT, 'dist', 'helper', 'cli.js');
    // As the kernel runs it: the interpreter, then the rest of the line as one argument.
    const line = fs.readFileSync(cli, 'utf8').split('\n')[0]!.slice(2);
    const at = line.indexOf(' ');
    const out = execFileSync(line.slice(0, at), [line.slice(at + 1), cli, '--help'], { encoding: 'utf8' });
    assert.match(out, /^Usage: https-capture/);
  });

  it('with NODE_FLAGS the young generation stays small under allocation (without: 32 MiB)', function () {
    this.timeout(30_000);
    const probe = "let k=[];for(let i=0;i<2e6;i++){k.push({a:i,b:'x'+i});if(k.length>2e5)k=[]}process.stdout.write(String(require('v8').getHeapSpaceStatistics().find(s=>s.space_name==='new_space').space_size))";
    const size = (flags: string[]): number => Number(execFileSync(process.execPath, [...flags, '-e', probe], { encoding: 'utf8' }));
    const small = size(NODE_FLAGS);
    const dflt = size([]);
    assert.ok(small <= 8 << 20, `new space with ${NODE_FLAGS.join(' ')}: ${small} bytes`);
    assert.ok(dflt > small, `new space without: ${dflt} bytes, with: ${small}`);
  });

  it('with NODE_FLAGS the old generation grows less past what is live (20 MiB live, strings replaced)', function () {
    this.timeout(30_000);
    // 20 000 strings of 1 KB live, each replaced 20 times: the old space's largest size.
    const probe =
      "const v8=require('v8');let max=0;const live=new Array(20000);" +
      "for(let i=0;i<400000;i++){live[i%20000]='y'.repeat(1000)+i;if(i%2000===0){const s=v8.getHeapSpaceStatistics().find(s=>s.space_name==='old_space').space_size;if(s>max)max=s}}" +
      'process.stdout.write(String(max))';
    const size = (flags: string[]): number => Number(execFileSync(process.execPath, [...flags, '-e', probe], { encoding: 'utf8' }));
    const young = NODE_FLAGS.filter((f) => f.startsWith('--max-semi-space-size'));
    const withFlags = size(NODE_FLAGS);
    const without = size(young);
    assert.ok(withFlags < without, `old space peak with ${NODE_FLAGS.join(' ')}: ${withFlags >> 20} MiB, with only ${young.join(' ')}: ${without >> 20} MiB`);
  });
});
