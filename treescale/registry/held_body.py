"""An upload body held back until the upload it goes to is ready for it.

A session being restored (`treescale.registry.saved_uploads.SavedUpload`) and a
ranged chunk waiting to be checked against it (`treescale.registry.restoring`)
both stand in front of an upload that is not there yet: they pause the body's
producer and keep the bytes that arrived with the headers, then either hand both
over or let the body go. `HeldBody` is that holding, in one place.
"""

from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer

from treescale.store.errors import UploadFailed

MAX_HELD_BYTES = 4 * 1024 * 1024
"""Body bytes held before the upload is ready; the body is paused at once, so
only what was already in flight arrives."""


class HeldBody:
    """The bytes and the producer of a body whose upload is not ready yet."""

    def __init__(self) -> None:
        self._bytes: list[bytes] = []
        self._size = 0
        self._producer: IPushProducer | None = None
        self._paused = False

    def hold_producer(self, producer: IPushProducer, pause: bool) -> None:
        """Keep the body's producer, pausing it when `pause`."""
        self._producer = producer
        if pause and not self._paused:
            self._paused = True
            producer.pauseProducing()

    def hold(self, data: bytes) -> None:
        """Keep bytes of the body (a copy: the caller may reuse its buffer);
        `UploadFailed` past `MAX_HELD_BYTES`."""
        if self._size + len(data) > MAX_HELD_BYTES:
            raise UploadFailed("too many bytes arrived while the session was restored")
        self._bytes.append(bytes(data))
        self._size += len(data)

    def drop(self) -> None:
        """Forget the bytes held: the body they came in is refused."""
        self._bytes, self._size = [], 0

    def take_bytes(self) -> list[bytes]:
        """The bytes held, in order; none are held after."""
        taken, self._bytes, self._size = self._bytes, [], 0
        return taken

    def hand_over(self, register: Callable[[IPushProducer], None]) -> None:
        """Resume the producer if it was paused here, and `register` it with the
        upload that takes the body from now on."""
        producer = self._let_go()
        if producer is not None:
            register(producer)

    def let_go(self) -> None:
        """Resume the producer if it was paused here, and keep it no longer."""
        self._let_go()

    def _let_go(self) -> IPushProducer | None:
        producer, self._producer = self._producer, None
        if producer is not None and self._paused:
            self._paused = False
            producer.resumeProducing()
        return producer
