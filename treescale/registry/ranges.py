"""Byte ranges in headers: a blob read's ``Range`` and an upload chunk's
``Content-Range``, parsed without I/O, and the ``Range`` an upload reports.

Numbers are ASCII digits only (``\\d`` would take any script's digits) and saturate
at `MAX_COUNT`: Python's ``int`` refuses strings of thousands of digits, and a client
may send one.
"""

import re
from dataclasses import dataclass

from treescale.registry.errors import BLOB_UPLOAD_RANGE, RANGE_INVALID, ApiError

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?")

MAX_COUNT = 2**63 - 1
"""Past any blob's size; a larger number in a request counts as this one."""


def _number(digits: str) -> int:
    """The value of a string of ASCII digits, saturated at `MAX_COUNT`."""
    significant = digits.lstrip("0")
    if len(significant) > len(str(MAX_COUNT)):
        return MAX_COUNT
    return min(int(significant or "0"), MAX_COUNT)


def parse_count(text: str) -> int | None:
    """A non-negative decimal count (a length, a page size), or None if not one."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    return _number(text)


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``[start, end)`` of a blob."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """How many bytes the range holds."""
        return self.end - self.start

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` value of a 206 answer for this range."""
        return f"bytes {self.start}-{self.end - 1}/{size}"


def _unsatisfiable(header: str, size: int) -> ApiError:
    """The 416 for a range the blob cannot serve."""
    return ApiError(
        RANGE_INVALID,
        {"range": header, "size": size},
        headers={"Content-Range": f"bytes */{size}"},
    )


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range a read asks for, or None for the whole blob.

    Accepts ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` (the last n bytes). Several
    ranges in one header are refused: this registry does not send multipart bodies.
    """
    if header is None:
        return None

    match = _RANGE.fullmatch(header.strip())
    if match is None:
        raise _unsatisfiable(header, size)

    first, last = match.group(1), match.group(2)
    if not first and not last:
        raise _unsatisfiable(header, size)

    if not first:
        suffix = _number(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(header, size)
        return ByteRange(max(size - suffix, 0), size)

    start = _number(first)
    end = _number(last) + 1 if last else size
    if start >= size or end <= start:
        raise _unsatisfiable(header, size)

    return ByteRange(start, min(end, size))


def parse_content_range(header: str) -> tuple[int, int]:
    """The first and last byte (inclusive) of an upload chunk.

    The spec's form is ``a-b``; a ``bytes`` unit and a ``/total`` suffix, which
    some clients send, are accepted too.
    """
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        raise ApiError(
            BLOB_UPLOAD_RANGE,
            {"content_range": header, "reason": "malformed Content-Range"},
            message="Content-Range is not of the form <first>-<last>",
        )

    first, last = _number(match.group(1)), _number(match.group(2))
    if last < first:
        raise ApiError(
            BLOB_UPLOAD_RANGE,
            {"content_range": header, "reason": "last byte before first"},
            message="Content-Range ends before it starts",
        )

    return first, last


def upload_range(size: int) -> str:
    """The ``Range`` an upload reports: first and last byte received so far.

    With no byte yet received this is ``0-0``, as the spec's examples and the
    clients that read it expect.
    """
    return f"0-{max(size - 1, 0)}"
