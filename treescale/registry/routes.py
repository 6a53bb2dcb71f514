"""Which endpoint of the spec a request path names, parsed without I/O.

A repository name has any number of components, so a path is read from its right
end: the last segments say which endpoint it is, everything before them is the name.
The name is not validated here; the handler does that, so a bad name is answered
``NAME_INVALID`` rather than "no such endpoint". The same parser serves the handlers
and the streaming request, which must know where a body goes before it arrives.
"""

from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote_to_bytes

PREFIX = b"/v2/"


class Endpoint(Enum):
    """The endpoints of the spec this registry serves."""

    VERSION = "version"
    BLOB = "blob"
    UPLOAD_START = "upload_start"
    UPLOAD = "upload"
    MANIFEST = "manifest"
    TAGS = "tags"
    CATALOG = "catalog"
    REFERRERS = "referrers"


ALLOWED_METHODS: dict[Endpoint, tuple[bytes, ...]] = {
    Endpoint.VERSION: (b"GET", b"HEAD"),
    Endpoint.BLOB: (b"GET", b"HEAD", b"DELETE"),
    Endpoint.UPLOAD_START: (b"POST",),
    Endpoint.UPLOAD: (b"GET", b"PATCH", b"PUT", b"DELETE"),
    Endpoint.MANIFEST: (b"GET", b"HEAD", b"PUT", b"DELETE"),
    Endpoint.TAGS: (b"GET", b"HEAD"),
    Endpoint.CATALOG: (b"GET", b"HEAD"),
    Endpoint.REFERRERS: (b"GET", b"HEAD"),
}

CATALOG = b"_catalog"


@dataclass(frozen=True)
class Route:
    """An endpoint with the repository name and the reference the path holds.

    `reference` is a blob digest, an upload session's id or a manifest reference
    (tag or digest), as the endpoint has it; empty where it has none.
    """

    endpoint: Endpoint
    name: str = ""
    reference: str = ""


def parse_route(path: bytes) -> Route | None:
    """The route of a request path (without its query), or None when it names none."""
    if path == PREFIX.rstrip(b"/"):
        return Route(Endpoint.VERSION)

    if not path.startswith(PREFIX):
        return None

    rest = path[len(PREFIX) :]
    if not rest:
        return Route(Endpoint.VERSION)

    if rest.rstrip(b"/") == CATALOG:
        return Route(Endpoint.CATALOG)

    segments = _decode_segments(rest)
    if segments is None or len(segments) < 2:
        return None

    return _match_tail(segments)


def _decode_segments(rest: bytes) -> list[str] | None:
    """The path's segments, percent-decoded; None when one is not UTF-8."""
    try:
        return [unquote_to_bytes(part).decode("utf-8") for part in rest.split(b"/")]
    except UnicodeDecodeError:
        return None


def _match_tail(segments: list[str]) -> Route | None:
    """The route the last segments name, the name being all segments before them."""
    if segments[-2:] == ["tags", "list"]:
        return Route(Endpoint.TAGS, "/".join(segments[:-2]))

    if segments[-2:] == ["blobs", "uploads"]:
        return Route(Endpoint.UPLOAD_START, "/".join(segments[:-2]))

    if len(segments) >= 3 and segments[-3:-1] == ["blobs", "uploads"]:
        name = "/".join(segments[:-3])
        if not segments[-1]:
            return Route(Endpoint.UPLOAD_START, name)
        return Route(Endpoint.UPLOAD, name, segments[-1])

    if segments[-2] == "blobs" and segments[-1]:
        return Route(Endpoint.BLOB, "/".join(segments[:-2]), segments[-1])

    if segments[-2] == "manifests" and segments[-1]:
        return Route(Endpoint.MANIFEST, "/".join(segments[:-2]), segments[-1])

    if segments[-2] == "referrers" and segments[-1]:
        return Route(Endpoint.REFERRERS, "/".join(segments[:-2]), segments[-1])

    return None
