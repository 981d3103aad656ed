# The etcd-migrate image for users: the static binary (also linked as etcd, etcdctl, migrate and
# migrate-if-needed.sh), official etcd releases (sha256-pinned in image/etcd-sha256.txt) and a static
# /bin/sh (Debian's busybox-static) for Kubernetes' manifests, on scratch: nothing else.
#
#   docker build --build-arg BUNDLED_ETCD_VERSIONS="3.5.11 3.5.12" --build-arg USER=65532:65532 -t etcd-migrate .
#
# Where no registry can be reached, stage locally and build the same final stage from the staged dir:
#   image/stage.sh --source packages OUT && docker build -f image/Dockerfile.staged OUT
FROM rust:1-bookworm AS builder
ARG BUNDLED_ETCD_VERSIONS="3.5.12"
# etcd-client compiles etcd's gRPC protos at build time.
RUN apt-get update -q && apt-get install -y -q --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN apt-get update -q && BUNDLED_ETCD_VERSIONS="$BUNDLED_ETCD_VERSIONS" image/stage.sh --source official /stage

FROM scratch
COPY --from=builder /stage/rootfs/ /
ARG USER=0:0
# kubeadm's manifest calls `etcd` by name.
ENV PATH=/usr/local/bin:/bin
USER ${USER}
ENTRYPOINT ["/usr/local/bin/etcd-migrate"]
