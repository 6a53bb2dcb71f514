"""One edge of the tree as a Twisted protocol: handshake, heartbeats, frames in and out.

A link only feeds bytes to the sans-IO `FrameDecoder` and writes what `encode` returns.
What the frames mean is the node's business (`treescale.bus.node`).

The handshake: each side sends HELLO first (cluster name, node name, protocol version,
topology hash and version, and its tree's node table as payload) and accepts nothing
else until the peer's HELLO has been checked. Two editions of the tree may link while
an edit rolls out if every name means the same node in both; any other mismatch
closes the link with a logged reason, since routes computed from trees that disagree
would deliver events to the wrong nodes.

Over TLS the link is the protocol inside `TLSMemoryBIOProtocol`: its HELLO waits
in the TLS layer until the handshake completes, so a peer that fails the handshake
never sees it, and a HELLO accepted must also match the peer's certificate
(`BusNode.check_identity`). A handshake that fails is logged with OpenSSL's reason.

Backpressure: the link registers itself as a streaming producer on its transport, so
the transport pauses it when its write buffer is full. Senders of chunk data wait on
`wait_writable()`; a link whose unsent bytes still pass `max_unsent` is dropped, so an
outbound queue never grows without bound.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from treescale.bus.frames import Frame, FrameDecoder, FrameError, Kind, encode_parts
from treescale.bus.local import LocalTransport
from treescale.sockets import tune_socket_io

if TYPE_CHECKING:
    from treescale.bus.node import BusNode

PROTOCOL_VERSION = 1

READ_SIZE = 1024 * 1024
"""Bytes a link's socket is read for at once. Twisted's default, 64 KiB, cuts every
256 KiB piece of chunk data over several reads, each a pass through the reactor and
a copy into the decoder's buffer; at this size most reads hold whole frames, which
the decoder takes in place. Twisted also pauses a producer past this many unsent
bytes, so a control frame waits behind at most about this much chunk data."""

SEND_SIZE = 4 * 1024 * 1024
"""The most a link hands its socket in one send. Twisted's default, 128 KiB, sends
that much per pass through the reactor, which holds a busy node's link far below
what loopback or a fast network carries; the kernel takes what fits either way."""


STALL_BEATS = 2.5
"""A heartbeat this many intervals after the last one means this process did not
run in between: the silence measured then is not the peer's."""


@dataclass(frozen=True)
class LinkSettings:
    """Timers and caps of every link; named so an operator can find them."""

    heartbeat_interval: float = 5.0
    idle_timeout: float = 20.0
    handshake_timeout: float = 10.0
    max_unsent: int = 64 * 1024 * 1024
    max_inbound_requests: int = 128
    """Requests a node holds at once (data arriving, handler running, reply
    going out); past it a request is answered "busy". Each holds up to a chunk."""
    inbound_timeout: float = 60.0
    """Seconds a request's data may take to arrive whole before it is given up."""
    stall_timeout: float = 15.0
    """Seconds a peer may leave our writes unread before the link is dropped: a
    peer that stops reading must not hold the links whose frames wait for it."""


class Link(Protocol):
    """The local end of one tree edge, after and during its handshake."""

    log = Logger()

    def __init__(self, node: "BusNode", expected_peer: str | None) -> None:
        self.node = node
        self.expected_peer = expected_peer
        self.peer: str | None = None
        self.hello: Frame | None = None
        """The peer's HELLO once accepted: checked again when our tree changes."""
        self.settings = node.link_settings
        self.clock: IReactorTime = node.clock
        self._decoder = FrameDecoder()
        self._paused = False
        self._unsent = 0
        self._writable_waiters: list[Deferred[None]] = []
        self._holds = 0
        self._last_heard = 0.0
        self._last_beat: float | None = None
        self._heartbeat: LoopingCall | None = None
        self._handshake_timer: IDelayedCall | None = None
        self._stall_timer: IDelayedCall | None = None
        self._closed = False
        self.closed_because: str | None = None
        """Why the link was closed on purpose (its node stopping, an edit that
        took the peer away); None while open or when it was lost."""
        self.bytes_sent = 0
        """Bytes written to the transport, for the status page's link rates."""
        self.bytes_received = 0

    @property
    def unsent(self) -> int:
        """Bytes written to this link that its transport has not sent yet."""
        return self._unsent

    # Connection life.

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        if isinstance(self.transport, LocalTransport):
            self.transport.attach(self)
        tune_socket_io(self.transport, READ_SIZE, SEND_SIZE)
        self._last_heard = self.clock.seconds()
        self._handshake_timer = self.clock.callLater(
            self.settings.handshake_timeout, self._handshake_expired
        )
        self.send(self.node.hello_frame())

    def connectionLost(self, reason: Failure | None = None) -> None:
        closed_by_us = self._closed
        self._closed = True
        self._stop_timers()
        if self.peer is None:
            self._handshake_lost(reason, closed_by_us)
        for waiter in self._writable_waiters:
            waiter.errback(ConnectionError("link lost"))
        self._writable_waiters = []
        if self.peer is not None:
            self.node.link_lost(self.peer, self)

    def frame_arrived(self, frame: Frame) -> None:
        """A whole frame from a node of this process (`treescale.bus.local`)."""
        self._last_heard = self.clock.seconds()
        self.bytes_received += len(frame.payload)
        if not self._closed:
            self._frame_received(frame)

    def dataReceived(self, data: bytes) -> None:
        self._last_heard = self.clock.seconds()
        self.bytes_received += len(data)
        try:
            frames = self._decoder.feed(data)
        except FrameError as e:
            self.abort(f"bad frame from peer: {e}")
            return
        for frame in frames:
            if self._closed:
                return
            self._frame_received(frame)

    def _handshake_lost(self, reason: Failure | None, closed_by_us: bool) -> None:
        """A link that never came up: say why when TLS refused it, and let the
        node back off before dialling again."""
        why = None if closed_by_us else self.node.tls_failure(reason, self.transport)
        if why is not None:
            self.log.warn(
                "bus link {direction} {address} refused in the TLS handshake: {why}",
                direction="to" if self.expected_peer else "from",
                address=self.peer_address,
                peer=self.expected_peer,
                why=why,
            )
        if self.expected_peer is not None:
            self.node.dial_refused()

    def _frame_received(self, frame: Frame) -> None:
        if self.peer is None:
            self._hello_received(frame)
        elif frame.kind == Kind.HEARTBEAT:
            self.node.heartbeat_received(self.peer, frame)
        elif frame.kind == Kind.HELLO:
            self.abort("a second HELLO on an open link")
        else:
            self.node.frame_received(self.peer, frame, self)

    def _hello_received(self, frame: Frame) -> None:
        if frame.kind != Kind.HELLO:
            self.abort(f"expected HELLO, got {frame.kind.name}")
            return
        why, peer = self.node.check_hello(frame.meta, self.expected_peer, frame.payload)
        if why is None and peer is not None:
            why = self.node.check_identity(peer, self.transport)
        if why:
            self.abort(why)
            return
        assert peer is not None
        self.peer = peer
        self.hello = frame
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self.clock
        self._last_beat = self.clock.seconds()
        self._heartbeat.start(self.settings.heartbeat_interval, now=False)
        self.node.link_up(peer, self)

    # Timers.

    def _beat(self) -> None:
        now = self.clock.seconds()
        if self._holds or self._we_stalled(now) or self.in_memory:
            # Its silence is ours, not its: we are not reading it, or this process
            # itself did not run for a while (stopped, swapped out), or the peer
            # is a node of this process, which runs exactly when we do.
            self._last_heard = now
        self._last_beat = now
        silent = now - self._last_heard
        if silent > self.settings.idle_timeout:
            self.abort(f"peer silent for {silent:.1f} s")
            return
        self.send(self.node.heartbeat_frame(self.peer))

    def _we_stalled(self, now: float) -> bool:
        """Whether this beat comes far later than due: the process did not run
        meanwhile, so no peer could have been heard either."""
        if self._last_beat is None:
            return False
        late = now - self._last_beat
        return late > STALL_BEATS * self.settings.heartbeat_interval

    @property
    def in_memory(self) -> bool:
        """Whether the peer is a node of this process (`treescale.bus.local`)."""
        return isinstance(self.transport, LocalTransport)

    def _stalled(self) -> None:
        self._stall_timer = None
        self.abort(f"peer read nothing of ours for {self.settings.stall_timeout} s")

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        self.abort(f"no HELLO within {self.settings.handshake_timeout} s")

    def _stop_timers(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.cancel()
        self._stall_timer = None

    # Sending.

    def send(self, frame: Frame) -> None:
        """Write one frame; drops the link when too much is waiting unsent."""
        if self._closed or self.transport is None:
            return
        if isinstance(self.transport, LocalTransport):
            if not self._count_unsent(len(frame.payload)):
                self.transport.send_frame(frame)
                self.bytes_sent += len(frame.payload)
            return
        try:
            head, payload = encode_parts(frame)
        except FrameError as e:
            # Only a frame handed over whole between nodes of one process can be
            # too large for a wire, and only when an edit re-routed it meanwhile.
            self.log.warn(
                "frame {event_id} to {peer} dropped: {why}",
                event_id=frame.event_id,
                peer=self.peer,
                why=str(e),
            )
            return
        if self._count_unsent(len(head) + len(payload)):
            return
        if payload:
            self.transport.writeSequence((head, payload))
        else:
            self.transport.write(head)
        self.bytes_sent += len(head) + len(payload)

    def _count_unsent(self, size: int) -> bool:
        """Count a frame written while the peer does not take more; whether that
        was too much, and the link was dropped for it."""
        if not self._paused:
            return False
        self._unsent += size
        if self._unsent > self.settings.max_unsent:
            self.abort(f"{self._unsent} bytes unsent to a peer that does not read")
            return True
        return False

    @property
    def last_heard(self) -> float:
        """When the peer last sent us anything, on the node's clock."""
        return self._last_heard

    @property
    def peer_address(self) -> str:
        """The far end's address, for logs."""
        if self.transport is None:
            return "(not connected)"
        address = self.transport.getPeer()
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else str(address)

    @property
    def writable(self) -> bool:
        return not self._paused and not self._closed

    def wait_writable(self) -> "Deferred[None]":
        """Fire when the transport can take more; fail if the link goes away first."""
        if self._closed:
            d: Deferred[None] = Deferred()
            d.errback(ConnectionError("link lost"))
            return d
        if not self._paused:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._writable_waiters.append(waiter)
        return waiter

    def abort(self, why: str, *, expected: bool = False) -> None:
        """Close the link at once, logging why: as a warning, unless it is
        `expected` (its node is being stopped)."""
        if self._closed:
            return
        peer = self.peer or self.expected_peer
        log = self.log.info if expected else self.log.warn
        if expected:
            self.closed_because = why
        log(
            "bus link {direction} {peer} dropped: {why}",
            direction="to" if peer else "from",
            peer=peer or self.peer_address,
            why=why,
        )
        self._closed = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # IPushProducer, as seen by our transport.

    def pauseProducing(self) -> None:
        self._paused = True
        if self._stall_timer is None and not self._closed:
            self._stall_timer = self.clock.callLater(
                self.settings.stall_timeout, self._stalled
            )

    def resumeProducing(self) -> None:
        self._paused = False
        self._unsent = 0
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.cancel()
        self._stall_timer = None
        waiters, self._writable_waiters = self._writable_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def stopProducing(self) -> None:
        self._paused = True

    # Inbound backpressure: a node forwarding onto a slow link holds this one.

    def hold(self) -> None:
        """Stop reading from the peer until every hold is released."""
        self._holds += 1
        if self._holds == 1 and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def release(self) -> None:
        self._holds -= 1
        if self._holds == 0 and self.transport is not None and not self._closed:
            self.transport.resumeProducing()  # type: ignore[attr-defined]


class LinkFactory(ServerFactory):
    """Builds links for one node: accepted children, or the dialled parent."""

    def __init__(self, node: "BusNode", expected_peer: str | None) -> None:
        self.node = node
        self.expected_peer = expected_peer
        self.noisy = False

    def buildProtocol(self, addr: object) -> Link:
        return Link(self.node, self.expected_peer)
