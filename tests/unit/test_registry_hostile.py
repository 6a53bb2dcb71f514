"""Tests of the registry against hostile and malformed input, found against a cluster.

Each case here once made the registry answer 500, drop the connection without an
answer, answer in plain text, or log a traceback for a client's mistake. Most go over
the wire into the streaming site (raw request bytes, as a hostile client sends them);
the manifest cases go through StubTreq. Every answer must be a 4xx with the spec's
JSON error body, and the registry's log must hold no failure.
"""

# Twisted's and treq's test helpers carry no annotations yet.
# mypy: disable-error-code="no-untyped-call"

import json
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger
from zope.interface import implementer

from tests.unit.memstore import MemoryStorage
from tests.unit.test_registry_app import World, encode, image_manifest
from tests.unit.test_registry_request import Connection, connect, request_head
from treescale.registry.app import Registry, RegistrySettings, make_site
from treescale.registry.errors import ApiError
from treescale.registry.manifests import OCI_MANIFEST, parse_manifest
from treescale.registry.ranges import (
    MAX_COUNT,
    parse_content_range,
    parse_count,
    parse_range,
)
from treescale.store.digests import sha256_digest

DATA = b"0123456789" * 10
HUGE = "9" * 5000
"""Past the 4300 digits Python's ``int`` reads from a string."""


@dataclass
class Node:
    """A registry on a streaming site, its storage and its log."""

    storage: MemoryStorage = field(default_factory=MemoryStorage)
    clock: Clock = field(default_factory=Clock)
    events: EventLoggingObserver = field(default_factory=EventLoggingObserver)

    def __post_init__(self) -> None:
        self.registry = Registry(self.storage, self.clock, RegistrySettings())
        self.registry.log = Logger(observer=self.events)
        self.site = make_site(self.registry)

    def send(self, raw: bytes) -> Connection:
        """Send raw bytes on a new connection."""
        connection = connect(self.site)
        connection.send(raw)
        return connection

    def exchange(
        self, head: bytes, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a new connection, and its response."""
        return self.send(head + body).response()

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload a blob in one POST; return its digest."""
        digest = sha256_digest(data)
        head = request_head(
            "POST",
            f"/v2/{repo}/blobs/uploads/?digest={digest}",
            f"Content-Length: {len(data)}",
        )
        assert self.exchange(head, data)[0] == 201
        return digest

    def start_upload(self, repo: str) -> str:
        """Open an upload session; return its location."""
        status, headers, _ = self.exchange(
            request_head("POST", f"/v2/{repo}/blobs/uploads/", "Content-Length: 0")
        )
        assert status == 202
        return headers["location"]

    def failures(self) -> list[object]:
        """Failures the registry logged: bugs, never a client's mistake."""
        return [event for event in self.events if "log_failure" in event]


def error_code(status: int, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    """The status and spec code of an error answer, checked to be the spec's body."""
    assert headers["content-type"] == "application/json"
    errors = json.loads(body)["errors"]
    assert len(errors) == 1
    return status, str(errors[0]["code"])


def raw_request(method: bytes, path: bytes, *headers: bytes) -> bytes:
    """A request head from raw bytes, for bytes no text encoding would produce."""
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: registry.test", *headers]
    return b"\r\n".join([*lines, b"", b""])


# The request line: query, path and Host.


def test_query_escaping_non_ascii_bytes_is_answered() -> None:
    """A query whose escapes decode past ASCII gets an answer, not a dropped link."""
    node = Node()
    answer = node.exchange(request_head("GET", "/v2/a/tags/list?last=%ff%fe"))
    assert error_code(*answer) == (404, "NAME_UNKNOWN")

    answer = node.exchange(request_head("GET", "/v2/a/tags/list?n=%C2%B2"))
    assert error_code(*answer) == (404, "NAME_UNKNOWN")
    assert node.failures() == []


def test_monolithic_upload_with_non_ascii_digest_is_refused() -> None:
    """A one-request upload whose digest escapes to non-ASCII is DIGEST_INVALID."""
    node = Node()
    answer = node.exchange(
        request_head("POST", "/v2/a/blobs/uploads/?digest=%ff", "Content-Length: 3"),
        b"abc",
    )
    assert error_code(*answer) == (400, "DIGEST_INVALID")
    assert len(node.registry.sessions) == 0
    assert node.failures() == []


def test_path_that_is_not_utf8_gets_the_spec_error() -> None:
    """A path escaping bytes that are not UTF-8 is a JSON 400, not Klein's text."""
    node = Node()
    for path in ["/v2/a/blobs/%ff", "/v2/%ff/blobs/uploads/", "/v2/a/manifests/%c3"]:
        status, headers, body = node.exchange(request_head("GET", path))
        assert error_code(status, headers, body) == (400, "UNSUPPORTED")
        assert headers["docker-distribution-api-version"] == "registry/2.0"


def test_host_that_is_not_utf8_gets_the_spec_error() -> None:
    """A Host header that is not UTF-8 is a JSON 400, not Klein's text."""
    node = Node()
    connection = node.send(
        b"GET /v2/ HTTP/1.1\r\nHost: \xff\xfe\r\nContent-Length: 0\r\n\r\n"
    )
    assert error_code(*connection.response()) == (400, "UNSUPPORTED")


def test_upload_to_a_path_that_is_not_utf8_drops_the_body() -> None:
    """A PATCH to a path that is not UTF-8 is refused and opens or writes nothing."""
    node = Node()
    answer = node.exchange(
        request_head("PATCH", "/v2/a/blobs/uploads/%ff", "Content-Length: 3"), b"abc"
    )
    assert error_code(*answer) == (400, "UNSUPPORTED")
    assert node.storage.uploads == []


def test_double_slashes_are_no_endpoint() -> None:
    """Empty path segments name no endpoint: a 404, where werkzeug redirected (500)."""
    node = Node()
    digest = sha256_digest(DATA)
    for path in [f"/v2//blobs/{digest}", "/v2//", "/v2/a//manifests/x"]:
        status, _, body = node.exchange(request_head("GET", path))
        assert status in (400, 404)
        assert json.loads(body)["errors"][0]["code"] in ("UNSUPPORTED", "NAME_INVALID")
    assert node.failures() == []


# Header values.


def test_range_header_that_is_not_utf8_is_unsatisfiable() -> None:
    """A Range header of non-UTF-8 bytes is 416, not a decoding error."""
    node = Node()
    digest = node.push_blob("a", DATA)
    answer = node.exchange(
        raw_request(b"GET", f"/v2/a/blobs/{digest}".encode(), b"Range: bytes=\xff-")
    )
    assert error_code(*answer) == (416, "RANGE_INVALID")
    assert node.failures() == []


def test_content_type_that_is_not_utf8_is_unsupported() -> None:
    """A manifest PUT whose Content-Type is not UTF-8 is 415, not a decoding error."""
    node = Node()
    body = b'{"schemaVersion": 2}'
    answer = node.exchange(
        raw_request(
            b"PUT",
            b"/v2/a/manifests/t",
            b"Content-Type: \xff\xfe",
            b"Content-Length: %d" % len(body),
        ),
        body,
    )
    assert error_code(*answer) == (415, "UNSUPPORTED")


def test_content_range_that_is_not_utf8_keeps_the_session() -> None:
    """A chunk whose Content-Range is not UTF-8 is refused; the session lives on."""
    node = Node()
    location = node.start_upload("a")
    answer = node.exchange(
        raw_request(
            b"PATCH",
            location.encode(),
            b"Content-Range: \xd9\xa0-\xd9\xa0",
            b"Content-Length: 1",
        ),
        b"x",
    )
    assert error_code(*answer) == (416, "BLOB_UPLOAD_INVALID")
    assert node.storage.uploads[0].size == 0
    assert len(node.registry.sessions) == 1


# Numbers of thousands of digits, and digits of other scripts.


def test_range_of_thousands_of_digits() -> None:
    """A range starting past 4300 digits is 416; a suffix that long is the whole."""
    node = Node()
    digest = node.push_blob("a", DATA)
    path = f"/v2/a/blobs/{digest}"
    answer = node.exchange(request_head("GET", path, f"Range: bytes={HUGE}-"))
    assert error_code(*answer) == (416, "RANGE_INVALID")

    status, _, body = node.exchange(request_head("GET", path, f"Range: bytes=-{HUGE}"))
    assert (status, body) == (206, DATA)

    status, _, body = node.exchange(request_head("GET", path, f"Range: bytes=0-{HUGE}"))
    assert (status, body) == (206, DATA)
    assert node.failures() == []


def test_content_range_of_thousands_of_digits() -> None:
    """A chunk whose Content-Range is past 4300 digits is refused, not a 500."""
    node = Node()
    location = node.start_upload("a")
    answer = node.exchange(
        request_head(
            "PATCH", location, f"Content-Range: {HUGE}-{HUGE}", "Content-Length: 1"
        ),
        b"x",
    )
    assert error_code(*answer) == (416, "BLOB_UPLOAD_INVALID")

    answer = node.exchange(
        request_head(
            "PATCH", location, f"Content-Range: 0-{HUGE}", "Content-Length: 1"
        ),
        b"x",
    )
    assert error_code(*answer) == (400, "SIZE_INVALID")
    assert node.storage.uploads[0].size == 0
    assert node.failures() == []


def test_tag_page_sizes_of_other_digits_or_many_digits() -> None:
    """``n`` of a non-ASCII digit is a bad page size; thousands of digits, a full
    page."""
    world = World()
    assert world.push_image("a", "v1").code == 201

    answer = world.send("GET", "/v2/a/tags/list?n=%C2%B2")
    assert (answer.code, answer.error) == (400, "PAGINATION_NUMBER_INVALID")

    answer = world.send("GET", f"/v2/a/tags/list?n={HUGE}")
    assert answer.code == 200
    assert answer.json()["tags"] == ["v1"]
    assert [event for event in world.events if "log_failure" in event] == []


def test_ranges_take_ascii_digits_only() -> None:
    """Digits of other scripts, which ``int`` reads, are not a range's numbers."""
    for header in ["bytes=\u0663-\u0664", "bytes=\u00b2-", "bytes=-\uff11"]:
        try:
            parse_range(header, 100)
        except ApiError as error:
            assert error.error.code == "RANGE_INVALID"
        else:
            raise AssertionError(f"{header!r} was taken as a range")


@given(st.text(max_size=40), st.integers(min_value=0, max_value=2**40))
def test_any_range_header_parses_or_is_416(header: str, size: int) -> None:
    """Any Range header gives a range of ASCII digits inside the blob, or a 416."""
    try:
        byte_range = parse_range(header, size)
    except ApiError as error:
        assert error.status == 416
        return
    assert header.strip().isascii()
    assert byte_range is not None
    assert 0 <= byte_range.start < byte_range.end <= size


@given(st.text(max_size=40))
def test_any_content_range_parses_or_is_refused(header: str) -> None:
    """Any Content-Range gives an ordered pair of ASCII counts or the spec's error."""
    try:
        first, last = parse_content_range(header)
    except ApiError as error:
        assert error.error.code == "BLOB_UPLOAD_INVALID"
        return
    assert header.strip().isascii()
    assert 0 <= first <= last <= MAX_COUNT


def test_counts_saturate_and_refuse_non_counts() -> None:
    """Counts are ASCII digits, leading zeros allowed, saturated past int64."""
    assert parse_count("0007") == 7
    assert parse_count("0" * 5000 + "12") == 12
    assert parse_count(HUGE) == MAX_COUNT
    for text in ["", "-1", "1.5", "\u00b2", "\u0661", " 1", "0x10"]:
        assert parse_count(text) is None


# Manifests.


def test_deeply_nested_manifest_is_invalid() -> None:
    """JSON nested past the parser's recursion limit is MANIFEST_INVALID, not a 500."""
    world = World()
    body = b"[" * 100_000 + b"]" * 100_000
    answer = world.put_manifest("a", "t", body, OCI_MANIFEST)
    assert (answer.code, answer.error) == (400, "MANIFEST_INVALID")


def test_manifest_with_nan_is_invalid() -> None:
    """NaN and Infinity, which Python's parser takes, are not JSON: refused."""
    world = World()
    config = world.push_blob("a", b"{}")
    layer = world.push_blob("a", DATA)
    for constant in [b"NaN", b"Infinity", b"-Infinity"]:
        document = encode(image_manifest(config, layer, extra="X"))
        body = document.replace(b'"X"', constant)
        answer = world.put_manifest("a", "t", body, OCI_MANIFEST)
        assert (answer.code, answer.error) == (400, "MANIFEST_INVALID")
    assert "tags/a" not in world.storage.records


def test_descriptor_size_past_int64_is_invalid() -> None:
    """A descriptor size beyond an int64 is MANIFEST_INVALID."""
    world = World()
    config = world.push_blob("a", b"{}")
    layer = world.push_blob("a", DATA)
    document = image_manifest(config, layer)
    document["layers"] = [{"mediaType": "x", "digest": layer, "size": 2**63}]
    answer = world.put_manifest("a", "t", document, OCI_MANIFEST)
    assert (answer.code, answer.error) == (400, "MANIFEST_INVALID")
    assert "int64" in answer.body.decode()


@given(st.binary(max_size=200), st.sampled_from([None, OCI_MANIFEST, "x/y", "\xff"]))
def test_any_manifest_body_parses_or_is_refused(
    data: bytes, content_type: str | None
) -> None:
    """Any body and Content-Type give a manifest or an ApiError, never another error."""
    try:
        parse_manifest(data, content_type)
    except ApiError as error:
        assert 400 <= error.status < 500


# A client leaving mid-read.


@implementer(IPushProducer)
class _StoppableRead:
    """A read's producer that fails the read when stopped, as the real reader does."""

    def __init__(self) -> None:
        self.gate: Deferred[None] = Deferred()

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.gate.errback(CancelledError("the client went away"))


class StoppableStorage(MemoryStorage):
    """Memory storage whose reads wait, then fail once their producer is stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[_StoppableRead] = []

    async def blob_read(
        self, digest: str, start: int, end: int, consumer: IConsumer
    ) -> None:
        read = _StoppableRead()
        self.reads.append(read)
        consumer.registerProducer(read, True)
        try:
            consumer.write(self.blobs[digest][start : start + 1])
            await read.gate
        finally:
            consumer.unregisterProducer()


def stalled_read(node: Node) -> Connection:
    """A connection whose blob read has begun and now waits on the storage."""
    digest = node.push_blob("a", DATA)
    connection = node.send(request_head("GET", f"/v2/a/blobs/{digest}"))
    assert connection.transport.value().startswith(b"HTTP/1.1 200")
    return connection


def test_client_leaving_mid_read_is_no_failure() -> None:
    """A client hanging up mid-read, as TCP reports it, is logged as info only."""
    node = Node(storage=StoppableStorage())
    connection = stalled_read(node)

    # A TCP transport marks itself disconnected, stops its producer, then tells
    # the protocol; the read fails at the second step.
    connection.transport.disconnected = True
    producer = connection.transport.producer
    assert producer is not None
    producer.stopProducing()
    connection.lose()

    assert node.failures() == []
    assert any("client left" in str(event.get("log_format")) for event in node.events)


def test_read_cancelled_with_the_client_still_there_is_a_failure() -> None:
    """A read cancelled while the client is connected is still logged as a bug."""
    node = Node(storage=StoppableStorage())
    stalled_read(node)

    assert isinstance(node.storage, StoppableStorage)
    node.storage.reads[0].stopProducing()

    failures = node.failures()
    assert len(failures) == 1
