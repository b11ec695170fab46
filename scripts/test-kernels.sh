#!/usr/bin/env bash
# test-kernels.sh: runs the kernel-path tests on a second kernel, Debian 12's own 6.1, in a
# QEMU/KVM guest (npm run test:kernels). The guest's root file system is made from Debian
# packages with debootstrap, once, into a cache outside the repository; the project tree is
# shared into the guest read-write over 9p at the same path, already built on this host (the
# BPF object built here is the one that must load there: that is what CO-RE promises).
#   test-kernels.sh                 the default set of kernel-path test files
#   test-kernels.sh --smoke         a small subset that fits CI's budget (docs/kernels.md)
#   test-kernels.sh FILE.test.ts…   these files (paths under test/)
# Environment: HTTPS_CAPTURE_GUEST_CACHE (default /var/cache/https-capture-guest),
# GUEST_KERNEL_PKG (default linux-image-amd64), GUEST_MEM (default 3G), GUEST_CPUS (2).
# Prints the guest's mocha closing line ("N passed, N failed, N skipped") and exits non-zero
# when a test failed or the guest did not report.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
say() { echo "test-kernels: $*" >&2; }

cache=${HTTPS_CAPTURE_GUEST_CACHE:-/var/cache/https-capture-guest}
# Debian's generic kernel: its cloud flavour (linux-image-cloud-amd64) has no 9p (CONFIG_NET_9P
# is not set), only virtiofs, which needs a virtiofsd daemon on the host.
kpkg=${GUEST_KERNEL_PKG:-linux-image-amd64}
mem=${GUEST_MEM:-3G}
cpus=${GUEST_CPUS:-2}

default_tests=(kernel/capture kernel/runtimes kernel/privileges kernel/connections kernel/discovery openssl-versions)
smoke_tests=(kernel/capture kernel/privileges)
tests=()
if [ "${1:-}" = --smoke ]; then tests=("${smoke_tests[@]}"); shift; fi
for t in "$@"; do t=${t#test/}; tests+=("${t%.ts}"); done
[ ${#tests[@]} -gt 0 ] || tests=("${default_tests[@]}")
for t in "${tests[@]}"; do
  t=${t%.test}
  [ -f "test/$t.test.ts" ] || { say "no such test file: test/$t.test.ts"; exit 2; }
done

[ "$(id -u)" = 0 ] || { say "needs root (debootstrap, and /dev/kvm for the guest): run it with sudo"; exit 1; }
[ -w /dev/kvm ] || { say "/dev/kvm is missing or not writable: enable KVM (nested virtualisation on a VM), or run where it works"; exit 1; }
need=()
for p in qemu-system-x86 debootstrap e2fsprogs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 1. The project, built on this host with the test programs (BPF object, addon, dist/).
bash scripts/setup.sh --test

# 2. The guest's root file system: the packages setup.sh --test installs (less the compilers
# the guest does not need: it runs what this host built), a kernel, and node. Rebuilt only
# when this list changes. The node binary is this host's (nodesource's node 20 is not a Debian
# 12 package; Debian 12's nodejs is 18): it needs only libc and libstdc++, which Debian 12 has.
pkgs="$kpkg,initramfs-tools,udev,kmod,iproute2,procps,util-linux,curl,openssl,nginx-light,wget,gnutls-bin,strace,libssl-dev,gcc,libc6-dev,golang-go,golang-github-vmihailenco-msgpack.v5-dev,tshark,nghttp2-client,bpftool,libbpf1,libelf1,zlib1g,python3,ca-certificates,libstdc++6"
stamp=$(printf '%s\n%s\n' "$pkgs" "$(sha256sum "$(command -v node)" | cut -d' ' -f1)" | sha256sum | cut -d' ' -f1)
mkdir -p "$cache"
if [ ! -f "$cache/rootfs.img" ] || [ "$(cat "$cache/stamp" 2>/dev/null)" != "$stamp" ]; then
  say "building the guest's root file system in $cache (debootstrap bookworm; a few minutes)"
  t0=$(date +%s)
  rm -rf "$cache/rootfs.tmp" "$cache/rootfs.img" "$cache/stamp"
  debootstrap --variant=minbase --include="$pkgs" bookworm "$cache/rootfs.tmp" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
    || { say "debootstrap failed: see $cache/debootstrap.log"; exit 1; }
  r=$cache/rootfs.tmp
  install -m 0755 "$(readlink -f "$(command -v node)")" "$r/usr/bin/node"
  printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
  echo guest >"$r/etc/hostname"
  printf '9p\n9pnet\n9pnet_virtio\n' >"$r/etc/modules"
  install -m 0755 scripts/guest-init.sh "$r/sbin/https-capture-guest-init"
  cp "$r"/boot/vmlinuz-* "$cache/vmlinuz"
  cp "$r"/boot/initrd.img-* "$cache/initrd.img"
  rm -rf "$r/var/cache/apt/archives/"*.deb
  # An ext4 image made from the directory without mounting it (mkfs.ext4 -d).
  mkfs.ext4 -q -F -L guestroot -d "$r" "$cache/rootfs.img" 8G
  rm -rf "$r"
  echo "$stamp" >"$cache/stamp"
  say "root file system built in $(( $(date +%s) - t0 )) s"
fi
# The init script changes more often than the packages: copy it in at every run (debugfs
# writes into the image without mounting it).
debugfs -w -R "rm /sbin/https-capture-guest-init" "$cache/rootfs.img" >/dev/null 2>&1 || true
debugfs -w -R "write scripts/guest-init.sh /sbin/https-capture-guest-init" "$cache/rootfs.img" >/dev/null 2>&1
debugfs -w -R "sif /sbin/https-capture-guest-init mode 0100755" "$cache/rootfs.img" >/dev/null 2>&1

# 3. Boot it. The run directory (a second 9p share) carries the test list in and the log out.
run=$cache/run
rm -rf "$run"; mkdir -p "$run"
printf '%s\n' "${tests[@]/%/.test.js}" | sed 's|^|dist/test/|' >"$run/tests"
echo "$repo" >"$run/repo"
shares=(-virtfs "local,path=$repo,mount_tag=project,security_model=none,multidevs=remap")
ossl=/var/cache/https-capture/openssl
[ -d "$ossl" ] && { shares+=(-virtfs "local,path=$ossl,mount_tag=openssl,security_model=none,readonly=on"); echo "$ossl" >"$run/openssl"; }
say "booting $(basename "$(readlink -f "$cache/vmlinuz")") ($kpkg) with ${#tests[@]} test files: ${tests[*]}"
t0=$(date +%s)
qemu-system-x86_64 -enable-kvm -cpu host -m "$mem" -smp "$cpus" -nographic -no-reboot -nic none \
  -kernel "$cache/vmlinuz" -initrd "$cache/initrd.img" \
  -append "console=ttyS0 root=/dev/vda rw init=/sbin/https-capture-guest-init panic=-1 quiet loglevel=4" \
  -drive "file=$cache/rootfs.img,if=virtio,format=raw,snapshot=on" \
  -virtfs "local,path=$run,mount_tag=run,security_model=none" \
  "${shares[@]}" </dev/null >"$run/console.log" 2>&1 &
qpid=$!
# The guest powers itself off when the tests end; a guest that hangs is stopped (by its pid).
limit=${GUEST_TIMEOUT:-3000}
while kill -0 "$qpid" 2>/dev/null; do
  if [ $(( $(date +%s) - t0 )) -gt "$limit" ]; then say "the guest ran longer than $limit s: stopping it"; kill "$qpid"; break; fi
  sleep 2
done
wait "$qpid" 2>/dev/null || true
total=$(( $(date +%s) - t0 ))
[ -f "$run/mocha.log" ] && cat "$run/mocha.log"
if [ ! -f "$run/rc" ]; then
  say "the guest did not report; its console:"; tail -40 "$run/console.log" >&2; exit 1
fi
boot=$(cat "$run/boot-seconds" 2>/dev/null || echo '?')
say "guest: $(cat "$run/uname"); booted to tests in ${boot} s; tests took $(cat "$run/test-seconds" 2>/dev/null || echo ?) s; ${total} s in all"
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$run/mocha.log" | tail -1 || true)
echo "guest $(cat "$run/uname"): ${line:-no result line}"
exit "$(cat "$run/rc")"
