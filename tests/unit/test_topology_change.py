"""Tests of what a running tree takes from an edited topology file, and of the
HELLO rule two editions of a tree link by."""

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from treescale.config import ConfigError, Topology, parse
from treescale.topology_change import (
    hello_nodes,
    link_refusal,
    placement_digest,
    review_edit,
)

SOURCE = Path("tree.toml")


def node(name: str, number: int, parent: str | None, **fields: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": name,
        "id": number,
        "bus": f"127.0.0.1:{7300 + number}",
    }
    if parent is None:
        table.update(roles=["registry"], http="tcp:0:interface=127.0.0.1")
    else:
        table.update(parent=parent, roles=["store"])
    table.update(fields)
    return table


def tree(*extra: dict[str, Any], version: int = 1, **cluster: Any) -> Topology:
    """A registry and relays a, b, c, plus `extra` nodes."""
    nodes = [
        node("registry", 1, None),
        node("a", 2, "registry"),
        node("b", 3, "registry"),
        node("c", 4, "registry"),
        *extra,
    ]
    return parse({"cluster": {"version": version, **cluster}, "node": nodes}, SOURCE)


def without(topology: Topology, name: str, version: int) -> Topology:
    kept = tuple(n for n in topology.nodes if n.name != name)
    return replace(topology, nodes=kept, version=version)


def refusal(old: Topology, new: Topology, local: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as caught:
        review_edit(old, new, local)
    return str(caught.value)


def test_adding_a_relay_is_taken_and_described() -> None:
    edit = review_edit(tree(), tree(node("d", 5, "a"), version=2), ["registry"])

    assert edit.changes == ("d added",)
    assert edit.describe() == "version 1 -> 2: d added"


def test_weight_parent_and_drain_changes_are_taken() -> None:
    old = tree()
    new = parse(
        {
            "cluster": {"version": 2},
            "node": [
                node("registry", 1, None),
                node("a", 2, "registry", weight=2.0),
                node("b", 3, "a"),
                node("c", 4, "registry", drain=True),
            ],
        },
        SOURCE,
    )

    edit = review_edit(old, new, ["a"])

    assert edit.changes == (
        "a weight 1.0 -> 2.0",
        "b parent registry -> a",
        "c drain False -> True",
    )


def test_an_unchanged_file_is_nothing() -> None:
    edit = review_edit(tree(), tree(), ["registry"])

    assert edit.changes == ()
    assert "nothing changed" in edit.describe()


def test_an_edit_must_raise_the_version() -> None:
    why = refusal(tree(), tree(node("d", 5, "a")))

    assert "'cluster.version'" in why and "raise it" in why and "d added" in why


def test_an_older_version_is_refused() -> None:
    why = refusal(tree(version=3), tree(version=2))

    assert "older than the running version 3" in why


def test_a_node_keeps_its_id() -> None:
    old = tree()
    moved = [replace(n, id=9) if n.name == "b" else n for n in old.nodes]
    why = refusal(old, replace(old, nodes=tuple(moved), version=2))

    assert "node 'b': field 'id'" in why and "from 3 to 9" in why


def test_a_removed_nodes_id_is_not_reused_at_once() -> None:
    old = tree(node("d", 5, "a", drain=True))
    new = replace(tree(node("e", 5, "a")), version=2)

    why = refusal(old, new)

    assert "node 'e': field 'id'" in why and "'d'" in why


def test_a_relay_is_drained_before_it_is_removed() -> None:
    old = tree()
    why = refusal(old, without(old, "c", 2))

    assert "node 'c': field 'drain'" in why and "drain = true" in why

    drained = tree(version=2)
    drained = replace(
        drained,
        nodes=tuple(
            replace(n, drain=True) if n.name == "c" else n for n in drained.nodes
        ),
    )
    edit = review_edit(drained, without(drained, "c", 3), ["registry"])
    assert edit.changes == ("c removed",)


def test_a_node_of_this_process_cannot_leave_the_file() -> None:
    old = tree(node("d", 5, "a", drain=True))
    why = refusal(old, without(old, "d", 2), ("d",))

    assert "node 'd'" in why and "runs in this process" in why


def test_this_processes_addresses_need_a_restart() -> None:
    old = tree()
    new = replace(
        old,
        nodes=tuple(
            replace(n, http="tcp:5001:interface=127.0.0.1") if n.is_registry else n
            for n in old.nodes
        ),
        version=2,
    )

    why = refusal(old, new, ("registry",))
    assert "node 'registry': field 'http'" in why and "restarts" in why

    # Another process's node moving is that process's business (and a change).
    assert review_edit(old, new, ("a",)).changes == (
        "registry http tcp:0:interface=127.0.0.1 -> tcp:5001:interface=127.0.0.1",
    )


def test_a_store_made_no_store_is_drained_first() -> None:
    old = tree()
    new = replace(
        old,
        nodes=tuple(
            replace(n, roles=frozenset({"registry"}), http="tcp:0")
            if n.name == "c"
            else n
            for n in old.nodes
        ),
        version=2,
    )

    why = refusal(old, new, ("a",))

    assert "node 'c': field 'roles'" in why and "without draining" in why


def test_a_bus_move_is_a_change_the_version_must_follow() -> None:
    old = tree()
    moved = replace(old.node("b").bus, port=7999)
    new = replace(
        old,
        nodes=tuple(replace(n, bus=moved) if n.name == "b" else n for n in old.nodes),
    )

    why = refusal(old, new, ("a",))

    assert "'cluster.version'" in why and "b bus" in why


def test_settings_outside_the_node_table_need_a_restart() -> None:
    why = refusal(tree(), tree(version=2, chunk_size=2 * 1024 * 1024))
    assert "'cluster.chunk_size'" in why and "restart" in why

    why = refusal(tree(), tree(version=2, window=4))
    assert "'cluster.window'" in why

    assert review_edit(tree(), tree(version=2, replicas=3), ()).changes == (
        "replicas 2 -> 3",
    )


def test_placement_digest_follows_what_places_keys() -> None:
    base = placement_digest(tree())

    assert placement_digest(tree(version=5)) == base
    assert placement_digest(tree(node("d", 5, "a"))) != base
    assert placement_digest(tree(replicas=3)) != base


def test_two_editions_link_when_names_mean_the_same_nodes() -> None:
    mine = tree()
    grown = hello_nodes(tree(node("d", 5, "a")))

    assert link_refusal(mine, grown, mine.chunk_size) is None
    assert link_refusal(mine, {**grown, "b": 7}, mine.chunk_size) == (
        "node 'b' has id 7 there, 3 here"
    )
    assert link_refusal(mine, {"registry": 1, "z": 3}, mine.chunk_size) == (
        "id 3 is 'z' there, 'b' here"
    )
    assert "chunks" in (link_refusal(mine, grown, 1024) or "")
    assert "node table" in (link_refusal(mine, None, mine.chunk_size) or "")
    assert "node table" in (link_refusal(mine, {"a": True}, mine.chunk_size) or "")
