"""A real image pushed with skopeo and pulled back, from treescale and a reference.

Every check a registry must pass runs twice: against CNCF distribution, which proves
the image and the assertions themselves, then against a treescale tree of separate
``twistd`` processes. For treescale the relays' chunk folders are read afterwards to
see that the blobs really live there, spread and replicated as the design says.

Each class pushes and pulls once and shares the result between its tests, so the
40 MiB round trip is paid once per server.
"""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from .cluster import (
    REPLICAS,
    Cluster,
    Server,
)
from .images import OciImage, Skopeo, mismatched_blobs, read_image
from .servers import OnReferenceRegistry, OnTreescale

pytestmark = pytest.mark.integration

REPOSITORY = "treescale/tests/nested/repo"
TAG = "1.0"

CHUNK_NAME = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RoundTrip:
    """The image as pushed to a server, and as pulled back from it."""

    server: Server
    original: OciImage
    pulled: OciImage

    @property
    def repository(self) -> str:
        """The pushed repository, as skopeo names it: ``host:port/name``."""
        return f"{self.server.address}/{REPOSITORY}"

    @property
    def reference(self) -> str:
        """The pushed image, by tag."""
        return f"{self.repository}:{TAG}"


def push_and_pull(
    server: Server, image: OciImage, skopeo: Skopeo, workdir: Path
) -> RoundTrip:
    """Push `image` to `server`, then pull it into a new layout under `workdir`."""
    repository = f"{server.address}/{REPOSITORY}"
    skopeo.push(image, f"{repository}:{TAG}")
    pulled = skopeo.pull(f"{repository}:{TAG}", workdir / "pulled", TAG)
    return RoundTrip(server, image, pulled)


def relay_chunks(cluster: Cluster) -> dict[str, dict[str, Path]]:
    """For each relay, its chunk files by chunk name (the sha256 in hex)."""
    return {
        relay: {
            path.name: path
            for path in cluster.chunk_dir(relay).glob("*/*")
            if path.is_file() and CHUNK_NAME.fullmatch(path.name)
        }
        for relay in cluster.relays
    }


def sha256_hex(path: Path) -> str:
    """The sha256 of a chunk file, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RegistryChecks:
    """What any registry must do with the image: the tests both servers run."""

    @pytest.fixture(scope="class")
    @classmethod
    def round_trip(
        cls,
        server: Server,
        image: OciImage,
        skopeo: Skopeo,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> RoundTrip:
        """The image pushed to the class's server and pulled back."""
        return push_and_pull(server, image, skopeo, tmp_path_factory.mktemp("pull"))

    def test_pull_brings_back_every_digest(self, round_trip: RoundTrip) -> None:
        """The pulled image has the pushed manifest, config and layer digests."""
        original, pulled = round_trip.original, round_trip.pulled

        assert pulled.manifest.digest == original.manifest.digest
        assert pulled.config.digest == original.config.digest
        assert [layer.digest for layer in pulled.layers] == [
            layer.digest for layer in original.layers
        ]
        assert [layer.size for layer in pulled.layers] == [
            layer.size for layer in original.layers
        ]

    def test_pulled_blobs_hash_to_their_names(self, round_trip: RoundTrip) -> None:
        """Every blob skopeo wrote on the pull has the sha256 its name says."""
        assert len(round_trip.pulled.layers) >= 3
        assert mismatched_blobs(round_trip.pulled) == []

    def test_manifest_bytes_are_served_unchanged(
        self, round_trip: RoundTrip, skopeo: Skopeo
    ) -> None:
        """The manifest is served byte for byte as pushed, by tag and by digest."""
        by_digest = f"{round_trip.repository}@{round_trip.original.manifest.digest}"

        assert skopeo.inspect_raw(round_trip.reference) == (
            round_trip.original.manifest_bytes
        )
        assert skopeo.inspect_raw(by_digest) == round_trip.original.manifest_bytes

    def test_pushed_tag_is_listed(self, round_trip: RoundTrip, skopeo: Skopeo) -> None:
        """The repository's tag list names the pushed tag."""
        assert TAG in skopeo.list_tags(round_trip.repository)

    def test_missing_tag_fails_cleanly(
        self, round_trip: RoundTrip, skopeo: Skopeo, tmp_path: Path
    ) -> None:
        """Pulling a tag never pushed fails as unknown, with no traceback logged."""
        result = skopeo.run(
            "copy",
            "--src-tls-verify=false",
            f"docker://{round_trip.repository}:no-such-tag",
            f"oci:{tmp_path / 'missing'}:{TAG}",
        )

        assert result.returncode != 0
        assert b"manifest unknown" in result.stderr.lower()
        with pytest.raises((LookupError, FileNotFoundError)):
            read_image(tmp_path / "missing", TAG)
        assert "Traceback" not in round_trip.server.logs()


class TestReferenceRegistry(OnReferenceRegistry, RegistryChecks):
    """The checks against CNCF distribution: a failure here is the test's own bug."""


class TestTreescale(OnTreescale, RegistryChecks):
    """The same checks against a treescale tree, then what its relays hold."""

    @pytest.fixture(scope="class")
    @classmethod
    def chunks(
        cls, server: Cluster, round_trip: RoundTrip
    ) -> dict[str, dict[str, Path]]:
        """Each relay's chunk files, read once the round trip is done."""
        return relay_chunks(server)

    def test_every_relay_holds_some_but_not_all_chunks(
        self, chunks: dict[str, dict[str, Path]]
    ) -> None:
        """Chunks spread: each relay holds some, and none holds every one."""
        every_chunk: set[str] = set().union(*chunks.values())

        assert every_chunk
        for relay, held in chunks.items():
            assert held, f"{relay} holds no chunk"
            assert set(held) != every_chunk, f"{relay} holds every chunk"

    def test_every_chunk_file_hashes_to_its_name(
        self, chunks: dict[str, dict[str, Path]]
    ) -> None:
        """Each chunk file's bytes have the sha256 that names the file."""
        wrong = [
            str(path)
            for held in chunks.values()
            for name, path in held.items()
            if sha256_hex(path) != name
        ]

        assert sum(len(held) for held in chunks.values()) > 0
        assert wrong == []

    def test_every_chunk_is_on_exactly_two_relays(
        self, chunks: dict[str, dict[str, Path]]
    ) -> None:
        """Each chunk is stored on as many relays as the topology's replicas."""
        holders: dict[str, int] = {}
        for held in chunks.values():
            for name in held:
                holders[name] = holders.get(name, 0) + 1

        assert holders
        assert {
            name: count for name, count in holders.items() if count != REPLICAS
        } == {}

    def test_chunks_hold_every_layer_byte(
        self, chunks: dict[str, dict[str, Path]], image: OciImage
    ) -> None:
        """The distinct chunks together are at least as large as the image's layers."""
        distinct = {
            name: path for held in chunks.values() for name, path in held.items()
        }

        assert sum(path.stat().st_size for path in distinct.values()) >= (
            image.layers_size
        )

    def test_no_node_logs_a_traceback(
        self, server: Cluster, round_trip: RoundTrip
    ) -> None:
        """After the push and the pull, no node's log holds a traceback."""
        logged = {name: server.log_text(name) for name in server.topology.nodes}

        assert all(logged.values()), "a node wrote no log at all"
        assert [name for name, text in logged.items() if "Traceback" in text] == []
