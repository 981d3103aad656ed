#!/usr/bin/env bash
# The test command: installs what a fresh machine lacks, fetches the real etcd releases the tests run
# against (cached), checks formatting and lints, then runs every test. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/prerequisites.sh
ETCD_BIN_DIR=$(image/fetch-etcd.sh | tail -n 1)
export ETCD_BIN_DIR
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --lib --bins --tests 2>&1 | tee target/test-output.txt
