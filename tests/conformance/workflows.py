"""The steps of the spec's workflows that many tests repeat, and the shared checks.

A `Registry` wraps one server's client with the few operations a test needs before
it reaches the rule it proves: push a blob, push a manifest, push a whole image.
Each step asserts the answer the spec requires, so a failure points at the step
that went wrong, not at a later, puzzling one. `assert_error` is the one check of
an error response: its status, its code, and the spec's JSON error body.
"""

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .client import Client, Response
from .content import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Document,
    descriptor,
    digest_of,
    encode,
    image_manifest,
    random_blob,
    random_config,
)


def assert_error_body(response: Response) -> list[str]:
    """A response carries the spec's error document; the codes it names.

    The spec: ``{"errors": [{"code", "message", "detail"}]}``, ``code`` and
    ``message`` strings, ``detail`` optional and of any shape.
    """
    assert response.body, f"no error body:\n{response.describe()}"
    try:
        document = json.loads(response.body)
    except ValueError:
        raise AssertionError(f"error body not JSON:\n{response.describe()}") from None

    assert isinstance(document, dict), response.describe()
    errors = document.get("errors")
    assert isinstance(errors, list), response.describe()
    assert errors, response.describe()
    for entry in errors:
        assert isinstance(entry, dict), response.describe()
        assert set(entry) <= {"code", "message", "detail"}, response.describe()
        assert isinstance(entry.get("code"), str), response.describe()
        assert isinstance(entry.get("message"), str), response.describe()
    return [entry["code"] for entry in errors]


def assert_error(response: Response, status: int | set[int], *codes: str) -> None:
    """An error answer: one of the statuses, the spec's body, one of the codes."""
    statuses = {status} if isinstance(status, int) else status
    assert response.status in statuses, response.describe()
    found = assert_error_body(response)
    if codes:
        assert set(found) & set(codes), f"wanted {codes}:\n{response.describe()}"


def upload_range(size: int) -> str:
    """The ``Range`` an upload holding `size` bytes reports: ``0-<last byte>``."""
    return f"0-{size - 1}"


@dataclass(frozen=True)
class PushedImage:
    """An image manifest a test pushed, with the blobs it references."""

    manifest: bytes
    digest: str
    config: bytes
    layers: tuple[bytes, ...]

    @property
    def descriptor(self) -> Document:
        """The manifest's descriptor, for an index or a ``subject``."""
        return descriptor(OCI_MANIFEST, self.manifest)


class Registry:
    """One server's API as the tests use it: paths, and the common steps."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # Paths.

    @staticmethod
    def blob_path(repo: str, digest: str) -> str:
        """Where a blob is read."""
        return f"/v2/{repo}/blobs/{digest}"

    @staticmethod
    def uploads_path(repo: str, query: str = "") -> str:
        """Where an upload starts, with an optional query (without its ``?``)."""
        path = f"/v2/{repo}/blobs/uploads/"
        return f"{path}?{query}" if query else path

    @staticmethod
    def manifest_path(repo: str, reference: str) -> str:
        """Where a manifest is read and written."""
        return f"/v2/{repo}/manifests/{reference}"

    @staticmethod
    def tags_path(repo: str, query: str = "") -> str:
        """Where a repository's tags are listed."""
        path = f"/v2/{repo}/tags/list"
        return f"{path}?{query}" if query else path

    @staticmethod
    def referrers_path(repo: str, digest: str, query: str = "") -> str:
        """Where the manifests referring to a digest are listed."""
        path = f"/v2/{repo}/referrers/{digest}"
        return f"{path}?{query}" if query else path

    @staticmethod
    def with_digest(target: str, digest: str) -> str:
        """An upload target with the closing ``digest`` parameter added."""
        separator = "&" if "?" in target else "?"
        return f"{target}{separator}digest={quote(digest, safe=':')}"

    # Uploads.

    def start_upload(self, repo: str, query: str = "") -> str:
        """Open an upload session; the target its ``Location`` gives."""
        response = self.client.post(self.uploads_path(repo, query))
        assert response.status == 202, response.describe()
        location = response.header("Location")
        assert location, response.describe()
        return self.client.target_of(location)

    def push_blob(self, repo: str, data: bytes, algorithm: str = "sha256") -> str:
        """Push a blob with a POST and a PUT carrying it; its digest."""
        digest = digest_of(data, algorithm)
        query = "" if algorithm == "sha256" else f"digest-algorithm={algorithm}"
        target = self.start_upload(repo, query)
        response = self.client.put(self.with_digest(target, digest), data)
        assert response.status == 201, response.describe()
        return digest

    # Manifests.

    def put_manifest(
        self, repo: str, reference: str, body: bytes, media_type: str
    ) -> Response:
        """PUT a manifest's bytes with its type; the answer, whatever it is."""
        return self.client.put(
            self.manifest_path(repo, reference), body, [("Content-Type", media_type)]
        )

    def push_manifest(
        self, repo: str, reference: str, body: bytes, media_type: str
    ) -> str:
        """Push a manifest that must be accepted; its digest."""
        response = self.put_manifest(repo, reference, body, media_type)
        assert response.status == 201, response.describe()
        digest = digest_of(body)
        assert response.header("Docker-Content-Digest") == digest, response.describe()
        return digest

    def push_document(
        self, repo: str, reference: str, document: Document
    ) -> tuple[bytes, str]:
        """Push a manifest written as a dictionary; its bytes and digest."""
        body = encode(document)
        return body, self.push_manifest(repo, reference, body, document["mediaType"])

    def push_image(
        self, repo: str, reference: str = "", layer_count: int = 1, **extra: Any
    ) -> PushedImage:
        """Push a config, layers and an OCI image manifest over them.

        With no `reference` the manifest is pushed under its digest, untagged.
        """
        config = random_config()
        layers = tuple(random_blob(512) for _ in range(layer_count))
        for blob in (config, *layers):
            self.push_blob(repo, blob)

        document = image_manifest(
            descriptor(OCI_CONFIG, config),
            [descriptor(OCI_LAYER, layer) for layer in layers],
            **extra,
        )
        reference = reference or digest_of(encode(document))
        body, digest = self.push_document(repo, reference, document)
        return PushedImage(body, digest, config, layers)
