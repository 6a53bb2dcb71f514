"""How a link reads and writes its socket, and how data given in pieces is sent.

These are the bulk-data paths of the bus: a link widens Twisted's read and send
sizes on the TCP transport it runs on, writes each frame as its head and its
payload (so the payload is not copied into a joined frame first), and a handler's
reply given in pieces goes a piece a frame.
"""

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from tests.unit.bustest import BusTree, failure, success
from treescale.bus.frames import PIECE_SIZE, Frame, FrameDecoder, Kind
from treescale.bus.link import READ_SIZE, SEND_SIZE, Link
from treescale.bus.node import EventIds, Message, RemoteError
from treescale.sockets import tune_socket_io


class TcpLike(StringTransport):
    """A string transport carrying the two knobs of Twisted's file descriptors."""

    bufferSize = FileDescriptor.bufferSize
    SEND_LIMIT = FileDescriptor.SEND_LIMIT

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.calls: list[str] = []
        self.no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def write(self, data: bytes) -> None:
        self.calls.append("write")
        super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, seq: Any) -> None:
        self.calls.append(f"writeSequence of {len(seq)}")
        for data in seq:
            super().write(data)  # type: ignore[no-untyped-call]


class Wrapping:
    """A transport over another one, as TLS is over TCP."""

    def __init__(self, inner: object) -> None:
        self.transport = inner


def test_tuning_widens_reads_and_sends_of_this_transport_only() -> None:
    """The transport's read size and send limit grow; the class keeps its own."""
    transport = TcpLike()

    tune_socket_io(transport, READ_SIZE, SEND_SIZE)

    assert (transport.bufferSize, transport.SEND_LIMIT) == (READ_SIZE, SEND_SIZE)
    assert FileDescriptor.bufferSize < READ_SIZE
    assert FileDescriptor.SEND_LIMIT < SEND_SIZE
    assert TcpLike.bufferSize == FileDescriptor.bufferSize


def test_tuning_sends_small_writes_at_once() -> None:
    """Nagle's algorithm is turned off: a small request written after bulk data
    is not held back for the peer's delayed acknowledgement."""
    transport = TcpLike()

    tune_socket_io(transport, READ_SIZE, SEND_SIZE)

    assert transport.no_delay


def test_tuning_reaches_the_tcp_transport_under_a_wrapping_one() -> None:
    """Under TLS it is the TCP transport below that is widened."""
    inner = TcpLike()

    tune_socket_io(Wrapping(inner), READ_SIZE, SEND_SIZE)

    assert (inner.bufferSize, inner.SEND_LIMIT) == (READ_SIZE, SEND_SIZE)
    assert inner.no_delay


def test_tuning_leaves_a_transport_without_the_knobs_alone() -> None:
    """A transport that is not one of Twisted's file descriptors is not touched."""
    transport = StringTransport()  # type: ignore[no-untyped-call]

    tune_socket_io(transport, READ_SIZE, SEND_SIZE)

    assert not hasattr(transport, "SEND_LIMIT")


def test_link_writes_a_frame_with_payload_as_head_and_payload() -> None:
    """A frame with a payload is written as two parts, a frame without as one,
    and the bytes decode to the frames sent; the link's transport is widened."""
    tree = BusTree()
    link = Link(tree["root"], None)
    transport = TcpLike()
    link.makeConnection(transport)  # type: ignore[no-untyped-call]
    transport.clear()  # type: ignore[no-untyped-call]
    transport.calls.clear()
    data = Frame(Kind.DATA, 7, correlation=3, payload=b"p" * 1000)
    beat = Frame(Kind.HEARTBEAT, 8)

    link.send(data)
    link.send(beat)

    assert transport.calls == ["writeSequence of 2", "write"]
    written = transport.value()  # type: ignore[no-untyped-call]
    assert FrameDecoder().feed(written) == [data, beat]
    assert transport.bufferSize == READ_SIZE


class InPieces:
    """A handler answering with the pieces it was made with."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = pieces

    async def __call__(self, message: Message) -> Message:
        return Message(Kind.REPLY, message.origin, {"n": 1}, pieces=self.pieces)


def request_counting_frames(
    tree: BusTree, handler: InPieces
) -> tuple["Deferred[Message]", list[None]]:
    """A chunk get from the root to "a1" (two hops), counting the answer's frames."""
    tree["a1"].handlers[Kind.CHUNK_GET] = handler
    frames: list[None] = []
    d = tree["root"].request(
        "a1",
        Kind.CHUNK_GET,
        {},
        max_reply=4 * PIECE_SIZE,
        on_progress=lambda: frames.append(None),
    )
    tree.flush()
    return d, frames


def test_reply_in_pieces_goes_a_piece_a_frame() -> None:
    """Pieces of any size up to PIECE_SIZE each travel as one DATA frame, after
    the REPLY frame, and arrive as the reply's data."""
    pieces = (b"a" * 10, b"b" * PIECE_SIZE, b"c" * 3)
    d, frames = request_counting_frames(BusTree().connect_all(), InPieces(*pieces))

    reply = success(d)

    assert reply.data == b"".join(pieces)
    assert reply.meta["n"] == 1
    assert len(frames) == 1 + len(pieces)


def test_reply_of_no_pieces_is_one_frame() -> None:
    """A reply with no pieces (an empty chunk) is one REPLY frame with no data."""
    d, frames = request_counting_frames(BusTree().connect_all(), InPieces())

    assert success(d).data == b""
    assert len(frames) == 1


def test_reply_with_an_oversized_piece_is_refused_by_its_sender() -> None:
    """A piece over PIECE_SIZE cannot be encoded: the requester hears why."""
    big = (b"x" * (PIECE_SIZE + 1),)
    d, _ = request_counting_frames(BusTree().connect_all(), InPieces(*big))

    error = failure(d).value
    assert isinstance(error, RemoteError)
    assert error.code == "internal"


def test_event_ids_are_positive_63_bit_and_distinct() -> None:
    """Event ids drawn in batches stay within 1..2**63 and do not repeat across
    several batches."""
    source = EventIds()

    ids = [source.next() for _ in range(EventIds.BATCH * 3)]

    assert all(1 <= event_id <= 2**63 for event_id in ids)
    assert len(set(ids)) == len(ids)


def test_a_frame_too_large_for_the_wire_is_dropped_not_raised() -> None:
    """A payload over the wire's limit (only a frame handed over whole in memory
    and re-routed can be one) is dropped with a warning; the link stays up."""
    tree = BusTree()
    link = Link(tree["root"], None)
    transport = TcpLike()
    link.makeConnection(transport)  # type: ignore[no-untyped-call]
    transport.clear()  # type: ignore[no-untyped-call]

    link.send(Frame(Kind.DATA, 9, correlation=3, payload=b"p" * (PIECE_SIZE + 1)))
    link.send(Frame(Kind.HEARTBEAT, 10))

    frames = FrameDecoder().feed(transport.value())  # type: ignore[no-untyped-call]
    assert [frame.event_id for frame in frames] == [10]
