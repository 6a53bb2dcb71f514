"""The HTTP connection of the registry: twisted.web's channel, with two refusals.

Clients told a registry may be insecure (skopeo and podman with
``--tls-verify=false``, docker with an insecure-registries entry) first try HTTPS and
fall back to plain HTTP only when that attempt fails. twisted.web, given a TLS
ClientHello on a plain HTTP port, waits for a line ending that never comes, so each of
those clients hangs for its full handshake timeout (ten seconds for skopeo) before
every operation. A ClientHello always starts with the TLS handshake record type; on
seeing it as a connection's first byte, the channel answers 400 and closes, and the
client falls back at once.

A Content-Length of thousands of digits makes twisted.web's header parser raise
(Python refuses to convert such a number) and drop the connection with a traceback in
the log; the channel answers those with a 400 before the parser sees them.
"""

from twisted.logger import Logger
from twisted.web.http import HTTPChannel

TLS_HANDSHAKE_RECORD = 0x16

# No body is 10**18 bytes long; a longer number is a client's mistake or an attack.
MAX_CONTENT_LENGTH_DIGITS = 18


def bad_request(reason: bytes) -> bytes:
    """A whole 400 response with a one-line plain-text reason."""
    body = reason + b"\n"
    return (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + body
    )


TLS_REFUSAL = bad_request(b"This port speaks plain HTTP, not TLS.")
LENGTH_REFUSAL = bad_request(b"Content-Length is not a plausible number.")


class RegistryChannel(HTTPChannel):
    """An HTTP/1.1 channel that refuses TLS handshakes and absurd lengths at once."""

    log = Logger()
    _first_bytes_seen = False

    def dataReceived(self, data: bytes) -> None:
        if not self._first_bytes_seen and data:
            self._first_bytes_seen = True
            if data[0] == TLS_HANDSHAKE_RECORD:
                self.log.debug("refused a TLS handshake on the plain HTTP port")
                assert self.transport is not None
                self._refuse(TLS_REFUSAL)
                return
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def headerReceived(self, line: bytes) -> bool:
        name, colon, value = line.partition(b":")
        too_long = len(value.strip(b" \t")) > MAX_CONTENT_LENGTH_DIGITS
        if colon and name.strip().lower() == b"content-length" and too_long:
            self.log.info(
                "refused a request with a {n}-byte Content-Length", n=len(value)
            )
            self._refuse(LENGTH_REFUSAL)
            return False
        return bool(super().headerReceived(line))  # type: ignore[no-untyped-call]

    def _refuse(self, response: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response)
        self.transport.loseConnection()
