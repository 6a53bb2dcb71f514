"""Tests of a process reloading its topology file: applied whole or refused whole."""

import json
import os
from pathlib import Path

from twisted.application.service import MultiService
from twisted.internet.task import Clock

from tests.unit.bustest import make_node
from treescale.bus.node import BusNode
from treescale.config import NodeConfig, Topology, load
from treescale.reload import Reloader, outcome_path

TREE = """
[cluster]
name = "test"
version = {version}
data_dir = "{data}"

[[node]]
name = "registry"
id = 1
bus = "127.0.0.1:7400"
roles = ["registry"]
http = "tcp:0:interface=127.0.0.1"

[[node]]
name = "a"
id = 2
bus = "127.0.0.1:7401"
parent = "registry"
{extra}
"""

RELAY_D = """
[[node]]
name = "d"
id = 5
bus = "127.0.0.1:7405"
parent = "registry"
"""


def write(path: Path, version: int, extra: str = "") -> None:
    data = path.parent / "data"
    path.write_text(TREE.format(version=version, data=data, extra=extra))


def reloader(path: Path) -> Reloader:
    topology = load(path)
    bus = make_node(topology, "registry", Clock())
    return Reloader(topology, [bus])


def written_outcome(path: Path) -> dict[str, object]:
    data_dir = path.parent / "data"
    return json.loads(outcome_path(data_dir, os.getpid()).read_text())  # type: ignore[no-any-return]


def test_an_edit_reaches_every_bus_node(tmp_path: Path) -> None:
    path = tmp_path / "tree.toml"
    write(path, 1)
    process = reloader(path)
    write(path, 2, RELAY_D)

    outcome = process.reload()

    assert outcome.applied and outcome.version == 2
    assert outcome.message == "applied version 1 -> 2: d added"
    assert [n.name for n in process.buses[0].topology.nodes][-1] == "d"
    assert "d" in process.buses[0].routes.neighbours
    assert written_outcome(path)["applied"] is True


def test_a_bad_edit_changes_nothing_and_says_where(tmp_path: Path) -> None:
    path = tmp_path / "tree.toml"
    write(path, 1)
    process = reloader(path)
    before = process.buses[0].topology
    write(path, 2, RELAY_D.replace('parent = "registry"', 'parent = "nobody"'))

    outcome = process.reload()

    assert not outcome.applied
    assert str(path) in outcome.message and "node 'd'" in outcome.message
    assert process.buses[0].topology is before
    assert written_outcome(path)["applied"] is False


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tree.toml"
    write(path, 1)
    process = reloader(path)
    path.write_text("[[node]\n")

    outcome = process.reload()

    assert not outcome.applied and "not valid TOML" in outcome.message


def test_a_process_of_every_local_node_starts_and_stops_them(tmp_path: Path) -> None:
    """Run for every local node, a process starts a node an edit adds on this
    host and stops one the edit removes (after its drain)."""
    path = tmp_path / "tree.toml"
    write(path, 1)
    topology = load(path)
    clock = Clock()
    process = MultiService()  # type: ignore[no-untyped-call]
    buses = [make_node(topology, name, clock) for name in ("registry", "a")]
    for bus in buses:
        bus.setServiceParent(process)  # type: ignore[no-untyped-call]

    def start_node(tree: Topology, node: NodeConfig) -> BusNode:
        return make_node(tree, node.name, clock)

    reloader = Reloader(topology, buses, process=process, start_node=start_node)
    write(path, 2, RELAY_D)

    outcome = reloader.reload()

    assert outcome.message == "applied version 1 -> 2: d added; d started here"
    assert [bus.me.name for bus in reloader.buses] == ["registry", "a", "d"]
    assert [service.me.name for service in process] == ["registry", "a", "d"]

    write(path, 3, RELAY_D + "drain = true\n")
    assert reloader.reload().applied
    write(path, 4)

    outcome = reloader.reload()

    assert outcome.message == "applied version 3 -> 4: d removed; d stopped here"
    assert [service.me.name for service in process] == ["registry", "a"]


def test_a_process_of_named_nodes_refuses_losing_one(tmp_path: Path) -> None:
    """Run for named nodes, a process does not stop one the file drops."""
    path = tmp_path / "tree.toml"
    write(path, 1, RELAY_D + "drain = true\n")
    topology = load(path)
    reloader = Reloader(topology, [make_node(topology, "d", Clock())])
    write(path, 2)

    outcome = reloader.reload()

    assert not outcome.applied and "runs in this process" in outcome.message


def test_a_refused_data_dir_edit_is_told_where_the_file_now_points(
    tmp_path: Path,
) -> None:
    """An edit of data_dir is refused; the outcome is also written under the
    new data_dir, where `treescale reload` reading the edited file looks."""
    path = tmp_path / "tree.toml"
    write(path, 1)
    process = reloader(path)
    elsewhere = tmp_path / "elsewhere"
    path.write_text(TREE.format(version=2, data=elsewhere, extra=""))

    outcome = process.reload()

    assert not outcome.applied and "cluster.data_dir" in outcome.message
    moved = json.loads(outcome_path(elsewhere, os.getpid()).read_text())
    assert moved["applied"] is False
