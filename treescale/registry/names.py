"""Validation of what a client names: repositories, tags and digests.

Each check returns the value when it is valid and raises the spec's error when not,
so a handler reads as a list of checks.

Digests: the storage layer keys blobs by sha256 only. A digest of another algorithm
the OCI image spec registers (sha512) is well formed but can never be stored here, so
it is refused with ``DIGEST_INVALID`` and a detail naming the algorithm, the same
answer as for a malformed digest: either way the client cannot use it with us, and
``UNSUPPORTED`` would suggest the whole operation, not the digest, is at fault.
"""

import re

from treescale.registry.errors import DIGEST_INVALID, NAME_INVALID, ApiError

DEFAULT_MAX_NAME_LENGTH = 255
"""The spec: a name including its slashes is shorter than 256 characters."""

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")
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


def is_digest_like(reference: str) -> bool:
    """Whether a manifest reference means to be a digest (tags cannot hold ':')."""
    return ":" in reference


def is_well_formed_digest(digest: str) -> bool:
    """Whether a digest follows the OCI grammar, whatever its algorithm."""
    return _ANY_DIGEST.fullmatch(digest) is not None


def check_digest(digest: str) -> str:
    """A digest this registry can store: ``sha256:`` and 64 lowercase hex digits."""
    if _SHA256.fullmatch(digest) is not None:
        return digest

    if is_well_formed_digest(digest) and not digest.startswith("sha256:"):
        algorithm = digest.split(":", 1)[0]
        raise ApiError(
            DIGEST_INVALID,
            {"digest": digest, "reason": f"unsupported algorithm {algorithm}"},
        )

    raise ApiError(DIGEST_INVALID, {"digest": digest, "reason": "malformed digest"})
