"""Tests of the topology file: the shipped default loads, and every mistake is named."""

import copy
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from treescale.config import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_WINDOW,
    MIN_CHUNK_SIZE,
    Address,
    ConfigError,
    Topology,
    is_local_host,
    load,
    parse,
)

LOCAL_TOML = Path(__file__).resolve().parents[2] / "conf" / "local.toml"

Document = dict[str, Any]

BASE: Document = {
    "cluster": {"name": "t", "data_dir": "/srv/ts", "chunk_size": 1048576},
    "node": [
        {
            "name": "edge",
            "id": 1,
            "bus": "127.0.0.1:7100",
            "roles": ["registry"],
            "http": "tcp:5000:interface=127.0.0.1",
        },
        {"name": "r1", "id": 2, "bus": "127.0.0.1:7101", "parent": "edge"},
        {"name": "r2", "id": 3, "bus": "127.0.0.1:7102", "parent": "r1"},
    ],
}


def toml_value(value: object) -> str:
    """One value in TOML syntax (strings, integers, floats, booleans, lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_toml(path: Path, document: Document) -> Path:
    """Write a topology document as a TOML file, the way an operator would."""
    lines = []
    if "cluster" in document:
        lines.append("[cluster]")
        lines += [f"{k} = {toml_value(v)}" for k, v in document["cluster"].items()]
    for node in document.get("node", []):
        lines.append("\n[[node]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in node.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def edited(change: Callable[[Document], None]) -> Document:
    """A copy of the valid base document with one mistake made by `change`."""
    document = copy.deepcopy(BASE)
    change(document)
    return document


def set_node(index: int, **fields: object) -> Callable[[Document], None]:
    """A change that sets fields of one [[node]] table."""

    def change(document: Document) -> None:
        document["node"][index].update(fields)

    return change


def drop_node_field(index: int, field: str) -> Callable[[Document], None]:
    """A change that removes one field of one [[node]] table."""

    def change(document: Document) -> None:
        del document["node"][index][field]

    return change


def set_cluster(**fields: object) -> Callable[[Document], None]:
    """A change that sets fields of the [cluster] table."""

    def change(document: Document) -> None:
        document["cluster"].update(fields)

    return change


def add_node(**fields: object) -> Callable[[Document], None]:
    """A change that appends one more [[node]] table."""

    def change(document: Document) -> None:
        document["node"].append(dict(fields))

    return change


def every_node_a_registry(document: Document) -> None:
    """A change that leaves the tree without a single store."""
    for node in document["node"]:
        node.update(roles=["registry"], http="tcp:1")


def test_shipped_local_topology_loads() -> None:
    """conf/local.toml is valid: one registry root and three store relays below it."""
    topology = load(LOCAL_TOML)

    assert topology.cluster == "local"
    assert topology.chunk_size == 4 * 1024 * 1024
    assert (topology.replicas, topology.record_replicas, topology.window) == (2, 3, 8)
    assert [node.name for node in topology.nodes] == [
        "registry",
        "relay-a",
        "relay-b",
        "relay-c",
    ]
    assert topology.parents == {
        "registry": None,
        "relay-a": "registry",
        "relay-b": "registry",
        "relay-c": "registry",
    }
    assert topology.node("registry").is_registry
    assert not topology.node("registry").is_store
    assert [node.name for node in topology.stores] == ["relay-a", "relay-b", "relay-c"]
    assert {node.domain for node in topology.stores} == {"a", "b", "c"}
    assert topology.node("relay-b").bus == Address("127.0.0.1", 7102)


def test_shipped_local_topology_runs_every_node_here() -> None:
    """Every node of the embedded default is on loopback, so one process runs all."""
    topology = load(LOCAL_TOML)

    assert topology.local_nodes() == topology.nodes


def test_data_dir_argument_overrides_the_file(tmp_path: Path) -> None:
    """A data_dir given to load wins over the one the file states."""
    path = write_toml(tmp_path / "t.toml", BASE)

    assert load(path).data_dir == Path("/srv/ts")
    assert load(path, data_dir=tmp_path / "d").data_dir == tmp_path / "d"


def test_defaults_fill_what_the_file_leaves_out(tmp_path: Path) -> None:
    """Unset cluster fields, roles, weight and domain take their documented defaults."""
    document = edited(lambda d: d.pop("cluster"))
    topology = load(write_toml(tmp_path / "t.toml", document))

    assert topology.cluster == "treescale"
    assert topology.chunk_size == DEFAULT_CHUNK_SIZE
    assert topology.data_dir == Path("./treescale-data")
    r1 = topology.node("r1")
    assert r1.roles == frozenset({"store"})
    assert (r1.weight, r1.domain, r1.http) == (1.0, "r1", None)


def test_unknown_node_name_is_a_config_error(tmp_path: Path) -> None:
    """Asking a topology for a node it does not list names the file and the node."""
    path = write_toml(tmp_path / "t.toml", BASE)
    topology: Topology = load(path)

    with pytest.raises(ConfigError) as caught:
        topology.node("nowhere")

    assert str(path) in str(caught.value)
    assert "'nowhere'" in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that cannot be read gives a ConfigError naming it, not an OSError."""
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as caught:
        load(path)

    assert str(path) in str(caught.value)
    assert "cannot read" in str(caught.value)


def test_bad_toml_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not TOML gives a ConfigError naming it and the parse error."""
    path = tmp_path / "broken.toml"
    path.write_text("[cluster\nname = 'x'\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load(path)

    assert str(path) in str(caught.value)
    assert "not valid TOML" in str(caught.value)


# Each case: a mistake, the node the error must name (None: a file-wide error), the
# field it must name, and a word of the reason.
MISTAKES: list[tuple[str, Callable[[Document], None], str | None, str, str]] = [
    (
        "unknown cluster field",
        set_cluster(replica=2),
        None,
        "cluster.replica",
        "did you mean 'replicas'",
    ),
    (
        "unknown node field",
        set_node(1, weigth=2.0),
        "r1",
        "weigth",
        "did you mean 'weight'",
    ),
    (
        "http endpoint typo",
        set_node(0, http="tcp:5000:interfac=127.0.0.1"),
        "edge",
        "http",
        "not a Twisted endpoint",
    ),
    (
        "http port out of range",
        set_node(0, http="tcp:99999"),
        "edge",
        "http",
        "out of range",
    ),
    (
        "more replicas than stores",
        set_cluster(replicas=5),
        None,
        "cluster.replicas",
        "only",
    ),
    ("two roots", drop_node_field(2, "parent"), "r2", "parent", "exactly one"),
    (
        "no root",
        lambda d: d["node"][0].update(parent="r2"),
        None,
        "parent",
        "roots: none",
    ),
    (
        "cycle",
        set_node(1, parent="r2"),
        "r1",
        "parent",
        "cycle",
    ),
    ("unknown parent", set_node(2, parent="ghost"), "r2", "parent", "'ghost'"),
    ("duplicate name", set_node(2, name="r1"), "r1", "name", "twice"),
    ("duplicate id", set_node(2, id=2), "r2", "id", "'r1'"),
    ("duplicate bus", set_node(2, bus="127.0.0.1:7101"), "r2", "bus", "'r1'"),
    ("address without port", set_node(1, bus="127.0.0.1"), "r1", "bus", "HOST:PORT"),
    ("address without host", set_node(1, bus=":7101"), "r1", "bus", "HOST:PORT"),
    ("port not a number", set_node(1, bus="h:http"), "r1", "bus", "HOST:PORT"),
    ("bus not a string", set_node(1, bus=7101), "r1", "bus", "string"),
    ("port zero", set_node(1, bus="127.0.0.1:0"), "r1", "bus", "out of range"),
    ("port too big", set_node(1, bus="127.0.0.1:65536"), "r1", "bus", "range"),
    ("unknown role", set_node(1, roles=["store", "cache"]), "r1", "roles", "cache"),
    ("empty roles", set_node(1, roles=[]), "r1", "roles", "non-empty"),
    ("registry without http", drop_node_field(0, "http"), "edge", "http", "http"),
    (
        "no store",
        every_node_a_registry,
        None,
        "roles",
        "store",
    ),
    ("no registry", set_node(0, roles=["store"]), None, "roles", "registry"),
    ("missing id", drop_node_field(1, "id"), "r1", "id", "integer"),
    ("id zero", set_node(1, id=0), "r1", "id", "not in"),
    ("id a boolean", set_node(1, id=True), "r1", "id", "integer"),
    ("bad name", set_node(1, name="r 1"), "r 1", "name", "letters"),
    ("missing name", drop_node_field(1, "name"), "#2", "name", "string"),
    ("negative weight", set_node(1, weight=-1.0), "r1", "weight", "positive"),
    ("weight a boolean", set_node(1, weight=True), "r1", "weight", "positive"),
    ("parent not a string", set_node(1, parent=3), "r1", "parent", "string"),
    (
        "chunk too small",
        set_cluster(chunk_size=MIN_CHUNK_SIZE - 1),
        None,
        "cluster.chunk_size",
        "not in",
    ),
    (
        "chunk too big",
        set_cluster(chunk_size=MAX_CHUNK_SIZE + 1),
        None,
        "cluster.chunk_size",
        "not in",
    ),
    (
        "chunk not an int",
        set_cluster(chunk_size="4M"),
        None,
        "cluster.chunk_size",
        "integer",
    ),
    ("window zero", set_cluster(window=0), None, "cluster.window", "not in"),
    (
        "window too big",
        set_cluster(window=MAX_WINDOW + 1),
        None,
        "cluster.window",
        "not in",
    ),
    ("replicas zero", set_cluster(replicas=0), None, "cluster.replicas", "not in"),
    (
        "buffer zero",
        set_cluster(buffer_chunks=0),
        None,
        "cluster.buffer_chunks",
        "not in",
    ),
    (
        "buffer under the window",
        set_cluster(window=16, buffer_chunks=8),
        None,
        "cluster.buffer_chunks",
        "less than the window",
    ),
    ("empty cluster name", set_cluster(name=""), None, "cluster.name", "string"),
    ("no nodes", lambda d: d.pop("node"), None, "node", "at least one"),
]


@pytest.mark.parametrize(
    ("change", "node", "field", "why"),
    [case[1:] for case in MISTAKES],
    ids=[case[0] for case in MISTAKES],
)
def test_mistake_is_named(
    tmp_path: Path,
    change: Callable[[Document], None],
    node: str | None,
    field: str,
    why: str,
) -> None:
    """Each invalid topology raises a ConfigError naming the file, node and field."""
    path = write_toml(tmp_path / "topology.toml", edited(change))

    with pytest.raises(ConfigError) as caught:
        load(path)

    message = str(caught.value)
    assert message.startswith(str(path))
    assert f"field {field!r}" in message
    assert why in message
    assert caught.value.field == field
    assert caught.value.node == node
    if node is not None:
        assert f"node {node!r}" in message


def test_cycle_message_shows_the_loop(tmp_path: Path) -> None:
    """A cycle error spells out the loop so the operator sees which parents to fix."""
    document = edited(
        lambda d: d["node"].extend(
            [
                {"name": "x", "id": 8, "bus": "127.0.0.1:7108", "parent": "y"},
                {"name": "y", "id": 9, "bus": "127.0.0.1:7109", "parent": "x"},
            ]
        )
    )

    with pytest.raises(ConfigError) as caught:
        load(write_toml(tmp_path / "t.toml", document))

    assert "x -> y -> x" in str(caught.value)


def test_unknown_parent_further_up_is_a_config_error(tmp_path: Path) -> None:
    """An unknown parent met while walking up from another node is still named."""
    document = edited(
        lambda d: d["node"].extend(
            [
                {"name": "x", "id": 8, "bus": "127.0.0.1:7108", "parent": "y"},
                {"name": "y", "id": 9, "bus": "127.0.0.1:7109", "parent": "ghost"},
            ]
        )
    )

    with pytest.raises(ConfigError) as caught:
        load(write_toml(tmp_path / "t.toml", document))

    assert caught.value.node == "y"
    assert caught.value.field == "parent"


def test_bracketed_ipv6_address_parses(tmp_path: Path) -> None:
    """A bus address such as [::1]:7101 gives the bare IPv6 host and the port."""
    document = edited(set_node(1, bus="[::1]:7101"))

    topology = load(write_toml(tmp_path / "t.toml", document))

    assert topology.node("r1").bus == Address("::1", 7101)
    assert str(Address("::1", 7101)) == "::1:7101"


def test_loopback_names_are_local_without_asking_dns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loopback addresses and 'localhost' are local before any name lookup."""

    def no_lookup(*args: object) -> object:
        raise AssertionError("looked a name up")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)

    assert is_local_host("127.0.0.1")
    assert is_local_host("::1")
    assert is_local_host("localhost")


def test_other_hosts_are_not_local(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host is local only when it resolves to an address of this machine."""
    answers = {
        "here.example": "127.0.0.1",
        "far.example": "192.0.2.7",
        "192.0.2.7": "192.0.2.7",
        socket.gethostname(): "198.51.100.1",
    }

    def fake_getaddrinfo(host: str, port: object) -> list[tuple[Any, ...]]:
        if host not in answers:
            raise socket.gaierror("unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], 0))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)

    assert is_local_host("here.example")
    assert not is_local_host("far.example")
    assert not is_local_host("192.0.2.7")
    assert not is_local_host("unknown.example")


def test_unknown_top_level_table_is_named() -> None:
    """A misspelt top-level table is refused with a suggestion, not ignored."""
    document = copy.deepcopy(BASE)
    document["clutser"] = {}

    with pytest.raises(ConfigError) as caught:
        parse(document, Path("t.toml"))

    assert "field 'clutser'" in str(caught.value)
    assert "did you mean 'cluster'" in str(caught.value)
