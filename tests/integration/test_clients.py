"""A real image pushed and pulled back with podman and with docker (and its daemon).

skopeo's uploads carry a ``Content-Length``; podman's and docker's stream each layer
in one ``PATCH`` with ``Transfer-Encoding: chunked``, so these tests take the
registry's streaming upload path. docker also pushes Docker schema 2 manifests, and
pulls with a ``HEAD`` by tag, then a ``GET`` by digest. Every check runs against
CNCF distribution first, which proves the image and the assertions, then against a
treescale tree of separate ``twistd`` processes.

Each class pushes and pulls once per engine and shares the result between its
tests: an image of a few MiB, since docker's vfs store is slow.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from .cluster import (
    Cluster,
    Server,
)
from .engines import (
    DOCKER_MANIFEST,
    Docker,
    LocalImage,
    Podman,
    blob_digest,
    config_diff_ids,
    docker_round_trip,
    request_manifest,
    write_docker_archive,
)
from .images import OciImage, Skopeo, forget_uploads
from .servers import OnReferenceRegistry, OnTreescale

pytestmark = pytest.mark.integration

PODMAN_REPOSITORY = "treescale/tests/clients/podman"
DOCKER_REPOSITORY = "treescale/tests/clients/docker"
TAG = "1.0"

# The name the docker-archive gives the image, before docker tags it for a registry.
ARCHIVE_NAME = "treescale-tests/small:1.0"

# One request of twisted.web's access log: method, path, status, user agent.
ACCESS_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.1" (?P<status>\d{3}) \S+ '
    r'"[^"]*" "(?P<agent>[^"]*)"'
)


@dataclass(frozen=True)
class EngineRoundTrip:
    """An image as an engine held it, pushed to a server, removed, and pulled back."""

    server: Server
    repository: str
    loaded: LocalImage
    pushed_digest: str
    gone_before_pull: bool
    pulled_digest: str | None
    pulled: LocalImage

    @property
    def reference(self) -> str:
        """The pushed image by tag, as the engines name it: ``host:port/name:tag``."""
        return f"{self.server.address}/{self.repository}:{TAG}"

    @property
    def by_digest(self) -> str:
        """The pushed image by digest, as an image's repository digests name it."""
        return f"{self.server.address}/{self.repository}@{self.pushed_digest}"


@dataclass(frozen=True)
class AccessLine:
    """One request the registry node logged."""

    method: str
    path: str
    status: int
    agent: str


def podman_round_trip(
    server: Server, image: OciImage, podman: Podman, workdir: Path
) -> EngineRoundTrip:
    """Load `image` into podman, push it, remove it, and pull it back."""
    reference = f"{server.address}/{PODMAN_REPOSITORY}:{TAG}"
    loaded_id = podman.load_layout(image)
    loaded = podman.inspect(loaded_id)

    forget_uploads()
    pushed_digest = podman.push(loaded_id, reference, workdir / "pushed-digest")

    podman.remove(loaded_id)
    gone = not podman.has_image(loaded_id)

    podman.pull(reference)
    return EngineRoundTrip(
        server=server,
        repository=PODMAN_REPOSITORY,
        loaded=loaded,
        pushed_digest=pushed_digest,
        gone_before_pull=gone,
        pulled_digest=None,
        pulled=podman.inspect(reference),
    )


def docker_engine_round_trip(
    server: Server, image: OciImage, docker: Docker, skopeo: Skopeo, workdir: Path
) -> EngineRoundTrip:
    """Load `image` into dockerd from a docker-archive, push, remove, pull it back."""
    archive = workdir / "image.tar"
    write_docker_archive(skopeo, image, archive, ARCHIVE_NAME)
    trip = docker_round_trip(
        docker, archive, f"{server.address}/{DOCKER_REPOSITORY}:{TAG}"
    )
    return EngineRoundTrip(
        server=server,
        repository=DOCKER_REPOSITORY,
        loaded=trip.loaded,
        pushed_digest=trip.pushed_digest,
        gone_before_pull=trip.gone_before_pull,
        pulled_digest=trip.pulled_digest,
        pulled=trip.pulled,
    )


def sha256_digest(data: bytes) -> str:
    """The digest of some bytes, in the spec's form."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def access_lines(text: str) -> list[AccessLine]:
    """The requests of a twisted.web access log, in the order they were logged."""
    return [
        AccessLine(found["method"], found["path"], int(found["status"]), found["agent"])
        for found in ACCESS_LINE.finditer(text)
    ]


class EngineChecks:
    """What any registry must do for podman and docker: the tests both servers run."""

    @pytest.fixture(scope="class")
    @classmethod
    def podman_trip(
        cls,
        server: Server,
        small_image: OciImage,
        podman: Podman,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> EngineRoundTrip:
        """The image through podman and the class's server."""
        workdir = tmp_path_factory.mktemp("podman-trip")
        return podman_round_trip(server, small_image, podman, workdir)

    @pytest.fixture(scope="class")
    @classmethod
    def docker_trip(
        cls,
        server: Server,
        small_image: OciImage,
        docker: Docker,
        skopeo: Skopeo,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> EngineRoundTrip:
        """The image through docker and the class's server."""
        workdir = tmp_path_factory.mktemp("docker-trip")
        return docker_engine_round_trip(server, small_image, docker, skopeo, workdir)

    def test_podman_pull_brings_back_the_loaded_image(
        self, podman_trip: EngineRoundTrip, small_image: OciImage
    ) -> None:
        """podman pulls back the image it loaded: same image id and layer diff ids."""
        assert podman_trip.gone_before_pull
        assert podman_trip.loaded.image_id == small_image.config.digest
        assert podman_trip.pulled.image_id == podman_trip.loaded.image_id
        assert podman_trip.pulled.diff_ids == config_diff_ids(small_image)
        assert len(podman_trip.pulled.diff_ids) == len(small_image.layers)

    def test_podman_pull_names_the_pushed_manifest(
        self, podman_trip: EngineRoundTrip
    ) -> None:
        """The image podman pulled carries the digest of the manifest it pushed."""
        assert podman_trip.by_digest in podman_trip.pulled.repo_digests

    def test_podman_blobs_are_served_as_pushed(
        self, podman_trip: EngineRoundTrip, small_image: OciImage
    ) -> None:
        """Every blob podman streamed comes back with the digest and size it named."""
        address = podman_trip.server.address
        answer = request_manifest(
            address, podman_trip.repository, podman_trip.pushed_digest
        )
        manifest = json.loads(answer.body)
        blobs = [manifest["config"], *manifest["layers"]]

        assert answer.status == 200
        assert sha256_digest(answer.body) == podman_trip.pushed_digest
        assert manifest["config"]["digest"] == small_image.config.digest
        assert len(manifest["layers"]) == len(small_image.layers)
        assert [
            blob_digest(address, podman_trip.repository, blob["digest"])
            for blob in blobs
        ] == [(blob["digest"], blob["size"]) for blob in blobs]

    def test_docker_pull_brings_back_the_loaded_image(
        self, docker_trip: EngineRoundTrip, small_image: OciImage
    ) -> None:
        """docker pulls back the image it loaded: same config digest and diff ids."""
        assert docker_trip.gone_before_pull
        assert docker_trip.loaded.image_id == small_image.config.digest
        assert docker_trip.pulled.image_id == docker_trip.loaded.image_id
        assert docker_trip.pulled.diff_ids == config_diff_ids(small_image)

    def test_docker_pull_reports_the_pushed_digest(
        self, docker_trip: EngineRoundTrip
    ) -> None:
        """docker's pull sees the manifest digest its push reported, and records it."""
        assert docker_trip.pulled_digest == docker_trip.pushed_digest
        assert docker_trip.pulled.repo_digests == (docker_trip.by_digest,)

    def test_docker_manifest_is_docker_schema_2(
        self, docker_trip: EngineRoundTrip, small_image: OciImage
    ) -> None:
        """docker's manifest is kept byte for byte and served as Docker schema 2."""
        answer = request_manifest(
            docker_trip.server.address,
            docker_trip.repository,
            docker_trip.pushed_digest,
        )
        manifest = json.loads(answer.body)

        assert answer.status == 200
        assert answer.content_type == DOCKER_MANIFEST
        assert answer.digest == docker_trip.pushed_digest
        assert sha256_digest(answer.body) == docker_trip.pushed_digest
        assert manifest["schemaVersion"] == 2
        assert manifest["mediaType"] == DOCKER_MANIFEST
        assert manifest["config"]["digest"] == small_image.config.digest
        assert len(manifest["layers"]) == len(small_image.layers)

    def test_head_by_tag_describes_get_by_digest(
        self, docker_trip: EngineRoundTrip
    ) -> None:
        """A HEAD by tag gives the digest, type and length that the GET serves."""
        address, repository = docker_trip.server.address, docker_trip.repository
        head = request_manifest(address, repository, TAG, method="HEAD")
        by_digest = request_manifest(address, repository, docker_trip.pushed_digest)
        by_tag = request_manifest(address, repository, TAG)

        assert head.status == 200
        assert head.body == b""
        assert head.digest == docker_trip.pushed_digest
        assert head.content_type == DOCKER_MANIFEST
        assert head.length == len(by_digest.body)
        assert by_tag.body == by_digest.body
        assert by_tag.digest == docker_trip.pushed_digest


class TestReferenceRegistry(OnReferenceRegistry, EngineChecks):
    """The checks against CNCF distribution: a failure here is the test's own bug."""


class TestTreescale(OnTreescale, EngineChecks):
    """The same checks against a treescale tree, then what its registry node saw."""

    @pytest.mark.parametrize("engine", ["podman", "docker"])
    def test_each_blob_came_in_one_accepted_patch(
        self,
        engine: str,
        server: Cluster,
        podman_trip: EngineRoundTrip,
        docker_trip: EngineRoundTrip,
    ) -> None:
        """Each engine sent every blob of its image in a PATCH the node accepted."""
        trip = podman_trip if engine == "podman" else docker_trip
        manifest = json.loads(
            request_manifest(server.address, trip.repository, trip.pushed_digest).body
        )
        uploads = f"/v2/{trip.repository}/blobs/uploads/"
        patches = [
            line
            for line in access_lines(server.log_text("registry"))
            if line.method == "PATCH" and line.path.startswith(uploads)
        ]

        assert len(patches) == 1 + len(manifest["layers"])
        assert {line.status for line in patches} == {202}

    def test_docker_pull_asks_by_tag_then_by_digest(
        self, server: Cluster, docker_trip: EngineRoundTrip
    ) -> None:
        """docker's pull sent a HEAD by tag and then a GET by digest, both answered."""
        manifests = f"/v2/{docker_trip.repository}/manifests/"
        asked = [
            (line.method, line.path.removeprefix(manifests), line.status)
            for line in access_lines(server.log_text("registry"))
            if line.path.startswith(manifests) and line.agent.startswith("docker/")
        ]

        assert asked[-2:] == [
            ("HEAD", TAG, 200),
            ("GET", docker_trip.pushed_digest, 200),
        ]

    def test_no_node_logs_a_traceback(
        self,
        server: Cluster,
        podman_trip: EngineRoundTrip,
        docker_trip: EngineRoundTrip,
    ) -> None:
        """After both engines pushed and pulled, no node's log holds a traceback."""
        logged = {name: server.log_text(name) for name in server.topology.nodes}

        assert all(logged.values()), "a node wrote no log at all"
        assert [name for name, text in logged.items() if "Traceback" in text] == []
