"""The token endpoint as a twisted.web resource: decoding in, bytes out.

All the logic is `tokenserver.TokenServer`'s; this resource only turns the request
into text and writes the reply. Fields come from the query and, for a ``POST`` of
``application/x-www-form-urlencoded``, from the body, which this resource reads
itself: the registry's site leaves bodies unparsed (an upload is no form), so
``request.args`` cannot be relied on for them. Fields must be UTF-8, and a form at
most `DEFAULT_MAX_FORM` bytes, else the answer is a 400. The Authorization header
is decoded as Latin-1, so any bytes reach the parser, which refuses what it cannot
read.
"""

from twisted.web.http import parse_qs
from twisted.web.resource import Resource
from twisted.web.server import Request

from treescale.auth.authenticator import Authenticator
from treescale.auth.tokenserver import (
    TOKEN_REQUEST_INVALID,
    TokenReply,
    TokenServer,
    error_reply,
)
from treescale.registry.errors import ApiError

FORM_TYPE = b"application/x-www-form-urlencoded"
DEFAULT_MAX_FORM = 64 * 1024
"""The largest token request form read; docker's are a few hundred bytes."""


class TokenResource(Resource):
    """Serves ``GET`` and ``POST`` token requests at its path and below it."""

    isLeaf = True

    def __init__(
        self, authenticator: Authenticator, max_form: int = DEFAULT_MAX_FORM
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._server = TokenServer(authenticator)
        self._max_form = max_form

    def render(self, request: Request) -> bytes:
        """Answer one token request."""
        reply = self._reply(request)
        request.setResponseCode(reply.status)
        for name, value in reply.headers:
            request.responseHeaders.setRawHeaders(name, [value])
        return reply.body

    def _reply(self, request: Request) -> TokenReply:
        try:
            args = self._fields(request)
        except ApiError as error:
            return error_reply(error)

        header = request.getHeader(b"authorization")
        authorization = header.decode("latin-1") if header is not None else None
        method = request.method.decode("ascii", "replace")
        return self._server.handle(method, args, authorization, _peer(request))

    def _fields(self, request: Request) -> dict[str, list[str]]:
        """The query's fields, then the form's, decoded."""
        raw: dict[bytes, list[bytes]] = {}
        _add(raw, request.uri.partition(b"?")[2])
        if request.method == b"POST" and _is_form(request):
            _add(raw, self._form_body(request))

        try:
            return {
                key.decode("utf-8"): [value.decode("utf-8") for value in values]
                for key, values in raw.items()
            }
        except UnicodeDecodeError as e:
            raise ApiError(
                TOKEN_REQUEST_INVALID, "a query or form field is not UTF-8"
            ) from e

    def _form_body(self, request: Request) -> bytes:
        content = request.content
        if content is None:
            return b""
        content.seek(0)
        body: bytes = content.read(self._max_form + 1)
        content.seek(0)
        if len(body) > self._max_form:
            raise ApiError(
                TOKEN_REQUEST_INVALID, f"the form is larger than {self._max_form} bytes"
            )
        return body


def _add(fields: dict[bytes, list[bytes]], encoded: bytes) -> None:
    """Add the fields of a URL-encoded string, after those already there."""
    parsed: dict[bytes, list[bytes]] = parse_qs(  # type: ignore[no-untyped-call]
        encoded, 1
    )
    for key, values in parsed.items():
        fields.setdefault(key, []).extend(values)


def _is_form(request: Request) -> bool:
    content_type = request.getHeader(b"content-type") or b""
    return content_type.partition(b";")[0].strip().lower() == FORM_TYPE


def _peer(request: Request) -> str:
    """The client's address as the logs show it."""
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return str(host) if host is not None else str(address)
