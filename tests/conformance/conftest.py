"""Fixtures of the conformance suite: both servers, a fresh repository per test.

Every test runs twice, once against the CNCF reference registry and once against a
treescale tree, through the parametrized `server` fixture (ids ``reference`` and
``treescale``). Each server starts once per session; tests stay independent by each
pushing into a repository name no other test uses.

Where the reference registry does not do what the spec says, a test (or one of its
parameters) carries the mark of `deviations.reference_deviates`; its reference run
becomes a strict xfail with that reason, so the day the reference behaves, the
suite says so. treescale runs are never marked: its failures are meant to show.
"""

import re
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from ..integration.cluster import running_cluster, running_reference_registry
from .client import Client
from .deviations import MARKER
from .workflows import Registry

SERVER_IDS = ("reference", "treescale")

# Enough of a server's log to see the failed request; the reference logs verbosely.
LOG_LINES = 12


class _Logged(Protocol):
    """A running server whose logs a failed test's report shows."""

    @property
    def address(self) -> str:
        """``host:port`` of its HTTP API."""

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of its logs."""


@dataclass(frozen=True)
class Server:
    """One server under test: which kind, where, and how to read its logs."""

    kind: str
    process: _Logged

    @property
    def address(self) -> str:
        """``host:port`` of its HTTP API."""
        return self.process.address

    def client(self) -> Client:
        """A client talking to it."""
        return Client(self.address)

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of its logs."""
        return self.process.log_tails(lines)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that turns a reference run into a strict xfail."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(reason): the reference registry breaks this rule of the spec; "
        "its run is a strict xfail",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the reference runs of the tests whose rule the reference breaks."""
    for item in items:
        marker = item.get_closest_marker(MARKER)
        callspec = getattr(item, "callspec", None)
        if marker is None or callspec is None:
            continue
        if callspec.params.get("server") != "reference":
            continue
        reason = marker.args[0] if marker.args else marker.kwargs["reason"]
        item.add_marker(pytest.mark.xfail(strict=True, reason=f"reference: {reason}"))


@pytest.fixture(scope="session")
def reference_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The CNCF reference registry, deletes on, for the whole session."""
    directory: Path = tmp_path_factory.mktemp("reference")
    with running_reference_registry(directory) as registry:
        yield Server("reference", registry)


@pytest.fixture(scope="session")
def treescale_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A treescale tree of one registry node and three relays, for the session."""
    directory: Path = tmp_path_factory.mktemp("treescale")
    with running_cluster(directory) as cluster:
        yield Server("treescale", cluster)


@pytest.fixture(params=SERVER_IDS)
def server(request: pytest.FixtureRequest) -> Server:
    """Each server in turn: the test runs once against each."""
    kind = str(request.param)
    found: Server = request.getfixturevalue(f"{kind}_server")
    return found


@pytest.fixture
def client(server: Server) -> Client:
    """A client of the server under test."""
    return server.client()


@pytest.fixture
def registry(client: Client) -> Registry:
    """The spec's common steps against the server under test."""
    return Registry(client)


def fresh_name(label: str) -> str:
    """A repository name no other test uses, readable in the server's logs."""
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40] or "test"
    return f"conformance/{slug}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository of the test's own, empty until it pushes."""
    return fresh_name(request.node.originalname)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the logs of the server a failed test talked to, where the reason is."""
    report = yield
    if report.failed:
        found = getattr(item, "funcargs", {}).get("server")
        if isinstance(found, Server):
            report.sections.append((f"{found.kind} logs", found.log_tails(LOG_LINES)))
    return report
