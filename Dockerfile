# The etcd-migrate image for users: the static binary (also linked as etcd, etcdctl, migrate and
# migrate-if-needed.sh), official etcd releases (sha256-pinned in image/etcd-sha256.txt; 3.5.33 and 3.6.14
# by default) and a static /bin/sh (Debian's busybox-static) for Kubernetes' manifests, on scratch: nothing
# else. For linux/amd64 and linux/arm64: the builder runs on the build machine's own platform and
# cross-compiles the arm64 binary (nothing is emulated but the version check of the arm64 releases, under
# qemu-user-static), and the final stage only copies files.
#
#   docker build --build-arg BUNDLED_ETCD_VERSIONS="3.5.33 3.6.14" --build-arg USER=65532:65532 -t etcd-migrate .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/etcd-migrate:0.1.0 --push .
#
# Where no registry can be reached, stage locally and build the same final stage from the staged dir:
#   image/stage.sh --source packages OUT && docker build -f image/Dockerfile.staged OUT
# or every architecture as one OCI archive: image/build-index.sh (README, "Five architectures").
ARG BUILDPLATFORM=linux/amd64
FROM --platform=$BUILDPLATFORM rust:1-bookworm AS builder
ARG TARGETARCH
ARG BUNDLED_ETCD_VERSIONS="3.5.33 3.6.14"
# etcd-client compiles etcd's gRPC protos at build time; arm64 needs the cross linker and its glibc.
RUN apt-get update -q && apt-get install -y -q --no-install-recommends protobuf-compiler \
      $(if [ "${TARGETARCH:-amd64}" = arm64 ]; then echo gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static; fi) \
    && rm -rf /var/lib/apt/lists/* \
    && if [ "${TARGETARCH:-amd64}" = arm64 ]; then rustup target add aarch64-unknown-linux-gnu; fi
WORKDIR /src
COPY . .
RUN arch=${TARGETARCH:-amd64} && case "$arch" in \
      amd64) binary=$(image/build-binary.sh | tail -n 1) ;; \
      arm64) CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
             RUSTFLAGS="-C target-feature=+crt-static" \
             cargo build --release --quiet --target aarch64-unknown-linux-gnu \
             && binary=target/aarch64-unknown-linux-gnu/release/etcd-migrate ;; \
      *) echo "etcd-migrate builds for amd64 and arm64, not $arch" >&2; exit 1 ;; \
    esac \
    && apt-get update -q \
    && BUNDLED_ETCD_VERSIONS="$BUNDLED_ETCD_VERSIONS" image/stage.sh --source official --arch "$arch" --binary "$binary" /stage

FROM scratch
COPY --from=builder /stage/rootfs/ /
ARG USER=0:0
# kubeadm's manifest calls `etcd` by name.
ENV PATH=/usr/local/bin:/bin
USER ${USER}
ENTRYPOINT ["/usr/local/bin/etcd-migrate"]
