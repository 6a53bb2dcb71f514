"""Upload sessions: the blob uploads in progress, known by the id a client was given.

A session lives from ``POST .../blobs/uploads/`` until the closing ``PUT``, a
``DELETE``, or expiry after it has been idle too long. The table caps how many exist
at once, so clients cannot hold an unbounded number of half-written uploads, and
may cap how many one client (by its peer address) holds, so that one client cannot
take the whole table from the others.

A session is *busy* while a request is writing its body into it: it is never expired
then, and a second request may not write into it at the same time (its bytes would
interleave with the first's).

Over a store that can save uploads (`ResumableStorage`), every session is also kept
in the cluster's records (see `treescale.registry.saved_uploads`), so a session this
node does not hold (it restarted, or the client's last request went to another node)
is restored on first use. `get` must answer at once, so it hands out the session
while its upload is still being fetched back: writes wait, and what cannot wait (its
size, for a status or a ``Content-Range`` check) answers 503 for the moment.
"""

from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from treescale.registry.errors import (
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    TOO_MANY_REQUESTS,
    ApiError,
)
from treescale.registry.saved_uploads import (
    MAX_SESSION_RECORD,
    SavedUpload,
    SessionRecord,
    algorithm_of_id,
    new_upload_id,
    session_key,
)
from treescale.store.digests import ALGORITHM
from treescale.store.errors import StorageError, StorageUnavailable
from treescale.store.interface import BlobUpload, ResumableStorage, Storage

MAX_RESTORING = 64
"""Sessions being restored from their records at once; past it a request for a
session this node does not hold is answered 503, so guessed ids cost little."""

# Shortcoming: a session held in memory by two registry nodes (the client went from
# one to the other and back) is not kept in step: the node it comes back to still has
# the older state, and the upload then fails its digest at the closing PUT, so the
# client must start it again. Nothing wrong is ever stored.


class UploadSession:
    """One blob upload in progress: its repository, its bytes so far, its last use.

    It is also the sink a request streams its body into, so every write counts as
    activity.
    """

    def __init__(
        self,
        uuid: str,
        repo: str,
        upload: BlobUpload,
        clock: IReactorTime,
        started: float | None = None,
    ) -> None:
        self.uuid = uuid
        self.repo = repo
        self.upload = upload
        self.busy = False
        self.client: str | None = None
        self.expiry: IDelayedCall | None = None
        self._clock = clock
        self.started = clock.seconds() if started is None else started
        self.last_activity = clock.seconds()

    @property
    def size(self) -> int:
        """Bytes accepted so far."""
        return self.upload.size

    @property
    def location(self) -> str:
        """The URL path a client continues this upload at."""
        return f"/v2/{self.repo}/blobs/uploads/{self.uuid}"

    def touch(self) -> None:
        """Note that the session is in use now."""
        self.last_activity = self._clock.seconds()

    def write(self, data: bytes) -> None:
        """Add bytes of the blob; raises `UploadFailed` once a chunk put failed."""
        self.upload.write(data)
        self.touch()

    def register_producer(self, producer: IPushProducer) -> None:
        """Let the upload pause `producer` while its window is full."""
        self.upload.register_producer(producer)

    def unregister_producer(self) -> None:
        """The request feeding the upload has ended."""
        self.upload.unregister_producer()


# Shortcoming: a session held here is not checked against its record again, so
# an upload whose requests alternate between two live registry nodes (a load
# balancer without sticky sessions) splits in two: each node goes on from its
# own copy, and the closing digest check refuses the blob (nothing wrong is
# stored). Fixing it means reading the record (and waiting for this node's own
# last write of it) before each request takes a session held in memory.
class UploadSessions:
    """The table of sessions in progress, with its cap and its idle expiry."""

    log = Logger()

    def __init__(
        self,
        storage: Storage,
        clock: IReactorTime,
        max_sessions: int,
        idle_timeout: float,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._max_sessions = max_sessions
        self._idle_timeout = idle_timeout
        self._sessions: dict[str, UploadSession] = {}
        self._resumable = storage if isinstance(storage, ResumableStorage) else None
        self._restoring = 0
        self._per_client: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session: UploadSession) -> bool:
        return self._sessions.get(session.uuid) is session

    def open(
        self,
        repo: str,
        algorithm: str = ALGORITHM,
        client: str | None = None,
        client_cap: int | None = None,
    ) -> UploadSession:
        """Start a session for an upload into `repo`, hashed by `algorithm`.

        A session opened for `client` counts against that client until it ends;
        past `client_cap` of them the client is refused, whatever room is left.
        """
        self._check_room()
        self._check_client_room(client, client_cap)
        uuid = new_upload_id(algorithm)
        upload = self._storage.blob_upload(algorithm)
        if self._resumable is None:
            session = UploadSession(uuid, repo, upload, self._clock)
        else:
            session, saved = self._saved_session(uuid, repo, algorithm)
            saved.take_up(upload)
            self._write_record(session, None)

        self._sessions[session.uuid] = session
        self._count_client(session, client)
        self._schedule_expiry(session, self._idle_timeout)
        return session

    def held_by(self, client: str) -> int:
        """How many sessions `client` holds open."""
        return self._per_client.get(client, 0)

    def get(self, uuid: str, repo: str) -> UploadSession:
        """The session `uuid` of `repo`; a session of another repository is unknown.

        A session this node does not hold is restored from its record, if the store
        can do that: it is returned at once, while its upload is fetched back.
        """
        session = self._sessions.get(uuid)
        if session is None:
            session = self._restore(uuid, repo)
        if session.repo != repo:
            raise ApiError(BLOB_UPLOAD_UNKNOWN, {"uuid": uuid})

        return session

    async def ready(self, session: UploadSession) -> None:
        """Wait until `session`'s upload is back, if it is being restored; raises
        what made the restore fail.

        A handler that must read the size at once (an upload status) may await
        this first, instead of answering 503 while the restore goes on.
        """
        upload = session.upload
        if isinstance(upload, SavedUpload):
            await upload.ready()

    def _check_room(self) -> None:
        """Refuse a new session once the table is full."""
        if len(self._sessions) >= self._max_sessions:
            raise ApiError(
                TOO_MANY_REQUESTS,
                {"max_upload_sessions": self._max_sessions},
                message="too many uploads in progress; retry later",
            )

    def _check_client_room(self, client: str | None, cap: int | None) -> None:
        """Refuse a new session to a client that holds its share already."""
        if client is None or cap is None or self.held_by(client) < cap:
            return
        self.log.info(
            "refused an upload session to {client}, which holds {held}",
            client=client,
            held=self.held_by(client),
        )
        raise ApiError(
            TOO_MANY_REQUESTS,
            {"max_upload_sessions_per_client": cap},
            message="this client has too many uploads in progress; retry later",
        )

    def _count_client(self, session: UploadSession, client: str | None) -> None:
        """Count `session` against `client` until it ends."""
        if client is None:
            return
        session.client = client
        self._per_client[client] = self.held_by(client) + 1

    def _uncount_client(self, session: UploadSession) -> None:
        """An ended session no longer counts against its client."""
        client, session.client = session.client, None
        if client is None:
            return
        left = self.held_by(client) - 1
        if left > 0:
            self._per_client[client] = left
        else:
            self._per_client.pop(client, None)

    # Sessions kept in records.

    def _saved_session(
        self, uuid: str, repo: str, algorithm: str
    ) -> tuple[UploadSession, SavedUpload]:
        """A session whose upload saves itself in the session's record."""
        holder: list[UploadSession] = []

        async def save(state: bytes) -> None:
            await self._save_record(holder[0], state)

        def forget() -> None:
            self._delete_record(uuid)

        upload = SavedUpload(algorithm, save, forget)
        session = UploadSession(uuid, repo, upload, self._clock)
        holder.append(session)
        return session, upload

    def _restore(self, uuid: str, repo: str) -> UploadSession:
        """A session for `uuid` whose upload is being restored from its record."""
        algorithm = algorithm_of_id(uuid)
        if self._resumable is None or algorithm is None:
            raise ApiError(BLOB_UPLOAD_UNKNOWN, {"uuid": uuid})
        if self._restoring >= MAX_RESTORING:
            raise StorageUnavailable("too many upload sessions are being restored")
        self._check_room()

        session, saved = self._saved_session(uuid, repo, algorithm)
        self._sessions[uuid] = session
        self._schedule_expiry(session, self._idle_timeout)
        self._restoring += 1
        restoring = ensureDeferred(self._take_up(session, saved, self._resumable))
        restoring.addErrback(self._restore_failed, session, saved)
        restoring.addBoth(self._restore_ended)
        return session

    async def _take_up(
        self, session: UploadSession, saved: SavedUpload, storage: ResumableStorage
    ) -> None:
        """Read the session's record and bring its upload back."""
        raw = await self._storage.record_get(session_key(session.uuid))
        record = None if raw is None else SessionRecord.decode(raw)
        idle = None if record is None else self._clock.seconds() - record.last_activity
        if record is None or record.repo != session.repo:
            raise ApiError(BLOB_UPLOAD_UNKNOWN, {"uuid": session.uuid})
        if idle is not None and idle > self._idle_timeout:
            self._delete_record(session.uuid)
            raise ApiError(BLOB_UPLOAD_UNKNOWN, {"uuid": session.uuid})

        if record.upload is None:
            upload = self._storage.blob_upload(record.algorithm)
        else:
            upload = await storage.blob_resume(record.upload)
        session.started = record.started
        saved.take_up(upload)
        self.log.info(
            "upload session {uuid} of {repo} restored from its record "
            "with {nbytes} bytes",
            uuid=session.uuid,
            repo=session.repo,
            nbytes=upload.size,
        )

    def _restore_failed(
        self, failure: Failure, session: UploadSession, saved: SavedUpload
    ) -> None:
        """Forget a session that could not be restored; its users see why."""
        error = failure.value
        reason: Exception
        if isinstance(error, ApiError | StorageError):
            reason = error
        elif isinstance(error, ValueError):
            self.log.error(
                "upload session {uuid} has a damaged record: {why}",
                uuid=session.uuid,
                why=str(error),
            )
            reason = ApiError(BLOB_UPLOAD_UNKNOWN, {"uuid": session.uuid})
        else:
            self.log.failure(
                "restoring upload session {uuid}", failure, uuid=session.uuid
            )
            reason = StorageUnavailable("the upload session could not be restored")
        self.end(session)
        saved.fail(reason)

    def _restore_ended(self, _: object) -> None:
        self._restoring -= 1

    def _write_record(self, session: UploadSession, state: bytes | None) -> None:
        """Write the session's record in the background; a failure is logged."""
        written = ensureDeferred(self._save_record(session, state))
        written.addErrback(self._write_failed, session.uuid)

    async def _save_record(self, session: UploadSession, state: bytes | None) -> None:
        """Write the session's record with `state`; too large, delete it instead."""
        record = SessionRecord(
            session.uuid,
            session.repo,
            session.upload.algorithm,
            session.started,
            self._clock.seconds(),
            state,
        )
        data = record.encode()
        if len(data) > MAX_SESSION_RECORD:
            self.log.warn(
                "upload session {uuid} has grown past what its record holds; "
                "it can no longer be resumed elsewhere",
                uuid=session.uuid,
            )
            await self._storage.record_put(session_key(session.uuid), None)
            return
        await self._storage.record_put(session_key(session.uuid), data)

    def _delete_record(self, uuid: str) -> None:
        """Delete a session's record in the background."""
        deleted = ensureDeferred(self._storage.record_put(session_key(uuid), None))
        deleted.addErrback(self._write_failed, uuid)

    def _write_failed(self, failure: Failure, uuid: str) -> None:
        self.log.warn(
            "record of upload session {uuid} not written: {why}",
            uuid=uuid,
            why=failure.getErrorMessage(),
        )

    def claim(self, session: UploadSession) -> None:
        """Mark the session busy for one request, or refuse if another has it."""
        if session.busy:
            raise ApiError(
                BLOB_UPLOAD_INVALID,
                {"uuid": session.uuid},
                message="another request is using this upload",
            )

        session.busy = True
        session.touch()

    def release(self, session: UploadSession) -> None:
        """The request that claimed the session has ended."""
        session.busy = False
        session.touch()

    def end(self, session: UploadSession) -> None:
        """Forget a session whose upload was finished or given up by the caller."""
        if self._sessions.get(session.uuid) is session:
            del self._sessions[session.uuid]
            self._uncount_client(session)

        if session.expiry is not None and session.expiry.active():
            session.expiry.cancel()
        session.expiry = None

    def cancel(self, session: UploadSession) -> None:
        """Give the session's upload up and forget the session."""
        self.end(session)
        session.upload.abort()

    def cancel_all(self) -> None:
        """Give every upload in progress up, as the registry stops.

        Sessions kept in records stay there, for this node once restarted or any
        other to go on with.
        """
        for session in list(self._sessions.values()):
            self.end(session)
            upload = session.upload
            if isinstance(upload, SavedUpload):
                upload.release()
            else:
                upload.abort()

    def _schedule_expiry(self, session: UploadSession, delay: float) -> None:
        """Look at the session again after `delay` seconds."""
        session.expiry = self._clock.callLater(delay, self._expire, session)

    def _expire(self, session: UploadSession) -> None:
        """Cancel the session if it has been idle long enough, else look again later."""
        session.expiry = None
        if session not in self:
            return

        idle = self._clock.seconds() - session.last_activity
        if session.busy or idle < self._idle_timeout:
            delay = self._idle_timeout if session.busy else self._idle_timeout - idle
            self._schedule_expiry(session, delay)
            return

        self.log.info(
            "upload session {uuid} of {repo} expired after {idle} s idle "
            "with {nbytes} bytes",
            uuid=session.uuid,
            repo=session.repo,
            idle=idle,
            nbytes=session.size,
        )
        self.cancel(session)
