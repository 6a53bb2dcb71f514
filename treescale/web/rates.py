"""Bytes per second over a node's bus links, for the status page.

Sans-IO: `LinkRates.sample` is handed each link's byte counters and the time, and
keeps the rate between the last two samples; the registry node samples on a timer
(`treescale.service`).
"""

from collections.abc import Mapping
from dataclasses import dataclass

SAMPLE_INTERVAL = 2.0
"""Seconds between samples of the link counters."""


@dataclass(frozen=True)
class Rate:
    """Bytes per second one way and the other over one link, seen from here."""

    sent: float
    received: float

    def to_json(self) -> dict[str, float]:
        return {"sent": round(self.sent, 1), "received": round(self.received, 1)}


class LinkRates:
    """The latest rate of each link, from counters that only grow while a link
    lives (a link made again starts from zero: that sample is skipped)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int, int]] = {}
        self._rates: dict[str, Rate] = {}

    def sample(self, now: float, counters: Mapping[str, tuple[int, int]]) -> None:
        """Take each link's (sent, received) byte counts at time `now`."""
        for peer, (sent, received) in counters.items():
            before = self._last.get(peer)
            self._last[peer] = (now, sent, received)
            if before is None:
                continue
            then, sent_then, received_then = before
            if now <= then or sent < sent_then or received < received_then:
                self._rates.pop(peer, None)
                continue
            elapsed = now - then
            self._rates[peer] = Rate(
                (sent - sent_then) / elapsed, (received - received_then) / elapsed
            )
        for gone in set(self._last) - set(counters):
            del self._last[gone]
            self._rates.pop(gone, None)

    def rates(self) -> dict[str, dict[str, float]]:
        """Each link's rate, by peer name, in JSON-ready values."""
        return {peer: rate.to_json() for peer, rate in sorted(self._rates.items())}
