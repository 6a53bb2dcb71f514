"""The measurements of a run, as values, and how they are kept as JSON.

One `Measurement` is one case: a server, a way of moving a layer, a number of
relays and of clients at once, a link rate (or loopback), a layer size, and the
seconds of each of its runs with what the processes cost. Every figure the
report shows is derived from these by pure functions.
"""

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

LOOPBACK = "loopback"

REFERENCE = "reference"
TREESCALE = "treescale"
TREESCALE_ONE_PROCESS = "treescale, one process"
"""A tree whose nodes all run in one process (the embedded default's way), linked
in memory; measured on loopback only."""

STREAM = "stream"
RANGES = "ranges"
PUSH = "push"


@dataclass(frozen=True)
class Measurement:
    """One case and every run of it."""

    phase: str
    rate: str
    """A tc rate such as ``100mbit``, or ``loopback``."""
    server: str
    method: str
    relays: int
    """Relays of the treescale tree; 0 for the reference."""
    clients: int
    size: int
    """Bytes of the layer each client moves."""
    seconds: list[float]
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    """Per process: the highest peak of any run."""
    rss_before_mib: dict[str, float] = field(default_factory=dict)
    """Per process: its RSS as the first run started."""
    cpu_s: dict[str, float] = field(default_factory=dict)
    """Per process: CPU seconds summed over the runs."""
    cpu_wait_s: dict[str, float] = field(default_factory=dict)
    """Per process: seconds runnable but waiting for a core, summed over runs."""
    client_cpu_s: float = 0.0
    link_mb: list[float] = field(default_factory=list)
    """Per relay link: MB received over it, summed over the runs."""
    pull_seconds: list[float] = field(default_factory=list)
    """Each client's own pull, in seconds, over the runs: for cases whose
    clients pull from different registry nodes (phase ``fanout``)."""

    @property
    def runs(self) -> int:
        return len(self.seconds)

    @property
    def moved(self) -> int:
        """Bytes one run moves: every client's layer."""
        return self.size * self.clients

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def mb_per_s(self) -> float:
        """Throughput of the median run, in MB (10^6 bytes) a second."""
        return self.moved / 1e6 / self.median_seconds

    def _processes(self, *, relays: bool) -> list[str]:
        """The relays' process names, or the one that answers the client: the
        treescale registry node or the reference."""
        return [name for name in self.cpu_s if name.startswith("relay-") == relays]

    def cpu_s_per_gb(self, *, relays: bool = False) -> float:
        """CPU seconds per GB moved, of the process that answers the client or of
        every relay together."""
        total = sum(self.cpu_s[name] for name in self._processes(relays=relays))
        return total / (self.moved * self.runs / 1e9)

    def share_of_wall(self, values: dict[str, float], name: str) -> float:
        """One process's CPU (or wait) seconds over the runs' wall seconds."""
        return values.get(name, 0.0) / sum(self.seconds)

    @property
    def client_cpu_s_per_gb(self) -> float:
        return self.client_cpu_s / (self.moved * self.runs / 1e9)

    def peak_rss(self, *, relays: bool = False) -> tuple[float, float]:
        """The highest peak RSS, MiB, of the process that answers the client or of
        any relay, with that process's RSS as the case started."""
        names = self._processes(relays=relays)
        peaks = [
            (self.peak_rss_mib.get(name, 0.0), self.rss_before_mib.get(name, 0.0))
            for name in names
        ]
        return max(peaks, default=(0.0, 0.0))


def save(
    measurements: list[Measurement], path: Path, context: dict[str, object]
) -> None:
    """Write the run's context and every measurement as JSON."""
    document = {
        "context": context,
        "measurements": [asdict(measurement) for measurement in measurements],
    }
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


def load(path: Path) -> tuple[list[Measurement], dict[str, object]]:
    """What `save` wrote."""
    document = json.loads(path.read_text())
    measurements = [Measurement(**item) for item in document["measurements"]]
    return measurements, document["context"]
