"""Tests of the streaming request: raw HTTP bytes into a real Site over a fake socket.

The first group drives `StreamingSite` with a recording router and sink, to show that
body bytes reach the sink before the request ends and that the sink's pauses reach
the transport. The second drives the whole registry the same way.
"""

# Twisted's and treq's test helpers carry no annotations yet.
# mypy: disable-error-code="no-untyped-call"

from dataclasses import dataclass, field

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests.unit.memstore import MemoryStorage
from treescale.registry.app import Registry, RegistrySettings, make_site
from treescale.registry.errors import NAME_INVALID, ApiError
from treescale.registry.manifests import OCI_MANIFEST
from treescale.registry.request import BodySink, StreamingRequest, StreamingSite
from treescale.store.digests import sha256_digest
from treescale.store.errors import UploadFailed

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


@dataclass
class RecordingSink:
    """A sink that keeps what it is given and can be told to fail."""

    data: bytearray = field(default_factory=bytearray)
    producer: IPushProducer | None = None
    unregistered: int = 0
    fail: bool = False

    def register_producer(self, producer: IPushProducer) -> None:
        self.producer = producer

    def unregister_producer(self) -> None:
        self.unregistered += 1

    def write(self, data: bytes) -> None:
        if self.fail:
            raise UploadFailed("no relay took the chunk")
        self.data += data


@dataclass
class RecordingRouter:
    """Streams bodies of paths under /upload to its sink; keeps the rest."""

    body_limit: int = 16
    sink: RecordingSink = field(default_factory=RecordingSink)
    refuse: Exception | None = None
    seen: list[tuple[bytes, bytes, object]] = field(default_factory=list)

    def open_body(self, request: Request) -> BodySink | None:
        self.seen.append((request.method, request.path, request.args))
        if self.refuse is not None:
            raise self.refuse
        if request.path.startswith(b"/upload"):
            return self.sink
        return None


class Recorder(Resource):
    """A leaf resource that keeps the requests it renders and their kept bodies."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[StreamingRequest] = []
        self.bodies: list[bytes] = []

    def render(self, request: StreamingRequest) -> bytes:
        self.requests.append(request)
        self.bodies.append(request.content.read() if request.content else b"")
        return b"done"


@dataclass
class Connection:
    """One client connection to a site, over a StringTransport."""

    protocol: IProtocol
    transport: StringTransport

    def send(self, data: bytes) -> None:
        """Bytes from the client."""
        self.protocol.dataReceived(data)

    def lose(self) -> None:
        """The client goes away."""
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The first response written: status, headers (lowercase names), body."""
        return parse_response(self.transport.value())


def connect(site: Site) -> Connection:
    """Open a connection to a site."""
    protocol = site.buildProtocol(PEER)
    assert protocol is not None
    transport = StringTransport(peerAddress=PEER)
    protocol.makeConnection(transport)
    return Connection(protocol, transport)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of an HTTP/1.1 response."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        return status, headers, dechunk(rest)
    return status, headers, rest[: int(headers.get("content-length", "0"))]


def dechunk(data: bytes) -> bytes:
    """The payload of a chunked body."""
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body, data = body + data[:size], data[size + 2 :]
    return body


def request_head(method: str, path: str, *headers: str) -> bytes:
    """The request line and headers of a request."""
    lines = [f"{method} {path} HTTP/1.1", "Host: registry.test", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def streaming_site() -> tuple[StreamingSite, RecordingRouter, Recorder]:
    """A streaming site over a recording router and resource."""
    router = RecordingRouter()
    resource = Recorder()
    return StreamingSite(resource, router), router, resource


# The request class, with a recording router.


def test_method_path_and_args_known_before_the_body() -> None:
    """The router is asked, with method, path and args set, before any body byte."""
    site, router, resource = streaming_site()
    connection = connect(site)
    connection.send(request_head("PATCH", "/upload/1?a=b", "Content-Length: 8"))
    assert router.seen == [(b"PATCH", b"/upload/1", {b"a": [b"b"]})]
    assert router.sink.producer is not None
    assert resource.requests == []


def test_content_length_body_streams_as_it_arrives() -> None:
    """With Content-Length, body bytes reach the sink before the request ends."""
    site, router, resource = streaming_site()
    connection = connect(site)
    connection.send(request_head("PATCH", "/upload/1", "Content-Length: 40"))
    connection.send(b"x" * 30)
    assert bytes(router.sink.data) == b"x" * 30
    assert resource.requests == []

    connection.send(b"y" * 10)
    assert bytes(router.sink.data) == b"x" * 30 + b"y" * 10
    [request] = resource.requests
    assert request.body_sink is router.sink
    assert request.body_received == 40
    assert resource.bodies == [b""]
    assert connection.response()[2] == b"done"


def test_chunked_body_streams_as_it_arrives() -> None:
    """With Transfer-Encoding: chunked, each chunk reaches the sink as it arrives."""
    site, router, resource = streaming_site()
    connection = connect(site)
    connection.send(request_head("PUT", "/upload/1", "Transfer-Encoding: chunked"))
    connection.send(chunk(b"a" * 20))
    assert bytes(router.sink.data) == b"a" * 20
    connection.send(chunk(b"b" * 30))
    assert bytes(router.sink.data) == b"a" * 20 + b"b" * 30
    assert resource.requests == []

    connection.send(b"0\r\n\r\n")
    assert len(resource.requests) == 1
    assert connection.response()[0] == 200


def test_sink_pauses_and_resumes_the_transport() -> None:
    """A sink's pause stops the connection's reading; its resume restarts it."""
    site, router, _ = streaming_site()
    connection = connect(site)
    connection.send(request_head("PATCH", "/upload/1", "Content-Length: 10"))
    producer = router.sink.producer
    assert producer is not None

    producer.pauseProducing()
    assert connection.transport.producerState == "paused"
    producer.resumeProducing()
    assert connection.transport.producerState == "producing"


def test_body_end_lifts_a_pause_and_unregisters() -> None:
    """When the body ends, a pause left by the sink is lifted and the sink let go."""
    site, router, resource = streaming_site()
    connection = connect(site)
    connection.send(request_head("PATCH", "/upload/1", "Content-Length: 4"))
    producer = router.sink.producer
    assert producer is not None
    producer.pauseProducing()
    connection.send(b"data")

    assert router.sink.unregistered == 1
    assert connection.transport.producerState == "producing"
    assert len(resource.requests) == 1

    producer.pauseProducing()
    assert connection.transport.producerState == "producing"


def test_sink_failure_is_kept_and_the_rest_dropped() -> None:
    """A sink that fails mid-body: the error is kept, later bytes are not written."""
    site, router, resource = streaming_site()
    connection = connect(site)
    connection.send(request_head("PATCH", "/upload/1", "Content-Length: 8"))
    connection.send(b"abcd")
    router.sink.fail = True
    connection.send(b"ef")
    router.sink.fail = False
    connection.send(b"gh")

    [request] = resource.requests
    assert isinstance(request.body_error, UploadFailed)
    assert bytes(router.sink.data) == b"abcd"
    assert router.sink.unregistered == 1


def test_refused_body_is_kept_as_error_and_dropped() -> None:
    """A body the router refuses is read and dropped; the refusal is kept."""
    site, router, resource = streaming_site()
    router.refuse = ApiError(NAME_INVALID)
    connection = connect(site)
    connection.send(request_head("PATCH", "/upload/1", "Content-Length: 6") + b"abcdef")

    [request] = resource.requests
    assert request.body_error is router.refuse
    assert request.body_sink is None
    assert resource.bodies == [b""]


def test_other_bodies_are_kept_within_the_limit() -> None:
    """A body not streamed is kept in memory when within the router's limit."""
    site, router, resource = streaming_site()
    connection = connect(site)
    connection.send(request_head("PUT", "/other", "Content-Length: 16") + b"m" * 16)

    [request] = resource.requests
    assert not request.body_overflow
    assert resource.bodies == [b"m" * 16]
    assert router.sink.data == b""


def test_announced_oversized_body_is_dropped() -> None:
    """A kept body announced past the limit is marked overflowing and not stored."""
    site, _, resource = streaming_site()
    connection = connect(site)
    connection.send(request_head("PUT", "/other", "Content-Length: 17") + b"m" * 17)

    [request] = resource.requests
    assert request.body_overflow
    assert resource.bodies == [b""]


def test_chunked_oversized_body_is_dropped() -> None:
    """A chunked kept body that grows past the limit is dropped, not buffered."""
    site, _, resource = streaming_site()
    connection = connect(site)
    connection.send(request_head("PUT", "/other", "Transfer-Encoding: chunked"))
    connection.send(chunk(b"a" * 10) + chunk(b"b" * 10) + chunk(b"c") + b"0\r\n\r\n")

    [request] = resource.requests
    assert request.body_overflow
    assert resource.bodies == [b""]


def test_client_leaving_mid_body_releases_the_sink() -> None:
    """A client that hangs up mid-body: the sink is let go, the pause lifted."""
    site, router, resource = streaming_site()
    connection = connect(site)
    connection.send(request_head("PATCH", "/upload/1", "Content-Length: 10") + b"abc")
    assert router.sink.producer is not None
    router.sink.producer.pauseProducing()
    connection.lose()

    assert router.sink.unregistered == 1
    assert connection.transport.producerState == "producing"
    assert resource.requests == []


def test_site_without_router_keeps_bodies() -> None:
    """On a plain site the streaming request keeps bodies, within the default cap."""
    resource = Recorder()
    site = Site(resource, requestFactory=StreamingRequest)
    connection = connect(site)
    connection.send(request_head("PATCH", "/upload/1", "Content-Length: 3") + b"abc")

    [request] = resource.requests
    assert request.body_sink is None
    assert resource.bodies == [b"abc"]


def test_twisted_exposes_the_request_line() -> None:
    """The channel attributes the request relies on exist in this Twisted."""
    site, _, resource = streaming_site()
    connection = connect(site)
    connection.send(request_head("PATCH", "/upload/1", "Content-Length: 1") + b"x")
    [request] = resource.requests
    assert request.request_line_known


# The whole registry over raw HTTP.


@dataclass
class Node:
    """A registry on a streaming site, and its storage."""

    settings: RegistrySettings = field(default_factory=RegistrySettings)
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        self.registry = Registry(self.storage, self.clock, self.settings)
        self.site = make_site(self.registry)

    def exchange(self, head: bytes, *body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send one request on a new connection; return its response."""
        connection = connect(self.site)
        connection.send(head)
        for part in body:
            connection.send(part)
        return connection.response()

    def start_upload(self, repo: str) -> str:
        """Open an upload session; return its location."""
        status, headers, _ = self.exchange(
            request_head("POST", f"/v2/{repo}/blobs/uploads/", "Content-Length: 0")
        )
        assert status == 202
        return headers["location"]


DATA = b"0123456789" * 10


def test_chunked_push_over_the_wire() -> None:
    """POST, chunked PATCHes and PUT stream into one upload; GET reads the blob back."""
    node = Node()
    location = node.start_upload("a/b")
    status, headers, _ = node.exchange(
        request_head("PATCH", location, "Transfer-Encoding: chunked"),
        chunk(DATA[:30]),
        chunk(DATA[30:60]),
        b"0\r\n\r\n",
    )
    assert status == 202
    assert headers["range"] == "0-59"

    digest = sha256_digest(DATA)
    status, headers, _ = node.exchange(
        request_head(
            "PUT",
            f"{location}?digest={digest}",
            "Content-Length: 40",
            "Content-Range: 60-99",
        ),
        DATA[60:],
    )
    assert status == 201
    assert headers["docker-content-digest"] == digest
    assert node.storage.uploads[0].registrations == 2

    status, headers, body = node.exchange(
        request_head("GET", f"/v2/a/b/blobs/{digest}")
    )
    assert status == 200
    assert body == DATA
    assert headers["content-length"] == str(len(DATA))
    assert "transfer-encoding" not in headers


def test_upload_fed_one_byte_at_a_time() -> None:
    """A chunked PATCH arriving one byte at a time streams every byte, in order."""
    node = Node()
    location = node.start_upload("a")
    connection = connect(node.site)
    raw = (
        request_head("PATCH", location, "Transfer-Encoding: chunked")
        + chunk(DATA[:33])
        + chunk(DATA[33:])
        + b"0\r\n\r\n"
    )
    for index in range(len(raw)):
        connection.send(raw[index : index + 1])
    assert connection.response()[0] == 202

    digest = sha256_digest(DATA)
    status, _, _ = node.exchange(request_head("PUT", f"{location}?digest={digest}"))
    assert status == 201
    assert node.storage.blobs[digest] == DATA


def test_monolithic_post_over_the_wire() -> None:
    """A single POST with the blob streams it into a new upload and links it."""
    node = Node()
    digest = sha256_digest(DATA)
    status, headers, _ = node.exchange(
        request_head(
            "POST",
            f"/v2/a/blobs/uploads/?digest={digest}",
            f"Content-Length: {len(DATA)}",
        ),
        DATA,
    )
    assert status == 201
    assert headers["location"] == f"/v2/a/blobs/{digest}"
    assert node.storage.blobs[digest] == DATA
    assert node.storage.uploads[0].registrations == 1
    assert len(node.registry.sessions) == 0


def test_out_of_order_chunk_over_the_wire_is_not_written() -> None:
    """A streamed chunk at the wrong offset is 416 and none of its bytes are kept."""
    node = Node()
    location = node.start_upload("a")
    status, headers, body = node.exchange(
        request_head("PATCH", location, "Content-Length: 5", "Content-Range: 3-7"),
        b"abcde",
    )
    assert status == 416
    assert headers["range"] == "0-0"
    assert b"BLOB_UPLOAD_INVALID" in body
    assert node.storage.uploads[0].size == 0
    assert node.storage.uploads[0].registrations == 0


def test_unknown_session_over_the_wire() -> None:
    """A streamed PATCH to an unknown session is 404 and its body is dropped."""
    node = Node()
    status, _, body = node.exchange(
        request_head("PATCH", "/v2/a/blobs/uploads/nope", "Content-Length: 3"), b"abc"
    )
    assert status == 404
    assert b"BLOB_UPLOAD_UNKNOWN" in body


def test_streamed_upload_failure_over_the_wire() -> None:
    """A chunk put failing mid-body makes the PATCH 503 and ends the session."""
    node = Node()
    location = node.start_upload("a")
    node.storage.fail_writes = True
    status, _, body = node.exchange(
        request_head("PATCH", location, "Content-Length: 3"), b"abc"
    )
    assert status == 503
    assert b"UNAVAILABLE" in body
    assert len(node.registry.sessions) == 0
    assert node.storage.uploads[0].aborted


def test_client_leaving_mid_patch_keeps_the_session() -> None:
    """A PATCH cut off mid-body leaves the session, free, with the bytes received."""
    node = Node()
    location = node.start_upload("a")
    connection = connect(node.site)
    connection.send(request_head("PATCH", location, "Content-Length: 10") + b"abcd")
    [session] = [node.registry.sessions.get(location.rsplit("/", 1)[1], "a")]
    assert session.busy
    connection.lose()

    assert not session.busy
    status, headers, _ = node.exchange(request_head("GET", location))
    assert status == 204
    assert headers["range"] == "0-3"


def test_busy_session_refuses_a_second_writer_and_delete() -> None:
    """While one PATCH streams into a session, another PATCH or a DELETE is refused."""
    node = Node()
    location = node.start_upload("a")
    first = connect(node.site)
    first.send(request_head("PATCH", location, "Content-Length: 6") + b"abc")

    for head in [
        request_head("PATCH", location, "Content-Length: 3"),
        request_head("DELETE", location),
    ]:
        status, _, body = node.exchange(head, b"xyz" if b"PATCH" in head else b"")
        assert status == 400
        assert b"BLOB_UPLOAD_INVALID" in body

    first.send(b"def")
    status, headers, _ = first.response()
    assert status == 202
    assert headers["range"] == "0-5"
    assert node.storage.uploads[0].size == 6


def test_client_leaving_mid_monolithic_post_drops_the_upload() -> None:
    """A single POST cut off mid-body leaves no session behind."""
    node = Node()
    digest = sha256_digest(DATA)
    connection = connect(node.site)
    connection.send(
        request_head(
            "POST", f"/v2/a/blobs/uploads/?digest={digest}", "Content-Length: 100"
        )
        + DATA[:10]
    )
    assert len(node.registry.sessions) == 1
    connection.lose()
    assert len(node.registry.sessions) == 0
    assert node.storage.uploads[0].aborted


def push_data(node: "Node") -> str:
    """Store DATA in repository ``a`` with one monolithic POST; its digest."""
    digest = sha256_digest(DATA)
    node.exchange(
        request_head(
            "POST",
            f"/v2/a/blobs/uploads/?digest={digest}",
            f"Content-Length: {len(DATA)}",
        ),
        DATA,
    )
    return digest


def test_client_leaving_cancels_the_blob_read() -> None:
    """A client that hangs up during a blob read cancels the read."""
    node = Node()
    digest = push_data(node)
    node.storage.hold_reads = True
    connection = connect(node.site)
    connection.send(request_head("GET", f"/v2/a/blobs/{digest}"))
    assert len(node.storage.held) == 1
    connection.lose()

    assert node.storage.cancelled_reads == 1
    assert node.storage.read_producers[0].stopped is False


def test_held_read_completes_when_released() -> None:
    """A read held by the storage answers once the storage lets it go."""
    node = Node()
    digest = push_data(node)
    node.storage.hold_reads = True
    connection = connect(node.site)
    connection.send(request_head("GET", f"/v2/a/blobs/{digest}", "Range: bytes=5-14"))
    assert connection.transport.value() == b""
    node.storage.held[0].callback(None)

    status, headers, body = connection.response()
    assert status == 206
    assert body == DATA[5:15]
    assert headers["content-range"] == f"bytes 5-14/{len(DATA)}"


def test_read_failing_mid_body_aborts_the_response() -> None:
    """A read that fails after the body has begun aborts the connection."""
    node = Node()
    digest = push_data(node)
    node.storage.fail_reads_after = 2
    connection = connect(node.site)
    connection.send(request_head("GET", f"/v2/a/blobs/{digest}"))

    status, headers, body = connection.response()
    assert status == 200
    assert headers["content-length"] == str(len(DATA))
    assert body == DATA[: 2 * node.storage.piece_size]
    assert connection.transport.disconnecting


def test_manifest_push_over_the_wire() -> None:
    """A manifest PUT is kept in memory and stored; past the limit it is 413."""
    node = Node(settings=RegistrySettings(max_manifest_size=400))
    digest = sha256_digest(b"{}")
    node.exchange(
        request_head(
            "POST", f"/v2/a/blobs/uploads/?digest={digest}", "Content-Length: 2"
        ),
        b"{}",
    )
    manifest = (
        b'{"schemaVersion": 2, "mediaType": "%s", "config": {"mediaType": '
        b'"application/vnd.oci.image.config.v1+json", "digest": "%s", "size": 2}, '
        b'"layers": []}' % (OCI_MANIFEST.encode(), digest.encode())
    )
    status, headers, _ = node.exchange(
        request_head(
            "PUT",
            "/v2/a/manifests/latest",
            f"Content-Type: {OCI_MANIFEST}",
            f"Content-Length: {len(manifest)}",
        ),
        manifest,
    )
    assert status == 201
    assert headers["docker-content-digest"] == sha256_digest(manifest)

    status, _, body = node.exchange(
        request_head(
            "PUT",
            "/v2/a/manifests/big",
            f"Content-Type: {OCI_MANIFEST}",
            "Content-Length: 401",
        ),
        b" " * 401,
    )
    assert status == 413
    assert b"SIZE_INVALID" in body
