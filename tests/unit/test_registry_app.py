"""Tests of the registry's routes, driven in memory through StubTreq.

StubTreq serves the Klein resource from a plain twisted.web site, so these requests
take the buffered-body path; `test_registry_request` covers the streaming one.
"""

# Twisted's and treq's test helpers carry no annotations yet.
# mypy: disable-error-code="no-untyped-call"

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from tests.unit.memstore import MemoryStorage
from treescale.auth.authenticator import Authenticator
from treescale.registry.app import Registry, RegistrySettings
from treescale.registry.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
)
from treescale.store.digests import sha256_digest

T = TypeVar("T")

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
BLOB = b"the bytes of a layer, long enough to range over"


def result_of(deferred: "Deferred[T]") -> T:
    """The result of a Deferred that has fired; raises its failure."""
    results: list[T | Failure] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


@dataclass(frozen=True)
class Answer:
    """A response, read whole."""

    code: int
    headers: Headers
    body: bytes
    length: object

    def header(self, name: str) -> str | None:
        """A header's first value."""
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    @property
    def error(self) -> str:
        """The code of the error the body carries."""
        errors = self.json()["errors"]
        assert len(errors) == 1
        return str(errors[0]["code"])


@dataclass
class World:
    """A registry over memory storage, a fake clock, and a client for it."""

    settings: RegistrySettings = field(default_factory=RegistrySettings)
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    clock: Clock = field(default_factory=Clock)
    events: EventLoggingObserver = field(default_factory=EventLoggingObserver)
    authenticator: Authenticator | None = None

    def __post_init__(self) -> None:
        self.registry = Registry(
            self.storage, self.clock, self.settings, self.authenticator
        )
        self.registry.log = Logger(observer=self.events)
        self.registry.pushes.log = Logger(observer=self.events)
        self.registry.deletes.log = Logger(observer=self.events)
        self.stub = StubTreq(self.registry.app.resource())
        self._request: Callable[..., Deferred[IResponse]] = self.stub.request  # type: ignore[attr-defined]

    def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """Send one request and read its whole response."""
        sent = self._request(
            method, "http://registry.test" + path, data=body or None, headers=headers
        )
        self.stub.flush()
        response = result_of(sent)
        content: Deferred[bytes] = response.content()  # type: ignore[attr-defined]
        self.stub.flush()
        return Answer(
            response.code, response.headers, result_of(content), response.length
        )

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload a blob in one POST; return its digest."""
        digest = sha256_digest(data)
        answer = self.send("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data)
        assert answer.code == 201, answer.body
        return digest

    def start_upload(self, repo: str) -> str:
        """Open an upload session; return its location."""
        answer = self.send("POST", f"/v2/{repo}/blobs/uploads/")
        assert answer.code == 202, answer.body
        location = answer.header("Location")
        assert location is not None
        return location

    def push_image(self, repo: str, reference: str, **fields: object) -> Answer:
        """Push blobs for an OCI image and then its manifest."""
        config = self.push_blob(repo, b"{}")
        layer = self.push_blob(repo, BLOB)
        document = image_manifest(config, layer, **fields)
        return self.put_manifest(repo, reference, document, OCI_MANIFEST)

    def put_manifest(
        self, repo: str, reference: str, document: object, content_type: str | None
    ) -> Answer:
        """PUT a manifest document."""
        headers = {} if content_type is None else {"Content-Type": content_type}
        body = document if isinstance(document, bytes) else encode(document)
        return self.send("PUT", f"/v2/{repo}/manifests/{reference}", body, headers)


def encode(document: object) -> bytes:
    """A manifest's bytes."""
    return json.dumps(document, indent=1).encode()


def image_manifest(config: str, layer: str, **fields: object) -> dict[str, object]:
    """An OCI image manifest of one config and one layer."""
    document: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG_TYPE, "digest": config, "size": 2},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer, "size": len(BLOB)}],
    }
    document.update(fields)
    return {key: value for key, value in document.items() if value is not None}


def index_manifest(media_type: str, *children: tuple[str, str, int]) -> bytes:
    """An index or list of child manifests (media type, digest, size)."""
    return encode(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                {"mediaType": kind, "digest": digest, "size": size}
                for kind, digest, size in children
            ],
        }
    )


@pytest.fixture
def world() -> World:
    """A fresh registry."""
    return World()


# Base and routing.


def test_version_check(world: World) -> None:
    """GET /v2/ answers 200 {} with the API version header, with or without slash."""
    for path in ["/v2/", "/v2"]:
        answer = world.send("GET", path)
        assert answer.code == 200
        assert answer.json() == {}
        assert answer.header("Docker-Distribution-API-Version") == "registry/2.0"
        assert answer.header("Content-Type") == "application/json"


@pytest.mark.parametrize("path", ["/v2/foo", "/v2/a/b/catalog/x", "/", "/v1/x"])
def test_unknown_endpoints_are_json_404(world: World, path: str) -> None:
    """Paths that name no endpoint get a 404 with a JSON error body."""
    answer = world.send("GET", path)
    assert answer.code == 404
    assert answer.header("Content-Type") == "application/json"
    assert answer.error == "UNSUPPORTED"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PATCH", "/v2/a/manifests/latest", "GET, HEAD, PUT, DELETE"),
        ("PUT", "/v2/a/blobs/sha256:" + "0" * 64, "GET, HEAD, DELETE"),
        ("PUT", "/v2/a/tags/list", "GET, HEAD"),
        ("GET", "/v2/a/blobs/uploads/", "POST"),
        ("POST", "/v2/", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405(
    world: World, method: str, path: str, allowed: str
) -> None:
    """A method an endpoint lacks is 405 UNSUPPORTED with an Allow header."""
    answer = world.send(method, path)
    assert answer.code == 405
    assert answer.error == "UNSUPPORTED"
    assert answer.header("Allow") == allowed


@pytest.mark.parametrize(
    "path",
    [
        "/v2/UPPER/blobs/sha256:" + "0" * 64,
        "/v2/a//b/manifests/latest",
        "/v2/-a/tags/list",
        "/v2/" + "a" * 256 + "/tags/list",
        "/v2/blobs/uploads/",
    ],
)
def test_bad_names_are_name_invalid(world: World, path: str) -> None:
    """Repository names outside the grammar or too long are 400 NAME_INVALID."""
    method = "POST" if path.endswith("uploads/") else "GET"
    answer = world.send(method, path)
    assert answer.code == 400
    assert answer.error == "NAME_INVALID"


def test_name_length_is_a_setting() -> None:
    """A registry with a shorter name limit refuses longer names."""
    world = World(settings=RegistrySettings(max_name_length=3))
    assert world.send("POST", "/v2/abc/blobs/uploads/").code == 202
    assert world.send("POST", "/v2/abcd/blobs/uploads/").error == "NAME_INVALID"


# Blob uploads.


def test_monolithic_post_then_pull(world: World) -> None:
    """A single POST with ?digest= stores the blob; GET returns it with headers."""
    digest = sha256_digest(BLOB)
    answer = world.send("POST", f"/v2/a/b/c/blobs/uploads/?digest={digest}", BLOB)
    assert answer.code == 201
    assert answer.header("Location") == f"/v2/a/b/c/blobs/{digest}"
    assert answer.header("Docker-Content-Digest") == digest

    pulled = world.send("GET", f"/v2/a/b/c/blobs/{digest}")
    assert pulled.code == 200
    assert pulled.body == BLOB
    assert pulled.length == len(BLOB)
    assert pulled.header("Docker-Content-Digest") == digest
    assert pulled.header("Accept-Ranges") == "bytes"
    assert pulled.header("Content-Type") == "application/octet-stream"
    assert world.storage.blobs[digest] == BLOB
    assert len(world.registry.sessions) == 0


def test_head_blob(world: World) -> None:
    """HEAD on a blob gives its length and digest and no body."""
    digest = world.push_blob("a", BLOB)
    answer = world.send("HEAD", f"/v2/a/blobs/{digest}")
    assert answer.code == 200
    assert answer.body == b""
    assert answer.header("Content-Length") == str(len(BLOB))
    assert answer.header("Docker-Content-Digest") == digest


def test_post_then_put(world: World) -> None:
    """POST opens a session (202, Location, Range 0-0, id); PUT with the body closes."""
    answer = world.send("POST", "/v2/a/b/blobs/uploads/")
    assert answer.code == 202
    location = answer.header("Location")
    uuid = answer.header("Docker-Upload-UUID")
    assert location == f"/v2/a/b/blobs/uploads/{uuid}"
    assert answer.header("Range") == "0-0"

    digest = sha256_digest(BLOB)
    closed = world.send("PUT", f"{location}?digest={digest}", BLOB)
    assert closed.code == 201
    assert closed.header("Location") == f"/v2/a/b/blobs/{digest}"
    assert closed.header("Docker-Content-Digest") == digest
    assert world.send("GET", f"/v2/a/b/blobs/{digest}").body == BLOB


def test_chunked_upload(world: World) -> None:
    """PATCH chunks in order with Content-Range; each answer reports the Range."""
    location = world.start_upload("org/team/app")
    offset = 0
    for chunk in [BLOB[:10], BLOB[10:25], BLOB[25:]]:
        last = offset + len(chunk) - 1
        answer = world.send(
            "PATCH", location, chunk, {"Content-Range": f"{offset}-{last}"}
        )
        assert answer.code == 202
        assert answer.header("Range") == f"0-{last}"
        assert answer.header("Location") == location
        assert answer.header("Docker-Upload-UUID") == location.rsplit("/", 1)[1]
        offset = last + 1

    digest = sha256_digest(BLOB)
    assert world.send("PUT", f"{location}?digest={digest}").code == 201
    assert world.send("GET", f"/v2/org/team/app/blobs/{digest}").body == BLOB


def test_patch_without_content_range_appends(world: World) -> None:
    """A PATCH without Content-Range (as docker streams) appends its body."""
    location = world.start_upload("a")
    assert world.send("PATCH", location, BLOB[:5]).header("Range") == "0-4"
    assert world.send("PATCH", location, BLOB[5:]).header("Range") == (
        f"0-{len(BLOB) - 1}"
    )
    digest = sha256_digest(BLOB)
    assert world.send("PUT", f"{location}?digest={digest}").code == 201


def test_final_chunk_in_put(world: World) -> None:
    """The last chunk may come in the closing PUT, with its Content-Range."""
    location = world.start_upload("a")
    world.send("PATCH", location, BLOB[:7], {"Content-Range": "0-6"})
    digest = sha256_digest(BLOB)
    last = f"7-{len(BLOB) - 1}"
    answer = world.send(
        "PUT", f"{location}?digest={digest}", BLOB[7:], {"Content-Range": last}
    )
    assert answer.code == 201
    assert world.storage.blobs[digest] == BLOB


def test_out_of_order_chunk_is_416(world: World) -> None:
    """A chunk that does not start at the upload's offset is 416 and not written."""
    location = world.start_upload("a")
    world.send("PATCH", location, b"12345", {"Content-Range": "0-4"})
    answer = world.send("PATCH", location, b"67890", {"Content-Range": "2-6"})
    assert answer.code == 416
    assert answer.error == "BLOB_UPLOAD_INVALID"
    assert answer.header("Range") == "0-4"
    assert answer.header("Location") == location
    assert world.send("GET", location).header("Range") == "0-4"


@pytest.mark.parametrize("content_range", ["bogus", "5-2", "bytes=x"])
def test_malformed_content_range_is_416(world: World, content_range: str) -> None:
    """A malformed Content-Range is 416 BLOB_UPLOAD_INVALID."""
    location = world.start_upload("a")
    answer = world.send("PATCH", location, b"abc", {"Content-Range": content_range})
    assert answer.code == 416
    assert answer.error == "BLOB_UPLOAD_INVALID"


def test_content_range_disagreeing_with_length_is_size_invalid(world: World) -> None:
    """A Content-Range whose span differs from Content-Length is 400 SIZE_INVALID."""
    location = world.start_upload("a")
    answer = world.send("PATCH", location, b"abc", {"Content-Range": "0-9"})
    assert answer.code == 400
    assert answer.error == "SIZE_INVALID"
    assert world.send("GET", location).header("Range") == "0-0"


def test_digest_mismatch(world: World) -> None:
    """A closing digest the bytes do not hash to is 400; nothing is stored."""
    location = world.start_upload("a")
    wrong = sha256_digest(b"other")
    answer = world.send("PUT", f"{location}?digest={wrong}", BLOB)
    assert answer.code == 400
    assert answer.error == "DIGEST_INVALID"
    assert wrong not in world.storage.blobs
    assert world.storage.uploads[0].aborted
    assert world.send("GET", location).error == "BLOB_UPLOAD_UNKNOWN"
    assert "link/a/" + wrong not in world.storage.records


def test_monolithic_digest_mismatch(world: World) -> None:
    """A single POST whose body does not match its digest is 400 and leaves nothing."""
    wrong = sha256_digest(b"other")
    answer = world.send("POST", f"/v2/a/blobs/uploads/?digest={wrong}", BLOB)
    assert answer.code == 400
    assert answer.error == "DIGEST_INVALID"
    assert world.storage.blobs == {}
    assert len(world.registry.sessions) == 0


@pytest.mark.parametrize("query", ["", "?digest=sha256:abc", "?digest=md5:00"])
def test_put_needs_a_valid_digest(world: World, query: str) -> None:
    """A closing PUT without a valid digest is 400 DIGEST_INVALID."""
    location = world.start_upload("a")
    answer = world.send("PUT", location + query, BLOB)
    assert answer.code == 400
    assert answer.error == "DIGEST_INVALID"


def test_upload_status(world: World) -> None:
    """GET on a session is 204 with its Range and Location."""
    location = world.start_upload("a")
    world.send("PATCH", location, b"0123456789")
    answer = world.send("GET", location)
    assert answer.code == 204
    assert answer.header("Range") == "0-9"
    assert answer.header("Location") == location
    assert answer.body == b""


def test_cancel_upload(world: World) -> None:
    """DELETE on a session is 204; the session is then unknown."""
    location = world.start_upload("a")
    assert world.send("DELETE", location).code == 204
    assert world.storage.uploads[0].aborted
    for method in ["GET", "PATCH", "DELETE"]:
        answer = world.send(method, location)
        assert answer.code == 404
        assert answer.error == "BLOB_UPLOAD_UNKNOWN"


def test_session_of_another_repository_is_unknown(world: World) -> None:
    """A session id used under another repository's path is 404."""
    location = world.start_upload("a")
    uuid = location.rsplit("/", 1)[1]
    answer = world.send("PATCH", f"/v2/b/blobs/uploads/{uuid}", b"x")
    assert answer.code == 404
    assert answer.error == "BLOB_UPLOAD_UNKNOWN"
    assert world.storage.uploads[0].size == 0


def test_unknown_session(world: World) -> None:
    """An id no session has is 404 BLOB_UPLOAD_UNKNOWN."""
    answer = world.send("PUT", "/v2/a/blobs/uploads/nope?digest=" + sha256_digest(b""))
    assert answer.code == 404
    assert answer.error == "BLOB_UPLOAD_UNKNOWN"


def test_session_cap_is_429() -> None:
    """Past the session cap a POST is 429 TOOMANYREQUESTS."""
    world = World(settings=RegistrySettings(max_upload_sessions=1))
    world.start_upload("a")
    answer = world.send("POST", "/v2/a/blobs/uploads/")
    assert answer.code == 429
    assert answer.error == "TOOMANYREQUESTS"


def test_idle_session_expires(world: World) -> None:
    """A session idle past the timeout is gone."""
    location = world.start_upload("a")
    world.clock.advance(world.settings.upload_idle_timeout + 1)
    assert world.send("GET", location).error == "BLOB_UPLOAD_UNKNOWN"


def test_blob_visible_only_where_linked(world: World) -> None:
    """A blob uploaded into one repository is unknown in another."""
    digest = world.push_blob("a", BLOB)
    for method in ["GET", "HEAD"]:
        answer = world.send(method, f"/v2/b/blobs/{digest}")
        assert answer.code == 404
    assert world.send("GET", f"/v2/b/blobs/{digest}").error == "BLOB_UNKNOWN"


def test_unknown_blob(world: World) -> None:
    """A blob nobody uploaded is 404 BLOB_UNKNOWN."""
    answer = world.send("GET", "/v2/a/blobs/" + sha256_digest(b"nothing"))
    assert answer.code == 404
    assert answer.error == "BLOB_UNKNOWN"


@pytest.mark.parametrize(
    "digest", ["sha256:xyz", "md5:" + "a" * 32, "sha256:" + "A" * 64, "nodigest"]
)
def test_bad_blob_digest(world: World, digest: str) -> None:
    """A blob path with a digest we cannot store is 400 DIGEST_INVALID."""
    answer = world.send("GET", f"/v2/a/blobs/{digest}")
    assert answer.code == 400
    assert answer.error == "DIGEST_INVALID"


def test_mount_from_a_repository_holding_the_blob(world: World) -> None:
    """A mount of a blob linked in `from` is 201 and links it in the target."""
    digest = world.push_blob("src", BLOB)
    answer = world.send("POST", f"/v2/dst/blobs/uploads/?mount={digest}&from=src")
    assert answer.code == 201
    assert answer.header("Location") == f"/v2/dst/blobs/{digest}"
    assert answer.header("Docker-Content-Digest") == digest
    assert world.send("GET", f"/v2/dst/blobs/{digest}").body == BLOB
    assert len(world.registry.sessions) == 0


@pytest.mark.parametrize("source", ["elsewhere", None])
def test_mount_falls_back_to_a_session(world: World, source: str | None) -> None:
    """A mount that cannot happen (not linked in from, or no from) opens a session."""
    digest = world.push_blob("src", BLOB)
    query = f"?mount={digest}" + ("" if source is None else f"&from={source}")
    answer = world.send("POST", "/v2/dst/blobs/uploads/" + query)
    assert answer.code == 202
    assert answer.header("Docker-Upload-UUID")
    assert world.send("GET", f"/v2/dst/blobs/{digest}").code == 404


# Blob reads with Range.


@pytest.mark.parametrize(
    ("header", "body", "content_range"),
    [
        ("bytes=0-3", BLOB[0:4], f"bytes 0-3/{len(BLOB)}"),
        ("bytes=10-", BLOB[10:], f"bytes 10-{len(BLOB) - 1}/{len(BLOB)}"),
        ("bytes=-5", BLOB[-5:], f"bytes {len(BLOB) - 5}-{len(BLOB) - 1}/{len(BLOB)}"),
        ("bytes=3-1000", BLOB[3:], f"bytes 3-{len(BLOB) - 1}/{len(BLOB)}"),
        ("bytes=0-", BLOB, f"bytes 0-{len(BLOB) - 1}/{len(BLOB)}"),
    ],
)
def test_range_reads(
    world: World, header: str, body: bytes, content_range: str
) -> None:
    """A Range read is 206 with exactly those bytes and a Content-Range."""
    digest = world.push_blob("a", BLOB)
    answer = world.send("GET", f"/v2/a/blobs/{digest}", headers={"Range": header})
    assert answer.code == 206
    assert answer.body == body
    assert answer.length == len(body)
    assert answer.header("Content-Range") == content_range


@pytest.mark.parametrize(
    "header", [f"bytes={len(BLOB)}-", "bytes=5-2", "bytes=0-1,4-5"]
)
def test_bad_ranges_are_416(world: World, header: str) -> None:
    """A Range the blob cannot serve is 416 with Content-Range: bytes */size."""
    digest = world.push_blob("a", BLOB)
    answer = world.send("GET", f"/v2/a/blobs/{digest}", headers={"Range": header})
    assert answer.code == 416
    assert answer.error == "RANGE_INVALID"
    assert answer.header("Content-Range") == f"bytes */{len(BLOB)}"


def test_empty_blob(world: World) -> None:
    """The empty blob uploads and reads back as zero bytes."""
    digest = world.push_blob("a", b"")
    answer = world.send("GET", f"/v2/a/blobs/{digest}")
    assert answer.code == 200
    assert answer.body == b""
    assert answer.length == 0


# Manifests.


def test_push_and_pull_oci_manifest_by_tag(world: World) -> None:
    """A manifest pushed by tag is 201; GET by tag and digest gives its exact bytes."""
    config = world.push_blob("a/b", b"{}")
    layer = world.push_blob("a/b", BLOB)
    body = encode(image_manifest(config, layer))
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    answer = world.put_manifest("a/b", "v1", body, OCI_MANIFEST)
    assert answer.code == 201
    assert answer.header("Location") == f"/v2/a/b/manifests/{digest}"
    assert answer.header("Docker-Content-Digest") == digest

    for reference in ["v1", digest]:
        pulled = world.send("GET", f"/v2/a/b/manifests/{reference}")
        assert pulled.code == 200
        assert pulled.body == body
        assert pulled.header("Content-Type") == OCI_MANIFEST
        assert pulled.header("Docker-Content-Digest") == digest
        assert pulled.length == len(body)


def test_head_manifest(world: World) -> None:
    """HEAD on a manifest gives type, digest and length, and no body."""
    pushed = world.push_image("a", "latest")
    answer = world.send("HEAD", "/v2/a/manifests/latest")
    assert answer.code == 200
    assert answer.body == b""
    assert answer.header("Docker-Content-Digest") == pushed.header(
        "Docker-Content-Digest"
    )
    assert answer.header("Content-Type") == OCI_MANIFEST
    assert int(answer.header("Content-Length") or 0) > 0


def test_manifest_without_media_type_field(world: World) -> None:
    """A manifest without mediaType (umoci) is stored with its Content-Type's type."""
    answer = world.push_image("a", "latest", mediaType=None)
    assert answer.code == 201
    pulled = world.send("GET", "/v2/a/manifests/latest")
    assert pulled.header("Content-Type") == OCI_MANIFEST


def test_media_type_disagreeing_with_content_type(world: World) -> None:
    """A mediaType field that differs from Content-Type is 400 MANIFEST_INVALID."""
    config = world.push_blob("a", b"{}")
    layer = world.push_blob("a", BLOB)
    document = image_manifest(config, layer)
    answer = world.put_manifest("a", "latest", document, DOCKER_MANIFEST)
    assert answer.code == 400
    assert answer.error == "MANIFEST_INVALID"


def test_unsupported_manifest_type(world: World) -> None:
    """A manifest of an unsupported media type is 415 UNSUPPORTED."""
    answer = world.put_manifest(
        "a",
        "latest",
        {"schemaVersion": 1},
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    )
    assert answer.code == 415
    assert answer.error == "UNSUPPORTED"


def test_docker_schema2_manifest(world: World) -> None:
    """A Docker schema 2 manifest is stored and served with its type."""
    config = world.push_blob("a", b"{}")
    layer = world.push_blob("a", BLOB)
    document = image_manifest(config, layer, mediaType=DOCKER_MANIFEST)
    assert world.put_manifest("a", "d", document, DOCKER_MANIFEST).code == 201
    pulled = world.send("GET", "/v2/a/manifests/d")
    assert pulled.header("Content-Type") == DOCKER_MANIFEST


def test_manifest_referencing_unlinked_blob(world: World) -> None:
    """A manifest naming a blob not linked in its repository is refused."""
    config = world.push_blob("a", b"{}")
    layer = world.push_blob("elsewhere", BLOB)
    answer = world.put_manifest(
        "a", "latest", image_manifest(config, layer), OCI_MANIFEST
    )
    assert answer.code == 400
    assert answer.error == "MANIFEST_BLOB_UNKNOWN"
    assert answer.json()["errors"][0]["detail"] == {"digests": [layer]}
    assert world.send("GET", "/v2/a/manifests/latest").code == 404


@pytest.mark.parametrize(
    ("media_type", "child_type"),
    [(OCI_INDEX, OCI_MANIFEST), (DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)],
)
def test_index_of_known_manifests(
    world: World, media_type: str, child_type: str
) -> None:
    """An index or list whose children are manifests of the repository is stored."""
    config = world.push_blob("a", b"{}")
    layer = world.push_blob("a", BLOB)
    child = encode(image_manifest(config, layer, mediaType=child_type))
    child_digest = world.put_manifest("a", "child", child, child_type).header(
        "Docker-Content-Digest"
    )
    assert child_digest is not None
    body = index_manifest(media_type, (child_type, child_digest, len(child)))
    answer = world.put_manifest("a", "multi", body, media_type)
    assert answer.code == 201
    pulled = world.send("GET", "/v2/a/manifests/multi")
    assert pulled.body == body
    assert pulled.header("Content-Type") == media_type


def test_index_of_unknown_manifest(world: World) -> None:
    """An index naming a manifest unknown in its repository is MANIFEST_BLOB_UNKNOWN."""
    digest = world.push_blob("a", b"not a manifest")
    body = index_manifest(OCI_INDEX, (OCI_MANIFEST, digest, 14))
    answer = world.put_manifest("a", "multi", body, OCI_INDEX)
    assert answer.code == 400
    assert answer.error == "MANIFEST_BLOB_UNKNOWN"


def test_push_by_digest(world: World) -> None:
    """A manifest pushed by its own digest is stored without a tag."""
    config = world.push_blob("a", b"{}")
    layer = world.push_blob("a", BLOB)
    body = encode(image_manifest(config, layer))
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert world.put_manifest("a", digest, body, OCI_MANIFEST).code == 201
    assert world.send("GET", f"/v2/a/manifests/{digest}").body == body
    assert world.send("GET", "/v2/a/tags/list").json() == {"name": "a", "tags": []}


def test_push_by_wrong_digest(world: World) -> None:
    """A manifest pushed by a digest it does not hash to is 400 DIGEST_INVALID."""
    config = world.push_blob("a", b"{}")
    layer = world.push_blob("a", BLOB)
    body = encode(image_manifest(config, layer))
    answer = world.put_manifest("a", sha256_digest(b"x"), body, OCI_MANIFEST)
    assert answer.code == 400
    assert answer.error == "DIGEST_INVALID"


def test_push_under_invalid_tag(world: World) -> None:
    """A reference that is neither a tag nor a digest is 400 TAG_INVALID."""
    answer = world.push_image("a", ".bad")
    assert answer.code == 400
    assert answer.error == "TAG_INVALID"


def test_manifest_too_large() -> None:
    """A manifest past the size limit is 413 SIZE_INVALID."""
    world = World(settings=RegistrySettings(max_manifest_size=100))
    answer = world.push_image("a", "latest", annotations={"pad": "x" * 200})
    assert answer.code == 413
    assert answer.error == "SIZE_INVALID"


def test_manifest_not_json(world: World) -> None:
    """A manifest body that is not JSON is 400 MANIFEST_INVALID."""
    answer = world.put_manifest("a", "latest", b"{nope", OCI_MANIFEST)
    assert answer.code == 400
    assert answer.error == "MANIFEST_INVALID"


@pytest.mark.parametrize(
    "reference", ["latest", sha256_digest(b"none"), "sha512:" + "a" * 128]
)
def test_unknown_manifest(world: World, reference: str) -> None:
    """An unknown tag or digest, of either algorithm, is 404 MANIFEST_UNKNOWN."""
    world.push_image("a", "other")
    answer = world.send("GET", f"/v2/a/manifests/{reference}")
    assert (answer.code, answer.error) == (404, "MANIFEST_UNKNOWN")


def test_manifest_of_another_repository_is_unknown(world: World) -> None:
    """A manifest pushed to one repository is unknown by digest in another."""
    digest = world.push_image("a", "latest").header("Docker-Content-Digest")
    answer = world.send("GET", f"/v2/b/manifests/{digest}")
    assert (answer.code, answer.error) == (404, "MANIFEST_UNKNOWN")


def test_retag_moves_the_tag(world: World) -> None:
    """Pushing another manifest under a tag points the tag at it."""
    world.push_image("a", "latest")
    second = world.push_image("a", "latest", annotations={"v": "2"})
    pulled = world.send("GET", "/v2/a/manifests/latest")
    assert pulled.header("Docker-Content-Digest") == second.header(
        "Docker-Content-Digest"
    )


# Tags.


def test_tags_list_sorted(world: World) -> None:
    """tags/list gives the repository's tags in order."""
    for tag in ["b", "a", "C", "c"]:
        world.push_image("x/y", tag)
    answer = world.send("GET", "/v2/x/y/tags/list")
    assert answer.code == 200
    assert answer.json() == {"name": "x/y", "tags": ["C", "a", "b", "c"]}
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("Link") is None


def test_tags_pagination(world: World) -> None:
    """n limits a page, last starts after a tag, and Link points at the next page."""
    for tag in ["t1", "t2", "t3", "t4", "t5"]:
        world.push_image("a", tag)

    first = world.send("GET", "/v2/a/tags/list?n=2")
    assert first.json()["tags"] == ["t1", "t2"]
    assert first.header("Link") == '</v2/a/tags/list?n=2&last=t2>; rel="next"'

    second = world.send("GET", "/v2/a/tags/list?n=2&last=t2")
    assert second.json()["tags"] == ["t3", "t4"]

    last = world.send("GET", "/v2/a/tags/list?n=2&last=t4")
    assert last.json()["tags"] == ["t5"]
    assert last.header("Link") is None

    assert world.send("GET", "/v2/a/tags/list?last=t3").json()["tags"] == ["t4", "t5"]


def test_tags_n_zero(world: World) -> None:
    """n=0 gives an empty list and no Link header."""
    world.push_image("a", "t1")
    answer = world.send("GET", "/v2/a/tags/list?n=0")
    assert answer.json() == {"name": "a", "tags": []}
    assert answer.header("Link") is None


def test_tags_page_cap() -> None:
    """A page holds at most the configured number of tags, with a Link for more."""
    world = World(settings=RegistrySettings(max_tags_page=2))
    for tag in ["t1", "t2", "t3"]:
        world.push_image("a", tag)
    answer = world.send("GET", "/v2/a/tags/list?n=100")
    assert answer.json()["tags"] == ["t1", "t2"]
    assert answer.header("Link") == '</v2/a/tags/list?n=2&last=t2>; rel="next"'


@pytest.mark.parametrize("n", ["-1", "x", "1.5"])
def test_tags_bad_n(world: World, n: str) -> None:
    """An n that is not a count is 400 PAGINATION_NUMBER_INVALID."""
    world.push_image("a", "t1")
    answer = world.send("GET", f"/v2/a/tags/list?n={n}")
    assert answer.code == 400
    assert answer.error == "PAGINATION_NUMBER_INVALID"


def test_tags_of_unknown_repository(world: World) -> None:
    """tags/list of a repository with no manifest is 404 NAME_UNKNOWN."""
    world.push_blob("a", BLOB)
    answer = world.send("GET", "/v2/a/tags/list")
    assert answer.code == 404
    assert answer.error == "NAME_UNKNOWN"


# Failures of the storage and of our code.


def test_storage_unavailable_is_503(world: World) -> None:
    """A storage without quorum makes requests 503 UNAVAILABLE."""
    world.push_image("a", "latest")
    world.storage.unavailable = True
    for method, path in [
        ("GET", "/v2/a/manifests/latest"),
        ("GET", "/v2/a/tags/list"),
        ("POST", "/v2/a/blobs/uploads/?digest=" + sha256_digest(BLOB)),
    ]:
        answer = world.send(method, path, BLOB if method == "POST" else b"")
        assert answer.code == 503
        assert answer.error == "UNAVAILABLE"


def test_upload_failure_is_503_and_ends_the_session(world: World) -> None:
    """A chunk that cannot be placed makes the PATCH 503 and the session gone."""
    location = world.start_upload("a")
    world.storage.fail_writes = True
    answer = world.send("PATCH", location, BLOB)
    assert answer.code == 503
    assert answer.error == "UNAVAILABLE"
    assert "start the upload again" in answer.json()["errors"][0]["message"]
    world.storage.fail_writes = False
    assert world.send("GET", location).error == "BLOB_UPLOAD_UNKNOWN"
    assert world.storage.uploads[0].aborted


def test_unexpected_error_is_500_without_traceback(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug gives the client a bare 500 JSON error and the log the traceback."""

    async def broken(key: str) -> bytes | None:
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(world.storage, "record_get", broken)
    answer = world.send("GET", "/v2/a/tags/list")
    assert answer.code == 500
    assert answer.error == "UNKNOWN"
    assert b"secret" not in answer.body
    assert b"Traceback" not in answer.body
    failures = [event for event in world.events if "log_failure" in event]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(ZeroDivisionError)


def test_rejections_are_logged_with_reason(world: World) -> None:
    """A refused request is logged with its code and detail."""
    world.send("GET", "/v2/a/blobs/sha256:zz")
    rejected = [
        event for event in world.events if event.get("code") == "DIGEST_INVALID"
    ]
    assert len(rejected) == 1
    assert rejected[0]["path"] == "/v2/a/blobs/sha256:zz"
    assert rejected[0]["detail"]["reason"] == "malformed digest"


def test_a_head_that_finds_nothing_is_logged_at_debug(world: World) -> None:
    """A HEAD answered 404 is a client asking whether a blob is there (every
    push asks it of each layer): logged at debug, while a GET that finds nothing
    stays at info."""
    missing = "/v2/a/blobs/sha256:" + "0" * 64
    world.send("HEAD", missing)
    world.send("GET", missing)

    levels = [
        (event["method"], event["log_level"])
        for event in world.events
        if event.get("code") == "BLOB_UNKNOWN"
    ]
    assert levels == [("HEAD", LogLevel.debug), ("GET", LogLevel.info)]


def test_completed_uploads_and_pushes_are_logged(world: World) -> None:
    """Completed uploads and manifest pushes are logged with repo, digest, nbytes."""
    pushed = world.push_image("a", "latest")
    uploads = [event for event in world.events if "elapsed" in event]
    assert {event["nbytes"] for event in uploads} == {2, len(BLOB)}
    assert all(event["repo"] == "a" for event in uploads)
    manifests = [event for event in world.events if "media_type" in event]
    assert [event["digest"] for event in manifests] == [
        pushed.header("Docker-Content-Digest")
    ]


def test_close_gives_up_uploads(world: World) -> None:
    """Closing the registry aborts the uploads in progress."""
    world.start_upload("a")
    world.registry.close()
    assert world.storage.uploads[0].aborted
    assert len(world.registry.sessions) == 0
