#!/usr/bin/env bash
# Builds the image for every architecture Kubernetes runs etcd on (linux/amd64, arm64, arm/v7, ppc64le,
# s390x) as one OCI image index, saved as an OCI archive (OUT/etcd-migrate.oci.tar) an operator loads or
# pushes with skopeo (README, "Five architectures"). Each architecture's root is staged by
# image/stage.sh --arch; image/oci-index.py puts them together. Nothing is run inside any image, so
# nothing is emulated but the version checks of the foreign releases.
#
#   image/build-index.sh [--source official|packages|mirror] [--tag NAME:TAG] [--user UID:GID]
#                        [--arches "ARCH..."] [--binary ARCH=PATH]... OUT
#
#   --source, BUNDLED_ETCD_VERSIONS   as for image/stage.sh (default official: 3.5.33 3.6.14)
#   --tag                             the name the index is saved under (default etcd-migrate:0.1.0)
#   --arches                          default: all five with --source packages or mirror; with official,
#                                     amd64 arm64 ppc64le, the architectures image/etcd-sha256.txt pins
#   --binary ARCH=PATH                default: image/build-binary.sh for amd64, one image/build-cross.sh
#                                     run for the others
#
# Prints the archive's path on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source=official tag=etcd-migrate:0.1.0 user=0:0 arches="" out=""
declare -A binary=()
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --arches) arches=$2; shift 2 ;;
    --binary) binary[${2%%=*}]=${2#*=}; shift 2 ;;
    -*) echo "build-index.sh: unknown option $1" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
[ -n "$out" ] || { echo "usage: build-index.sh [--source S] [--tag NAME:TAG] [--arches \"ARCH...\"] [--binary ARCH=PATH]... OUT" >&2; exit 2; }
if [ -z "$arches" ]; then
  arches="amd64 arm64 arm ppc64le s390x"
  [ "$source" != official ] || arches="amd64 arm64 ppc64le"
fi
read -r -a arches <<<"$arches"
mkdir -p "$out"
# The cross binaries not given, built in one go.
cross=()
for arch in "${arches[@]}"; do
  [ "$arch" = amd64 ] || [ -n "${binary[$arch]:-}" ] || cross+=("$arch")
done
if [ ${#cross[@]} -gt 0 ]; then
  while read -r arch path; do binary[$arch]=$path; done < <("$here/build-cross.sh" "${cross[@]}")
fi
staged=()
for arch in "${arches[@]}"; do
  "$here/stage.sh" --source "$source" --arch "$arch" ${binary[$arch]:+--binary "${binary[$arch]}"} "$out/$arch" >&2
  staged+=("$arch=$out/$arch")
done
archive="$out/etcd-migrate.oci.tar"
digest=$(python3 "$here/oci-index.py" --tag "$tag" --user "$user" "$archive" "${staged[@]}")
for arch in "${arches[@]}"; do
  echo "$arch: etcd-migrate $(stat -c %s "$out/$arch/rootfs/usr/local/bin/etcd-migrate") bytes, root $(du -sb "$out/$arch/rootfs" | cut -f1) bytes" >&2
done
echo "index $digest ($tag), $(stat -c %s "$archive") bytes: $archive" >&2
echo "$archive"
