#!/usr/bin/env bash
# Cross-builds the static release binary for the other architectures Kubernetes runs etcd on, on an
# amd64 machine, from a bare Debian machine with nothing but its Debian archive and cargo's registry in
# reach. Prints one line per architecture, `ARCH PATH`, in the order asked.
#
#   image/build-cross.sh [ARCH...]      ARCH: arm64, arm (armv7, armhf), ppc64le, s390x; default all four
#
# The toolchain is one Debian sid chroot for every target, made by mmdebstrap (ARCHITECTURE.md says why
# a chroot): sid's rustc and cargo, each target's standard library of the same source version
# (libstd-rust-dev:arm64, :armhf, :ppc64el, :s390x), each target's gcc cross linker with the glibc it
# links statically (libc6-dev-*-cross), and protoc with its well-known types. The Debian archive is the
# machine's own (image/debian-archive.py; DEBIAN_MIRROR names another). The chroot is cached in
# CROSS_TOOLCHAIN (default ~/.cache/etcd-migrate/cross-toolchain) and made again whenever it fails its
# check (rustc, every cross linker and protoc run, every target's std is there and of rustc's version).
# Crates come through cargo's own configuration (the host's ~/.cargo/config.toml, if any, is used) into
# a cached CARGO_HOME beside it, which holds the target dir too. All targets build in one cargo run, so
# the build scripts and proc-macros are built once. The build runs in a mount namespace of its own
# (unshare), so nothing stays mounted when it ends, however it ends. Needs root.
#
# CROSS_PROFILE names another cargo profile than release (the tests' proofs use cross-test, which builds
# faster); the binaries are in target/<triple>/<profile>/.
#
# The amd64 build is image/build-binary.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${CROSS_TOOLCHAIN:-$HOME/.cache/etcd-migrate/cross-toolchain}"
root="$cache/root" cargo_home="$cache/cargo"
profile="${CROSS_PROFILE:-release}"

# ARCH: Debian's architecture, Rust's target, the cross gcc's prefix, what readelf calls the machine.
declare -A debian=([arm64]=arm64 [arm]=armhf [ppc64le]=ppc64el [s390x]=s390x)
declare -A rust=([arm64]=aarch64-unknown-linux-gnu [arm]=armv7-unknown-linux-gnueabihf
  [ppc64le]=powerpc64le-unknown-linux-gnu [s390x]=s390x-unknown-linux-gnu)
declare -A gnu=([arm64]=aarch64-linux-gnu [arm]=arm-linux-gnueabihf [ppc64le]=powerpc64le-linux-gnu [s390x]=s390x-linux-gnu)
declare -A machine=([arm64]=AArch64 [arm]=ARM [ppc64le]=PowerPC64 [s390x]="IBM S/390")
all=(arm64 arm ppc64le s390x)

arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=("${all[@]}")
for arch in "${arches[@]}"; do
  [ -n "${rust[$arch]:-}" ] || { echo "build-cross.sh: ARCH is one of ${all[*]}, not '$arch'" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "build-cross.sh: needs root (a chroot, mounts in its own namespace)" >&2; exit 1; }
# What this machine needs: mmdebstrap for the chroot, qemu-user-static to run what it builds.
command -v mmdebstrap >/dev/null && command -v unshare >/dev/null && command -v qemu-s390x-static >/dev/null || {
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends mmdebstrap util-linux qemu-user-static >/dev/null
}

# The chroot holds every target's toolchain, whichever are asked for now: one chroot, made once.
packages=rustc,cargo,gcc,libc6-dev,protobuf-compiler,libprotobuf-dev,ca-certificates
architectures=amd64
for arch in "${all[@]}"; do
  packages+=",libstd-rust-dev:${debian[$arch]},gcc-${gnu[$arch]},libc6-dev-${debian[$arch]}-cross"
  architectures+=",${debian[$arch]}"
done

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
    # cargo through its own configuration: the host'"'"'s registry settings and mirrors, if it has any.
    for config in "$HOME/.cargo/config.toml" "$HOME/.cargo/config"; do
      if [ -e "$config" ]; then cp -L "$config" "$cargo_home/config.toml"; break; fi
    done
    # The host'"'"'s trust, for a registry behind a proxy that presents its own CA.
    ca=/etc/ssl/certs/ca-certificates.crt
    if [ -e "$ca" ]; then cp -L "$ca" "$root/etc/ssl/certs/host-ca-certificates.crt"; ca=/etc/ssl/certs/host-ca-certificates.crt; fi
    exec chroot "$root" env -i PATH=/usr/bin:/bin HOME=/root CARGO_HOME=/cargo CARGO_HTTP_CAINFO=$ca \
      ${https_proxy:+https_proxy=$https_proxy} ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} "$@"
  ' sh "$root" "$repo" "$cargo_home" "$@"
}

# The chroot is good when its rustc runs and every target's std of exactly that rustc is there.
toolchain_ok() {
  [ -x "$root/usr/bin/rustc" ] || return 1
  local check='rustc -vV >/dev/null && protoc --version >/dev/null && [ -e /usr/include/google/protobuf/descriptor.proto ] &&
    v=$(dpkg-query -W -f="\${Version}" rustc) && sysroot=$(rustc --print sysroot)'
  for arch in "${all[@]}"; do
    check+=" && ${gnu[$arch]}-gcc --version >/dev/null"
    check+=" && [ \"\$(dpkg-query -W -f='\${Version}' libstd-rust-dev:${debian[$arch]})\" = \"\$v\" ]"
    check+=" && ls \"\$sysroot/lib/rustlib/${rust[$arch]}/lib/\"libstd-*.rlib >/dev/null"
  done
  in_root sh -c "$check" >/dev/null 2>&1
}

if ! toolchain_ok; then
  echo "build-cross.sh: making the Debian sid toolchain chroot in $root" >&2
  start=$SECONDS
  archive=$("$here/debian-archive.py")
  rm -rf "$root" "$root.tmp"
  mkdir -p "$cache"
  # Acquire::Check-Valid-Until: the machine's clock may be past a snapshot's Valid-Until (fetch-etcd.sh does the same).
  mmdebstrap --quiet --mode=root --aptopt='Acquire::Check-Valid-Until "false"' --variant=apt \
    --architectures="$architectures" --include="$packages" sid "$root.tmp" "deb $archive sid main" >&2
  mv "$root.tmp" "$root"
  toolchain_ok || { echo "build-cross.sh: the chroot in $root has no working rustc with every target's std" >&2; exit 1; }
  echo "build-cross.sh: toolchain ready in $((SECONDS - start)) s" >&2
fi

start=$SECONDS
# Its own target dir, cached beside the chroot: another rustc than the host's, no lock shared with the
# host's builds, and a rerun rebuilds only what changed.
env=(CARGO_TARGET_DIR=/cargo/target) targets=()
for arch in "${arches[@]}"; do
  variable=$(tr a-z- A-Z_ <<<"${rust[$arch]}")
  env+=("CARGO_TARGET_${variable}_LINKER=${gnu[$arch]}-gcc" "CARGO_TARGET_${variable}_RUSTFLAGS=-C target-feature=+crt-static")
  targets+=(--target "${rust[$arch]}")
done
in_root env "${env[@]}" sh -euc 'cd /src && cargo --quiet build --profile "$@"' sh "$profile" "${targets[@]}" >&2
for arch in "${arches[@]}"; do
  binary="$cargo_home/target/${rust[$arch]}/$profile/etcd-migrate"
  header=$(readelf -h "$binary")
  grep -q "Machine: *${machine[$arch]}" <<<"$header" || { echo "build-cross.sh: $binary is not an $arch binary" >&2; exit 1; }
  dynamic=$(readelf -d "$binary")
  if grep -q NEEDED <<<"$dynamic"; then
    echo "build-cross.sh: $binary needs shared libraries" >&2
    exit 1
  fi
  echo "static $arch binary: $(stat -c %s "$binary") bytes" >&2
done
echo "built ${arches[*]} in $((SECONDS - start)) s" >&2
for arch in "${arches[@]}"; do
  echo "$arch $cargo_home/target/${rust[$arch]}/$profile/etcd-migrate"
done
