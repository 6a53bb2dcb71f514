"""Small helpers every handler uses to read a request and shape its response.

Handlers set each header to one value, read the first value of a query parameter and
the last line of a request header, and answer with JSON or with no body at all; the
helpers keep those habits in one place.
"""

import json
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from twisted.web.server import Request


def set_headers(request: Request, headers: Iterable[tuple[str, str]]) -> None:
    """Set response headers, each to one value."""
    for name, value in headers:
        request.responseHeaders.setRawHeaders(name, [value])


def json_response(
    request: Request, document: object, content_type: str = "application/json"
) -> bytes:
    """A JSON response body, with its type and length set."""
    body = json.dumps(document).encode("utf-8")
    set_headers(
        request, [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    )
    return body


def empty_response(request: Request, status: int) -> bytes:
    """A response with no body."""
    request.setResponseCode(status)
    if status != 204:
        set_headers(request, [("Content-Length", "0")])
    return b""


def query(request: Request, name: str) -> str | None:
    """The first value of a query parameter, or None when absent."""
    args = request.args or {}
    values = args.get(name.encode("ascii"))
    if not values:
        return None
    return bytes(values[0]).decode("utf-8", "replace")


def header(request: Request, name: str) -> str | None:
    """A request header's value, or None when absent.

    Header bytes are read as ISO-8859-1, which decodes any of them: a value that
    is not UTF-8 is then refused by the check it fails, not by a decoding error.
    """
    values = request.requestHeaders.getRawHeaders(name.encode("ascii"))
    if not values or not values[-1]:
        return None
    return bytes(values[-1]).decode("latin-1")


def header_lines(request: Request, name: str) -> list[str]:
    """Every line of a request header that may be sent several times (Accept)."""
    values = request.requestHeaders.getRawHeaders(name.encode("ascii")) or []
    return [bytes(value).decode("latin-1") for value in values]


def client_left(request: Request) -> bool:
    """Whether the request's connection is gone, or going: its transport says so first.

    A TCP transport marks itself disconnected before it stops the response's
    producer, which is what fails a blob read; the request hears of it only later.
    """
    transport = getattr(request, "transport", None)
    return request.channel is None or bool(getattr(transport, "disconnected", False))


def is_utf8_url(request: Request) -> bool:
    """Whether the path (percent-decoded) and the Host are UTF-8, as Klein needs."""
    try:
        unquote_to_bytes(request.path).decode("utf-8")
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
