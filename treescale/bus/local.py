"""Links between bus nodes that run in one process: frames handed over in memory.

A process that runs several nodes of a tree (the embedded default runs a registry
node and three relays) used to link them as any two hosts are linked: over TCP on
loopback. Every frame was encoded, copied into the kernel, copied out again and
decoded, and a pull paid that for every byte of every chunk. Nodes of one process
now link in memory: the child "dials" its parent through a `LocalEndpoint`, the two
ends are `Link`s as always (handshake, heartbeats, holds, stall timer, the same
`BusNode` code on both sides), but their transports are a `LocalTransport` pair
that hands whole `Frame`s to the other end, with no encoding and no copy.

What a socket gave for free is kept on purpose:

- Frames arrive later, in order, on a later pass of the reactor (never inside the
  sender's call), as from a socket.
- Backpressure: frames wait in the receiver's queue; past `HIGH_WATER` bytes there,
  the sender's link is paused (its `wait_writable` waits) until the queue drains.
  A receiver that holds its link (`Link.hold`) stops taking frames meanwhile.
- Closing either end closes both, and each side's protocol hears of it.

Identity needs no certificate: both ends are this process's own nodes, built from
one topology file. TLS, when the tree has it, still guards every link to another
process.
"""

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from treescale.bus.frames import Frame
    from treescale.bus.link import Link
    from treescale.bus.node import BusNode

HIGH_WATER = 8 * 1024 * 1024
"""Payload bytes queued for a receiver before its sender is paused: about what a
loopback socket's buffers held, so a bulk sender runs as far ahead as before."""


@implementer(IAddress)
@dataclass(frozen=True)
class InProcessAddress:
    """The address of a node linked in memory: its name, in this process."""

    node: str

    def __str__(self) -> str:
        return "in this process"


@dataclass
class LocalNodes:
    """The bus nodes one process runs, by name, so that they link in memory.

    `planned` names every node the process was started to run, known before any
    is built; a node whose parent is planned here dials it in memory, waiting
    (as a dial waits for a parent not yet listening) until it is built.
    """

    planned: set[str] = field(default_factory=set)
    nodes: dict[str, "BusNode"] = field(default_factory=dict)

    def hosts(self, name: str) -> bool:
        """Whether node `name` runs, or is to run, in this process."""
        return name in self.planned

    def add(self, node: "BusNode") -> None:
        self.planned.add(node.me.name)
        self.nodes[node.me.name] = node

    def remove(self, node: "BusNode") -> None:
        if self.nodes.get(node.me.name) is node:
            del self.nodes[node.me.name]


@implementer(IPushProducer)
class LocalTransport:
    """One end of an in-memory link, as its `Link` sees it: a transport that
    carries frames rather than bytes (`send_frame`)."""

    def __init__(self, clock: IReactorTime, here: str, there: str) -> None:
        self.clock = clock
        self.here = here
        self.there = there
        self.peer: LocalTransport | None = None
        self.protocol: IProtocol | None = None
        """What was connected to this end (a `Link`, or a proxy around one)."""
        self.link: Link | None = None
        """The `Link` frames are handed to, attached when it connects."""
        self.disconnected = False
        self._inbox: deque[Frame] = deque()
        self._inbox_bytes = 0
        self._held = False
        self._drain_call: IDelayedCall | None = None
        self._producer: IPushProducer | None = None
        self._sender_paused = False

    # What a Link uses.

    def attach(self, link: "Link") -> None:
        self.link = link

    def send_frame(self, frame: "Frame") -> None:
        """Queue a frame for the other end; pause our sender past the high water."""
        peer = self.peer
        if self.disconnected or peer is None or peer.disconnected:
            return
        peer._inbox.append(frame)
        peer._inbox_bytes += len(frame.payload)
        peer._schedule_drain()
        if peer._inbox_bytes > HIGH_WATER and not self._sender_paused:
            self._sender_paused = True
            if self._producer is not None:
                self._producer.pauseProducing()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    def getPeer(self) -> InProcessAddress:
        return InProcessAddress(self.there)

    def getHost(self) -> InProcessAddress:
        return InProcessAddress(self.here)

    def write(self, data: bytes) -> None:
        raise TypeError("an in-process link carries frames: use send_frame")

    def writeSequence(self, data: Any) -> None:
        raise TypeError("an in-process link carries frames: use send_frame")

    def loseConnection(self) -> None:
        self._close(_failure(ConnectionDone("in-process link closed")))

    def abortConnection(self) -> None:
        self._close(_failure(ConnectionLost("in-process link aborted")))

    # IPushProducer: the Link holding its inbound side (`Link.hold`).

    def pauseProducing(self) -> None:
        self._held = True

    def resumeProducing(self) -> None:
        self._held = False
        self._schedule_drain()

    def stopProducing(self) -> None:
        self._held = True

    # Handing frames over.

    def _schedule_drain(self) -> None:
        if self._drain_call is None and not self._held and self._inbox:
            self._drain_call = self.clock.callLater(0, self._drain)

    def _drain(self) -> None:
        """Hand every queued frame to our link, until it holds or closes."""
        self._drain_call = None
        while self._inbox and not self._held and not self.disconnected:
            frame = self._inbox.popleft()
            self._inbox_bytes -= len(frame.payload)
            if self.link is not None:
                self.link.frame_arrived(frame)
        if not self._inbox and self.peer is not None:
            self.peer._receiver_drained()

    def _receiver_drained(self) -> None:
        """The other end took everything we queued: our sender may go on."""
        if self._sender_paused:
            self._sender_paused = False
            if self._producer is not None and not self.disconnected:
                self._producer.resumeProducing()

    # Closing.

    def _close(self, reason: Failure) -> None:
        """Close both ends; each protocol hears of it on a later reactor pass."""
        for end in (self, self.peer):
            if end is None or end.disconnected:
                continue
            end.disconnected = True
            end._inbox.clear()
            end._inbox_bytes = 0
            if end._drain_call is not None and end._drain_call.active():
                end._drain_call.cancel()
            end._drain_call = None
            if end.protocol is not None:
                self.clock.callLater(0, end.protocol.connectionLost, reason)


def connect_in_memory(
    child: IProtocol, parent: IProtocol, clock: IReactorTime, names: tuple[str, str]
) -> tuple[LocalTransport, LocalTransport]:
    """Join two protocols (a child's link and its parent's) by a transport pair
    and start both, as a TCP connection would; `names` are (child, parent)."""
    child_end = LocalTransport(clock, names[0], names[1])
    parent_end = LocalTransport(clock, names[1], names[0])
    child_end.peer, parent_end.peer = parent_end, child_end
    child_end.protocol, parent_end.protocol = child, parent
    parent.makeConnection(parent_end)  # type: ignore[arg-type]
    child.makeConnection(child_end)  # type: ignore[arg-type]
    return child_end, parent_end


@implementer(IStreamClientEndpoint)
class LocalEndpoint:
    """Dials a parent node of this same process in memory (an
    `IStreamClientEndpoint` for `ClientService`)."""

    def __init__(
        self,
        local: LocalNodes,
        child: str,
        parent: str,
        clock: IReactorTime,
        parent_factory: Callable[["BusNode"], IProtocolFactory],
    ) -> None:
        self.local = local
        self.child = child
        self.parent = parent
        self.clock = clock
        self.parent_factory = parent_factory

    def connect(self, factory: IProtocolFactory) -> "Deferred[IProtocol]":
        """A link to the parent, or a refused dial while it is not running here
        (`ClientService` then dials again later, as for a TCP parent)."""
        node = self.local.nodes.get(self.parent)
        if node is None:
            return _refused(f"{self.parent} is not running here")

        address = InProcessAddress(self.parent)
        child = factory.buildProtocol(address)
        parent = self.parent_factory(node).buildProtocol(InProcessAddress(self.child))
        if child is None or parent is None:
            return _refused("no protocol for an in-process link")
        connect_in_memory(child, parent, self.clock, (self.child, self.parent))
        return succeed(child)


def _failure(error: Exception) -> Failure:
    """`error` as the reason a protocol hears its connection was lost for."""
    return Failure(error)  # type: ignore[no-untyped-call]


def _refused(why: str) -> "Deferred[IProtocol]":
    """A dial refused, as TCP refuses one to a port nobody listens on."""
    return fail(ConnectionRefusedError(why))  # type: ignore[no-untyped-call]
