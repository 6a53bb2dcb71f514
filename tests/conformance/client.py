"""A small synchronous HTTP client for the conformance tests, over `http.client`.

The tests judge a server by what it puts on the wire, so this client hides nothing:
it follows no redirect, keeps every response header line (repeated ones too, in
order), returns bodies as bytes, and sends exactly the header lines it is given,
several of one name if asked. Each request has a connection of its own, so one
test's half-read answer can never leak into the next request.
"""

import http.client
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

Headers = Sequence[tuple[str, str]]

# Methods whose requests carry a body, so an empty one still says Content-Length: 0.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True)
class Response:
    """One HTTP response, read whole: status, every header line, the body."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        """Every value of a header, in the order the lines came."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def header(self, name: str) -> str | None:
        """The one value of a header, None if absent; sent twice is a failure."""
        values = self.header_values(name)
        if len(values) > 1:
            raise AssertionError(f"header {name} sent {len(values)} times: {values}")
        return values[0] if values else None

    def json(self) -> Any:
        """The body read as JSON."""
        return json.loads(self.body)

    def describe(self) -> str:
        """Status, headers and the start of the body, for an assertion message."""
        lines = [f"{self.status} {self.reason}"]
        lines += [f"{key}: {value}" for key, value in self.headers]
        lines += ["", repr(self.body[:400])]
        return "\n".join(lines)


class BrokenFraming(AssertionError):
    """A response whose body ended before the length its headers announced."""

    def __init__(self, response: Response, missing: int | None) -> None:
        super().__init__(
            f"body ended after {len(response.body)} bytes, {missing} more "
            f"announced:\n{response.describe()}"
        )
        self.response = response


class Client:
    """Requests to one server at ``host:port``, answered as `Response` values."""

    def __init__(self, address: str, timeout: float = 15.0) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        self.host = host
        self.port = int(port)
        self.timeout = timeout

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Headers = (),
        *,
        chunks: Iterable[bytes] | None = None,
    ) -> Response:
        """Send one request and read its whole answer.

        `body` goes with a Content-Length; `chunks` instead go with
        ``Transfer-Encoding: chunked``, one chunk each. A Content-Length given in
        `headers` is sent as given, whatever the body.
        """
        connection = http.client.HTTPConnection(
            self.host, self.port, timeout=self.timeout
        )
        try:
            self._send(connection, method, target, body, headers, chunks)
            answer = connection.getresponse()
            headers = tuple(answer.getheaders())
            try:
                data = answer.read()
            except http.client.IncompleteRead as short:
                raise BrokenFraming(
                    Response(answer.status, answer.reason, headers, short.partial),
                    short.expected,
                ) from None
            return Response(answer.status, answer.reason, headers, data)
        finally:
            connection.close()

    def _send(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        target: str,
        body: bytes | None,
        headers: Headers,
        chunks: Iterable[bytes] | None,
    ) -> None:
        """Write the request line, the header lines and the body."""
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)

        names = {name.lower() for name, _ in headers}
        if chunks is not None:
            connection.putheader("Transfer-Encoding", "chunked")
        elif "content-length" not in names and (body or method in _BODY_METHODS):
            connection.putheader("Content-Length", str(len(body or b"")))
        connection.endheaders()

        if chunks is not None:
            for chunk in chunks:
                connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            connection.send(b"0\r\n\r\n")
        elif body:
            connection.send(body)

    def get(self, target: str, headers: Headers = ()) -> Response:
        """``GET`` a target."""
        return self.request("GET", target, headers=headers)

    def head(self, target: str, headers: Headers = ()) -> Response:
        """``HEAD`` a target."""
        return self.request("HEAD", target, headers=headers)

    def delete(self, target: str, headers: Headers = ()) -> Response:
        """``DELETE`` a target."""
        return self.request("DELETE", target, headers=headers)

    def post(self, target: str, body: bytes = b"", headers: Headers = ()) -> Response:
        """``POST`` a body to a target."""
        return self.request("POST", target, body, headers)

    def put(self, target: str, body: bytes = b"", headers: Headers = ()) -> Response:
        """``PUT`` a body to a target."""
        return self.request("PUT", target, body, headers)

    def patch(self, target: str, body: bytes = b"", headers: Headers = ()) -> Response:
        """``PATCH`` a body to a target."""
        return self.request("PATCH", target, body, headers)

    def target_of(self, location: str) -> str:
        """The request target (path and query) a ``Location`` value points to.

        A server may answer with an absolute URL or a path; an absolute one must
        point back at this server, or the client could not follow it.
        """
        parts = urlsplit(location)
        if (parts.scheme or parts.netloc) and parts.netloc != self.address:
            raise AssertionError(f"Location {location} is not on {self.address}")
        target = parts.path
        if parts.query:
            target += "?" + parts.query
        return target
