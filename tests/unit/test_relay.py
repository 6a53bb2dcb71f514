"""Tests of a relay's answers to bus events, against a real chunk store on disk.

Disk work runs through `deferToThreadPool` as in production, with `InlinePool` and
`InlineReactor` (see `bustest`): the pool runs each call at once on the test's thread
and the reactor hands the result straight back, so every handler finishes before the
test looks at it, with no thread and no reactor running.
"""

import hashlib
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.python.failure import Failure

from tests.unit.bustest import (
    BusTree,
    InlinePool,
    failure,
    inline_reactor,
    success,
)
from treescale.bus.frames import PIECE_SIZE, Kind
from treescale.bus.node import HandlerError, Message, RemoteError
from treescale.store.chunks import ChunkStore
from treescale.store.relay import Relay

DATA = b"a chunk that a relay keeps " * 40
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
MAX_CHUNK = 4096


@pytest.fixture
def pool() -> InlinePool:
    """The relay's thread pool, run inline."""
    return InlinePool()


@pytest.fixture
def relay(tmp_path: Path, pool: InlinePool) -> Relay:
    """A relay on node "a" of the test tree, keeping its files under tmp_path."""
    tree = BusTree()
    return Relay(tree["a"], tmp_path, inline_reactor(), pool, MAX_CHUNK)


def answer(relay: Relay, kind: Kind, meta: dict[str, Any], data: bytes = b"") -> Any:
    """Run the relay's handler for one request; its reply, or its HandlerError."""
    handler = relay.bus.handlers[kind]

    async def handle() -> Message:
        return await handler(Message(kind, "root", meta, data))

    d = ensureDeferred(handle())
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "the handler did not finish"
    return outcome[0].value if isinstance(outcome[0], Failure) else outcome[0]


def chunk_files(root: Path) -> list[Path]:
    """Every chunk file stored under a relay's root."""
    return [path for path in (root / "chunks").rglob("*") if path.is_file()]


def test_relay_binds_its_handlers(tmp_path: Path) -> None:
    """A relay answers the chunk and record events on its bus node."""
    tree = BusTree()

    Relay(tree["b"], tmp_path, inline_reactor(), InlinePool(), MAX_CHUNK)

    assert set(tree["b"].handlers) == {
        Kind.CHUNK_PUT,
        Kind.CHUNK_GET,
        Kind.CHUNK_HAS,
        Kind.RECORD_GET,
        Kind.RECORD_PUT,
        Kind.RECORD_LIST,
        Kind.RECORD_PURGE,
        Kind.CHUNK_AGES,
        Kind.CHUNK_SWEEP,
    }


def test_put_stores_the_chunk(relay: Relay, tmp_path: Path, pool: InlinePool) -> None:
    """A chunk whose bytes match its digest is stored, through the thread pool."""
    reply = answer(relay, Kind.CHUNK_PUT, {"digest": DIGEST, "size": len(DATA)}, DATA)

    assert isinstance(reply, Message)
    assert reply.meta == {"stored": True}
    assert ChunkStore(tmp_path).read(DIGEST) == DATA
    assert pool.ran == 1


def test_put_twice_is_harmless(relay: Relay, tmp_path: Path) -> None:
    """Putting a chunk the relay already holds succeeds and keeps one copy."""
    meta = {"digest": DIGEST, "size": len(DATA)}

    answer(relay, Kind.CHUNK_PUT, meta, DATA)
    reply = answer(relay, Kind.CHUNK_PUT, meta, DATA)

    assert reply.meta == {"stored": True}
    assert len(chunk_files(tmp_path)) == 1


@pytest.mark.parametrize(
    ("meta", "data", "code"),
    [
        ({"digest": DIGEST, "size": len(DATA) + 1}, DATA, "bad_request"),
        ({"digest": DIGEST, "size": str(len(DATA))}, DATA, "bad_request"),
        ({"digest": DIGEST}, DATA, "bad_request"),
        ({"size": len(DATA)}, DATA, "bad_request"),
        ({"digest": "sha256:../../etc/passwd", "size": len(DATA)}, DATA, "bad_request"),
        ({"digest": DIGEST, "size": len(DATA)}, DATA[:-1] + b"?", "digest_mismatch"),
        ({"digest": DIGEST, "size": len(DATA) - 1}, DATA[:-1], "digest_mismatch"),
        (
            {
                "digest": "sha256:" + hashlib.sha256(bytes(5000)).hexdigest(),
                "size": 5000,
            },
            bytes(5000),
            "too_large",
        ),
    ],
    ids=[
        "size mismatch",
        "size not an int",
        "no size",
        "no digest",
        "digest not hex",
        "same size, wrong bytes",
        "bytes of another digest",
        "over max chunk",
    ],
)
def test_put_refuses_bad_chunks(
    relay: Relay, tmp_path: Path, meta: dict[str, Any], data: bytes, code: str
) -> None:
    """A put whose size, digest or bytes are wrong is refused and stores nothing."""
    error = answer(relay, Kind.CHUNK_PUT, meta, data)

    assert isinstance(error, HandlerError)
    assert error.code == code
    assert chunk_files(tmp_path) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_get_returns_the_verified_bytes(
    relay: Relay, tmp_path: Path, pool: InlinePool
) -> None:
    """A get of a stored chunk answers with its bytes and size, read in the pool."""
    answer(relay, Kind.CHUNK_PUT, {"digest": DIGEST, "size": len(DATA)}, DATA)

    reply = answer(relay, Kind.CHUNK_GET, {"digest": DIGEST})

    assert reply.pieces == (DATA,)
    assert reply.meta == {"size": len(DATA)}
    assert pool.ran == 2


def test_get_answers_in_the_pieces_the_bus_sends(relay: Relay) -> None:
    """A chunk larger than a piece of bus data is read and answered as pieces of
    at most PIECE_SIZE bytes, each its own buffer, that make up the chunk."""
    data = bytes(range(256)) * (PIECE_SIZE // 256 * 2 + 3)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    # Larger than the relay takes in a put here: stored straight into its store.
    writer = relay.chunks.open_writer(digest, len(data))
    writer.write(data)
    writer.commit()

    reply = answer(relay, Kind.CHUNK_GET, {"digest": digest})

    assert [len(piece) for piece in reply.pieces] == [PIECE_SIZE, PIECE_SIZE, 768]
    assert b"".join(reply.pieces) == data
    assert reply.data == b""
    assert reply.meta == {"size": len(data)}


def test_get_of_a_missing_chunk(relay: Relay) -> None:
    """A get of a chunk the relay does not hold answers 'chunk_missing'."""
    error = answer(relay, Kind.CHUNK_GET, {"digest": DIGEST})

    assert isinstance(error, HandlerError)
    assert error.code == "chunk_missing"


@pytest.mark.parametrize("meta", [{}, {"digest": 5}, {"digest": "md5:abc"}])
def test_get_with_a_bad_digest(relay: Relay, meta: dict[str, Any]) -> None:
    """A get without a well-formed digest answers 'bad_request'."""
    error = answer(relay, Kind.CHUNK_GET, meta)

    assert isinstance(error, HandlerError)
    assert error.code == "bad_request"


def test_rotten_copy_is_sent_as_stored_and_a_put_replaces_it(
    relay: Relay, tmp_path: Path
) -> None:
    """A chunk-get sends the bytes as stored, unhashed (the requester verifies
    them, and puts the good bytes back); that repair put sets the rotten copy
    aside in quarantine and replaces it."""
    meta = {"digest": DIGEST, "size": len(DATA)}
    answer(relay, Kind.CHUNK_PUT, meta, DATA)
    [path] = chunk_files(tmp_path)
    path.write_bytes(DATA[:-1] + b"#")

    rotten = answer(relay, Kind.CHUNK_GET, {"digest": DIGEST})
    answer(relay, Kind.CHUNK_PUT, {**meta, "repair": True}, DATA)
    repaired = answer(relay, Kind.CHUNK_GET, {"digest": DIGEST})

    assert b"".join(rotten.pieces) == DATA[:-1] + b"#"
    assert b"".join(repaired.pieces) == DATA
    assert ChunkStore(tmp_path).read(DIGEST) == DATA
    [aside] = (tmp_path / "quarantine").iterdir()
    assert aside.read_bytes() == DATA[:-1] + b"#"


def test_repair_put_keeps_a_sound_copy_where_it_is(
    relay: Relay, tmp_path: Path
) -> None:
    """A repair put of a chunk whose copy here is sound sets nothing aside."""
    meta = {"digest": DIGEST, "size": len(DATA)}
    answer(relay, Kind.CHUNK_PUT, meta, DATA)

    answer(relay, Kind.CHUNK_PUT, {**meta, "repair": True}, DATA)

    assert list((tmp_path / "quarantine").iterdir()) == []
    assert ChunkStore(tmp_path).read(DIGEST) == DATA


def test_has_reports_presence_and_size(relay: Relay) -> None:
    """CHUNK_HAS says whether the chunk is here and its size, reading no bytes."""
    before = answer(relay, Kind.CHUNK_HAS, {"digest": DIGEST})
    answer(relay, Kind.CHUNK_PUT, {"digest": DIGEST, "size": len(DATA)}, DATA)
    after = answer(relay, Kind.CHUNK_HAS, {"digest": DIGEST})

    assert before.meta == {"has": False, "size": None}
    assert after.meta == {"has": True, "size": len(DATA)}


def test_has_with_a_bad_digest(relay: Relay) -> None:
    """CHUNK_HAS of something that is not a digest answers 'bad_request'."""
    error = answer(relay, Kind.CHUNK_HAS, {"digest": "sha256:zz"})

    assert isinstance(error, HandlerError)
    assert error.code == "bad_request"


def test_records_are_served_from_the_relay_folder(relay: Relay, tmp_path: Path) -> None:
    """RECORD_PUT and RECORD_GET use the relay's record files."""
    meta = {"key": "tag/x", "version": [5, 0, 1], "deleted": False}

    kept = answer(relay, Kind.RECORD_PUT, meta, b"value")
    reply = answer(relay, Kind.RECORD_GET, {"key": "tag/x"})

    assert kept.meta == {"kept": True}
    assert reply.data == b"value"
    assert (tmp_path / "records").is_dir()


def test_errors_reach_the_requester_over_the_bus(tmp_path: Path) -> None:
    """A relay's refusal travels back over the bus as a RemoteError with its code."""
    tree = BusTree().connect_all()
    Relay(tree["a1"], tmp_path, inline_reactor(), InlinePool(), MAX_CHUNK)

    bad = tree["root"].request(
        "a1", Kind.CHUNK_PUT, {"digest": DIGEST, "size": 3}, b"abc"
    )
    good = tree["root"].request(
        "a1", Kind.CHUNK_PUT, {"digest": DIGEST, "size": len(DATA)}, DATA
    )
    tree.flush()

    error = failure(bad).value
    assert isinstance(error, RemoteError)
    assert error.code == "digest_mismatch"
    assert success(good).meta == {"stored": True}
