"""The HTTP connection of the registry: twisted.web's channel, with two refusals.

Clients told a registry may be insecure (skopeo and podman with
``--tls-verify=false``, docker with an insecure-registries entry) first try HTTPS and
fall back to plain HTTP only when that attempt fails. twisted.web, given a TLS
ClientHello on a plain HTTP port, waits for a line ending that never comes, so each of
those clients hangs for its full handshake timeout (ten seconds for skopeo) before
every operation. A ClientHello always starts with the TLS handshake record type; on
seeing it as a connection's first byte, the channel answers 400 and closes, and the
client falls back at once.

A Content-Length of thousands of digits makes twisted.web's header parser raise
(Python refuses to convert such a number) and drop the connection with a traceback in
the log; the channel answers those with a 400 before the parser sees them.

A client that sends one byte a second never trips twisted.web's idle timeout, which
each byte resets, and could hold a connection (and an upload session) for ever. So
the channel also keeps a `Pace`: a request's line and headers must be in within a
deadline, and its body must average a minimum rate over a window. Time the registry
itself stopped reading (an upload's window of chunk puts was full) is not held
against the client. A client that falls behind gets a 408 and is disconnected; the
request's end releases any upload session it had claimed.
"""

import time
from dataclasses import dataclass
from enum import Enum

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from treescale.sockets import tune_socket_io

TLS_HANDSHAKE_RECORD = 0x16

# No body is 10**18 bytes long; a longer number is a client's mistake or an attack.
MAX_CONTENT_LENGTH_DIGITS = 18


def bad_request(reason: bytes) -> bytes:
    """A whole 400 response with a one-line plain-text reason."""
    body = reason + b"\n"
    return (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + body
    )


def request_timeout(reason: bytes) -> bytes:
    """A whole 408 response with a one-line plain-text reason."""
    body = reason + b"\n"
    return (
        b"HTTP/1.1 408 Request Timeout\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + body
    )


@dataclass(frozen=True)
class PaceLimits:
    """How fast a client must send: the settings `Pace` applies."""

    header_timeout: float = 30.0
    min_body_rate: int = 1024
    body_rate_window: float = 30.0


class Phase(Enum):
    """Where a connection stands in receiving a request."""

    IDLE = "idle"
    HEAD = "head"
    BODY = "body"
    HANDLING = "handling"


class Pace:
    """Whether a client sends its request fast enough; sans-IO, fed with times.

    The channel reports each phase change and each piece of data with the time it
    happened, and asks `verdict` now and then; a reason back means drop the client.
    While reading is paused by the registry, the body's clock stops.
    """

    def __init__(self, limits: PaceLimits) -> None:
        self.limits = limits
        self.phase = Phase.IDLE
        self._head_started = 0.0
        self._window_started = 0.0
        self._window_bytes = 0
        self._paused_at: float | None = None

    def data(self, nbytes: int, now: float) -> None:
        """Bytes arrived from the client."""
        if self.phase is Phase.IDLE:
            self.phase = Phase.HEAD
            self._head_started = now
        elif self.phase is Phase.BODY:
            self._window_bytes += nbytes

    def headers_done(self, now: float) -> None:
        """The request's headers are in: its body, if any, follows."""
        self.phase = Phase.BODY
        self._start_window(now)

    def body_done(self) -> None:
        """The request has been received; the registry is answering it."""
        self.phase = Phase.HANDLING
        self._paused_at = None

    def request_done(self) -> None:
        """The response is written; the connection waits for another request."""
        self.phase = Phase.IDLE

    def paused(self, now: float) -> None:
        """The registry stopped reading the connection."""
        if self._paused_at is None:
            self._paused_at = now

    def resumed(self, now: float) -> None:
        """The registry reads the connection again: the pause is not counted."""
        if self._paused_at is not None:
            self._window_started += now - self._paused_at
            self._paused_at = None

    def verdict(self, now: float) -> str | None:
        """Why the client is too slow at `now`, or None while it keeps up."""
        if self.phase is Phase.HEAD:
            if now - self._head_started > self.limits.header_timeout:
                return "request headers took too long"
            return None
        if self.phase is not Phase.BODY or self._paused_at is not None:
            return None
        return self._body_verdict(now)

    def _body_verdict(self, now: float) -> str | None:
        """Judge a full window of body by its average rate, then start another."""
        elapsed = now - self._window_started
        if elapsed < self.limits.body_rate_window:
            return None
        rate = self._window_bytes / elapsed
        if rate < self.limits.min_body_rate:
            return f"request body arrived at {rate:.0f} bytes/s"
        self._start_window(now)
        return None

    def _start_window(self, now: float) -> None:
        self._window_started = now
        self._window_bytes = 0


READ_SIZE = 1024 * 1024
"""Bytes of a connection read at once. Twisted's default, 64 KiB, hands an upload's
body to the chunker in small pieces, a pass through the reactor each."""

SEND_SIZE = 8 * 1024 * 1024
"""The most a connection hands its socket in one send. Twisted's default, 128 KiB
a pass through the reactor, holds a pull far below what the client could take
while the reactor also reads the chunks from the bus; the kernel takes what fits."""


PACE_CHECK_INTERVAL = 1.0
"""Seconds between looks at a busy connection's pace."""

TLS_REFUSAL = bad_request(b"This port speaks plain HTTP, not TLS.")
LENGTH_REFUSAL = bad_request(b"Content-Length is not a plausible number.")


class RegistryChannel(HTTPChannel):
    """An HTTP/1.1 channel that refuses TLS handshakes and absurd lengths at once,
    and drops clients too slow to send their requests."""

    log = Logger()
    pace_limits = PaceLimits()
    _first_bytes_seen = False
    _pace: Pace | None = None
    _pace_check: IDelayedCall | None = None
    _paused_timeout: float | None = None

    def connectionMade(self) -> None:
        site_limits = getattr(getattr(self, "site", None), "pace_limits", None)
        if isinstance(site_limits, PaceLimits):
            self.pace_limits = site_limits
        self._pace = Pace(self.pace_limits)
        tune_socket_io(self.transport, READ_SIZE, SEND_SIZE)
        super().connectionMade()  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        if not self._first_bytes_seen and data:
            self._first_bytes_seen = True
            if data[0] == TLS_HANDSHAKE_RECORD:
                self.log.debug("refused a TLS handshake on the plain HTTP port")
                assert self.transport is not None
                self._refuse(TLS_REFUSAL)
                return
        if self._pace is not None and not self._handlingRequest and data:
            self._pace.data(len(data), self._now())
            self._watch_pace()
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def allHeadersReceived(self) -> None:
        if self._pace is not None:
            self._pace.headers_done(self._now())
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def allContentReceived(self) -> None:
        if self._pace is not None:
            self._pace.body_done()
        self._restore_idle_timeout()
        super().allContentReceived()  # type: ignore[no-untyped-call]

    def requestDone(self, request: object) -> None:
        if self._pace is not None:
            self._pace.request_done()
        super().requestDone(request)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_watching()
        self._pace = None
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def reading_paused(self, paused: bool) -> None:
        """The registry stopped (or started again) reading a request's body.

        Neither the pace nor twisted.web's idle timeout runs meanwhile: the
        client is waiting for the registry, not the other way round.
        """
        if paused:
            if self._paused_timeout is None:
                self._paused_timeout = self.setTimeout(None)  # type: ignore[no-untyped-call]
        else:
            self._restore_idle_timeout()
        if self._pace is None:
            return
        if paused:
            self._pace.paused(self._now())
        else:
            self._pace.resumed(self._now())

    def _restore_idle_timeout(self) -> None:
        """Run twisted.web's idle timeout again, if a pause stopped it."""
        timeout, self._paused_timeout = self._paused_timeout, None
        if timeout is not None:
            self.setTimeout(timeout)  # type: ignore[no-untyped-call]

    def _now(self) -> float:
        """The time on the site's clock, which also runs the channel's timers."""
        reactor = getattr(getattr(self, "site", None), "reactor", None)
        seconds = getattr(reactor, "seconds", None)
        return float(seconds()) if callable(seconds) else time.monotonic()

    def _watch_pace(self) -> None:
        """Look at the pace again soon, while a request is being received."""
        if self._pace_check is None or not self._pace_check.active():
            self._pace_check = self.callLater(  # type: ignore[no-untyped-call]
                PACE_CHECK_INTERVAL, self._check_pace
            )

    def _stop_watching(self) -> None:
        check, self._pace_check = self._pace_check, None
        if check is not None and check.active():
            check.cancel()

    def _check_pace(self) -> None:
        """Drop a client that has fallen behind; keep watching one that has not."""
        self._pace_check = None
        pace = self._pace
        if pace is None or pace.phase in (Phase.IDLE, Phase.HANDLING):
            return
        why = pace.verdict(self._now())
        if why is None:
            self._watch_pace()
            return
        peer = self.transport.getPeer() if self.transport is not None else None
        self.log.info("dropped a slow client {peer}: {why}", peer=str(peer), why=why)
        self._pace = None
        self._refuse(request_timeout(why.encode()))

    def headerReceived(self, line: bytes) -> bool:
        name, colon, value = line.partition(b":")
        too_long = len(value.strip(b" \t")) > MAX_CONTENT_LENGTH_DIGITS
        if colon and name.strip().lower() == b"content-length" and too_long:
            self.log.info(
                "refused a request with a {n}-byte Content-Length", n=len(value)
            )
            self._refuse(LENGTH_REFUSAL)
            return False
        return bool(super().headerReceived(line))  # type: ignore[no-untyped-call]

    def _refuse(self, response: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response)
        self.transport.loseConnection()
