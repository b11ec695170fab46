// reporter.js: mocha's spec reporter, plus the closing line CI reads: "N passed, N failed, N skipped".
'use strict';
const Mocha = require('mocha');

class Reporter extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    // Tests of the suites that called requireKernel() (test/lib/kernel.ts): the kernel path.
    const kernel = { passed: 0, failed: 0, skipped: 0 };
    const onKernel = (test) => {
      const suites = globalThis[Symbol.for('https-capture.kernelSuites')];
      for (let s = test.parent; s && suites; s = s.parent) if (suites.has(s)) return true;
      return false;
    };
    const { EVENT_TEST_PASS, EVENT_TEST_FAIL, EVENT_TEST_PENDING, EVENT_RUN_END } = Mocha.Runner.constants;
    runner.on(EVENT_TEST_PASS, (t) => onKernel(t) && kernel.passed++);
    runner.on(EVENT_TEST_FAIL, (t) => onKernel(t) && kernel.failed++);
    runner.on(EVENT_TEST_PENDING, (t) => onKernel(t) && kernel.skipped++);
    runner.once(EVENT_RUN_END, () => {
      const s = runner.stats || {};
      process.stdout.write(`\nkernel path (real eBPF): ${kernel.passed} passed, ${kernel.failed} failed, ${kernel.skipped} skipped\n`);
      process.stdout.write(`\n${s.passes || 0} passed, ${s.failures || 0} failed, ${s.pending || 0} skipped\n`);
    });
  }
}

module.exports = Reporter;
