"""skopeo's tools against logins: copy both ways, inspect, list-tags and delete.

alice, a developer, pushes a real image with ``--dest-creds`` and every other tool
runs with ``--creds``; then each runs with no credentials at all. Without anonymous
pull every anonymous command is refused; with it an anonymous pull, inspect and
list-tags work, while an anonymous push or delete is still refused and stores or
removes nothing. The checks prove themselves against CNCF distribution with an
htpasswd file first (it has no anonymous pull, and no per-repository rules), then
run against treescale in Basic and token modes, each with anonymous pull off and
on. treescale's rules come last: a developer may not push outside its own
repositories, a reader may pull but neither push nor delete.

Each class pushes once and shares the pushed image between its tests.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import pytest

from .cluster import (
    ADMIN,
    ALICE,
    BASIC,
    BOB,
    TEAM_PREFIX,
    TOKEN,
    Cluster,
    ReferenceRegistry,
    Server,
    leaked_passwords,
    running_cluster_with_logins,
    running_reference_with_logins,
)
from .engines import (
    ACCESS_DENIED,
    LOGIN_REFUSED,
    found_in_repository,
    parse_challenge,
    put_manifest,
    request_manifest,
    send,
)
from .images import OciImage, Skopeo, SkopeoError, mismatched_blobs

pytestmark = pytest.mark.integration

REPOSITORY = f"{TEAM_PREFIX}skopeo/tools"
TAGS = ("1.0", "1.1")
# A repository of its own for the delete, so the other tests keep their image.
DELETE_REPOSITORY = f"{TEAM_PREFIX}skopeo/delete"
DELETED_TAG = "gone"
KEPT_TAG = "kept"
# Where refused pushes try to go: nothing may be stored there.
ANONYMOUS_REPOSITORY = f"{TEAM_PREFIX}skopeo/anonymous"
READER_REPOSITORY = f"{TEAM_PREFIX}skopeo/reader"
OUTSIDE_REPOSITORY = "other/skopeo/tools"
# Pushed by the administrator, outside what alice was granted.
ADMIN_REPOSITORY = "other/skopeo/admin"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

# The ``WWW-Authenticate`` scheme of each login mode.
CHALLENGE_SCHEMES = {BASIC: "basic", TOKEN: "bearer"}


@dataclass(frozen=True)
class Pushed:
    """The image alice pushed to a server under every tag, and pulled back."""

    server: Server
    image: OciImage
    pulled: OciImage

    def reference(self, tag: str = TAGS[0], repository: str = REPOSITORY) -> str:
        """``host:port/name:tag`` of a tag on this server."""
        return f"{self.server.address}/{repository}:{tag}"

    def repository(self, repository: str = REPOSITORY) -> str:
        """``host:port/name`` of a repository on this server."""
        return f"{self.server.address}/{repository}"


def layer_digests(image: OciImage) -> list[str]:
    """The digests of an image's layers, in order."""
    return [layer.digest for layer in image.layers]


def stored_nothing(pushed: Pushed, repository: str) -> list[str]:
    """What the administrator finds of the image in `repository`: should be nothing."""
    return found_in_repository(
        pushed.server.address, repository, TAGS[0], pushed.image.content_digests, ADMIN
    )


def manifest_status(pushed: Pushed, repository: str, reference: str) -> int:
    """The status the administrator gets for a manifest by tag or digest."""
    answer = request_manifest(
        pushed.server.address, repository, reference, account=ADMIN
    )
    return answer.status


def refusal(attempt: "pytest.ExceptionInfo[SkopeoError]") -> str:
    """What skopeo itself said on its standard error when a command failed."""
    return attempt.value.stderr


def variant_of(manifest: bytes, note: str) -> bytes:
    """The same image under another manifest digest: one more annotation."""
    body = json.loads(manifest)
    body.setdefault("annotations", {})["org.treescale.test.note"] = note
    return json.dumps(body).encode()


class SignedInChecks:
    """What a registry must do for skopeo commands that carry alice's credentials."""

    @pytest.fixture(scope="class")
    @classmethod
    def pushed(
        cls,
        server: Server,
        small_image: OciImage,
        skopeo: Skopeo,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Pushed:
        """alice pushes the image under every tag, then pulls the first one back."""
        alice = skopeo.signed_in(ALICE)
        for tag in TAGS:
            alice.push(small_image, f"{server.address}/{REPOSITORY}:{tag}")
        workdir = tmp_path_factory.mktemp("skopeo-tools")
        pulled = alice.pull(
            f"{server.address}/{REPOSITORY}:{TAGS[0]}", workdir / "pulled", "pulled"
        )
        return Pushed(server, small_image, pulled)

    def test_copy_brings_back_every_digest(self, pushed: Pushed) -> None:
        """Copied there and back with credentials, the image keeps every digest."""
        assert pushed.pulled.manifest.digest == pushed.image.manifest.digest
        assert pushed.pulled.config.digest == pushed.image.config.digest
        assert layer_digests(pushed.pulled) == layer_digests(pushed.image)
        assert mismatched_blobs(pushed.pulled) == []

    def test_inspect_describes_the_pushed_image(
        self, pushed: Pushed, skopeo: Skopeo
    ) -> None:
        """skopeo inspect with credentials names the pushed manifest and layers."""
        inspected = skopeo.signed_in(ALICE).inspect(pushed.reference())

        assert inspected["Digest"] == pushed.image.manifest.digest
        assert inspected["Layers"] == layer_digests(pushed.image)

    def test_list_tags_names_every_pushed_tag(
        self, pushed: Pushed, skopeo: Skopeo
    ) -> None:
        """skopeo list-tags with credentials lists exactly the tags pushed."""
        tags = skopeo.signed_in(ALICE).list_tags(pushed.repository())

        assert sorted(tags) == sorted(TAGS)

    def test_delete_takes_the_tag_and_the_manifest(
        self, pushed: Pushed, skopeo: Skopeo
    ) -> None:
        """After skopeo delete the tag is not listed and its manifest is a 404.

        A second manifest of the same blobs stays, so the listing still exists.
        """
        alice = skopeo.signed_in(ALICE)
        address = pushed.server.address
        alice.push(pushed.image, pushed.reference(DELETED_TAG, DELETE_REPOSITORY))
        kept = put_manifest(
            address,
            DELETE_REPOSITORY,
            KEPT_TAG,
            variant_of(pushed.image.manifest_bytes, "kept"),
            OCI_MANIFEST,
            ALICE,
        )
        assert kept.status == HTTPStatus.CREATED
        assert sorted(alice.list_tags(pushed.repository(DELETE_REPOSITORY))) == [
            DELETED_TAG,
            KEPT_TAG,
        ]

        alice.delete(pushed.reference(DELETED_TAG, DELETE_REPOSITORY))

        assert alice.list_tags(pushed.repository(DELETE_REPOSITORY)) == [KEPT_TAG]
        digest = pushed.image.manifest.digest
        assert manifest_status(pushed, DELETE_REPOSITORY, digest) == 404
        assert manifest_status(pushed, DELETE_REPOSITORY, DELETED_TAG) == 404
        assert manifest_status(pushed, DELETE_REPOSITORY, KEPT_TAG) == 200

    def test_no_password_reaches_a_log(self, pushed: Pushed) -> None:
        """After pushes and pulls with credentials, no password is in a log."""
        logged = pushed.server.logs()

        assert logged, "the server wrote no log at all"
        assert leaked_passwords(logged) == []


class AnonymousWritesRefused:
    """skopeo without credentials may never write, whatever anonymous pull says.

    `REFUSAL` is how the refusal reads: a login asked for when anonymous requests
    get nothing, a denial when they may read.
    """

    REFUSAL = LOGIN_REFUSED

    def test_anonymous_copy_to_is_refused_and_stores_nothing(
        self, pushed: Pushed, skopeo: Skopeo
    ) -> None:
        """skopeo copy to the registry with no credentials is refused; nothing stays."""
        with pytest.raises(SkopeoError) as attempt:
            skopeo.signed_in(None).push(
                pushed.image, pushed.reference(repository=ANONYMOUS_REPOSITORY)
            )

        assert self.REFUSAL.search(refusal(attempt))
        assert stored_nothing(pushed, ANONYMOUS_REPOSITORY) == []

    def test_anonymous_delete_is_refused_and_keeps_the_image(
        self, pushed: Pushed, skopeo: Skopeo
    ) -> None:
        """skopeo delete with no credentials is refused; the manifest is still there."""
        with pytest.raises(SkopeoError) as attempt:
            skopeo.signed_in(None).delete(pushed.reference(TAGS[1]))

        assert self.REFUSAL.search(refusal(attempt))
        assert manifest_status(pushed, REPOSITORY, pushed.image.manifest.digest) == 200


class AnonymousRefusedChecks(AnonymousWritesRefused):
    """With no anonymous pull, skopeo without credentials may do nothing at all."""

    def test_anonymous_copy_from_is_refused(
        self, pushed: Pushed, skopeo: Skopeo, tmp_path: Path
    ) -> None:
        """skopeo copy from the registry with no credentials is refused."""
        with pytest.raises(SkopeoError) as attempt:
            skopeo.signed_in(None).pull(pushed.reference(), tmp_path / "pulled", "x")

        assert LOGIN_REFUSED.search(refusal(attempt))

    def test_anonymous_inspect_is_refused(self, pushed: Pushed, skopeo: Skopeo) -> None:
        """skopeo inspect with no credentials is refused."""
        with pytest.raises(SkopeoError) as attempt:
            skopeo.signed_in(None).inspect(pushed.reference())

        assert LOGIN_REFUSED.search(refusal(attempt))

    def test_anonymous_list_tags_is_refused(
        self, pushed: Pushed, skopeo: Skopeo
    ) -> None:
        """skopeo list-tags with no credentials is refused."""
        with pytest.raises(SkopeoError) as attempt:
            skopeo.signed_in(None).list_tags(pushed.repository())

        assert LOGIN_REFUSED.search(refusal(attempt))


class AnonymousPullChecks(AnonymousWritesRefused):
    """With anonymous pull, skopeo without credentials may read, and only read."""

    MODE = BASIC
    REFUSAL = ACCESS_DENIED

    def test_v2_still_asks_for_a_login(self, server: Server) -> None:
        """``GET /v2/`` with no credentials is still a 401 with the challenge.

        Clients learn from it whether and how to sign in: skopeo that gets a 200
        there never sends the credentials it was given.
        """
        answer = send(server.address, "GET", "/v2/", authenticate=False)
        challenge = answer.header("WWW-Authenticate")

        assert answer.status == HTTPStatus.UNAUTHORIZED
        assert challenge is not None
        assert parse_challenge(challenge).scheme == CHALLENGE_SCHEMES[self.MODE]

    def test_anonymous_copy_from_brings_back_every_digest(
        self, pushed: Pushed, skopeo: Skopeo, tmp_path: Path
    ) -> None:
        """skopeo copy from the registry with no credentials brings the image back."""
        pulled = skopeo.signed_in(None).pull(
            pushed.reference(), tmp_path / "pulled", "pulled"
        )

        assert pulled.manifest.digest == pushed.image.manifest.digest
        assert layer_digests(pulled) == layer_digests(pushed.image)
        assert mismatched_blobs(pulled) == []

    def test_anonymous_inspect_and_list_tags_work(
        self, pushed: Pushed, skopeo: Skopeo
    ) -> None:
        """skopeo inspect and list-tags with no credentials see what alice pushed."""
        anonymous = skopeo.signed_in(None)

        assert anonymous.inspect(pushed.reference())["Digest"] == (
            pushed.image.manifest.digest
        )
        assert sorted(anonymous.list_tags(pushed.repository())) == sorted(TAGS)


class RuleChecks:
    """treescale's per-repository rules, as skopeo meets them."""

    ANONYMOUS_PULL = False

    def test_developer_may_not_push_outside_its_repositories(
        self, pushed: Pushed, skopeo: Skopeo
    ) -> None:
        """alice may push below team/ but not to other/: denied, nothing stored."""
        with pytest.raises(SkopeoError) as attempt:
            skopeo.signed_in(ALICE).push(
                pushed.image, pushed.reference(repository=OUTSIDE_REPOSITORY)
            )

        assert ACCESS_DENIED.search(refusal(attempt))
        assert stored_nothing(pushed, OUTSIDE_REPOSITORY) == []

    def test_reader_may_pull(self, pushed: Pushed, skopeo: Skopeo) -> None:
        """bob, a reader, inspects and lists what alice pushed."""
        bob = skopeo.signed_in(BOB)

        assert bob.inspect(pushed.reference())["Digest"] == pushed.image.manifest.digest
        assert sorted(bob.list_tags(pushed.repository())) == sorted(TAGS)

    def test_reader_may_not_push(self, pushed: Pushed, skopeo: Skopeo) -> None:
        """bob's push, even below team/, is denied and stores nothing."""
        with pytest.raises(SkopeoError) as attempt:
            skopeo.signed_in(BOB).push(
                pushed.image, pushed.reference(repository=READER_REPOSITORY)
            )

        assert ACCESS_DENIED.search(refusal(attempt))
        assert stored_nothing(pushed, READER_REPOSITORY) == []

    def test_reader_may_not_delete(self, pushed: Pushed, skopeo: Skopeo) -> None:
        """bob's delete is denied; the manifest and its tags are still there."""
        with pytest.raises(SkopeoError) as attempt:
            skopeo.signed_in(BOB).delete(pushed.reference(TAGS[1]))

        assert ACCESS_DENIED.search(refusal(attempt))
        assert manifest_status(pushed, REPOSITORY, pushed.image.manifest.digest) == 200
        assert manifest_status(pushed, REPOSITORY, TAGS[1]) == 200

    def test_developer_reads_outside_its_repositories_only_as_anyone_may(
        self, pushed: Pushed, skopeo: Skopeo
    ) -> None:
        """alice may read the administrator's other/ image only with anonymous pull."""
        skopeo.signed_in(ADMIN).push(
            pushed.image, pushed.reference(repository=ADMIN_REPOSITORY)
        )
        reference = pushed.reference(repository=ADMIN_REPOSITORY)

        if self.ANONYMOUS_PULL:
            inspected = skopeo.signed_in(ALICE).inspect(reference)
            assert inspected["Digest"] == pushed.image.manifest.digest
        else:
            with pytest.raises(SkopeoError) as attempt:
                skopeo.signed_in(ALICE).inspect(reference)
            assert ACCESS_DENIED.search(refusal(attempt))


class TestReferenceRegistry(SignedInChecks, AnonymousRefusedChecks):
    """The checks against CNCF distribution: a failure here is the test's own bug."""

    @pytest.fixture(scope="class")
    @classmethod
    def server(
        cls, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[ReferenceRegistry]:
        """The reference registry with an htpasswd file, shared by this class."""
        directory = tmp_path_factory.mktemp("reference-skopeo")
        with running_reference_with_logins(directory) as ref:
            yield ref


class OnTreescaleWithLogins:
    """Tests of this class run against a treescale tree asking for logins."""

    MODE = BASIC
    ANONYMOUS_PULL = False

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
        """A tree in this class's login mode, with its anonymous pull setting."""
        directory = tmp_path_factory.mktemp(f"treescale-{cls.MODE}-skopeo")
        with running_cluster_with_logins(
            directory, cls.MODE, anonymous_pull=cls.ANONYMOUS_PULL
        ) as cluster:
            yield cluster


class TestTreescaleBasic(
    OnTreescaleWithLogins, SignedInChecks, AnonymousRefusedChecks, RuleChecks
):
    """treescale asking for Basic credentials, with no anonymous pull."""


class TestTreescaleToken(
    OnTreescaleWithLogins, SignedInChecks, AnonymousRefusedChecks, RuleChecks
):
    """treescale in token mode, with no anonymous pull."""

    MODE = TOKEN


class TestTreescaleBasicAnonymousPull(
    OnTreescaleWithLogins, SignedInChecks, AnonymousPullChecks, RuleChecks
):
    """treescale asking for Basic credentials, with anonymous pull on."""

    ANONYMOUS_PULL = True


class TestTreescaleTokenAnonymousPull(
    OnTreescaleWithLogins, SignedInChecks, AnonymousPullChecks, RuleChecks
):
    """treescale in token mode with anonymous pull: anonymous clients get tokens."""

    MODE = TOKEN
    ANONYMOUS_PULL = True
