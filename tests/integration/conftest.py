"""Fixtures of the integration tests: the image, the client, the servers.

The image takes seconds to build, so one serves the whole session. Servers are real
processes; when a test that used one fails, the tail of every log it wrote is added
to the failure report, where the reason usually is.
"""

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from .cluster import (
    Cluster,
    ReferenceRegistry,
    running_cluster,
    running_reference_registry,
)
from .engines import Docker, Podman, running_docker_daemon
from .images import MiB, OciImage, Skopeo, build_image

IMAGE_TAG = "v1"


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    """A real image of at least three layers and 40 MiB, built once per session."""
    return build_image(tmp_path_factory.mktemp("image"), IMAGE_TAG)


@pytest.fixture(scope="session")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    """skopeo with settings of its own, shared by the session's tests."""
    return Skopeo.in_directory(tmp_path_factory.mktemp("skopeo"))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A treescale tree of one registry node and three relays, for one test."""
    with running_cluster(tmp_path / "cluster") as running:
        yield running


@pytest.fixture
def reference_registry(tmp_path: Path) -> Iterator[ReferenceRegistry]:
    """The reference registry, empty, for one test."""
    with running_reference_registry(tmp_path / "reference") as running:
        yield running


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the logs of the servers a failed test used to its report."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Cluster | ReferenceRegistry):
                report.sections.append(("server logs", value.log_tails()))
    return report


# Docker's vfs store copies every layer in full, at about 10 MB/s: its image is small.
SMALL_IMAGE_TAG = "small"
SMALL_IMAGE_SIZE = 4 * MiB


@pytest.fixture(scope="session")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    """A real image of three layers and a few MiB, built once per session."""
    return build_image(
        tmp_path_factory.mktemp("small-image"),
        SMALL_IMAGE_TAG,
        min_layers=3,
        min_size=SMALL_IMAGE_SIZE,
    )


@pytest.fixture(scope="class")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    """podman with a store and settings of its own, for one test class."""
    return Podman.in_directory(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="class")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    """docker with a dockerd of its own for one test class, stopped at its end."""
    with running_docker_daemon(tmp_path_factory.mktemp("docker")) as daemon:
        yield daemon.client()
