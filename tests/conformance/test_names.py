"""Repository names and tags: the odd valid ones, the invalid ones, error bodies.

A name has any number of components and may contain the very words the API's paths
are made of (``tags/list``, ``blobs/uploads``, ``manifests``); a server must still
tell the name from the endpoint. Invalid names and tags are refused with 4xx and
the spec's JSON error body, as is every other client mistake: never a 500.
"""

import pytest

from .client import Client
from .content import OCI_MANIFEST, digest_of, random_blob
from .deviations import case, reference_deviates
from .workflows import Registry, assert_error, assert_error_body

pytestmark = pytest.mark.integration

ACCEPT = [("Accept", OCI_MANIFEST)]


def assert_round_trip(registry: Registry, client: Client, name: str) -> None:
    """Push a blob and a tagged image to `name`; read both back and list the tag."""
    data = random_blob(100)
    digest = registry.push_blob(name, data)
    image = registry.push_image(name, "v1")

    blob = client.get(registry.blob_path(name, digest))
    manifest = client.get(registry.manifest_path(name, "v1"), ACCEPT)
    tags = client.get(registry.tags_path(name))

    assert blob.body == data, blob.describe()
    assert manifest.body == image.manifest, manifest.describe()
    assert tags.status == 200, tags.describe()
    assert tags.json() == {"name": name, "tags": ["v1"]}


def test_six_components(registry: Registry, client: Client, repo: str) -> None:
    """A name of six path components works like any other."""
    name = f"{repo}/three/four/five/six"
    assert name.count("/") == 5

    assert_round_trip(registry, client, name)


@pytest.mark.parametrize(
    "suffix",
    [
        pytest.param("tags/list", id="ending-in-tags-list"),
        pytest.param("blobs/uploads/more", id="containing-blobs-uploads"),
        pytest.param("manifests/more", id="containing-manifests"),
        pytest.param("blobs/more", id="containing-blobs"),
    ],
)
def test_name_with_api_words(
    registry: Registry, client: Client, repo: str, suffix: str
) -> None:
    """A name containing the API's own path words is still read as a name."""
    assert_round_trip(registry, client, f"{repo}/{suffix}")


def test_tag_named_list(registry: Registry, client: Client, repo: str) -> None:
    """A tag called ``list`` is a tag like any other."""
    image = registry.push_image(repo, "list")

    manifest = client.get(registry.manifest_path(repo, "list"), ACCEPT)
    tags = client.get(registry.tags_path(repo))

    assert manifest.body == image.manifest, manifest.describe()
    assert tags.json() == {"name": repo, "tags": ["list"]}


NO_ROUTE = (
    "distribution 2.8.2 has no route for it: 404 text/plain '404 page not found', "
    "not a JSON error"
)
CLEANED = (
    "distribution 2.8.2 cleans the path and answers 301 to the cleaned path "
    "(another repository), with no error body"
)
TOO_LONG = (
    "distribution 2.8.2 answers a name of 262 characters with 500 UNKNOWN, not a 4xx"
)


def invalid_names() -> list[object]:
    """Names the spec's grammar refuses, with what the reference does with each."""
    return [
        case("conformance/Upper", id="uppercase", reference=NO_ROUTE),
        case("conformance/../escape", id="dot-dot", reference=CLEANED),
        case("/conformance/leading", id="leading-slash", reference=CLEANED),
        case("conformance/" + "a" * 250, id="too-long", reference=TOO_LONG),
        case("conformance/trailing-", id="trailing-separator", reference=NO_ROUTE),
        case("conformance//double", id="empty-component", reference=CLEANED),
    ]


@pytest.mark.parametrize("name", invalid_names())
def test_invalid_name_push(client: Client, name: str) -> None:
    """Starting an upload into an invalid name: 400 NAME_INVALID."""
    response = client.post(Registry.uploads_path(name))

    assert_error(response, 400, "NAME_INVALID")


@pytest.mark.parametrize("name", invalid_names())
def test_invalid_name_read(client: Client, name: str) -> None:
    """Reading a manifest of an invalid name: 400 NAME_INVALID or 404 NAME_UNKNOWN.

    Reading asks whether something exists, so the spec's 404 NAME_UNKNOWN is an
    answer too; either way with the JSON error body.
    """
    response = client.get(Registry.manifest_path(name, "v1"), ACCEPT)

    assert_error(response, {400, 404}, "NAME_INVALID", "NAME_UNKNOWN")


@reference_deviates(NO_ROUTE)
@pytest.mark.parametrize(
    "tag",
    [
        pytest.param(".dot-first", id="dot-first"),
        pytest.param("-dash-first", id="dash-first"),
        pytest.param("a" * 129, id="too-long"),
        pytest.param("with%21bang", id="bang"),
    ],
)
def test_invalid_tag(registry: Registry, repo: str, tag: str) -> None:
    """A manifest pushed under an invalid tag: 400 TAG_INVALID or MANIFEST_INVALID."""
    image = registry.push_image(repo)

    response = registry.put_manifest(repo, tag, image.manifest, OCI_MANIFEST)

    assert_error(response, 400, "TAG_INVALID", "MANIFEST_INVALID")


UNKNOWN_DIGEST = digest_of(b"client errors")


def client_mistakes(repo: str, session: str) -> dict[str, tuple[str, str, bytes]]:
    """Requests a careless client sends: method, target, body; by name."""
    blobs = f"/v2/{repo}/blobs"
    return {
        "blob-bad-digest": ("GET", f"{blobs}/sha256:not-hex", b""),
        "blob-unknown-algorithm": ("GET", f"{blobs}/md5:{'0' * 32}", b""),
        "manifest-bad-digest": ("GET", f"/v2/{repo}/manifests/sha256:zz", b""),
        "put-without-digest": ("PUT", session, b"data"),
        "put-bad-digest": ("PUT", Registry.with_digest(session, "sha256:1"), b""),
        "mount-bad-digest": ("POST", f"{blobs}/uploads/?mount=x&from={repo}", b""),
        "manifest-not-json": ("PUT", f"/v2/{repo}/manifests/v1", b"\xff\xfe"),
        "unknown-session-status": ("GET", f"{blobs}/uploads/no-such-session", b""),
        "unknown-session-delete": ("DELETE", f"{blobs}/uploads/no-such-session", b""),
        "unknown-endpoint": ("GET", f"/v2/{repo}/nothing-here", b""),
        "tags-of-unknown-repo": ("GET", f"/v2/{repo}/never/tags/list", b""),
    }


MISTAKES = [
    case("blob-bad-digest", id="blob-bad-digest"),
    case("blob-unknown-algorithm", id="blob-unknown-algorithm"),
    case(
        "manifest-bad-digest",
        id="manifest-bad-digest",
        reference="distribution 2.8.2 answers GET /manifests/sha256:zz with 500 "
        "UNKNOWN (its storage path for the reference is not found)",
    ),
    case("put-without-digest", id="put-without-digest"),
    case("put-bad-digest", id="put-bad-digest"),
    case(
        "mount-bad-digest",
        id="mount-bad-digest",
        reference="distribution 2.8.2 ignores a malformed mount digest and answers "
        "202, opening an upload session",
    ),
    case("manifest-not-json", id="manifest-not-json"),
    case("unknown-session-status", id="unknown-session-status"),
    case("unknown-session-delete", id="unknown-session-delete"),
    case("unknown-endpoint", id="unknown-endpoint", reference=NO_ROUTE),
    case("tags-of-unknown-repo", id="tags-of-unknown-repo"),
]


@pytest.mark.parametrize("mistake", MISTAKES)
def test_client_mistake_answer(
    registry: Registry, client: Client, repo: str, mistake: str
) -> None:
    """A client's mistake gets a 4xx, never a 500, with the spec's JSON error body."""
    registry.push_image(repo, "v1")
    session = registry.start_upload(repo)
    method, target, body = client_mistakes(repo, session)[mistake]

    response = client.request(method, target, body, [("Content-Type", OCI_MANIFEST)])

    assert 400 <= response.status < 500, response.describe()
    assert_error_body(response)
