"""Tests of mutual TLS on bus links: who gets a link and who is refused, and why.

Every test runs real TLS (OpenSSL through `TLSMemoryBIOProtocol`) between bus nodes
wired in memory: the listening node's factory and the dialling node's connection
are the ones the nodes themselves hand to a `MemoryReactorClock`, joined by
`ConnectionCompleter` over `twisted.test.iosim` transports. No socket is opened; the
certificates are made afresh by `treescale.bus.certs`. OpenSSL checks validity
dates against the real clock, so an expired certificate is one that ended in the
real past.
"""

import datetime
from collections.abc import Iterator, Sequence

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from tests.unit.bustest import success, topology
from treescale.bus.certs import Issued, make_ca, make_node_certificate
from treescale.bus.frames import Frame, FrameDecoder, FrameError, Kind, encode
from treescale.bus.link import LinkFactory
from treescale.bus.node import BusNode, Message
from treescale.bus.tls import BusTls
from treescale.bus.tls_settings import node_identity
from treescale.config import Topology

CLUSTER = "test"

# The test tree of `tests.unit.bustest`: root (registry) with children a and b, and
# a1 below a.
TREE = topology(cluster=CLUSTER)

CA = make_ca(CLUSTER)
OTHER_CA = make_ca(CLUSTER)

A_LONG_TIME_AGO = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)


def issued(
    name: str,
    ca: Issued = CA,
    days: int = 365,
    not_before: datetime.datetime | None = None,
) -> Issued:
    """A certificate of `ca` naming node `name` of the test cluster."""
    return make_node_certificate(ca, CLUSTER, name, days, not_before=not_before)


def credentials(name: str, own: Issued | None = None, ca: Issued = CA) -> BusTls:
    """Bus credentials of node `name`: `own` (default: its own certificate of the
    cluster CA) and trust in `ca` alone."""
    own = own if own is not None else issued(name)
    return BusTls(CLUSTER, name, [ca.certificate], own.certificate, own.key)


class World:
    """Bus nodes of one tree on one memory reactor: started, never on a socket."""

    def __init__(self, tree: Topology = TREE) -> None:
        self.tree = tree
        self.reactor = MemoryReactorClock()  # type: ignore[no-untyped-call]
        self.clocks: dict[str, Clock] = {}
        self.nodes: dict[str, BusNode] = {}
        self.pumps: list[iosim.IOPump] = []

    def clock(self, name: str) -> Clock:
        """The clock of node `name`, made on first use."""
        return self.clocks.setdefault(name, Clock())

    def node(self, name: str, tls: BusTls | None) -> BusNode:
        """Node `name` listening and, below the root, dialling its parent."""
        node = BusNode(
            self.tree, self.tree.node(name), self.reactor, self.clock(name), tls=tls
        )
        node.privilegedStartService()
        node.startService()  # type: ignore[no-untyped-call]
        self.nodes[name] = node
        return node

    def complete_dials(self) -> None:
        """Join every pending dial to the listener on its port, and let the TLS
        handshake and the HELLOs run to their end."""
        completer = iosim.ConnectionCompleter(self.reactor)
        while self.reactor.tcpClients:
            pump = completer.succeedOnce(greet=True)
            assert pump is not None, "a dial with no listener on its port"
            self.pumps.append(pump)
        self.flush()

    def join(self, server: IProtocol | None, client: IProtocol | None) -> None:
        """Connect two protocols built by hand, and run them to quiet."""
        pump: iosim.IOPump = iosim.connect(  # type: ignore[no-untyped-call]
            server,
            fake_transport(server, is_server=True),
            client,
            fake_transport(client, is_server=False),
            greet=True,
        )
        self.pumps.append(pump)
        self.flush()

    def flush(self) -> None:
        """Move bytes and run the nodes' due calls (the TLS layer's gathered
        writes among them) until nothing moves."""
        for _ in range(100):
            for clock in self.clocks.values():
                clock.advance(0)
            flushes = [pump.flush for pump in self.pumps]
            if not any([flush() for flush in flushes]):  # type: ignore[no-untyped-call]
                return
        raise AssertionError("the links never went quiet")


ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


def fake_transport(
    protocol: IProtocol | None, *, is_server: bool
) -> iosim.FakeTransport:
    """An in-memory transport for one end of a connection."""
    make = iosim.FakeTransport
    return make(protocol, isServer=is_server)  # type: ignore[no-untyped-call]


@pytest.fixture
def logs() -> Iterator[Sequence[LogEvent]]:
    """Every event logged during the test."""
    with capturedLogs() as events:
        yield events


def logged(events: Sequence[LogEvent]) -> str:
    """The events' text, one line each."""
    return "\n".join(formatEvent(event) for event in events)


def handshake_refusals(events: Sequence[LogEvent]) -> list[tuple[str, str]]:
    """Each TLS refusal logged, as the link's direction ("to" a parent we dialled,
    "from" a child) and the reason."""
    return [
        (event["direction"], event["why"])
        for event in events
        if "refused in the TLS handshake" in event.get("log_format", "")
    ]


async def echo_handler(message: Message) -> Message:
    """Answer with what the request said and carried."""
    return Message(Kind.REPLY, "", {"echo": message.meta.get("say")}, message.data)


def test_children_with_certificates_of_the_cluster_ca_link_and_talk() -> None:
    """Nodes with certificates of the cluster's CA link over TLS and carry requests."""
    world = World()
    root = world.node("root", credentials("root"))
    a = world.node("a", credentials("a"))
    b = world.node("b", credentials("b"))
    root.handlers[Kind.CHUNK_GET] = echo_handler

    world.complete_dials()

    assert sorted(root.links) == ["a", "b"]
    assert list(a.links) == ["root"] and list(b.links) == ["root"]
    data = bytes(range(256)) * 2048
    reply = a.request("root", Kind.CHUNK_GET, {"say": "hi"}, data)
    world.flush()
    answer = success(reply)
    assert answer.meta["echo"] == "hi"
    assert answer.data == data


def test_listener_refuses_a_certificate_of_another_ca(
    logs: Sequence[LogEvent],
) -> None:
    """A child whose certificate comes from another CA gets no link, and the parent
    logs the TLS refusal."""
    world = World()
    root = world.node("root", credentials("root"))
    impostor = world.node("a", credentials("a", issued("a", OTHER_CA)))

    world.complete_dials()

    assert root.links == {} and impostor.links == {}
    assert handshake_refusals(logs) == [
        ("to", "the peer refused us: tlsv1 alert unknown ca"),
        (
            "from",
            "its certificate (a.test.treescale) is not signed by the cluster's CA",
        ),
    ]
    assert "bus link up" not in logged(logs)


def test_dialer_refuses_a_parent_certificate_of_another_ca(
    logs: Sequence[LogEvent],
) -> None:
    """A child refuses a parent whose certificate comes from another CA."""
    world = World()
    root = world.node("root", credentials("root", issued("root", OTHER_CA)))
    child = world.node("a", credentials("a"))

    world.complete_dials()

    assert root.links == {} and child.links == {}
    assert (
        "to",
        "its certificate (root.test.treescale) is not signed by the cluster's CA",
    ) in handshake_refusals(logs)


def test_listener_refuses_a_hello_naming_another_node_than_the_certificate(
    logs: Sequence[LogEvent],
) -> None:
    """A child with a good certificate for "a" that says HELLO as "b" is refused."""
    world = World()
    root = world.node("root", credentials("root"))
    world.node("b", credentials("b", issued("a")))

    world.complete_dials()

    assert root.links == {}
    expected = (
        f"HELLO says 'b' but its certificate names {node_identity(CLUSTER, 'a')}, "
        f"not {node_identity(CLUSTER, 'b')}"
    )
    assert expected in logged(logs)


def test_dialer_refuses_a_parent_whose_certificate_names_another_node(
    logs: Sequence[LogEvent],
) -> None:
    """A child refuses, in the handshake, a parent certificate naming another node,
    so the parent never reads the child's HELLO."""
    world = World()
    root = world.node("root", credentials("root", issued("b")))
    child = world.node("a", credentials("a"))

    world.complete_dials()

    assert root.links == {} and child.links == {}
    assert (
        "to",
        f"its certificate names {node_identity(CLUSTER, 'b')}, "
        f"not {node_identity(CLUSTER, 'root')}",
    ) in handshake_refusals(logs)
    assert "HELLO" not in logged(logs)


def test_listener_refuses_a_client_without_a_certificate(
    logs: Sequence[LogEvent],
) -> None:
    """A TLS client that trusts the CA but presents no certificate gets no link."""
    world = World()
    root = world.node("root", credentials("root"))
    anonymous = BusNode(TREE, TREE.node("a"), world.reactor, world.clock("a"))
    trust = trustRootFromCertificates(  # type: ignore[no-untyped-call]
        [Certificate.loadPEM(CA.certificate_pem)]
    )
    creator = optionsForClientTLS(node_identity(CLUSTER, "root"), trustRoot=trust)
    client = TLSMemoryBIOFactory(
        creator, True, LinkFactory(anonymous, "root"), world.clocks["a"]
    )

    world.join(
        root.child_factory().buildProtocol(ADDRESS),
        client.buildProtocol(ADDRESS),
    )

    assert root.links == {} and anonymous.links == {}
    assert ("from", "peer did not return a certificate") in handshake_refusals(logs)


@pytest.mark.parametrize("expired", ["child", "parent"])
def test_expired_certificate_is_refused(expired: str, logs: Sequence[LogEvent]) -> None:
    """A certificate of the cluster CA that has expired gets no link, either end."""
    world = World()
    root_own = issued("root", days=1, not_before=A_LONG_TIME_AGO)
    child_own = issued("a", days=1, not_before=A_LONG_TIME_AGO)
    root = world.node(
        "root", credentials("root", root_own if expired == "parent" else None)
    )
    child = world.node("a", credentials("a", child_own if expired == "child" else None))

    world.complete_dials()

    assert root.links == {} and child.links == {}
    refused_by = "from" if expired == "child" else "to"
    name = node_identity(CLUSTER, "a" if expired == "child" else "root")
    assert (refused_by, f"its certificate ({name}) has expired") in handshake_refusals(
        logs
    )


def test_valid_certificate_of_a_node_that_is_not_a_child_is_refused(
    logs: Sequence[LogEvent],
) -> None:
    """ "a1" with its own good certificate may not link to the root, whose child it
    is not."""
    world = World()
    root = world.node("root", credentials("root"))
    a1 = BusNode(TREE, TREE.node("a1"), world.reactor, world.clock("a1"))
    dialing = credentials("a1").dialing_factory(
        LinkFactory(a1, "root"), "root", world.clocks["a1"]
    )

    world.join(
        root.child_factory().buildProtocol(ADDRESS), dialing.buildProtocol(ADDRESS)
    )

    assert root.links == {} and a1.links == {}
    assert "'a1' is not a child of 'root'" in logged(logs)


class PlainPeer(Protocol):
    """A plain TCP client that says HELLO in frames and keeps what comes back."""

    def __init__(self, hello: Frame) -> None:
        self.hello = hello
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(encode(self.hello))

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


def test_plain_tcp_peer_speaking_frames_gets_nothing(
    logs: Sequence[LogEvent],
) -> None:
    """A plain TCP peer that sends a right HELLO gets no frame back, not even the
    listener's HELLO, and is disconnected."""
    world = World()
    root = world.node("root", credentials("root"))
    child = BusNode(TREE, TREE.node("a"), world.reactor, world.clock("a"))
    peer = PlainPeer(child.hello_frame())

    world.join(root.child_factory().buildProtocol(ADDRESS), peer)

    assert peer.lost
    assert root.links == {}
    try:
        frames = FrameDecoder().feed(peer.received)
    except FrameError:
        frames = []
    assert frames == []
    assert CLUSTER.encode() not in peer.received
    assert [direction for direction, _ in handshake_refusals(logs)] == ["from"]


def test_refused_handshakes_back_the_dialer_off() -> None:
    """A child whose handshakes keep failing waits longer before each new dial,
    though every TCP connection it opens succeeds."""
    world = World()
    world.node("root", credentials("root", issued("root", OTHER_CA)))
    child = world.node("a", credentials("a"))
    clock = world.clocks["a"]

    waits = []
    for _ in range(5):
        world.complete_dials()
        (retry,) = clock.getDelayedCalls()
        waits.append(retry.getTime() - clock.seconds())
        clock.advance(waits[-1])

    assert child.links == {}
    assert waits[-1] > waits[0] + 1.0


def test_a_full_tls_transport_pauses_its_link() -> None:
    """Backpressure passes through TLS: when the socket under a link is full the
    link stops taking data, and the request flows once the socket drains."""
    world = World()
    root = world.node("root", credentials("root"))
    world.node("a", credentials("a"))
    received: list[int] = []

    async def count(message: Message) -> Message:
        received.append(len(message.data))
        return Message(Kind.REPLY, "", {})

    world.nodes["a"].handlers[Kind.CHUNK_PUT] = count
    world.complete_dials()
    (pump,) = world.pumps
    socket_producer = pump.serverIO.producer
    data = b"x" * (1024 * 1024)

    socket_producer.pauseProducing()
    reply = root.request("a", Kind.CHUNK_PUT, {}, data)
    world.flush()
    assert not root.links["a"].writable
    assert received == []
    socket_producer.resumeProducing()
    world.flush()

    assert received == [len(data)]
    success(reply)
