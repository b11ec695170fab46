#!/bin/sh
# guest-init.sh: PID 1 of the test guest of scripts/test-kernels.sh (installed in its root file
# system as /sbin/https-capture-guest-init). Mounts what the helper and the tests need, mounts
# the project and the run directory over 9p, runs the chosen test files, writes their log and
# exit code into the run directory, and powers the guest off. No service manager: nothing
# else runs in the guest, so the tests' counts are not disturbed by anybody's probes.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
up0=$(cut -d' ' -f1 /proc/uptime 2>/dev/null)
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -o remount,rw /
hostname guest
ip link set lo up
modprobe 9pnet_virtio; modprobe 9p
opts=trans=virtio,version=9p2000.L,msize=524288
mkdir -p /run/hc && mount -t 9p -o $opts run /run/hc
out=/run/hc
repo=$(cat $out/repo)
mkdir -p "$repo" && mount -t 9p -o $opts,cache=loose project "$repo"
if [ -f $out/openssl ]; then o=$(cat $out/openssl); mkdir -p "$o" && mount -t 9p -o $opts,ro openssl "$o"; fi
uname -r >$out/uname
up1=$(cut -d' ' -f1 /proc/uptime)
echo "$up1" >$out/boot-seconds
echo "guest: $(uname -r), up in ${up1}s (${up0}s at init); running $(wc -l <$out/tests) test files" >/dev/console
cd "$repo"
t0=$(date +%s)
node_modules/.bin/mocha --no-config --reporter test/reporter.js --timeout 60000 --slow 5000 $(cat $out/tests) >$out/mocha.log 2>&1
rc=$?
echo $(( $(date +%s) - t0 )) >$out/test-seconds
dmesg >$out/dmesg.log 2>&1
echo $rc >$out/rc
sync
echo 1 >/proc/sys/kernel/sysrq
echo o >/proc/sysrq-trigger
sleep 10
