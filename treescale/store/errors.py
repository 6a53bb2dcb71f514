"""Domain errors of the storage layer, raised to the registry.

The registry maps each of these to one of the spec's error codes; nothing here knows
about HTTP.
"""


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""


class BlobUnknown(StorageError):
    """No recipe exists for the digest asked for."""


class DigestMismatch(StorageError):
    """The bytes received do not hash to the digest the client stated."""


class UploadFailed(StorageError):
    """An upload can no longer complete: a chunk is on too few relays."""


class StorageUnavailable(StorageError):
    """Too few relays answered to read or write the data: the client may retry later."""
