"""Tests for the bus frame codec: layout, round trips, splits, limits and refusals."""

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treescale.bus.frames import (
    HEADER_SIZE,
    PIECE_SIZE,
    Flag,
    Frame,
    FrameDecoder,
    FrameError,
    Kind,
    Limits,
    encode,
    encode_parts,
)

# The header as the wire layout documents it, written out independently of the
# module under test.
_LAYOUT = ">2sBBBBQQHII"


def _header(
    *,
    magic: bytes = b"TS",
    version: int = 1,
    kind: int = Kind.DATA,
    flags: int = 0,
    hops: int = 32,
    event_id: int = 1,
    correlation: int = 0,
    route_len: int = 0,
    meta_len: int = 0,
    payload_len: int = 0,
) -> bytes:
    """Pack a header field by field, so tests can make any header, bad or good."""
    return struct.pack(
        _LAYOUT,
        magic,
        version,
        kind,
        flags,
        hops,
        event_id,
        correlation,
        route_len,
        meta_len,
        payload_len,
    )


def _raw_frame(route: bytes = b"", meta: bytes = b"", payload: bytes = b"") -> bytes:
    """A frame built by hand from its parts, with a header that states their sizes."""
    header = _header(route_len=len(route), meta_len=len(meta), payload_len=len(payload))
    return header + route + meta + payload


_meta_scalars = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
)
_meta_values = st.one_of(
    _meta_scalars,
    st.lists(st.one_of(st.text(max_size=10), st.integers()), max_size=5),
)
_frames = st.builds(
    Frame,
    kind=st.sampled_from(Kind),
    event_id=st.integers(min_value=0, max_value=2**64 - 1),
    correlation=st.integers(min_value=0, max_value=2**64 - 1),
    route=st.integers(min_value=0, max_value=2 ** (8 * 128) - 1),
    flags=st.sampled_from(
        [Flag.NONE, Flag.BROADCAST, Flag.END, Flag.BROADCAST | Flag.END]
    ),
    hops=st.integers(min_value=0, max_value=255),
    meta=st.dictionaries(st.text(max_size=20), _meta_values, max_size=8),
    payload=st.binary(max_size=2048),
)


def _sample() -> Frame:
    """A frame using every field, for tests that need just one."""
    return Frame(
        kind=Kind.CHUNK_GET,
        event_id=7,
        correlation=3,
        route=2 * 3 * 3,
        flags=Flag.END,
        hops=9,
        meta={"digest": "sha256:ab", "size": 12, "holders": ["relay-a", 2]},
        payload=b"piece",
    )


def test_layout_matches_the_documented_header() -> None:
    """A frame encodes as the documented big-endian header, route, meta and payload."""
    frame = Frame(
        kind=Kind.DATA,
        event_id=0x0102030405060708,
        correlation=0x1112131415161718,
        route=0x0203,
        flags=Flag.END,
        hops=7,
        meta={"a": 1},
        payload=b"xy",
    )
    expected = (
        b"TS\x01\x04\x02\x07"
        + bytes.fromhex("0102030405060708")
        + bytes.fromhex("1112131415161718")
        + b"\x00\x02"
        + b"\x00\x00\x00\x07"
        + b"\x00\x00\x00\x02"
        + b"\x02\x03"
        + b'{"a":1}'
        + b"xy"
    )

    assert encode(frame) == expected
    assert HEADER_SIZE == 32


@given(_frames)
def test_parts_make_up_the_encoding(frame: Frame) -> None:
    """A frame's two parts are its encoding cut after the meta: the head, then
    the very payload given, uncopied."""
    head, payload = encode_parts(frame)

    assert head + payload == encode(frame)
    assert len(head) == len(encode(frame)) - len(frame.payload)
    if isinstance(frame.payload, bytes):
        assert payload is frame.payload


def test_parts_refuse_what_encode_refuses() -> None:
    """The parts are checked against the limits as the whole frame is."""
    frame = Frame(kind=Kind.DATA, event_id=1, payload=b"x" * 11)

    with pytest.raises(FrameError):
        encode_parts(frame, Limits(max_payload=10))


def test_zero_route_and_empty_meta_take_no_bytes() -> None:
    """Route 0 and an empty meta map encode as zero-length parts."""
    data = encode(Frame(kind=Kind.HEARTBEAT, event_id=5))

    assert len(data) == HEADER_SIZE
    assert data[22:32] == bytes(10)


@given(_frames)
def test_round_trip_whole(frame: Frame) -> None:
    """Any valid frame decodes back to itself when fed in one piece."""
    decoder = FrameDecoder()

    assert decoder.feed(encode(frame)) == [frame]
    assert decoder.buffered == 0


@settings(max_examples=50)
@given(_frames)
def test_round_trip_one_byte_at_a_time(frame: Frame) -> None:
    """Any valid frame decodes back to itself when fed one byte at a time."""
    decoder = FrameDecoder()
    data = encode(frame)

    decoded = []
    for index in range(len(data)):
        decoded.extend(decoder.feed(data[index : index + 1]))

    assert decoded == [frame]
    assert decoder.buffered == 0


@given(st.lists(_frames, min_size=1, max_size=5), st.data())
def test_round_trip_any_split(frames: list[Frame], data: st.DataObject) -> None:
    """A stream of frames cut at arbitrary points decodes to the same frames."""
    stream = b"".join(encode(frame) for frame in frames)
    cuts = sorted(
        data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=8))
    )
    decoder = FrameDecoder()

    decoded = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoded.extend(decoder.feed(stream[start:end]))

    assert decoded == frames
    assert decoder.buffered == 0


@given(_frames, _frames, st.data())
def test_trailing_partial_frame_stays_buffered(
    first: Frame, second: Frame, data: st.DataObject
) -> None:
    """Bytes of an unfinished frame after a whole one are kept until the rest comes."""
    tail = encode(second)
    keep = data.draw(st.integers(min_value=1, max_value=len(tail) - 1))
    decoder = FrameDecoder()

    assert decoder.feed(encode(first) + tail[:keep]) == [first]
    assert decoder.buffered == keep
    assert decoder.feed(tail[keep:]) == [second]
    assert decoder.buffered == 0


def test_empty_feed_returns_nothing() -> None:
    """Feeding no bytes yields no frame and buffers nothing."""
    decoder = FrameDecoder()

    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


def test_full_piece_in_tcp_sized_reads() -> None:
    """A maximal payload arriving in 64 KiB reads yields its frame on the last read."""
    frame = Frame(kind=Kind.DATA, event_id=1, payload=bytes(range(256)) * 1024)
    data = encode(frame)
    decoder = FrameDecoder()
    read = 64 * 1024

    results = [
        decoder.feed(data[start : start + read]) for start in range(0, len(data), read)
    ]

    assert len(frame.payload) == PIECE_SIZE
    assert results[-1] == [frame]
    assert all(result == [] for result in results[:-1])
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (_header(magic=b"XS"), "magic"),
        (_header(version=2), "version"),
        (_header(kind=7), "kind"),
        (_header(kind=0), "kind"),
        (_header(flags=4), "flag"),
        (_header(flags=0x80), "flag"),
        (_header(route_len=129), "route"),
        (_header(meta_len=16 * 1024 + 1), "meta"),
        (_header(payload_len=PIECE_SIZE + 1), "payload"),
        (_header(payload_len=2**32 - 1), "payload"),
    ],
)
def test_bad_header_is_refused_before_its_body(header: bytes, reason: str) -> None:
    """A header that is malformed or states an oversized part is refused on its own."""
    decoder = FrameDecoder()

    with pytest.raises(FrameError, match=reason):
        decoder.feed(header)


def test_bad_magic_is_refused_one_byte_at_a_time() -> None:
    """A bad header is refused as soon as its last byte arrives, not before."""
    decoder = FrameDecoder()
    header = _header(magic=b"XS")

    for index in range(HEADER_SIZE - 1):
        assert decoder.feed(header[index : index + 1]) == []

    with pytest.raises(FrameError, match="magic"):
        decoder.feed(header[-1:])


def test_whole_frame_over_max_buffer_is_refused() -> None:
    """A frame whose parts each fit but whose sum exceeds max_buffer is refused."""
    limits = Limits(max_payload=100, max_meta=100, max_buffer=HEADER_SIZE + 150)
    decoder = FrameDecoder(limits)

    with pytest.raises(FrameError, match="frame of"):
        decoder.feed(_header(meta_len=100, payload_len=100))


def test_smaller_limits_are_applied() -> None:
    """A decoder with tight limits refuses a frame the default limits accept."""
    data = encode(Frame(kind=Kind.DATA, event_id=1, payload=bytes(11)))

    assert len(FrameDecoder().feed(data)) == 1
    with pytest.raises(FrameError, match="payload"):
        FrameDecoder(Limits(max_payload=10)).feed(data)


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        (b"not json", "JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b"[1,2]", "object"),
        (b'"text"', "object"),
        (b'{"a":1.5}', "unsupported"),
        (b'{"a":{"b":1}}', "unsupported"),
        (b'{"a":[[1]]}', "unsupported"),
        (b'{"a":NaN}', "unsupported"),
        (b'{"a":1,"a":2}', "repeats"),
        (b"[" * 5000 + b"]" * 5000, "JSON|object"),
    ],
)
def test_bad_meta_is_refused(meta: bytes, reason: str) -> None:
    """Meta that is not a JSON object of the documented value types is refused."""
    decoder = FrameDecoder()

    with pytest.raises(FrameError, match=reason):
        decoder.feed(_raw_frame(meta=meta))


def test_non_minimal_route_is_refused() -> None:
    """A route with a leading zero byte is refused: each route has one encoding."""
    decoder = FrameDecoder()

    with pytest.raises(FrameError, match="minimal"):
        decoder.feed(_raw_frame(route=b"\x00\x05"))


def test_single_zero_route_byte_is_refused() -> None:
    """Route 0 spelled as one zero byte is refused, since it must take no bytes."""
    decoder = FrameDecoder()

    with pytest.raises(FrameError, match="minimal"):
        decoder.feed(_raw_frame(route=b"\x00"))


def test_hand_built_frame_decodes() -> None:
    """A frame built by hand to the documented layout decodes to the expected fields."""
    data = _raw_frame(route=b"\x01\x00", meta=b'{"k":["v",3]}', payload=b"abc")

    (frame,) = FrameDecoder().feed(data)

    assert frame == Frame(
        kind=Kind.DATA, event_id=1, route=256, meta={"k": ["v", 3]}, payload=b"abc"
    )


def test_decoder_stays_broken_after_an_error() -> None:
    """After one refused frame, every later feed is refused, valid bytes included."""
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(_header(version=9))

    with pytest.raises(FrameError, match="earlier error"):
        decoder.feed(encode(_sample()))
    with pytest.raises(FrameError, match="earlier error"):
        decoder.feed(b"")


def test_error_after_good_frame_in_one_feed_raises() -> None:
    """A bad frame after a good one in the same feed raises rather than passing."""
    decoder = FrameDecoder()

    with pytest.raises(FrameError, match="version"):
        decoder.feed(encode(_sample()) + _header(version=0))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (Frame(kind=Kind.DATA, event_id=1, payload=bytes(PIECE_SIZE + 1)), "payload"),
        (Frame(kind=Kind.DATA, event_id=1, meta={"m": "x" * 16 * 1024}), "meta"),
        (Frame(kind=Kind.DATA, event_id=1, route=2 ** (8 * 128)), "route"),
        (Frame(kind=Kind.DATA, event_id=1, route=-1), "negative"),
        (Frame(kind=Kind.DATA, event_id=2**64), "event_id"),
        (Frame(kind=Kind.DATA, event_id=-1), "event_id"),
        (Frame(kind=Kind.DATA, event_id=1, correlation=2**64), "correlation"),
        (Frame(kind=Kind.DATA, event_id=1, hops=256), "hops"),
        (Frame(kind=Kind.DATA, event_id=1, flags=Flag(4)), "flag"),
        (Frame(kind=99, event_id=1), "kind"),  # type: ignore[arg-type]
        (Frame(kind=Kind.DATA, event_id=1, meta={"f": 1.0}), "unsupported"),
        (Frame(kind=Kind.DATA, event_id=1, meta={"d": {}}), "unsupported"),
        (Frame(kind=Kind.DATA, event_id=1, meta={"l": [None]}), "unsupported"),
        (
            Frame(kind=Kind.DATA, event_id=1, meta={1: "x"}),  # type: ignore[dict-item]
            "key",
        ),
        (Frame(kind=Kind.DATA, event_id=1, meta={"s": "\ud800"}), "UTF-8"),
    ],
)
def test_encode_refuses_what_a_decoder_would(frame: Frame, reason: str) -> None:
    """Encoding a frame outside the format or its limits raises FrameError."""
    with pytest.raises(FrameError, match=reason):
        encode(frame)


def test_encode_applies_given_limits() -> None:
    """Encoding under tighter limits refuses a frame the defaults allow."""
    frame = Frame(kind=Kind.DATA, event_id=1, meta={"k": "v"})

    assert encode(frame)
    with pytest.raises(FrameError, match="meta"):
        encode(frame, Limits(max_meta=4))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_payload": -1},
        {"max_route": 2**16},
        {"max_payload": PIECE_SIZE * 2},
        {"max_buffer": HEADER_SIZE},
    ],
)
def test_impossible_limits_are_refused(kwargs: dict[str, int]) -> None:
    """Limits that no frame could honour fail when they are made."""
    with pytest.raises(ValueError):
        Limits(**kwargs)


def test_meta_is_compact_utf8_json() -> None:
    """Meta travels as compact UTF-8 JSON, non-ASCII text unescaped."""
    data = encode(Frame(kind=Kind.HELLO, event_id=1, meta={"node": "rélais", "n": 2}))

    meta_len = struct.unpack(">I", data[24:28])[0]
    meta = data[HEADER_SIZE : HEADER_SIZE + meta_len]
    assert json.loads(meta) == {"node": "rélais", "n": 2}
    assert b" " not in meta
    assert "rélais".encode() in meta


def _feed_hostile(decoder: FrameDecoder, chunks: list[bytes], limits: Limits) -> None:
    """Feed chunks until one is refused, checking the buffer cap after each."""
    for chunk in chunks:
        try:
            decoder.feed(chunk)
        except FrameError:
            return

        assert decoder.buffered <= limits.max_buffer


@given(st.lists(st.binary(max_size=200), max_size=10))
def test_random_bytes_raise_only_frame_error(chunks: list[bytes]) -> None:
    """Arbitrary bytes never raise anything but FrameError, nor overfill the buffer."""
    limits = Limits()
    _feed_hostile(FrameDecoder(limits), chunks, limits)


@given(
    st.builds(
        _header,
        kind=st.integers(0, 255),
        flags=st.integers(0, 255),
        route_len=st.integers(0, 200),
        meta_len=st.integers(0, 100),
        payload_len=st.integers(0, 100),
    ),
    st.binary(max_size=400),
    st.integers(min_value=1, max_value=64),
)
def test_plausible_headers_with_junk_bodies(
    header: bytes, body: bytes, read: int
) -> None:
    """Well-shaped headers followed by junk raise only FrameError, in any read size."""
    limits = Limits(max_payload=64, max_meta=64, max_route=64, max_buffer=300)
    stream = header + body
    chunks = [stream[start : start + read] for start in range(0, len(stream), read)]

    _feed_hostile(FrameDecoder(limits), chunks, limits)


@given(_frames, st.data())
def test_corrupted_frames_raise_only_frame_error(
    frame: Frame, data: st.DataObject
) -> None:
    """A valid frame with bytes overwritten decodes, or raises only FrameError."""
    stream = bytearray(encode(frame))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(stream) - 1))
        stream[index] = data.draw(st.integers(min_value=0, max_value=255))

    limits = Limits()
    _feed_hostile(FrameDecoder(limits), [bytes(stream)], limits)
