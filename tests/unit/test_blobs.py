"""Tests of blobs as recipes: the recipe format, the chunker's window, the reader's."""

import hashlib
import json
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from tests.unit.bustest import failure, success
from treescale.store.blobs import (
    ChunkedUpload,
    ChunkRef,
    Recipe,
    UploadState,
    download_window,
    read_blob,
    recipe_key,
    resume_upload,
)
from treescale.store.budget import ChunkBudget
from treescale.store.chunkclient import ChunkClient, name_of
from treescale.store.digests import check_of, sha256_digest
from treescale.store.errors import DigestMismatch, StorageUnavailable, UploadFailed
from treescale.store.records import RecordClient

CHUNK = 100


def recipe_of(data: bytes, sizes: list[int]) -> Recipe:
    """The recipe of `data` cut into chunks of the given sizes, with checks."""
    chunks = []
    offset = 0
    for size in sizes:
        piece = data[offset : offset + size]
        chunks.append(ChunkRef(sha256_digest(piece), size, check_of(piece)))
        offset += size
    return Recipe(sha256_digest(data), len(data), tuple(chunks))


# Recipes.


def test_recipe_of_chunks_without_checks_still_reads() -> None:
    """A recipe written before chunks had checks lists ``[digest, size]`` pairs;
    it reads back with empty checks, and is written back the same way."""
    data = bytes(range(250))
    pairs = [[sha256_digest(data[:100]), 100], [sha256_digest(data[100:]), 150]]
    old = {"digest": sha256_digest(data), "size": 250, "chunks": pairs}

    recipe = Recipe.decode(json.dumps(old).encode())

    assert [ref.check for ref in recipe.chunks] == ["", ""]
    assert json.loads(recipe.encode())["chunks"] == pairs


def test_recipe_with_a_malformed_chunk_entry_is_refused() -> None:
    """A chunk entry that is not a list of two or three items is refused."""
    data = bytes(range(10))
    for entry in ([sha256_digest(data)], [sha256_digest(data), 10, "x", "y"], "no"):
        document = {"digest": sha256_digest(data), "size": 10, "chunks": [entry]}
        with pytest.raises(ValueError):
            Recipe.decode(json.dumps(document).encode())


def test_recipe_round_trips() -> None:
    """A recipe encodes to bytes that decode to the same recipe."""
    recipe = recipe_of(b"x" * 250, [100, 100, 50])

    assert Recipe.decode(recipe.encode()) == recipe


def test_recipe_that_does_not_add_up_is_refused() -> None:
    """Decoding refuses a recipe whose chunk sizes do not sum to the blob's size."""
    recipe = recipe_of(b"x" * 250, [100, 100, 50])
    damaged = Recipe(recipe.digest, 251, recipe.chunks)

    with pytest.raises(ValueError):
        Recipe.decode(damaged.encode())


def test_recipe_with_a_negative_chunk_is_refused() -> None:
    """Decoding refuses chunk sizes that add up only because one is negative."""
    recipe = recipe_of(b"x" * 250, [100, 100, 50])
    first, second, third = recipe.chunks
    damaged = Recipe(
        recipe.digest,
        250,
        (first, ChunkRef(second.digest, 200), ChunkRef(third.digest, -50)),
    )

    with pytest.raises(ValueError, match="empty chunk"):
        Recipe.decode(damaged.encode())


def test_recipe_key_and_digest_form() -> None:
    """Recipes are stored under recipe/<digest>, digests in the spec's form."""
    assert recipe_key("sha256:ab") == "recipe/sha256:ab"
    assert sha256_digest(b"") == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_spans_of_a_range_inside_one_chunk() -> None:
    """A range inside one chunk maps to that chunk alone, with the slice to keep."""
    recipe = recipe_of(bytes(300), [100, 100, 100])

    assert recipe.spans(120, 150) == [(recipe.chunks[1], 20, 50)]


def test_spans_of_an_empty_range_are_empty() -> None:
    """An empty range needs no chunk at all."""
    recipe = recipe_of(bytes(300), [100, 100, 100])

    assert recipe.spans(150, 150) == []
    assert recipe.spans(300, 300) == []


@st.composite
def blob_and_range(draw: st.DrawFn) -> tuple[bytes, list[int], int, int]:
    """A blob, a cut of it into chunks, and a byte range within it."""
    sizes = draw(st.lists(st.integers(1, 40), min_size=1, max_size=12))
    data = draw(st.binary(min_size=sum(sizes), max_size=sum(sizes)))
    start = draw(st.integers(0, len(data)))
    end = draw(st.integers(start, len(data)))
    return data, sizes, start, end


@given(blob_and_range())
def test_spans_reassemble_the_range(case: tuple[bytes, list[int], int, int]) -> None:
    """Slicing the chunks as spans says, in order, gives exactly the range's bytes."""
    data, sizes, start, end = case
    recipe = recipe_of(data, sizes)
    by_digest = {}
    offset = 0
    for ref, size in zip(recipe.chunks, sizes, strict=True):
        by_digest[ref.digest] = data[offset : offset + size]
        offset += size

    spans = recipe.spans(start, end)

    assert (
        b"".join(by_digest[ref.digest][low:high] for ref, low, high in spans)
        == (data[start:end])
    )
    assert all(0 <= low < high <= ref.size for ref, low, high in spans)


# The chunker, over a fake chunk client whose puts the test completes.


class FakeChunks:
    """Records chunk puts and gets; each returns a Deferred the test fires."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, bytes, Deferred[None]]] = []
        self.gets: list[tuple[str, int, Deferred[bytes]]] = []
        self.cancelled: list[str] = []

    def put(self, digest: str, data: bytes) -> "Deferred[None]":
        d: Deferred[None] = Deferred(lambda _: self.cancelled.append(digest))
        self.puts.append((digest, data, d))
        return d

    def get(self, digest: str, size: int, check: str = "") -> "Deferred[bytes]":
        d: Deferred[bytes] = Deferred(lambda _: self.cancelled.append(digest))
        self.gets.append((digest, size, d))
        return d

    def in_flight(self) -> int:
        return sum(1 for _, _, d in self.puts if not d.called)

    def name(self, data: bytes, digest: str = "") -> "Deferred[tuple[str, str]]":
        return succeed(name_of(data, digest))


class FakeRecords:
    """A record store in a dict."""

    def __init__(self) -> None:
        self.values: dict[str, bytes | None] = {}

    async def put(self, key: str, value: bytes | None) -> None:
        self.values[key] = value


@implementer(IPushProducer)
class Body:
    """A request body as a producer: counts how it is paused and resumed."""

    def __init__(self) -> None:
        self.paused = False
        self.log: list[str] = []

    def pauseProducing(self) -> None:
        assert not self.paused, "paused twice"
        self.paused = True
        self.log.append("pause")

    def resumeProducing(self) -> None:
        assert self.paused, "resumed while running"
        self.paused = False
        self.log.append("resume")

    def stopProducing(self) -> None:
        self.log.append("stop")


def upload(
    window: int = 2,
) -> tuple[ChunkedUpload, FakeChunks, FakeRecords]:
    """An upload cutting CHUNK-byte chunks with `window` puts in flight."""
    chunks, records = FakeChunks(), FakeRecords()
    up = ChunkedUpload(
        cast(ChunkClient, chunks), cast(RecordClient, records), CHUNK, window
    )
    return up, chunks, records


def test_chunks_are_cut_at_chunk_size() -> None:
    """Bytes written in odd pieces are cut into full chunks; the rest waits."""
    up, chunks, _ = upload(window=8)

    for piece in (b"a" * 30, b"b" * 120, b"c" * 90):
        up.write(piece)

    data = b"a" * 30 + b"b" * 120 + b"c" * 90
    assert [body for _, body, _ in chunks.puts] == [data[:100], data[100:200]]
    assert [digest for digest, _, _ in chunks.puts] == [
        sha256_digest(data[:100]),
        sha256_digest(data[100:200]),
    ]
    assert up.size == 240


class SlowHashing(FakeChunks):
    """A chunk client whose digests come later, as from a thread pool."""

    def __init__(self) -> None:
        super().__init__()
        self.hashing: list[tuple[bytes, Deferred[tuple[str, str]]]] = []

    def name(self, data: bytes, digest: str = "") -> "Deferred[tuple[str, str]]":
        d: Deferred[tuple[str, str]] = Deferred()
        self.hashing.append((data, d))
        return d


def test_chunks_are_named_by_the_chunk_clients_hasher_before_their_put() -> None:
    """A cut chunk is named and given its check by the chunk client (in its pool
    on a registry node), its put waits for them, and the recipe lists the chunks
    with their checks in the order cut, whatever order the names come back in."""
    chunks, records = SlowHashing(), FakeRecords()
    up = ChunkedUpload(cast(ChunkClient, chunks), cast(RecordClient, records), CHUNK, 8)
    data = bytes(range(250))
    up.write(data)
    assert [body for body, _ in chunks.hashing] == [data[:100], data[100:200]]
    assert chunks.puts == []

    chunks.hashing[1][1].callback(name_of(data[100:200]))
    chunks.hashing[0][1].callback(name_of(data[:100]))
    for _, _, put in list(chunks.puts):
        put.callback(None)
    done = ensureDeferred(up.finish(sha256_digest(data)))
    chunks.hashing[2][1].callback(name_of(data[200:], sha256_digest(data[200:])))
    for _, _, put in chunks.puts[2:]:
        put.callback(None)

    assert success(done) == 250
    recipe = Recipe.decode(records.values[recipe_key(sha256_digest(data))] or b"")
    pieces = [data[:100], data[100:200], data[200:]]
    assert recipe.chunks == tuple(
        ChunkRef(sha256_digest(piece), len(piece), check_of(piece)) for piece in pieces
    )


def test_one_chunk_blob_is_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sha256 blob that is one chunk is named by its running hash: its bytes
    are not hashed a second time for the chunk's name, which is the same."""
    hashed: list[bytes] = []

    def counting(data: bytes) -> str:
        hashed.append(data)
        return sha256_digest(data)

    monkeypatch.setattr("treescale.store.blobs.sha256_digest", counting)
    up, chunks, _ = upload()
    data = b"z" * 60
    up.write(data)
    done = ensureDeferred(up.finish(sha256_digest(data)))
    chunks.puts[0][2].callback(None)

    assert success(done) == 60
    assert hashed == []
    assert [digest for digest, _, _ in chunks.puts] == [sha256_digest(data)]


def test_tail_of_a_longer_blob_is_hashed_for_its_name() -> None:
    """The last chunk of a blob of several chunks gets its own digest."""
    up, chunks, _ = upload(window=8)
    data = bytes(range(150))
    up.write(data)
    done = ensureDeferred(up.finish(sha256_digest(data)))
    for _, _, put in chunks.puts:
        put.callback(None)

    assert success(done) == 150
    assert [digest for digest, _, _ in chunks.puts] == [
        sha256_digest(data[:100]),
        sha256_digest(data[100:]),
    ]


def test_producer_pauses_when_the_window_is_full() -> None:
    """The body is paused once `window` puts are in flight and resumed as one ends."""
    up, chunks, _ = upload(window=2)
    body = Body()
    up.register_producer(body)

    up.write(b"x" * CHUNK)
    assert not body.paused
    up.write(b"y" * CHUNK)
    assert body.paused
    assert chunks.in_flight() == 2
    chunks.puts[0][2].callback(None)

    assert not body.paused
    assert body.log == ["pause", "resume"]


def test_registering_while_full_pauses_at_once() -> None:
    """A producer registered while the window is already full is paused at once."""
    up, chunks, _ = upload(window=1)
    up.write(b"x" * CHUNK)
    body = Body()

    up.register_producer(body)
    assert body.paused
    up.unregister_producer()

    assert not body.paused
    chunks.puts[0][2].callback(None)
    assert body.log == ["pause", "resume"]


def test_drain_waits_for_every_put() -> None:
    """drain fires only once every chunk put so far is stored."""
    up, chunks, _ = upload(window=4)
    up.write(b"z" * (3 * CHUNK))

    drained = ensureDeferred(up.drain())
    chunks.puts[0][2].callback(None)
    chunks.puts[2][2].callback(None)
    assert not drained.called
    chunks.puts[1][2].callback(None)

    success(drained)


def test_finish_stores_the_last_chunk_and_the_recipe() -> None:
    """finish puts the partial chunk, waits, checks the digest and writes the recipe."""
    up, chunks, records = upload(window=4)
    data = bytes(range(256))
    up.write(data)

    finished = ensureDeferred(up.finish(sha256_digest(data)))
    assert len(chunks.puts) == 3
    assert not finished.called
    for _, _, d in chunks.puts:
        d.callback(None)

    assert success(finished) == 256
    stored = records.values[recipe_key(sha256_digest(data))]
    assert stored is not None
    recipe = Recipe.decode(stored)
    assert recipe.size == 256
    assert [ref.size for ref in recipe.chunks] == [100, 100, 56]
    assert [ref.digest for ref in recipe.chunks] == [d for d, _, _ in chunks.puts]


def test_empty_blob_has_an_empty_recipe() -> None:
    """An upload of no bytes puts no chunk and records a recipe of none."""
    up, chunks, records = upload()

    assert success(ensureDeferred(up.finish(sha256_digest(b"")))) == 0

    assert chunks.puts == []
    stored = records.values[recipe_key(sha256_digest(b""))]
    assert stored is not None and Recipe.decode(stored).chunks == ()


def test_finish_with_the_wrong_digest_records_nothing() -> None:
    """A blob that does not hash to the stated digest raises DigestMismatch."""
    up, chunks, records = upload()
    up.write(b"real bytes")

    finished = ensureDeferred(up.finish(sha256_digest(b"claimed bytes")))
    chunks.puts[0][2].callback(None)

    assert isinstance(failure(finished).value, DigestMismatch)
    assert records.values == {}


def test_failed_put_fails_the_next_write() -> None:
    """Once a chunk put has failed, the next write raises UploadFailed."""
    up, chunks, _ = upload(window=4)
    up.write(b"x" * CHUNK)

    chunks.puts[0][2].errback(RuntimeError("relay on fire"))

    with pytest.raises(UploadFailed):
        up.write(b"more")


def test_failed_put_fails_finish() -> None:
    """A chunk that could not be stored makes finish raise, with no recipe."""
    up, chunks, records = upload(window=4)
    data = b"x" * (CHUNK + 10)
    up.write(data)

    finished = ensureDeferred(up.finish(sha256_digest(data)))
    chunks.puts[1][2].callback(None)
    chunks.puts[0][2].errback(UploadFailed("on 1 relays, 2 needed"))

    error = failure(finished).value
    assert isinstance(error, UploadFailed)
    assert "1 relays" in str(error)
    assert records.values == {}


def test_abort_cancels_puts_in_flight() -> None:
    """abort cancels every put still in flight and refuses later writes."""
    up, chunks, _ = upload(window=4)
    up.write(b"x" * (2 * CHUNK))
    chunks.puts[0][2].callback(None)

    up.abort()

    assert chunks.cancelled == [chunks.puts[1][0]]
    with pytest.raises(UploadFailed):
        up.write(b"y")


# The reader, over the same fake chunk client.


@implementer(IConsumer)
class Response:
    """An HTTP response as a consumer: keeps what is written and its producer."""

    def __init__(self) -> None:
        self.producer: Any = None
        self.written: list[bytes] = []
        self.registrations = 0

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer
        self.registrations += 1

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)


def stored_blob(
    nchunks: int = 6,
) -> tuple[bytes, Recipe, dict[str, bytes]]:
    """A blob of `nchunks` chunks of CHUNK bytes, its recipe and its chunks."""
    data = bytes((n * 7) % 251 for n in range(nchunks * CHUNK))
    recipe = recipe_of(data, [CHUNK] * nchunks)
    pieces = {
        ref.digest: data[i * CHUNK : (i + 1) * CHUNK]
        for i, ref in enumerate(recipe.chunks)
    }
    return data, recipe, pieces


def reading(
    recipe: Recipe,
    start: int,
    end: int,
    window: int,
    budget: ChunkBudget | None = None,
    response: "Response | None" = None,
) -> tuple["Deferred[None]", FakeChunks, "Response"]:
    """Start reading a range of a blob into a fresh consumer (or `response`),
    within `budget` when one is given."""
    chunks = FakeChunks()
    response = response or Response()
    d = ensureDeferred(
        read_blob(
            cast(ChunkClient, chunks), recipe, start, end, response, window, budget
        )
    )
    return d, chunks, response


def answer(chunks: FakeChunks, index: int, pieces: dict[str, bytes]) -> None:
    """Complete the index-th fetch with the right bytes."""
    digest, _, d = chunks.gets[index]
    d.callback(pieces[digest])


def test_reader_writes_in_order_within_the_window() -> None:
    """Fetches answered out of order are written in order, at most `window` ahead."""
    data, recipe, pieces = stored_blob(6)

    d, chunks, response = reading(recipe, 0, len(data), window=3)
    assert len(chunks.gets) == 3
    answer(chunks, 2, pieces)
    answer(chunks, 1, pieces)
    assert response.written == []
    answer(chunks, 0, pieces)
    assert len(response.written) == 3
    assert len(chunks.gets) == 6
    for index in (5, 3, 4):
        answer(chunks, index, pieces)

    success(d)
    assert b"".join(response.written) == data
    assert response.registrations == 1
    assert response.producer is None


def test_reader_never_has_more_than_window_fetches() -> None:
    """However the answers come, no more than `window` fetches are outstanding."""
    data, recipe, pieces = stored_blob(8)
    d, chunks, _ = reading(recipe, 0, len(data), window=2)

    most = 0
    for index in range(8):
        outstanding = sum(1 for _, _, f in chunks.gets if not f.called)
        most = max(most, outstanding)
        answer(chunks, index, pieces)

    success(d)
    assert most == 2


def test_reader_serves_a_range_across_chunks() -> None:
    """A range starting and ending mid-chunk fetches only the chunks it covers."""
    data, recipe, pieces = stored_blob(6)

    d, chunks, response = reading(recipe, 150, 420, window=8)
    for index in range(len(chunks.gets)):
        answer(chunks, index, pieces)

    success(d)
    assert [digest for digest, _, _ in chunks.gets] == [
        ref.digest for ref in recipe.chunks[1:5]
    ]
    assert b"".join(response.written) == data[150:420]


def test_reader_waits_for_a_paused_consumer() -> None:
    """Nothing is written while the consumer has paused its producer."""
    data, recipe, pieces = stored_blob(3)
    d, chunks, response = reading(recipe, 0, len(data), window=3)

    response.producer.pauseProducing()
    for index in range(3):
        answer(chunks, index, pieces)
    assert response.written == []
    response.producer.resumeProducing()

    success(d)
    assert b"".join(response.written) == data


def test_reader_stops_when_the_consumer_stops() -> None:
    """A consumer stopping its producer ends the read and cancels its fetches."""
    data, recipe, pieces = stored_blob(6)
    d, chunks, response = reading(recipe, 0, len(data), window=3)
    response.producer.pauseProducing()
    answer(chunks, 0, pieces)

    response.producer.stopProducing()

    assert isinstance(failure(d).value, CancelledError)
    assert sorted(chunks.cancelled) == sorted(g[0] for g in chunks.gets[1:])
    assert response.written == []


def test_reader_stops_at_once_while_waiting_on_a_fetch() -> None:
    """A consumer that stops while a fetch is slow cancels it without waiting."""
    data, recipe, _ = stored_blob(6)
    d, chunks, response = reading(recipe, 0, len(data), window=3)

    response.producer.stopProducing()

    assert isinstance(failure(d).value, CancelledError)
    assert sorted(chunks.cancelled) == sorted(g[0] for g in chunks.gets)
    assert response.producer is None


def test_cancelling_the_read_cancels_its_fetches() -> None:
    """Cancelling read_blob (a client hanging up) cancels every fetch in flight."""
    data, recipe, pieces = stored_blob(6)
    d, chunks, response = reading(recipe, 0, len(data), window=3)
    answer(chunks, 0, pieces)

    d.cancel()

    assert isinstance(failure(d).value, CancelledError)
    assert sorted(chunks.cancelled) == sorted(g[0] for g in chunks.gets[1:])
    assert response.producer is None


def test_failed_fetch_fails_the_read() -> None:
    """A chunk no holder could give fails the read and cancels the other fetches."""
    data, recipe, _ = stored_blob(4)
    d, chunks, response = reading(recipe, 0, len(data), window=3)

    chunks.gets[0][2].errback(StorageUnavailable("no holder"))

    assert isinstance(failure(d).value, StorageUnavailable)
    assert sorted(chunks.cancelled) == sorted(g[0] for g in chunks.gets[1:])
    assert response.written == []


# The node-wide chunk budget shared by reads and uploads.


def test_reads_sharing_a_budget_hold_no_more_than_it() -> None:
    """Two reads of a shared 3-chunk budget never have more than 3 fetches out,
    and a paused reader's fetched chunks keep the other waiting until it writes."""
    data, recipe, pieces = stored_blob(4)
    budget = ChunkBudget(3)
    d1, first_chunks, first = reading(recipe, 0, len(data), 4, budget)
    first.producer.pauseProducing()
    d2, second_chunks, second = reading(recipe, 0, len(data), 4, budget)
    assert len(first_chunks.gets) == 3
    assert second_chunks.gets == []

    for index in range(3):
        answer(first_chunks, index, pieces)
    assert second_chunks.gets == []
    first.producer.resumeProducing()
    while not (d1.called and d2.called):
        for chunks in (first_chunks, second_chunks):
            for index, (_, _, fetch) in enumerate(chunks.gets):
                if not fetch.called:
                    answer(chunks, index, pieces)

    success(d1)
    success(d2)
    assert b"".join(first.written) == data
    assert b"".join(second.written) == data
    assert budget.free == 3


class PausingResponse(Response):
    """A consumer whose buffer is full after every write, until resumed."""

    def write(self, data: bytes) -> None:
        super().write(data)
        self.producer.pauseProducing()


def test_written_chunk_holds_room_until_the_consumer_asks_for_more() -> None:
    """A chunk written to a consumer that paused is still in memory (the
    consumer's buffer holds it): its room comes back only once the consumer
    resumes, and the next chunk is written then."""
    data, recipe, pieces = stored_blob(3)
    budget = ChunkBudget(3)
    d, chunks, response = reading(recipe, 0, len(data), 2, budget, PausingResponse())
    answer(chunks, 0, pieces)
    answer(chunks, 1, pieces)
    assert len(response.written) == 1
    assert budget.free == 0

    response.producer.resumeProducing()
    assert len(response.written) == 2
    assert budget.free == 1
    answer(chunks, 2, pieces)
    response.producer.resumeProducing()
    success(d)
    assert b"".join(response.written) == data
    assert budget.free == 3


def test_reads_sharing_a_small_budget_all_finish() -> None:
    """Reads whose windows together exceed the budget, each consumer pausing after
    every write, all finish: no read waits for room while it holds some."""
    data, recipe, pieces = stored_blob(4)
    budget = ChunkBudget(2)
    reads = []
    for _ in range(3):
        reads.append(reading(recipe, 0, len(data), 2, budget, PausingResponse()))

    for _ in range(100):
        for _, chunks, response in reads:
            for index, (_, _, fetch) in enumerate(chunks.gets):
                if not fetch.called:
                    answer(chunks, index, pieces)
            if response.producer is not None and response.producer.paused:
                response.producer.resumeProducing()
        if all(d.called for d, _, _ in reads):
            break

    for d, _, response in reads:
        success(d)
        assert b"".join(response.written) == data
    assert budget.free == 2


def test_cancelled_read_gives_its_room_back() -> None:
    """A read cancelled with fetches out returns all of its room to the budget."""
    data, recipe, pieces = stored_blob(4)
    budget = ChunkBudget(4)
    d, chunks, _ = reading(recipe, 0, len(data), 4, budget)
    answer(chunks, 1, pieces)
    assert budget.free == 0

    d.cancel()
    d.addErrback(lambda _: None)

    assert budget.free == 4


def test_upload_waiting_for_room_pauses_its_body() -> None:
    """An upload whose chunk finds the budget spent pauses its body until room
    frees, and holds no more than that one chunk meanwhile."""
    budget = ChunkBudget(1)
    chunks, records = FakeChunks(), FakeRecords()
    up = ChunkedUpload(
        cast(ChunkClient, chunks), cast(RecordClient, records), CHUNK, 8, budget
    )
    body = Body()
    up.register_producer(body)

    up.write(b"a" * CHUNK)
    assert not body.paused
    up.write(b"b" * CHUNK)
    assert body.paused
    assert len(chunks.puts) == 1

    chunks.puts[0][2].callback(None)
    assert len(chunks.puts) == 2
    assert not body.paused
    chunks.puts[1][2].callback(None)
    assert budget.free == 1


# Saving an upload part way, and taking it up again.


class KeepingChunks(FakeChunks):
    """Fake chunks that also keep what was put, so gets can be answered from it,
    and say which relays took each put."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: dict[str, bytes] = {}
        self.reachable: set[str] = {"r1", "r2", "r3"}
        self.top_ups: list[tuple[str, list[str]]] = []

    def put(self, digest: str, data: bytes) -> "Deferred[Any]":
        self.kept[digest] = data
        d: Deferred[Any] = Deferred()
        self.puts.append((digest, data, d))
        d.callback(["r1", "r2"])
        return d

    def get(self, digest: str, size: int, check: str = "") -> "Deferred[bytes]":
        d: Deferred[bytes] = Deferred()
        self.gets.append((digest, size, d))
        d.callback(self.kept[digest])
        return d

    def short_of_copies(self, holders: list[str]) -> bool:
        return sum(1 for name in holders if name in self.reachable) < 2

    async def top_up(self, digest: str, size: int, holders: list[str]) -> list[str]:
        self.top_ups.append((digest, list(holders)))
        return [name for name in holders if name in self.reachable] + ["r3"]


def keeping_upload(
    chunks: KeepingChunks | None = None,
) -> tuple[ChunkedUpload, KeepingChunks, FakeRecords]:
    """An upload over chunks that keep their bytes, cutting CHUNK-byte chunks."""
    chunks = chunks or KeepingChunks()
    records = FakeRecords()
    up = ChunkedUpload(cast(ChunkClient, chunks), cast(RecordClient, records), CHUNK, 4)
    return up, chunks, records


def resumed(state: bytes, chunks: KeepingChunks) -> tuple[ChunkedUpload, FakeRecords]:
    """The upload a saved state describes, over the same chunks."""
    records = FakeRecords()
    d = ensureDeferred(
        resume_upload(
            cast(ChunkClient, chunks),
            cast(RecordClient, records),
            CHUNK,
            4,
            None,
            UploadState.decode(state),
        )
    )
    return success(d), records


BLOB = bytes((n * 13) % 256 for n in range(450))


def test_checkpoint_stores_the_partial_chunk_and_describes_the_upload() -> None:
    """A checkpoint puts the partial last chunk and names every chunk so far."""
    up, chunks, _ = keeping_upload()
    up.write(BLOB[:250])

    state = UploadState.decode(success(ensureDeferred(up.checkpoint())))

    assert [ref.size for ref in state.chunks] == [100, 100]
    assert state.tail == ChunkRef(sha256_digest(BLOB[200:250]), 50)
    assert chunks.kept[state.tail.digest] == BLOB[200:250]
    assert state.size == 250
    assert state.hash is not None and state.hash.length == 250


def test_checkpoint_twice_puts_the_tail_once() -> None:
    """With no byte written between two checkpoints, the tail is not put again."""
    up, chunks, _ = keeping_upload()
    up.write(BLOB[:150])
    success(ensureDeferred(up.checkpoint()))
    puts = len(chunks.puts)

    success(ensureDeferred(up.checkpoint()))

    assert len(chunks.puts) == puts


def test_checkpoint_puts_the_tail_while_earlier_chunks_are_in_flight() -> None:
    """The partial last chunk's put starts at once, beside the chunks still being
    stored, and the checkpoint waits for all of them."""
    up, chunks, _ = upload(window=4)
    up.write(BLOB[:250])

    saved = ensureDeferred(up.checkpoint())

    assert [data for _, data, _ in chunks.puts] == [
        BLOB[:100],
        BLOB[100:200],
        BLOB[200:250],
    ]
    chunks.puts[2][2].callback(None)
    chunks.puts[0][2].callback(None)
    assert not saved.called
    chunks.puts[1][2].callback(None)
    state = UploadState.decode(success(saved))
    assert state.tail == ChunkRef(sha256_digest(BLOB[200:250]), 50)


def test_checkpoint_after_a_failed_put_cancels_the_tail_put() -> None:
    """A chunk that could not be stored fails the checkpoint, and the tail's put
    begun beside it is cancelled rather than left behind."""
    up, chunks, _ = upload(window=4)
    up.write(BLOB[:150])

    saved = ensureDeferred(up.checkpoint())
    chunks.puts[0][2].errback(UploadFailed("on 0 relays, 1 needed"))

    assert isinstance(failure(saved).value, UploadFailed)
    assert chunks.cancelled == [sha256_digest(BLOB[100:150])]


def test_finish_after_a_checkpoint_reuses_the_stored_tail() -> None:
    """The last chunk a checkpoint already stored is not put again at finish,
    and the recipe lists it with its check like every other chunk."""
    up, chunks, records = keeping_upload()
    up.write(BLOB)
    success(ensureDeferred(up.checkpoint()))
    puts = len(chunks.puts)

    assert success(ensureDeferred(up.finish(sha256_digest(BLOB)))) == len(BLOB)

    assert len(chunks.puts) == puts
    stored = records.values[recipe_key(sha256_digest(BLOB))]
    assert stored is not None
    assert Recipe.decode(stored) == recipe_of(BLOB, [100] * 4 + [50])


@pytest.mark.parametrize("keep_hash", [True, False], ids=["restored", "rehashed"])
def test_resumed_upload_goes_on_to_the_same_blob(keep_hash: bool) -> None:
    """An upload saved part way and taken up elsewhere ends with the same recipe,
    whether its hash is restored or computed again from its chunks."""
    up, chunks, _ = keeping_upload()
    up.write(BLOB[:270])
    state = success(ensureDeferred(up.checkpoint()))
    if not keep_hash:
        document = json.loads(state)
        document["hash"] = None
        state = json.dumps(document).encode()
    gets = len(chunks.gets)

    again, records = resumed(state, chunks)
    again.write(BLOB[270:])
    finished = ensureDeferred(again.finish(sha256_digest(BLOB)))

    assert success(finished) == len(BLOB)
    assert again.size == len(BLOB)
    stored = records.values[recipe_key(sha256_digest(BLOB))]
    assert stored is not None
    assert Recipe.decode(stored) == recipe_of(BLOB, [100] * 4 + [50])
    # The tail is always fetched back; the chunks only when hashing again.
    assert len(chunks.gets) - gets == (1 if keep_hash else 3)


def test_resumed_upload_refuses_the_wrong_digest() -> None:
    """A resumed upload still checks the whole blob's digest."""
    up, chunks, _ = keeping_upload()
    up.write(BLOB[:120])
    again, records = resumed(success(ensureDeferred(up.checkpoint())), chunks)
    again.write(b"not the rest")

    finished = ensureDeferred(again.finish(sha256_digest(BLOB)))

    assert isinstance(failure(finished).value, DigestMismatch)
    assert records.values == {}


def test_upload_state_round_trips_and_refuses_what_does_not_add_up() -> None:
    """A state encodes and decodes to itself; one whose sizes disagree is refused."""
    state = UploadState(
        "sha256",
        150,
        (ChunkRef("sha256:" + "a" * 64, 100),),
        ChunkRef("sha256:" + "b" * 64, 50),
        None,
    )

    assert UploadState.decode(state.encode()) == state
    document = json.loads(state.encode())
    document["size"] = 151
    with pytest.raises(ValueError, match="does not add up"):
        UploadState.decode(json.dumps(document).encode())
    for broken in (b"[]", b'{"version": 1}', b'{"version": 9}'):
        with pytest.raises(ValueError):
            UploadState.decode(broken)


# Copies topped up before the recipe is written.


def test_chunk_that_lost_a_holder_is_topped_up_before_the_recipe() -> None:
    """A relay that took chunks and then went away has them copied again before
    finish writes the recipe."""
    up, chunks, records = keeping_upload()
    up.write(BLOB[:200])
    chunks.reachable.discard("r2")

    finished = ensureDeferred(up.finish(sha256_digest(BLOB[:200])))

    assert success(finished) == 200
    assert [digest for digest, _ in chunks.top_ups] == [
        sha256_digest(BLOB[:100]),
        sha256_digest(BLOB[100:200]),
    ]
    assert all(holders == ["r1", "r2"] for _, holders in chunks.top_ups)
    assert recipe_key(sha256_digest(BLOB[:200])) in records.values


def test_chunks_on_enough_relays_are_not_topped_up() -> None:
    """With every holder reachable, finish copies nothing again."""
    up, chunks, _ = keeping_upload()
    up.write(BLOB[:200])

    success(ensureDeferred(up.finish(sha256_digest(BLOB[:200]))))

    assert chunks.top_ups == []


def test_a_download_keeps_a_few_chunks_per_relay_within_the_window() -> None:
    """The window of a download grows with the relays it can reach, a few chunks
    each, up to the window; with none reachable it still asks one at a time."""
    assert download_window(8, 3, 1) == 3
    assert download_window(8, 3, 2) == 6
    assert download_window(8, 3, 3) == 8
    assert download_window(8, 3, 0) == 3
    assert download_window(2, 3, 1) == 2
