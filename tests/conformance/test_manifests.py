"""Pushing manifests of every supported kind, their limits, and reading them back.

The kinds: an OCI image manifest, an OCI index (and an index of an index), an
artifact manifest with the empty config, a Docker schema 2 manifest and a Docker
manifest list. A manifest of 4 MiB must be taken, a larger one may be refused with
413; references to content the repository lacks are refused, except ``subject``,
which may name a manifest pushed later. A GET answers the manifest as pushed,
whatever reasonable Accept header the client sends.
"""

import pytest

from .client import Client
from .content import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    EMPTY_JSON,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    digest_of,
    encode,
    image_manifest,
    index_manifest,
    platform,
    random_blob,
    random_config,
)
from .deviations import case, reference_deviates
from .workflows import Registry, assert_error

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
ARTIFACT_TYPE = "application/vnd.treescale.conformance.test"
ALL_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)


def assert_served_as_pushed(
    client: Client, repo: str, reference: str, body: bytes, media_type: str
) -> None:
    """GET of the manifest gives its bytes and type, asking for that type."""
    response = client.get(
        Registry.manifest_path(repo, reference), [("Accept", media_type)]
    )
    assert response.status == 200, response.describe()
    assert response.body == body
    assert response.header("Content-Type") == media_type, response.describe()
    assert response.header("Docker-Content-Digest") == digest_of(body)


def push_index(registry: Registry, repo: str, reference: str) -> tuple[bytes, str]:
    """Push two images and an OCI index over them; the index's bytes and digest."""
    children = [
        {**registry.push_image(repo).descriptor, "platform": platform(arch)}
        for arch in ("amd64", "arm64")
    ]
    return registry.push_document(repo, reference, index_manifest(children))


def padded_manifest(registry: Registry, repo: str, size: int) -> bytes:
    """An image manifest of exactly `size` bytes, padded by an annotation."""
    config = random_config()
    registry.push_blob(repo, config)
    document = image_manifest(
        descriptor(OCI_CONFIG, config), [], annotations={"pad": ""}
    )
    padding = size - len(encode(document))
    document["annotations"]["pad"] = "x" * padding
    body = encode(document)
    assert len(body) == size
    return body


def test_put_image_manifest(registry: Registry, client: Client, repo: str) -> None:
    """PUT of an OCI image manifest: 201, digest, and a Location that serves it."""
    config = random_config()
    layer = random_blob(300)
    registry.push_blob(repo, config)
    registry.push_blob(repo, layer)
    body = encode(
        image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    )

    response = registry.put_manifest(repo, "v1", body, OCI_MANIFEST)

    assert response.status == 201, response.describe()
    assert response.header("Docker-Content-Digest") == digest_of(body)
    location = response.header("Location")
    assert location, response.describe()
    served = client.get(client.target_of(location), [("Accept", OCI_MANIFEST)])
    assert served.body == body, served.describe()


def test_put_manifest_by_digest(registry: Registry, client: Client, repo: str) -> None:
    """A manifest pushed under its own digest, no tag, is served by that digest."""
    config = random_config()
    registry.push_blob(repo, config)
    body = encode(image_manifest(descriptor(OCI_CONFIG, config), []))

    digest = registry.push_manifest(repo, digest_of(body), body, OCI_MANIFEST)

    assert_served_as_pushed(client, repo, digest, body, OCI_MANIFEST)


def test_oci_index(registry: Registry, client: Client, repo: str) -> None:
    """An OCI index over two image manifests is taken and served as pushed."""
    body, _ = push_index(registry, repo, "multi")

    assert_served_as_pushed(client, repo, "multi", body, OCI_INDEX)


def test_index_of_index(registry: Registry, client: Client, repo: str) -> None:
    """An index whose child is itself an index is taken and served as pushed."""
    inner, _ = push_index(registry, repo, "inner")
    child = descriptor(OCI_INDEX, inner)

    outer, _ = registry.push_document(repo, "outer", index_manifest([child]))

    assert_served_as_pushed(client, repo, "outer", outer, OCI_INDEX)


def test_artifact_manifest(registry: Registry, client: Client, repo: str) -> None:
    """An artifact: artifactType, the empty config ``{}``, no layers; served as is."""
    registry.push_blob(repo, EMPTY_JSON)
    config = descriptor(OCI_EMPTY, EMPTY_JSON)
    assert config["digest"] == (
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )

    body, _ = registry.push_document(
        repo, "artifact", image_manifest(config, [], artifactType=ARTIFACT_TYPE)
    )

    assert_served_as_pushed(client, repo, "artifact", body, OCI_MANIFEST)


def test_docker_schema2_manifest(registry: Registry, client: Client, repo: str) -> None:
    """A Docker schema 2 image manifest is taken and served with its own type."""
    config = random_config()
    layer = random_blob(300)
    registry.push_blob(repo, config)
    registry.push_blob(repo, layer)
    document = image_manifest(
        descriptor(DOCKER_CONFIG, config),
        [descriptor(DOCKER_LAYER, layer)],
        media_type=DOCKER_MANIFEST,
    )

    body, _ = registry.push_document(repo, "docker", document)

    assert_served_as_pushed(client, repo, "docker", body, DOCKER_MANIFEST)


def test_docker_manifest_list(registry: Registry, client: Client, repo: str) -> None:
    """A Docker manifest list over schema 2 manifests is taken and served as is."""
    children = []
    for arch in ("amd64", "arm64"):
        config = random_config()
        registry.push_blob(repo, config)
        document = image_manifest(
            descriptor(DOCKER_CONFIG, config), [], media_type=DOCKER_MANIFEST
        )
        child, _ = registry.push_document(repo, arch, document)
        children.append(
            {**descriptor(DOCKER_MANIFEST, child), "platform": platform(arch)}
        )

    body, _ = registry.push_document(
        repo, "list", index_manifest(children, media_type=DOCKER_MANIFEST_LIST)
    )

    assert_served_as_pushed(client, repo, "list", body, DOCKER_MANIFEST_LIST)


def test_manifest_of_4_mib(registry: Registry, client: Client, repo: str) -> None:
    """A manifest of 4 MiB, the size the spec asks registries to take, is taken."""
    body = padded_manifest(registry, repo, 4 * MiB)

    registry.push_manifest(repo, "large", body, OCI_MANIFEST)

    assert_served_as_pushed(client, repo, "large", body, OCI_MANIFEST)


@reference_deviates(
    "distribution 2.8.2 refuses a 5 MiB manifest with 400 MANIFEST_INVALID "
    "'http: request body too large', not 413"
)
def test_manifest_over_limit(registry: Registry, client: Client, repo: str) -> None:
    """A manifest of 5 MiB is refused with 413 (SIZE_INVALID: the spec's code list
    has no code for it), and not stored."""
    body = padded_manifest(registry, repo, 5 * MiB)

    response = registry.put_manifest(repo, "huge", body, OCI_MANIFEST)
    served = client.get(
        registry.manifest_path(repo, "huge"), [("Accept", OCI_MANIFEST)]
    )

    assert_error(response, 413, "SIZE_INVALID")
    assert served.status == 404, served.describe()


def test_manifest_missing_layer(registry: Registry, repo: str) -> None:
    """A manifest naming a layer the repository lacks: 400 MANIFEST_BLOB_UNKNOWN."""
    config = random_config()
    registry.push_blob(repo, config)
    document = image_manifest(
        descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, random_blob(50))]
    )

    response = registry.put_manifest(repo, "v1", encode(document), OCI_MANIFEST)

    assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")


def test_manifest_missing_config(registry: Registry, repo: str) -> None:
    """A manifest naming a config the repository lacks: 400 MANIFEST_BLOB_UNKNOWN."""
    layer = random_blob(50)
    registry.push_blob(repo, layer)
    document = image_manifest(
        descriptor(OCI_CONFIG, random_config()), [descriptor(OCI_LAYER, layer)]
    )

    response = registry.put_manifest(repo, "v1", encode(document), OCI_MANIFEST)

    assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")


def test_index_missing_child(registry: Registry, repo: str) -> None:
    """An index naming a manifest the repository lacks: 400 MANIFEST_BLOB_UNKNOWN."""
    image = registry.push_image(repo, "present")
    absent = descriptor(OCI_MANIFEST, encode({"schemaVersion": 2, "nonce": repo}))
    document = index_manifest([image.descriptor, absent])

    response = registry.put_manifest(repo, "multi", encode(document), OCI_INDEX)

    assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")


def test_subject_may_be_absent(registry: Registry, client: Client, repo: str) -> None:
    """A manifest whose ``subject`` names a manifest not (yet) pushed is taken."""
    subject = descriptor(OCI_MANIFEST, encode({"schemaVersion": 2, "nonce": repo}))
    registry.push_blob(repo, EMPTY_JSON)
    document = image_manifest(
        descriptor(OCI_EMPTY, EMPTY_JSON),
        [],
        artifactType=ARTIFACT_TYPE,
        subject=subject,
    )

    body, digest = registry.push_document(repo, digest_of(encode(document)), document)

    assert_served_as_pushed(client, repo, digest, body, OCI_MANIFEST)


def test_manifest_not_json(registry: Registry, repo: str) -> None:
    """A manifest body that is not JSON: 400 MANIFEST_INVALID."""
    response = registry.put_manifest(repo, "v1", b"{not json", OCI_MANIFEST)

    assert_error(response, 400, "MANIFEST_INVALID")


def test_manifest_digest_mismatch(registry: Registry, repo: str) -> None:
    """A manifest pushed under a digest it does not hash to is refused with 400."""
    config = random_config()
    registry.push_blob(repo, config)
    body = encode(image_manifest(descriptor(OCI_CONFIG, config), []))

    response = registry.put_manifest(repo, digest_of(body + b" "), body, OCI_MANIFEST)

    assert_error(response, 400, "DIGEST_INVALID")


NO_OCI_ACCEPT = (
    "distribution 2.8.2 answers 404 MANIFEST_UNKNOWN ('OCI manifest found, but "
    "accept header does not support OCI manifests') unless Accept names the OCI type"
)
NO_INDEX_ACCEPT = (
    "distribution 2.8.2 answers 404 MANIFEST_UNKNOWN ('OCI index found, but accept "
    "header does not support OCI indexes') unless Accept names the index type"
)


def accept_cases(media_type: str, reason: str) -> list[object]:
    """Accept headers a client may send, each of which admits `media_type`."""
    first, *others = [kind for kind in ALL_TYPES if kind != media_type]
    return [
        case([], id="no-accept", reference=reason),
        case([("Accept", "*/*")], id="any", reference=reason),
        case([("Accept", ", ".join([first, media_type, *others]))], id="list"),
        case(
            [("Accept", f"{first};q=0.9, {media_type};q=0.5, */*;q=0.1")],
            id="q-values",
        ),
        case(
            [("Accept", first), ("Accept", media_type), ("Accept", others[0])],
            id="several-lines",
        ),
    ]


@pytest.mark.parametrize("accept", accept_cases(OCI_MANIFEST, NO_OCI_ACCEPT))
def test_accept_image_manifest(
    registry: Registry, client: Client, repo: str, accept: list[tuple[str, str]]
) -> None:
    """GET of an OCI image manifest answers it, as pushed, to each Accept form."""
    image = registry.push_image(repo, "v1")

    response = client.get(registry.manifest_path(repo, "v1"), accept)

    assert response.status == 200, response.describe()
    assert response.body == image.manifest
    assert response.header("Content-Type") == OCI_MANIFEST


@pytest.mark.parametrize("accept", accept_cases(OCI_INDEX, NO_INDEX_ACCEPT))
def test_accept_index(
    registry: Registry, client: Client, repo: str, accept: list[tuple[str, str]]
) -> None:
    """GET of an OCI index answers it, as pushed, to each Accept form."""
    body, _ = push_index(registry, repo, "multi")

    response = client.get(registry.manifest_path(repo, "multi"), accept)

    assert response.status == 200, response.describe()
    assert response.body == body
    assert response.header("Content-Type") == OCI_INDEX


def test_tag_moves_between_index_and_manifest(
    registry: Registry, client: Client, repo: str
) -> None:
    """A tag moved from an index to a manifest and back: GET follows each move."""
    index, _ = push_index(registry, repo, "moving")
    image = registry.push_image(repo, "other")
    accept = [("Accept", f"{OCI_MANIFEST}, {OCI_INDEX}")]
    path = registry.manifest_path(repo, "moving")

    seen: list[tuple[bytes, str | None]] = []
    for body, media_type in ((image.manifest, OCI_MANIFEST), (index, OCI_INDEX)):
        registry.push_manifest(repo, "moving", body, media_type)
        response = client.get(path, accept)
        seen.append((response.body, response.header("Content-Type")))

    assert seen == [(image.manifest, OCI_MANIFEST), (index, OCI_INDEX)]
