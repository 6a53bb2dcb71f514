"""A request that streams an upload's body to its sink while the bytes arrive.

twisted.web reads a whole request body into memory or a temporary file before any
resource renders. For a blob upload that would hold the whole blob, so the site
installs `StreamingRequest`: once the headers are in (``gotLength``) it asks the
site's `BodyRouter` where the body goes. An upload's body is then written, chunk by
chunk, into a `BodySink` (the upload session), which may pause reading from the
connection while its window of chunk puts is full. Any other body is kept in memory
up to the router's limit; past it the request is marked as overflowing and the rest
is dropped, never buffered.

The router may refuse a body (an unknown upload, a chunk at the wrong offset); the
error is kept, the body is read and dropped, and the handler raises the error once
the request has been received. A sink that fails mid-body is treated the same way.

Design notes:

- twisted.web sets a request's method and path only after its body has been read.
  The streaming request takes them from the channel's record of the request line
  (``HTTPChannel._command`` and ``_path``); `StreamingRequest.request_line_known`
  says whether that worked, and a test pins it to the Twisted in use.
- The producer a sink pauses is the connection's transport (an ``IPushProducer``:
  pausing it stops reading from the socket), not the ``HTTPChannel``: the channel's
  own ``pauseProducing`` is how its transport tells it that the *response* cannot be
  written, and pausing it would also pause any response producer. The transport is
  wrapped in a `ReadGate`, so a sink's pause is undone when the body ends, whatever
  the sink does after.
- Only HTTP/1.1 is served this way: Twisted's HTTP/2 support needs the ``h2``
  package, which is not installed.
"""

from collections.abc import Callable
from io import BytesIO
from typing import Protocol

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import parse_qs
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from zope.interface import implementer

from treescale.registry.channel import PaceLimits, RegistryChannel
from treescale.registry.settings import RegistrySettings

DEFAULT_BODY_LIMIT = 4 * 1024 * 1024
"""The largest non-upload body kept when the site names no router."""


class BodySink(Protocol):
    """Where an upload's body bytes go as they arrive."""

    def register_producer(self, producer: IPushProducer) -> None:
        """Pause `producer` while the sink cannot take more bytes."""

    def unregister_producer(self) -> None:
        """The body has ended: stop pausing the producer."""

    def write(self, data: bytes) -> None:
        """Take more bytes of the body; raises when the sink has failed."""


class BodyRouter(Protocol):
    """Decides, before a body arrives, whether it is streamed and where to."""

    @property
    def body_limit(self) -> int:
        """The largest body kept in memory for a request that is not streamed."""

    def open_body(self, request: Request) -> BodySink | None:
        """The sink for this request's body, or None to keep it in memory.

        Raises when the body is refused; the request keeps the error for its
        handler. The request's method, path, args and headers are set.
        """


@implementer(IPushProducer)
class ReadGate:
    """The producer a sink pauses: it pauses reading a connection, until detached.

    Pauses and resumes are passed to the transport only while attached, and only
    on a change, so a sink that repeats itself or acts after its body has ended
    cannot leave the connection paused or resume it behind the channel's back.
    """

    def __init__(
        self,
        transport: IPushProducer | None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._transport = transport
        self._on_change = on_change
        self.paused = False
        self.attached = True

    def _changed(self) -> None:
        """Tell the channel, so time spent paused is not held against the client."""
        if self._on_change is not None:
            self._on_change(self.paused)

    def pauseProducing(self) -> None:
        """Stop reading the connection."""
        if self.attached and not self.paused:
            self.paused = True
            if self._transport is not None:
                self._transport.pauseProducing()
            self._changed()

    def resumeProducing(self) -> None:
        """Read the connection again."""
        if self.attached and self.paused:
            self.paused = False
            if self._transport is not None:
                self._transport.resumeProducing()
            self._changed()

    def stopProducing(self) -> None:
        """The sink gives up on the body: close the connection."""
        if self.attached and self._transport is not None:
            self._transport.stopProducing()

    def detach(self) -> None:
        """The body has ended: undo a pause and ignore the sink from now on."""
        self.resumeProducing()
        self.attached = False


class StreamingRequest(Request):
    """A request whose upload body streams to a sink instead of being buffered.

    After the body has been received, a handler finds here what became of it:
    `body_sink` the sink it went to, `body_error` why it was refused or why the
    sink failed, `body_overflow` that a kept body was too large and was dropped.
    """

    log = Logger()

    body_sink: BodySink | None = None
    body_error: Exception | None = None
    body_overflow = False
    body_received = 0
    request_line_known = False
    _gate: ReadGate | None = None
    _body_limit = DEFAULT_BODY_LIMIT
    _kept: BytesIO

    def gotLength(self, length: int | None) -> None:
        """The headers are in: decide where the body goes before it arrives."""
        self._kept = self.content = BytesIO()
        router = self._router()
        if router is not None:
            self._body_limit = router.body_limit

        if router is None or not self._learn_request_line():
            self._keep_body(length)
            return

        try:
            sink = router.open_body(self)
        except Exception as error:
            self.body_error = error
            return

        if sink is None:
            self._keep_body(length)
            return

        self._stream_body(sink)

    def handleContentChunk(self, data: bytes) -> None:
        """Send body bytes to the sink, or keep them within the limit."""
        self.body_received += len(data)
        if self.body_sink is not None:
            self._write_to_sink(self.body_sink, data)
            return

        if self.body_error is not None or self.body_overflow:
            return

        if self._kept.tell() + len(data) > self._body_limit:
            self._overflow()
            return

        self._kept.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The body has ended: release the connection, then render."""
        self._end_body()
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:
        """The client went away, perhaps mid-body: release the sink too."""
        self._end_body()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def registerProducer(self, producer: object, streaming: bool) -> None:
        """Register the response's producer; a no-op once the client has gone."""
        if self.channel is None:
            return
        super().registerProducer(producer, streaming)  # type: ignore[no-untyped-call]

    def unregisterProducer(self) -> None:
        """Unregister the response's producer, even after the client has gone.

        A blob read cancelled by the client's leaving unregisters its producer
        after twisted.web has dropped the channel, which the base class cannot do.
        """
        if self.channel is None:
            self.producer = None
            return
        super().unregisterProducer()  # type: ignore[no-untyped-call]

    def _router(self) -> BodyRouter | None:
        """The site's router, when the site has one."""
        site = getattr(self.channel, "site", None)
        if isinstance(site, StreamingSite):
            return site.body_router
        return None

    def _learn_request_line(self) -> bool:
        """Set method, path and args now, from the channel's request line."""
        command = getattr(self.channel, "_command", None)
        uri = getattr(self.channel, "_path", None)
        if not isinstance(command, bytes) or not isinstance(uri, bytes):
            return False

        self.method = command
        self.uri = uri
        self.path, _, query = uri.partition(b"?")
        # twisted.web's own parser, as `requestReceived` uses later: the standard
        # library's fails on bytes that unquote to anything but ASCII.
        self.args = parse_qs(query, 1)  # type: ignore[no-untyped-call]
        self.request_line_known = True
        return True

    def _keep_body(self, length: int | None) -> None:
        """Keep the body in memory; refuse at once one announced too large."""
        if length is not None and length > self._body_limit:
            self._overflow()

    def _overflow(self) -> None:
        """Drop a kept body that passed the limit, and remember that it did."""
        self.body_overflow = True
        self._kept = self.content = BytesIO()

    def _stream_body(self, sink: BodySink) -> None:
        """Send the body to `sink`, which may pause reading the connection."""
        self.body_sink = sink
        transport = IPushProducer(self.channel.transport, None)
        self._gate = ReadGate(transport, getattr(self.channel, "reading_paused", None))
        try:
            sink.register_producer(IPushProducer(self._gate))
        except Exception as error:
            self._gate = None
            self.body_error = error

    def _write_to_sink(self, sink: BodySink, data: bytes) -> None:
        """Write to the sink unless it has failed; remember its first failure."""
        if self.body_error is not None:
            return

        try:
            sink.write(data)
        except Exception as error:
            self.body_error = error
            self._end_body()

    def _end_body(self) -> None:
        """Let go of the connection's producer and tell the sink the body ended."""
        gate, self._gate = self._gate, None
        if gate is None or self.body_sink is None:
            return

        gate.detach()
        try:
            self.body_sink.unregister_producer()
        except Exception:
            self.log.failure("upload sink failed to unregister its producer")


class StreamingSite(Site):
    """A site whose requests stream upload bodies to the sinks `body_router` names.

    Its connections are dropped when idle for `client_idle_timeout` and when too
    slow (see `channel.Pace`). Without `settings`, those of the router are used
    when it has any (the registry does), else the defaults.
    """

    requestFactory = StreamingRequest
    protocol = RegistryChannel  # type: ignore[assignment]
    noisy = False
    """No "Starting factory <object at 0x...>" lines: the port's own line says
    where the site listens."""

    def __init__(
        self,
        resource: IResource,
        body_router: BodyRouter,
        settings: RegistrySettings | None = None,
    ) -> None:
        if settings is None:
            found = getattr(body_router, "settings", None)
            settings = found if isinstance(found, RegistrySettings) else None
        settings = settings or RegistrySettings()
        super().__init__(  # type: ignore[no-untyped-call]
            resource,
            parsePOSTFormSubmission=False,
            timeout=settings.client_idle_timeout,
        )
        self.body_router = body_router
        self.pace_limits = PaceLimits(
            settings.header_timeout, settings.min_body_rate, settings.body_rate_window
        )
