"""What a relay's scrub decides about one chunk, and how fast it may go: pure policy.

Nothing here does I/O. `Scrubber` (in `treescale.store.scrub`) feeds these classes
what it saw (a peer answered or not, a chunk's size) and acts on what they answer.
"""

# How the relays share the work of keeping every chunk at its replica count.
#
# Placement ranks every relay for a chunk; its homes are the first `replicas` of
# that rank. A relay that is unreachable for a short while (a restart) is expected
# back: its copies are presumed still there. One that stays unreachable for
# `gone_after` seconds is *gone*: the chunk's *effective homes* are then the first
# `replicas` relays of the rank that are not gone, which are also where the
# registry's puts land while it is away.
#
# Each relay walks only its own disk. For each chunk it holds, it asks the other
# effective homes whether they hold it too, and one holder copies it to those that
# do not: the first effective home that holds it (in rank order) or, when no
# effective home holds it, every holder that is not one. So two homes never both
# copy a chunk, and a chunk left only on fallback relays is still brought home.
# Copies are never deleted here: a relay that comes back keeps serving what it
# holds, and garbage collection is another matter.

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum


class PeerState(Enum):
    """What the scrub believes of another relay."""

    UP = "up"
    DOWN = "down"
    GONE = "gone"


@dataclass
class _Peer:
    down_since: float | None = None
    last_asked: float = float("-inf")


class PeerHealth:
    """The scrub's view of the other relays, from how its requests to them went.

    A relay is up until a request to it fails; it is then down, and presumed to
    hold what it held, without being asked, for `recheck_after` seconds at a time.
    After `gone_after` seconds of failures without an answer it is gone. Any answer
    makes it up again.
    """

    def __init__(self, recheck_after: float, gone_after: float) -> None:
        self.recheck_after = recheck_after
        self.gone_after = gone_after
        self._peers: dict[str, _Peer] = {}

    def state(self, name: str, now: float) -> PeerState:
        """Up, down or gone, as of `now`."""
        peer = self._peers.get(name)
        if peer is None or peer.down_since is None:
            return PeerState.UP
        if now - peer.down_since >= self.gone_after:
            return PeerState.GONE
        return PeerState.DOWN

    def should_ask(self, name: str, now: float) -> bool:
        """Whether to send `name` a request now, rather than presume its answer."""
        peer = self._peers.get(name)
        if peer is None or peer.down_since is None:
            return True
        return now - peer.last_asked >= self.recheck_after

    def asked(self, name: str, now: float) -> None:
        """A request is going to `name` now."""
        self._peers.setdefault(name, _Peer()).last_asked = now

    def may_ask_now(self, name: str) -> None:
        """`name` has come within reach of the bus: the next request may go to
        it at once instead of after `recheck_after` (it is not up until it
        answers)."""
        peer = self._peers.get(name)
        if peer is not None:
            peer.last_asked = float("-inf")

    def answered(self, name: str) -> bool:
        """`name` answered; whether it was down until now."""
        peer = self._peers.setdefault(name, _Peer())
        was_down = peer.down_since is not None
        peer.down_since = None
        return was_down

    def failed(self, name: str, now: float) -> bool:
        """A request to `name` got no answer; whether it was up until now."""
        peer = self._peers.setdefault(name, _Peer())
        peer.last_asked = now
        if peer.down_since is None:
            peer.down_since = now
            return True
        return False

    def not_up(self, now: float) -> dict[str, str]:
        """Every relay that is down or gone, with its state's name."""
        states = {name: self.state(name, now) for name in self._peers}
        return {n: s.value for n, s in sorted(states.items()) if s is not PeerState.UP}


def effective_homes(
    ranked: Sequence[str],
    replicas: int,
    me: str,
    health: PeerHealth,
    now: float,
) -> list[str]:
    """The relays that should hold a chunk now: the first `replicas` of its search
    order (`ranked`, homes first) that are not gone. This relay is never gone to
    itself."""
    homes: list[str] = []
    for name in ranked:
        if len(homes) == replicas:
            break
        if name == me or health.state(name, now) is not PeerState.GONE:
            homes.append(name)
    return homes


def copy_targets(
    me: str, homes: Sequence[str], holds: Mapping[str, bool | None]
) -> list[str]:
    """The effective homes this relay, which holds a good copy, must copy to.

    `holds` says, for each other home, whether it holds a good copy (True), does
    not (False) or is presumed to (None: down, not asked). This relay copies when
    it is the first home holding the chunk, or when it is not a home and no home
    holds it; otherwise another holder's scrub does.
    """
    lacking = [name for name in homes if name != me and holds.get(name) is False]
    if not lacking:
        return []

    holders = [name for name in homes if name == me or holds.get(name) in (True, None)]
    if me in homes:
        return lacking if holders and holders[0] == me else []
    return lacking if not holders else []


class Pacer:
    """Spaces out work so it stays under a rate of items and a rate of bytes.

    Each item costs the longer of ``1 / items_per_second`` and ``nbytes /
    bytes_per_second`` seconds; `reserve` says how long to wait before starting
    the next one. Time not used while idle is not saved up, so a scrub that was
    paused never bursts.
    """

    def __init__(self, items_per_second: float, bytes_per_second: float) -> None:
        if items_per_second <= 0 or bytes_per_second <= 0:
            raise ValueError("rates must be positive")
        self.items_per_second = items_per_second
        self.bytes_per_second = bytes_per_second
        self._free_at = float("-inf")

    def reserve(self, nbytes: int, now: float) -> float:
        """Book the next item of `nbytes`; the seconds to wait before doing it."""
        start = max(now, self._free_at)
        cost = max(1.0 / self.items_per_second, nbytes / self.bytes_per_second)
        self._free_at = start + cost
        return start - now


@dataclass
class ScrubCounts:
    """What one pass of the scrub (or every pass together) found and did."""

    chunks: int = 0
    nbytes: int = 0
    corrupt: int = 0
    """Copies of this relay that failed their digest (now quarantined)."""
    restored: int = 0
    """Of those, how many were fetched again from another holder."""
    missing: int = 0
    """Copies an effective home lacked (or held at the wrong size)."""
    copied: int = 0
    """Copies this relay made on other relays."""
    failed: int = 0
    """Repairs that could not be made (no good copy, or the target failed)."""
    errors: int = 0
    """Chunks this relay could not read for a reason other than their bytes."""

    def add(self, other: "ScrubCounts") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class ScrubProgress:
    """Where the scrub stands, for the status and the logs."""

    state: str = "waiting"
    passes: int = 0
    pass_started: float | None = None
    cursor: str = ""
    current: ScrubCounts = field(default_factory=ScrubCounts)
    last_pass: ScrubCounts | None = None
    last_pass_ended: float | None = None
    last_pass_seconds: float | None = None
    total: ScrubCounts = field(default_factory=ScrubCounts)
