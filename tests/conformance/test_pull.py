"""The spec's pull workflow: blobs and manifests read back, whole or in ranges.

Every read is checked to the byte and to the header: the exact Content-Length (on
HEAD too, with no body), Docker-Content-Digest, and for ranges the 206 with its
Content-Range, or the 416 that says how large the blob is.
"""

import pytest

from .client import Client
from .content import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    digest_of,
    random_blob,
    random_config,
)
from .deviations import reference_deviates
from .workflows import Registry, assert_error

pytestmark = pytest.mark.integration

SIZE = 100
UNKNOWN_DIGEST = digest_of(b"no test ever pushes these bytes")


def odd_manifest(registry: Registry, repo: str) -> bytes:
    """An image manifest's bytes with odd whitespace and key order, blobs pushed.

    A server that re-encodes the manifest would change these bytes, and so its
    digest; the spec wants them back exactly as pushed.
    """
    config = random_config()
    layer = random_blob(64)
    registry.push_blob(repo, config)
    registry.push_blob(repo, layer)
    config_desc = descriptor(OCI_CONFIG, config)
    layer_desc = descriptor(OCI_LAYER, layer)
    text = (
        '{\n\t"layers" : [ {"size":%(lsize)d,  "digest": "%(ldigest)s",'
        '"mediaType":"%(ltype)s"} ],\r\n'
        '  "config":{"size" :%(csize)d,"mediaType":"%(ctype)s",'
        '"digest":"%(cdigest)s"},\n'
        '"schemaVersion":2,    "mediaType": "%(mtype)s"   }\n\n'
    )
    values = {
        "lsize": layer_desc["size"],
        "ldigest": layer_desc["digest"],
        "ltype": OCI_LAYER,
        "csize": config_desc["size"],
        "ctype": OCI_CONFIG,
        "cdigest": config_desc["digest"],
        "mtype": OCI_MANIFEST,
    }
    return (text % values).encode("utf-8")


def push_sized_blob(registry: Registry, repo: str, size: int = SIZE) -> bytes:
    """Push a random blob of `size` bytes; its bytes."""
    data = random_blob(size)
    registry.push_blob(repo, data)
    return data


def test_get_blob_by_digest(registry: Registry, client: Client, repo: str) -> None:
    """GET of a pushed blob answers 200 with its exact bytes, length and digest."""
    data = push_sized_blob(registry, repo)

    response = client.get(registry.blob_path(repo, digest_of(data)))

    assert response.status == 200, response.describe()
    assert response.body == data
    assert response.header("Content-Length") == str(SIZE)
    assert response.header("Docker-Content-Digest") == digest_of(data)


def test_head_blob(registry: Registry, client: Client, repo: str) -> None:
    """HEAD of a pushed blob answers 200, its exact length and digest, no body."""
    data = push_sized_blob(registry, repo)

    response = client.head(registry.blob_path(repo, digest_of(data)))

    assert response.status == 200, response.describe()
    assert response.body == b""
    assert response.header("Content-Length") == str(SIZE)
    assert response.header("Docker-Content-Digest") == digest_of(data)


def test_get_manifest_by_tag(registry: Registry, client: Client, repo: str) -> None:
    """GET of a manifest by tag gives the pushed bytes exactly, type, length, digest."""
    body = odd_manifest(registry, repo)
    digest = registry.push_manifest(repo, "odd", body, OCI_MANIFEST)

    response = client.get(
        registry.manifest_path(repo, "odd"), [("Accept", OCI_MANIFEST)]
    )

    assert response.status == 200, response.describe()
    assert response.body == body
    assert response.header("Content-Type") == OCI_MANIFEST
    assert response.header("Content-Length") == str(len(body))
    assert response.header("Docker-Content-Digest") == digest


def test_get_manifest_by_digest(registry: Registry, client: Client, repo: str) -> None:
    """GET of a manifest by digest gives the pushed bytes exactly, with its type."""
    body = odd_manifest(registry, repo)
    digest = registry.push_manifest(repo, "odd", body, OCI_MANIFEST)

    response = client.get(
        registry.manifest_path(repo, digest), [("Accept", OCI_MANIFEST)]
    )

    assert response.status == 200, response.describe()
    assert response.body == body
    assert response.header("Content-Type") == OCI_MANIFEST
    assert response.header("Content-Length") == str(len(body))
    assert response.header("Docker-Content-Digest") == digest


def test_head_manifest_by_tag(registry: Registry, client: Client, repo: str) -> None:
    """HEAD of a manifest by tag: 200, exact length, digest and type, no body."""
    image = registry.push_image(repo, "v1")

    response = client.head(
        registry.manifest_path(repo, "v1"), [("Accept", OCI_MANIFEST)]
    )

    assert response.status == 200, response.describe()
    assert response.body == b""
    assert response.header("Content-Length") == str(len(image.manifest))
    assert response.header("Docker-Content-Digest") == image.digest
    assert response.header("Content-Type") == OCI_MANIFEST


def test_head_manifest_by_digest(registry: Registry, client: Client, repo: str) -> None:
    """HEAD of a manifest by digest: 200, exact length and digest, no body."""
    image = registry.push_image(repo, "v1")

    response = client.head(
        registry.manifest_path(repo, image.digest), [("Accept", OCI_MANIFEST)]
    )

    assert response.status == 200, response.describe()
    assert response.body == b""
    assert response.header("Content-Length") == str(len(image.manifest))
    assert response.header("Docker-Content-Digest") == image.digest


def test_blob_accepts_ranges(registry: Registry, client: Client, repo: str) -> None:
    """A blob read says ``Accept-Ranges: bytes``: a client may resume a pull."""
    data = push_sized_blob(registry, repo)

    response = client.get(registry.blob_path(repo, digest_of(data)))

    assert response.status == 200, response.describe()
    assert response.header("Accept-Ranges") == "bytes"


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        pytest.param("bytes=0-9", 0, 9, id="bounded"),
        pytest.param("bytes=10-", 10, SIZE - 1, id="open-ended"),
        pytest.param("bytes=-5", SIZE - 5, SIZE - 1, id="suffix"),
        pytest.param(f"bytes=90-{SIZE + 50}", 90, SIZE - 1, id="last-past-end"),
    ],
)
def test_blob_range(
    registry: Registry,
    client: Client,
    repo: str,
    header: str,
    first: int,
    last: int,
) -> None:
    """A satisfiable Range gets 206, those bytes, their length and Content-Range."""
    data = push_sized_blob(registry, repo)

    response = client.get(
        registry.blob_path(repo, digest_of(data)), [("Range", header)]
    )

    assert response.status == 206, response.describe()
    assert response.body == data[first : last + 1]
    assert response.header("Content-Length") == str(last + 1 - first)
    assert response.header("Content-Range") == f"bytes {first}-{last}/{SIZE}"


@reference_deviates(
    "distribution 2.8.2 answers 416 with Content-Range: bytes */SIZE but also "
    "Content-Length: SIZE and a 33-byte text body, so the response is cut short"
)
@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"bytes={SIZE}-", id="start-at-size"),
        pytest.param(f"bytes={SIZE + 10}-{SIZE + 20}", id="wholly-past-end"),
    ],
)
def test_blob_range_past_end(
    registry: Registry, client: Client, repo: str, header: str
) -> None:
    """A Range past the blob's end gets 416 with ``Content-Range: bytes */SIZE``."""
    data = push_sized_blob(registry, repo)

    response = client.get(
        registry.blob_path(repo, digest_of(data)), [("Range", header)]
    )

    assert response.status == 416, response.describe()
    assert response.header("Content-Range") == f"bytes */{SIZE}"


def test_unknown_blob(client: Client, registry: Registry, repo: str) -> None:
    """GET of a blob no one pushed: 404 with BLOB_UNKNOWN in the error body."""
    registry.push_blob(repo, random_blob())

    response = client.get(registry.blob_path(repo, UNKNOWN_DIGEST))

    assert_error(response, 404, "BLOB_UNKNOWN")


def test_head_unknown_blob(client: Client, registry: Registry, repo: str) -> None:
    """HEAD of a blob no one pushed: 404, and no body, as for any HEAD."""
    registry.push_blob(repo, random_blob())

    response = client.head(registry.blob_path(repo, UNKNOWN_DIGEST))

    assert response.status == 404, response.describe()
    assert response.body == b""


def test_blob_of_another_repository(
    client: Client, registry: Registry, repo: str
) -> None:
    """A blob pushed to one repository is unknown in another it was never put in."""
    data = push_sized_blob(registry, repo)

    response = client.get(registry.blob_path(f"{repo}-other", digest_of(data)))

    assert_error(response, 404, "BLOB_UNKNOWN", "NAME_UNKNOWN")


def test_unknown_manifest_by_tag(client: Client, registry: Registry, repo: str) -> None:
    """GET of a tag no one pushed: 404 with MANIFEST_UNKNOWN."""
    registry.push_image(repo, "v1")

    response = client.get(
        registry.manifest_path(repo, "missing"), [("Accept", OCI_MANIFEST)]
    )

    assert_error(response, 404, "MANIFEST_UNKNOWN")


def test_unknown_manifest_by_digest(
    client: Client, registry: Registry, repo: str
) -> None:
    """GET of a manifest digest no one pushed: 404 with MANIFEST_UNKNOWN."""
    registry.push_image(repo, "v1")

    response = client.get(
        registry.manifest_path(repo, UNKNOWN_DIGEST), [("Accept", OCI_MANIFEST)]
    )

    assert_error(response, 404, "MANIFEST_UNKNOWN")


def test_head_unknown_manifest(client: Client, registry: Registry, repo: str) -> None:
    """HEAD of a tag no one pushed: 404 with no body."""
    registry.push_image(repo, "v1")

    response = client.head(
        registry.manifest_path(repo, "missing"), [("Accept", OCI_MANIFEST)]
    )

    assert response.status == 404, response.describe()
    assert response.body == b""
