"""A chunk whose Content-Range cannot be checked yet: its session is being restored.

A chunk with a Content-Range must start where its upload stands, and is refused
before a byte of it reaches the upload when it does not. The size of an upload
this node is still reading back from its record (after a restart, or a session
begun on another registry node) is not known yet, so the check waits for it:
`RangeAfterRestore` is the body's sink meanwhile. It pauses the body, holds the
few bytes that came with the headers (`treescale.registry.held_body`, as a
restoring upload does), and once the upload is back runs the check:
a chunk that fits goes on into the session, held bytes first; one that does not,
or a session that could not be restored (an unknown or expired one, say), is
refused with that error, and the upload is left as it was.

Before this, such a chunk was answered 503 "being restored; retry", and a chunk
for a session that did not exist was answered 503 for ever.
"""

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure

from treescale.registry.held_body import HeldBody
from treescale.registry.uploads import UploadSession
from treescale.store.errors import UploadFailed


class RangeAfterRestore:
    """The body sink of a ranged chunk until its session's range can be checked."""

    def __init__(
        self,
        session: UploadSession,
        restored: Awaitable[object],
        check: Callable[[UploadSession], None],
    ) -> None:
        """Wait for `restored`, then call `check` (which raises the refusal)."""
        self.session = session
        self.error: Exception | None = None
        self._check = check
        self._body = HeldBody()
        self._handed_over = False
        self.settled: Deferred[None] = Deferred()
        """Fires once the chunk is let through or refused."""
        waiting = Deferred.fromCoroutine(_awaited(restored))
        waiting.addCallbacks(self._restored, self._failed)

    # The BodySink protocol.

    def register_producer(self, producer: IPushProducer) -> None:
        if self._handed_over:
            self.session.register_producer(producer)
            return
        self._body.hold_producer(producer, pause=not self.settled.called)

    def unregister_producer(self) -> None:
        if self._handed_over:
            self.session.unregister_producer()
            return
        self._body.let_go()

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        if self._handed_over:
            self.session.write(data)
            return
        self._body.hold(data)

    # The check.

    def _restored(self, _: object) -> None:
        try:
            self._check(self.session)
            for data in self._body.take_bytes():
                self.session.write(data)
        except Exception as error:
            self._refuse(error)
            return

        self._handed_over = True
        self._body.hand_over(self.session.register_producer)
        self.settled.callback(None)

    def _failed(self, failure: Failure) -> None:
        self._refuse(failure.value or UploadFailed("the session was not restored"))

    def _refuse(self, error: BaseException) -> None:
        """Refuse the chunk: drop what was held, and let the rest of the body
        come in to be dropped too (the answer follows the body)."""
        self.error = error if isinstance(error, Exception) else UploadFailed(str(error))
        self._body.drop()
        self._body.let_go()
        self.settled.callback(None)


async def _awaited(awaitable: Awaitable[object]) -> object:
    return await awaitable
