"""The spec's content discovery: tag lists, the catalog, and the referrers API.

Lists are sorted and paged with ``n`` and ``last``; a page with more after it says
where with an RFC 5988 ``Link: <...>; rel="next"`` header, and following the links
visits every entry once. The catalog is shared by every test of the session, so
its tests page from just before their own repositories' names with ``last``.
"""

import re
from typing import Any

import pytest

from .client import Client, Response
from .content import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Document,
    descriptor,
    digest_of,
    encode,
    image_manifest,
)
from .deviations import reference_deviates
from .workflows import PushedImage, Registry, assert_error

pytestmark = pytest.mark.integration

TAGS = ("v10", "v2", "alpha", "beta-1", "1.0", "latest")

UNSORTED = (
    "distribution 2.8.2 lists tags unsorted, as its storage returns them "
    "(['latest', 'beta-1', 'v2', 'alpha', 'v10', '1.0'])"
)
NO_PAGING = (
    "distribution 2.8.2 ignores n and last: it answers every tag, unsorted, with no "
    "Link"
)
MAX_PAGES = 50

_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def next_link(client: Client, response: Response) -> str | None:
    """The target a ``Link: <...>; rel="next"`` header points to, if any."""
    header = response.header("Link")
    if header is None:
        return None
    match = _NEXT.search(header)
    assert match, f"Link is not RFC 5988 rel=next:\n{response.describe()}"
    return client.target_of(match.group(1))


def push_tags(registry: Registry, repo: str, tags: tuple[str, ...] = TAGS) -> None:
    """Push one image and put every tag of `tags` on it."""
    image = registry.push_image(repo, tags[0])
    for tag in tags[1:]:
        registry.push_manifest(repo, tag, image.manifest, OCI_MANIFEST)


def listed_tags(client: Client, target: str) -> tuple[list[str], Response]:
    """The tags one tags-list answer holds, and the answer."""
    response = client.get(target)
    assert response.status == 200, response.describe()
    document = response.json()
    return list(document["tags"] or []), response


@reference_deviates(UNSORTED)
def test_tags_list_sorted(registry: Registry, client: Client, repo: str) -> None:
    """The tags list names the repository and holds every tag, in lexical order."""
    push_tags(registry, repo)

    response = client.get(registry.tags_path(repo))

    assert response.status == 200, response.describe()
    assert response.json() == {"name": repo, "tags": sorted(TAGS)}


@reference_deviates(NO_PAGING)
def test_tags_list_n(registry: Registry, client: Client, repo: str) -> None:
    """``n`` limits the list to its first n tags and a Link says there is more."""
    push_tags(registry, repo)

    tags, response = listed_tags(client, registry.tags_path(repo, "n=2"))

    assert tags == sorted(TAGS)[:2]
    assert next_link(client, response), response.describe()


@reference_deviates(NO_PAGING)
def test_tags_list_last(registry: Registry, client: Client, repo: str) -> None:
    """``last`` starts the list just after the tag it names."""
    push_tags(registry, repo)
    ordered = sorted(TAGS)

    tags, _ = listed_tags(client, registry.tags_path(repo, f"last={ordered[1]}"))

    assert tags == ordered[2:]


@reference_deviates(NO_PAGING)
def test_tags_list_n_and_last(registry: Registry, client: Client, repo: str) -> None:
    """``n`` and ``last`` together give the n tags after ``last``."""
    push_tags(registry, repo)
    ordered = sorted(TAGS)

    tags, _ = listed_tags(client, registry.tags_path(repo, f"n=2&last={ordered[1]}"))

    assert tags == ordered[2:4]


@reference_deviates(NO_PAGING)
def test_tags_list_links_visit_every_tag(
    registry: Registry, client: Client, repo: str
) -> None:
    """Following the Link headers from ``n=2`` visits every tag once, in order."""
    push_tags(registry, repo)

    seen: list[str] = []
    target: str | None = registry.tags_path(repo, "n=2")
    for _ in range(MAX_PAGES):
        if target is None:
            break
        tags, response = listed_tags(client, target)
        seen += tags
        target = next_link(client, response)

    assert seen == sorted(TAGS)


@reference_deviates(NO_PAGING)
def test_tags_list_last_page_has_no_link(
    registry: Registry, client: Client, repo: str
) -> None:
    """A page that reaches the end of the list, exactly or not, carries no Link."""
    push_tags(registry, repo)

    tags, response = listed_tags(client, registry.tags_path(repo, f"n={len(TAGS)}"))
    last_page, tail = listed_tags(
        client, registry.tags_path(repo, f"n=10&last={sorted(TAGS)[-2]}")
    )

    assert tags == sorted(TAGS)
    assert response.header("Link") is None, response.describe()
    assert last_page == sorted(TAGS)[-1:]
    assert tail.header("Link") is None, tail.describe()


@reference_deviates(NO_PAGING)
def test_tags_list_n_zero(registry: Registry, client: Client, repo: str) -> None:
    """``n=0`` answers an empty list and no Link."""
    push_tags(registry, repo)

    tags, response = listed_tags(client, registry.tags_path(repo, "n=0"))

    assert tags == []
    assert response.header("Link") is None, response.describe()


@reference_deviates("distribution 2.8.2 ignores n and answers 200 with every tag")
@pytest.mark.parametrize("value", ["abc", "-1", "1.5"])
def test_tags_list_bad_n(
    registry: Registry, client: Client, repo: str, value: str
) -> None:
    """An ``n`` that is not a count is refused with 400 and the error body."""
    push_tags(registry, repo)

    response = client.get(registry.tags_path(repo, f"n={value}"))

    assert_error(response, 400)


def test_tags_list_unknown_repository(client: Client, repo: str) -> None:
    """The tags of a repository no one pushed to: 404 NAME_UNKNOWN."""
    response = client.get(Registry.tags_path(repo))

    assert_error(response, 404, "NAME_UNKNOWN")


# The catalog.


def catalog_page(client: Client, query: str) -> tuple[list[str], Response]:
    """The repositories one catalog answer holds, and the answer."""
    response = client.get(f"/v2/_catalog?{query}")
    assert response.status == 200, response.describe()
    return list(response.json()["repositories"] or []), response


def push_repositories(registry: Registry, repo: str) -> list[str]:
    """Three repositories under `repo`, each with an image; their names, sorted."""
    names = [f"{repo}/{leaf}" for leaf in ("a", "b", "c")]
    for name in names:
        registry.push_image(name, "v1")
    return names


def test_catalog_n_and_last(registry: Registry, client: Client, repo: str) -> None:
    """``/v2/_catalog?n=2&last=`` lists the next two repositories, in order."""
    names = push_repositories(registry, repo)

    listed, response = catalog_page(client, f"n=2&last={repo}")

    assert listed == names[:2]
    assert next_link(client, response), response.describe()


def test_catalog_link_continues(registry: Registry, client: Client, repo: str) -> None:
    """The catalog's Link leads to the page that starts after the last one listed."""
    names = push_repositories(registry, repo)
    _, response = catalog_page(client, f"n=2&last={repo}")
    target = next_link(client, response)
    assert target, response.describe()

    listed, _ = catalog_page(client, target.partition("?")[2])

    assert listed[:1] == names[2:]


def test_catalog_lists_everything_sorted(
    registry: Registry, client: Client, repo: str
) -> None:
    """Paging the whole catalog by its Links lists every repository, sorted."""
    names = push_repositories(registry, repo)

    seen: list[str] = []
    query: str | None = "n=100"
    for _ in range(MAX_PAGES):
        if query is None:
            break
        listed, response = catalog_page(client, query)
        seen += listed
        target = next_link(client, response)
        query = target.partition("?")[2] if target else None

    assert query is None, "the catalog did not end within the pages allowed"
    assert seen == sorted(set(seen))
    assert set(names) <= set(seen)


# The referrers API.

NO_REFERRERS = (
    "distribution 2.8.2 has no referrers API: /referrers/ answers 404 text/plain "
    "'404 page not found'"
)
SIGNATURE = "application/vnd.treescale.conformance.signature"
SBOM = "application/vnd.treescale.conformance.sbom"


def artifact_referring(
    registry: Registry,
    repo: str,
    subject: Document,
    artifact_type: str | None,
    note: str,
) -> tuple[bytes, str]:
    """Push an artifact whose subject is `subject`, by digest; its bytes and digest."""
    registry.push_blob(repo, EMPTY_JSON)
    extra: dict[str, Any] = {"subject": subject, "annotations": {"note": note}}
    if artifact_type is not None:
        extra["artifactType"] = artifact_type
    document = image_manifest(descriptor(OCI_EMPTY, EMPTY_JSON), [], **extra)
    return registry.push_document(repo, digest_of(encode(document)), document)


def referrers(client: Client, target: str) -> tuple[list[Document], Response]:
    """The descriptors of one referrers answer, after checking it is an index."""
    response = client.get(target)
    assert response.status == 200, response.describe()
    assert response.header("Content-Type") == OCI_INDEX, response.describe()
    document = response.json()
    assert document["schemaVersion"] == 2, response.describe()
    assert document["mediaType"] == OCI_INDEX, response.describe()
    return list(document["manifests"]), response


def subject_image(registry: Registry, repo: str) -> PushedImage:
    """An image that artifacts will refer to."""
    return registry.push_image(repo, "subject")


@reference_deviates(NO_REFERRERS)
def test_referrers_list(registry: Registry, client: Client, repo: str) -> None:
    """The referrers of a manifest: an OCI index of every manifest naming it."""
    subject = subject_image(registry, repo)
    signature, signature_digest = artifact_referring(
        registry, repo, subject.descriptor, SIGNATURE, "signed"
    )
    sbom, sbom_digest = artifact_referring(
        registry, repo, subject.descriptor, SBOM, "listed"
    )

    found, _ = referrers(client, registry.referrers_path(repo, subject.digest))

    by_digest = {entry["digest"]: entry for entry in found}
    assert set(by_digest) == {signature_digest, sbom_digest}
    assert by_digest[signature_digest] == {
        "mediaType": OCI_MANIFEST,
        "digest": signature_digest,
        "size": len(signature),
        "artifactType": SIGNATURE,
        "annotations": {"note": "signed"},
    }
    assert by_digest[sbom_digest]["artifactType"] == SBOM
    assert by_digest[sbom_digest]["size"] == len(sbom)


@reference_deviates(NO_REFERRERS)
def test_referrers_artifact_type_from_config(
    registry: Registry, client: Client, repo: str
) -> None:
    """A referrer without artifactType is listed with its config's media type."""
    subject = subject_image(registry, repo)
    _, digest = artifact_referring(registry, repo, subject.descriptor, None, "bare")

    found, _ = referrers(client, registry.referrers_path(repo, subject.digest))

    assert [(entry["digest"], entry.get("artifactType")) for entry in found] == [
        (digest, OCI_EMPTY)
    ]


@reference_deviates(NO_REFERRERS)
def test_referrers_filter(registry: Registry, client: Client, repo: str) -> None:
    """``?artifactType=`` keeps only that type, and OCI-Filters-Applied says so."""
    subject = subject_image(registry, repo)
    _, signature_digest = artifact_referring(
        registry, repo, subject.descriptor, SIGNATURE, "signed"
    )
    artifact_referring(registry, repo, subject.descriptor, SBOM, "listed")

    found, response = referrers(
        client,
        registry.referrers_path(repo, subject.digest, f"artifactType={SIGNATURE}"),
    )

    assert [entry["digest"] for entry in found] == [signature_digest]
    assert response.header("OCI-Filters-Applied") == "artifactType"


@reference_deviates(NO_REFERRERS)
def test_referrers_none(registry: Registry, client: Client, repo: str) -> None:
    """A manifest nothing refers to has an empty referrers index: 200, not 404."""
    subject = subject_image(registry, repo)

    found, _ = referrers(client, registry.referrers_path(repo, subject.digest))

    assert found == []


@reference_deviates(NO_REFERRERS)
def test_referrers_of_absent_subject(
    registry: Registry, client: Client, repo: str
) -> None:
    """Referrers pushed before their subject are listed for it all the same."""
    registry.push_image(repo, "v1")
    subject = descriptor(OCI_MANIFEST, encode({"schemaVersion": 2, "nonce": repo}))
    _, digest = artifact_referring(registry, repo, subject, SIGNATURE, "early")

    found, _ = referrers(client, registry.referrers_path(repo, subject["digest"]))

    assert [entry["digest"] for entry in found] == [digest]


@reference_deviates(
    "distribution 2.8.2 sends no OCI-Subject header: it does not process subject"
)
def test_put_with_subject_says_oci_subject(registry: Registry, repo: str) -> None:
    """The PUT of a manifest with a subject answers ``OCI-Subject: <digest>``."""
    subject = subject_image(registry, repo)
    registry.push_blob(repo, EMPTY_JSON)
    document = image_manifest(
        descriptor(OCI_EMPTY, EMPTY_JSON),
        [],
        artifactType=SIGNATURE,
        subject=subject.descriptor,
    )
    body = encode(document)

    response = registry.put_manifest(repo, digest_of(body), body, OCI_MANIFEST)

    assert response.status == 201, response.describe()
    assert response.header("OCI-Subject") == subject.digest, response.describe()
