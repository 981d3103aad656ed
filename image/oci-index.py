#!/usr/bin/env python3
"""Puts staged image roots together as one multi-architecture OCI image: one layer per architecture
(its staged rootfs/), an image config and manifest for each, and one OCI image index listing them by
platform, written as an OCI image layout and packed as an OCI archive (a tar of that layout).

    image/oci-index.py --tag NAME:TAG [--user UID:GID] OUT.tar ARCH=STAGED_DIR...

Each STAGED_DIR is what `image/stage.sh --arch ARCH STAGED_DIR` made. The config is the one
image/Dockerfile.staged gives: ENTRYPOINT /usr/local/bin/etcd-migrate, PATH=/usr/local/bin:/bin, USER.
Nothing runs inside the image, so no architecture is emulated. The output is reproducible: entries in
name order, owned by 0:0, every time 0, gzip without a name or time, so the same staged files give the
same digests. Prints the index's digest.

The archive's top-level index.json names the image index `NAME:TAG` (org.opencontainers.image.ref.name
and io.containerd.image.name): `skopeo copy --all oci-archive:OUT.tar docker://REGISTRY/NAME:TAG` pushes
every architecture, `skopeo copy oci-archive:OUT.tar docker-daemon:NAME:TAG` loads this machine's.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile

PLATFORMS = {"amd64": {"architecture": "amd64", "os": "linux"},
             "arm64": {"architecture": "arm64", "os": "linux", "variant": "v8"},
             "arm": {"architecture": "arm", "os": "linux", "variant": "v7"},
             "ppc64le": {"architecture": "ppc64le", "os": "linux"},
             "s390x": {"architecture": "s390x", "os": "linux"}}


def layer_tar(rootfs):
    """The rootfs as an uncompressed tar, reproducibly: sorted, 0:0, mtime 0, modes and symlinks kept."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = []
        for directory, dirs, files in os.walk(rootfs):
            for name in dirs + files:
                entries.append(os.path.join(directory, name))
        for path in sorted(entries, key=lambda p: os.path.relpath(p, rootfs)):
            info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.pax_headers = {}
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buffer.getvalue()


class Layout:
    def __init__(self, root):
        self.blobs = os.path.join(root, "blobs", "sha256")
        os.makedirs(self.blobs)

    def blob(self, data, media_type, **extra):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.blobs, digest), "wb") as f:
            f.write(data)
        return dict(mediaType=media_type, digest=f"sha256:{digest}", size=len(data), **extra)


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True)
    parser.add_argument("--user", default="0:0")
    parser.add_argument("out")
    parser.add_argument("staged", nargs="+", metavar="ARCH=STAGED_DIR")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        layout = Layout(root)
        manifests = []
        for item in args.staged:
            arch, staged = item.split("=", 1)
            platform = PLATFORMS[arch]
            tar = layer_tar(os.path.join(staged, "rootfs"))
            diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
            layer = layout.blob(gzip.compress(tar, compresslevel=6, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
            config = layout.blob(canonical({
                **platform,
                "config": {
                    "Entrypoint": ["/usr/local/bin/etcd-migrate"],
                    "Env": ["PATH=/usr/local/bin:/bin"],
                    "User": args.user,
                },
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created_by": f"image/stage.sh --arch {arch}"}],
            }), "application/vnd.oci.image.config.v1+json")
            manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": config, "layers": [layer]}
            manifests.append(layout.blob(canonical(manifest), manifest["mediaType"], platform=platform))
        index = layout.blob(canonical({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                       "manifests": manifests}), "application/vnd.oci.image.index.v1+json")
        name = args.tag.rsplit(":", 1)
        index["annotations"] = {"org.opencontainers.image.ref.name": args.tag,
                                "io.containerd.image.name": args.tag if "/" in name[0] else f"docker.io/library/{args.tag}"}
        with open(os.path.join(root, "index.json"), "wb") as f:
            f.write(canonical({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                               "manifests": [index]}))
        with open(os.path.join(root, "oci-layout"), "wb") as f:
            f.write(canonical({"imageLayoutVersion": "1.0.0"}))
        packed = layer_tar(root)
        tmp = args.out + ".tmp"
        with open(tmp, "wb") as f:
            f.write(packed)
        os.replace(tmp, args.out)
        print(index["digest"])


if __name__ == "__main__":
    main()
