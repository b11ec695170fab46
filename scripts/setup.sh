#!/usr/bin/env bash
# setup.sh: makes a fresh Debian/Ubuntu machine able to build and run https-capture, then
# builds whatever is stale. Idempotent and quick when nothing is missing.
#   setup.sh               system packages for building, npm modules, build  (npm start)
#   setup.sh --test        the same, plus the programs the tests drive           (npm test)
#   setup.sh --bench       the same as --test, plus the load tools and the Go host  (npm run bench)
#   setup.sh --build-only  build only; say what is missing instead of installing (npm run build)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-run}
say() { echo "setup: $*" >&2; }

# Debian packages: to build the BPF object and the addon; to run the kernel tests.
build_pkgs=(clang llvm libbpf-dev libelf-dev zlib1g-dev bpftool make g++ pkg-config python3 xz-utils)
test_pkgs=(curl openssl nginx-light wget gnutls-bin procps util-linux strace libssl-dev gcc golang-go golang-github-vmihailenco-msgpack.v5-dev tshark nghttp2-client android-libboringssl-dev libnss3-tools librust-rustls-dev librust-tokio-rustls-dev cargo rustc)

bench_pkgs=(wrk nghttp2-client gnuplot-nox)

missing=()
want=("${build_pkgs[@]}")
[ "$mode" = --test ] && want+=("${test_pkgs[@]}")
[ "$mode" = --bench ] && want+=("${test_pkgs[@]}" "${bench_pkgs[@]}")
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# Any nginx will do for the tests.
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  missing=("${missing[@]/nginx-light/}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep . || true))

if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing system packages: ${missing[*]}; this script knows only apt-get (Debian, Ubuntu): install their equivalents"
    exit 1
  fi
  if [ "$(id -u)" != 0 ] || [ "$mode" = --build-only ]; then
    say "missing system packages: ${missing[*]}"
    say "install them with: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# OpenSSL 1.1.1 and 3.5 for test/kernel/openssl-versions.test.ts: Debian 11's and 13's packages,
# unpacked into a cache outside the repository, never installed (scripts/fetch-openssl.sh).
if [ "$mode" = --test ] || [ "$mode" = --bench ]; then
  if [ "$(id -u)" = 0 ]; then
    bash scripts/fetch-openssl.sh || say "could not fetch OpenSSL 1.1.1 and 3.5 for the tests: test/kernel/openssl-versions.test.ts will fail until scripts/fetch-openssl.sh works"
    # arm64 builds for the arm64 planner's unit test (test/unit/openssl-arm64.test.ts); on an
    # arm64 machine too (it reads them, never runs them).
    bash scripts/fetch-arm64.sh || say "could not fetch the arm64 libssl3 and node: test/unit/openssl-arm64.test.ts will fail until scripts/fetch-arm64.sh works"
  else
    say "not root: OpenSSL 1.1.1 and 3.5 and the arm64 builds for the tests are not fetched; run sudo bash scripts/fetch-openssl.sh && sudo bash scripts/fetch-arm64.sh"
  fi
fi

# npm modules: when absent or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm modules"
  npm ci --no-audit --no-fund --loglevel=error 2>&1 | grep -v 'Unknown user config' >&2 || true
  [ -d node_modules/typescript ] || { say "npm ci failed"; exit 1; }
fi

# The CO-RE BPF object is built here, from this machine's kernel BTF (make rebuilds it when
# its sources change); `npm pack` ships it prebuilt (scripts/pack.sh, README "Install without
# a compiler").
make -s -C bpf >&2

# The addon, when its sources or the shared header are newer than it.
addon=bridge/build/Release/bridge.node
if [ ! -f "$addon" ] || [ -n "$(find bridge/src bridge/binding.gyp bpf/capture.h -newer "$addon" 2>/dev/null)" ]; then
  say "building bridge/"
  # Headers of the running node when it ships them (Debian's and most packaged nodes do);
  # otherwise node-gyp downloads them.
  nodedir=()
  prefix=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
  [ -f "$prefix/include/node/node.h" ] && nodedir=(--nodedir="$prefix")
  node_modules/.bin/node-gyp rebuild -C bridge "${nodedir[@]}" --loglevel=error 2>&1 | grep -v 'Unknown user config' >&2
  [ -f "$addon" ] || { say "building bridge/ failed"; exit 1; }
fi

# Types of the wire protocol, derived from schemas/, and the record layout, derived from
# bpf/capture.h (each rewritten only when it changes), then TypeScript.
node scripts/gen-types.js >&2
node scripts/gen-layout.js >&2
node_modules/.bin/tsc -p . >&2

# The bench's host: integrations/apidump's capture-stats, built offline from Debian's Go.
if [ "$mode" = --bench ]; then
  out=bench/build/capture-stats
  if [ ! -x "$out" ] || [ -n "$(find integrations/apidump -name '*.go' -newer "$out" 2>/dev/null)" ]; then
    say "building $out"
    mkdir -p bench/build
    (cd integrations/apidump && ./offline.sh go build -o "../../$out" ./cmd/capture-stats) >&2
  fi
fi
