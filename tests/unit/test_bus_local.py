"""Nodes of one process linked in memory (`treescale.bus.local`).

The nodes here are real `BusNode`s given one `LocalNodes`; starting the child's
service makes it dial its parent through a `LocalEndpoint`, on a `Clock`, so the
whole handshake, requests, backpressure and closing run as in a process, without
a socket (the nodes' TCP reactor is a `MemoryReactorClock` nothing listens on).
"""

from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel

from tests.unit.bustest import InlinePool, failure, inline_reactor, success, topology
from tests.unit.test_auth_helpers import LogCapture
from treescale.bus.frames import Frame, Kind
from treescale.bus.link import Link
from treescale.bus.local import HIGH_WATER, LocalNodes, LocalTransport
from treescale.bus.node import BusNode, LinkLost, Message
from treescale.store.digests import sha256_digest
from treescale.store.relay import Relay

TREE = topology((("root", None), ("a", "root")))


def node(name: str, clock: Clock, local: LocalNodes) -> BusNode:
    reactor = MemoryReactorClock()  # type: ignore[no-untyped-call]
    return BusNode(TREE, TREE.node(name), reactor, clock, local=local)


def linked_pair() -> tuple[BusNode, BusNode, Clock]:
    """A parent and a child of one process, the child's dial started and done."""
    clock, local = Clock(), LocalNodes(planned={"root", "a"})
    root, child = node("root", clock, local), node("a", clock, local)
    child.startService()  # type: ignore[no-untyped-call]
    clock.advance(0)
    clock.advance(0)
    return root, child, clock


def settle(clock: Clock) -> None:
    """Let the reactor passes that hand frames over run."""
    for _ in range(20):
        clock.advance(0)


def test_a_child_links_to_its_parent_in_memory() -> None:
    """Starting the child links both ends over an in-memory transport, not TCP,
    and both nodes see the link up under the other's name."""
    root, child, _clock = linked_pair()

    assert set(root.links) == {"a"} and set(child.links) == {"root"}
    assert isinstance(child.links["root"].transport, LocalTransport)
    assert child.reactor.tcpClients == []
    assert "in this process" in root.links["a"].peer_address


def test_a_request_and_its_data_cross_without_a_copy() -> None:
    """A request with data gets its reply; the data arrives as the very object
    sent, since nothing is encoded or copied on the way."""
    root, child, clock = linked_pair()
    seen: list[bytes] = []
    piece = b"p" * 1000
    asked = b"a" * 5000

    async def echo(message: Message) -> Message:
        seen.append(message.data)
        return Message(Kind.REPLY, message.origin, {}, pieces=(piece, piece))

    child.handlers[Kind.CHUNK_GET] = echo

    reply = root.request("a", Kind.CHUNK_GET, {"digest": "x"}, asked)
    settle(clock)

    assert seen == [asked] and seen[0] is asked
    assert success(reply).data == piece * 2


def recording(link: Link, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids of the frames `link` takes from now on, kept instead of routed."""
    got: list[int] = []
    monkeypatch.setattr(link, "_frame_received", lambda f: got.append(f.event_id))
    return got


def test_frames_arrive_on_a_later_pass_not_inside_the_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frame sent is handed over by the reactor later, in order, as a socket
    would deliver it; never inside the sender's own call."""
    root, child, clock = linked_pair()
    got = recording(root.links["a"], monkeypatch)

    for event_id in (11, 12, 13):
        child.links["root"].send(Frame(Kind.DATA, event_id, payload=b"x"))
    assert got == []
    settle(clock)

    assert got == [11, 12, 13]


def test_a_receiver_far_behind_pauses_the_sender_until_it_drains() -> None:
    """Past the high water mark of queued bytes the sender's link stops being
    writable; once the receiver has taken the frames it is writable again."""
    _root, child, clock = linked_pair()
    link = child.links["root"]
    waited = link.wait_writable()
    assert waited.called

    piece = b"d" * (256 * 1024)
    for index in range(HIGH_WATER // len(piece) + 1):
        link.send(Frame(Kind.DATA, 100 + index, payload=piece))

    assert not link.writable
    later = link.wait_writable()
    assert not later.called
    settle(clock)

    assert link.writable and later.called


def test_a_held_link_takes_no_frames_until_released(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node holding its side of the link (forwarding onto a slow link) gets no
    frames meanwhile; they all come, in order, once it lets go."""
    root, child, clock = linked_pair()
    root_link: Link = root.links["a"]
    got = recording(root_link, monkeypatch)

    root_link.hold()
    for event_id in (21, 22):
        child.links["root"].send(Frame(Kind.DATA, event_id, payload=b"y"))
    settle(clock)
    assert got == []

    root_link.release()
    settle(clock)
    assert got == [21, 22]


def test_closing_one_end_closes_both_and_the_child_dials_again() -> None:
    """An aborted in-memory link is lost on both sides (requests on it fail at
    once), and the child's dialler links it again after its back-off."""
    root, child, clock = linked_pair()
    pending: Deferred[Message] = root.request("a", Kind.CHUNK_GET, {"digest": "x"})

    root.links["a"].abort("testing")
    settle(clock)

    assert root.links == {} and child.links == {}
    assert isinstance(failure(pending).value, LinkLost)
    for _ in range(10):
        clock.advance(1)
        settle(clock)
    assert set(root.links) == {"a"} and set(child.links) == {"root"}


def test_a_parent_not_built_yet_is_dialled_again_later() -> None:
    """A child whose parent this process has not built yet is refused, as by a
    parent not yet listening, and links once the parent is there."""
    clock, local = Clock(), LocalNodes(planned={"root", "a"})
    child = node("a", clock, local)
    child.startService()  # type: ignore[no-untyped-call]
    settle(clock)
    assert child.links == {}

    root = node("root", clock, local)
    for _ in range(10):
        clock.advance(1)
        settle(clock)

    assert set(child.links) == {"root"} and set(root.links) == {"a"}


def test_a_stopped_node_leaves_the_process_registry() -> None:
    """A node that stops is no longer offered to children dialling in memory."""
    _root, child, clock = linked_pair()
    local = child.local
    assert local is not None and set(local.nodes) == {"root", "a"}

    child.stopService()
    settle(clock)

    assert set(local.nodes) == {"root"}


def link_events(log: LogCapture) -> dict[str, LogLevel]:
    """The level of each bus link event logged, by its text."""
    return {
        text: event["log_level"]
        for text, event in zip(log.texts(), log.events, strict=True)
        if "bus link" in text
    }


def test_stopping_a_node_of_the_process_is_no_warning_on_either_side() -> None:
    """A node stopped on purpose closes its in-memory links with info lines, on
    its side and on its peer's: an orderly stop of the embedded default is not a
    fault."""
    root, child, clock = linked_pair()
    root.startService()  # type: ignore[no-untyped-call]

    with LogCapture() as log:
        child.stopService()
        settle(clock)

    events = link_events(log)
    assert "bus link closed: a <-> root (node stopping)" in events
    assert "bus link closed: root <-> a (node stopped)" in events
    assert set(events.values()) == {LogLevel.info}


def test_a_link_in_memory_dropped_for_a_fault_still_warns() -> None:
    """An in-memory link dropped while both nodes run is a fault, and says so."""
    root, _child, clock = linked_pair()
    root.startService()  # type: ignore[no-untyped-call]

    with LogCapture() as log:
        root.links["a"].abort("testing")
        settle(clock)

    assert link_events(log) == {
        "bus link to a dropped: testing": LogLevel.warn,
        "bus link down: root <-> a": LogLevel.warn,
        "bus link down: a <-> root": LogLevel.warn,
    }


def test_data_to_a_neighbour_in_memory_goes_whole_as_one_frame() -> None:
    """Data of many pieces' size, sent to a neighbour linked in memory, is one
    DATA frame, and arrives as the very object sent: never cut, never joined."""
    root, child, clock = linked_pair()
    seen: list[bytes] = []
    frames: list[int] = []
    big = bytes(range(256)) * 4096  # 1 MiB: four pieces' worth

    async def keep(message: Message) -> Message:
        seen.append(message.data)
        return Message(Kind.REPLY, message.origin, {})

    child.handlers[Kind.CHUNK_PUT] = keep
    link = child.links["root"]
    original = link._frame_received

    def counting(frame: Frame) -> None:
        frames.append(frame.kind)
        original(frame)

    link._frame_received = counting  # type: ignore[method-assign]
    done = root.request("a", Kind.CHUNK_PUT, {"digest": "x"}, big)
    settle(clock)

    success(done)
    assert seen[0] is big
    assert frames.count(Kind.DATA) == 1


def test_a_relay_reads_a_chunk_whole_for_a_requester_of_its_process(
    tmp_path: Path,
) -> None:
    """A relay answering a node of its own process reads the chunk in one piece
    and hands it over whole; the requester gets the bytes stored."""
    root, child, clock = linked_pair()
    relay = Relay(child, tmp_path, inline_reactor(), InlinePool(), 8 * 1024 * 1024)
    data = b"c" * (3 * 1024 * 1024)
    relay.chunks.write(sha256_digest(data), data)
    sizes: list[int] = []
    read = relay.chunks.read_unchecked

    def spying(digest: str, piece_size: int) -> tuple[bytes, ...]:
        sizes.append(piece_size)
        return read(digest, piece_size)

    relay.chunks.read_unchecked = spying  # type: ignore[method-assign]
    reply = root.request(
        "a", Kind.CHUNK_GET, {"digest": sha256_digest(data)}, max_reply=len(data)
    )
    settle(clock)

    assert success(reply).data == data
    assert sizes == [-1]
    assert child.in_memory("root") and root.in_memory("a")


def test_a_peer_that_takes_nothing_for_too_long_is_dropped() -> None:
    """As on a socket: bytes written to a held peer past the link's cap of
    unsent data drop the link, rather than queue without bound."""
    root, child, clock = linked_pair()
    root.links["a"].hold()
    link = child.links["root"]
    piece = b"z" * (1024 * 1024)

    for index in range(
        link.settings.max_unsent // len(piece) + HIGH_WATER // len(piece) + 2
    ):
        link.send(Frame(Kind.DATA, 500 + index, payload=piece))
    settle(clock)

    assert root.links == {} and child.links == {}


def test_links_in_memory_outlive_a_pause_of_the_process() -> None:
    """Both ends of an in-memory link run when the process runs: however long it
    was stopped, neither blames the other for the silence."""
    root, child, clock = linked_pair()

    for pause in (25.0, 100.0):
        clock.advance(pause)
        settle(clock)
        for _ in range(30):
            clock.advance(1.0)
            settle(clock)

    assert set(root.links) == {"a"} and set(child.links) == {"root"}
