"""What changed between two topologies, and whether a running tree can take it.

Pure functions over `Topology` values: the reload of a running process
(`treescale.service`) and the bus handshake (`treescale.bus.node`) both decide
here, so the rules live in one place and are tested without sockets.

What a running process takes from an edit: relays added, removed (once drained) or
re-parented, their weights, domains and draining, `replicas`, `record_replicas` and
`version`. Everything else (chunk size, the bus and HTTP addresses of the nodes it
runs, the other tables) takes effect at the next start, so an edit that touches it
is refused whole, naming the field: half of an edit applied is the one outcome an
operator cannot reason about.
"""

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from treescale.config import NodeConfig, Topology
from treescale.config_error import ConfigError

__all__ = [
    "Edit",
    "hello_nodes",
    "link_refusal",
    "placement_digest",
    "review_edit",
]

# Fields of `Topology` an edit may change while the nodes run.
_LIVE_FIELDS = frozenset({"source", "nodes", "version", "replicas", "record_replicas"})

# Fields of a node that only a restart of that node's process takes.
_RESTART_NODE_FIELDS = ("bus", "roles", "http", "cache_size")

# How a `Topology` field is named in the file, for the refusal's message.
_FILE_NAMES = {
    "cluster": "cluster.name",
    "data_dir": "cluster.data_dir",
    "chunk_size": "cluster.chunk_size",
    "window": "cluster.window",
    "window_per_relay": "cluster.window_per_relay",
    "buffer_chunks": "cluster.buffer_chunks",
    "insecure_plain_bus": "cluster.insecure_plain_bus",
}


@dataclass(frozen=True)
class Edit:
    """An edit a running process can take, in words for its log line."""

    old_version: int
    new_version: int
    changes: tuple[str, ...]

    def describe(self) -> str:
        """One line: the versions and every change."""
        if not self.changes:
            return f"version {self.new_version}, nothing changed"
        versions = f"version {self.old_version} -> {self.new_version}"
        return f"{versions}: " + "; ".join(self.changes)


def placement_digest(topology: Topology) -> str:
    """A digest of everything that decides where chunks and records live.

    Two nodes with the same digest place every key alike; a relay's rebalance
    progress names the digest it worked for, so a waiting operator knows it is
    the current edit's.
    """
    stores = sorted(
        (node.name, node.weight, node.domain, node.drain) for node in topology.stores
    )
    shape = [topology.replicas, topology.record_replicas, stores]
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:16]


def review_edit(
    old: Topology,
    new: Topology,
    local: Iterable[str],
    removable: Iterable[str] = (),
) -> Edit:
    """Check that a process running the nodes `local` of `old` can take `new`;
    of those, the process stops the `removable` ones when the edit removes them.

    Raises `ConfigError` naming the file, node and field of the first thing it
    cannot take; the running tree then goes on with `old`, unchanged.
    """
    source = new.source
    _check_live_fields(old, new)
    before = {node.name: node for node in old.nodes}
    after = {node.name: node for node in new.nodes}
    _check_ids(before, after, source)

    stoppable = set(removable)
    for name in local:
        if name not in after and name not in stoppable:
            raise ConfigError(
                source,
                name,
                None,
                "runs in this process and is gone from the file: stop the node "
                "first, then remove it",
            )
        if name in after:
            _check_restart_fields(before[name], after[name], source)

    for name, was in before.items():
        now = after.get(name)
        if not was.is_store or was.drain or (now is not None and now.is_store):
            continue
        how = "removed" if now is None else "made no store"
        raise ConfigError(
            source,
            name,
            "drain" if now is None else "roles",
            f"{how} without draining: set drain = true and reload, wait for "
            "`treescale rebalance --wait`, then edit it",
        )

    changes = _changes(old, new, before, after)
    _check_version(old, new, changes)
    return Edit(old.version, new.version, tuple(changes))


def _check_live_fields(old: Topology, new: Topology) -> None:
    """Refuse an edit of any setting outside the node table and the copy counts."""
    for field in dataclasses.fields(Topology):
        if field.name in _LIVE_FIELDS:
            continue
        was, now = getattr(old, field.name), getattr(new, field.name)
        if was == now:
            continue
        name = _FILE_NAMES.get(field.name, f"[{field.name}]")
        shown = f" from {was} to {now}" if not dataclasses.is_dataclass(was) else ""
        raise ConfigError(
            new.source,
            None,
            name,
            f"changed{shown}: a running tree takes edits of its [[node]] tables, "
            "replicas, record_replicas and version only; restart the nodes for this",
        )


def _check_ids(
    before: Mapping[str, NodeConfig], after: Mapping[str, NodeConfig], source: Any
) -> None:
    """A node keeps its id for life, and no new node takes a removed one's: an id
    is a routing prime, and nodes still on the old file would route by it."""
    for name in before.keys() & after.keys():
        if before[name].id != after[name].id:
            raise ConfigError(
                source,
                name,
                "id",
                f"changed from {before[name].id} to {after[name].id}: a node keeps "
                "its id for life (it is the node's routing prime)",
            )
    removed = {before[name].id: name for name in before.keys() - after.keys()}
    for name in sorted(after.keys() - before.keys()):
        gone = removed.get(after[name].id)
        if gone is not None:
            raise ConfigError(
                source,
                name,
                "id",
                f"{after[name].id} was the id of {gone!r}, removed in this edit: "
                "nodes still on the old file would take one for the other; give "
                f"{name!r} an id never used",
            )


def _check_restart_fields(was: NodeConfig, now: NodeConfig, source: Any) -> None:
    for field in _RESTART_NODE_FIELDS:
        if getattr(was, field) != getattr(now, field):
            raise ConfigError(
                source,
                now.name,
                field,
                f"changed from {_shown(getattr(was, field))} to "
                f"{_shown(getattr(now, field))}: this node runs in this process "
                "and takes that only when it restarts",
            )


def _plain(value: object) -> str:
    """A field's value as a change line shows it."""
    if isinstance(value, frozenset):
        return "[" + ", ".join(sorted(value)) + "]"
    return str(value)


def _shown(value: object) -> str:
    if isinstance(value, frozenset):
        return "[" + ", ".join(sorted(value)) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def _changes(
    old: Topology,
    new: Topology,
    before: Mapping[str, NodeConfig],
    after: Mapping[str, NodeConfig],
) -> list[str]:
    """Every change of the edit, in words, in file order."""
    changes = [f"{name} added" for name in after if name not in before]
    changes += [f"{name} removed" for name in before if name not in after]
    for name in after.keys() & before.keys():
        for field in ("parent", "weight", "domain", "drain", *_RESTART_NODE_FIELDS):
            was, now = getattr(before[name], field), getattr(after[name], field)
            if was != now:
                changes.append(f"{name} {field} {_plain(was)} -> {_plain(now)}")
    for field in ("replicas", "record_replicas"):
        if getattr(old, field) != getattr(new, field):
            changes.append(f"{field} {getattr(old, field)} -> {getattr(new, field)}")
    return sorted(changes, key=_file_order(new, old))


def _file_order(new: Topology, old: Topology) -> Any:
    order = {node.name: index for index, node in enumerate(old.nodes + new.nodes)}
    return lambda change: (order.get(change.split(" ")[0], -1), change)


def _check_version(old: Topology, new: Topology, changes: list[str]) -> None:
    """An edit raises the version, so nodes that meet can tell which is behind."""
    if new.version < old.version:
        raise ConfigError(
            new.source,
            None,
            "cluster.version",
            f"{new.version} is older than the running version {old.version}",
        )
    if changes and new.version == old.version:
        raise ConfigError(
            new.source,
            None,
            "cluster.version",
            f"still {new.version} though the tree changed ({'; '.join(changes)}): "
            "raise it with every edit",
        )


def hello_nodes(topology: Topology) -> dict[str, int]:
    """What a node's HELLO says of its tree: every node's name and id."""
    return {node.name: node.id for node in topology.nodes}


def _is_node_table(value: object) -> bool:
    """Whether a decoded HELLO table maps names to whole numbers."""
    if not isinstance(value, Mapping):
        return False
    return all(
        isinstance(name, str) and type(number) is int for name, number in value.items()
    )


def link_refusal(mine: Topology, theirs: object, chunk_size: object) -> str | None:
    """Why a peer whose tree is `theirs` (name -> id, from its HELLO) cannot link
    with us, or None.

    Trees of two editions can serve together while an edit rolls out, as long
    as every name means the same node (same id, so the same routing prime) and
    chunks are cut alike. Routes to a node only one side knows are dropped by
    the side that does not, which fails those requests, not the tree.
    """
    if chunk_size != mine.chunk_size:
        return f"peer cuts chunks of {chunk_size!r} bytes, we {mine.chunk_size}"
    if not _is_node_table(theirs):
        return "peer's HELLO has no readable node table"
    assert isinstance(theirs, Mapping)

    ours = hello_nodes(mine)
    for name in sorted(ours.keys() & theirs.keys()):
        if ours[name] != theirs[name]:
            return f"node {name!r} has id {theirs[name]} there, {ours[name]} here"
    names_by_id = {number: name for name, number in ours.items()}
    for name, number in sorted(theirs.items()):
        other = names_by_id.get(number)
        if other is not None and other != name:
            return f"id {number} is {name!r} there, {other!r} here"
    return None
