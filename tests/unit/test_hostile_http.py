"""Hostile clients of the HTTP API: slow ones, greedy ones and endless bodies.

The slow-client cases drive a registry's streaming site over StringTransport with a
`Clock` as the site's reactor, so a client that sends a byte a second for minutes
runs in no time. `Pace` itself is checked without any connection.
"""

# Twisted's test helpers carry no annotations yet.
# mypy: disable-error-code="no-untyped-call"

from dataclasses import dataclass, field

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.unit.memstore import MemoryStorage
from tests.unit.test_registry_app import BLOB, encode, image_manifest
from tests.unit.test_registry_request import Connection, parse_response, request_head
from treescale.registry.app import Registry, RegistrySettings, make_site
from treescale.registry.channel import Pace, PaceLimits, Phase, RegistryChannel
from treescale.registry.request import ReadGate
from treescale.registry.settings import parse_registry_settings
from treescale.store.digests import sha256_digest

LIMITS = PaceLimits(header_timeout=10.0, min_body_rate=100, body_rate_window=5.0)
SETTINGS = RegistrySettings(
    header_timeout=10.0,
    min_body_rate=100,
    body_rate_window=5.0,
    client_idle_timeout=20.0,
    max_upload_sessions_per_client=3,
)


def address(host: str) -> IPv4Address:
    return IPv4Address("TCP", host, 40000)


@dataclass
class Node:
    """A registry on its streaming site, with a Clock for both."""

    settings: RegistrySettings = SETTINGS
    clock: Clock = field(default_factory=Clock)
    storage: MemoryStorage = field(default_factory=MemoryStorage)

    def __post_init__(self) -> None:
        self.registry = Registry(self.storage, self.clock, self.settings)
        self.site = make_site(self.registry)
        self.site.reactor = self.clock

    def connect(self, host: str = "127.0.0.1") -> Connection:
        protocol = self.site.buildProtocol(address(host))
        assert isinstance(protocol, RegistryChannel)
        transport = StringTransport(peerAddress=address(host))
        protocol.makeConnection(transport)
        return Connection(protocol, transport)

    def exchange(
        self, raw: bytes, host: str = "127.0.0.1"
    ) -> tuple[int, dict[str, str], bytes]:
        connection = self.connect(host)
        connection.send(raw)
        return connection.response()

    def start_upload(self, repo: str = "a/b", host: str = "127.0.0.1") -> int:
        head = request_head("POST", f"/v2/{repo}/blobs/uploads/", "Content-Length: 0")
        return self.exchange(head, host)[0]

    def open_location(self, repo: str = "a/b") -> str:
        head = request_head("POST", f"/v2/{repo}/blobs/uploads/", "Content-Length: 0")
        status, headers, _ = self.exchange(head)
        assert status == 202
        return headers["location"]

    def push_blob(self, data: bytes, repo: str = "a/b") -> str:
        digest = sha256_digest(data)
        head = request_head(
            "POST",
            f"/v2/{repo}/blobs/uploads/?digest={digest}",
            f"Content-Length: {len(data)}",
        )
        assert self.exchange(head + data)[0] == 201
        return digest

    def trickle(self, connection: Connection, data: bytes, every: float) -> int:
        """Send `data` a byte at a time, `every` seconds apart, while the
        connection stays open; how many bytes went."""
        sent = 0
        for byte in data:
            if connection.transport.disconnecting:
                break
            connection.send(bytes([byte]))
            sent += 1
            self.clock.advance(every)
        return sent


# Pace, without a connection.


def test_pace_allows_headers_within_the_deadline() -> None:
    pace = Pace(LIMITS)
    pace.data(1, now=0.0)
    assert pace.verdict(9.9) is None
    pace.headers_done(9.9)
    assert pace.phase is Phase.BODY


def test_pace_refuses_headers_past_the_deadline() -> None:
    pace = Pace(LIMITS)
    pace.data(1, now=100.0)
    assert pace.verdict(110.5) == "request headers took too long"


def test_idle_connection_is_not_judged_by_pace() -> None:
    """Waiting between requests is the idle timeout's business, not the pace's."""
    pace = Pace(LIMITS)
    assert pace.verdict(1e6) is None


def test_pace_judges_the_body_by_its_average_over_a_window() -> None:
    pace = Pace(LIMITS)
    pace.data(10, 0.0)
    pace.headers_done(0.0)
    pace.data(499, 4.0)
    assert pace.verdict(4.9) is None, "the window is not over yet"
    verdict = pace.verdict(5.0)
    assert verdict is not None and "bytes/s" in verdict


def test_pace_starts_a_new_window_after_a_good_one() -> None:
    pace = Pace(LIMITS)
    pace.headers_done(0.0)
    pace.data(500, 1.0)
    assert pace.verdict(5.0) is None
    pace.data(500, 6.0)
    assert pace.verdict(10.0) is None
    assert pace.verdict(15.0) is not None, "nothing came in the third window"


def test_time_paused_by_the_registry_is_not_counted() -> None:
    pace = Pace(LIMITS)
    pace.headers_done(0.0)
    pace.paused(0.0)
    assert pace.verdict(1000.0) is None
    pace.resumed(1000.0)
    pace.data(500, 1004.0)
    assert pace.verdict(1005.0) is None


def test_zero_rate_accepts_any_body() -> None:
    pace = Pace(PaceLimits(10.0, 0, 5.0))
    pace.headers_done(0.0)
    assert pace.verdict(1e6) is None


def test_finished_body_is_no_longer_judged() -> None:
    pace = Pace(LIMITS)
    pace.headers_done(0.0)
    pace.body_done()
    assert pace.verdict(1e6) is None
    pace.request_done()
    assert pace.phase is Phase.IDLE


def test_read_gate_reports_real_changes_only() -> None:
    seen: list[bool] = []
    gate = ReadGate(None, seen.append)
    gate.pauseProducing()
    gate.pauseProducing()
    gate.resumeProducing()
    gate.detach()
    gate.pauseProducing()
    assert seen == [True, False]


# Slow clients over a connection.


def test_headers_sent_a_byte_a_second_get_408_and_a_close() -> None:
    node = Node()
    connection = node.connect()
    head = request_head("GET", "/v2/", "X-Padding: " + "p" * 100)

    sent = node.trickle(connection, head, every=1.0)

    assert sent < len(head)
    assert sent <= SETTINGS.header_timeout + 2
    assert connection.transport.value().startswith(b"HTTP/1.1 408 ")
    assert connection.transport.disconnecting


def test_headers_in_time_are_served_and_the_connection_kept() -> None:
    node = Node()
    connection = node.connect()
    node.trickle(connection, request_head("GET", "/v2/"), every=0.1)
    status, _, _ = connection.response()
    assert status == 200
    node.clock.advance(SETTINGS.header_timeout * 3)
    assert b"408" not in connection.transport.value()


def test_trickled_upload_body_is_dropped_and_its_session_released() -> None:
    node = Node()
    location = node.open_location()
    uuid = location.rsplit("/", 1)[1]
    connection = node.connect()
    connection.send(
        request_head("PATCH", location, "Content-Length: 100000")
        + b"x" * 50  # a good start, then a trickle
    )
    session = node.registry.sessions.get(uuid, "a/b")
    assert session.busy

    sent = node.trickle(connection, b"y" * 1000, every=1.0)

    assert sent <= 2 * SETTINGS.body_rate_window + 2
    assert connection.transport.value().startswith(b"HTTP/1.1 408 ")
    connection.lose()
    assert not session.busy, "the dropped request must release its session"
    assert session in node.registry.sessions


def test_upload_body_at_a_fair_rate_is_taken() -> None:
    node = Node()
    data = b"z" * 2000
    digest = sha256_digest(data)
    connection = node.connect()
    connection.send(
        request_head(
            "POST",
            f"/v2/a/b/blobs/uploads/?digest={digest}",
            f"Content-Length: {len(data)}",
        )
    )
    for offset in range(0, len(data), 200):
        connection.send(data[offset : offset + 200])
        node.clock.advance(1.0)
    status, _, _ = connection.response()
    assert status == 201


def test_pause_by_the_registry_is_not_held_against_the_client() -> None:
    node = Node()
    connection = node.connect()
    connection.send(request_head("PUT", "/v2/a/b/manifests/t", "Content-Length: 9"))
    channel = connection.protocol
    assert isinstance(channel, RegistryChannel)
    channel.reading_paused(True)
    node.clock.advance(SETTINGS.body_rate_window * 10)
    assert not connection.transport.disconnecting
    channel.reading_paused(False)
    node.clock.advance(SETTINGS.body_rate_window + 1)
    assert connection.transport.value().startswith(b"HTTP/1.1 408 ")


def test_silent_connection_is_closed_after_the_idle_timeout() -> None:
    node = Node()
    connection = node.connect()
    node.clock.advance(SETTINGS.client_idle_timeout + 1)
    assert connection.transport.disconnecting


# Greedy clients.


def test_one_client_may_hold_only_its_share_of_sessions() -> None:
    node = Node()
    cap = SETTINGS.max_upload_sessions_per_client
    assert [node.start_upload() for _ in range(cap)] == [202] * cap

    head = request_head("POST", "/v2/a/b/blobs/uploads/", "Content-Length: 0")
    status, _, body = node.exchange(head)
    assert status == 429
    assert b"TOOMANYREQUESTS" in body

    assert node.start_upload(host="127.0.0.2") == 202, "others are not refused"
    assert node.registry.sessions.held_by("127.0.0.1") == cap


def test_ended_session_gives_its_client_room_again() -> None:
    node = Node()
    cap = SETTINGS.max_upload_sessions_per_client
    locations = [node.open_location() for _ in range(cap)]
    assert node.start_upload() == 429

    status, _, _ = node.exchange(request_head("DELETE", locations[0]))
    assert status == 204
    assert node.start_upload() == 202


def test_expired_sessions_give_their_client_room_again() -> None:
    node = Node()
    cap = SETTINGS.max_upload_sessions_per_client
    for _ in range(cap):
        node.open_location()
    node.clock.advance(SETTINGS.upload_idle_timeout + 1)
    assert node.registry.sessions.held_by("127.0.0.1") == 0
    assert node.start_upload() == 202


def test_monolithic_uploads_do_not_use_up_the_share() -> None:
    node = Node()
    for n in range(SETTINGS.max_upload_sessions_per_client + 2):
        data = b"blob %d" % n
        head = request_head(
            "POST",
            f"/v2/a/b/blobs/uploads/?digest={sha256_digest(data)}",
            f"Content-Length: {len(data)}",
        )
        assert node.exchange(head + data)[0] == 201
    assert node.registry.sessions.held_by("127.0.0.1") == 0


# Endless bodies.


def chunked(piece: bytes, count: int) -> bytes:
    """`count` chunks of `piece`, without the closing chunk."""
    return (b"%x\r\n" % len(piece) + piece + b"\r\n") * count


def test_endless_chunked_manifest_is_413_and_not_kept() -> None:
    node = Node()
    connection = node.connect()
    connection.send(
        request_head(
            "PUT",
            "/v2/a/b/manifests/t",
            "Transfer-Encoding: chunked",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
        )
    )
    piece = b"[" * 65536
    limit = SETTINGS.max_manifest_size
    for _ in range(limit // len(piece) + 8):
        connection.send(chunked(piece, 1))
    request = connection.protocol.requests[-1]  # type: ignore[attr-defined]
    assert request.body_overflow
    assert request.content.tell() == 0, "nothing past the limit is buffered"
    connection.send(b"0\r\n\r\n")
    status, _, body = connection.response()
    assert status == 413
    assert b"SIZE_INVALID" in body


def test_manifest_within_the_limit_still_goes_in_chunked() -> None:
    node = Node()
    config, layer = node.push_blob(b"{}"), node.push_blob(BLOB)
    body = encode(image_manifest(config, layer))
    connection = node.connect()
    connection.send(
        request_head(
            "PUT",
            "/v2/a/b/manifests/t",
            "Transfer-Encoding: chunked",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
        )
        + chunked(body, 1)
        + b"0\r\n\r\n"
    )
    assert parse_response(connection.transport.value())[0] == 201


# Settings.


def test_slow_client_limits_are_registry_settings() -> None:
    settings = parse_registry_settings(
        {
            "header_timeout": 5,
            "min_body_rate": 0,
            "body_rate_window": 2.5,
            "client_idle_timeout": 7,
            "max_upload_sessions_per_client": 2,
        },
        source=__import__("pathlib").Path("topology.toml"),
    )
    assert settings.header_timeout == 5.0
    assert settings.min_body_rate == 0
    assert settings.max_upload_sessions_per_client == 2
    site = make_site(Registry(MemoryStorage(), Clock(), settings))
    assert site.timeOut == 7.0
    assert site.pace_limits == PaceLimits(5.0, 0, 2.5)  # type: ignore[attr-defined]
