"""Upload sessions kept in the cluster's records, so any registry node can go on.

A session's record, ``upload/<id>``, holds its repository, its digest algorithm,
when it was last used and, once a ``PATCH`` has been answered, the saved state of its
upload (`treescale.store.blobs.UploadState`: chunk digests and the running hash, no
blob bytes). It is written when the session opens, again before each ``PATCH`` is
answered, and deleted when the session ends. A node that is asked for a session it
does not hold reads the record and takes the upload up where the last answered
``PATCH`` left it: after a crash mid-``PATCH`` the client is told (or finds by
``GET``) the offset of its last answered request, and sends the rest from there.

`SavedUpload` is the `BlobUpload` a session hands out: it forwards to the store's
upload, saves it when drained, and, for a session being restored, holds writes (and
pauses the body) until the store's upload is back.
"""

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger

from treescale.registry.held_body import HeldBody
from treescale.store.digests import ALGORITHM, ALGORITHMS
from treescale.store.errors import StorageUnavailable, UploadFailed
from treescale.store.interface import BlobUpload, CheckpointedUpload

SESSION_PREFIX = "upload/"
SESSION_RECORD_VERSION = 1
MAX_SESSION_RECORD = 512 * 1024
"""The largest session record written; an upload of more chunks than fit is not
saved any more (its old record is deleted) and cannot survive a restart."""

_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    r"(?:-(?P<algorithm>[a-z0-9]+))?"
)


def session_key(uuid: str) -> str:
    """The record of session `uuid`."""
    return f"{SESSION_PREFIX}{uuid}"


def new_upload_id(algorithm: str = ALGORITHM) -> str:
    """A new session id; it names its digest algorithm unless that is sha256.

    A node that has yet to restore a session can then check a closing digest's
    algorithm without waiting for the record.
    """
    uuid = str(uuid4())
    return uuid if algorithm == ALGORITHM else f"{uuid}-{algorithm}"


def algorithm_of_id(uuid: str) -> str | None:
    """The digest algorithm a session id names; None when it is not one of ours."""
    match = _ID.fullmatch(uuid)
    if match is None:
        return None
    algorithm = match.group("algorithm") or ALGORITHM
    return algorithm if algorithm in ALGORITHMS and algorithm != "" else None


@dataclass(frozen=True)
class SessionRecord:
    """One session as its record holds it."""

    uuid: str
    repo: str
    algorithm: str
    started: float
    last_activity: float
    upload: bytes | None
    """The saved upload state, or None while no byte has been saved."""

    def encode(self) -> bytes:
        document: dict[str, Any] = {
            "version": SESSION_RECORD_VERSION,
            "uuid": self.uuid,
            "repo": self.repo,
            "algorithm": self.algorithm,
            "started": self.started,
            "last_activity": self.last_activity,
            "upload": None if self.upload is None else self.upload.decode(),
        }
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> "SessionRecord":
        """A record read back; ValueError when it is not one."""
        try:
            document = json.loads(data)
            if document["version"] != SESSION_RECORD_VERSION:
                raise ValueError(f"session record version {document['version']!r}")
            upload = document["upload"]
            return cls(
                str(document["uuid"]),
                str(document["repo"]),
                str(document["algorithm"]),
                float(document["started"]),
                float(document["last_activity"]),
                None if upload is None else str(upload).encode(),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a session record: {e}") from e


class SavedUpload:
    """A session's upload: the store's, saved at each drain, perhaps being restored.

    `save` writes the session's record with an upload state, `forget` deletes the
    record; the session table provides both.
    """

    log = Logger()

    def __init__(
        self,
        algorithm: str,
        save: Callable[[bytes], Awaitable[None]],
        forget: Callable[[], None],
    ) -> None:
        self.algorithm = algorithm
        self._save = save
        self._forget = forget
        self._inner: BlobUpload | None = None
        self._failure: Exception | None = None
        self._waiting: list[Deferred[BlobUpload]] = []
        self._body = HeldBody()
        self._aborted = False

    # Becoming ready.

    @property
    def restoring(self) -> bool:
        """Whether the store's upload is still being fetched back."""
        return self._inner is None and self._failure is None

    def take_up(self, inner: BlobUpload) -> None:
        """The store's upload is here: hand it what was held, and go on."""
        if self._aborted:
            inner.abort()
            return
        self._inner = inner
        try:
            for data in self._body.take_bytes():
                inner.write(data)
        except Exception as error:
            self._failure = error

        self._body.hand_over(inner.register_producer)
        self._wake()

    def fail(self, error: Exception) -> None:
        """The upload could not be restored: every use from now on raises `error`."""
        self._failure = error
        self._body.drop()
        self.unregister_producer()
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiting = self._waiting, []
        for waiter in waiters:
            if self._inner is not None and self._failure is None:
                waiter.callback(self._inner)
            else:
                waiter.errback(self._error())

    def _error(self) -> Exception:
        return self._failure or UploadFailed("the upload was cancelled")

    async def ready(self) -> BlobUpload:
        """The store's upload, once restored; raises what made it fail."""
        if self._failure is not None:
            raise self._failure
        if self._inner is not None:
            return self._inner
        waiter: Deferred[BlobUpload] = Deferred()
        self._waiting.append(waiter)
        return await waiter

    # The BlobUpload protocol.

    @property
    def size(self) -> int:
        """Bytes accepted so far; unknown, so `StorageUnavailable`, while the
        upload is being restored (the client may retry in a moment)."""
        if self._inner is None:
            raise self._failure or StorageUnavailable(
                "this upload session is being restored; retry"
            )
        return self._inner.size

    def register_producer(self, producer: IPushProducer) -> None:
        if self._inner is not None:
            self._inner.register_producer(producer)
            return
        self._body.hold_producer(producer, pause=self.restoring)

    def unregister_producer(self) -> None:
        if self._inner is not None:
            self._inner.unregister_producer()
            return
        self._body.let_go()

    def write(self, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        if self._inner is not None:
            self._inner.write(data)
            return
        self._body.hold(data)

    async def drain(self) -> None:
        """Wait for the chunks cut so far, then save the upload in its record
        (a checkpoint waits for them itself, storing the partial last chunk
        meanwhile)."""
        inner = await self.ready()
        if isinstance(inner, CheckpointedUpload):
            state = await inner.checkpoint()
            await self._save(state)
        else:
            await inner.drain()

    async def finish(self, digest: str) -> int:
        inner = await self.ready()
        size = await inner.finish(digest)
        self._forget()
        return size

    def abort(self) -> None:
        """Give the upload up, and its record with it.

        An upload that could not be restored keeps its record: what failed was
        this node's attempt (the relays were out of reach, say), not the session.
        """
        restore_failed = self._inner is None and self._failure is not None
        self.release()
        if not restore_failed:
            self._forget()

    def release(self) -> None:
        """Give up the upload in this process only; its record stays, so another
        node (or this one, restarted) can go on with it."""
        self._aborted = True
        if self._inner is not None:
            self._inner.abort()
        elif self._failure is None:
            self.fail(UploadFailed("the upload was cancelled"))
