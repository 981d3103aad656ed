#!/usr/bin/env bash
# The test command: installs what a fresh machine lacks, fetches the real etcd releases the tests run
# against (cached): the registries' always, the rest where ETCD_RELEASE_MIRROR provides them; checks
# formatting and lints, then runs every test. A test needing a release that is not here prints
# `NOT RUN: <test> needs etcd <versions> (set ETCD_RELEASE_MIRROR)` and returns; the closing line counts
# those apart from the passes: `N passed, N failed, N not run`. Exits non-zero on any failure, and
# when a NOT RUN line names a release that is here after all.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/prerequisites.sh
ETCD_BIN_DIR=$(image/fetch-etcd.sh --available | tail -n 1)
export ETCD_BIN_DIR
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
mkdir -p target
status=0
cargo test --no-fail-fast --lib --bins --tests 2>&1 | tee target/test-output.txt || status=$?

not_run=$(grep -o 'NOT RUN: .*' target/test-output.txt || true)
# A release counts as here with etcd, etcdctl and, from 3.5 on, etcdutl (as image/fetch-etcd.sh has it).
present() {
  [ -e "$ETCD_BIN_DIR/etcd-$1" ] && [ -e "$ETCD_BIN_DIR/etcdctl-$1" ] || return 1
  case "$1" in 2.* | 3.[0-4].*) ;; *) [ -e "$ETCD_BIN_DIR/etcdutl-$1" ] ;; esac
}
while read -r line; do
  [ -n "$line" ] || continue
  for version in $(sed -E 's/.* needs etcd (.*) \(set ETCD_RELEASE_MIRROR\)$/\1/' <<<"$line"); do
    if present "$version"; then
      echo "run.sh: etcd $version is in $ETCD_BIN_DIR, yet: $line" >&2
      status=1
    fi
  done
done <<<"$not_run"

read -r passed failed < <(awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i + 1) ~ /^passed/) p += $i; if ($(i + 1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' target/test-output.txt)
not_run_count=$(grep -c . <<<"$not_run" || true)
echo "$((passed - not_run_count)) passed, $failed failed, $not_run_count not run"
exit "$status"
