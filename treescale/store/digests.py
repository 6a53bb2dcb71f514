"""Content digests in the spec's form, ``<algorithm>:<lowercase hex>``.

One place names bytes by their hash, so the relay that stores a chunk, the registry
node that cuts and checks it, and the API that reports it always agree. Chunks are
always named by sha256; a whole blob may be named by any algorithm of `ALGORITHMS`
(the OCI image spec registers sha256 and sha512), chosen when its upload starts.
"""

import hashlib
from typing import Protocol

ALGORITHM = "sha256"
"""The algorithm of chunk names, and of blobs whose client asks for none."""

ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
"""The digest algorithms a blob may be named by, with their hex lengths."""


class Hasher(Protocol):
    """What `hashlib` gives: a running hash."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def new_hasher(algorithm: str = ALGORITHM) -> Hasher:
    """A running hash of one of `ALGORITHMS`; ValueError for any other."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def algorithm_of(digest: str) -> str:
    """The algorithm part of a digest."""
    return digest.split(":", 1)[0]


def digest_of(data: bytes, algorithm: str = ALGORITHM) -> str:
    """The digest naming these bytes, by `algorithm`."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return f"{algorithm}:{hasher.hexdigest()}"


def sha256_digest(data: bytes) -> str:
    """The sha256 digest naming these bytes: how chunks are named."""
    return digest_of(data, ALGORITHM)
