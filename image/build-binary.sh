#!/usr/bin/env bash
# Builds the static release binary (glibc, +crt-static: the musl target cannot be installed here) and
# reports its size. Prints the binary's path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
command -v protoc >/dev/null || { echo "error: protoc not found (etcd-client compiles etcd's protos): apt-get install protobuf-compiler" >&2; exit 1; }
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet --target "$target"
binary="target/$target/release/etcd-migrate"
dynamic=$(readelf -d "$binary")
if grep -q NEEDED <<<"$dynamic"; then
  echo "error: $binary needs shared libraries" >&2
  exit 1
fi
echo "static binary: $(stat -c %s "$binary") bytes" >&2
echo "$binary"
