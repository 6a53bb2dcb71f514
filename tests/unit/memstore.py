"""An in-memory `Storage` for the registry's unit tests: a test double only.

It keeps the protocol's promises that the registry relies on (the digest checked in
`finish`, nothing recorded on a mismatch, `BlobUnknown` for unknown blobs, a producer
registered on the consumer for the length of a read, cancellation that stops a read)
but has no window: an upload never pauses its producer. Switches let a test make it
fail (`unavailable`, `fail_writes`, `fail_reads_after`) or hold reads until released
(`hold_reads`).
"""

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from treescale.store.digests import ALGORITHM, digest_of, new_hasher
from treescale.store.errors import (
    BlobUnknown,
    DigestMismatch,
    StorageUnavailable,
    UploadFailed,
)


@implementer(IPushProducer)
class _ReadProducer:
    """What a read registers on its consumer; it only records the consumer's asks."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class MemoryUpload:
    """A blob being written into a `MemoryStorage`."""

    def __init__(self, storage: "MemoryStorage", algorithm: str = ALGORITHM) -> None:
        self._storage = storage
        self._data = bytearray()
        self.algorithm = algorithm
        self._hash = new_hasher(algorithm)
        self.producer: IPushProducer | None = None
        self.registrations = 0
        self.finished = False
        self.aborted = False

    @property
    def size(self) -> int:
        return len(self._data)

    def register_producer(self, producer: IPushProducer) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is registered already")
        self.producer = producer
        self.registrations += 1

    def unregister_producer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        if self.aborted or self.finished:
            raise UploadFailed("the upload is over")
        if self._storage.fail_writes:
            raise UploadFailed("a chunk could not be placed")
        self._data += data
        self._hash.update(data)

    async def drain(self) -> None:
        self._storage.check_available()

    async def finish(self, digest: str) -> int:
        self._storage.check_available()
        if self.aborted or self.finished:
            raise UploadFailed("the upload is over")
        self.finished = True
        actual = f"{self.algorithm}:{self._hash.hexdigest()}"
        if actual != digest:
            raise DigestMismatch(f"the upload hashes to {actual}, not {digest}")
        self._storage.blobs[digest] = bytes(self._data)
        return len(self._data)

    def abort(self) -> None:
        self.aborted = True
        self._data = bytearray()


class MemoryStorage:
    """Blobs and records in dictionaries."""

    piece_size = 4

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.records: dict[str, bytes] = {}
        self.uploads: list[MemoryUpload] = []
        self.unavailable = False
        self.fail_writes = False
        self.hold_reads = False
        self.fail_reads_after: int | None = None
        self.held: list[Deferred[None]] = []
        self.cancelled_reads = 0
        self.read_producers: list[_ReadProducer] = []

    def check_available(self) -> None:
        """Fail as a cluster with too few relays up would."""
        if self.unavailable:
            raise StorageUnavailable("no quorum")

    async def blob_size(self, digest: str) -> int | None:
        self.check_available()
        data = self.blobs.get(digest)
        return None if data is None else len(data)

    def blob_upload(self, algorithm: str = ALGORITHM) -> MemoryUpload:
        upload = MemoryUpload(self, algorithm)
        self.uploads.append(upload)
        return upload

    async def blob_read(
        self, digest: str, start: int, end: int, consumer: IConsumer
    ) -> None:
        self.check_available()
        data = self.blobs.get(digest)
        if data is None:
            raise BlobUnknown(digest)

        producer = _ReadProducer()
        self.read_producers.append(producer)
        consumer.registerProducer(producer, True)
        try:
            await self._maybe_hold()
            for count, offset in enumerate(range(start, end, self.piece_size)):
                if count == self.fail_reads_after:
                    raise StorageUnavailable("the holders went away mid-read")
                consumer.write(data[offset : min(offset + self.piece_size, end)])
        finally:
            consumer.unregisterProducer()

    async def _maybe_hold(self) -> None:
        """Wait for the test to release the read, when reads are held."""
        if not self.hold_reads:
            return

        gate: Deferred[None] = Deferred()
        self.held.append(gate)
        try:
            await gate
        except CancelledError:
            self.cancelled_reads += 1
            raise

    async def blob_put(self, data: bytes, algorithm: str = ALGORITHM) -> str:
        self.check_available()
        digest = digest_of(data, algorithm)
        self.blobs[digest] = data
        return digest

    async def record_get(self, key: str) -> bytes | None:
        self.check_available()
        return self.records.get(key)

    async def record_put(self, key: str, value: bytes | None) -> None:
        self.check_available()
        if value is None:
            self.records.pop(key, None)
        else:
            self.records[key] = value

    async def record_list(self, prefix: str, after: str, limit: int) -> list[str]:
        self.check_available()
        keys = sorted(
            key for key in self.records if key.startswith(prefix) and key > after
        )
        return keys[:limit]
