"""The HTTP connection of the registry: twisted.web's channel, refusing TLS at once.

Clients told a registry may be insecure (skopeo and podman with
``--tls-verify=false``, docker with an insecure-registries entry) first try HTTPS and
fall back to plain HTTP only when that attempt fails. twisted.web, given a TLS
ClientHello on a plain HTTP port, waits for a line ending that never comes, so each of
those clients hangs for its full handshake timeout (ten seconds for skopeo) before
every operation. A ClientHello always starts with the TLS handshake record type; on
seeing it as a connection's first byte, the channel answers 400 and closes, and the
client falls back at once.
"""

from twisted.logger import Logger
from twisted.web.http import HTTPChannel

TLS_HANDSHAKE_RECORD = 0x16

_REFUSAL_BODY = b"This port speaks plain HTTP, not TLS.\n"
TLS_REFUSAL = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _REFUSAL_BODY
)


class RegistryChannel(HTTPChannel):
    """An HTTP/1.1 channel that hangs up on a TLS handshake instead of waiting."""

    log = Logger()
    _first_bytes_seen = False

    def dataReceived(self, data: bytes) -> None:
        if not self._first_bytes_seen and data:
            self._first_bytes_seen = True
            if data[0] == TLS_HANDSHAKE_RECORD:
                self.log.debug("refused a TLS handshake on the plain HTTP port")
                assert self.transport is not None
                self.transport.write(TLS_REFUSAL)
                self.transport.loseConnection()
                return
        super().dataReceived(data)  # type: ignore[no-untyped-call]
