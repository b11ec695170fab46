#!/usr/bin/env bash
# gen-vmlinux.sh: makes bpf/vmlinux/<arch>/vmlinux.h.xz, the kernel types the BPF object is
# compiled against, from a fixed kernel rather than the build machine's: Debian 12's own
# kernel package (6.1), the oldest kernel the helper supports (docs/kernels.md). With CO-RE,
# libbpf relocates every field access to the running kernel's layout at load, so one object
# built from this header runs on every kernel with BTF (the package ships that object).
#
#   scripts/gen-vmlinux.sh [x86|arm64]     (default: this machine's architecture)
#
# Needs apt (the .deb comes from Debian's archive), dpkg-deb, xz, python3 and bpftool. Run it
# again only to move to another base kernel; the result is committed.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-$(uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')}
case "$arch" in
  x86) deb_arch=amd64 ;;
  arm64) deb_arch=arm64 ;;
  *) echo "gen-vmlinux.sh: unknown architecture '$arch' (x86 or arm64)" >&2; exit 2 ;;
esac
work=/var/cache/https-capture-vmlinux/$arch
mkdir -p "$work"
cd "$work"

# Debian 12's package lists for that architecture, read into a private apt state (its own
# sources file and lists directory, as scripts/fetch-openssl.sh does): the system's apt and
# dpkg setup is untouched, no `dpkg --add-architecture` needed.
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || { echo "gen-vmlinux.sh: $keyring not found: apt-get install debian-archive-keyring" >&2; exit 1; }
mkdir -p apt/lists/partial apt/cache/archives/partial
cat > apt/sources.list <<EOF
deb [arch=$deb_arch signed-by=$keyring] http://deb.debian.org/debian bookworm main
deb [arch=$deb_arch signed-by=$keyring] http://deb.debian.org/debian-security bookworm-security main
EOF
apt=(-o "Dir::Etc::sourcelist=$work/apt/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$work/apt/lists"
  -o "Dir::Cache=$work/apt/cache" -o APT::Sandbox::User=root -o "APT::Architecture=$deb_arch" -o "APT::Architectures::=$deb_arch" -qq)
apt-get "${apt[@]}" update >&2
# The kernel package the metapackage points at (linux-image-amd64 -> linux-image-6.1.0-N-amd64).
pkg=$(apt-cache "${apt[@]}" depends "linux-image-$deb_arch" | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$pkg" ] || { echo "gen-vmlinux.sh: no linux-image-$deb_arch in Debian 12's package lists (deb.debian.org reachable?)" >&2; exit 1; }
ls ./"${pkg}"_*.deb >/dev/null 2>&1 || apt-get "${apt[@]}" download "$pkg" >&2
rm -rf x && dpkg-deb -x ./"${pkg}"_*.deb x
image=$(ls x/boot/vmlinuz-*)
version=$(basename "$image" | sed 's/^vmlinuz-//')

# The kernel's BTF (.BTF, the same bytes /sys/kernel/btf/vmlinux shows on that kernel) is
# inside the image, compressed on x86 (bzImage): find the compressed stream by its magic and unpack it, then
# take the BTF blob out of the result by its header (magic 0xeb9f, version 1, 24-byte header),
# which works for an ELF vmlinux (x86's bzImage payload) and a raw Image (arm64) alike.
python3 - "$image" btf.raw <<'EOF'
import lzma, gzip, struct, sys, zlib
data = open(sys.argv[1], 'rb').read()
# arm64's Image is not compressed (Debian's is an EFI-signed PE): the BTF is in it as it is.
kernel = data if data.find(b'\x9f\xeb\x01\x00\x18\x00\x00\x00') >= 0 else None
for magic, unpack in ((b'\xfd7zXZ\x00', lambda b: lzma.LZMADecompressor().decompress(b)),
                      (b'\x1f\x8b\x08', lambda b: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(b))):
    at = data.find(magic)
    while at >= 0 and kernel is None:
        try:
            out = unpack(data[at:])
            if len(out) > 8 << 20:
                kernel = out
        except Exception:
            pass
        at = data.find(magic, at + 1)
    if kernel is not None:
        break
if kernel is None:
    sys.exit('gen-vmlinux.sh: no xz or gzip kernel payload found in ' + sys.argv[1])
at = 0
while True:
    at = kernel.find(b'\x9f\xeb\x01\x00\x18\x00\x00\x00', at)
    if at < 0:
        sys.exit('gen-vmlinux.sh: no BTF in the kernel image (CONFIG_DEBUG_INFO_BTF off?)')
    type_off, type_len, str_off, str_len = struct.unpack_from('<4I', kernel, at + 8)
    end = at + 24 + max(type_off + type_len, str_off + str_len)
    if type_len > 1 << 20 and str_len > 1 << 20 and end <= len(kernel):
        open(sys.argv[2], 'wb').write(kernel[at:end])
        break
    at += 1
EOF
bpftool btf dump file btf.raw format c > vmlinux.h
out="$OLDPWD/bpf/vmlinux/$arch"
mkdir -p "$out"
{ echo "/* Kernel types of Debian 12's $pkg ($version, $deb_arch), made by scripts/gen-vmlinux.sh. */"; cat vmlinux.h; } | xz -9 -T1 > "$out/vmlinux.h.xz"
echo "$out/vmlinux.h.xz: $(wc -l < vmlinux.h) lines from $pkg" >&2
