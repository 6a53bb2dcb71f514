"""Upload sessions: the blob uploads in progress, known by the id a client was given.

A session lives from ``POST .../blobs/uploads/`` until the closing ``PUT``, a
``DELETE``, or expiry after it has been idle too long. The table caps how many exist
at once, so a client cannot hold an unbounded number of half-written uploads.

A session is *busy* while a request is writing its body into it: it is never expired
then, and a second request may not write into it at the same time (its bytes would
interleave with the first's).
"""

from uuid import uuid4

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger

from treescale.registry.errors import (
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    TOO_MANY_REQUESTS,
    ApiError,
)
from treescale.store.digests import ALGORITHM
from treescale.store.interface import BlobUpload, Storage

# Shortcoming: sessions live in this registry process only. A registry restart, or
# a client whose next request reaches another registry node, loses the upload in
# progress: the running hash of the bytes received so far cannot be moved to
# another process, so the client must start the upload again.


class UploadSession:
    """One blob upload in progress: its repository, its bytes so far, its last use.

    It is also the sink a request streams its body into, so every write counts as
    activity.
    """

    def __init__(
        self, uuid: str, repo: str, upload: BlobUpload, clock: IReactorTime
    ) -> None:
        self.uuid = uuid
        self.repo = repo
        self.upload = upload
        self.busy = False
        self.expiry: IDelayedCall | None = None
        self._clock = clock
        self.started = clock.seconds()
        self.last_activity = self.started

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

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session: UploadSession) -> bool:
        return self._sessions.get(session.uuid) is session

    def open(self, repo: str, algorithm: str = ALGORITHM) -> UploadSession:
        """Start a session for an upload into `repo`, hashed by `algorithm`."""
        if len(self._sessions) >= self._max_sessions:
            raise ApiError(
                TOO_MANY_REQUESTS,
                {"max_upload_sessions": self._max_sessions},
                message="too many uploads in progress; retry later",
            )

        session = UploadSession(
            str(uuid4()), repo, self._storage.blob_upload(algorithm), self._clock
        )
        self._sessions[session.uuid] = session
        self._schedule_expiry(session, self._idle_timeout)
        return session

    def get(self, uuid: str, repo: str) -> UploadSession:
        """The session `uuid` of `repo`; a session of another repository is unknown."""
        session = self._sessions.get(uuid)
        if session is None or session.repo != repo:
            raise ApiError(BLOB_UPLOAD_UNKNOWN, {"uuid": uuid})

        return session

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

        if session.expiry is not None and session.expiry.active():
            session.expiry.cancel()
        session.expiry = None

    def cancel(self, session: UploadSession) -> None:
        """Give the session's upload up and forget the session."""
        self.end(session)
        session.upload.abort()

    def cancel_all(self) -> None:
        """Give every upload in progress up, as the registry stops."""
        for session in list(self._sessions.values()):
            self.cancel(session)

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
