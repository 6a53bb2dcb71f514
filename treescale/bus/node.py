"""The local end of the bus: links to neighbours, routing, requests and their replies.

A `BusNode` listens for its children, dials its parent (through `ClientService`, which
owns retry and backoff), and routes every frame by the TreeScale path model of
`treescale.bus.routing`. Above the frames it offers one verb, `request`: send an
event to a named node and get its reply back.

A request travels as a first frame of its kind, then its data as DATA pieces, the last
one flagged END (a request without data carries END itself). The handler's answer comes
back the same way: a REPLY frame then DATA pieces, or one ERROR frame. The origin can
send CANCEL; the handler then stops. Every frame names the request it belongs to by its
``correlation`` field, set to the event id of the request's first frame.

Memory: a handler receives its request's data whole and a requester its reply's data
whole, each bounded by a size the caller states (a chunk is at most a few MiB); the
number of requests in flight is bounded by the callers' windows.

Given a `BusTls`, every link is mutually authenticated TLS (see `treescale.bus.tls`):
the listener wraps each accepted connection, the dialer checks its parent's name in
the handshake, and `check_identity` holds each HELLO to the peer's certificate.
"""

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from treescale.bus.frames import PIECE_SIZE, Flag, Frame, FrameError, Kind
from treescale.bus.link import PROTOCOL_VERSION, Link, LinkFactory, LinkSettings
from treescale.bus.local import LocalEndpoint, LocalNodes, LocalTransport
from treescale.bus.routing import RouteError, RouteTable, nth_prime
from treescale.bus.tls import BusTls, peer_certificate
from treescale.config import Address, NodeConfig, Topology, is_loopback_host
from treescale.topology_change import hello_nodes, link_refusal

DEFAULT_TIMEOUT = 30.0
DEFAULT_LINK_SETTINGS = LinkSettings()
SEEN_EVENTS = 65536
DIAL_INITIAL_DELAY = 0.5
DIAL_MAX_DELAY = 10.0


class BusError(Exception):
    """A request that did not get its answer."""


class LinkLost(BusError):
    """The link the request left on went away before the answer came."""


class Unreachable(BusError):
    """No link toward the destination is up."""


class RequestTimeout(BusError):
    """No whole answer within the deadline."""


class HandlerError(Exception):
    """Raised by a handler to answer with a named error instead of a reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RemoteError(BusError, HandlerError):
    """The far node answered with an error: a handler's error, as its requester sees
    it. A handler that lets one through answers its own requester with the same code.
    """


# Kinds of frame that belong to a request already under way, or to the link.
_NOT_REQUESTS = frozenset(
    {Kind.REPLY, Kind.ERROR, Kind.DATA, Kind.CANCEL, Kind.HELLO, Kind.HEARTBEAT}
)


@dataclass(frozen=True)
class Message:
    """A request as its handler sees it, or a reply as its requester sees it."""

    kind: Kind
    origin: str
    meta: Mapping[str, Any]
    data: bytes = b""
    pieces: tuple[bytes, ...] = ()
    """A handler's reply data already in pieces of at most PIECE_SIZE bytes, in
    place of `data`: each is sent as it is, which saves cutting copies of one
    buffer (a relay reads a chunk so). What arrives over the bus has `data`."""


Handler = Callable[[Message], Awaitable[Message]]


def _pieces_of(data: bytes | tuple[bytes, ...]) -> tuple[int, Iterator[bytes]]:
    """How many DATA pieces `data` makes, and the pieces, cut one at a time as
    they are sent (so the copies do not all exist at once).

    Pieces given over PIECE_SIZE are refused with `FrameError` before anything
    is sent: a frame that cannot be encoded would otherwise be dropped on the
    way and leave the requester waiting out its deadline.
    """
    if isinstance(data, tuple):
        if any(len(piece) > PIECE_SIZE for piece in data):
            raise FrameError(f"a piece of data over {PIECE_SIZE} bytes")
        return len(data), iter(data)

    count = -(-len(data) // PIECE_SIZE)
    return count, (data[at : at + PIECE_SIZE] for at in range(0, len(data), PIECE_SIZE))


def topology_hash(topology: Topology) -> str:
    """A digest of the tree's shape and chunk size: nodes that agree on it link at
    once; others only after `treescale.topology_change.link_refusal` found no
    conflict."""
    shape = sorted(
        (node.name, node.id, node.parent or "", sorted(node.roles))
        for node in topology.nodes
    )
    facts = [topology.cluster, topology.chunk_size, shape]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()


@dataclass
class _Pending:
    """A request of ours waiting for its answer."""

    dest: str
    link: str | None
    max_data: int
    done: "Deferred[Message]"
    on_progress: Callable[[], None] | None
    meta: Mapping[str, Any] | None = None
    pieces: list[bytes] = field(default_factory=list)
    received: int = 0


@dataclass
class _Inbound:
    """A request to us whose data is still arriving, or whose handler runs."""

    kind: Kind
    origin: str
    meta: Mapping[str, Any]
    max_data: int
    pieces: list[bytes] = field(default_factory=list)
    received: int = 0
    # `started` is set before the handler runs, `running` once it has returned its
    # Deferred: a handler answering at once sends its reply before `running` is
    # set, and that reply's data must not be taken for more request data.
    started: bool = False
    running: "Deferred[None] | None" = None
    expiry: IDelayedCall | None = None


class BusNode(MultiService):
    """One node's view of the bus, run as a service."""

    log = Logger()

    def __init__(
        self,
        topology: Topology,
        me: NodeConfig,
        reactor: IReactorTCP,
        clock: IReactorTime,
        link_settings: LinkSettings = DEFAULT_LINK_SETTINGS,
        max_request_data: int | None = None,
        tls: BusTls | None = None,
        local: LocalNodes | None = None,
    ) -> None:
        """`local`, when given, holds the nodes of this process: a parent among
        them is linked in memory (`treescale.bus.local`), not over TCP."""
        super().__init__()  # type: ignore[no-untyped-call]
        self.topology = topology
        self.tls = tls
        self.local = local
        self.me = me
        self.reactor = reactor
        self.clock = clock
        self.link_settings = link_settings
        # Chunks and records (up to 1 MiB) are the largest request data there is.
        self.max_request_data = max_request_data or (
            max(topology.chunk_size, 1024 * 1024) + PIECE_SIZE
        )
        primes = {node.name: nth_prime(node.id) for node in topology.nodes}
        self.routes = RouteTable(topology.parents, primes, me.name)
        self.links: dict[str, Link] = {}
        self.handlers: dict[Kind, Handler] = {}
        self.link_listeners: list[Callable[[str, bool], None]] = []
        # Called with the new topology after `apply_topology` took an edit.
        self.topology_listeners: list[Callable[[Topology], None]] = []
        # Called when what this node can reach may have changed (a link up or
        # down here, or a neighbour's word on what lies beyond it).
        self.reach_listeners: list[Callable[[], None]] = []
        # Frames this node may take over rather than pass on (a chunk cache on
        # the way, `treescale.store.transit`): by kind, a function given a frame
        # from a neighbour that is not for us, saying whether it took it.
        self.transit: dict[Kind, Callable[[Frame, str], bool]] = {}
        self._hash = topology_hash(topology)
        self._ids = {node.name: node.id for node in topology.nodes}
        # Ids each neighbour says it leads to, and what we last told each.
        self._reach: dict[str, frozenset[int]] = {}
        self._told: dict[str, object] = {}
        self._pending: dict[int, _Pending] = {}
        self._inbound: dict[int, _Inbound] = {}
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._port: IListeningPort | None = None
        self._ids_source = EventIds()
        self._refused_dials = 0
        self._backoff = backoffPolicy(
            initialDelay=DIAL_INITIAL_DELAY, maxDelay=DIAL_MAX_DELAY
        )
        self._dialer: ClientService | None = None
        if local is not None:
            local.add(self)
        self._dial_parent()

    def _dial_parent(self) -> None:
        """Start dialling the parent the topology gives us, if we have one."""
        if self.me.parent is None:
            return
        self._dialer = ClientService(
            self._parent_endpoint(self.topology.node(self.me.parent)),
            LinkFactory(self, self.me.parent),
            retryPolicy=self._dial_delay,
            clock=self.clock,
        )
        self._dialer.setServiceParent(self)

    # Topology edits.

    def apply_topology(self, topology: Topology) -> None:
        """Route by an edited tree from now on, as a reload that passed
        `treescale.topology_change.review_edit` asks.

        Links to nodes that are no longer our neighbours, or whose tree can no
        longer serve with the new one, are closed; a new or moved parent is
        dialled; then every topology listener hears of the edit. Requests in
        flight finish by the routes they left with.
        """
        me = topology.node(self.me.name)
        old_parent = self._parent_config()
        primes = {node.name: nth_prime(node.id) for node in topology.nodes}
        routes = RouteTable(topology.parents, primes, me.name)

        self.topology, self.me, self.routes = topology, me, routes
        self._hash = topology_hash(topology)
        self._ids = {node.name: node.id for node in topology.nodes}
        if self._parent_config() != old_parent:
            self._redial()
        for peer, link in list(self.links.items()):
            why = self._link_refusal(peer, link)
            if why is not None:
                link.abort(
                    f"topology version {topology.version}: {why}",
                    expected=peer not in self.routes.neighbours,
                )

        self._tell_neighbours()
        for listener in self.topology_listeners:
            listener(topology)

    def _parent_config(self) -> tuple[str, Address] | None:
        """Whom we dial, and where: a change of either means dialling again."""
        if self.me.parent is None:
            return None
        return self.me.parent, self.topology.node(self.me.parent).bus

    def _redial(self) -> None:
        """Stop dialling the old parent (closing its link) and dial the new one."""
        if self._dialer is not None:
            self._dialer.disownServiceParent()
            self._dialer = None
        self._refused_dials = 0
        self._dial_parent()

    def _link_refusal(self, peer: str, link: Link) -> str | None:
        """Why a live link has no place in our tree as it is now (None: it has)."""
        if peer not in self.routes.neighbours:
            return f"{peer} is no longer a neighbour of {self.me.name}"
        if link.hello is None:
            return None
        hello = link.hello
        why, _ = self.check_hello(hello.meta, peer, hello.payload, False)
        return why

    def _parent_endpoint(self, parent: NodeConfig) -> IStreamClientEndpoint:
        if self.local is not None and self.local.hosts(parent.name):
            return LocalEndpoint(
                self.local,
                self.me.name,
                parent.name,
                self.clock,
                lambda node: LinkFactory(node, None),
            )
        endpoint: IStreamClientEndpoint = TCP4ClientEndpoint(
            self.reactor, parent.bus.host, parent.bus.port, timeout=10
        )
        if self.tls is not None:
            endpoint = self.tls.dialing_endpoint(endpoint, parent.name, self.clock)
        return endpoint

    def _dial_delay(self, attempt: int) -> float:
        """Seconds before dialling the parent again.

        `ClientService` counts only connections that failed to open; a parent
        that accepts the connection and then refuses its handshake (a certificate
        it does not take, a HELLO it refuses) would be dialled every half second
        for ever. Refused handshakes count as failed attempts too.
        """
        return self._backoff(attempt + self._refused_dials)

    def dial_refused(self) -> None:
        """The link dialled to our parent closed before its handshake completed."""
        self._refused_dials += 1

    # Service life.

    def privilegedStartService(self) -> None:
        """Listen for children before the reactor runs: a busy port stops start-up
        with `CannotListenError` instead of leaving a node nobody can reach."""
        # listenTCP is annotated for a ServerFactory; a TLS wrapping factory serves
        # as one (Twisted's own TLS endpoints pass it the same way).
        self._port = self.reactor.listenTCP(
            self.me.bus.port,
            self.child_factory(),  # type: ignore[arg-type]
            interface=self.me.bus.host,
        )
        self.log.info(
            "bus of {node} listening on {address} ({transport})",
            node=self.me.name,
            address=self.me.bus,
            transport="plain TCP" if self.tls is None else "mutual TLS",
        )
        if self.tls is None and not is_loopback_host(self.me.bus.host):
            self.log.warn(
                "bus of {node} is plain TCP on {address}, off loopback: anyone who "
                "reaches it can join the tree (insecure_plain_bus is set)",
                node=self.me.name,
                address=self.me.bus,
            )
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def child_factory(self) -> IProtocolFactory:
        """What builds the links children open to us: TLS first when it is on."""
        factory = LinkFactory(self, None)
        if self.tls is None:
            return factory
        return self.tls.listening_factory(factory, self.clock)

    async def _stop(self) -> None:
        if self.local is not None:
            self.local.remove(self)
        await super().stopService()  # type: ignore[no-untyped-call]
        if self._port is not None:
            await self._port.stopListening()  # type: ignore[misc]
        for link in list(self.links.values()):
            link.abort("node stopping", expected=True)

    def stopService(self) -> "Deferred[None]":
        return Deferred.fromCoroutine(self._stop())

    # Handshake, called by links.

    def hello_frame(self) -> Frame:
        """Our HELLO: who we are, and (in its payload) every node of our tree, so
        a peer on another edition of the file can tell whether we can serve
        together (`treescale.topology_change.link_refusal`)."""
        meta = {
            "cluster": self.topology.cluster,
            "node": self.me.name,
            "version": PROTOCOL_VERSION,
            "topology": self._hash,
            "topology_version": self.topology.version,
            "chunk_size": self.topology.chunk_size,
        }
        nodes = json.dumps(hello_nodes(self.topology)).encode()
        return Frame(Kind.HELLO, self._new_id(), meta=meta, payload=nodes)

    # Reachability: which nodes each link leads to, told in heartbeats.

    def heartbeat_frame(self, peer: str | None = None) -> Frame:
        """A heartbeat for the link to `peer`, carrying the ids of every node that
        can be reached through us from there (nothing of `peer`'s own side)."""
        # Shortcoming: the ids travel in the frame's meta (16 KiB at most), which
        # holds about 2000 of them; a larger tree would need them in the payload.
        if peer is None:
            return Frame(Kind.HEARTBEAT, self._new_id())
        reach = sorted(self._reach_for(peer))
        return Frame(Kind.HEARTBEAT, self._new_id(), meta={"reach": reach})

    def _reach_for(self, peer: str) -> set[int]:
        """Ids of the nodes a neighbour reaches through us: ourselves, and what
        our other live links lead to."""
        ids = {self.me.id}
        for neighbour in self.links:
            if neighbour != peer:
                ids.add(self._ids.get(neighbour, 0))
                ids |= self._reach.get(neighbour, frozenset())
        ids.discard(0)
        return ids

    def heartbeat_received(self, peer: str, frame: Frame) -> None:
        """Take a neighbour's word on what lies beyond it; pass changes on."""
        reach = frame.meta.get("reach")
        if not isinstance(reach, list):
            return
        ids = frozenset(item for item in reach if type(item) is int)
        if self._reach.get(peer) == ids:
            return
        self._reach[peer] = ids
        self._tell_neighbours()
        self._reach_changed()

    def _reach_changed(self) -> None:
        for listener in self.reach_listeners:
            listener()

    def _tell_neighbours(self) -> None:
        """Send a heartbeat at once to each neighbour whose view through us has
        changed, so a link lost deep in the tree is known at the top in one trip
        rather than at the next heartbeats."""
        for name, link in list(self.links.items()):
            frame = self.heartbeat_frame(name)
            if self._told.get(name) != frame.meta["reach"]:
                self._told[name] = frame.meta["reach"]
                link.send(frame)

    def check_hello(
        self,
        meta: Mapping[str, Any],
        expected: str | None,
        payload: bytes = b"",
        name_the_one_behind: bool = True,
    ) -> tuple[str | None, str | None]:
        """Why a peer's HELLO is refused (None when accepted), and the peer's name.

        A HELLO checked again after our own edit is one the peer sent before: its
        version may be stale, so `name_the_one_behind` is then off."""
        peer = meta.get("node")
        if meta.get("cluster") != self.topology.cluster:
            return f"peer is of cluster {meta.get('cluster')!r}", None
        if meta.get("version") != PROTOCOL_VERSION:
            return f"peer speaks bus version {meta.get('version')!r}", None
        if not isinstance(peer, str):
            return "HELLO without a node name", None
        if meta.get("topology") != self._hash:
            why = self._other_edition(peer, meta, payload, name_the_one_behind)
            if why is not None:
                return why, None
        if expected is not None and peer != expected:
            return f"dialled {expected!r} but {peer!r} answered", None
        if expected is None and self._parent_of(peer) != self.me.name:
            return f"{peer!r} is not a child of {self.me.name!r}", None
        return None, peer

    def _other_edition(
        self, peer: str, meta: Mapping[str, Any], payload: bytes, log_behind: bool
    ) -> str | None:
        """Why a peer whose tree differs from ours cannot link (None: it can, and
        the node behind is named in the log)."""
        try:
            nodes = json.loads(payload) if payload else None
        except ValueError:
            nodes = None
        why = link_refusal(self.topology, nodes, meta.get("chunk_size"))
        theirs = meta.get("topology_version")
        if why is not None:
            return (
                f"peer {peer!r} (topology version {theirs}) has a tree this node "
                f"(version {self.topology.version}) cannot serve with: {why}"
            )
        if log_behind and theirs != self.topology.version:
            self.log.warn(
                "bus peer {peer} runs topology version {theirs}, {node} runs "
                "{ours}: linking while the edit rolls out; reload the one behind",
                peer=peer,
                theirs=theirs,
                node=self.me.name,
                ours=self.topology.version,
            )
        return None

    def check_identity(self, peer: str, transport: object) -> str | None:
        """Why a peer whose HELLO passed is refused on the certificate it showed on
        `transport` (None when accepted); on a plain bus every such HELLO is
        believed, as is a node of this process linked in memory."""
        if self.tls is None or isinstance(transport, LocalTransport):
            return None
        return self.tls.refusal(peer, peer_certificate(transport))

    def tls_failure(self, reason: Failure | None, transport: object) -> str | None:
        """Why a link's TLS handshake failed, in words; None on a plain bus or
        when the link ended for another reason (or was linked in memory)."""
        if self.tls is None or isinstance(transport, LocalTransport):
            return None
        return self.tls.handshake_failure(reason, transport)

    def _parent_of(self, name: str) -> str | None:
        return self.topology.parents.get(name)

    def link_up(self, peer: str, link: Link) -> None:
        """Take a link whose handshake passed, unless the peer is linked and alive.

        A second link for a peer heard from within the last heartbeat interval is
        refused: a real peer that reconnects has lost its old connection, and one
        that lost it silently falls quiet first. Without this, anyone who can reach
        the bus port could knock a live relay off by sending its HELLO.
        """
        # Shortcoming: on a plain bus (no [tls]) peers are not authenticated. A
        # HELLO names a node and the topology's hash, both public; an impostor is
        # refused only while the real node is linked and talking. With TLS a peer
        # is the node its certificate names, so this rule only orders reconnects.
        old = self.links.get(peer)
        if old is not None and old is not link:
            quiet = self.clock.seconds() - old.last_heard
            if quiet < self.link_settings.heartbeat_interval:
                link.abort(
                    f"{peer} is already linked from {old.peer_address} and was heard "
                    f"{quiet:.1f} s ago; refusing a second link from "
                    f"{link.peer_address}"
                )
                return
            old.abort(f"replaced by a newer link from {link.peer_address}")
            self._fail_requests_on(peer, LinkLost(f"link to {peer} replaced"))
        self.links[peer] = link
        if peer == self.me.parent:
            self._refused_dials = 0
        self.log.info(
            "bus link up: {node} <-> {peer} ({address})",
            node=self.me.name,
            peer=peer,
            address=link.peer_address,
        )
        self._told.pop(peer, None)
        self._tell_neighbours()
        self._reach_changed()
        for listener in self.link_listeners:
            listener(peer, True)

    def link_lost(self, peer: str, link: Link) -> None:
        # Shortcoming: only requests that left on this link fail at once. A request
        # whose route breaks further on (a pass-through node losing its next link)
        # waits for its deadline, since pass-through nodes keep no request state.
        if self.links.get(peer) is not link:
            return
        del self.links[peer]
        self._reach.pop(peer, None)
        self._told.pop(peer, None)
        self._tell_neighbours()
        self._reach_changed()
        closed_because = self._closed_on_purpose(peer, link)
        if closed_because is not None:
            self.log.info(
                "bus link closed: {node} <-> {peer} ({why})",
                node=self.me.name,
                peer=peer,
                why=closed_because,
            )
        else:
            self.log.warn(
                "bus link down: {node} <-> {peer}", node=self.me.name, peer=peer
            )
        self._fail_requests_on(peer, LinkLost(f"link to {peer} lost"))
        self._forget_inbound_via(peer)
        for listener in self.link_listeners:
            listener(peer, False)

    def _fail_requests_on(self, peer: str, error: BusError) -> None:
        """Fail every request of ours that left over the link to `peer`."""
        for event_id, pending in list(self._pending.items()):
            if pending.link == peer:
                self._fail(event_id, error)

    @property
    def pending_requests(self) -> int:
        """Requests this node sent and still waits to hear the end of."""
        return len(self._pending)

    def reachable(self, name: str) -> bool:
        """Whether every link on the way to `name` is up, as far as the nodes on
        the way have told us (always true for this node)."""
        if name == self.me.name:
            return True
        try:
            hop = self.routes.next_hop(name)
        except RouteError:
            return False
        if hop not in self.links:
            return False
        return hop == name or self._ids.get(name, 0) in self._reach.get(hop, ())

    # Requests, the requester's side.

    def request(
        self,
        dest: str,
        kind: Kind,
        meta: Mapping[str, Any],
        data: bytes = b"",
        *,
        max_reply: int = 1024 * 1024,
        timeout: float = DEFAULT_TIMEOUT,
        on_progress: Callable[[], None] | None = None,
    ) -> "Deferred[Message]":
        """Send a request to `dest` and get its reply; cancel the Deferred to stop it.

        `on_progress` is called when the reply starts to arrive and again at each
        piece of its data: callers racing several holders use it to tell a slow
        holder from one that is still sending.
        """
        event_id = self._new_id()
        done: Deferred[Message] = Deferred(lambda _: self._cancel(event_id))
        try:
            hop = None if dest == self.me.name else self.routes.next_hop(dest)
        except RouteError as e:
            done.errback(Unreachable(str(e)))
            return done
        if hop is not None and hop not in self.links:
            done.errback(Unreachable(f"no link toward {dest} (via {hop})"))
            return done

        self._pending[event_id] = _Pending(dest, hop, max_reply, done, on_progress)
        timer = self.clock.callLater(
            timeout, self._fail, event_id, RequestTimeout(f"{kind.name} to {dest}")
        )
        done.addBoth(self._settled, timer)

        first = Frame(kind, event_id, meta={**meta, "origin": self.me.name})
        ensureDeferred(self._send_stream(dest, first, data)).addErrback(
            self._send_failed, event_id
        )
        return done

    def _settled(self, result: object, timer: Any) -> object:
        if timer.active():
            timer.cancel()
        return result

    def _send_failed(self, failure: Failure, event_id: int) -> None:
        self._fail(event_id, LinkLost(f"sending failed: {failure.getErrorMessage()}"))

    def _cancel(self, event_id: int) -> None:
        pending = self._pending.pop(event_id, None)
        if pending is not None:
            self._send_to(
                pending.dest, Frame(Kind.CANCEL, self._new_id(), correlation=event_id)
            )

    def _fail(self, event_id: int, error: Exception) -> None:
        pending = self._pending.pop(event_id, None)
        if pending is not None and not pending.done.called:
            if not isinstance(error, LinkLost | Unreachable):
                self._send_to(
                    pending.dest,
                    Frame(Kind.CANCEL, self._new_id(), correlation=event_id),
                )
            pending.done.errback(error)

    def _answer_arrived(self, frame: Frame) -> None:
        pending = self._pending.get(frame.correlation)
        if pending is None:
            return
        if frame.kind == Kind.ERROR:
            del self._pending[frame.correlation]
            code = str(frame.meta.get("code", "error"))
            pending.done.errback(RemoteError(code, str(frame.meta.get("message", ""))))
            return
        if frame.kind == Kind.REPLY:
            pending.meta = frame.meta
        if pending.on_progress is not None:
            pending.on_progress()
        if frame.payload:
            pending.received += len(frame.payload)
            if pending.received > pending.max_data:
                self._fail(frame.correlation, BusError("reply larger than allowed"))
                return
            pending.pieces.append(frame.payload)
        if frame.flags & Flag.END and pending.meta is not None:
            del self._pending[frame.correlation]
            reply = Message(
                Kind.REPLY, pending.dest, pending.meta, b"".join(pending.pieces)
            )
            pending.done.callback(reply)

    # Requests, the handler's side.

    def _request_arrived(self, frame: Frame, came_from: str | None) -> None:
        origin = frame.meta.get("origin")
        if not isinstance(origin, str) or origin not in self._ids:
            self.log.warn("dropped {kind} without a known origin", kind=frame.kind.name)
            return
        if not self._came_the_right_way(origin, came_from):
            self.log.warn(
                "dropped {kind} from {peer} claiming origin {origin}",
                kind=frame.kind.name,
                peer=came_from,
                origin=origin,
            )
            return
        if len(self._inbound) >= self.link_settings.max_inbound_requests:
            self._answer_error(
                origin,
                frame.event_id,
                "busy",
                f"{self.me.name} has {len(self._inbound)} requests in hand",
            )
            return
        handler = self.handlers.get(frame.kind)
        if handler is None:
            self._answer_error(
                origin,
                frame.event_id,
                "unsupported",
                f"{self.me.name} does not handle {frame.kind.name}",
            )
            return
        inbound = _Inbound(frame.kind, origin, frame.meta, self.max_request_data)
        inbound.expiry = self.clock.callLater(
            self.link_settings.inbound_timeout, self._inbound_expired, frame.event_id
        )
        self._inbound[frame.event_id] = inbound
        self._inbound_data(frame.event_id, frame)

    def _came_the_right_way(self, origin: str, came_from: str | None) -> bool:
        """Whether a request claiming `origin` arrived over the link toward it."""
        if came_from is None:
            return origin == self.me.name
        return origin != self.me.name and self.routes.next_hop(origin) == came_from

    # Shortcoming: an unfinished request is forgotten after inbound_timeout, or at
    # once only when the link toward its origin here drops; an origin that leaves
    # behind another node is not told to this one, so its data waits out the
    # timeout (bounded by max_inbound_requests).
    def _inbound_expired(self, event_id: int) -> None:
        """Forget a request whose data stopped coming: it must not pin memory."""
        inbound = self._inbound.get(event_id)
        if inbound is None or inbound.started:
            return
        del self._inbound[event_id]
        self.log.warn(
            "gave up {kind} from {origin}: its data stopped after {nbytes} bytes",
            kind=inbound.kind.name,
            origin=inbound.origin,
            nbytes=inbound.received,
        )
        self._answer_error(
            inbound.origin, event_id, "timeout", "request data stopped arriving"
        )

    def _inbound_data(self, event_id: int, frame: Frame) -> None:
        inbound = self._inbound.get(event_id)
        if inbound is None or inbound.started:
            return
        inbound.received += len(frame.payload)
        if inbound.received > inbound.max_data:
            del self._inbound[event_id]
            self._answer_error(
                inbound.origin,
                event_id,
                "too_large",
                f"request data over {inbound.max_data} bytes",
            )
            return
        if frame.payload:
            inbound.pieces.append(frame.payload)
        if frame.flags & Flag.END:
            message = Message(
                inbound.kind, inbound.origin, inbound.meta, b"".join(inbound.pieces)
            )
            inbound.pieces = []
            inbound.started = True
            if inbound.expiry is not None and inbound.expiry.active():
                inbound.expiry.cancel()
            inbound.running = ensureDeferred(self._handle(event_id, message))

    async def _handle(self, event_id: int, message: Message) -> None:
        """Run the handler, then stream its reply; a CANCEL stops either step."""
        try:
            reply = await self._run_handler(event_id, message)
            if reply is None:
                return
            first = Frame(
                Kind.REPLY, self._new_id(), correlation=event_id, meta=dict(reply.meta)
            )
            await self._send_stream(message.origin, first, reply.pieces or reply.data)
        except CancelledError:
            return
        except (BusError, ConnectionError) as e:
            self.log.info(
                "reply to {origin} not sent: {why}", origin=message.origin, why=str(e)
            )
        except FrameError as e:
            self.log.error(
                "reply of {kind} cannot be encoded: {why}",
                kind=message.kind.name,
                why=str(e),
            )
            self._answer_error(
                message.origin,
                event_id,
                "internal",
                f"{self.me.name} made a reply it cannot send",
            )
        finally:
            self._inbound.pop(event_id, None)

    async def _run_handler(self, event_id: int, message: Message) -> Message | None:
        """The handler's reply, or None once an ERROR has been sent instead."""
        handler = self.handlers[message.kind]
        try:
            return await handler(message)
        except HandlerError as e:
            self._answer_error(message.origin, event_id, e.code, e.message)
        except CancelledError:
            raise
        except Exception:
            self.log.failure("handler of {kind} failed", kind=message.kind.name)
            self._answer_error(
                message.origin,
                event_id,
                "internal",
                f"{self.me.name} failed to handle {message.kind.name}",
            )
        return None

    def _cancel_arrived(self, frame: Frame) -> None:
        inbound = self._inbound.pop(frame.correlation, None)
        if inbound is not None and inbound.running is not None:
            inbound.running.cancel()

    def _forget_inbound_via(self, peer: str) -> None:
        """Drop requests whose origin was reached over a link that just went away."""
        for event_id, inbound in list(self._inbound.items()):
            if (
                inbound.origin != self.me.name
                and self.routes.next_hop(inbound.origin) == peer
            ):
                del self._inbound[event_id]
                if inbound.running is not None:
                    inbound.running.cancel()

    def _answer_error(
        self, origin: str, event_id: int, code: str, message: str
    ) -> None:
        frame = Frame(
            Kind.ERROR,
            self._new_id(),
            correlation=event_id,
            flags=Flag.END,
            meta={"code": code, "message": message},
        )
        self._send_to(origin, frame)

    def _closed_on_purpose(self, peer: str, link: Link) -> str | None:
        """Why a link went down on purpose, or None when it was lost: this node
        closed it (stopping, or an edit took the peer away), or this node is
        stopping, or its peer in this process was stopped (a node leaves the
        process's table as its stop begins). A peer in another process that
        stops cannot be told apart from one that crashed: a warning."""
        if link.closed_because is not None:
            return link.closed_because
        if not self.running:
            return "node stopping"
        if link.in_memory and self.local is not None and peer not in self.local.nodes:
            return "node stopped"
        return None

    # Sending and routing frames.

    async def _send_stream(
        self, dest: str, first: Frame, data: bytes | tuple[bytes, ...]
    ) -> None:
        """Send a first frame then `data` as DATA pieces, waiting on backpressure;
        data given in pieces goes a piece a frame, as it is."""
        count, pieces = self._pieces_for(dest, data)
        if not count:
            self._send_to(dest, replace(first, flags=first.flags | Flag.END))
            return
        self._send_to(dest, first)
        correlation = first.correlation or first.event_id
        for index, piece in enumerate(pieces):
            last = index == count - 1
            await self._wait_writable(dest)
            frame = Frame(
                Kind.DATA,
                self._new_id(),
                correlation=correlation,
                flags=Flag.END if last else Flag.NONE,
                payload=piece,
            )
            self._send_to(dest, frame)

    def _pieces_for(
        self, dest: str, data: bytes | tuple[bytes, ...]
    ) -> tuple[int, Iterator[bytes]]:
        """The DATA pieces of `data` to `dest`: one piece, the data as it is, to a
        neighbour linked in memory (a frame there is never encoded, so it needs
        no cutting, and the data arrives uncopied); else `_pieces_of`."""
        if isinstance(data, bytes) and data and self.in_memory(dest):
            return 1, iter((data,))
        return _pieces_of(data)

    def in_memory(self, name: str) -> bool:
        """Whether `name` is a neighbour linked in memory (`treescale.bus.local`),
        so that data sent to it is handed over as it is."""
        link = self.links.get(name)
        return link is not None and link.in_memory

    async def _wait_writable(self, dest: str) -> None:
        if dest == self.me.name:
            return
        link = self.links.get(self.routes.next_hop(dest))
        if link is None:
            raise Unreachable(f"no link toward {dest}")
        await link.wait_writable()

    def _send_to(self, dest: str, frame: Frame) -> None:
        """Route a frame of ours to one node (ourselves included)."""
        try:
            route = self.routes.route_to([dest])
        except RouteError as e:
            self.log.warn("cannot route to {dest}: {why}", dest=dest, why=str(e))
            return
        self._route(replace(frame, route=route), came_from=None, link=None)

    def frame_received(self, peer: str, frame: Frame, link: Link) -> None:
        """A frame arrived from a neighbour: drop duplicates, then route it."""
        if frame.event_id in self._seen:
            return
        self._seen[frame.event_id] = None
        if len(self._seen) > SEEN_EVENTS:
            self._seen.popitem(last=False)
        self._route(frame, came_from=peer, link=link)

    def _route(self, frame: Frame, came_from: str | None, link: Link | None) -> None:
        if frame.flags & Flag.BROADCAST:
            deliver = True
            forwards = {peer: 0 for peer in self.routes.flood(came_from)}
        else:
            try:
                step = self.routes.step(frame.route, came_from)
            except RouteError as e:
                self.log.warn(
                    "dropped {kind} from {peer}: {why}",
                    kind=frame.kind.name,
                    peer=came_from,
                    why=str(e),
                )
                return
            deliver, forwards = step.deliver, dict(step.forwards)

        if forwards and came_from is not None and frame.hops <= 1:
            self.log.warn("dropped {kind}: hop limit reached", kind=frame.kind.name)
            forwards = {}
        if forwards and self._forged_origin(frame, came_from):
            self.log.warn(
                "dropped {kind} from {peer} claiming origin {origin}",
                kind=frame.kind.name,
                peer=came_from,
                origin=frame.meta.get("origin"),
            )
            return
        if forwards and not deliver and self._taken_over(frame, came_from):
            return
        for peer, route in forwards.items():
            self._forward(peer, replace(frame, route=route, hops=frame.hops - 1), link)
        if deliver:
            self._deliver(frame, came_from)

    def _forged_origin(self, frame: Frame, came_from: str | None) -> bool:
        """Whether a request from a neighbour names an origin that is not on that
        neighbour's side of the tree.

        The node a request is for checks this too (`_came_the_right_way`), but
        only against the last link: a pass-through node is the one that can see
        that a child claims to speak for a sibling.
        """
        if came_from is None or frame.kind in _NOT_REQUESTS:
            return False
        origin = frame.meta.get("origin")
        if not isinstance(origin, str) or origin not in self._ids:
            return True
        return not self._came_the_right_way(origin, came_from)

    def _taken_over(self, frame: Frame, came_from: str | None) -> bool:
        """Whether a transit handler took a neighbour's frame we would pass on."""
        taker = self.transit.get(frame.kind)
        return came_from is not None and taker is not None and taker(frame, came_from)

    def _forward(self, peer: str, frame: Frame, incoming: Link | None) -> None:
        out = self.links.get(peer)
        if out is None:
            self.log.warn(
                "dropped {kind} for {peer}: link down", kind=frame.kind.name, peer=peer
            )
            return
        try:
            out.send(frame)
        except FrameError as e:
            self.log.warn(
                "dropped {kind} for {peer}: cannot pass it on: {why}",
                kind=frame.kind.name,
                peer=peer,
                why=str(e),
            )
            return
        # Shortcoming: holding the incoming link pauses all of its traffic, not only
        # what goes to the slow peer; a child that stops reading freezes its
        # parent's link to the sibling it asked until stall_timeout drops it. Flow
        # control per destination would confine the stall to the slow peer.
        if incoming is not None and not out.writable:
            incoming.hold()
            out.wait_writable().addBoth(lambda _: incoming.release())

    def _deliver(self, frame: Frame, came_from: str | None) -> None:
        if frame.kind in (Kind.REPLY, Kind.ERROR):
            self._answer_arrived(frame)
        elif frame.kind == Kind.DATA:
            # A request a node sends itself has its id in both tables: its data
            # belongs to the handler until the handler starts, then to the reply.
            inbound = self._inbound.get(frame.correlation)
            if inbound is not None and not inbound.started:
                self._inbound_data(frame.correlation, frame)
            elif frame.correlation in self._pending:
                self._answer_arrived(frame)
        elif frame.kind == Kind.CANCEL:
            self._cancel_arrived(frame)
        elif frame.kind not in (Kind.HELLO, Kind.HEARTBEAT):
            self._request_arrived(frame, came_from)

    def _new_id(self) -> int:
        return self._ids_source.next()


class EventIds:
    """Event ids: unpredictable 63-bit numbers, never zero.

    Drawn from the operating system's random source a batch at a time: one
    system call a frame (as `random.SystemRandom` makes) was a few percent of a
    relay's time sending a chunk as sixteen frames.
    """

    BATCH = 512

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> int:
        if self._at >= len(self._pool):
            self._pool = os.urandom(8 * self.BATCH)
            self._at = 0
        raw = self._pool[self._at : self._at + 8]
        self._at += 8
        return (int.from_bytes(raw, "big") >> 1) + 1
