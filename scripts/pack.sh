#!/usr/bin/env bash
# pack.sh (npm's prepack): builds, then puts the built addon and BPF object where an installed
# package finds them without a compiler: prebuilds/linux-x64/https-capture.node (prebuildify's
# layout) and prebuilds/bpf/capture.bpf.o (helper/package.ts). prebuilds/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --build-only
plat="$(node -p 'process.platform + "-" + process.arch')"
rm -rf prebuilds
mkdir -p "prebuilds/$plat" prebuilds/bpf
cp bridge/build/Release/bridge.node "prebuilds/$plat/https-capture.node"
cp bpf/build/capture.bpf.o prebuilds/bpf/capture.bpf.o
