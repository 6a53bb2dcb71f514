"""Tests of the API beyond push and pull: deletes, the catalog, referrers, Accept
negotiation, sha512 blobs, and the ``[registry]`` settings table."""

import hashlib
from pathlib import Path

import pytest

from tests.unit.test_registry_app import (
    BLOB,
    World,
    encode,
    image_manifest,
    index_manifest,
)
from treescale.config_error import ConfigError
from treescale.registry.accept import accepts
from treescale.registry.app import RegistrySettings
from treescale.registry.manifests import OCI_INDEX, OCI_MANIFEST
from treescale.registry.settings import parse_registry_settings

ARTIFACT_TYPE = "application/vnd.example.sbom+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"


@pytest.fixture
def world() -> World:
    return World()


def pushed_digest(world: World, repo: str, tag: str, **fields: object) -> str:
    answer = world.push_image(repo, tag, **fields)
    assert answer.code == 201, answer.body
    digest = answer.header("Docker-Content-Digest")
    assert digest is not None
    return digest


def push_referrer(
    world: World, repo: str, subject: str, artifact_type: str = ARTIFACT_TYPE
) -> tuple[str, bytes]:
    """Push an artifact manifest whose subject is `subject`; its digest and bytes."""
    config = world.push_blob(repo, b"{}")
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 100},
        "annotations": {"org.example.kind": "sbom"},
    }
    body = encode(document)
    answer = world.put_manifest(
        repo, "sha256:" + hashlib.sha256(body).hexdigest(), body, OCI_MANIFEST
    )
    assert answer.code == 201, answer.body
    assert answer.header("OCI-Subject") == subject
    digest = answer.header("Docker-Content-Digest")
    assert digest is not None
    return digest, body


# Deletes.


def test_delete_tag_leaves_the_manifest(world: World) -> None:
    """A deleted tag is gone from tags/list and reads; the manifest stays by digest."""
    digest = pushed_digest(world, "a", "v1")
    pushed_digest(world, "a", "v2")

    assert world.send("DELETE", "/v2/a/manifests/v1").code == 202

    assert world.send("GET", "/v2/a/manifests/v1").error == "MANIFEST_UNKNOWN"
    assert world.send("GET", "/v2/a/tags/list").json()["tags"] == ["v2"]
    assert world.send("GET", f"/v2/a/manifests/{digest}").code == 200


def test_delete_manifest_takes_its_tags(world: World) -> None:
    """Deleting by digest removes the manifest and every tag pointing to it."""
    digest = pushed_digest(world, "a", "v1")
    world.put_manifest(
        "a", "also", world.send("GET", f"/v2/a/manifests/{digest}").body, OCI_MANIFEST
    )

    assert world.send("DELETE", f"/v2/a/manifests/{digest}").code == 202

    assert world.send("GET", f"/v2/a/manifests/{digest}").code == 404
    assert world.send("HEAD", "/v2/a/manifests/v1").code == 404
    assert world.send("GET", "/v2/a/tags/list").json()["tags"] == []


def test_delete_unknown_manifest_or_tag_is_404(world: World) -> None:
    pushed_digest(world, "a", "v1")
    answer = world.send("DELETE", "/v2/a/manifests/nope")
    assert (answer.code, answer.error) == (404, "MANIFEST_UNKNOWN")
    answer = world.send("DELETE", "/v2/a/manifests/sha256:" + "0" * 64)
    assert (answer.code, answer.error) == (404, "MANIFEST_UNKNOWN")


def test_delete_blob_unlinks_it_from_that_repository_only(world: World) -> None:
    """A deleted blob is 404 in its repository, still there in another."""
    digest = world.push_blob("a", BLOB)
    world.push_blob("b", BLOB)

    assert world.send("DELETE", f"/v2/a/blobs/{digest}").code == 202

    assert world.send("GET", f"/v2/a/blobs/{digest}").error == "BLOB_UNKNOWN"
    assert world.send("GET", f"/v2/b/blobs/{digest}").body == BLOB
    assert world.send("DELETE", f"/v2/a/blobs/{digest}").code == 404


def test_deletes_off_is_405_and_changes_nothing() -> None:
    world = World(settings=RegistrySettings(delete_enabled=False))
    digest = pushed_digest(world, "a", "v1")

    for path in ("/v2/a/manifests/v1", f"/v2/a/manifests/{digest}"):
        answer = world.send("DELETE", path)
        assert (answer.code, answer.error) == (405, "UNSUPPORTED")

    assert world.send("GET", "/v2/a/manifests/v1").code == 200


# Catalog.


def test_catalog_lists_repositories_in_order_and_pages(world: World) -> None:
    for repo in ("zeta", "alpha/one", "alpha"):
        pushed_digest(world, repo, "v1")

    whole = world.send("GET", "/v2/_catalog")
    first = world.send("GET", "/v2/_catalog?n=2")
    rest = world.send("GET", "/v2/_catalog?n=2&last=alpha%2Fone")

    assert whole.json() == {"repositories": ["alpha", "alpha/one", "zeta"]}
    assert whole.header("Link") is None
    assert first.json() == {"repositories": ["alpha", "alpha/one"]}
    assert first.header("Link") == '</v2/_catalog?n=2&last=alpha%2Fone>; rel="next"'
    assert rest.json() == {"repositories": ["zeta"]}


def test_catalog_ignores_blob_only_repositories(world: World) -> None:
    """A repository appears once it has a manifest, not when it has only blobs."""
    world.push_blob("blobs-only", BLOB)
    assert world.send("GET", "/v2/_catalog").json() == {"repositories": []}


@pytest.mark.parametrize("n", ["x", "-3"])
def test_catalog_bad_n(world: World, n: str) -> None:
    answer = world.send("GET", f"/v2/_catalog?n={n}")
    assert (answer.code, answer.error) == (400, "PAGINATION_NUMBER_INVALID")


def test_n_zero_is_an_empty_page(world: World) -> None:
    pushed_digest(world, "a", "v1")
    assert world.send("GET", "/v2/a/tags/list?n=0").json()["tags"] == []


# Referrers.


def test_referrers_list_manifests_with_that_subject(world: World) -> None:
    """The index lists each referrer's type, digest, size, artifactType and
    annotations; a manifest with another subject is not in it."""
    subject = pushed_digest(world, "a", "v1")
    other = pushed_digest(world, "a", "v2", annotations={"x": "y"})
    digest, body = push_referrer(world, "a", subject)
    push_referrer(world, "a", other)

    answer = world.send("GET", f"/v2/a/referrers/{subject}")

    assert answer.code == 200
    assert answer.header("Content-Type") == OCI_INDEX
    assert answer.json() == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(body),
                "artifactType": ARTIFACT_TYPE,
                "annotations": {"org.example.kind": "sbom"},
            }
        ],
    }


def test_referrers_filter_by_artifact_type(world: World) -> None:
    subject = pushed_digest(world, "a", "v1")
    push_referrer(world, "a", subject, ARTIFACT_TYPE)
    signature, _ = push_referrer(world, "a", subject, "application/vnd.example.sig")

    answer = world.send(
        "GET", f"/v2/a/referrers/{subject}?artifactType=application/vnd.example.sig"
    )

    assert answer.header("OCI-Filters-Applied") == "artifactType"
    assert [entry["digest"] for entry in answer.json()["manifests"]] == [signature]


def test_referrers_of_an_image_manifest_use_its_config_type(world: World) -> None:
    """An image with a subject and no artifactType is listed by its config type."""
    subject = pushed_digest(world, "a", "v1")
    config = world.push_blob("a", b"{}")
    layer = world.push_blob("a", BLOB)
    document = image_manifest(
        config,
        layer,
        subject={"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
    )
    assert world.put_manifest("a", "signed", document, OCI_MANIFEST).code == 201

    entries = world.send("GET", f"/v2/a/referrers/{subject}").json()["manifests"]

    assert [entry["artifactType"] for entry in entries] == [
        "application/vnd.oci.image.config.v1+json"
    ]


def test_no_referrers_is_an_empty_index(world: World) -> None:
    answer = world.send("GET", "/v2/a/referrers/sha256:" + "1" * 64)
    assert answer.code == 200
    assert answer.json()["manifests"] == []


def test_a_missing_subject_is_accepted_and_listed(world: World) -> None:
    """A referrer may be pushed before its subject."""
    absent = "sha256:" + "2" * 64
    digest, _ = push_referrer(world, "a", absent)
    manifests = world.send("GET", f"/v2/a/referrers/{absent}").json()["manifests"]
    assert [entry["digest"] for entry in manifests] == [digest]


def test_deleted_referrer_is_not_listed(world: World) -> None:
    subject = pushed_digest(world, "a", "v1")
    digest, _ = push_referrer(world, "a", subject)

    assert world.send("DELETE", f"/v2/a/manifests/{digest}").code == 202

    assert world.send("GET", f"/v2/a/referrers/{subject}").json()["manifests"] == []


def test_referrers_of_a_bad_digest_is_400(world: World) -> None:
    answer = world.send("GET", "/v2/a/referrers/sha256:nope")
    assert (answer.code, answer.error) == (400, "DIGEST_INVALID")


# Accept negotiation.


@pytest.mark.parametrize(
    ("lines", "taken"),
    [
        ([], True),
        (["*/*"], True),
        (["application/*"], True),
        ([OCI_MANIFEST], False),
        ([f"{OCI_MANIFEST}, {OCI_INDEX}"], True),
        ([OCI_MANIFEST, OCI_INDEX], True),
        ([f"{OCI_INDEX};q=0"], False),
        ([f"{OCI_INDEX};q=0, */*"], False),
        ([f"*/*;q=0.1, {OCI_INDEX};q=0.9"], True),
        ([f"{OCI_INDEX.upper()}"], True),
        (["text/plain, garbage"], False),
        (["garbage"], True),
    ],
)
def test_accepts(lines: list[str], taken: bool) -> None:
    """The most specific matching range decides; q=0 rules a type out; an Accept
    with nothing readable in it takes anything."""
    assert accepts(lines, OCI_INDEX) is taken


def test_index_refused_to_a_client_that_rules_indexes_out(world: World) -> None:
    child = pushed_digest(world, "a", "v1")
    size = int(
        world.send("HEAD", f"/v2/a/manifests/{child}").header("Content-Length") or 0
    )
    body = index_manifest(OCI_INDEX, (OCI_MANIFEST, child, size))
    assert world.put_manifest("a", "multi", body, OCI_INDEX).code == 201

    refused = world.send(
        "GET", "/v2/a/manifests/multi", headers={"Accept": OCI_MANIFEST}
    )
    taken = world.send(
        "GET", "/v2/a/manifests/multi", headers={"Accept": f"{OCI_MANIFEST}, */*;q=0.5"}
    )

    assert (refused.code, refused.error) == (404, "MANIFEST_UNKNOWN")
    assert taken.body == body


def test_image_served_whatever_the_accept(world: World) -> None:
    """The registry cannot convert an image manifest, so it serves it as pushed."""
    pushed_digest(world, "a", "v1")
    answer = world.send(
        "GET", "/v2/a/manifests/v1", headers={"Accept": "application/x-other"}
    )
    assert answer.code == 200


# sha512.


def test_sha512_session_upload(world: World) -> None:
    """A session opened with digest-algorithm=sha512 closes with a sha512 digest;
    a sha256 digest for it is refused, saying how to upload with that."""
    digest = "sha512:" + hashlib.sha512(BLOB).hexdigest()
    opened = world.send("POST", "/v2/a/blobs/uploads/?digest-algorithm=sha512")
    location = opened.header("Location")
    assert opened.code == 202 and location is not None
    assert world.send("PATCH", location, BLOB).code == 202

    wrong = world.send("PUT", f"{location}?digest=sha256:{'0' * 64}")
    closed = world.send("PUT", f"{location}?digest={digest}")

    assert (wrong.code, wrong.error) == (400, "DIGEST_INVALID")
    assert closed.code == 201
    assert world.send("GET", f"/v2/a/blobs/{digest}").body == BLOB


def test_sha512_monolithic_upload(world: World) -> None:
    digest = "sha512:" + hashlib.sha512(BLOB).hexdigest()
    answer = world.send("POST", f"/v2/a/blobs/uploads/?digest={digest}", BLOB)
    assert answer.code == 201
    assert answer.header("Docker-Content-Digest") == digest


def test_unknown_digest_algorithm_is_refused(world: World) -> None:
    answer = world.send("POST", "/v2/a/blobs/uploads/?digest-algorithm=md5")
    assert (answer.code, answer.error) == (400, "DIGEST_INVALID")
    assert len(world.registry.sessions) == 0


def test_manifest_pushed_by_sha512_digest(world: World) -> None:
    config = world.push_blob("a", b"{}")
    layer = world.push_blob("a", BLOB)
    body = encode(image_manifest(config, layer))
    digest = "sha512:" + hashlib.sha512(body).hexdigest()

    assert world.put_manifest("a", digest, body, OCI_MANIFEST).code == 201
    assert world.send("GET", f"/v2/a/manifests/{digest}").body == body


def test_post_advertises_the_chunk_min_length() -> None:
    world = World(settings=RegistrySettings(chunk_min_length=12345))
    answer = world.send("POST", "/v2/a/blobs/uploads/")
    assert answer.header("OCI-Chunk-Min-Length") == "12345"


# The [registry] table.


def test_registry_table_sets_limits(tmp_path: Path) -> None:
    settings = parse_registry_settings(
        {"delete_enabled": False, "max_tags_page": 50, "upload_idle_timeout": 60},
        tmp_path / "t.toml",
    )
    assert not settings.delete_enabled
    assert settings.max_tags_page == 50
    assert settings.upload_idle_timeout == 60.0


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"delete_enabeld": True}, "did you mean 'delete_enabled'"),
        ({"delete_enabled": "yes"}, "true or false"),
        ({"max_tags_page": 0}, "not in 1..100000"),
        ({"max_tags_page": 2.5}, "whole number"),
        ({"max_manifest_size": 1024}, "not in"),
        ({"upload_idle_timeout": "1h"}, "must be a number"),
    ],
)
def test_registry_table_refuses_bad_values(
    tmp_path: Path, table: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_registry_settings(table, tmp_path / "t.toml")
    assert message in str(raised.value)
    assert "registry." in str(raised.value)
