"""Which relays hold a key (a chunk digest, a record key): pure placement functions.

Cost is O(holders) hashes per key; callers placing many keys over a fixed holder list
may cache the answers.
"""

# Weighted rendezvous hashing, the design in brief.
#
# Every (key, holder) pair gets a score from a hash of the two, and a key lives on
# its best-scoring holders. A holder's score for a key never depends on the other
# holders, so adding one changes only the keys it now outscores the others for, and
# removing one changes only the keys it held: no ring to rebalance, no state to
# share, every node computes the same answer from the same topology.
#
# The score is -weight / ln(u), with u uniform in (0, 1) from the hash. The chance
# that a holder beats all the others is then exactly its weight over the total, so a
# relay of weight 2 gets twice the keys of one of weight 1.
#
# Replicas go to distinct failure domains where there are enough of them, so losing
# one rack (or host, or zone) never loses every copy of a key.

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from treescale.config import Topology

_MANTISSA_BITS = 52


@dataclass(frozen=True)
class Holder:
    """A relay that may hold keys, as placement sees it.

    `weight` is its share of keys relative to the others (its capacity); `domain`
    names what it fails together with, and a holder with none is a domain of its own.
    A `draining` holder is home to no key: it is still searched (last), since it
    keeps what it held until its keys have moved.
    """

    name: str
    weight: float = 1.0
    domain: str = ""
    draining: bool = False

    def __post_init__(self) -> None:
        """Refuse weights that would make scores meaningless."""
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"holder {self.name!r}: weight must be > 0")


def holders_of(topology: "Topology") -> list[Holder]:
    """Every store node of a topology as placement sees it."""
    return [
        Holder(node.name, node.weight, node.domain, node.drain)
        for node in topology.stores
    ]


def _domain_of(holder: Holder) -> str:
    """The failure domain a holder belongs to, its own name when it states none."""
    return holder.domain or holder.name


def _unit(key: str, name: str) -> float:
    """A number uniform in the open interval (0, 1), fixed by the key and the name.

    Both strings are length-prefixed before hashing so that no two different pairs
    feed the hash the same bytes.
    """
    key_bytes = key.encode("utf-8")
    name_bytes = name.encode("utf-8")
    material = len(key_bytes).to_bytes(8, "big") + key_bytes + name_bytes
    word = int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big")

    # 52 bits keep (2m + 1) / 2**53 exact in a float, strictly between 0 and 1.
    mantissa = word >> (64 - _MANTISSA_BITS)
    return math.ldexp(2 * mantissa + 1, -(_MANTISSA_BITS + 1))


def _score(key: str, holder: Holder) -> float:
    """How strongly a key prefers a holder; higher wins."""
    return -holder.weight / math.log(_unit(key, holder.name))


def rank(key: str, holders: Sequence[Holder]) -> list[Holder]:
    """Every holder, the key's best first; equal scores are ordered by name."""
    names = {holder.name for holder in holders}
    if len(names) != len(holders):
        raise ValueError("holder names must be unique")

    return sorted(holders, key=lambda holder: (-_score(key, holder), holder.name))


def place(key: str, holders: Sequence[Holder], replicas: int) -> list[Holder]:
    """The holders of a key, primary first, in distinct failure domains if possible.

    Walks the rank taking the best holder of each domain not yet used; when there are
    fewer domains than replicas, the rest come from the remaining rank in order. With
    fewer holders than replicas, every holder is returned.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")

    return _homes(rank(key, holders), replicas)


def search_order(key: str, holders: Sequence[Holder], replicas: int) -> list[Holder]:
    """Every holder in the order a key is looked for: its homes (as `place` gives
    them), then the rest of the rank, which holds it only after a fallback write."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")

    ranked = rank(key, holders)
    homes = _homes(ranked, replicas)
    return homes + [holder for holder in ranked if holder not in homes]


def _homes(ranked: list[Holder], replicas: int) -> list[Holder]:
    """The first `replicas` of a rank, one per failure domain while domains last;
    draining holders are left out."""
    ranked = [holder for holder in ranked if not holder.draining]
    chosen: list[Holder] = []
    domains: set[str] = set()

    for holder in ranked:
        if len(chosen) == replicas:
            return chosen
        if _domain_of(holder) not in domains:
            chosen.append(holder)
            domains.add(_domain_of(holder))

    for holder in ranked:
        if len(chosen) == replicas:
            break
        if holder not in chosen:
            chosen.append(holder)

    return chosen
