"""What changed between two topologies, and whether a running tree can take it.

Pure functions over `Topology` values: the reload of a running process
(`treescale.service`) and the bus handshake (`treescale.bus.node`) both decide
here, so the rules live in one place and are tested without sockets.
"""

import hashlib
import json

from treescale.config import Topology

__all__ = ["placement_digest"]


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
