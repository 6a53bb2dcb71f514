"""Artifacts with oras-py, signed in with Basic credentials, and the referrers API.

oras pushes files as an artifact (its type is the config's media type, as oras
has it, and the manifest carries annotations), pulls them back byte for byte,
lists tags and deletes a tag; a second push uploads a file in several ``PATCH``
requests with ``Content-Range``. Each check proves itself against CNCF distribution
with an htpasswd file, then runs against treescale in Basic mode.

oras-py's ``push(subject=...)`` fails inside the client, and CNCF distribution 2.8
has no referrers API, so the referrers check sends its own requests and runs
against treescale alone: an image, two artifacts whose manifests name it as their
``subject``, then ``GET /v2/NAME/referrers/DIGEST``, whole and filtered.
"""

import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import MethodType

import oras.provider  # type: ignore[import-untyped]
import pytest

from .cluster import (
    ALICE,
    BASIC,
    TEAM_PREFIX,
    Account,
    Cluster,
    ReferenceRegistry,
    Server,
    access_requests,
    leaked_passwords,
    running_cluster_with_logins,
    running_reference_with_logins,
)
from .engines import HttpAnswer, put_manifest, request_manifest, send, upload_blob
from .images import sha256_digest

pytestmark = pytest.mark.integration

REPOSITORY = f"{TEAM_PREFIX}oras/artifact"
TAGS = ("v1", "v2")
DELETE_REPOSITORY = f"{TEAM_PREFIX}oras/delete"
CHUNKED_REPOSITORY = f"{TEAM_PREFIX}oras/chunked"
REFERRERS_REPOSITORY = f"{TEAM_PREFIX}oras/referrers"

ARTIFACT_TYPE = "application/vnd.treescale.test.bundle.v1+json"
FILE_TYPES = {
    "notes.txt": "text/plain",
    "data.bin": "application/vnd.treescale.test.data.v1",
}
ANNOTATIONS = {
    "org.opencontainers.image.description": "files pushed by the oras test",
    "org.treescale.test.run": secrets.token_hex(8),
}
TITLE = "org.opencontainers.image.title"

# Several PATCH requests, the last one short.
CHUNK_SIZE = 64 * 1024
CHUNKED_FILE_SIZE = 5 * CHUNK_SIZE + 123

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SIGNATURE_TYPE = "application/vnd.treescale.test.signature.v1"
SBOM_TYPE = "application/vnd.treescale.test.sbom.v1"
# What the spec asks of every descriptor a referrers index lists; a registry may
# add more.
DESCRIPTOR_FIELDS = ("mediaType", "digest", "size", "artifactType", "annotations")


def oras_client(server: Server, account: Account) -> oras.provider.Registry:
    """oras-py's client for `server` over plain HTTP, answering Basic challenges.

    Its requests are tried once: oras-py retries a failed one five times, sleeping
    up to 81 s between tries, so one fault would cost a test minutes.
    """
    client = oras.provider.Registry(
        hostname=server.address, insecure=True, auth_backend="basic"
    )
    client.auth.set_basic_auth(account.user, account.password)
    single_try = oras.provider.Registry.do_request.__wrapped__
    client.do_request = MethodType(single_try, client)
    return client


def write_files(folder: Path, contents: Mapping[str, bytes]) -> dict[str, Path]:
    """Write each named content into `folder`; the paths by name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in contents.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def read_pulled(paths: list[str]) -> dict[str, bytes]:
    """The files oras pulled, by name."""
    return {Path(path).name: Path(path).read_bytes() for path in paths}


@dataclass(frozen=True)
class Artifact:
    """Files oras pushed as one artifact under every tag, and what it answered."""

    server: Server
    contents: Mapping[str, bytes]
    manifest_digest: str

    def target(self, tag: str = TAGS[0], repository: str = REPOSITORY) -> str:
        """``host:port/name:tag`` of the artifact on its server."""
        return f"{self.server.address}/{repository}:{tag}"


def push_files(
    client: oras.provider.Registry,
    target: str,
    folder: Path,
    contents: Mapping[str, bytes],
    annotations: Mapping[str, str],
) -> str:
    """Push `contents` as files of an artifact of `ARTIFACT_TYPE`; its digest."""
    paths = write_files(folder / "files", contents)
    config = folder / "config.json"
    config.write_text(json.dumps({"purpose": "treescale oras test"}))

    response = client.push(
        target=target,
        files=[f"{paths[name]}:{FILE_TYPES[name]}" for name in contents],
        manifest_config=f"{config}:{ARTIFACT_TYPE}",
        manifest_annotations=dict(annotations),
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == HTTPStatus.CREATED, response.text
    return str(response.headers["Docker-Content-Digest"])


class OrasChecks:
    """What a registry asking for Basic credentials must do for oras-py."""

    @pytest.fixture(scope="class")
    @classmethod
    def artifact(
        cls, server: Server, tmp_path_factory: pytest.TempPathFactory
    ) -> Artifact:
        """alice pushes two files as one artifact under every tag."""
        contents = {
            "notes.txt": f"treescale oras notes {secrets.token_hex(16)}\n".encode(),
            "data.bin": os.urandom(200 * 1024 + 7),
        }
        folder = tmp_path_factory.mktemp("oras-artifact")
        client = oras_client(server, ALICE)
        digests = {
            push_files(
                client,
                f"{server.address}/{REPOSITORY}:{tag}",
                folder,
                contents,
                ANNOTATIONS,
            )
            for tag in TAGS
        }
        assert len(digests) == 1
        return Artifact(server, contents, digests.pop())

    def test_pull_brings_back_every_file_byte_for_byte(
        self, artifact: Artifact, tmp_path: Path
    ) -> None:
        """oras pull writes back every pushed file with the bytes pushed."""
        client = oras_client(artifact.server, ALICE)
        pulled = client.pull(target=artifact.target(), outdir=str(tmp_path))

        assert read_pulled(pulled) == dict(artifact.contents)

    def test_manifest_carries_type_annotations_and_titles(
        self, artifact: Artifact
    ) -> None:
        """The served manifest keeps the artifact type, annotations and file names."""
        answer = request_manifest(
            artifact.server.address, REPOSITORY, TAGS[0], account=ALICE
        )
        manifest = json.loads(answer.body)
        layers = {layer["annotations"][TITLE]: layer for layer in manifest["layers"]}

        assert answer.status == HTTPStatus.OK
        assert answer.content_type == OCI_MANIFEST
        assert answer.digest == artifact.manifest_digest
        assert sha256_digest(answer.body) == artifact.manifest_digest
        assert manifest["config"]["mediaType"] == ARTIFACT_TYPE
        assert manifest["annotations"] == ANNOTATIONS
        assert {name: layer["mediaType"] for name, layer in layers.items()} == (
            FILE_TYPES
        )
        assert {name: layer["digest"] for name, layer in layers.items()} == {
            name: sha256_digest(data) for name, data in artifact.contents.items()
        }

    def test_tags_lists_every_pushed_tag(self, artifact: Artifact) -> None:
        """oras lists exactly the tags it pushed."""
        client = oras_client(artifact.server, ALICE)

        assert sorted(client.get_tags(artifact.target())) == sorted(TAGS)

    def test_delete_tag_takes_its_manifest(
        self, artifact: Artifact, tmp_path: Path
    ) -> None:
        """After oras deletes a tag it is not listed and its manifest is a 404.

        A second artifact, annotated differently, keeps the listing alive.
        """
        client = oras_client(artifact.server, ALICE)
        doomed = push_files(
            client,
            artifact.target("doomed", DELETE_REPOSITORY),
            tmp_path / "doomed",
            artifact.contents,
            ANNOTATIONS,
        )
        push_files(
            client,
            artifact.target("kept", DELETE_REPOSITORY),
            tmp_path / "kept",
            artifact.contents,
            {**ANNOTATIONS, "org.treescale.test.note": "kept"},
        )

        assert client.delete_tag(artifact.target("doomed", DELETE_REPOSITORY), "doomed")

        address = artifact.server.address
        assert client.get_tags(artifact.target("kept", DELETE_REPOSITORY)) == ["kept"]
        for reference in (doomed, "doomed"):
            answer = request_manifest(
                address, DELETE_REPOSITORY, reference, account=ALICE
            )
            assert answer.status == HTTPStatus.NOT_FOUND

    def test_chunked_push_comes_back_byte_for_byte(
        self, server: Server, tmp_path: Path
    ) -> None:
        """A file pushed in several accepted PATCH requests pulls back unchanged."""
        contents = {"data.bin": os.urandom(CHUNKED_FILE_SIZE)}
        target = f"{server.address}/{CHUNKED_REPOSITORY}:chunked"
        client = oras_client(server, ALICE)
        response = client.push(
            target=target,
            files=[
                f"{path}:{FILE_TYPES['data.bin']}"
                for path in write_files(tmp_path / "files", contents).values()
            ],
            do_chunked=True,
            chunk_size=CHUNK_SIZE,
            disable_path_validation=True,
            quiet=True,
        )
        assert response.status_code == HTTPStatus.CREATED, response.text

        pulled = client.pull(target=target, outdir=str(tmp_path / "pulled"))
        uploads = f"/v2/{CHUNKED_REPOSITORY}/blobs/uploads/"
        accepted_patches = [
            request
            for request in access_requests(server.logs())
            if request.method == "PATCH"
            and request.path.startswith(uploads)
            and request.status == HTTPStatus.ACCEPTED
        ]

        assert read_pulled(pulled) == contents
        assert len(accepted_patches) == math.ceil(CHUNKED_FILE_SIZE / CHUNK_SIZE)

    def test_no_password_reaches_a_log(self, artifact: Artifact) -> None:
        """After oras pushed with Basic credentials, no password is in a log."""
        logged = artifact.server.logs()

        assert logged, "the server wrote no log at all"
        assert leaked_passwords(logged) == []


@dataclass(frozen=True)
class Referrers:
    """An image and the two artifacts pushed as its referrers, with the answers."""

    server: Server
    subject: dict[str, object]
    descriptors: dict[str, dict[str, object]]
    answers: dict[str, HttpAnswer]


def referrer_manifest(
    artifact_type: str, layer: dict[str, object], subject: dict[str, object]
) -> bytes:
    """An artifact manifest of one layer with an empty config, naming `subject`."""
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {
            "mediaType": OCI_EMPTY,
            "digest": sha256_digest(b"{}"),
            "size": 2,
        },
        "layers": [layer],
        "subject": subject,
        "annotations": {"org.treescale.test.kind": artifact_type.rsplit(".", 2)[1]},
    }
    return json.dumps(body).encode()


def pushed_blob(server: Server, data: bytes, media_type: str) -> dict[str, object]:
    """Upload `data` to the referrers repository; its descriptor."""
    digest = upload_blob(server.address, REFERRERS_REPOSITORY, data, ALICE)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


class ReferrersChecks:
    """The referrers API of OCI distribution 1.1, through plain requests."""

    @pytest.fixture(scope="class")
    @classmethod
    def referrers(cls, server: Server) -> Referrers:
        """An image by tag, then two artifacts by digest that name it as subject."""
        config = pushed_blob(
            server, b'{"architecture":"amd64","os":"linux"}', OCI_CONFIG
        )
        layer = pushed_blob(server, os.urandom(4096), OCI_LAYER)
        image = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config,
                "layers": [layer],
            }
        ).encode()
        image_answer = put_manifest(
            server.address, REFERRERS_REPOSITORY, "subject", image, OCI_MANIFEST, ALICE
        )
        assert image_answer.status == HTTPStatus.CREATED, image_answer.body
        subject = {
            "mediaType": OCI_MANIFEST,
            "digest": sha256_digest(image),
            "size": len(image),
        }

        upload_blob(server.address, REFERRERS_REPOSITORY, b"{}", ALICE)
        descriptors, answers = {}, {}
        for artifact_type in (SIGNATURE_TYPE, SBOM_TYPE):
            content = pushed_blob(
                server, f"{artifact_type} {secrets.token_hex(8)}".encode(), "text/plain"
            )
            manifest = referrer_manifest(artifact_type, content, subject)
            digest = sha256_digest(manifest)
            answers[artifact_type] = put_manifest(
                server.address,
                REFERRERS_REPOSITORY,
                digest,
                manifest,
                OCI_MANIFEST,
                ALICE,
            )
            descriptors[artifact_type] = {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(manifest),
                "artifactType": artifact_type,
                "annotations": json.loads(manifest)["annotations"],
            }
        return Referrers(server, subject, descriptors, answers)

    def referrers_of(
        self, referrers: Referrers, digest: str, query: str = ""
    ) -> HttpAnswer:
        """alice's ``GET`` of the referrers of `digest`."""
        path = f"/v2/{REFERRERS_REPOSITORY}/referrers/{digest}{query}"
        return send(referrers.server.address, "GET", path, account=ALICE)

    def test_manifest_with_a_subject_is_accepted(self, referrers: Referrers) -> None:
        """Each artifact's PUT is a 201 whose OCI-Subject names the image."""
        for answer in referrers.answers.values():
            assert answer.status == HTTPStatus.CREATED, answer.body
            assert answer.header("OCI-Subject") == referrers.subject["digest"]

    def test_referrers_lists_every_artifact(self, referrers: Referrers) -> None:
        """The referrers of the image are an index of both artifacts' descriptors."""
        answer = self.referrers_of(referrers, str(referrers.subject["digest"]))
        index = answer.json()

        assert answer.status == HTTPStatus.OK
        assert (answer.header("Content-Type") or "").startswith(OCI_INDEX)
        assert isinstance(index, dict)
        assert index["schemaVersion"] == 2
        assert index["mediaType"] == OCI_INDEX
        listed = {
            entry.get("artifactType"): {
                field: entry.get(field) for field in DESCRIPTOR_FIELDS
            }
            for entry in index["manifests"]
        }
        assert listed == referrers.descriptors

    def test_referrers_filtered_by_artifact_type(self, referrers: Referrers) -> None:
        """With ``?artifactType=`` only that type is listed, and the filter is named."""
        answer = self.referrers_of(
            referrers,
            str(referrers.subject["digest"]),
            f"?artifactType={SIGNATURE_TYPE}",
        )
        index = answer.json()

        assert answer.status == HTTPStatus.OK
        assert answer.header("OCI-Filters-Applied") == "artifactType"
        assert isinstance(index, dict)
        assert [entry.get("digest") for entry in index["manifests"]] == [
            referrers.descriptors[SIGNATURE_TYPE]["digest"]
        ]

    def test_referrers_of_an_unreferenced_digest_are_an_empty_index(
        self, referrers: Referrers
    ) -> None:
        """A digest nothing refers to has referrers too: an index listing none."""
        answer = self.referrers_of(referrers, sha256_digest(os.urandom(32)))
        index = answer.json()

        assert answer.status == HTTPStatus.OK
        assert isinstance(index, dict)
        assert index["manifests"] == []

    def test_referrers_need_a_login(self, referrers: Referrers) -> None:
        """With no credentials the referrers of the image are a 401."""
        path = f"/v2/{REFERRERS_REPOSITORY}/referrers/{referrers.subject['digest']}"
        answer = send(referrers.server.address, "GET", path, authenticate=False)

        assert answer.status == HTTPStatus.UNAUTHORIZED


class TestReferenceRegistry(OrasChecks):
    """The checks against CNCF distribution: a failure here is the test's own bug."""

    @pytest.fixture(scope="class")
    @classmethod
    def server(
        cls, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[ReferenceRegistry]:
        """The reference registry with an htpasswd file, shared by this class."""
        directory = tmp_path_factory.mktemp("reference-oras")
        with running_reference_with_logins(directory) as ref:
            yield ref


class TestTreescaleBasic(OrasChecks, ReferrersChecks):
    """The same checks against treescale in Basic mode, then the referrers API."""

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
        """A treescale tree asking for Basic credentials."""
        directory = tmp_path_factory.mktemp("treescale-basic-oras")
        with running_cluster_with_logins(directory, BASIC) as cluster:
            yield cluster
