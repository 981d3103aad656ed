#!/usr/bin/env bash
# Builds the static arm64 (aarch64) release binary on an amd64 machine, from a bare Debian machine with
# nothing but Debian's archive and crates.io in reach. Prints the binary's path on the last line.
#
#   image/build-arm64.sh
#
# The toolchain is a Debian sid chroot made by mmdebstrap (ARCHITECTURE.md says why a chroot): sid's
# rustc and cargo, the arm64 standard library of the same source version (libstd-rust-dev:arm64), the
# gcc-aarch64-linux-gnu cross linker with the arm64 glibc it links statically (libc6-dev-arm64-cross), and
# protoc with its well-known types. The chroot is cached in ARM64_TOOLCHAIN (default
# ~/.cache/etcd-migrate/arm64-toolchain) and made again whenever it fails its check (rustc, the cross
# linker and protoc run, the arm64 std is there and of rustc's version). Crates come from crates.io into
# a cached CARGO_HOME beside it, which holds the target dir too. The build runs in a mount namespace of
# its own (unshare), so nothing stays mounted when it ends, however it ends. Needs root.
#
# The amd64 build is image/build-binary.sh, unchanged.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
target=aarch64-unknown-linux-gnu
cache="${ARM64_TOOLCHAIN:-$HOME/.cache/etcd-migrate/arm64-toolchain}"
root="$cache/root" cargo_home="$cache/cargo"
packages=rustc,cargo,libstd-rust-dev:arm64,gcc,libc6-dev,gcc-aarch64-linux-gnu,libc6-dev-arm64-cross,protobuf-compiler,libprotobuf-dev,ca-certificates

[ "$(id -u)" = 0 ] || { echo "build-arm64.sh: needs root (a chroot, mounts in its own namespace)" >&2; exit 1; }
# What this machine needs: mmdebstrap for the chroot, qemu-user-static to run what it builds.
command -v mmdebstrap >/dev/null && command -v unshare >/dev/null && command -v qemu-aarch64-static >/dev/null || {
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends mmdebstrap util-linux qemu-user-static >/dev/null
}

# in_root CMD...: runs CMD in the chroot with the repo at /src, in a mount namespace of its own.
in_root() {
  unshare --mount --propagation private -- sh -euc '
    root=$1 repo=$2 cargo_home=$3; shift 3
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mkdir -p "$root/src" "$root/cargo" "$cargo_home"
    mount --bind "$repo" "$root/src"
    mount --bind "$cargo_home" "$root/cargo"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    # The host'"'"'s trust, for crates.io behind a proxy that presents its own CA.
    ca=/etc/ssl/certs/ca-certificates.crt
    if [ -e "$ca" ]; then cp -L "$ca" "$root/etc/ssl/certs/host-ca-certificates.crt"; ca=/etc/ssl/certs/host-ca-certificates.crt; fi
    exec chroot "$root" env -i PATH=/usr/bin:/bin HOME=/root CARGO_HOME=/cargo CARGO_HTTP_CAINFO=$ca \
      ${https_proxy:+https_proxy=$https_proxy} ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} "$@"
  ' sh "$root" "$repo" "$cargo_home" "$@"
}

# The chroot is good when its rustc runs and the arm64 std of exactly that rustc is there.
toolchain_ok() {
  [ -x "$root/usr/bin/rustc" ] || return 1
  in_root sh -c 'rustc -vV >/dev/null && aarch64-linux-gnu-gcc --version >/dev/null && protoc --version >/dev/null &&
    [ -e /usr/include/google/protobuf/descriptor.proto ] &&
    v=$(dpkg-query -W -f="\${Version}" rustc) && [ "$(dpkg-query -W -f="\${Version}" libstd-rust-dev:arm64)" = "$v" ] &&
    ls "$(rustc --print sysroot)/lib/rustlib/aarch64-unknown-linux-gnu/lib/"libstd-*.rlib >/dev/null' >/dev/null 2>&1
}

if ! toolchain_ok; then
  echo "build-arm64.sh: making the Debian sid toolchain chroot in $root" >&2
  start=$SECONDS
  rm -rf "$root" "$root.tmp"
  mkdir -p "$cache"
  # Acquire::Check-Valid-Until: the machine's clock may be past a snapshot's Valid-Until (fetch-etcd.sh does the same).
  mmdebstrap --quiet --mode=root --aptopt='Acquire::Check-Valid-Until "false"' --variant=apt --architectures=amd64,arm64 --include="$packages" \
    sid "$root.tmp" http://deb.debian.org/debian >&2
  mv "$root.tmp" "$root"
  toolchain_ok || { echo "build-arm64.sh: the chroot in $root has no working rustc with its arm64 std" >&2; exit 1; }
  echo "build-arm64.sh: toolchain ready in $((SECONDS - start)) s" >&2
fi

start=$SECONDS
# Its own target dir, cached beside the chroot: another rustc than the host's, no lock shared with the
# host's builds, and a rerun rebuilds only what changed.
in_root sh -euc '
  cd /src
  export CARGO_TARGET_DIR=/cargo/target CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
  cargo --quiet build --release --target '"$target"'
' >&2
binary="$cargo_home/target/$target/release/etcd-migrate"
header=$(readelf -h "$binary")
grep -q 'Machine: *AArch64' <<<"$header" || { echo "build-arm64.sh: $binary is not an AArch64 binary" >&2; exit 1; }
dynamic=$(readelf -d "$binary")
if grep -q NEEDED <<<"$dynamic"; then
  echo "build-arm64.sh: $binary needs shared libraries" >&2
  exit 1
fi
echo "static arm64 binary: $(stat -c %s "$binary") bytes, built in $((SECONDS - start)) s" >&2
echo "$binary"
