"""Tests of upload sessions kept in records: saved as they go, restored elsewhere.

Two session tables over one storage stand for two registry nodes, or for one node
before and after a restart. The storage is the in-memory one, taught to save and
resume its uploads (a test double: its saved state holds the bytes themselves,
where the cluster's holds chunk digests).
"""

import base64
import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from zope.interface import implementer

from tests.unit.bustest import failure, success
from tests.unit.memstore import MemoryStorage, MemoryUpload
from treescale.registry.errors import ApiError
from treescale.registry.saved_uploads import (
    SESSION_PREFIX,
    SessionRecord,
    algorithm_of_id,
    new_upload_id,
    session_key,
)
from treescale.registry.uploads import MAX_RESTORING, UploadSessions
from treescale.store.digests import digest_of
from treescale.store.errors import StorageUnavailable

TIMEOUT = 60.0
REPO = "team/app"


class SavingUpload(MemoryUpload):
    """An in-memory upload that can be saved as a state holding its bytes."""

    async def checkpoint(self) -> bytes:
        document = {
            "algorithm": self.algorithm,
            "data": base64.b64encode(bytes(self._data)).decode(),
        }
        return json.dumps(document).encode()


class ResumingStorage(MemoryStorage):
    """Memory storage whose uploads can be saved and resumed; record reads can be
    held by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.hold_records = False
        self.held_records: list[Deferred[None]] = []
        self.resumed = 0

    def blob_upload(self, algorithm: str = "sha256") -> SavingUpload:
        upload = SavingUpload(self, algorithm)
        self.uploads.append(upload)
        return upload

    async def blob_resume(self, state: bytes) -> SavingUpload:
        document = json.loads(state)
        upload = self.blob_upload(document["algorithm"])
        upload.write(base64.b64decode(document["data"]))
        self.resumed += 1
        return upload

    async def record_get(self, key: str) -> bytes | None:
        if self.hold_records:
            gate: Deferred[None] = Deferred()
            self.held_records.append(gate)
            await gate
        return await super().record_get(key)


@implementer(IPushProducer)
class Body:
    """A request body as a producer; says whether it is paused."""

    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def node(storage: MemoryStorage, clock: Clock | None = None) -> UploadSessions:
    """One registry node's session table over the shared storage."""
    return UploadSessions(storage, clock or Clock(), 8, TIMEOUT)


def drain(upload: Any) -> "Deferred[None]":
    return ensureDeferred(upload.drain())


def finish(upload: Any, data: bytes) -> "Deferred[int]":
    return ensureDeferred(upload.finish(digest_of(data, upload.algorithm)))


def code(error: BaseException) -> str:
    assert isinstance(error, ApiError), repr(error)
    return error.error.code


# Records written as a session goes.


def test_opening_a_session_writes_its_record() -> None:
    """A new session's record names its repository and holds no upload yet."""
    storage = ResumingStorage()
    session = node(storage).open(REPO)

    record = SessionRecord.decode(storage.records[session_key(session.uuid)])

    assert (record.uuid, record.repo, record.algorithm) == (
        session.uuid,
        REPO,
        "sha256",
    )
    assert record.upload is None


def test_drain_saves_the_upload_in_the_record() -> None:
    """Once a PATCH's bytes are drained, the record holds the upload's state."""
    storage = ResumingStorage()
    session = node(storage).open(REPO)
    session.write(b"first half ")

    success(drain(session.upload))

    record = SessionRecord.decode(storage.records[session_key(session.uuid)])
    assert record.upload is not None
    assert base64.b64decode(json.loads(record.upload)["data"]) == b"first half "


def test_finish_and_cancel_delete_the_record() -> None:
    """A session closed or cancelled leaves no record behind."""
    storage = ResumingStorage()
    sessions = node(storage)
    closed, cancelled = sessions.open(REPO), sessions.open(REPO)
    closed.write(b"blob")
    sessions.end(closed)

    assert success(finish(closed.upload, b"blob")) == 4
    sessions.cancel(cancelled)

    assert [key for key in storage.records if key.startswith(SESSION_PREFIX)] == []


def test_stopping_the_registry_keeps_the_records() -> None:
    """Sessions given up as the node stops stay in records for its restart."""
    storage = ResumingStorage()
    sessions = node(storage)
    session = sessions.open(REPO)

    sessions.cancel_all()

    assert len(sessions) == 0
    assert session_key(session.uuid) in storage.records


def test_storage_that_cannot_resume_gets_no_records() -> None:
    """Over a store that cannot save uploads, sessions live in memory only."""
    storage = MemoryStorage()
    session = node(storage).open(REPO)
    session.write(b"bytes")
    success(drain(session.upload))

    assert storage.records == {}
    with pytest.raises(ApiError):
        node(storage).get(session.uuid, REPO)


# Restored on another node.


def test_another_node_goes_on_with_the_upload() -> None:
    """A session saved on one node is finished on another with the whole blob."""
    storage = ResumingStorage()
    first = node(storage).open(REPO)
    first.write(b"first half, ")
    success(drain(first.upload))

    second = node(storage).get(first.uuid, REPO)
    second.write(b"second half")
    success(drain(second.upload))

    assert second.size == len(b"first half, second half")
    assert success(finish(second.upload, b"first half, second half")) == 23
    assert storage.blobs[digest_of(b"first half, second half")] == (
        b"first half, second half"
    )
    assert storage.resumed == 1


def test_writes_wait_while_the_session_is_restored() -> None:
    """Until its record is read, a restored session pauses the body, holds what
    arrived, and cannot say its size; then it takes up the held bytes."""
    storage = ResumingStorage()
    first = node(storage).open(REPO)
    first.write(b"abc")
    success(drain(first.upload))
    storage.hold_records = True
    body = Body()

    session = node(storage).get(first.uuid, REPO)
    session.register_producer(body)
    session.write(b"def")

    assert body.paused
    with pytest.raises(StorageUnavailable):
        _ = session.size
    drained = drain(session.upload)
    assert not drained.called

    storage.held_records[0].callback(None)

    success(drained)
    assert not body.paused
    assert session.size == 6
    assert success(finish(session.upload, b"abcdef")) == 6


def test_ready_waits_for_the_restore() -> None:
    """`ready` fires once the session's upload is back, and its size known."""
    storage = ResumingStorage()
    first = node(storage).open(REPO)
    first.write(b"abc")
    success(drain(first.upload))
    storage.hold_records = True
    sessions = node(storage)
    session = sessions.get(first.uuid, REPO)

    ready = ensureDeferred(sessions.ready(session))
    assert not ready.called
    storage.held_records[0].callback(None)

    success(ready)
    assert session.size == 3


def test_algorithm_is_known_before_the_record() -> None:
    """A sha512 session's id names its algorithm, so a closing digest can be
    checked on a node that has not read the record yet."""
    storage = ResumingStorage()
    first = node(storage).open(REPO, "sha512")
    storage.hold_records = True

    session = node(storage).get(first.uuid, REPO)

    assert session.upload.algorithm == "sha512"
    assert algorithm_of_id(first.uuid) == "sha512"
    assert algorithm_of_id(new_upload_id()) == "sha256"


@pytest.mark.parametrize("uuid", ["nope", "../x", "0" * 36])
def test_ids_that_are_not_ours_are_unknown_at_once(uuid: str) -> None:
    """An id of no session this registry could have made is unknown without a
    record read."""
    storage = ResumingStorage()
    storage.hold_records = True

    with pytest.raises(ApiError) as raised:
        node(storage).get(uuid, REPO)

    assert code(raised.value) == "BLOB_UPLOAD_UNKNOWN"
    assert storage.held_records == []


def test_id_without_a_record_is_unknown_once_looked_up() -> None:
    """A well-formed id with no record fails its first use, and is forgotten."""
    storage = ResumingStorage()
    sessions = node(storage)
    session = sessions.get(new_upload_id(), REPO)

    assert code(failure(drain(session.upload)).value) == "BLOB_UPLOAD_UNKNOWN"
    assert session not in sessions
    with pytest.raises(ApiError):
        session.write(b"x")


def test_record_of_another_repository_is_unknown() -> None:
    """A session restored under another repository's name is unknown, and its
    record stays for its own repository."""
    storage = ResumingStorage()
    first = node(storage).open(REPO)

    session = node(storage).get(first.uuid, "other/repo")

    assert code(failure(drain(session.upload)).value) == "BLOB_UPLOAD_UNKNOWN"
    assert session_key(first.uuid) in storage.records


def test_expired_record_is_unknown_and_deleted() -> None:
    """A record idle past the timeout is not restored, and is removed."""
    storage = ResumingStorage()
    clock = Clock()
    first = node(storage, clock).open(REPO)
    clock.advance(TIMEOUT + 1)

    session = node(storage, clock).get(first.uuid, REPO)

    assert code(failure(drain(session.upload)).value) == "BLOB_UPLOAD_UNKNOWN"
    assert session_key(first.uuid) not in storage.records


def test_damaged_record_is_unknown() -> None:
    """A record that does not decode makes the session unknown."""
    storage = ResumingStorage()
    uuid = new_upload_id()
    storage.records[session_key(uuid)] = b"{not json"

    session = node(storage).get(uuid, REPO)

    assert code(failure(drain(session.upload)).value) == "BLOB_UPLOAD_UNKNOWN"


def test_storage_down_while_restoring_is_unavailable_and_retried() -> None:
    """A restore that cannot read the record answers 503; the next use tries
    again."""
    storage = ResumingStorage()
    first = node(storage).open(REPO)
    sessions = node(storage)
    storage.unavailable = True

    session = sessions.get(first.uuid, REPO)

    assert isinstance(failure(drain(session.upload)).value, StorageUnavailable)
    storage.unavailable = False
    again = sessions.get(first.uuid, REPO)
    assert again is not session
    success(drain(again.upload))


def test_cancelling_after_a_failed_restore_keeps_the_record() -> None:
    """A session given up because this node could not restore it keeps its
    record for a later try; one cancelled while restoring loses it."""
    storage = ResumingStorage()
    kept, dropped = node(storage).open(REPO), node(storage).open(REPO)
    sessions = node(storage)
    storage.unavailable = True
    failed = sessions.get(kept.uuid, REPO)
    failure(drain(failed.upload))
    storage.unavailable = False
    storage.hold_records = True
    restoring = sessions.get(dropped.uuid, REPO)

    sessions.cancel(failed)
    sessions.cancel(restoring)
    storage.held_records[0].callback(None)

    assert session_key(kept.uuid) in storage.records
    assert session_key(dropped.uuid) not in storage.records


def test_restores_at_once_are_bounded() -> None:
    """Past `MAX_RESTORING` restores in flight, a lookup is answered 503."""
    storage = ResumingStorage()
    storage.hold_records = True
    sessions = UploadSessions(storage, Clock(), MAX_RESTORING * 2, TIMEOUT)
    for _ in range(MAX_RESTORING):
        sessions.get(new_upload_id(), REPO)

    with pytest.raises(StorageUnavailable):
        sessions.get(new_upload_id(), REPO)
