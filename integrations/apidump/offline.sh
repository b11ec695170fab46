#!/bin/sh
# offline.sh: builds and tests this module without the Go module proxy, from Debian's
# golang-go and golang-github-vmihailenco-msgpack.v5-dev. It makes vendor/ point into
# /usr/share/gocode/src (symlinks, not copies; vendor/ is not committed), then runs its
# arguments with GOFLAGS=-mod=vendor GOPROXY=off:
#   ./offline.sh go test ./...
#   ./offline.sh go run ./example
set -eu
cd "$(dirname "$0")"
src=${GOCODE:-/usr/share/gocode/src}
for d in github.com/vmihailenco/msgpack/v5 github.com/vmihailenco/tagparser/v2; do
  [ -d "$src/$d" ] || { echo "offline.sh: $src/$d is missing: apt-get install -y golang-go golang-github-vmihailenco-msgpack.v5-dev" >&2; exit 1; }
  mkdir -p "vendor/$(dirname "$d")"
  ln -sfn "$src/$d" "vendor/$d"
done
cat > vendor/modules.txt <<'TXT'
# github.com/vmihailenco/msgpack/v5 v5.3.5
## explicit; go 1.11
github.com/vmihailenco/msgpack/v5
github.com/vmihailenco/msgpack/v5/msgpcode
# github.com/vmihailenco/tagparser/v2 v2.0.0
## explicit; go 1.15
github.com/vmihailenco/tagparser/v2
github.com/vmihailenco/tagparser/v2/internal
github.com/vmihailenco/tagparser/v2/internal/parser
TXT
export GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local
# go needs a build cache; root under a CI runner may have no HOME.
[ -n "${HOME:-}" ] || export GOCACHE=${GOCACHE:-/tmp/go-build-cache}
[ $# -gt 0 ] && exec "$@"
