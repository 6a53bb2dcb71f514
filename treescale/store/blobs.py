"""Blobs as recipes of chunks: the chunker cutting uploads, the reader serving them.

A blob's recipe is its digest, its size and the ordered digests and sizes of its
chunks. It is stored as the record ``recipe/<digest>``; the chunks themselves go to
relays through a `ChunkClient`.

Memory stays bounded by the window, never by the blob: an upload holds at most one
partial chunk plus `window` chunks being put; a read holds at most `window` chunks being
fetched or waiting their turn to be written out.

An upload can be saved part way (`ChunkedUpload.checkpoint`) as an `UploadState`: the
chunks cut so far, the partial last chunk (stored on the relays like any chunk, so
the state stays small), and the running hash. `resume_upload` takes such a state up
again in any process: the partial chunk is fetched back, and the hash restored, or,
where the hash cannot be saved (see `treescale.store.hashstate`), computed again from
the stored chunks, which costs one read of the bytes uploaded so far.
"""

import json
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from treescale.store.budget import ChunkBudget
from treescale.store.chunkclient import ChunkClient
from treescale.store.digests import (
    ALGORITHM,
    ALGORITHMS,
    Hasher,
    check_of,
    new_hasher,
    sha256_digest,
)
from treescale.store.errors import (
    DigestMismatch,
    StorageError,
    UploadFailed,
)
from treescale.store.hashstate import HashState, ResumableHash, resumable_hasher
from treescale.store.records import RecordClient

UPLOAD_STATE_VERSION = 1


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a blob: its digest, its length and its check.

    The check (`treescale.store.digests.check_of`) is what a pull verifies the
    chunk's bytes against; empty where the chunk was recorded without one.
    """

    digest: str
    size: int
    check: str = ""

    def encode(self) -> list[str | int]:
        """The chunk as a recipe lists it: ``[digest, size]`` or, with a check,
        ``[digest, size, check]``."""
        if self.check:
            return [self.digest, self.size, self.check]
        return [self.digest, self.size]

    @classmethod
    def decode(cls, item: object) -> "ChunkRef":
        """A chunk as `encode` lists it; ValueError when it is not one."""
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise ValueError(f"not a chunk entry: {item!r:.80}")
        check = str(item[2]) if len(item) == 3 else ""
        return cls(str(item[0]), int(item[1]), check)


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
            "chunks": [chunk.encode() for chunk in self.chunks],
        }
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Recipe":
        document = json.loads(data)
        chunks = tuple(ChunkRef.decode(item) for item in document["chunks"])
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


@dataclass(frozen=True)
class UploadState:
    """An upload saved part way: what `resume_upload` needs to go on with it.

    `chunks` are the whole chunks cut so far, `tail` the partial chunk after them
    (stored as a chunk of its own), `hash` the running hash of all `size` bytes, or
    None when it could not be saved and must be computed again.
    """

    algorithm: str
    size: int
    chunks: tuple[ChunkRef, ...]
    tail: ChunkRef | None
    hash: HashState | None

    def __post_init__(self) -> None:
        """Refuse a state whose parts do not add up."""
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unsupported digest algorithm {self.algorithm!r}")
        if any(chunk.size <= 0 for chunk in self.chunks):
            raise ValueError("an upload state has an empty chunk")
        if self.tail is not None and self.tail.size <= 0:
            raise ValueError("an upload state has an empty tail")
        tail = self.tail.size if self.tail is not None else 0
        if sum(chunk.size for chunk in self.chunks) + tail != self.size:
            raise ValueError("an upload state does not add up")
        if self.hash is not None and self.hash.length != self.size:
            raise ValueError("an upload state's hash is not of its bytes")

    def encode(self) -> bytes:
        document: dict[str, Any] = {
            "version": UPLOAD_STATE_VERSION,
            "algorithm": self.algorithm,
            "size": self.size,
            "chunks": [chunk.encode() for chunk in self.chunks],
            "tail": None if self.tail is None else [self.tail.digest, self.tail.size],
            "hash": None if self.hash is None else self.hash.to_json(),
        }
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> "UploadState":
        """A saved state read back; ValueError when it is not one."""
        try:
            document = json.loads(data)
            if document["version"] != UPLOAD_STATE_VERSION:
                raise ValueError(f"upload state version {document['version']!r}")
            chunks = tuple(ChunkRef.decode(item) for item in document["chunks"])
            tail_raw = document["tail"]
            tail = (
                None
                if tail_raw is None
                else ChunkRef(str(tail_raw[0]), int(tail_raw[1]))
            )
            hash_raw = document["hash"]
            saved = None if hash_raw is None else HashState.from_json(hash_raw)
            return cls(
                str(document["algorithm"]), int(document["size"]), chunks, tail, saved
            )
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"not an upload state: {e}") from e


class _PartialChunk:
    """The bytes of the chunk being cut, kept as the pieces they arrived in.

    Appending a body's piece keeps a view of it rather than copying it; the chunk's
    bytes are gathered once, when it is cut. A buffer grown by appending and then
    sliced off copied each byte three times.
    """

    def __init__(self) -> None:
        self._pieces: list[memoryview] = []
        self.size = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def add(self, piece: memoryview) -> None:
        self._pieces.append(piece)
        self.size += len(piece)

    def take(self) -> bytes:
        """The bytes held, in one object; the holder is empty afterwards."""
        data = b"".join(self._pieces)
        self._pieces = []
        self.size = 0
        return data

    def peek(self) -> bytes:
        """The bytes held, in one object, kept held as well."""
        data = b"".join(self._pieces)
        self._pieces = [memoryview(data)]
        return data


def _new_running_hash(algorithm: str) -> Hasher:
    """A running hash of `algorithm`, one whose state can be saved where possible."""
    resumable = resumable_hasher(algorithm)
    return resumable if resumable is not None else new_hasher(algorithm)


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
        self._hash = _new_running_hash(algorithm)
        self._partial = _PartialChunk()
        self._size = 0
        self._cut: list[ChunkRef] = []
        # The relays that took each chunk of `_cut`; empty where not known (a
        # resumed upload's earlier chunks, say).
        self._holders: list[list[str]] = []
        self._tail_stored: ChunkRef | None = None
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
        # Held as views until the chunk is cut: a buffer the caller may change
        # later is copied now.
        data = data if isinstance(data, bytes) else bytes(data)
        self._hash.update(data)
        self._size += len(data)
        view = memoryview(data)
        while view:
            room = self._chunk_size - self._partial.size
            self._partial.add(view[:room])
            view = view[room:]
            if self._partial.size == self._chunk_size:
                self._put(self._partial.take())

    async def drain(self) -> None:
        while self._in_flight:
            waiter: Deferred[None] = Deferred()
            self._idle.append(waiter)
            await waiter
        if self._failure is not None:
            raise self._failure

    async def finish(self, digest: str) -> int:
        if self._partial:
            self._cut_tail()
        await self.drain()

        actual = f"{self.algorithm}:{self._hash.hexdigest()}"
        if actual != digest:
            raise DigestMismatch(f"the upload hashes to {actual}, not {digest}")
        await self._top_up()
        recipe = Recipe(digest, self._size, tuple(self._cut))
        await self._records.put(recipe_key(digest), recipe.encode())
        return self._size

    async def checkpoint(self) -> bytes:
        """Store what is needed to resume the upload, and return it as bytes.

        Stores the partial last chunk (unless the last checkpoint stored the same
        one) while the chunks in flight are stored, and waits for all of them: a
        PATCH that ends a few MB into its last chunk waited one chunk's put more
        when the tail's began only after the others'. The bytes are an
        `UploadState` for `resume_upload`; they hold no blob data, only chunk
        digests.
        """
        tail = None
        storing: Deferred[None] | None = None
        if self._partial:
            data = self._partial.peek()
            tail = ChunkRef(self._digest_of_tail(data), len(data))
            if tail != self._tail_stored:
                storing = ensureDeferred(self._put_within_budget(tail, data))

        try:
            await self.drain()
        except BaseException:
            if storing is not None:
                storing.addErrback(lambda _: None)
                storing.cancel()
            raise

        if storing is not None:
            await storing
            self._tail_stored = tail

        saved = self._hash.save() if isinstance(self._hash, ResumableHash) else None
        state = UploadState(self.algorithm, self._size, tuple(self._cut), tail, saved)
        return state.encode()

    async def _take_up(self, state: UploadState) -> None:
        """Become the upload `state` describes (see `resume_upload`)."""
        tail = b"" if state.tail is None else await self._fetch(state.tail)
        restored = self._restore_hash(state.hash)
        if not restored:
            for ref in state.chunks:
                self._hash.update(await self._fetch(ref))
            self._hash.update(tail)

        self._cut = list(state.chunks)
        self._holders = [[] for _ in state.chunks]
        self._size = state.size
        self._partial = _PartialChunk()
        if tail:
            self._partial.add(memoryview(tail))
        self._tail_stored = state.tail
        self.log.info(
            "resumed an upload of {nbytes} bytes in {count} chunks; hash {how}",
            nbytes=state.size,
            count=len(state.chunks),
            how="restored" if restored else "computed again",
        )

    def _restore_hash(self, saved: HashState | None) -> bool:
        """Take up a saved running hash; False when there is none that fits."""
        if saved is None or not isinstance(self._hash, ResumableHash):
            return False
        try:
            self._hash.restore(saved)
        except ValueError as e:
            self.log.warn("saved upload hash unusable: {why}", why=str(e))
            return False
        return True

    async def _fetch(self, ref: ChunkRef) -> bytes:
        """One stored chunk of this upload, holding room in the budget meanwhile."""
        await self._budget.take()
        try:
            return await self._chunks.get(ref.digest, ref.size, ref.check)
        finally:
            self._budget.give_back()

    def _cut_tail(self) -> None:
        """Cut the partial last chunk; one a checkpoint stored is not put again,
        but is given its check here (BLAKE3 of at most a chunk: under a
        millisecond), as every chunk of a recipe should have one."""
        data = self._partial.take()
        ref = ChunkRef(self._digest_of_tail(data), len(data))
        if ref == self._tail_stored:
            self._cut.append(ChunkRef(ref.digest, ref.size, check_of(data)))
            self._holders.append([])
            return
        self._put(data, ref)

    def _digest_of_tail(self, data: bytes) -> str:
        """The digest of the partial last chunk `data`.

        When it is the whole blob and the blob is hashed with sha256, the blob's
        running hash already is the chunk's: the bytes are not hashed again.
        """
        whole = not self._cut and len(data) == self._size
        if whole and self.algorithm == ALGORITHM:
            return f"{ALGORITHM}:{self._hash.hexdigest()}"
        return sha256_digest(data)

    async def _top_up(self) -> None:
        """Copy again every chunk that lost a holder while the upload went on.

        A relay that dies after taking a chunk leaves it on fewer live relays
        than it needs; the recipe is written only once each is back to its count.
        """
        for ref, holders in zip(self._cut, self._holders, strict=True):
            if not holders or not self._chunks.short_of_copies(holders):
                continue
            await self._budget.take()
            try:
                holders[:] = await self._chunks.top_up(ref.digest, ref.size, holders)
            finally:
                self._budget.give_back()

    def abort(self) -> None:
        for put in list(self._in_flight.values()):
            put.cancel()
        self._partial = _PartialChunk()
        self._failure = UploadFailed("the upload was cancelled")

    def _put(self, data: bytes, ref: ChunkRef | None = None) -> None:
        """Store a cut chunk in the background, taking its place in the recipe now.

        A chunk not named yet is hashed first where the chunk client hashes (in
        a thread pool on a registry node), so the reactor goes on reading the body;
        its place holds a nameless ref until then, and every reader of the recipe
        waits for the chunks in flight first.
        """
        index = len(self._cut)
        self._cut.append(ref or ChunkRef("", len(data)))
        holders: list[str] = []
        self._holders.append(holders)
        put = ensureDeferred(self._name_and_put(index, data, holders))
        self._in_flight[index] = put
        put.addCallbacks(
            self._put_done,
            self._put_failed,
            callbackArgs=(index,),
            errbackArgs=(index,),
        )
        self._hold_or_release()

    async def _name_and_put(self, index: int, data: bytes, holders: list[str]) -> None:
        """Name the chunk at `index` of the recipe and take its check (what it
        lacks of either), then store it."""
        digest, check = await self._chunks.name(data, self._cut[index].digest)
        self._cut[index] = ChunkRef(digest, len(data), check)
        await self._put_within_budget(self._cut[index], data, holders)

    async def _put_within_budget(
        self, ref: ChunkRef, data: bytes, holders: list[str] | None = None
    ) -> None:
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
            stored = await self._chunks.put(ref.digest, data)
        finally:
            self._budget.give_back()
        if holders is not None and stored:
            holders.extend(stored)

    def _put_done(self, _: object, index: int) -> None:
        self._settle(index)

    def _put_failed(self, failure: Failure, index: int) -> None:
        error = failure.value
        if not isinstance(error, CancelledError) and self._failure is None:
            self.log.error(
                "chunk {digest} could not be stored: {why}",
                digest=self._cut[index].digest or f"#{index} (not yet named)",
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


async def resume_upload(
    chunks: ChunkClient,
    records: RecordClient,
    chunk_size: int,
    window: int,
    budget: ChunkBudget | None,
    state: UploadState,
) -> ChunkedUpload:
    """An upload going on from a saved `UploadState`, in this process.

    Fetches the partial last chunk back; restores the running hash, or computes it
    again from the stored chunks when the state has none or it does not fit.
    Raises `StorageUnavailable` when a chunk it needs cannot be fetched.
    """
    upload = ChunkedUpload(chunks, records, chunk_size, window, budget, state.algorithm)
    await upload._take_up(state)
    return upload


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


def download_window(window: int, per_relay: int, relays: int) -> int:
    """Chunks a download keeps in flight: `per_relay` for each relay it can
    reach, within `window`, and never none.

    One relay serves a few chunks at once best: more of them read at once only
    crowd its disk, the caches and the registry node's memory (a one-relay pull on
    loopback ran 5 to 12% faster with 3 in flight than 8); more relays each need
    their few to keep their links full.
    """
    return max(1, min(window, per_relay * max(1, relays)))


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

    Each fetched chunk holds room in `budget` until it is written out and the
    consumer has taken it: a chunk waits in the consumer's buffer until the next
    one may be written, and is counted until then, so the budget bounds every
    chunk the node holds for reads.
    """
    spans: Sequence[tuple[ChunkRef, int, int]] = recipe.spans(start, end)
    # Without a shared budget: the window, and the chunk the consumer holds.
    room = budget or ChunkBudget(window + 1)
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

    written: _Fetch | None = None
    try:
        fetch_more()
        for _chunk, low, high in spans:
            head = fetches[0]
            try:
                # The consumer asks for more once it has sent what it held. Its
                # room goes back before the next chunk is awaited: that chunk may
                # wait for room, and no read may hold room while it waits for
                # some (reads holding the last of it would wait for each other).
                await gate.wait()
                if written is not None:
                    written.give_back()
                    written = None
                data = await head.result
                fetches.popleft()
                fetch_more()
                await gate.wait()
            except BaseException:
                head.give_back()
                raise
            written = head
            consumer.write(data[low:high])
    finally:
        if written is not None:
            written.give_back()
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
        return await chunks.get(chunk.digest, chunk.size, chunk.check)

    def give_back(self) -> None:
        """Return the fetch's room, once; a fetch that never got room returns none."""
        if self._holds_room:
            self._holds_room = False
            self._budget.give_back()
