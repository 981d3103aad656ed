#!/usr/bin/env bash
# Downloads Debian packages of one architecture from one suite into DEST (as `apt-get download` does),
# from the machine's own Debian archive (image/debian-archive.py: its apt sources, or DEBIAN_MIRROR).
# The suite's index is read into a folder of its own: the host's apt lists stay as they are. Each .deb
# is kept in DEBS_CACHE too (default ~/.cache/etcd-migrate/debs), packages already downloaded, from
# which a local apt repository can be made (dpkg-scanpackages; tests/fetch_etcd.rs does).
#
#   image/debian-download.sh SUITE ARCH DEST PACKAGE[=VERSION*]...
#
# ARCH is Debian's name (amd64, arm64, armhf, ppc64el, s390x). On failure apt's last lines go to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
suite=$1 arch=$2 dest=$3
shift 3
archive=$("$here/debian-archive.py")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$dest"
echo "deb $archive $suite main" >"$work/sources.list"
apt=(apt-get -q -o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$work/lists" -o "APT::Get::List-Cleanup=0" -o "Acquire::Check-Valid-Until=false"
  -o "APT::Architecture=$arch" -o "APT::Architectures=$arch")
{ "${apt[@]}" update && (cd "$dest" && "${apt[@]}" download "$@"); } >"$work/log" 2>&1 || {
  tail -n 5 "$work/log" >&2
  echo "debian-download.sh: cannot download $* for $arch from '$archive' $suite" >&2
  exit 1
}
debs="${DEBS_CACHE:-$HOME/.cache/etcd-migrate/debs}"
mkdir -p "$debs"
cp "$dest"/*.deb "$debs/"
