"""The bus wire format: frames, their limits, an encoder and an incremental decoder.

Nothing here does I/O. A link protocol hands every byte it reads to a `FrameDecoder`
and gets whole frames back; it sends what `encode` returns. Both sides check the same
`Limits`, so an encoder never produces a frame its peer would refuse.
"""

# Design notes
#
# A frame is a fixed 32-byte big-endian header, then three variable parts whose
# lengths the header states:
#
#     offset size field
#          0    2 magic b"TS"
#          2    1 version (1)
#          3    1 kind
#          4    1 flags
#          5    1 hops (hop limit)
#          6    8 event_id
#         14    8 correlation
#         22    2 route_len
#         24    4 meta_len
#         28    4 payload_len
#         32    . route: unsigned big-endian, minimal length (0 is zero bytes)
#          .    . meta: compact UTF-8 JSON object (an empty map is zero bytes)
#          .    . payload
#
# Every length is checked against the limits as soon as the header is complete,
# before a single byte of the body is buffered, so a hostile peer cannot make the
# decoder hold more than one maximal frame. The decoder copies from its input only
# the bytes the current frame still lacks, which keeps the buffer at most one frame
# long whatever the size of a read, and keeps the work linear in the bytes fed.
#
# Errors are final: once a frame is refused, the stream has lost its framing and no
# later byte can be trusted, so the decoder refuses every later feed as well.

import enum
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "PIECE_SIZE",
    "VERSION",
    "Flag",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "Kind",
    "Limits",
    "encode",
    "encode_parts",
]


class Kind(enum.IntEnum):
    """What a frame carries; the number is its wire code."""

    HELLO = 1
    HEARTBEAT = 2
    REPLY = 3
    DATA = 4
    CANCEL = 5
    ERROR = 6
    CHUNK_PUT = 16
    CHUNK_GET = 17
    CHUNK_HAS = 18
    RECORD_GET = 19
    RECORD_PUT = 20
    RECORD_LIST = 21
    CHUNK_AGES = 22
    CHUNK_SWEEP = 23
    RECORD_PURGE = 24


class Flag(enum.IntFlag):
    """Bits of the header's flags byte; any other bit set is a malformed frame."""

    NONE = 0
    BROADCAST = 1
    END = 2  # the last frame of a request's data stream


PIECE_SIZE = 256 * 1024
"""Chunk data travels in pieces of at most this many bytes, so control frames
never wait long behind a chunk."""

MAGIC = b"TS"
VERSION = 1

_HEADER = struct.Struct(">2sBBBBQQHII")
HEADER_SIZE = _HEADER.size

_U64_MAX = 2**64 - 1
_U8_MAX = 2**8 - 1
_FLAG_BITS = int(Flag.BROADCAST | Flag.END)
_KINDS = frozenset(kind.value for kind in Kind)


class FrameError(Exception):
    """Input that is not a well-formed frame within the limits, or a frame that
    cannot be encoded within them."""


@dataclass(frozen=True)
class Limits:
    """Caps on the parts of a frame, agreed by both ends of a link.

    `max_buffer` caps a whole frame, header included, which is also the most the
    decoder ever buffers. Its default fits the largest route, meta and payload at
    once; a caller raising `max_payload` must raise it too.
    """

    max_payload: int = PIECE_SIZE
    max_meta: int = 16 * 1024
    max_route: int = 128
    max_buffer: int = HEADER_SIZE + 128 + 16 * 1024 + PIECE_SIZE

    def __post_init__(self) -> None:
        """Refuse limits that no frame could honour, at construction time."""
        for name in ("max_payload", "max_meta", "max_route", "max_buffer"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

        if self.max_route > 2**16 - 1:
            raise ValueError("max_route must fit the header's 16-bit route length")

        if self.max_buffer < HEADER_SIZE + self.max_payload:
            raise ValueError(
                "max_buffer must hold at least the header and a payload of "
                f"max_payload bytes ({HEADER_SIZE + self.max_payload})"
            )


@dataclass(frozen=True)
class Frame:
    """One bus event as it travels on a link.

    `meta` is a small map with string keys; its values may be str, int, bool, None,
    or a list of str and int (a bool counts as an int there). Anything else, floats
    and nested maps included, is refused by both `encode` and the decoder, so a
    handler can rely on those types.
    """

    kind: Kind
    event_id: int  # unique per frame, u64
    correlation: int = 0  # the request a reply, data or cancel belongs to, u64
    route: int = 0  # the TreeScale route product, see treescale.bus.routing
    flags: Flag = Flag.NONE
    hops: int = 32  # hop limit, u8
    meta: Mapping[str, object] = field(default_factory=dict)
    payload: bytes = b""


def encode(frame: Frame, limits: Limits = Limits()) -> bytes:
    """Serialise a frame, refusing one the peer's decoder would refuse."""
    return b"".join(encode_parts(frame, limits))


def encode_parts(frame: Frame, limits: Limits = Limits()) -> tuple[bytes, bytes]:
    """A frame serialised as two parts, its head (header, route and meta) and its
    payload, which together are `encode`'s bytes.

    A sender that writes both to its transport leaves the payload uncopied until
    the transport gathers what it sends; joining them here would copy every byte
    of chunk data once more.
    """
    _check_fields(frame)
    route = _encode_route(frame.route)
    meta = _encode_meta(frame.meta)
    payload = bytes(frame.payload)

    _check_lengths(len(route), len(meta), len(payload), limits)

    header = _HEADER.pack(
        MAGIC,
        VERSION,
        frame.kind,
        frame.flags,
        frame.hops,
        frame.event_id,
        frame.correlation,
        len(route),
        len(meta),
        len(payload),
    )
    return header + route + meta, payload


def _check_fields(frame: Frame) -> None:
    """Refuse header fields that do not fit their wire width or meaning."""
    if not isinstance(frame.kind, int) or frame.kind not in _KINDS:
        raise FrameError(f"unknown frame kind {frame.kind!r}")

    if not isinstance(frame.flags, int) or int(frame.flags) & ~_FLAG_BITS:
        raise FrameError(f"unknown flag bits in {int(frame.flags):#x}")

    for name, value, top in (
        ("event_id", frame.event_id, _U64_MAX),
        ("correlation", frame.correlation, _U64_MAX),
        ("hops", frame.hops, _U8_MAX),
    ):
        if not 0 <= value <= top:
            raise FrameError(f"{name} {value} is outside 0..{top}")


def _encode_route(route: int) -> bytes:
    """Write a route as the fewest big-endian bytes that hold it."""
    if route < 0:
        raise FrameError(f"route {route} is negative")

    return route.to_bytes((route.bit_length() + 7) // 8, "big")


def _encode_meta(meta: Mapping[str, object]) -> bytes:
    """Write meta as compact JSON, or as nothing when it is empty."""
    if not meta:
        return b""

    _check_meta(meta)
    text = json.dumps(dict(meta), separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise FrameError(f"meta is not encodable as UTF-8: {error}") from None


def _check_meta(meta: Mapping[str, object]) -> None:
    """Refuse keys and values outside the documented meta types."""
    for key, value in meta.items():
        if not isinstance(key, str) or not _is_text(key):
            raise FrameError(f"meta key {key!r} is not a UTF-8 string")

        if not _is_meta_value(value):
            raise FrameError(
                f"meta value for {key!r} has an unsupported type or is not UTF-8"
            )


def _is_meta_value(value: object) -> bool:
    """Tell whether a value is one a meta map may hold."""
    if isinstance(value, str):
        return _is_text(value)

    if value is None or isinstance(value, int):
        return True

    if isinstance(value, list):
        return all(
            isinstance(item, int) or (isinstance(item, str) and _is_text(item))
            for item in value
        )

    return False


def _is_text(value: str) -> bool:
    """Whether a string survives UTF-8: JSON's escapes can spell lone surrogates,
    which decode but could never be encoded again when the frame is passed on."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_lengths(
    route_len: int, meta_len: int, payload_len: int, limits: Limits
) -> None:
    """Refuse a frame whose parts, or whole, exceed the limits."""
    for name, length, limit in (
        ("route", route_len, limits.max_route),
        ("meta", meta_len, limits.max_meta),
        ("payload", payload_len, limits.max_payload),
    ):
        if length > limit:
            raise FrameError(f"{name} of {length} bytes exceeds the limit of {limit}")

    total = HEADER_SIZE + route_len + meta_len + payload_len
    if total > limits.max_buffer:
        raise FrameError(
            f"frame of {total} bytes exceeds the limit of {limits.max_buffer}"
        )


@dataclass(frozen=True)
class _Header:
    """The fixed part of a frame, checked, waiting for its body."""

    kind: Kind
    flags: Flag
    hops: int
    event_id: int
    correlation: int
    route_len: int
    meta_len: int
    payload_len: int

    @property
    def frame_size(self) -> int:
        """Bytes of the whole frame, header included."""
        return HEADER_SIZE + self.route_len + self.meta_len + self.payload_len


class FrameDecoder:
    """Turns a byte stream, split anywhere, into frames.

    `feed` returns the frames completed by the bytes given, in order, and keeps
    the start of an unfinished frame for the next call. It raises `FrameError` on
    the first malformed or oversized frame; frames completed earlier in that same
    call are dropped with it, since the link carrying them is about to be closed.
    From then on every `feed` raises `FrameError`.

    The decoder buffers at most `limits.max_buffer` bytes. At the end of a stream a
    non-zero `buffered` means the last frame was cut off.
    """

    def __init__(self, limits: Limits = Limits()) -> None:
        self._limits = limits
        self._pending = bytearray()
        self._header: _Header | None = None
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[Frame]:
        """Take the next bytes of the stream; return the frames they complete."""
        if self._error is not None:
            raise FrameError(f"decoder stopped after an earlier error: {self._error}")

        try:
            return self._consume(memoryview(data).cast("B"))
        except FrameError as error:
            self._error = error
            raise

    def _consume(self, data: memoryview) -> list[Frame]:
        """Move bytes into the pending frame, decoding each one that completes."""
        frames = []
        offset = 0

        while offset < len(data):
            whole = self._whole_frame_at(data, offset)
            if whole is not None:
                frame, offset = whole
                frames.append(frame)
                continue

            wanted = self._wanted() - len(self._pending)
            taken = data[offset : offset + wanted]
            self._pending += taken
            offset += len(taken)

            if len(self._pending) < self._wanted():
                break

            if self._header is None:
                self._header = _parse_header(bytes(self._pending), self._limits)

            if len(self._pending) == self._header.frame_size:
                frames.append(self._finish())

        return frames

    def _whole_frame_at(
        self, data: memoryview, offset: int
    ) -> tuple[Frame, int] | None:
        """A frame lying whole in `data` at `offset`, decoded without buffering it,
        and where the next one starts; None when a frame is already pending or
        this one is not all there.

        Most frames arrive whole in one read; decoding them in place saves copying
        each piece of chunk data into the pending buffer first.
        """
        if self._pending or len(data) - offset < HEADER_SIZE:
            return None

        header = _parse_header(bytes(data[offset : offset + HEADER_SIZE]), self._limits)
        end = offset + header.frame_size
        if end > len(data):
            self._header = header
            return None

        frame = _parse_body(header, data[offset + HEADER_SIZE : end])
        return frame, end

    def _wanted(self) -> int:
        """Bytes the pending frame must reach before the next decoding step."""
        if self._header is None:
            return HEADER_SIZE

        return self._header.frame_size

    def _finish(self) -> Frame:
        """Decode the complete pending frame and start afresh."""
        assert self._header is not None
        header = self._header

        frame = _parse_body(header, memoryview(self._pending)[HEADER_SIZE:])

        # A fresh buffer, rather than clearing this one: views of it may outlive
        # the call, and a bytearray with live views cannot be resized.
        self._pending = bytearray()
        self._header = None
        return frame


def _parse_header(raw: bytes, limits: Limits) -> _Header:
    """Read and check the fixed header, lengths included, before any body."""
    (
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
    ) = _HEADER.unpack(raw)

    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}, expected {MAGIC!r}")

    if version != VERSION:
        raise FrameError(f"unknown protocol version {version}")

    if kind not in _KINDS:
        raise FrameError(f"unknown frame kind {kind}")

    if flags & ~_FLAG_BITS:
        raise FrameError(f"unknown flag bits in {flags:#x}")

    _check_lengths(route_len, meta_len, payload_len, limits)
    return _Header(
        kind=Kind(kind),
        flags=Flag(flags),
        hops=hops,
        event_id=event_id,
        correlation=correlation,
        route_len=route_len,
        meta_len=meta_len,
        payload_len=payload_len,
    )


def _parse_body(header: _Header, body: memoryview) -> Frame:
    """Decode the route, meta and payload that follow a checked header."""
    route_end = header.route_len
    meta_end = route_end + header.meta_len

    return Frame(
        kind=header.kind,
        event_id=header.event_id,
        correlation=header.correlation,
        route=_parse_route(body[:route_end]),
        flags=header.flags,
        hops=header.hops,
        meta=_parse_meta(body[route_end:meta_end]),
        payload=bytes(body[meta_end:]),
    )


def _parse_route(raw: memoryview) -> int:
    """Read a route, refusing a leading zero byte: one route has one encoding."""
    if len(raw) and raw[0] == 0:
        raise FrameError("route is not minimally encoded (leading zero byte)")

    return int.from_bytes(raw, "big")


def _parse_meta(raw: memoryview) -> dict[str, object]:
    """Read meta as a JSON object of the documented value types."""
    if not len(raw):
        return {}

    try:
        meta = json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as error:
        raise FrameError(f"meta is not valid UTF-8 JSON: {error}") from None

    if not isinstance(meta, dict):
        raise FrameError("meta is not a JSON object")

    _check_meta(meta)
    return meta


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """Build a JSON object, refusing a key given twice: its meaning would be moot."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise FrameError("meta repeats a key")

    return result
