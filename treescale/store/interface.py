"""The storage layer as the registry sees it: two small protocols.

The registry never talks to the bus. It asks a `Storage` for blobs by digest and for
small records by key, and streams uploads into a `BlobUpload`. The real implementation
(`treescale.store.cluster`) spreads chunks over relays; tests of the registry use an
in-memory one. Both are checked against these protocols.

Digests are strings in the spec's form, ``<algorithm>:<lowercase hex>``, of an
algorithm `treescale.store.digests.ALGORITHMS` names (sha256 unless a client asks).
"""

from typing import Protocol, runtime_checkable

from twisted.internet.interfaces import IConsumer, IPushProducer


class BlobUpload(Protocol):
    """A blob being written, one byte stream cut into chunks as it arrives.

    Data may arrive over several HTTP requests (chunked uploads); the upload keeps the
    partial last chunk and the running hash between them.
    """

    @property
    def size(self) -> int:
        """Bytes accepted so far."""

    @property
    def algorithm(self) -> str:
        """The digest algorithm the whole blob is hashed with."""

    def register_producer(self, producer: IPushProducer) -> None:
        """Pause `producer` while the window of chunk puts in flight is full."""

    def unregister_producer(self) -> None:
        """Stop pausing the producer registered last (its request has ended)."""

    def write(self, data: bytes) -> None:
        """Accept more bytes; raises `UploadFailed` once a chunk put has failed."""

    async def drain(self) -> None:
        """Wait until every full chunk cut so far is stored on its relays."""

    async def finish(self, digest: str) -> int:
        """Store the last chunk, check the whole blob's digest, write its recipe.

        Returns the blob's size. Raises `DigestMismatch` when the bytes do not hash to
        `digest` (nothing is then recorded), `UploadFailed` when a chunk was lost.
        """

    def abort(self) -> None:
        """Give the upload up; its stored chunks become garbage."""


class Storage(Protocol):
    """Blobs by digest and records by key, wherever they are kept."""

    async def blob_size(self, digest: str) -> int | None:
        """The size of a stored blob, or None when no recipe exists for it."""

    def blob_upload(self, algorithm: str = "sha256") -> BlobUpload:
        """Start a new upload, hashing the whole blob by `algorithm` as it arrives."""

    async def blob_read(
        self, digest: str, start: int, end: int, consumer: IConsumer
    ) -> None:
        """Write bytes ``[start, end)`` of a blob to `consumer`, in order.

        Registers a producer on `consumer` for the duration so the consumer's
        backpressure holds the window; unregisters it before returning. Raises
        `BlobUnknown` when there is no such blob. Cancelling the call stops the
        fetches. The caller checks the range against `blob_size` first.
        """

    async def blob_put(self, data: bytes, algorithm: str = "sha256") -> str:
        """Store a small blob held in memory (a manifest); returns its digest."""

    async def record_get(self, key: str) -> bytes | None:
        """The newest value of a record, or None when it was never written."""

    async def record_put(self, key: str, value: bytes | None) -> None:
        """Write a record (None deletes it); returns once a quorum holds it."""

    async def record_list(self, prefix: str, after: str, limit: int) -> list[str]:
        """Up to `limit` keys of live records starting with `prefix`, in order,
        each greater than `after` (``""`` for the first page).

        Only keys under `treescale.store.records.LISTED_PREFIXES` can be listed:
        relays index those alone.
        """


# Saving uploads part way. These are apart from the protocols above so that a store
# which cannot resume an upload (a test's in-memory one) still is a `Storage`; the
# registry persists its upload sessions only over a store that is both.


@runtime_checkable
class CheckpointedUpload(Protocol):
    """A `BlobUpload` that can be saved part way."""

    async def checkpoint(self) -> bytes:
        """Wait for every chunk cut so far, store the partial one, and return the
        state `ResumableStorage.blob_resume` takes up again (small: digests and a
        hash state, no blob bytes)."""


@runtime_checkable
class ResumableStorage(Protocol):
    """A `Storage` that can take up an upload saved by another process."""

    async def blob_resume(self, state: bytes) -> BlobUpload:
        """The upload `state` describes, ready for more bytes.

        Raises ValueError when `state` is not a saved upload, `StorageUnavailable`
        when the chunks it needs cannot be fetched.
        """
