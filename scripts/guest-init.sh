#!/bin/sh
# guest-init.sh: PID 1 of the test guest of scripts/test-kernels.sh, run by the image's
# /usr/sbin/https-capture-guest-init from the run directory (9p, mounted at /mnt/hc). Mounts
# what the helper and the tests need and the project over 9p, runs the chosen test files one
# mocha each, writes their logs, times and exit code into the run directory, and powers the
# guest off. No service manager: nothing else runs in the guest, so the tests' counts are not
# disturbed by anybody's probes.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
up0=$(cut -d' ' -f1 /proc/uptime 2>/dev/null)
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -o remount,rw /
hostname guest
ip link set lo up
opts=trans=virtio,version=9p2000.L,msize=524288
out=/mnt/hc
repo=$(cat $out/repo)
mkdir -p "$repo" && mount -t 9p -o $opts,cache=loose project "$repo"
if [ -f $out/openssl ]; then o=$(cat $out/openssl); mkdir -p "$o" && mount -t 9p -o $opts,ro openssl "$o"; fi
if [ -f $out/gocache ]; then g=$(cat $out/gocache); mkdir -p "$g" && mount -t 9p -o $opts gocache "$g"; export HTTPS_CAPTURE_GOCACHE="$g"; fi
uname -r >$out/uname
up1=$(cut -d' ' -f1 /proc/uptime)
echo "$up1" >$out/boot-seconds
echo "guest: $(uname -r), up in ${up1}s (${up0}s at init); running $(wc -l <$out/tests) test files" >/dev/console
cd "$repo"
# CI=true: a kernel path that cannot be used fails the suite instead of skipping it.
export CI=true
# Waits in the tests (test/lib/servers.ts TIME_SCALE): longer under emulation.
[ -f $out/time-scale ] && export HTTPS_CAPTURE_TEST_TIME_SCALE=$(cat $out/time-scale)
# One mocha per file, so that each file's time and result are its own (results: one line each).
t0=$(date +%s)
rc=0
for t in $(cat $out/tests); do
  s=$(date +%s)
  node_modules/.bin/mocha --no-config --require test/lib/time-scale.js --reporter test/reporter.js --timeout 60000 --slow 30000 \
    "dist/test/kernel/$t.test.js" >$out/$t.log 2>&1
  r=$?
  [ $r = 0 ] || rc=1
  echo "$(uname -r) $t: $(grep -E '^[0-9]+ passed, [0-9]+ failed' $out/$t.log | tail -1) in $(( $(date +%s) - s )) s, rc $r" >>$out/results
  sync
done
echo $(( $(date +%s) - t0 )) >$out/test-seconds
dmesg >$out/dmesg.log 2>&1
echo $rc >$out/rc
sync
echo 1 >/proc/sys/kernel/sysrq
echo o >/proc/sysrq-trigger
sleep 10
