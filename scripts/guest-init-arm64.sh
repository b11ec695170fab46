#!/bin/sh
# guest-init-arm64.sh: PID 1 of the arm64 guest of scripts/test-arm64.sh (installed in its root
# file system as /sbin/https-capture-guest-init). Mounts what the helper and the tests need and
# the 9p shares (the project, the npm cache, the run directory), runs the project's own
# `scripts/setup.sh --test` as a new user would, then the chosen test files; writes the logs,
# the times and the exit code into the run directory and powers the guest off. No service
# manager: nothing else runs in the guest, so no other probes disturb the tests' counts.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -o remount,rw /
hostname arm64-guest
ip link set lo up
modprobe 9pnet_virtio; modprobe 9p
opts=trans=virtio,version=9p2000.L,msize=524288
out=/run/hc
mkdir -p $out && mount -t 9p -o $opts run $out
repo=/root/https-capture
mkdir -p $repo /var/cache/npm-arm64
mount -t 9p -o $opts,cache=loose project $repo
mount -t 9p -o $opts npmcache /var/cache/npm-arm64
uname -r >$out/uname
up=$(cut -d' ' -f1 /proc/uptime)
echo "$up" >$out/boot-seconds
echo "arm64 guest: $(uname -r) $(uname -m), up in ${up}s; setup.sh --test, then $(wc -l <$out/tests) test files" >/dev/console
cd $repo
# The guest has no network: npm installs from the cache test-arm64.sh filled for arm64.
export npm_config_cache=/var/cache/npm-arm64 npm_config_offline=true npm_config_update_notifier=false
t0=$(date +%s)
bash scripts/setup.sh --test >$out/setup.log 2>&1
rc=$?
echo $(( $(date +%s) - t0 )) >$out/setup-seconds
echo "arm64 guest: setup.sh --test exited $rc after $(cat $out/setup-seconds) s" >/dev/console
# Waits in the tests (test/lib/servers.ts TIME_SCALE) and mocha's timeouts
# (test/lib/time-scale.js): longer under emulation; test-arm64.sh writes the factor.
[ -f $out/time-scale ] && export HTTPS_CAPTURE_TEST_TIME_SCALE=$(cat $out/time-scale)
if [ $rc = 0 ]; then
  t0=$(date +%s)
  node_modules/.bin/mocha --no-config --require test/lib/time-scale.js --reporter test/reporter.js --timeout 60000 --slow 20000 $(cat $out/tests) >$out/mocha.log 2>&1
  rc=$?
  echo $(( $(date +%s) - t0 )) >$out/test-seconds
fi
readelf -h bpf/build/capture.bpf.o bridge/build/Release/bridge.node 2>&1 | grep -E "File:|Machine:" >$out/objects
dmesg >$out/dmesg.log 2>&1
echo $rc >$out/rc
sync
echo 1 >/proc/sys/kernel/sysrq
echo o >/proc/sysrq-trigger
sleep 10
