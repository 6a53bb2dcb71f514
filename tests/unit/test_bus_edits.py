"""Tests of a bus node taking a topology edit, and of two editions linking.

The trees are `BusNode`s linked in memory (see `bustest`), never on sockets.
"""

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

from tests.unit.bustest import DEFAULT_TREE, BusTree, make_node, topology
from treescale.bus.link import Link
from treescale.config import Topology

GROWN = (*DEFAULT_TREE, ("c", "root"))


def edition(tree: Any = DEFAULT_TREE, version: int = 1, **fields: Any) -> Topology:
    """A test topology of `tree` at a given version."""
    return replace(topology(tree, **fields), version=version)


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """Every warning logged while the test runs, formatted."""
    seen: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_level") == LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_a_grown_tree_links_and_names_the_node_behind(warnings: list[str]) -> None:
    """A peer on a newer edition with one more node links: the names both know
    mean the same nodes. The log says who is behind."""
    tree = BusTree()
    newer = make_node(edition(GROWN, version=2), "a", tree.clock)

    edge = tree.join(Link(tree["root"], None), Link(newer, "root"), key="a")

    assert edge.parent.peer == "a" and edge.child.peer == "root"
    assert any(
        "topology version 2" in line and "root runs 1" in line for line in warnings
    )


def test_another_chunk_size_is_refused() -> None:
    """Chunks cut at another size are another store format: no link."""
    tree = BusTree()
    stranger = make_node(edition(chunk_size=2 * 1024 * 1024), "a", tree.clock)

    tree.join(Link(tree["root"], None), Link(stranger, "root"), key="a")

    assert tree["root"].links == {}


def test_a_new_child_links_once_its_parent_took_the_edit() -> None:
    """Before the root reloads, the new node is no child of its; after, it is."""
    tree = BusTree().connect_all()
    grown = edition(GROWN, version=2)
    newcomer = make_node(grown, "c", tree.clock)

    tree.join(Link(tree["root"], None), Link(newcomer, "root"), key="c")
    assert "c" not in tree["root"].links

    tree["root"].apply_topology(grown)
    tree.join(Link(tree["root"], None), Link(newcomer, "root"), key="c2")

    assert "c" in tree["root"].links
    assert set(tree["root"].links) == {"a", "b", "c"}


def test_a_removed_child_loses_its_link_and_the_listeners_hear(
    warnings: list[str],
) -> None:
    """Applying a tree without b closes b's link, as the edit asked: no warning;
    listeners get the new tree."""
    tree = BusTree().connect_all()
    heard: list[Topology] = []
    tree["root"].topology_listeners.append(heard.append)
    whole = edition(version=2)
    shrunk = replace(whole, nodes=tuple(n for n in whole.nodes if n.name != "b"))

    tree["root"].apply_topology(shrunk)
    tree.flush()

    assert set(tree["root"].links) == {"a"}
    assert heard == [shrunk]
    assert not tree["root"].reachable("b")
    assert not [line for line in warnings if "b dropped" in line or "<-> b" in line]


def test_re_parenting_moves_the_link() -> None:
    """a1 moved from a to b: a drops it, a1 now dials b, and b accepts it."""
    tree = BusTree().connect_all()
    moved = edition([("root", None), ("a", "root"), ("b", "root"), ("a1", "b")], 2)

    for name in ("root", "a", "b", "a1"):
        tree[name].apply_topology(moved)
    tree.flush()
    assert "a1" not in tree["a"].links
    tree.connect("a1")

    assert "a1" in tree["b"].links
    assert tree["a1"].me.parent == "b"
    assert tree["root"].routes.next_hop("a1") == "b"


def test_a_node_dials_again_only_when_its_parent_moves() -> None:
    """A weight edit leaves the dialler alone; the parent's new address does not."""
    tree = BusTree()
    child = tree["a"]
    dialer = child._dialer
    weighted = edition(version=2)
    weighted = replace(
        weighted,
        nodes=tuple(
            replace(n, weight=3.0) if n.name == "a" else n for n in weighted.nodes
        ),
    )

    child.apply_topology(weighted)
    assert child._dialer is dialer

    root = weighted.node("root")
    moved = replace(
        weighted,
        nodes=tuple(
            replace(n, bus=replace(root.bus, port=7999)) if n.name == "root" else n
            for n in weighted.nodes
        ),
        version=3,
    )
    child.apply_topology(moved)
    assert child._dialer is not dialer and child._dialer is not None
