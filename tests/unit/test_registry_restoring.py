"""Tests of a ranged chunk waiting for its session's restore (`RangeAfterRestore`)."""

from collections.abc import Callable
from typing import cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from treescale.registry.errors import BLOB_UPLOAD_RANGE, BLOB_UPLOAD_UNKNOWN, ApiError
from treescale.registry.held_body import MAX_HELD_BYTES
from treescale.registry.restoring import RangeAfterRestore
from treescale.registry.uploads import UploadSession
from treescale.store.errors import StorageUnavailable, UploadFailed


@implementer(IPushProducer)
class Body:
    """A request body as a producer: its pauses and resumes, in order."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def pauseProducing(self) -> None:
        self.log.append("pause")

    def resumeProducing(self) -> None:
        self.log.append("resume")

    def stopProducing(self) -> None:
        self.log.append("stop")


class Session:
    """What the sink hands a chunk on to: it keeps the bytes and the producer."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.written: list[bytes] = []
        self.producer: IPushProducer | None = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def register_producer(self, producer: IPushProducer) -> None:
        self.producer = producer

    def unregister_producer(self) -> None:
        self.producer = None


def starts_at(first: int) -> Callable[[UploadSession], None]:
    """The range check of a chunk that starts at `first`."""

    def check(session: UploadSession) -> None:
        if session.size != first:
            raise ApiError(BLOB_UPLOAD_RANGE, {"offset": session.size})

    return check


def waiting(first: int) -> tuple[RangeAfterRestore, Session, Body, Deferred[None]]:
    """A sink for a chunk starting at `first`, its body registered, its session's
    restore not yet done (fire the Deferred)."""
    session, body, restore = Session(10), Body(), Deferred()
    sink = RangeAfterRestore(cast(UploadSession, session), restore, starts_at(first))
    sink.register_producer(body)
    return sink, session, body, restore


def test_a_chunk_that_fits_goes_on_once_the_session_is_back() -> None:
    """The body is paused and what came with the headers held; once the session
    is back and the chunk starts where it stands, the held bytes go first, then
    the rest, and the session takes over the body's producer."""
    sink, session, body, restore = waiting(10)
    sink.write(b"held ")
    assert body.log == ["pause"] and session.written == []

    restore.callback(None)
    sink.write(b"then more")

    assert session.written == [b"held ", b"then more"]
    assert body.log == ["pause", "resume"]
    assert session.producer is body
    assert sink.settled.called and sink.error is None


def test_a_chunk_at_the_wrong_offset_is_refused_and_nothing_reaches_the_upload() -> (
    None
):
    """A chunk that does not start where the restored upload stands is refused
    with the check's error; the body goes on (to be dropped) and the upload
    gets none of it."""
    sink, session, body, restore = waiting(11)
    sink.write(b"held")

    restore.callback(None)

    assert isinstance(sink.error, ApiError)
    assert session.written == [] and session.producer is None
    assert body.log == ["pause", "resume"]
    with pytest.raises(ApiError):
        sink.write(b"more")


def test_a_session_that_cannot_be_restored_refuses_the_chunk() -> None:
    """An unknown session (its record missing) or storage out of reach: the
    chunk is refused with that error."""
    for error in (ApiError(BLOB_UPLOAD_UNKNOWN), StorageUnavailable("down")):
        sink, session, body, restore = waiting(10)

        restore.errback(error)

        assert sink.error is error
        assert session.written == [] and body.log == ["pause", "resume"]


def test_held_bytes_are_bounded() -> None:
    """Past `MAX_HELD_BYTES` while the session is restored, the chunk fails."""
    sink, _session, _body, _restore = waiting(10)
    sink.write(b"x" * MAX_HELD_BYTES)

    with pytest.raises(UploadFailed):
        sink.write(b"x")


def test_a_body_ended_before_the_restore_is_let_go() -> None:
    """A body that ends while the session is still restored is resumed (its
    connection is not left paused), and the chunk is decided later."""
    sink, session, body, restore = waiting(10)
    sink.write(b"all of it")
    sink.unregister_producer()
    assert body.log == ["pause", "resume"]

    restore.callback(None)

    assert session.written == [b"all of it"] and session.producer is None
    assert sink.settled.called and sink.error is None
