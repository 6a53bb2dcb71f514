"""The spec's push workflow for blobs: monolithic, streamed and chunked uploads.

Each upload follows the ``Location`` of the previous answer, as the spec tells
clients to, and ends with the blob read back byte for byte: an upload that answers
201 but stores the wrong bytes must fail here, not in a later pull.
"""

import pytest

from .client import Client, Response
from .content import digest_of, random_blob
from .deviations import reference_deviates
from .workflows import Registry, assert_error, upload_range

pytestmark = pytest.mark.integration

SIZE = 100
OCTETS = ("Content-Type", "application/octet-stream")


def patch_chunk(client: Client, target: str, data: bytes, first: int) -> Response:
    """PATCH one chunk that says with Content-Range where it belongs."""
    last = first + len(data) - 1
    return client.patch(target, data, [OCTETS, ("Content-Range", f"{first}-{last}")])


def next_target(client: Client, response: Response) -> str:
    """Where an upload continues after a 202."""
    assert response.status == 202, response.describe()
    location = response.header("Location")
    assert location, response.describe()
    return client.target_of(location)


def assert_served(client: Client, repo: str, data: bytes, digest: str = "") -> None:
    """The repository serves the blob, byte for byte, under its digest."""
    digest = digest or digest_of(data)
    response = client.get(Registry.blob_path(repo, digest))
    assert response.status == 200, response.describe()
    assert response.body == data


@reference_deviates(
    "distribution 2.8.2 answers a POST with ?digest= and a body 202, opening a "
    "session, and stores nothing (the spec lets a registry without single-POST "
    "uploads do so)"
)
def test_monolithic_post(registry: Registry, client: Client, repo: str) -> None:
    """POST ``?digest=`` with the blob as body stores it at once: 201, Location."""
    data = random_blob(SIZE)
    digest = digest_of(data)

    response = client.post(registry.uploads_path(repo, f"digest={digest}"), data)

    assert response.status == 201, response.describe()
    location = response.header("Location")
    assert location, response.describe()
    served = client.get(client.target_of(location))
    assert served.body == data, served.describe()
    assert_served(client, repo, data)


def test_post_then_put(registry: Registry, client: Client, repo: str) -> None:
    """A POST opens a session; a PUT ``?digest=`` carrying the blob completes it."""
    data = random_blob(SIZE)
    target = registry.start_upload(repo)

    response = client.put(registry.with_digest(target, digest_of(data)), data)

    assert response.status == 201, response.describe()
    assert response.header("Location"), response.describe()
    assert response.header("Docker-Content-Digest") == digest_of(data)
    assert_served(client, repo, data)


def test_streamed_patch_then_put(registry: Registry, client: Client, repo: str) -> None:
    """One PATCH of the whole blob without Content-Range, then an empty PUT."""
    data = random_blob(SIZE)
    target = registry.start_upload(repo)

    patched = client.patch(target, data, [OCTETS])
    target = next_target(client, patched)
    response = client.put(registry.with_digest(target, digest_of(data)))

    assert patched.header("Range") == upload_range(SIZE), patched.describe()
    assert response.status == 201, response.describe()
    assert_served(client, repo, data)


def test_chunked_patches(registry: Registry, client: Client, repo: str) -> None:
    """PATCHes with Content-Range, in order, then an empty PUT, store the blob."""
    data = random_blob(SIZE)
    target = registry.start_upload(repo)

    for first in range(0, SIZE, 30):
        target = next_target(
            client, patch_chunk(client, target, data[first : first + 30], first)
        )
    response = client.put(registry.with_digest(target, digest_of(data)))

    assert response.status == 201, response.describe()
    assert_served(client, repo, data)


def test_chunk_answers_report_range(
    registry: Registry, client: Client, repo: str
) -> None:
    """Every chunk's 202 says ``Range: 0-<last byte so far>`` and a Location."""
    data = random_blob(SIZE)
    target = registry.start_upload(repo)

    seen = []
    for first in range(0, SIZE, 40):
        chunk = data[first : first + 40]
        response = patch_chunk(client, target, chunk, first)
        target = next_target(client, response)
        seen.append(response.header("Range"))

    assert seen == ["0-39", "0-79", "0-99"]


@reference_deviates(
    "distribution 2.8.2 ignores Content-Range: the misplaced chunk gets 202 and is "
    "appended (Range 0-19 after a repeated 0-9), and the session then answers 404 "
    "BLOB_UPLOAD_INVALID"
)
@pytest.mark.parametrize(
    ("first", "last"),
    [pytest.param(20, 29, id="out-of-order"), pytest.param(0, 9, id="sent-twice")],
)
def test_misplaced_chunk(
    registry: Registry, client: Client, repo: str, first: int, last: int
) -> None:
    """A chunk not starting at the upload's offset: 416, and the upload unchanged."""
    data = random_blob(SIZE)
    target = next_target(
        client, patch_chunk(client, registry.start_upload(repo), data[:10], 0)
    )

    refused = patch_chunk(client, target, data[first : last + 1], first)
    assert refused.status == 416, refused.describe()

    status = client.get(target)
    assert status.status == 204, status.describe()
    assert status.header("Range") == "0-9", status.describe()

    target = next_target(client, patch_chunk(client, target, data[10:], 10))
    closed = client.put(registry.with_digest(target, digest_of(data)))
    assert closed.status == 201, closed.describe()
    assert_served(client, repo, data)


def test_final_chunk_in_put(registry: Registry, client: Client, repo: str) -> None:
    """The last chunk may travel in the closing PUT, with its Content-Range."""
    data = random_blob(SIZE)
    target = next_target(
        client, patch_chunk(client, registry.start_upload(repo), data[:60], 0)
    )

    response = client.put(
        registry.with_digest(target, digest_of(data)),
        data[60:],
        [OCTETS, ("Content-Range", f"60-{SIZE - 1}")],
    )

    assert response.status == 201, response.describe()
    assert_served(client, repo, data)


def test_upload_status(registry: Registry, client: Client, repo: str) -> None:
    """GET of an upload session: 204 with its Range and a Location to go on at."""
    data = random_blob(SIZE)
    target = next_target(
        client, patch_chunk(client, registry.start_upload(repo), data[:25], 0)
    )

    response = client.get(target)

    assert response.status == 204, response.describe()
    assert response.header("Range") == "0-24", response.describe()
    assert response.header("Location"), response.describe()
    assert response.body == b""


def test_cancel_upload(registry: Registry, client: Client, repo: str) -> None:
    """DELETE of an upload session: 204, and the session is then unknown."""
    target = registry.start_upload(repo)

    cancelled = client.delete(target)
    afterwards = client.get(target)

    assert cancelled.status == 204, cancelled.describe()
    assert_error(afterwards, 404, "BLOB_UPLOAD_UNKNOWN")


@reference_deviates(
    "distribution 2.8.2 answers a PATCH to an upload id it never issued with 404 "
    "BLOB_UPLOAD_INVALID, not BLOB_UPLOAD_UNKNOWN"
)
def test_patch_unknown_session(registry: Registry, client: Client, repo: str) -> None:
    """A PATCH to an upload session that never existed: 404 BLOB_UPLOAD_UNKNOWN."""
    target = registry.uploads_path(repo) + "00000000-0000-4000-8000-000000000000"

    response = client.patch(target, random_blob(10), [OCTETS])

    assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN")


@reference_deviates("distribution 2.8.2 sends no OCI-Chunk-Min-Length header on POST")
def test_chunk_min_length(registry: Registry, client: Client, repo: str) -> None:
    """POST of an upload says the smallest chunk it takes: OCI-Chunk-Min-Length."""
    response = client.post(registry.uploads_path(repo))

    assert response.status == 202, response.describe()
    value = response.header("OCI-Chunk-Min-Length")
    assert value is not None and value.isdigit(), response.describe()
    assert int(value) > 0


def test_zero_byte_blob(registry: Registry, client: Client, repo: str) -> None:
    """An empty blob uploads and reads back: 200, Content-Length 0, its digest."""
    digest = digest_of(b"")
    target = registry.start_upload(repo)

    stored = client.put(registry.with_digest(target, digest))
    response = client.get(registry.blob_path(repo, digest))

    assert stored.status == 201, stored.describe()
    assert response.status == 200, response.describe()
    assert response.body == b""
    assert response.header("Content-Length") == "0"
    assert response.header("Docker-Content-Digest") == digest


@reference_deviates(
    "distribution 2.8.2 ignores digest-algorithm and hashes with sha256: the PUT "
    "of a sha512 digest answers Docker-Content-Digest sha256:..."
)
def test_sha512_session(registry: Registry, client: Client, repo: str) -> None:
    """POST ``?digest-algorithm=sha512`` opens a session closed by a sha512 digest."""
    data = random_blob(SIZE)
    digest = digest_of(data, "sha512")
    target = registry.start_upload(repo, "digest-algorithm=sha512")

    target = next_target(client, client.patch(target, data, [OCTETS]))
    stored = client.put(registry.with_digest(target, digest))
    response = client.get(registry.blob_path(repo, digest))

    assert stored.status == 201, stored.describe()
    assert stored.header("Docker-Content-Digest") == digest, stored.describe()
    assert response.status == 200, response.describe()
    assert response.body == data
    assert response.header("Docker-Content-Digest") == digest, response.describe()


@reference_deviates(
    "distribution 2.8.2 answers a POST with ?digest= and a body 202, opening a "
    "session, and stores nothing (the spec lets a registry without single-POST "
    "uploads do so)"
)
def test_sha512_monolithic(registry: Registry, client: Client, repo: str) -> None:
    """A monolithic POST ``?digest=sha512:...`` stores the blob under that digest."""
    data = random_blob(SIZE)
    digest = digest_of(data, "sha512")

    stored = client.post(registry.uploads_path(repo, f"digest={digest}"), data)
    response = client.get(registry.blob_path(repo, digest))

    assert stored.status == 201, stored.describe()
    assert response.status == 200, response.describe()
    assert response.body == data


def test_wrong_digest(registry: Registry, client: Client, repo: str) -> None:
    """A PUT whose digest is not the bytes' gets 400 DIGEST_INVALID, stores nothing."""
    data = random_blob(SIZE)
    wrong = digest_of(data + b"!")
    target = registry.start_upload(repo)

    response = client.put(registry.with_digest(target, wrong), data)
    served = client.get(registry.blob_path(repo, wrong))

    assert_error(response, 400, "DIGEST_INVALID")
    assert served.status == 404, served.describe()


def test_chunked_transfer_encoding_patch(
    registry: Registry, client: Client, repo: str
) -> None:
    """A PATCH framed with ``Transfer-Encoding: chunked`` streams the whole blob."""
    data = random_blob(SIZE)
    target = registry.start_upload(repo)

    patched = client.request(
        "PATCH", target, headers=[OCTETS], chunks=[data[:33], data[33:70], data[70:]]
    )
    target = next_target(client, patched)
    response = client.put(registry.with_digest(target, digest_of(data)))

    assert patched.header("Range") == upload_range(SIZE), patched.describe()
    assert response.status == 201, response.describe()
    assert_served(client, repo, data)
