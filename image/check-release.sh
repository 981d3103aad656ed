#!/usr/bin/env bash
# Checks that DIR's etcd-VERSION, etcdctl-VERSION and (where present) etcdutl-VERSION each report VERSION,
# asked the way that release answers (src/release.rs's version_query): `etcd --version` prints
# `etcd Version: X`; etcdctl 2.x has no `version` command and prints `etcdctl version X` (no colon) for
# --version; etcdctl and etcdutl 3.x print `<tool> version: X` for `version` (3.4+ have no --version).
#
#   image/check-release.sh DIR VERSION...
set -euo pipefail
dir=$1; shift
for version in "$@"; do
  for tool in etcd etcdctl etcdutl; do
    binary="$dir/$tool-$version"
    if [ "$tool" = etcdutl ] && [ ! -e "$binary" ]; then continue; fi
    # Output is captured before grep reads it: `grep -q` in a pipe would exit early and, under pipefail,
    # turn the writer's SIGPIPE into a failure.
    case "$tool-$version" in
      etcd-*) expected="etcd Version: $version"; reported=$("$binary" --version) ;;
      etcdctl-2.*) expected="etcdctl version $version"; reported=$("$binary" --version) ;;
      *) expected="$tool version: $version"; reported=$(ETCDCTL_API=3 "$binary" version 2>/dev/null) ;;
    esac
    grep -qx "$expected" <<<"$reported" || { echo "$binary does not report version $version" >&2; exit 1; }
  done
done
