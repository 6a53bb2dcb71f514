"""What the conformance tests push: random blobs, descriptors and manifests as JSON.

Everything is made in the test from random bytes, so no two tests share content by
accident and a server cannot pass by having seen a blob before. Manifests are plain
dictionaries, encoded here, so a test may also write its own bytes when the exact
bytes are the point.
"""

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

EMPTY_JSON = b"{}"
"""The image spec's empty descriptor content: the two bytes ``{}``."""

Document = dict[str, Any]


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """The OCI digest of some bytes."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def random_blob(size: int = 1024) -> bytes:
    """Bytes no other test pushes."""
    return os.urandom(size)


def random_config() -> bytes:
    """An image config that is JSON, unique to the test that makes it."""
    document = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Labels": {"nonce": os.urandom(8).hex()}},
    }
    return encode(document)


def encode(document: Mapping[str, Any]) -> bytes:
    """A document as compact JSON bytes."""
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def descriptor(media_type: str, data: bytes, **extra: Any) -> Document:
    """The descriptor of some content, with any other fields (annotations ...)."""
    return {
        "mediaType": media_type,
        "digest": digest_of(data),
        "size": len(data),
        **extra,
    }


def image_manifest(
    config: Document,
    layers: Sequence[Document],
    *,
    media_type: str = OCI_MANIFEST,
    **extra: Any,
) -> Document:
    """An image manifest (OCI or Docker schema 2) over a config and layers."""
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config,
        "layers": list(layers),
        **extra,
    }


def index_manifest(
    manifests: Sequence[Document],
    *,
    media_type: str = OCI_INDEX,
    **extra: Any,
) -> Document:
    """An index (OCI) or manifest list (Docker) over child manifests."""
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": list(manifests),
        **extra,
    }


def platform(architecture: str) -> Document:
    """A Linux platform, for the entries of an index."""
    return {"architecture": architecture, "os": "linux"}
