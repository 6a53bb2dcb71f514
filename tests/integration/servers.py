"""The two servers every client check runs against, as mixins of test classes.

A class that mixes one in gets a class-scoped ``server`` fixture: the reference
registry (CNCF distribution), where a failure is the test's own bug, or a treescale
tree of one registry node and three relays.
"""

from collections.abc import Iterator

import pytest

from .cluster import Cluster, ReferenceRegistry, running_cluster
from .cluster import running_reference_registry as running_reference


class OnReferenceRegistry:
    """Tests of this class run against the reference registry."""

    @pytest.fixture(scope="class")
    @classmethod
    def server(
        cls, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[ReferenceRegistry]:
        """The reference registry, shared by this class's tests."""
        with running_reference(tmp_path_factory.mktemp("reference")) as ref:
            yield ref


class OnTreescale:
    """Tests of this class run against a treescale tree."""

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
        """A treescale tree of one registry node and three relays, for this class."""
        with running_cluster(tmp_path_factory.mktemp("treescale")) as cluster:
            yield cluster
