"""Content digests in the spec's form, ``sha256:<64 lowercase hex>``.

One place names bytes by their hash, so the relay that stores a chunk, the registry
node that cuts and checks it, and the API that reports it always agree.
"""

import hashlib

ALGORITHM = "sha256"


def sha256_digest(data: bytes) -> str:
    """The digest naming these bytes."""
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"
