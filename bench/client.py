"""The one HTTP client of the benchmark, the same for treescale and the reference.

It speaks just enough of the distribution API to push an image and pull its blobs,
with http.client on blocking sockets and threads for parallel requests: small and
fast, and identical for both servers, so the comparison is fair. Bodies stream
from and into files or hashes in pieces; the client never holds a whole layer.
Every pulled byte is checked: a whole blob against its digest, a ranged part
against the digest of that part.
"""

import functools
import hashlib
import http.client
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench.layers import MANIFEST_MEDIA_TYPE, Layer, Part

SOCKET_TIMEOUT = 60.0
PIECE = 1024 * 1024


class TransferError(Exception):
    """A request failed, answered wrongly, or its bytes did not match their digest."""


@dataclass(frozen=True)
class Registry:
    """Where a registry's API answers, and the repository the benchmark uses."""

    address: str
    repo: str

    def connection(self) -> http.client.HTTPConnection:
        """A fresh connection; bodies are sent in pieces of `PIECE` bytes."""
        host, port = self.address.rsplit(":", 1)
        return http.client.HTTPConnection(
            host, int(port), timeout=SOCKET_TIMEOUT, blocksize=PIECE
        )

    def blob_path(self, digest: str) -> str:
        return f"/v2/{self.repo}/blobs/{digest}"


def request(
    registry: Registry,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, http.client.HTTPResponse]:
    """One small request on a fresh connection: status, body and response."""
    connection = registry.connection()
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response
    finally:
        connection.close()


def expect(status: int, wanted: int, what: str, body: bytes) -> None:
    """Fail unless a response has the status wanted."""
    if status != wanted:
        raise TransferError(f"{what}: HTTP {status}: {body[:300]!r}")


def session_path(response: http.client.HTTPResponse, what: str) -> str:
    """The path and query of an upload session's ``Location``."""
    location = response.getheader("Location")
    if not location:
        raise TransferError(f"{what}: no Location")
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_digest(path: str, digest: str) -> str:
    """An upload session's path with the ``digest`` that closes it."""
    separator = "&" if "?" in path else "?"
    return f"{path}{separator}digest={urllib.parse.quote(digest, safe='')}"


def push_layer(registry: Registry, layer: Layer) -> float:
    """POST a session, PATCH the file as one body, PUT ``?digest=``; the seconds.

    This is what skopeo, docker and podman send (one PATCH of the whole blob).
    """
    started = time.perf_counter()
    status, body, response = request(
        registry, "POST", f"/v2/{registry.repo}/blobs/uploads/"
    )
    expect(status, 202, f"POST upload to {registry.address}", body)
    session = session_path(response, "POST upload")

    connection = registry.connection()
    try:
        with layer.path.open("rb") as source:
            connection.request(
                "PATCH",
                session,
                body=source,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(layer.size),
                },
            )
            response = connection.getresponse()
            body = response.read()
    finally:
        connection.close()
    expect(response.status, 202, f"PATCH to {registry.address}", body)
    session = session_path(response, "PATCH")

    status, body, _ = request(registry, "PUT", with_digest(session, layer.digest))
    expect(status, 201, f"PUT digest to {registry.address}", body)
    return time.perf_counter() - started


def push_small_blob(registry: Registry, data: bytes, digest: str) -> None:
    """A monolithic upload of a small blob: POST, then PUT with the body."""
    status, body, response = request(
        registry, "POST", f"/v2/{registry.repo}/blobs/uploads/"
    )
    expect(status, 202, f"POST upload to {registry.address}", body)
    session = session_path(response, "POST upload")
    headers = {"Content-Type": "application/octet-stream"}
    status, body, _ = request(
        registry, "PUT", with_digest(session, digest), data, headers
    )
    expect(status, 201, f"PUT blob to {registry.address}", body)


def push_manifest(registry: Registry, tag: str, manifest: bytes) -> None:
    """PUT the image manifest under `tag`."""
    headers = {"Content-Type": MANIFEST_MEDIA_TYPE}
    status, body, _ = request(
        registry, "PUT", f"/v2/{registry.repo}/manifests/{tag}", manifest, headers
    )
    expect(status, 201, f"PUT manifest to {registry.address}", body)


def fetch_manifest(registry: Registry, tag: str) -> bytes:
    """GET the manifest of `tag`, as an image's pull starts."""
    headers = {"Accept": MANIFEST_MEDIA_TYPE}
    status, body, _ = request(
        registry, "GET", f"/v2/{registry.repo}/manifests/{tag}", headers=headers
    )
    expect(status, 200, f"GET manifest from {registry.address}", body)
    return body


def _read_body(
    response: http.client.HTTPResponse, deadline: float, what: str
) -> tuple[int, str]:
    """Read a response body into a hash in pieces: byte count and digest."""
    view = memoryview(bytearray(PIECE))
    hasher = hashlib.sha256()
    received = 0
    while True:
        count = response.readinto(view)
        if not count:
            break
        hasher.update(view[:count])
        received += count
        if time.monotonic() > deadline:
            raise TransferError(f"{what}: past its deadline")
    return received, "sha256:" + hasher.hexdigest()


def _get(
    registry: Registry,
    digest: str,
    part: Part | None,
    wanted_size: int,
    wanted_digest: str,
    deadline: float,
) -> None:
    """GET a blob, or one part of it, and check every byte that came."""
    what = f"GET {digest[:19]} from {registry.address}"
    headers = {} if part is None else {"Range": part.header}
    connection = registry.connection()
    try:
        connection.request("GET", registry.blob_path(digest), headers=headers)
        response = connection.getresponse()
        wanted_status = 200 if part is None else 206
        if response.status != wanted_status:
            expect(response.status, wanted_status, what, response.read())
        received, actual = _read_body(response, deadline, what)
    finally:
        connection.close()
    if received != wanted_size or actual != wanted_digest:
        raise TransferError(
            f"{what}: {received} bytes hashing to {actual}, "
            f"wanted {wanted_size} bytes of {wanted_digest}"
        )


def pull_stream(registry: Registry, layer: Layer, deadline: float) -> float:
    """GET the layer whole on one connection; the seconds it took."""
    started = time.perf_counter()
    _get(registry, layer.digest, None, layer.size, layer.digest, deadline)
    return time.perf_counter() - started


def pull_ranges(
    registry: Registry, layer: Layer, parts: Sequence[Part], deadline: float
) -> float:
    """GET every part of the layer at once, one connection each; the seconds.

    This is a multipart layer fetch as containerd 2.1 does it: one ``Range``
    request per part, all in flight together.
    """

    def fetch(part: Part) -> None:
        size = part.end - part.start
        _get(registry, layer.digest, part, size, part.digest, deadline)

    return _all_at_once([functools.partial(fetch, part) for part in parts])


def pull_concurrently(
    registry: Registry, layer: Layer, count: int, deadline: float
) -> float:
    """`count` clients GET the whole layer at once; the seconds until the last
    is done."""
    return _all_at_once(
        [lambda: pull_stream(registry, layer, deadline) for _ in range(count)]
    )


def _all_at_once(jobs: Sequence[Callable[[], object]]) -> float:
    """Run the jobs on their own threads, started together; the wall seconds.

    The first error raised by any job is raised here, after every job is over.
    """
    start = threading.Barrier(len(jobs) + 1)

    def run(job: Callable[[], object]) -> None:
        start.wait()
        job()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        start.wait()
        started = time.perf_counter()
        for future in futures:
            future.exception()
        elapsed = time.perf_counter() - started
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
    return elapsed
