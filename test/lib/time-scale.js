// time-scale.js: a mocha --require for slow machines (scripts/test-kernels.sh passes it in an
// emulated guest): every timeout a suite or test sets, and the default, is multiplied by
// HTTPS_CAPTURE_TEST_TIME_SCALE, as test/lib/servers.ts multiplies its waits. Nothing changes
// without that variable.
'use strict';
const Mocha = require('mocha');

const scale = Math.max(1, Number(process.env.HTTPS_CAPTURE_TEST_TIME_SCALE) || 1);
if (scale > 1) {
  for (const proto of [Mocha.Runnable.prototype, Mocha.Suite.prototype]) {
    const timeout = proto.timeout;
    proto.timeout = function (ms) {
      if (arguments.length === 0) return timeout.call(this);
      const n = typeof ms === 'number' ? ms : Number(ms);
      // 0 (no timeout) and mocha's own values (strings like '2s') pass unchanged.
      return timeout.call(this, Number.isFinite(n) && n > 0 ? n * scale : ms);
    };
  }
}
