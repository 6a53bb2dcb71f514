"""Tests of bus nodes and their links: handshake, requests, failures, timers, limits.

Every test runs a small tree of `BusNode`s linked in memory (see `bustest`), with one
`Clock` for all of them:

         root
        /    \\
       a      b
       |
       a1
"""

from dataclasses import replace
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import StringTransport

from tests.unit.bustest import (
    BusTree,
    failure,
    make_node,
    success,
    topology,
    unfired,
)
from treescale.bus.frames import PIECE_SIZE, Flag, Frame, FrameDecoder, Kind, encode
from treescale.bus.link import PROTOCOL_VERSION, Link, LinkSettings
from treescale.bus.node import (
    BusError,
    HandlerError,
    LinkLost,
    Message,
    RemoteError,
    RequestTimeout,
    Unreachable,
    topology_hash,
)

BIG = bytes(range(256)) * (PIECE_SIZE * 5 // 2 // 256) + b"tail"  # 2.5 pieces


class Parked:
    """A handler that parks every request on a Deferred the test fires by hand."""

    def __init__(self) -> None:
        self.calls: list[Message] = []
        self.waiting: list[Deferred[Message]] = []
        self.cancelled = 0

    async def __call__(self, message: Message) -> Message:
        self.calls.append(message)
        answer: Deferred[Message] = Deferred(self._cancel)
        self.waiting.append(answer)
        return await answer

    def _cancel(self, _: object) -> None:
        self.cancelled += 1


class Echo:
    """A handler that answers at once with the request's data reversed, and counts."""

    def __init__(self, extra: bytes = b"") -> None:
        self.calls: list[Message] = []
        self.extra = extra

    async def __call__(self, message: Message) -> Message:
        self.calls.append(message)
        meta = {"got": len(message.data), "origin_seen": message.origin}
        return Message(
            Kind.REPLY, message.origin, meta, message.data[::-1] + self.extra
        )


def wired() -> BusTree:
    """The default tree with every edge up."""
    return BusTree().connect_all()


def error_of(d: "Deferred[Any]") -> BaseException:
    """The exception a failed Deferred holds."""
    value = failure(d).value
    assert isinstance(value, BaseException)
    return value


def frames_written(transport: StringTransport) -> list[Frame]:
    """Every frame a link wrote to a string transport."""
    return FrameDecoder().feed(transport.value())  # type: ignore[no-untyped-call]


# Handshake.


def test_handshake_brings_every_edge_up() -> None:
    """Children and parents exchange HELLO and each side lists the other as a link."""
    tree = BusTree()
    seen: list[tuple[str, bool]] = []
    tree["root"].link_listeners.append(lambda peer, up: seen.append((peer, up)))

    tree.connect_all()

    assert sorted(tree["root"].links) == ["a", "b"]
    assert sorted(tree["a"].links) == ["a1", "root"]
    assert sorted(tree["b"].links) == ["root"]
    assert sorted(tree["a1"].links) == ["a"]
    assert seen == [("a", True), ("b", True)]
    assert tree["root"].reachable("a1")
    assert tree["a1"].reachable("b")


def test_reachable_sees_every_link_on_the_way() -> None:
    """A node is reachable when every link toward it is up: a1 behind a counts
    only once a has linked it, and stops counting when that link drops."""
    tree = BusTree()
    tree.connect("a")

    assert tree["root"].reachable("root")
    assert tree["root"].reachable("a")
    assert not tree["root"].reachable("a1")
    assert not tree["root"].reachable("b")
    assert not tree["root"].reachable("nobody")

    tree.connect("a1")
    tree.connect("b")
    assert tree["root"].reachable("a1")
    assert tree["b"].reachable("a1")
    assert tree["a1"].reachable("b")

    tree.cut("a1")
    assert not tree["root"].reachable("a1")
    assert not tree["b"].reachable("a1")
    assert tree["root"].reachable("a")


def refused(tree: BusTree, server: Link, client: Link) -> None:
    """Assert that a handshake between two links fails and neither keeps the link."""
    tree.join(server, client, key="probe")

    assert server.peer is None or client.peer is None
    assert server.node.links.get(client.node.me.name) is not server
    assert client.node.links.get(server.node.me.name) is not client
    edge = tree.edges["probe"]
    assert edge.pump.clientIO.disconnected
    assert edge.pump.serverIO.disconnected


def test_wrong_cluster_is_refused() -> None:
    """A peer of another cluster is refused by both ends of the link."""
    tree = BusTree()
    stranger = make_node(topology(cluster="other"), "a", tree.clock)

    refused(tree, Link(tree["root"], None), Link(stranger, "root"))

    assert tree["root"].links == {}
    assert stranger.links == {}


def test_a_tree_naming_a_node_otherwise_is_refused() -> None:
    """A peer whose file gives a shared node another id is refused: the same route
    would mean different nodes on the two sides."""
    tree = BusTree()
    shuffled = topology([("root", None), ("b", "root"), ("a", "root"), ("a1", "a")])
    stranger = make_node(shuffled, "a", tree.clock)

    refused(tree, Link(tree["root"], None), Link(stranger, "root"))

    assert tree["root"].links == {}


def test_node_that_is_not_a_child_is_refused() -> None:
    """A parent refuses a HELLO from a node the topology does not put below it."""
    tree = BusTree()

    refused(tree, Link(tree["root"], None), Link(tree["a1"], "root"))

    assert tree["root"].links == {}
    assert tree["a1"].links == {}


def test_dialled_peer_must_answer_as_itself() -> None:
    """A dialler refuses a HELLO from a node other than the parent it dialled."""
    tree = BusTree()

    refused(tree, Link(tree["b"], None), Link(tree["a"], "root"))

    assert tree["a"].links == {}
    assert tree["b"].links == {}


def test_check_hello_names_each_reason() -> None:
    """check_hello accepts a good HELLO and explains every kind of refusal."""
    tree = BusTree()
    root = tree["root"]
    good = {
        "cluster": "test",
        "node": "a",
        "version": PROTOCOL_VERSION,
        "topology": topology_hash(tree.topology),
    }

    assert root.check_hello(good, None) == (None, "a")
    assert tree["a"].check_hello({**good, "node": "root"}, "root") == (None, "root")
    cases = {
        "cluster": {**good, "cluster": "x"},
        "version": {**good, "version": PROTOCOL_VERSION + 1},
        "topology": {**good, "topology": "0" * 64},
        "node name": {**good, "node": 7},
        "child": {**good, "node": "a1"},
    }
    for word, meta in cases.items():
        why, peer = root.check_hello(meta, None)
        assert why is not None and peer is None, word
    why, peer = root.check_hello(good, "b")
    assert peer is None and why is not None and "'b'" in why


def test_handshake_must_complete_in_time() -> None:
    """A link whose peer never says HELLO is dropped after the handshake timeout."""
    tree = BusTree()
    link = Link(tree["root"], None)
    transport = StringTransport()  # type: ignore[no-untyped-call]
    link.makeConnection(transport)  # type: ignore[no-untyped-call]

    tree.clock.advance(LinkSettings().handshake_timeout - 0.5)
    assert not transport.disconnecting
    tree.clock.advance(1.0)

    assert transport.disconnecting
    assert [frame.kind for frame in frames_written(transport)] == [Kind.HELLO]


def test_first_frame_must_be_hello() -> None:
    """A peer that sends anything before its HELLO is dropped."""
    tree = BusTree()
    link = Link(tree["root"], None)
    transport = StringTransport()  # type: ignore[no-untyped-call]
    link.makeConnection(transport)  # type: ignore[no-untyped-call]

    link.dataReceived(encode(tree["a"].heartbeat_frame()))

    assert transport.disconnecting
    assert link.peer is None


def test_garbage_drops_the_link() -> None:
    """Bytes that are not a frame make the receiving end drop the link."""
    tree = wired()

    tree.edges["b"].child.transport.write(b"GET / HTTP/1.1\r\n" * 3)  # type: ignore[union-attr]
    tree.flush()

    assert "b" not in tree["root"].links
    assert "root" not in tree["b"].links


def test_second_link_for_a_live_peer_is_refused() -> None:
    """A second link claiming a child that is linked and talking is closed, and the
    live link stays: a HELLO alone cannot knock a relay off."""
    tree = wired()
    old = tree["root"].links["b"]

    tree.join(Link(tree["root"], None), Link(tree["b"], "root"), key="b-again")

    assert tree["root"].links["b"] is old
    assert tree.edges["b-again"].pump.serverIO.disconnected
    assert not tree.edges["b"].pump.serverIO.disconnected


def test_newer_link_replaces_a_quiet_one_and_fails_its_requests() -> None:
    """Once the old link has been quiet past a heartbeat interval, a newer link
    takes over, the old one is closed and requests that left on it fail at once."""
    tree = wired()
    old = tree["root"].links["b"]
    tree["b"].handlers[Kind.CHUNK_GET] = Parked()
    waiting = tree["root"].request("b", Kind.CHUNK_GET, {})
    tree.flush()
    # The old link falls quiet at both ends, as a connection lost without a reset.
    for end in (old, tree["b"].links["root"]):
        end._last_heard -= LinkSettings().heartbeat_interval + 1

    tree.join(Link(tree["root"], None), Link(tree["b"], "root"), key="b-again")

    assert tree["root"].links["b"] is not old
    assert tree.edges["b"].pump.serverIO.disconnected
    assert sorted(tree["root"].links) == ["a", "b"]
    assert isinstance(error_of(waiting), LinkLost)


# Requests and replies.


def test_round_trip_through_a_hop_in_pieces() -> None:
    """Request and reply data of several pieces pass through a hop whole, both ways."""
    tree = wired()
    far, middle = Echo(extra=b"x" * PIECE_SIZE), Echo()
    tree["a1"].handlers[Kind.CHUNK_GET] = far
    tree["a"].handlers[Kind.CHUNK_GET] = middle

    d = tree["root"].request(
        "a1", Kind.CHUNK_GET, {"q": "v"}, BIG, max_reply=4 * PIECE_SIZE
    )
    tree.flush()

    reply = success(d)
    assert reply.kind == Kind.REPLY
    assert reply.origin == "a1"
    assert reply.data == BIG[::-1] + b"x" * PIECE_SIZE
    assert reply.meta == {"got": len(BIG), "origin_seen": "root"}
    assert far.calls[0].meta["q"] == "v"
    assert far.calls[0].data == BIG
    assert middle.calls == []


def test_round_trip_upward_and_across() -> None:
    """A grandchild reaches a node on another branch, and the reply comes back."""
    tree = wired()
    tree["b"].handlers[Kind.CHUNK_PUT] = Echo()

    d = tree["a1"].request("b", Kind.CHUNK_PUT, {}, BIG, max_reply=len(BIG))
    tree.flush()

    assert success(d).data == BIG[::-1]


def test_request_without_data_gets_reply_without_data() -> None:
    """A request with no data travels as one frame and gets its reply."""
    tree = wired()
    echo = Echo()
    tree["b"].handlers[Kind.CHUNK_HAS] = echo

    d = tree["root"].request("b", Kind.CHUNK_HAS, {"digest": "d"})
    tree.flush()

    assert success(d).data == b""
    assert echo.calls[0].data == b""


def test_request_to_itself_is_handled_locally() -> None:
    """A node's request to itself, data and all, reaches its own handler."""
    tree = BusTree()
    tree["root"].handlers[Kind.RECORD_PUT] = Echo()

    d = tree["root"].request("root", Kind.RECORD_PUT, {}, BIG, max_reply=len(BIG))

    assert success(d).data == BIG[::-1]


def test_on_progress_fires_at_each_piece_before_the_result() -> None:
    """on_progress is called as the reply starts and at each data piece, then the
    result fires."""
    tree = wired()
    parked = Parked()
    tree["b"].handlers[Kind.CHUNK_GET] = parked
    started: list[bool] = []

    d = tree["root"].request(
        "b",
        Kind.CHUNK_GET,
        {},
        max_reply=len(BIG),
        on_progress=lambda: started.append(d.called),
    )
    tree.flush()
    assert started == []
    parked.waiting[0].callback(Message(Kind.REPLY, "root", {}, BIG))
    tree.flush()

    pieces = -(-len(BIG) // PIECE_SIZE)
    assert started == [False] * (1 + pieces)
    assert success(d).data == BIG


def test_handler_error_reaches_the_requester() -> None:
    """A HandlerError becomes a RemoteError carrying its code and message."""
    tree = wired()

    async def missing(message: Message) -> Message:
        raise HandlerError("chunk_missing", "not here")

    tree["a1"].handlers[Kind.CHUNK_GET] = missing

    d = tree["root"].request("a1", Kind.CHUNK_GET, {}, BIG)
    tree.flush()

    error = error_of(d)
    assert isinstance(error, RemoteError)
    assert (error.code, error.message) == ("chunk_missing", "not here")


def test_handler_crash_is_an_internal_error() -> None:
    """A handler raising anything else answers 'internal', without its traceback."""
    tree = wired()

    async def broken(message: Message) -> Message:
        raise ZeroDivisionError("secret detail")

    tree["b"].handlers[Kind.CHUNK_GET] = broken

    d = tree["root"].request("b", Kind.CHUNK_GET, {})
    tree.flush()

    error = error_of(d)
    assert isinstance(error, RemoteError)
    assert error.code == "internal"
    assert "secret" not in error.message


def test_unhandled_kind_is_unsupported() -> None:
    """A request of a kind the far node has no handler for gets 'unsupported'."""
    tree = wired()

    d = tree["root"].request("a1", Kind.RECORD_GET, {"key": "k"}, BIG)
    tree.flush()

    error = error_of(d)
    assert isinstance(error, RemoteError)
    assert error.code == "unsupported"


def test_unknown_destination_is_unreachable() -> None:
    """A request to a node the topology lacks fails at once with Unreachable."""
    tree = wired()

    assert isinstance(
        error_of(tree["root"].request("ghost", Kind.CHUNK_GET, {})), Unreachable
    )


def test_destination_behind_a_down_link_is_unreachable() -> None:
    """A request whose first hop has no link fails at once with Unreachable."""
    tree = BusTree()
    tree.connect("a")

    d = tree["root"].request("b", Kind.CHUNK_GET, {})

    assert isinstance(error_of(d), Unreachable)


# Deadlines, cancellation and lost links.


def test_timeout_fails_the_request_and_cancels_the_handler() -> None:
    """No answer by the deadline gives RequestTimeout and the far handler is stopped."""
    tree = wired()
    parked = Parked()
    tree["a1"].handlers[Kind.CHUNK_GET] = parked

    d = tree["root"].request("a1", Kind.CHUNK_GET, {}, timeout=5.0)
    tree.advance(4.5)
    assert unfired(d)
    assert parked.cancelled == 0
    tree.advance(1.0)

    assert isinstance(error_of(d), RequestTimeout)
    assert parked.cancelled == 1


def test_late_reply_after_timeout_is_ignored() -> None:
    """A reply arriving after the deadline changes nothing and raises nothing."""
    tree = wired()
    tree["b"].handlers[Kind.CHUNK_GET] = Echo()
    d = tree["root"].request("b", Kind.CHUNK_GET, {}, timeout=1.0)

    tree.clock.advance(2.0)  # the deadline passes before the bytes move
    tree.flush()

    assert isinstance(error_of(d), RequestTimeout)


def test_cancelling_sends_cancel_to_the_handler() -> None:
    """Cancelling the requester's Deferred cancels the handler's work far away."""
    tree = wired()
    parked = Parked()
    tree["a1"].handlers[Kind.CHUNK_GET] = parked

    d = tree["root"].request("a1", Kind.CHUNK_GET, {}, BIG)
    tree.flush()
    assert len(parked.calls) == 1
    d.cancel()
    tree.flush()

    assert isinstance(error_of(d), CancelledError)
    assert parked.cancelled == 1


def test_cancelled_handler_sends_no_reply() -> None:
    """A handler stopped by CANCEL answers nothing, so no stray frame reaches anyone."""
    tree = wired()
    parked = Parked()
    tree["b"].handlers[Kind.CHUNK_GET] = parked
    delivered: list[Frame] = []
    original = tree["root"].frame_received

    def spy(peer: str, frame: Frame, link: Link) -> None:
        delivered.append(frame)
        original(peer, frame, link)

    tree["root"].frame_received = spy  # type: ignore[method-assign]

    d = tree["root"].request("b", Kind.CHUNK_GET, {})
    tree.flush()
    d.cancel()
    tree.flush()

    assert isinstance(error_of(d), CancelledError)
    assert parked.cancelled == 1
    assert delivered == []


def test_lost_first_hop_fails_pending_requests_at_once() -> None:
    """When the link a request left on goes down, the request fails with LinkLost."""
    tree = wired()
    parked = Parked()
    tree["a1"].handlers[Kind.CHUNK_GET] = parked
    tree["b"].handlers[Kind.CHUNK_GET] = Parked()
    seen: list[tuple[str, bool]] = []
    tree["root"].link_listeners.append(lambda peer, up: seen.append((peer, up)))

    toward_a1 = tree["root"].request("a1", Kind.CHUNK_GET, {}, timeout=30.0)
    toward_b = tree["root"].request("b", Kind.CHUNK_GET, {}, timeout=30.0)
    tree.flush()
    tree.cut("a")

    assert isinstance(error_of(toward_a1), LinkLost)
    assert unfired(toward_b)
    assert seen == [("a", False)]
    assert not tree["root"].reachable("a1")
    assert isinstance(
        error_of(tree["root"].request("a", Kind.CHUNK_GET, {})), Unreachable
    )


def test_link_lost_further_away_leaves_requests_to_their_deadline() -> None:
    """An edge lost past the first hop is not seen at once; the deadline still holds."""
    tree = wired()
    tree["a1"].handlers[Kind.CHUNK_GET] = Parked()

    d = tree["root"].request("a1", Kind.CHUNK_GET, {}, timeout=3.0)
    tree.flush()
    tree.cut("a1")
    assert unfired(d)
    tree.advance(3.5)

    assert isinstance(error_of(d), RequestTimeout)


# Duplicates and bad routes.


def raw_request(tree: BusTree, sender: str, dest: str, event_id: int) -> Frame:
    """A one-frame request from `sender` to `dest`, built the way a node builds one."""
    route = tree[sender].routes.route_to([dest])
    return Frame(
        Kind.CHUNK_HAS,
        event_id,
        route=route,
        flags=Flag.END,
        meta={"origin": sender, "digest": "d"},
    )


def test_duplicate_event_is_dropped() -> None:
    """A frame whose event id was already seen is neither delivered nor forwarded."""
    tree = wired()
    root_echo, a1_echo = Echo(), Echo()
    tree["root"].handlers[Kind.CHUNK_HAS] = root_echo
    tree["a1"].handlers[Kind.CHUNK_HAS] = a1_echo
    link = tree["b"].links["root"]

    link.send(raw_request(tree, "b", "root", 1234))
    link.send(raw_request(tree, "b", "root", 1234))
    link.send(raw_request(tree, "b", "a1", 99))
    link.send(raw_request(tree, "b", "a1", 99))
    tree.flush()

    assert len(root_echo.calls) == 1
    assert len(a1_echo.calls) == 1


def test_route_of_zero_is_dropped_without_harm() -> None:
    """A frame routed 0 from a peer is dropped; the link stays up and keeps working."""
    tree = wired()
    echo = Echo()
    tree["root"].handlers[Kind.CHUNK_HAS] = echo
    link = tree["b"].links["root"]

    link.send(Frame(Kind.CHUNK_HAS, 77, route=0, flags=Flag.END, meta={"origin": "b"}))
    tree.flush()

    assert echo.calls == []
    assert "b" in tree["root"].links
    d = tree["b"].request("root", Kind.CHUNK_HAS, {})
    tree.flush()
    assert success(d).meta["got"] == 0


def test_a_pass_through_node_drops_a_request_speaking_for_another_side() -> None:
    """b sends a1 a request claiming to come from a: root, the node between
    them, sees that a is not on b's side and passes nothing on."""
    tree = wired()
    echo = Echo()
    tree["a1"].handlers[Kind.CHUNK_HAS] = echo
    frame = raw_request(tree, "b", "a1", 6)

    forged = Frame(
        frame.kind, 6, route=frame.route, flags=Flag.END, meta={"origin": "a"}
    )
    tree["b"].links["root"].send(forged)
    tree.flush()

    assert echo.calls == []
    tree["b"].links["root"].send(raw_request(tree, "b", "a1", 7))
    tree.flush()
    assert [call.origin for call in echo.calls] == ["b"]


def test_request_from_unknown_origin_is_dropped() -> None:
    """A request whose origin is not a node of the topology reaches no handler."""
    tree = wired()
    echo = Echo()
    tree["root"].handlers[Kind.CHUNK_HAS] = echo
    frame = raw_request(tree, "b", "root", 5)

    tree["b"].links["root"].send(
        Frame(frame.kind, 5, route=frame.route, flags=Flag.END, meta={"origin": "zz"})
    )
    tree.flush()

    assert echo.calls == []
    assert "b" in tree["root"].links


# Timers.


def test_heartbeats_keep_an_idle_link_up() -> None:
    """Links with nothing to carry stay up for far longer than the idle timeout."""
    tree = wired()

    tree.advance(10 * LinkSettings().idle_timeout)

    assert sorted(tree["root"].links) == ["a", "b"]
    assert sorted(tree["a1"].links) == ["a"]


def test_silent_peer_is_dropped_after_the_idle_timeout() -> None:
    """A peer heard from for longer than idle_timeout has its link dropped."""
    quiet = LinkSettings(heartbeat_interval=1000.0, idle_timeout=5000.0)
    tree = BusTree(settings={"b": quiet}).connect_all()

    tree.advance(24.0)
    assert "b" in tree["root"].links
    tree.advance(2.0)

    assert "b" not in tree["root"].links
    assert "root" not in tree["b"].links
    assert "a" in tree["root"].links


def test_a_process_that_did_not_run_does_not_blame_its_peers() -> None:
    """Time jumping past the idle timeout in one step (the process was stopped or
    swapped out) drops no link: the next beat comes late, so the silence was
    this process's own. A peer that stays silent after that is still dropped."""
    quiet = LinkSettings(heartbeat_interval=1000.0, idle_timeout=5000.0)
    tree = BusTree(settings={"b": quiet}).connect_all()
    tree.advance(4.0)

    tree.clock.advance(3 * LinkSettings().idle_timeout)
    tree.flush()
    assert "b" in tree["root"].links

    tree.advance(LinkSettings().idle_timeout + 6.0)
    assert "b" not in tree["root"].links


# Limits and backpressure.


def test_reply_larger_than_allowed_fails() -> None:
    """A reply whose data passes max_reply fails the request with a BusError."""
    tree = wired()
    tree["b"].handlers[Kind.CHUNK_GET] = Echo()

    d = tree["root"].request("b", Kind.CHUNK_GET, {}, BIG, max_reply=PIECE_SIZE)
    tree.flush()

    error = error_of(d)
    assert type(error) is BusError
    assert "larger" in str(error)


def test_request_data_over_the_limit_is_refused() -> None:
    """Request data past the handler node's max_request_data gets 'too_large'."""
    tree = BusTree(max_request_data={"b": PIECE_SIZE}).connect_all()
    echo = Echo()
    tree["b"].handlers[Kind.CHUNK_PUT] = echo

    d = tree["root"].request("b", Kind.CHUNK_PUT, {}, BIG)
    tree.flush()

    error = error_of(d)
    assert isinstance(error, RemoteError)
    assert error.code == "too_large"
    assert echo.calls == []


def test_sender_waits_while_its_link_is_paused() -> None:
    """Request data waits on a paused link and flows once the transport resumes."""
    tree = wired()
    echo = Echo()
    tree["b"].handlers[Kind.CHUNK_PUT] = echo
    root_to_b = tree["root"].links["b"]

    root_to_b.pauseProducing()
    d = tree["root"].request("b", Kind.CHUNK_PUT, {}, BIG, max_reply=len(BIG))
    tree.flush()
    assert echo.calls == []
    assert not root_to_b.writable
    root_to_b.resumeProducing()
    tree.flush()

    assert success(d).data == BIG[::-1]


def test_forwarding_onto_a_paused_link_holds_the_incoming_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hop stops reading from upstream while the link it forwards onto is full."""
    tree = wired()
    tree["a1"].handlers[Kind.CHUNK_PUT] = Echo()
    a_to_a1 = tree["a"].links["a1"]
    a_to_root = tree["a"].links["root"]
    calls: list[str] = []
    transport: Any = a_to_root.transport
    monkeypatch.setattr(transport, "pauseProducing", lambda: calls.append("pause"))
    monkeypatch.setattr(transport, "resumeProducing", lambda: calls.append("resume"))

    a_to_a1.pauseProducing()
    d = tree["root"].request("a1", Kind.CHUNK_PUT, {}, BIG, max_reply=len(BIG))
    tree.flush()
    assert calls == ["pause"]
    a_to_a1.resumeProducing()
    tree.flush()

    assert calls == ["pause", "resume"]
    assert success(d).data == BIG[::-1]


def test_link_with_too_much_unsent_is_dropped() -> None:
    """Writing past max_unsent to a peer that does not read drops the link."""
    tight = LinkSettings(max_unsent=2000)
    tree = BusTree(settings={"root": tight}).connect_all()
    tree["b"].handlers[Kind.CHUNK_HAS] = Parked()
    root_to_b = tree["root"].links["b"]

    root_to_b.pauseProducing()
    pending = [
        tree["root"].request("b", Kind.CHUNK_HAS, {"pad": "x" * 100}) for _ in range(30)
    ]
    tree.flush()

    assert "b" not in tree["root"].links
    assert all(isinstance(error_of(d), LinkLost) for d in pending)


def test_waiting_sender_fails_when_the_link_goes() -> None:
    """A request waiting for a paused link to drain fails when the link is lost."""
    tree = wired()
    tree["b"].handlers[Kind.CHUNK_PUT] = Echo()
    tree["root"].links["b"].pauseProducing()

    d = tree["root"].request("b", Kind.CHUNK_PUT, {}, BIG)
    tree.flush()
    tree.cut("b")

    assert isinstance(error_of(d), LinkLost)


def test_links_are_closed_when_a_node_stops() -> None:
    """Stopping a node's service drops its links, and its neighbours see them go."""
    tree = wired()

    tree["a"].stopService()
    tree.flush()

    assert tree["a"].links == {}
    assert sorted(tree["root"].links) == ["b"]
    assert tree["a1"].links == {}


def test_request_claiming_a_far_origin_is_dropped() -> None:
    """A request arriving from b but naming a1 as its origin is not handled, so a
    peer cannot have answers sent to a node that never asked."""
    tree = wired()
    echo = Echo()
    tree["root"].handlers[Kind.CHUNK_HAS] = echo
    link = tree["b"].links["root"]
    forged = raw_request(tree, "b", "root", 4321)

    link.send(replace(forged, meta={"origin": "a1", "digest": "d"}))
    tree.flush()

    assert echo.calls == []


def test_requests_past_the_cap_are_answered_busy() -> None:
    """With max_inbound_requests in hand, the next request gets 'busy'."""
    settings = LinkSettings(max_inbound_requests=2)
    tree = BusTree(settings={"b": settings}).connect_all()
    parked = Parked()
    tree["b"].handlers[Kind.CHUNK_GET] = parked

    held = [tree["root"].request("b", Kind.CHUNK_GET, {}) for _ in range(2)]
    third = tree["root"].request("b", Kind.CHUNK_GET, {})
    tree.flush()

    error = error_of(third)
    assert isinstance(error, RemoteError)
    assert error.code == "busy"
    assert len(parked.calls) == 2
    assert not any(d.called for d in held)


def test_request_whose_data_stops_is_given_up() -> None:
    """A request whose data stops arriving is dropped after inbound_timeout and
    its origin told, so half a request never pins memory."""
    settings = LinkSettings(inbound_timeout=5.0, idle_timeout=60.0)
    tree = BusTree(settings={"b": settings}).connect_all()
    tree["b"].handlers[Kind.CHUNK_PUT] = Echo()
    link = tree["root"].links["b"]
    route = tree["root"].routes.route_to(["b"])
    link.send(Frame(Kind.CHUNK_PUT, 555, route=route, meta={"origin": "root"}))
    link.send(Frame(Kind.DATA, 556, correlation=555, route=route, payload=b"x" * 10))
    tree.flush()
    assert 555 in tree["b"]._inbound

    tree.advance(6.0)

    assert 555 not in tree["b"]._inbound
