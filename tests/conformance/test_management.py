"""The spec's content management: deleting tags, manifests and blobs.

Each delete answers 202, and afterwards what was deleted is neither served (404)
nor listed: not in the tags list, not among a subject's referrers. What was not
deleted stays: deleting a tag keeps its manifest, deleting a blob in one
repository keeps it in another.
"""

import pytest

from .client import Client
from .content import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_MANIFEST,
    descriptor,
    digest_of,
    encode,
    image_manifest,
    random_blob,
)
from .deviations import reference_deviates
from .workflows import Registry, assert_error

pytestmark = pytest.mark.integration

ACCEPT = [("Accept", OCI_MANIFEST)]


@reference_deviates(
    "distribution 2.8.2 cannot delete a tag: DELETE /manifests/TAG answers 400 "
    "DIGEST_INVALID"
)
def test_delete_tag(registry: Registry, client: Client, repo: str) -> None:
    """DELETE of a tag: 202; the tag is gone, its manifest and other tags stay."""
    image = registry.push_image(repo, "doomed")
    registry.push_manifest(repo, "kept", image.manifest, OCI_MANIFEST)

    response = client.delete(registry.manifest_path(repo, "doomed"))

    assert response.status == 202, response.describe()
    gone = client.get(registry.manifest_path(repo, "doomed"), ACCEPT)
    assert_error(gone, 404, "MANIFEST_UNKNOWN")
    assert client.get(registry.tags_path(repo)).json()["tags"] == ["kept"]
    by_digest = client.get(registry.manifest_path(repo, image.digest), ACCEPT)
    assert by_digest.body == image.manifest, by_digest.describe()


def test_delete_manifest(registry: Registry, client: Client, repo: str) -> None:
    """DELETE of a manifest by digest: 202, then 404 by digest and by its tag."""
    image = registry.push_image(repo, "v1")

    response = client.delete(registry.manifest_path(repo, image.digest))

    assert response.status == 202, response.describe()
    by_digest = client.get(registry.manifest_path(repo, image.digest), ACCEPT)
    assert_error(by_digest, 404, "MANIFEST_UNKNOWN")
    by_tag = client.get(registry.manifest_path(repo, "v1"), ACCEPT)
    assert_error(by_tag, 404, "MANIFEST_UNKNOWN")


def test_deleted_manifest_leaves_tags_list(
    registry: Registry, client: Client, repo: str
) -> None:
    """The tags of a deleted manifest leave the tags list; other tags stay."""
    doomed = registry.push_image(repo, "doomed")
    registry.push_manifest(repo, "doomed-too", doomed.manifest, OCI_MANIFEST)
    registry.push_image(repo, "kept")

    response = client.delete(registry.manifest_path(repo, doomed.digest))
    listed = client.get(registry.tags_path(repo))

    assert response.status == 202, response.describe()
    assert listed.json()["tags"] == ["kept"], listed.describe()


@reference_deviates(
    "distribution 2.8.2 has no referrers API: /referrers/ answers 404 text/plain"
)
def test_deleted_referrer_leaves_referrers(
    registry: Registry, client: Client, repo: str
) -> None:
    """A deleted manifest is no longer among its subject's referrers."""
    subject = registry.push_image(repo, "subject")
    registry.push_blob(repo, EMPTY_JSON)
    digests = []
    for note in ("doomed", "kept"):
        document = image_manifest(
            descriptor(OCI_EMPTY, EMPTY_JSON),
            [],
            artifactType="application/vnd.treescale.conformance.note",
            subject=subject.descriptor,
            annotations={"note": note},
        )
        _, digest = registry.push_document(repo, digest_of(encode(document)), document)
        digests.append(digest)

    response = client.delete(registry.manifest_path(repo, digests[0]))
    listed = client.get(registry.referrers_path(repo, subject.digest))

    assert response.status == 202, response.describe()
    assert listed.status == 200, listed.describe()
    found = [entry["digest"] for entry in listed.json()["manifests"]]
    assert found == digests[1:]


def test_delete_blob(registry: Registry, client: Client, repo: str) -> None:
    """DELETE of a blob: 202, then GET and HEAD of it answer 404."""
    digest = registry.push_blob(repo, random_blob(100))

    response = client.delete(registry.blob_path(repo, digest))

    assert response.status == 202, response.describe()
    assert_error(client.get(registry.blob_path(repo, digest)), 404, "BLOB_UNKNOWN")
    assert client.head(registry.blob_path(repo, digest)).status == 404


def test_delete_blob_keeps_other_repository(
    registry: Registry, client: Client, repo: str
) -> None:
    """A blob deleted from one repository is still served by another that has it."""
    data = random_blob(100)
    digest = registry.push_blob(f"{repo}/one", data)
    registry.push_blob(f"{repo}/two", data)

    response = client.delete(registry.blob_path(f"{repo}/one", digest))
    kept = client.get(registry.blob_path(f"{repo}/two", digest))

    assert response.status == 202, response.describe()
    assert kept.status == 200, kept.describe()
    assert kept.body == data


def test_delete_unknown_manifest(registry: Registry, client: Client, repo: str) -> None:
    """DELETE of a manifest digest the repository lacks: 404 MANIFEST_UNKNOWN."""
    registry.push_image(repo, "v1")

    response = client.delete(
        registry.manifest_path(repo, digest_of(b"never pushed " + repo.encode()))
    )

    assert_error(response, 404, "MANIFEST_UNKNOWN")


def test_delete_unknown_blob(registry: Registry, client: Client, repo: str) -> None:
    """DELETE of a blob the repository lacks: 404 BLOB_UNKNOWN."""
    registry.push_blob(repo, random_blob(10))

    response = client.delete(
        registry.blob_path(repo, digest_of(b"never pushed " + repo.encode()))
    )

    assert_error(response, 404, "BLOB_UNKNOWN")
