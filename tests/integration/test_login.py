"""Logins with the engines people run: docker (with its daemon) and podman.

Each engine signs in with a password given on stdin, pushes a small runnable image
(a static busybox and a message), forgets it, pulls it back, and docker runs it; a
wrong password and a push with no login must fail and store nothing. The same
checks prove themselves against CNCF distribution with an htpasswd file first,
then run against treescale in Basic mode and in token mode (the Docker token flow,
treescale's own /token). Only treescale has per-repository rules, so the denials
by rule run there alone. Every server's logs are read afterwards: no password may
appear in them, and the failed login must be logged with its user and address.

Each class pushes and pulls once per engine and shares the result between its
tests; its docker daemon and podman store are its own.
"""

import os
import secrets
import subprocess
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
    CAROL,
    TEAM_PREFIX,
    TOKEN,
    WRONG_PASSWORD,
    Account,
    Cluster,
    ReferenceRegistry,
    Server,
    access_requests,
    event_lines,
    leaked_passwords,
    running_cluster_with_logins,
    running_reference_with_logins,
)
from .engines import (
    ACCESS_DENIED,
    LOGIN_REFUSED,
    Docker,
    DockerDaemon,
    EngineError,
    LocalImage,
    Podman,
    config_diff_ids,
    docker_round_trip,
    found_in_repository,
    location_url,
    parse_challenge,
    running_docker_daemon,
    send,
    with_digest,
    write_docker_archive,
)
from .images import (
    OciImage,
    Skopeo,
    build_runnable_image,
    forget_uploads,
    sha256_digest,
)

pytestmark = pytest.mark.integration

DOCKER_REPOSITORY = f"{TEAM_PREFIX}login/docker"
PODMAN_REPOSITORY = f"{TEAM_PREFIX}login/podman"
# Where pushes without a login, or by a reader, try to go: never stored.
ANONYMOUS_DOCKER_REPOSITORY = f"{TEAM_PREFIX}login/anonymous-docker"
ANONYMOUS_PODMAN_REPOSITORY = f"{TEAM_PREFIX}login/anonymous-podman"
READER_REPOSITORY = f"{TEAM_PREFIX}login/reader"
# Outside the developers' repositories: alice may not push here.
OUTSIDE_REPOSITORY = "other/login/docker"
# Where alice uploads a blob by plain requests.
UPLOAD_REPOSITORY = f"{TEAM_PREFIX}login/uploads"
TAG = "1.0"

RUNNABLE_TAG = "runnable"
ARCHIVE_NAME = "treescale-tests/runnable:1.0"

# What the image prints: of this run alone, so only this image can have printed it.
MESSAGE = f"treescale login check {secrets.token_hex(8)}"


@dataclass(frozen=True)
class DockerTrip:
    """The runnable image as docker loaded, pushed, forgot, pulled and ran it."""

    reference: str
    loaded: LocalImage
    pushed_digest: str
    gone_before_pull: bool
    pulled_digest: str
    pulled: LocalImage
    printed: str


@dataclass(frozen=True)
class PodmanTrip:
    """The runnable image as podman loaded, pushed, forgot and pulled it."""

    reference: str
    loaded: LocalImage
    pushed_digest: str
    gone_before_pull: bool
    pulled: LocalImage


@dataclass(frozen=True)
class FailedLogins:
    """What each engine said when signing in with a wrong password, and kept."""

    docker_error: str
    docker_saved: frozenset[str]
    podman_error: str
    podman_saved: str


def wrong(account: Account) -> Account:
    """The account with a password that is not its own."""
    return Account(account.user, WRONG_PASSWORD)


def error_of(attempt: "pytest.ExceptionInfo[EngineError]") -> str:
    """What a failed engine command itself said on its standard error."""
    return attempt.value.stderr


def push_as(
    docker: Docker, source: str, target: str
) -> "subprocess.CompletedProcess[str]":
    """Tag the pulled image as `target`, try to push it, and drop the tag again."""
    docker.tag(source, target)
    try:
        return docker.run("push", target)
    finally:
        docker.remove(target)


def statuses_in(server: Server, repository: str) -> set[int]:
    """Every status the server's access log shows for requests into `repository`."""
    prefix = f"/v2/{repository}/"
    return {
        request.status
        for request in access_requests(server.logs())
        if request.path.startswith(prefix)
    }


def stored_nothing(server: Server, repository: str, image: OciImage) -> list[str]:
    """What the administrator finds of `image` in `repository`: should be nothing."""
    return found_in_repository(
        server.address, repository, TAG, image.content_digests, ADMIN
    )


@pytest.fixture(scope="module")
def runnable_image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    """The two-layer busybox image that prints `MESSAGE`, built once."""
    return build_runnable_image(
        tmp_path_factory.mktemp("runnable-image"), RUNNABLE_TAG, MESSAGE
    )


@pytest.fixture(scope="module")
def docker_archive(
    runnable_image: OciImage, skopeo: Skopeo, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The runnable image as a docker-archive tar, for ``docker load``."""
    archive = tmp_path_factory.mktemp("runnable-archive") / "image.tar"
    write_docker_archive(skopeo, runnable_image, archive, ARCHIVE_NAME)
    return archive


class LoginChecks:
    """What any registry asking for logins must do for docker and podman."""

    CHALLENGE_SCHEME = "basic"

    @pytest.fixture(scope="class")
    @classmethod
    def docker_daemon(
        cls, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[DockerDaemon]:
        """A dockerd of this class's own: its clients act for different users."""
        with running_docker_daemon(tmp_path_factory.mktemp("dockerd")) as daemon:
            yield daemon

    @pytest.fixture(scope="class")
    @classmethod
    def docker_trip(
        cls, server: Server, docker_daemon: DockerDaemon, docker_archive: Path
    ) -> DockerTrip:
        """alice signs in with docker, pushes, removes, pulls and runs the image."""
        docker = docker_daemon.client("alice")
        docker.login(server.address, ALICE)

        reference = f"{server.address}/{DOCKER_REPOSITORY}:{TAG}"
        trip = docker_round_trip(docker, docker_archive, reference)
        return DockerTrip(
            reference=reference,
            loaded=trip.loaded,
            pushed_digest=trip.pushed_digest,
            gone_before_pull=trip.gone_before_pull,
            pulled_digest=trip.pulled_digest,
            pulled=trip.pulled,
            printed=docker.run_image(reference).strip(),
        )

    @pytest.fixture(scope="class")
    @classmethod
    def podman_trip(
        cls,
        server: Server,
        podman: Podman,
        runnable_image: OciImage,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> PodmanTrip:
        """alice signs in with podman, pushes, removes and pulls the image."""
        alice = podman.with_credentials("alice")
        alice.login(server.address, ALICE)

        loaded_id = alice.load_layout(runnable_image)
        loaded = alice.inspect(loaded_id)
        reference = f"{server.address}/{PODMAN_REPOSITORY}:{TAG}"
        forget_uploads()
        digest_file = tmp_path_factory.mktemp("podman-login") / "digest"
        pushed_digest = alice.push(loaded_id, reference, digest_file)

        alice.remove(loaded_id)
        gone = not alice.has_image(loaded_id)

        alice.pull(reference)
        return PodmanTrip(
            reference=reference,
            loaded=loaded,
            pushed_digest=pushed_digest,
            gone_before_pull=gone,
            pulled=alice.inspect(reference),
        )

    @pytest.fixture(scope="class")
    @classmethod
    def failed_logins(
        cls, server: Server, docker_daemon: DockerDaemon, podman: Podman
    ) -> FailedLogins:
        """carol signs in with a wrong password, with docker and with podman."""
        docker = docker_daemon.client("carol")
        with pytest.raises(EngineError) as docker_attempt:
            docker.login(server.address, wrong(CAROL))

        carol = podman.with_credentials("carol")
        with pytest.raises(EngineError) as podman_attempt:
            carol.login(server.address, wrong(CAROL))

        assert carol.auth_file is not None
        return FailedLogins(
            docker_error=error_of(docker_attempt),
            docker_saved=frozenset(docker.saved_logins()),
            podman_error=error_of(podman_attempt),
            podman_saved=carol.auth_file.read_text(),
        )

    def test_v2_asks_for_a_login(self, server: Server) -> None:
        """``GET /v2/`` with no credentials is a 401 with this server's challenge."""
        answer = send(server.address, "GET", "/v2/", authenticate=False)
        challenge = answer.header("WWW-Authenticate")

        assert answer.status == HTTPStatus.UNAUTHORIZED
        assert challenge is not None
        assert parse_challenge(challenge).scheme == self.CHALLENGE_SCHEME

    def test_docker_pulls_back_what_it_pushed(
        self, docker_trip: DockerTrip, runnable_image: OciImage
    ) -> None:
        """Signed in, docker pulls back the image it pushed: same id and layers."""
        assert docker_trip.gone_before_pull
        assert docker_trip.loaded.image_id == runnable_image.config.digest
        assert docker_trip.pulled.image_id == docker_trip.loaded.image_id
        assert docker_trip.pulled.diff_ids == config_diff_ids(runnable_image)
        assert docker_trip.pulled_digest == docker_trip.pushed_digest

    def test_docker_runs_the_pulled_image(self, docker_trip: DockerTrip) -> None:
        """The pulled image runs with no network and prints this run's message."""
        assert docker_trip.printed == MESSAGE

    def test_docker_login_with_a_wrong_password_fails(
        self, server: Server, failed_logins: FailedLogins
    ) -> None:
        """docker login with a wrong password fails, says so, and saves nothing."""
        assert LOGIN_REFUSED.search(failed_logins.docker_error)
        assert server.address in failed_logins.docker_error
        assert server.address not in failed_logins.docker_saved

    def test_docker_push_without_login_is_refused(
        self,
        server: Server,
        docker_daemon: DockerDaemon,
        docker_trip: DockerTrip,
        runnable_image: OciImage,
    ) -> None:
        """docker push with no login gets only 401s, and nothing of it is stored."""
        docker = docker_daemon.client("anonymous")
        target = f"{server.address}/{ANONYMOUS_DOCKER_REPOSITORY}:{TAG}"
        result = push_as(docker, docker_trip.reference, target)
        statuses = statuses_in(server, ANONYMOUS_DOCKER_REPOSITORY)

        assert result.returncode != 0
        assert LOGIN_REFUSED.search(result.stderr), result.stderr
        assert statuses <= {HTTPStatus.UNAUTHORIZED}
        assert stored_nothing(server, ANONYMOUS_DOCKER_REPOSITORY, runnable_image) == []

    def test_podman_pulls_back_what_it_pushed(
        self, podman_trip: PodmanTrip, runnable_image: OciImage
    ) -> None:
        """Signed in, podman pulls back the image it pushed, under the pushed digest."""
        assert podman_trip.gone_before_pull
        assert podman_trip.loaded.image_id == runnable_image.config.digest
        assert podman_trip.pulled.image_id == podman_trip.loaded.image_id
        assert podman_trip.pulled.diff_ids == config_diff_ids(runnable_image)
        by_digest = podman_trip.reference.rsplit(":", 1)[0]
        assert f"{by_digest}@{podman_trip.pushed_digest}" in (
            podman_trip.pulled.repo_digests
        )

    def test_podman_login_with_a_wrong_password_fails(
        self, server: Server, failed_logins: FailedLogins
    ) -> None:
        """podman login with a wrong password fails, says so, and saves nothing."""
        assert LOGIN_REFUSED.search(failed_logins.podman_error)
        assert server.address not in failed_logins.podman_saved

    def test_podman_push_without_login_is_refused(
        self,
        server: Server,
        podman: Podman,
        podman_trip: PodmanTrip,
        runnable_image: OciImage,
        tmp_path: Path,
    ) -> None:
        """podman push with no login gets only 401s, and nothing of it is stored."""
        anonymous = podman.with_credentials("anonymous")
        target = f"{server.address}/{ANONYMOUS_PODMAN_REPOSITORY}:{TAG}"
        with pytest.raises(EngineError) as attempt:
            anonymous.push(podman_trip.pulled.image_id, target, tmp_path / "digest")
        statuses = statuses_in(server, ANONYMOUS_PODMAN_REPOSITORY)

        assert LOGIN_REFUSED.search(error_of(attempt))
        assert statuses <= {HTTPStatus.UNAUTHORIZED}
        assert stored_nothing(server, ANONYMOUS_PODMAN_REPOSITORY, runnable_image) == []

    def test_a_refused_patch_adds_nothing_to_an_upload(self, server: Server) -> None:
        """Bytes sent with no credentials into alice's upload are not kept in it."""
        data = os.urandom(64 * 1024)
        digest = sha256_digest(data)
        octets = {"Content-Type": "application/octet-stream"}
        uploads = f"/v2/{UPLOAD_REPOSITORY}/blobs/uploads/"
        started = send(server.address, "POST", uploads, account=ALICE, body=b"")
        assert started.status == HTTPStatus.ACCEPTED
        location = location_url(server.address, started.header("Location") or "")

        intruder = send(
            server.address,
            "PATCH",
            location,
            headers=octets,
            body=b"not alice's bytes",
            authenticate=False,
        )
        patched = send(
            server.address,
            "PATCH",
            location,
            account=ALICE,
            headers=octets,
            body=data,
            authorization=started.authorization,
        )
        location = location_url(server.address, patched.header("Location") or "")
        finished = send(
            server.address,
            "PUT",
            with_digest(location, digest),
            account=ALICE,
            body=b"",
            authorization=started.authorization,
        )
        stored = send(
            server.address,
            "GET",
            f"/v2/{UPLOAD_REPOSITORY}/blobs/{digest}",
            account=ALICE,
        )

        assert intruder.status == HTTPStatus.UNAUTHORIZED
        assert patched.status == HTTPStatus.ACCEPTED, patched.body
        assert finished.status == HTTPStatus.CREATED, finished.body
        assert stored.body == data

    def test_no_password_reaches_a_log(
        self,
        server: Server,
        docker_trip: DockerTrip,
        podman_trip: PodmanTrip,
        failed_logins: FailedLogins,
    ) -> None:
        """After good and bad logins, no password, plain or encoded, is in a log."""
        logged = server.logs()

        assert logged, "the server wrote no log at all"
        assert leaked_passwords(logged) == []

    def test_a_failed_login_names_its_user_and_client(
        self, server: Server, failed_logins: FailedLogins
    ) -> None:
        """The wrong-password login is logged with the user name and client address."""
        lines = [
            line
            for line in event_lines(server.logs())
            if CAROL.user in line and "127.0.0.1" in line
        ]

        assert lines, "no log line names carol's failed login and its address"


class TestReferenceRegistry(LoginChecks):
    """The checks against CNCF distribution: a failure here is the test's own bug."""

    @pytest.fixture(scope="class")
    @classmethod
    def server(
        cls, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[ReferenceRegistry]:
        """The reference registry with an htpasswd file, shared by this class."""
        directory = tmp_path_factory.mktemp("reference-logins")
        with running_reference_with_logins(directory) as ref:
            yield ref


class TreescaleLoginChecks(LoginChecks):
    """The same checks against a treescale tree, then its per-repository rules."""

    MODE = BASIC

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
        """A treescale tree asking for logins in this class's mode."""
        directory = tmp_path_factory.mktemp(f"treescale-{cls.MODE}-logins")
        with running_cluster_with_logins(directory, cls.MODE) as cluster:
            yield cluster

    def test_docker_push_outside_granted_repositories_is_denied(
        self,
        server: Cluster,
        docker_daemon: DockerDaemon,
        docker_trip: DockerTrip,
        runnable_image: OciImage,
    ) -> None:
        """alice, signed in, may push below team/ but not to other/: docker says so."""
        docker = docker_daemon.client("alice")
        target = f"{server.address}/{OUTSIDE_REPOSITORY}:{TAG}"
        result = push_as(docker, docker_trip.reference, target)

        assert result.returncode != 0
        assert ACCESS_DENIED.search(result.stderr), result.stderr
        assert stored_nothing(server, OUTSIDE_REPOSITORY, runnable_image) == []

    def test_podman_push_by_a_reader_is_denied(
        self,
        server: Cluster,
        podman: Podman,
        podman_trip: PodmanTrip,
        runnable_image: OciImage,
        tmp_path: Path,
    ) -> None:
        """bob may only pull: he signs in, but his push below team/ is denied."""
        bob = podman.with_credentials("bob")
        bob.login(server.address, BOB)
        target = f"{server.address}/{READER_REPOSITORY}:{TAG}"
        with pytest.raises(EngineError) as attempt:
            bob.push(podman_trip.pulled.image_id, target, tmp_path / "digest")

        assert ACCESS_DENIED.search(error_of(attempt))
        assert stored_nothing(server, READER_REPOSITORY, runnable_image) == []

    def test_no_node_logs_a_traceback(
        self,
        server: Cluster,
        docker_trip: DockerTrip,
        podman_trip: PodmanTrip,
        failed_logins: FailedLogins,
    ) -> None:
        """After every login, good and bad, no node's log holds a traceback."""
        logged = {name: server.log_text(name) for name in server.topology.nodes}

        assert [name for name, text in logged.items() if "Traceback" in text] == []


class TestTreescaleBasic(TreescaleLoginChecks):
    """treescale asking for Basic credentials."""


class TestTreescaleToken(TreescaleLoginChecks):
    """treescale in token mode: clients trade the password for a token at /token."""

    MODE = TOKEN
    CHALLENGE_SCHEME = "bearer"

    def test_challenge_names_treescale_token_realm(self, server: Cluster) -> None:
        """The 401 on ``/v2/`` sends clients to this node's /token for treescale."""
        answer = send(server.address, "GET", "/v2/", authenticate=False)
        header = answer.header("WWW-Authenticate")

        assert header is not None
        challenge = parse_challenge(header)
        assert challenge.params.get("realm") == f"http://{server.address}/token"
        assert challenge.params.get("service") == "treescale"
