"""Tests of the upload session table: lookup, cap, claims and idle expiry."""

import pytest
from twisted.internet.task import Clock

from tests.unit.memstore import MemoryStorage
from treescale.registry.errors import ApiError
from treescale.registry.uploads import UploadSessions

TIMEOUT = 60.0


def table(max_sessions: int = 3) -> tuple[UploadSessions, MemoryStorage, Clock]:
    """A session table over memory storage and a fake clock."""
    storage = MemoryStorage()
    clock = Clock()
    return UploadSessions(storage, clock, max_sessions, TIMEOUT), storage, clock


def code_of(raised: pytest.ExceptionInfo[ApiError]) -> tuple[str, int]:
    """The spec code and status of a raised error."""
    return raised.value.error.code, raised.value.status


def test_open_and_get() -> None:
    """A session opened for a repository is found by its id in that repository."""
    sessions, storage, _ = table()
    session = sessions.open("a/b")
    assert sessions.get(session.uuid, "a/b") is session
    assert session.location == f"/v2/a/b/blobs/uploads/{session.uuid}"
    assert session.upload is storage.uploads[0]
    assert len(sessions) == 1


def test_unknown_or_foreign_ids_are_unknown() -> None:
    """An unknown id, or the id of another repository's session, is unknown."""
    sessions, _, _ = table()
    session = sessions.open("a")
    for uuid, repo in [("nope", "a"), (session.uuid, "b")]:
        with pytest.raises(ApiError) as raised:
            sessions.get(uuid, repo)
        assert code_of(raised) == ("BLOB_UPLOAD_UNKNOWN", 404)


def test_cap_on_sessions() -> None:
    """Past the cap a new session is refused with 429 until one ends."""
    sessions, _, _ = table(max_sessions=2)
    first = sessions.open("a")
    sessions.open("a")
    with pytest.raises(ApiError) as raised:
        sessions.open("a")
    assert code_of(raised) == ("TOOMANYREQUESTS", 429)

    sessions.end(first)
    assert sessions.open("a").repo == "a"


def test_claim_is_exclusive() -> None:
    """A busy session cannot be claimed by a second request until released."""
    sessions, _, _ = table()
    session = sessions.open("a")
    sessions.claim(session)
    with pytest.raises(ApiError) as raised:
        sessions.claim(session)
    assert code_of(raised) == ("BLOB_UPLOAD_INVALID", 400)

    sessions.release(session)
    sessions.claim(session)
    assert session.busy


def test_idle_session_expires_and_aborts() -> None:
    """A session idle for the timeout is given up and forgotten."""
    sessions, storage, clock = table()
    session = sessions.open("a")
    clock.advance(TIMEOUT - 1)
    assert session in sessions

    clock.advance(1)
    assert session not in sessions
    assert storage.uploads[0].aborted


def test_activity_postpones_expiry() -> None:
    """Writing to a session restarts its idle time."""
    sessions, _, clock = table()
    session = sessions.open("a")
    clock.advance(TIMEOUT / 2)
    session.write(b"data")
    clock.advance(TIMEOUT / 2 + 1)
    assert session in sessions

    clock.advance(TIMEOUT / 2)
    assert session not in sessions


def test_busy_session_never_expires() -> None:
    """A session a request is writing into outlives the timeout."""
    sessions, _, clock = table()
    session = sessions.open("a")
    sessions.claim(session)
    clock.advance(TIMEOUT * 5)
    assert session in sessions

    sessions.release(session)
    clock.advance(TIMEOUT * 2)
    assert session not in sessions


def test_end_cancels_expiry_without_abort() -> None:
    """An ended session leaves no timer behind and its upload is not aborted."""
    sessions, storage, clock = table()
    session = sessions.open("a")
    sessions.end(session)
    assert clock.getDelayedCalls() == []
    assert not storage.uploads[0].aborted


def test_cancel_all() -> None:
    """Stopping gives every upload up."""
    sessions, storage, clock = table()
    sessions.open("a")
    sessions.open("b")
    sessions.cancel_all()
    assert len(sessions) == 0
    assert all(upload.aborted for upload in storage.uploads)
    assert clock.getDelayedCalls() == []
