"""Which manifest media types a client's ``Accept`` header takes, without I/O.

Clients list the manifest types they understand, on one line or several, with
wildcards and q-values (``application/vnd.oci.image.index.v1+json;q=0.9, */*;q=0.1``).
The registry never converts a manifest, so the only question is whether the stored
type is acceptable at all: a client that asked for nothing takes anything, and a
range with ``q=0`` rules a type out.
"""

from dataclasses import dataclass

MAX_ACCEPT_RANGES = 256
"""Media ranges read from one request's Accept lines; the rest are ignored."""


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: a type, perhaps with wildcards, and its q."""

    type: str
    subtype: str
    quality: float

    def matches(self, media_type: str) -> bool:
        kind, _, sub = media_type.partition("/")
        if self.type == "*":
            return True
        return self.type == kind and self.subtype in ("*", sub)

    @property
    def specificity(self) -> int:
        """How exactly the range names a type: exact ranges decide before wildcards."""
        return (self.type != "*") + (self.subtype != "*")


def parse_accept(lines: list[str]) -> list[MediaRange]:
    """The media ranges of every Accept line; malformed entries are skipped."""
    ranges: list[MediaRange] = []
    for line in lines:
        for entry in line.split(","):
            parsed = _parse_range(entry)
            if parsed is not None and len(ranges) < MAX_ACCEPT_RANGES:
                ranges.append(parsed)
    return ranges


def _parse_range(entry: str) -> MediaRange | None:
    """One ``type/subtype;param=value`` entry, or None when it is not one."""
    media, *params = [part.strip() for part in entry.split(";")]
    kind, slash, sub = media.lower().partition("/")
    if not slash or not kind or not sub or (kind == "*" and sub != "*"):
        return None

    quality = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            quality = _quality(value.strip())
    return MediaRange(kind, sub, quality)


def _quality(value: str) -> float:
    """A q-value, clamped to 0..1; an unreadable one counts as 1 (RFC 9110 leniency)."""
    try:
        number = float(value)
    except ValueError:
        return 1.0
    if number != number:  # NaN
        return 1.0
    return min(max(number, 0.0), 1.0)


def accepts(lines: list[str], media_type: str) -> bool:
    """Whether a client with these Accept lines takes `media_type`.

    No Accept at all takes everything. Otherwise the most specific range that
    matches decides: it must exist and have a q above zero.
    """
    ranges = parse_accept(lines)
    if not ranges:
        return True

    matching = [r for r in ranges if r.matches(media_type.lower())]
    if not matching:
        return False
    best = max(matching, key=lambda r: r.specificity)
    return best.quality > 0
