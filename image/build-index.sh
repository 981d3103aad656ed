#!/usr/bin/env bash
# Builds the image for linux/amd64 and linux/arm64 as one OCI image index, saved as an OCI archive
# (OUT/etcd-migrate.oci.tar) an operator loads or pushes with skopeo (README, "Two architectures"). Each
# architecture's root is staged by image/stage.sh --arch; image/oci-index.py puts them together. Nothing
# is run inside either image, so nothing is emulated but the version checks of the arm64 releases.
#
#   image/build-index.sh [--source official|packages|mirror] [--tag NAME:TAG] [--user UID:GID]
#                        [--amd64-binary PATH] [--arm64-binary PATH] OUT
#
#   --source, BUNDLED_ETCD_VERSIONS   as for image/stage.sh (default official: 3.5.33 3.6.14)
#   --tag                             the name the index is saved under (default etcd-migrate:0.1.0)
#   --amd64-binary, --arm64-binary    default: built by image/build-binary.sh and image/build-arm64.sh
#
# Prints the archive's path on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source=official tag=etcd-migrate:0.1.0 user=0:0 amd64="" arm64="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --amd64-binary) amd64=$2; shift 2 ;;
    --arm64-binary) arm64=$2; shift 2 ;;
    -*) echo "build-index.sh: unknown option $1" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
[ -n "$out" ] || { echo "usage: build-index.sh [--source S] [--tag NAME:TAG] [--amd64-binary P] [--arm64-binary P] OUT" >&2; exit 2; }
mkdir -p "$out"
for arch in amd64 arm64; do
  binary=$amd64
  [ "$arch" = amd64 ] || binary=$arm64
  "$here/stage.sh" --source "$source" --arch "$arch" ${binary:+--binary "$binary"} "$out/$arch" >&2
done
archive="$out/etcd-migrate.oci.tar"
digest=$(python3 "$here/oci-index.py" --tag "$tag" --user "$user" "$archive" amd64="$out/amd64" arm64="$out/arm64")
for arch in amd64 arm64; do
  echo "$arch: etcd-migrate $(stat -c %s "$out/$arch/rootfs/usr/local/bin/etcd-migrate") bytes, root $(du -sb "$out/$arch/rootfs" | cut -f1) bytes" >&2
done
echo "index $digest ($tag), $(stat -c %s "$archive") bytes: $archive" >&2
echo "$archive"
