"""Hostile and malformed HTTP input against a real treescale tree, over raw sockets.

What a careless or hostile client sends, byte for byte: broken names, digests, ranges
and headers; uploads cut off mid-body or framed with garbage; readers that stop
reading or hang up. Every client mistake must get a 4xx with the spec's JSON error
body, no request may go unanswered, the node must keep serving and keep its memory
bounded, every blob must come back byte for byte, and no log may hold a traceback.
"""

import hashlib
import http.client
import json
import os
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from .cluster import TEST_CHUNK_SIZE, Cluster

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
HUGE = "9" * 5000
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Answer:
    """One HTTP response, read whole."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def error(self) -> str:
        """The spec code of an error answer, checked to carry the spec's body."""
        assert self.headers.get("content-type") == "application/json", self
        errors = json.loads(self.body)["errors"]
        assert len(errors) == 1, self
        return str(errors[0]["code"])


def digest_of(data: bytes) -> str:
    """The spec's digest of some bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def connect(cluster: Cluster) -> socket.socket:
    """A new connection to the registry node's HTTP port."""
    host, port = cluster.address.split(":")
    return socket.create_connection((host, int(port)), timeout=TIMEOUT)


def read_answer(sock: socket.socket, method: str = "GET") -> Answer:
    """Read one response from a connection."""
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    body = response.read()
    headers = {name.lower(): value for name, value in response.getheaders()}
    return Answer(response.status, headers, body)


def head(method: str, path: str, *headers: str) -> bytes:
    """A request line and headers, latin-1 encoded."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def exchange(cluster: Cluster, raw: bytes, method: str = "GET") -> Answer:
    """Send raw request bytes on a new connection; read the one response."""
    with connect(cluster) as sock:
        sock.sendall(raw)
        return read_answer(sock, method)


def send(
    cluster: Cluster,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Sequence[str] = (),
) -> Answer:
    """One well-framed request with a Content-Length."""
    raw = head(method, path, *headers, f"Content-Length: {len(body)}") + body
    return exchange(cluster, raw, method)


def push_blob(cluster: Cluster, repo: str, data: bytes) -> str:
    """Upload a blob in one POST; its digest."""
    digest = digest_of(data)
    answer = send(cluster, "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data)
    assert answer.status == 201, answer
    return digest


def start_upload(cluster: Cluster, repo: str) -> str:
    """Open an upload session; its location."""
    answer = send(cluster, "POST", f"/v2/{repo}/blobs/uploads/")
    assert answer.status == 202, answer
    return answer.headers["location"]


def upload_offset(cluster: Cluster, location: str) -> int:
    """How many bytes an upload session holds, from its ``Range``."""
    answer = send(cluster, "GET", location)
    assert answer.status == 204, answer
    last = int(answer.headers["range"].split("-")[1])
    return last + 1 if last else 0


def registry_rss_kib(cluster: Cluster) -> int:
    """The registry node's resident memory."""
    # The harness keeps each node's process; its pid is all this needs.
    pid = cluster._processes["registry"].pid
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def assert_no_traceback(cluster: Cluster) -> None:
    """No node logged a traceback, and the registry still answers."""
    time.sleep(0.5)
    assert "Traceback" not in cluster.logs()
    assert send(cluster, "GET", "/v2/").status == 200


def test_malformed_requests_get_spec_errors(cluster: Cluster) -> None:
    """Bad names, digests, paths, queries, headers and manifests: 4xx JSON each."""
    digest = push_blob(cluster, "bad/repo", b"some layer bytes")
    blob = f"/v2/bad/repo/blobs/{digest}"
    cases: list[tuple[bytes, int, str]] = [
        (head("GET", f"/v2/Upper/blobs/{digest}"), 400, "NAME_INVALID"),
        (head("GET", f"/v2/a/../b/blobs/{digest}"), 400, "NAME_INVALID"),
        (head("GET", f"/v2/%2e%2e/blobs/{digest}"), 400, "NAME_INVALID"),
        (head("GET", f"/v2//blobs/{digest}"), 400, "NAME_INVALID"),
        (head("GET", "/v2/" + "a" * 300 + f"/blobs/{digest}"), 400, "NAME_INVALID"),
        (head("GET", "/v2/bad/repo/blobs/sha256:" + "A" * 64), 400, "DIGEST_INVALID"),
        (head("GET", "/v2/bad/repo/blobs/md5:" + "a" * 32), 400, "DIGEST_INVALID"),
        (head("GET", "/v2/bad/repo/blobs/..%2f..%2fetc"), 400, "DIGEST_INVALID"),
        (head("GET", "/v2/bad/repo/blobs/%ff"), 400, "UNSUPPORTED"),
        (b"GET /v2/ HTTP/1.1\r\nHost: \xff\r\n\r\n", 400, "UNSUPPORTED"),
        (head("GET", "/v2/bad/repo/manifests/-bad"), 400, "TAG_INVALID"),
        (head("PUT", blob), 405, "UNSUPPORTED"),
        (head("GET", "/v2/_catalog?n=-1"), 400, "PAGINATION_NUMBER_INVALID"),
        (head("GET", "/v2/bad/repo/tags/list?last=%ff%fe"), 404, "NAME_UNKNOWN"),
        (head("GET", blob, "Range: bytes=5-2"), 416, "RANGE_INVALID"),
        (head("GET", blob, "Range: bytes=0-1,3-4"), 416, "RANGE_INVALID"),
        (head("GET", blob, f"Range: bytes={HUGE}-"), 416, "RANGE_INVALID"),
        (head("GET", blob, "Range: bytes=\xff-"), 416, "RANGE_INVALID"),
        (
            head("POST", "/v2/bad/repo/blobs/uploads/?digest=%ff", "Content-Length: 1")
            + b"x",
            400,
            "DIGEST_INVALID",
        ),
    ]
    for raw, status, code in cases:
        answer = exchange(cluster, raw)
        assert (answer.status, answer.error) == (status, code), raw[:80]

    manifests: list[tuple[bytes, str, int, str]] = [
        (b"{not json", OCI_MANIFEST, 400, "MANIFEST_INVALID"),
        (b"[" * 100_000 + b"]" * 100_000, OCI_MANIFEST, 400, "MANIFEST_INVALID"),
        (b'{"schemaVersion": NaN}', OCI_MANIFEST, 400, "MANIFEST_INVALID"),
        (b'{"schemaVersion": 2}', "\xff\xfe", 415, "UNSUPPORTED"),
        (
            b'{"schemaVersion": 1}',
            "application/vnd.docker.distribution.manifest.v1+json",
            415,
            "UNSUPPORTED",
        ),
    ]
    for body, content_type, status, code in manifests:
        answer = send(
            cluster,
            "PUT",
            "/v2/bad/repo/manifests/t",
            body,
            [f"Content-Type: {content_type}"],
        )
        assert (answer.status, answer.error) == (status, code), body[:40]

    answer = send(cluster, "GET", f"/v2/bad/repo/tags/list?n={HUGE}")
    assert (answer.status, answer.error) == (404, "NAME_UNKNOWN")
    assert_no_traceback(cluster)


def test_uploads_survive_broken_clients(cluster: Cluster) -> None:
    """Cut, garbled and concurrent uploads leave sessions usable and blobs exact."""
    data = os.urandom(3 * TEST_CHUNK_SIZE + 12345)
    location = start_upload(cluster, "up/repo")

    # Cut off mid-body: the session keeps what arrived, in order.
    with connect(cluster) as sock:
        sock.sendall(head("PATCH", location, f"Content-Length: {len(data)}"))
        sock.sendall(data[: TEST_CHUNK_SIZE + 7])
        time.sleep(0.5)
    time.sleep(0.5)
    offset = upload_offset(cluster, location)
    assert 0 < offset <= TEST_CHUNK_SIZE + 7

    # Wrong offsets and garbage framing are refused and change nothing.
    answer = send(
        cluster, "PATCH", location, b"x", [f"Content-Range: {offset + 1}-{offset + 1}"]
    )
    assert (answer.status, answer.error) == (416, "BLOB_UPLOAD_INVALID")
    answer = send(cluster, "PATCH", location, b"x", [f"Content-Range: {offset}-{HUGE}"])
    assert (answer.status, answer.error) == (400, "SIZE_INVALID")
    garbage = head("PATCH", location, "Transfer-Encoding: chunked") + b"zz\r\n\r\n"
    assert exchange(cluster, garbage).status == 400
    assert upload_offset(cluster, location) == offset

    # The rest, chunked; a PUT of the wrong digest is refused; the blob is exact.
    rest = data[offset:]
    chunked = head("PATCH", location, "Transfer-Encoding: chunked")
    chunked += b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest)
    assert exchange(cluster, chunked).status == 202
    answer = send(cluster, "PUT", f"{location}?digest=sha256:xyz")
    assert (answer.status, answer.error) == (400, "DIGEST_INVALID")
    answer = send(cluster, "PUT", f"{location}?digest={digest_of(data)}")
    assert answer.status == 201, answer
    answer = send(cluster, "GET", f"/v2/up/repo/blobs/{digest_of(data)}")
    assert answer.body == data

    # A one-request upload of the wrong digest stores nothing and leaves no session.
    answer = send(
        cluster, "POST", f"/v2/up/repo/blobs/uploads/?digest={digest_of(b'x')}", b"y"
    )
    assert (answer.status, answer.error) == (400, "DIGEST_INVALID")
    answer = send(cluster, "GET", f"/v2/up/repo/blobs/{digest_of(b'y')}")
    assert answer.status == 404

    def round_trip(index: int) -> bool:
        blob = os.urandom(50_000 + index * 7919)
        digest = push_blob(cluster, f"up/many{index % 4}", blob)
        return (
            send(cluster, "GET", f"/v2/up/many{index % 4}/blobs/{digest}").body == blob
        )

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(round_trip, range(48)))
    assert_no_traceback(cluster)


def test_stalled_and_departing_readers(cluster: Cluster) -> None:
    """Readers that stop reading keep memory bounded; hang-ups log no traceback."""
    data = os.urandom(24 * TEST_CHUNK_SIZE + 999)
    digest = push_blob(cluster, "read/repo", data)
    path = f"/v2/read/repo/blobs/{digest}"

    get = send(cluster, "GET", path)
    head_answer = exchange(cluster, head("HEAD", path), "HEAD")
    assert get.body == data
    assert head_answer.body == b""
    for name in ["content-length", "docker-content-digest", "content-type"]:
        assert head_answer.headers[name] == get.headers[name]

    ranged = send(
        cluster,
        "GET",
        path,
        headers=[f"Range: bytes={TEST_CHUNK_SIZE - 5}-{2 * TEST_CHUNK_SIZE + 5}"],
    )
    assert ranged.status == 206
    assert ranged.body == data[TEST_CHUNK_SIZE - 5 : 2 * TEST_CHUNK_SIZE + 6]
    suffix = send(cluster, "GET", path, headers=["Range: bytes=-1000"])
    assert (suffix.status, suffix.body) == (206, data[-1000:])

    before = registry_rss_kib(cluster)
    readers = []
    for _ in range(4):
        sock = connect(cluster)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(head("GET", path))
        sock.recv(64 * 1024)
        readers.append(sock)
    time.sleep(3)
    grown = registry_rss_kib(cluster) - before
    for sock in readers:
        sock.close()

    # Each stalled read may hold its window of chunks (8 here), never the blob.
    assert grown < 4 * 16 * TEST_CHUNK_SIZE // 1024, grown
    time.sleep(1)
    assert send(cluster, "GET", path).body == data
    assert_no_traceback(cluster)
