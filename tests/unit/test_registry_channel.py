"""The registry's HTTP channel: TLS handshakes refused at once, HTTP served."""

from twisted.internet.abstract import FileDescriptor
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

from treescale.registry.channel import READ_SIZE, SEND_SIZE, RegistryChannel

CLIENT_HELLO_START = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC])


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b"hello"


def connected_channel() -> tuple[RegistryChannel, StringTransport]:
    site = Site(Hello())
    site.protocol = RegistryChannel  # type: ignore[assignment]
    channel = site.buildProtocol(None)
    assert isinstance(channel, RegistryChannel)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def test_tls_client_hello_is_answered_400_and_closed() -> None:
    """A connection opening with a TLS handshake record gets a 400 and is closed."""
    channel, transport = connected_channel()

    channel.dataReceived(CLIENT_HELLO_START)

    assert transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"plain HTTP" in transport.value()
    assert transport.disconnecting


def test_plain_http_requests_are_served() -> None:
    """An ordinary HTTP request on the channel is answered by the site."""
    channel, transport = connected_channel()

    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.value().endswith(b"hello")


def test_handshake_byte_later_in_a_connection_is_ordinary_data() -> None:
    """Only a connection's first byte is looked at; later bytes reach the parser."""
    channel, transport = connected_channel()

    channel.dataReceived(b"G")
    channel.dataReceived(b"ET / HTTP/1.1\r\nHost: \x16\r\n\r\n")

    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")


def test_absurd_content_length_is_refused_with_400() -> None:
    """A Content-Length of thousands of digits gets a 400, not a dropped line."""
    channel, transport = connected_channel()

    channel.dataReceived(
        b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"
    )

    assert transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Content-Length" in transport.value()
    assert transport.disconnecting


def test_ordinary_content_length_is_accepted() -> None:
    """A Content-Length of a sane size passes through to twisted.web."""
    channel, transport = connected_channel()

    channel.dataReceived(
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 000000000000000003\r\n\r\nabc"
    )

    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")


class TcpLike(StringTransport):
    """A string transport with the two knobs of Twisted's file descriptors."""

    bufferSize = FileDescriptor.bufferSize
    SEND_LIMIT = FileDescriptor.SEND_LIMIT


def test_connection_reads_and_sends_in_large_pieces() -> None:
    """The channel widens its TCP transport's reads (upload bodies reach the
    chunker a megabyte at a time) and sends (a pull is not held to 128 KiB a
    pass through the reactor), and still serves requests."""
    site = Site(Hello())
    site.protocol = RegistryChannel  # type: ignore[assignment]
    channel = site.buildProtocol(None)
    transport = TcpLike()

    channel.makeConnection(transport)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

    assert (transport.bufferSize, transport.SEND_LIMIT) == (READ_SIZE, SEND_SIZE)
    assert FileDescriptor.bufferSize < READ_SIZE
    assert FileDescriptor.SEND_LIMIT < SEND_SIZE
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
