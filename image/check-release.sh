#!/usr/bin/env bash
# Checks that DIR's etcd-VERSION, etcdctl-VERSION and (where present) etcdutl-VERSION each report VERSION,
# asked the way that release answers (src/release.rs's version_query): `etcd --version` prints
# `etcd Version: X`; etcdctl 2.x has no `version` command and prints `etcdctl version X` (no colon) for
# --version; etcdctl and etcdutl 3.x print `<tool> version: X` for `version` (3.4+ have no --version).
#
# A binary of another architecture (arm64, arm, ppc64le, s390x) runs under that architecture's
# qemu-*-static (Debian's qemu-user-static), its libraries from QEMU_LD_PREFIX when it is dynamically
# linked (image/fetch-etcd.sh's sysroot, the image's root).
#
#   image/check-release.sh DIR VERSION...
set -euo pipefail

# run BINARY ARGS...: runs BINARY, under qemu when it is of another architecture than this machine's.
run() {
  local qemu
  # e_machine, as its bytes lie (s390x's ELF is big-endian): what qemu and uname -m call the machine.
  case "$(od -An -tx1 -j18 -N2 "$1" | tr -d ' ')" in
    b700) qemu=aarch64 ;;
    2800) qemu=arm ;;
    1500) qemu=ppc64le ;;
    0016) qemu=s390x ;;
    *) qemu="" ;;
  esac
  case "$qemu:$(uname -m)" in
    :* | aarch64:aarch64 | arm:arm* | ppc64le:ppc64le | s390x:s390x) "$@" ;;
    *)
      command -v "qemu-$qemu-static" >/dev/null \
        || { echo "check-release.sh: $1 is a $qemu binary: apt-get install qemu-user-static" >&2; return 1; }
      "qemu-$qemu-static" "$@"
      ;;
  esac
}
dir=$1; shift
for version in "$@"; do
  for tool in etcd etcdctl etcdutl; do
    binary="$dir/$tool-$version"
    if [ "$tool" = etcdutl ] && [ ! -e "$binary" ]; then continue; fi
    # Output is captured before grep reads it: `grep -q` in a pipe would exit early and, under pipefail,
    # turn the writer's SIGPIPE into a failure.
    case "$tool-$version" in
      etcd-*) expected="etcd Version: $version"; reported=$(run "$binary" --version) ;;
      etcdctl-2.*) expected="etcdctl version $version"; reported=$(run "$binary" --version) ;;
      *) expected="$tool version: $version"; reported=$(ETCDCTL_API=3 run "$binary" version 2>/dev/null) ;;
    esac
    grep -qx "$expected" <<<"$reported" || { echo "$binary does not report version $version" >&2; exit 1; }
  done
done
