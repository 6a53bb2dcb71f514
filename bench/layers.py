"""The image the benchmark moves: layers of chosen sizes, made on disk, and its
config and manifest.

Each layer is a real uncompressed tar (``application/vnd.oci.image.layer.v1.tar``)
holding one file of seeded random bytes. Random bytes are what a compressed layer
looks like to a registry (nothing to gain from compression, no repeated chunks),
and a tar makes the image one that any OCI client can pull and unpack. Layers are
written to files and read back in pieces: no step ever holds a whole layer in
memory.
"""

import hashlib
import io
import itertools
import json
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PIECE = 1024 * 1024
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"

# What tarfile adds around one member: its header, the end-of-archive blocks and the
# padding of the last record. The member is made this much smaller than asked, so
# the layer comes out at about the size asked.
TAR_OVERHEAD = 3 * tarfile.BLOCKSIZE


@dataclass(frozen=True)
class Layer:
    """One layer file and what a registry knows it by."""

    path: Path
    size: int
    digest: str


@dataclass(frozen=True)
class Part:
    """One byte range of a layer, as a parallel ranged fetch asks for it."""

    start: int
    end: int
    """Exclusive."""
    digest: str

    @property
    def header(self) -> str:
        """The ``Range`` header value that asks for this part."""
        return f"bytes={self.start}-{self.end - 1}"


class _RandomReader(io.RawIOBase):
    """A file-like source of `size` seeded random bytes, for tarfile to copy."""

    def __init__(self, size: int, seed: int) -> None:
        self._left = size
        self._random = random.Random(seed)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        wanted = self._left if size < 0 else min(size, self._left)
        self._left -= wanted
        return self._random.randbytes(wanted)


def file_digest(path: Path, start: int = 0, end: int | None = None) -> str:
    """The sha256 of a file's bytes from `start` to `end`, read in pieces."""
    hasher = hashlib.sha256()
    with path.open("rb") as source:
        source.seek(start)
        left = (path.stat().st_size if end is None else end) - start
        while left > 0:
            piece = source.read(min(PIECE, left))
            if not piece:
                break
            hasher.update(piece)
            left -= len(piece)
    return "sha256:" + hasher.hexdigest()


def make_layer(directory: Path, size: int, seed: int) -> Layer:
    """A tar layer of about `size` bytes under `directory`, made from `seed`."""
    path = directory / f"layer-{size}-{seed}.tar"
    member = tarfile.TarInfo("payload.bin")
    member.size = max(0, size - TAR_OVERHEAD)
    member.mode = 0o644
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(member, _RandomReader(member.size, seed))
    return Layer(path, path.stat().st_size, file_digest(path))


def split(layer: Layer, parts: int) -> list[Part]:
    """`parts` ranges of equal length (the last takes the rest), each with its
    digest: checking every part's digest checks every byte of a ranged fetch."""
    length = max(1, layer.size // parts)
    bounds = [min(layer.size, index * length) for index in range(parts)]
    bounds.append(layer.size)
    return [
        Part(start, end, file_digest(layer.path, start, end))
        for start, end in itertools.pairwise(bounds)
        if end > start
    ]


def config_document(layers: Sequence[Layer]) -> bytes:
    """The image config: uncompressed layers, so each diff ID is its digest."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        "config": {},
    }
    return json.dumps(config, sort_keys=True).encode()


def manifest_document(layers: Sequence[Layer], config: bytes) -> bytes:
    """The OCI image manifest of `layers` and the config given."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, bytes_digest(config), len(config)),
        "layers": [
            descriptor(LAYER_MEDIA_TYPE, layer.digest, layer.size) for layer in layers
        ],
    }
    return json.dumps(manifest, sort_keys=True).encode()


def descriptor(media_type: str, digest: str, size: int) -> dict[str, object]:
    """An OCI content descriptor."""
    return {"mediaType": media_type, "digest": digest, "size": size}


def bytes_digest(data: bytes) -> str:
    """The sha256 digest of some bytes, as a registry writes it."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
