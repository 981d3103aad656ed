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
cargo build --quiet --bin etcd-migrate
# Says whether a release is here (`etcd-migrate releases`), for fetch-etcd.sh and below.
ETCD_MIGRATE=$PWD/target/debug/etcd-migrate
ETCD_BIN_DIR=$(image/fetch-etcd.sh --available | tail -n 1)
export ETCD_BIN_DIR ETCD_MIGRATE
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
mkdir -p target
status=0
cargo test --no-fail-fast --lib --bins --tests 2>&1 | tee target/test-output.txt || status=$?

not_run=$(grep -o 'NOT RUN: .*' target/test-output.txt || true)
while read -r line; do
  [ -n "$line" ] || continue
  for version in $(sed -E 's/.* needs etcd (.*) \(set ETCD_RELEASE_MIRROR\)$/\1/' <<<"$line"); do
    if "$ETCD_MIGRATE" releases --bin-dir "$ETCD_BIN_DIR" "$version" >/dev/null; then
      echo "run.sh: etcd $version is in $ETCD_BIN_DIR, yet: $line" >&2
      status=1
    fi
  done
done <<<"$not_run"

read -r passed failed < <(awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i + 1) ~ /^passed/) p += $i; if ($(i + 1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' target/test-output.txt)
not_run_count=$(grep -c . <<<"$not_run" || true)
echo "$((passed - not_run_count)) passed, $failed failed, $not_run_count not run"
exit "$status"
