#!/usr/bin/env bash
# test-kernels.sh: runs the kernel-path tests on a second kernel, Debian 12's own 6.1, in a
# QEMU guest (npm run test:kernels). KVM when /dev/kvm is usable, otherwise TCG emulation
# (-accel tcg -cpu max: about ten times slower, which is why the default is a smoke subset); a
# host whose KVM is PVM (kvm_pvm) is emulated too, as it boots only PVM guest kernels.
# The guest's root file system is made from Debian packages with debootstrap, once, into a
# cache outside the repository; a copy of the project tree, built on this host, is shared into
# the guest over 9p at the same path (the BPF object built here is the one that must load
# there: that is what CO-RE promises).
#   test-kernels.sh                 the smoke subset (SMOKE below; docs/kernels.md has its times)
#   test-kernels.sh --all           every file in test/kernel/
#   test-kernels.sh FILE…           these files (test/kernel/capture.test.ts, kernel/capture, capture)
#   test-kernels.sh --kernel 5.10 [FILE…]   Debian 11's kernel instead (installed into the root
#                                   file system from bullseye on first use); it lacks task
#                                   storage and bpf_loop, so the default there is
#                                   kernel-features, which checks that the helper says so
# Environment: HTTPS_CAPTURE_GUEST_CACHE (default /var/cache/https-capture-guest),
# GUEST_MEM (default 3G), GUEST_CPUS (default 2 with KVM, 1 with TCG), GUEST_ACCEL (kvm or tcg:
# force one), GUEST_TIMEOUT (seconds for the whole guest), GUEST_BOOT_TIMEOUT (seconds to reach
# its init: 120 with KVM, 600 with TCG).
# Prints each file's result and time, then "guest <release>: N passed, N failed, N skipped",
# and exits non-zero when a test failed or the guest did not report.
set -euo pipefail
# Bash reads a script while it runs it: run a copy, so that editing this file during a run (it
# takes minutes) cannot change what the running one does.
if [ -z "${TEST_KERNELS_REPO:-}" ]; then
  TEST_KERNELS_REPO=$(cd "$(dirname "$0")/.." && pwd); export TEST_KERNELS_REPO
  copy=$(mktemp /tmp/test-kernels.XXXXXX); cp "$0" "$copy"
  exec bash "$copy" "$@"
fi
[ "$(basename "$0")" = test-kernels.sh ] || trap 'rm -f "$0"' EXIT
cd "$TEST_KERNELS_REPO"
repo=$(pwd)
say() { echo "test-kernels: $*" >&2; }

cache=${HTTPS_CAPTURE_GUEST_CACHE:-/var/cache/https-capture-guest}
# Debian's generic kernel, not its cloud flavour (linux-image-cloud-amd64): the cloud kernel has
# no 9p (CONFIG_NET_9P is not set), only virtiofs, which needs a virtiofsd daemon on the host.
# Their BPF, BTF, uprobe and tracing options are the same (docs/kernels.md).
kpkg=linux-image-amd64
mem=${GUEST_MEM:-3G}

# The smoke subset, by file: curl <-> nginx (OpenSSL), wget (GnuTLS), python and s_client
# (capture); Go, node and GnuTLS roles (runtimes); SIGKILL leaves nothing behind (cli);
# 4-tuples of 250 connections (connections); the capabilities 6.1 asks for (privileges).
SMOKE=(capture runtimes cli connections privileges kernel-features)
tests=()
series=6.1
if [ "${1:-}" = --kernel ]; then
  series=${2:?--kernel needs a version: 6.1 or 5.10}; shift 2
  case "$series" in 6.1|5.10) ;; *) say "--kernel $series: this script knows 6.1 (Debian 12) and 5.10 (Debian 11)"; exit 2 ;; esac
  [ "$series" = 5.10 ] && [ $# = 0 ] && set -- kernel-features
fi
case "${1:-}" in
  --all) shift; for f in test/kernel/*.test.ts; do tests+=("$(basename "$f" .test.ts)"); done ;;
  --smoke) shift; tests=("${SMOKE[@]}") ;;
esac
for t in "$@"; do t=$(basename "$t"); tests+=("${t%%.*}"); done
[ ${#tests[@]} -gt 0 ] || tests=("${SMOKE[@]}")
for t in "${tests[@]}"; do
  [ -f "test/kernel/$t.test.ts" ] || { say "no such test file: test/kernel/$t.test.ts (the files are in test/kernel/)"; exit 2; }
done

[ "$(id -u)" = 0 ] || { say "needs root (debootstrap and the guest's image): run it with sudo"; exit 1; }
accel=${GUEST_ACCEL:-}
pvm=""
# A host whose KVM is PVM (the kvm_pvm module: KVM without hardware virtualization, as inside
# some cloud microVMs) runs only guest kernels built for PVM; Debian's stops at its first
# instruction there, printing nothing (seen here: /dev/kvm writable, kvm_pvm loaded).
[ -d /sys/module/kvm_pvm ] && pvm=1
if [ -z "$accel" ]; then
  if [ -w /dev/kvm ] && [ -z "$pvm" ]; then accel=kvm; else accel=tcg; fi
fi
if [ "$accel" = kvm ]; then
  [ -w /dev/kvm ] || { say "GUEST_ACCEL=kvm but /dev/kvm is missing or not writable: enable KVM, or unset GUEST_ACCEL to emulate (TCG)"; exit 1; }
  [ -z "$pvm" ] || say "warning: this host's KVM is PVM (kvm_pvm), which runs only PVM guest kernels: Debian's will hang; unset GUEST_ACCEL to emulate"
  accel_args=(-accel kvm -cpu host); cpus=${GUEST_CPUS:-2}; why="/dev/kvm is usable"
else
  # Emulation: -cpu max gives the guest every x86 feature TCG can emulate; one vCPU by default
  # because every helper on this host shares its cores.
  accel_args=(-accel tcg -cpu max); cpus=${GUEST_CPUS:-1}; why="no usable /dev/kvm: emulated, about ten times slower than KVM"
  [ -n "$pvm" ] && why="this host's KVM is PVM (kvm_pvm), which boots only PVM guest kernels: emulated, about ten times slower"
fi
need=()
for p in qemu-system-x86 debootstrap e2fsprogs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# One run per kernel series at a time (each has its own run directory and tree copy).
mkdir -p "$cache"
exec 9>"$cache/lock-$series"
flock -n 9 || { say "another test-kernels.sh run on $series is using $cache: wait for it to end"; exit 1; }

# 1. The project, built on this host with the test programs (BPF object, addon, dist/).
bash scripts/setup.sh --test

# 2. The guest's root file system: the packages setup.sh --test installs (less the compilers
# the guest does not need: it runs what this host built), a kernel, and node. Rebuilt only
# when this list changes. The node binary is this host's (nodesource's node 20 is not a Debian
# 12 package; Debian 12's nodejs is 18): it needs only libc and libstdc++, which Debian 12 has.
pkgs="$kpkg,initramfs-tools,udev,kmod,iproute2,procps,util-linux,curl,openssl,nginx-light,wget,gnutls-bin,strace,libssl-dev,gcc,libc6-dev,golang-go,golang-github-vmihailenco-msgpack.v5-dev,tshark,nghttp2-client,bpftool,libbpf1,libelf1,zlib1g,python3,ca-certificates,libstdc++6"
stamp=$(printf '%s\n%s\n' "$pkgs" "$(sha256sum "$(command -v node)" | cut -d' ' -f1)" | sha256sum | cut -d' ' -f1)
r=$cache/rootfs.tmp
mkdir -p "$cache"
if [ ! -d "$r/boot" ] || [ "$(cat "$cache/stamp" 2>/dev/null)" != "$stamp" ]; then
  say "building the guest's root file system in $r (debootstrap bookworm; a few minutes)"
  t0=$(date +%s)
  rm -rf "$r" "$cache/rootfs.img" "$cache/stamp" "$cache/image-stamp"
  debootstrap --variant=minbase --include="$pkgs" bookworm "$r" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
    || { say "debootstrap failed: see $cache/debootstrap.log"; exit 1; }
  install -m 0755 "$(readlink -f "$(command -v node)")" "$r/usr/bin/node"
  printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
  echo guest >"$r/etc/hostname"
  rm -rf "$r/var/cache/apt/archives/"*.deb
  echo "$stamp" >"$cache/stamp"
  say "root file system built in $(( $(date +%s) - t0 )) s"
fi
# PID 1 of the guest: a fixed stub that mounts the run directory (9p) and runs the
# scripts/guest-init.sh this run copied there, so that the image need not change when the
# init script does.
stub='#!/bin/sh
# https-capture-guest-init (made by scripts/test-kernels.sh): runs the guest-init.sh of this run.
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
modprobe 9pnet_virtio; modprobe 9p
mkdir -p /mnt/hc && mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 run /mnt/hc && exec /bin/sh /mnt/hc/init.sh
echo "https-capture-guest-init: could not mount the run directory over 9p" >/dev/console
echo o >/proc/sysrq-trigger'
# Debian 11's kernel, for --kernel 5.10: bullseye's linux-image-amd64, fetched with apt-get from
# a private list (this host's sources stay as they are) and installed into the root file system
# with dpkg in a chroot (its postinst makes the initrd, with the 9p and virtio modules of 5.10).
if [ "$series" = 5.10 ] && ! ls "$r"/boot/vmlinuz-5.10.* >/dev/null 2>&1; then
  d=$cache/bullseye
  mkdir -p "$d/lists/partial"
  echo "deb http://deb.debian.org/debian bullseye main" >"$d/sources.list"
  apto=(-o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/nonexistent -o Dir::State::Lists="$d/lists")
  apt-get -qq "${apto[@]}" update
  kp=$(apt-cache "${apto[@]}" depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-5\.10/ { print $2; exit }')
  [ -n "$kp" ] || { say "bullseye's linux-image-amd64 names no 5.10 kernel"; exit 1; }
  say "installing $kp (Debian 11) into $r"
  (cd "$d" && apt-get -qq "${apto[@]}" download "$kp" 2>/dev/null)
  cp "$d/${kp}"_*.deb "$r/tmp/kernel.deb"
  mount -t proc proc "$r/proc"
  chroot "$r" dpkg -i /tmp/kernel.deb >"$d/dpkg.log" 2>&1 || { umount "$r/proc"; say "dpkg -i $kp failed: see $d/dpkg.log"; exit 1; }
  umount "$r/proc"
  rm -f "$r/tmp/kernel.deb"
fi
kernel=$(cd "$r/boot" && ls vmlinuz-"$series".* 2>/dev/null | grep -v -- -cloud- | sort -V | tail -1 || true)
[ -n "$kernel" ] || { say "no $series kernel in $r/boot: remove $cache/stamp to rebuild the root file system"; exit 1; }
initrd=$r/boot/initrd.img-${kernel#vmlinuz-}
# The ext4 image, made from the directory without mounting it (mkfs.ext4 -d); the directory
# stays, for the kernels and initrds it holds and for --kernel 5.10 to install into.
istamp=$(printf '%s\n%s\n%s\n' "$stamp" "$stub" "$(ls "$r/boot")" | sha256sum | cut -d' ' -f1)
if [ ! -f "$cache/rootfs.img" ] || [ "$(cat "$cache/image-stamp" 2>/dev/null)" != "$istamp" ]; then
  printf '%s\n' "$stub" >"$r/usr/sbin/https-capture-guest-init"; chmod 0755 "$r/usr/sbin/https-capture-guest-init"
  rm -f "$cache/rootfs.img"
  mkfs.ext4 -q -F -L guestroot -d "$r" "$cache/rootfs.img" 8G
  echo "$istamp" >"$cache/image-stamp"
  say "guest image $cache/rootfs.img made from $r"
fi

# Go's build cache, shared with the guest: test/kernel/runtimes.test.ts builds its Go programs
# (HTTPS_CAPTURE_GOCACHE), and compiling Go's standard library under emulation takes longer
# than the tests. Warmed here with the same toolchain (both are Debian 12's golang-go).
gocache=$cache/gocache
mkdir -p "$gocache"
(cd test/lib/gotls && HOME=$cache GOCACHE=$gocache GOPATH=$cache/gopath GOFLAGS=-mod=mod GOPROXY=off CGO_ENABLED=0 \
  go build -o /dev/null . ) || say "could not warm Go's build cache: the Go tests build from scratch in the guest"

# 3. Boot it. The run directory (a second 9p share) carries the test list in and the logs out.
run=$cache/run-$series
rm -rf "$run"; mkdir -p "$run"
printf '%s\n' "${tests[@]}" >"$run/tests"
echo "$repo" >"$run/repo"
cp scripts/guest-init.sh "$run/init.sh"
echo "$gocache" >"$run/gocache"
# The guest runs a copy of the built tree (about 100 MB, seconds to copy), mounted at the same
# path: edits and rebuilds here during a run cannot reach it half-written.
tree=$cache/tree-$series
rm -rf "$tree"; mkdir -p "$tree"
tar -C "$repo" --exclude=./.git -cf - . | tar -C "$tree" -xf -
shares=(-virtfs "local,path=$tree,mount_tag=project,security_model=none,multidevs=remap")
shares+=(-virtfs "local,path=$gocache,mount_tag=gocache,security_model=none")
ossl=/var/cache/https-capture/openssl
[ -d "$ossl" ] && { shares+=(-virtfs "local,path=$ossl,mount_tag=openssl,security_model=none,readonly=on"); echo "$ossl" >"$run/openssl"; }
# Under emulation every timeout and wait of the tests is five times longer (mocha's through
# test/lib/time-scale.js, the test library's through HTTPS_CAPTURE_TEST_TIME_SCALE).
if [ "$accel" = tcg ]; then echo 5 >"$run/time-scale"; fi
limit=${GUEST_TIMEOUT:-$(( ${#tests[@]} * 1200 + 600 ))}
# Boot: 16 s under TCG here (docs/kernels.md), a few under KVM.
if [ "$accel" = kvm ]; then boot_limit=${GUEST_BOOT_TIMEOUT:-120}; else boot_limit=${GUEST_BOOT_TIMEOUT:-600}; fi
say "accelerator: $accel ($why); -smp $cpus, -m $mem, qemu at nice 10"
say "booting $kernel with ${#tests[@]} test files: ${tests[*]} (at most $limit s)"
t0=$(date +%s)
nice -n 10 qemu-system-x86_64 "${accel_args[@]}" -m "$mem" -smp "$cpus" -nographic -no-reboot -nic none \
  -kernel "$r/boot/$kernel" -initrd "$initrd" \
  -append "console=ttyS0 root=/dev/vda rw init=/usr/sbin/https-capture-guest-init panic=-1 quiet loglevel=4" \
  -drive "file=$cache/rootfs.img,if=virtio,format=raw,snapshot=on" \
  -virtfs "local,path=$run,mount_tag=run,security_model=none" \
  "${shares[@]}" </dev/null >"$run/console.log" 2>&1 &
qpid=$!
# The guest powers itself off when the tests end; a guest that hangs is stopped (by its pid).
# Each file's result is shown as the guest writes it.
shown=0
while kill -0 "$qpid" 2>/dev/null; do
  if [ $(( $(date +%s) - t0 )) -gt "$limit" ]; then say "the guest ran longer than $limit s: stopping it"; kill "$qpid"; break; fi
  # A guest that never reaches its init (a kernel this accelerator cannot run) is stopped early.
  if [ ! -f "$run/uname" ] && [ $(( $(date +%s) - t0 )) -gt "$boot_limit" ]; then
    say "the guest did not reach its init in $boot_limit s ($accel): stopping it; GUEST_ACCEL=tcg emulates"; kill "$qpid"; break
  fi
  if [ -f "$run/results" ]; then
    n=$(wc -l <"$run/results")
    [ "$n" -gt "$shown" ] && { tail -n +$((shown + 1)) "$run/results" | sed 's/^/test-kernels: /' >&2; shown=$n; }
  fi
  sleep 2
done
wait "$qpid" 2>/dev/null || true
total=$(( $(date +%s) - t0 ))
if [ ! -f "$run/rc" ]; then
  [ -f "$run/results" ] && cat "$run/results" >&2
  say "the guest did not report (logs in $run); its console:"; tail -40 "$run/console.log" >&2; exit 1
fi
[ "$shown" -lt "$(wc -l <"$run/results")" ] && tail -n +$((shown + 1)) "$run/results" | sed 's/^/test-kernels: /' >&2
# Failures in full (each file's log is in $run/<file>.log).
for t in "${tests[@]}"; do
  grep -q " $t: .*rc [1-9]" "$run/results" 2>/dev/null && { say "--- $t failed:"; sed -n '/failing$/,$p' "$run/$t.log" | head -80 >&2; }
done
read -r passed failed skipped < <(awk '/^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$/ { p += $1; f += $3; s += $5 } END { print p+0, f+0, s+0 }' "$run"/*.log)
say "guest $(cat "$run/uname") ($accel): up in $(cat "$run/boot-seconds" 2>/dev/null || echo '?') s, tests $(cat "$run/test-seconds" 2>/dev/null || echo '?') s, ${total} s in all; logs in $run"
echo "guest $(cat "$run/uname"): $passed passed, $failed failed, $skipped skipped"
rc=$(cat "$run/rc")
[ "$rc" = 0 ] && [ "$failed" = 0 ] && [ "$passed" -gt 0 ]
