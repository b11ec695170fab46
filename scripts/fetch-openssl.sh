#!/usr/bin/env bash
# fetch-openssl.sh: other OpenSSL versions for the tests (test/kernel/openssl-versions.test.ts), from
# Debian's archive, unpacked into a cache outside the repository and never installed:
#   <cache>/1.1.1/  libssl1.1 + openssl of Debian 11 (bullseye): OpenSSL 1.1.1
#   <cache>/3.5/    libssl3t64 + openssl of Debian 13 (trixie): OpenSSL 3.5, with trixie's
#                   libc6 and libzstd1, because its libcrypto needs glibc 2.38 (Debian 12 has
#                   2.36); programs run under that root's own loader (ld-linux-x86-64.so.2)
# The suites are added only for this: apt reads a private sources file and lists directory,
# so the system's apt state is untouched. Quick when the cache is already there.
#   fetch-openssl.sh [CACHE]   (default: $HTTPS_CAPTURE_CACHE or /var/cache/https-capture/openssl)
set -euo pipefail
cache=${1:-${HTTPS_CAPTURE_CACHE:-/var/cache/https-capture}/openssl}
say() { echo "fetch-openssl: $*" >&2; }

if [ -f "$cache/1.1.1/.done" ] && [ -f "$cache/3.5/.done" ]; then exit 0; fi
command -v apt-get >/dev/null || { say "apt-get not found: these test libraries come from Debian's archive"; exit 1; }
command -v dpkg-deb >/dev/null || { say "dpkg-deb not found: install dpkg"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || { say "$keyring not found: install debian-archive-keyring"; exit 1; }
cat >"$work/sources.list" <<EOF
deb [signed-by=$keyring] http://deb.debian.org/debian bullseye main
deb [signed-by=$keyring] http://deb.debian.org/debian trixie main
EOF
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
apt=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root -qq)
say "reading the bullseye and trixie package lists (private to this run)"
apt-get "${apt[@]}" update >/dev/null
(cd "$work/debs" && apt-get "${apt[@]}" download \
  libssl1.1/bullseye openssl/bullseye \
  libssl3t64/trixie openssl/trixie libc6/trixie libzstd1/trixie >/dev/null)

unpack() { # dir debs...
  local dir=$1; shift
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  for d in "$@"; do dpkg-deb -x "$d" "$dir.tmp"; done
  basename -a "$@" >"$dir.tmp/.done"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}
mkdir -p "$cache"
unpack "$cache/1.1.1" "$work"/debs/libssl1.1_*.deb "$work"/debs/openssl_1.1.1*.deb
unpack "$cache/3.5" "$work"/debs/libssl3t64_*.deb "$work"/debs/openssl_3.*.deb "$work"/debs/libc6_*.deb "$work"/debs/libzstd1_*.deb
say "unpacked into $cache: $(cat "$cache/1.1.1/.done" "$cache/3.5/.done" | tr '\n' ' ')"
