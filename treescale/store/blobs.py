"""Blobs as recipes of chunks: the chunker cutting uploads, the reader serving them.

A blob's recipe is its digest, its size and the ordered digests and sizes of its
chunks. It is stored as the record ``recipe/<digest>``; the chunks themselves go to
relays through
a `ChunkClient`.

Memory stays bounded by the window, never by the blob: an upload holds at most one
partial chunk plus `window` chunks being put; a read holds at most `window` chunks being
fetched or waiting their turn to be written out.
"""

import json
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from treescale.store.budget import ChunkBudget
from treescale.store.chunkclient import ChunkClient
from treescale.store.digests import ALGORITHM, new_hasher, sha256_digest
from treescale.store.errors import DigestMismatch, StorageError, UploadFailed
from treescale.store.records import RecordClient


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a blob: its digest and its length."""

    digest: str
    size: int


@dataclass(frozen=True)
class Recipe:
    """How to put a blob back together from its chunks."""

    digest: str
    size: int
    chunks: tuple[ChunkRef, ...]

    def encode(self) -> bytes:
        document = {
            "digest": self.digest,
            "size": self.size,
            "chunks": [[chunk.digest, chunk.size] for chunk in self.chunks],
        }
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Recipe":
        document = json.loads(data)
        chunks = tuple(ChunkRef(str(d), int(s)) for d, s in document["chunks"])
        recipe = cls(str(document["digest"]), int(document["size"]), chunks)
        if any(chunk.size <= 0 for chunk in chunks):
            raise ValueError(f"recipe of {recipe.digest} has an empty chunk")
        if sum(chunk.size for chunk in chunks) != recipe.size:
            raise ValueError(f"recipe of {recipe.digest} does not add up")
        return recipe

    def spans(self, start: int, end: int) -> list[tuple[ChunkRef, int, int]]:
        """The chunks covering bytes ``[start, end)``, each with the slice to keep."""
        if start >= end:
            return []
        spans = []
        offset = 0
        for chunk in self.chunks:
            chunk_end = offset + chunk.size
            if chunk_end > start and offset < end:
                spans.append(
                    (chunk, max(start - offset, 0), min(end, chunk_end) - offset)
                )
            offset = chunk_end
            if offset >= end:
                break
        return spans


def recipe_key(digest: str) -> str:
    return f"recipe/{digest}"


class ChunkedUpload:
    """A blob being cut into chunks and put to relays as its bytes arrive."""

    log = Logger()

    def __init__(
        self,
        chunks: ChunkClient,
        records: RecordClient,
        chunk_size: int,
        window: int,
        budget: ChunkBudget | None = None,
        algorithm: str = ALGORITHM,
    ) -> None:
        self._chunks = chunks
        self._budget = budget or ChunkBudget(window)
        self._waiting_for_room = 0
        self._records = records
        self._chunk_size = chunk_size
        self._window = window
        self.algorithm = algorithm
        self._hash = new_hasher(algorithm)
        self._buffer = bytearray()
        self._size = 0
        self._cut: list[ChunkRef] = []
        self._in_flight: dict[int, Deferred[None]] = {}
        self._failure: StorageError | None = None
        self._producer: IPushProducer | None = None
        self._paused = False
        self._idle: list[Deferred[None]] = []

    @property
    def size(self) -> int:
        return self._size

    def register_producer(self, producer: IPushProducer) -> None:
        self._producer = producer
        self._paused = False
        self._hold_or_release()

    def unregister_producer(self) -> None:
        if self._producer is not None and self._paused:
            self._producer.resumeProducing()
        self._producer = None
        self._paused = False

    def write(self, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        self._hash.update(data)
        self._size += len(data)
        self._buffer += data
        while len(self._buffer) >= self._chunk_size:
            piece = bytes(self._buffer[: self._chunk_size])
            del self._buffer[: self._chunk_size]
            self._put(piece)

    async def drain(self) -> None:
        while self._in_flight:
            waiter: Deferred[None] = Deferred()
            self._idle.append(waiter)
            await waiter
        if self._failure is not None:
            raise self._failure

    async def finish(self, digest: str) -> int:
        if self._buffer:
            self._put(bytes(self._buffer))
            self._buffer = bytearray()
        await self.drain()

        actual = f"{self.algorithm}:{self._hash.hexdigest()}"
        if actual != digest:
            raise DigestMismatch(f"the upload hashes to {actual}, not {digest}")
        recipe = Recipe(digest, self._size, tuple(self._cut))
        await self._records.put(recipe_key(digest), recipe.encode())
        return self._size

    def abort(self) -> None:
        for put in list(self._in_flight.values()):
            put.cancel()
        self._buffer = bytearray()
        self._failure = UploadFailed("the upload was cancelled")

    def _put(self, data: bytes) -> None:
        ref = ChunkRef(sha256_digest(data), len(data))
        self._cut.append(ref)
        index = len(self._cut)
        put = ensureDeferred(self._put_within_budget(ref, data))
        self._in_flight[index] = put
        put.addCallbacks(
            self._put_done,
            self._put_failed,
            callbackArgs=(index,),
            errbackArgs=(index, ref),
        )
        self._hold_or_release()

    async def _put_within_budget(self, ref: ChunkRef, data: bytes) -> None:
        taken = self._budget.take()
        if not taken.called:
            self._waiting_for_room += 1
            self._hold_or_release()
            try:
                await taken
            finally:
                self._waiting_for_room -= 1
                self._hold_or_release()
        try:
            await self._chunks.put(ref.digest, data)
        finally:
            self._budget.give_back()

    def _put_done(self, _: object, index: int) -> None:
        self._settle(index)

    def _put_failed(self, failure: Failure, index: int, ref: ChunkRef) -> None:
        error = failure.value
        if not isinstance(error, CancelledError) and self._failure is None:
            self.log.error(
                "chunk {digest} could not be stored: {why}",
                digest=ref.digest,
                why=str(error),
            )
            self._failure = (
                error if isinstance(error, StorageError) else UploadFailed(str(error))
            )
        self._settle(index)

    def _settle(self, index: int) -> None:
        self._in_flight.pop(index, None)
        self._hold_or_release()
        if not self._in_flight:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                waiter.callback(None)

    def _hold_or_release(self) -> None:
        """Pause the body's producer while the window is full or a chunk waits for
        room in the node's budget; resume when neither holds."""
        if self._producer is None:
            return
        full = len(self._in_flight) >= self._window or self._waiting_for_room > 0
        if full and not self._paused:
            self._paused = True
            self._producer.pauseProducing()
        elif not full and self._paused:
            self._paused = False
            self._producer.resumeProducing()


@implementer(IPushProducer)
class _ConsumerGate:
    """Our producer on the HTTP response: tells the reader when it may write."""

    def __init__(self, on_stop: Callable[[], None]) -> None:
        self.paused = False
        self.stopped = False
        self._waiters: list[Deferred[None]] = []
        self._on_stop = on_stop

    def wait(self) -> "Deferred[None]":
        if self.stopped:
            d: Deferred[None] = Deferred()
            d.errback(CancelledError("the client went away"))
            return d
        waiter: Deferred[None] = Deferred()
        if self.paused:
            self._waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self.stopped = True
        self._wake()
        self._on_stop()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if self.stopped:
                waiter.errback(CancelledError("the client went away"))
            else:
                waiter.callback(None)


async def read_blob(
    chunks: ChunkClient,
    recipe: Recipe,
    start: int,
    end: int,
    consumer: IConsumer,
    window: int,
    budget: ChunkBudget | None = None,
) -> None:
    """Write bytes ``[start, end)`` of a blob to `consumer`, `window` chunks ahead.

    Each fetched chunk holds room in `budget` until it is written out.
    """
    spans: Sequence[tuple[ChunkRef, int, int]] = recipe.spans(start, end)
    room = budget or ChunkBudget(window)
    fetches: deque[_Fetch] = deque()

    def stop_fetches() -> None:
        # A consumer gone while we wait on a slow fetch must not wait for it.
        for fetch in list(fetches):
            fetch.result.cancel()

    gate = _ConsumerGate(stop_fetches)
    consumer.registerProducer(gate, True)
    upcoming = iter(spans)

    def fetch_more() -> None:
        while len(fetches) < window:
            span = next(upcoming, None)
            if span is None:
                return
            fetches.append(_Fetch(chunks, span[0], room))

    try:
        fetch_more()
        for _chunk, low, high in spans:
            head = fetches[0]
            try:
                data = await head.result
                fetches.popleft()
                fetch_more()
                await gate.wait()
                consumer.write(data[low:high])
            finally:
                head.give_back()
    finally:
        for fetch in fetches:
            fetch.result.cancel()
            fetch.result.addErrback(lambda _: None)
            fetch.give_back()
        consumer.unregisterProducer()


# Shortcoming: a client that stops reading keeps its window of chunks, and their
# room in the node's budget, until it reads on or hangs up; enough such clients
# make other transfers wait for room (they never make the node run out of memory).
class _Fetch:
    """One chunk being fetched for a read, holding room in the budget once taken."""

    def __init__(self, chunks: ChunkClient, chunk: ChunkRef, budget: ChunkBudget):
        self._budget = budget
        self._holds_room = False
        self.result: Deferred[bytes] = ensureDeferred(self._run(chunks, chunk))

    async def _run(self, chunks: ChunkClient, chunk: ChunkRef) -> bytes:
        await self._budget.take()
        self._holds_room = True
        return await chunks.get(chunk.digest, chunk.size)

    def give_back(self) -> None:
        """Return the fetch's room, once; a fetch that never got room returns none."""
        if self._holds_room:
            self._holds_room = False
            self._budget.give_back()
