"""Validation of what a client names: repositories, tags and digests.

Each check returns the value when it is valid and raises the spec's error when not,
so a handler reads as a list of checks.

Digests: blobs may be named by the algorithms the OCI image spec registers, sha256
and sha512 (`treescale.store.digests.ALGORITHMS`), in lowercase hex of their length.
A digest of any other algorithm is well formed but can never be stored here, so it is
refused with ``DIGEST_INVALID`` and a detail naming the algorithm, the same answer as
for a malformed digest: either way the client cannot use it with us, and
``UNSUPPORTED`` would suggest the whole operation, not the digest, is at fault.
"""

import re

from treescale.registry.errors import (
    DIGEST_INVALID,
    NAME_INVALID,
    TAG_INVALID,
    ApiError,
)
from treescale.store.digests import ALGORITHMS, algorithm_of

DEFAULT_MAX_NAME_LENGTH = 255
"""The spec: a name including its slashes is shorter than 256 characters."""

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_STORABLE = {
    algorithm: re.compile(rf"{algorithm}:[a-f0-9]{{{length}}}")
    for algorithm, length in ALGORITHMS.items()
}
_ANY_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


def check_name(name: str, max_length: int = DEFAULT_MAX_NAME_LENGTH) -> str:
    """A repository name, if it matches the spec's grammar and length limit."""
    if len(name) > max_length:
        raise ApiError(
            NAME_INVALID, {"name": name[:max_length], "max_length": max_length}
        )

    if _NAME.fullmatch(name) is None:
        raise ApiError(NAME_INVALID, {"name": name})

    return name


def is_tag(reference: str) -> bool:
    """Whether a manifest reference is a valid tag."""
    return _TAG.fullmatch(reference) is not None


def check_tag(reference: str) -> str:
    """A manifest reference that is not a digest must be a valid tag."""
    if not is_tag(reference):
        raise ApiError(
            TAG_INVALID,
            {"tag": reference[:200], "reason": "neither a valid tag nor a digest"},
        )
    return reference


def is_digest_like(reference: str) -> bool:
    """Whether a manifest reference means to be a digest (tags cannot hold ':')."""
    return ":" in reference


def is_well_formed_digest(digest: str) -> bool:
    """Whether a digest follows the OCI grammar, whatever its algorithm."""
    return _ANY_DIGEST.fullmatch(digest) is not None


def check_algorithm(algorithm: str) -> str:
    """A digest algorithm blobs may be named by."""
    if algorithm not in ALGORITHMS:
        raise ApiError(
            DIGEST_INVALID,
            {
                "algorithm": algorithm,
                "reason": f"unsupported algorithm; use one of {sorted(ALGORITHMS)}",
            },
        )
    return algorithm


def check_digest(digest: str) -> str:
    """A digest this registry can store: a known algorithm and its lowercase hex."""
    algorithm = algorithm_of(digest)
    pattern = _STORABLE.get(algorithm)
    if pattern is not None and pattern.fullmatch(digest) is not None:
        return digest

    if is_well_formed_digest(digest) and pattern is None:
        raise ApiError(
            DIGEST_INVALID,
            {"digest": digest, "reason": f"unsupported algorithm {algorithm}"},
        )

    raise ApiError(DIGEST_INVALID, {"digest": digest, "reason": "malformed digest"})
