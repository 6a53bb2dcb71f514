"""The state of the whole tree as one registry node sees it, without I/O.

The status page draws this document, and ``/_treescale/status`` serves it as JSON:
every node of the topology file with its place in the tree, and what this node
knows of it now. A node is ``up`` when the bus has a live link toward it, ``down``
when it has none. Per-relay figures (chunk count, bytes stored) are filled in when
the relays report them, and are ``null`` until then.
"""

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from treescale.config import NodeConfig, Topology
from treescale.topology_change import placement_digest

UP = "up"
DOWN = "down"


@dataclass(frozen=True)
class NodeState:
    """One node of the tree as the status document shows it."""

    name: str
    id: int
    parent: str | None
    roles: tuple[str, ...]
    domain: str
    weight: float
    state: str
    chunks: int | None = None
    bytes: int | None = None
    drain: bool = False


def node_state(
    node: NodeConfig, up: bool, figures: Mapping[str, Any] | None = None
) -> NodeState:
    """A node's entry, with the figures its relay reported, if any."""
    known = figures or {}
    return NodeState(
        name=node.name,
        id=node.id,
        parent=node.parent,
        roles=tuple(sorted(node.roles)),
        domain=node.domain,
        weight=node.weight,
        state=UP if up else DOWN,
        chunks=_count(known.get("chunks")),
        bytes=_count(known.get("bytes")),
        drain=node.drain,
    )


def _count(value: object) -> int | None:
    """A reported figure, kept only when it is a plain non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def tree_status(
    topology: Topology,
    me: str,
    reachable: Callable[[str], bool],
    figures: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The status document: this node, the cluster, the `placement_digest` this
    node places keys by, and every node's state."""
    reported = figures or {}
    nodes = [
        node_state(node, reachable(node.name), reported.get(node.name))
        for node in topology.nodes
    ]
    stores = [node for node in nodes if "store" in node.roles]
    return {
        "node": me,
        "cluster": topology.cluster,
        "replicas": topology.replicas,
        "placement": placement_digest(topology),
        "relays": len(stores),
        "relays_up": sum(node.state == UP for node in stores),
        "tree": [asdict(node) for node in nodes],
    }
