"""Taking an edited topology file into a running process, on SIGHUP.

The process re-reads the file it started from, has
`treescale.topology_change.review_edit` judge the edit against what it runs, and
either hands the new tree to every bus node it runs or refuses the edit whole: one
log line either way, naming the file, node and field of a refusal. The outcome is
also written to ``DATA_DIR/reload-<pid>.json`` so `treescale reload` can tell the
operator at the terminal.
"""

import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from treescale.bus.node import BusNode
from treescale.bus.tls import plain_bus_refusal
from treescale.config import ConfigError, Topology, load
from treescale.topology_change import Edit, review_edit

log = Logger()

OUTCOME_PREFIX = "reload-"


def outcome_path(data_dir: Path, pid: int) -> Path:
    """Where the process `pid` writes the outcome of its latest reload."""
    return Path(data_dir) / f"{OUTCOME_PREFIX}{pid}.json"


@dataclass(frozen=True)
class Outcome:
    """What became of one reload: applied or refused, and the one line saying it."""

    applied: bool
    message: str
    version: int
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "message": self.message,
            "version": self.version,
            "at": self.at,
            "pid": os.getpid(),
        }


class Reloader:
    """Re-reads one process's topology file and applies it to its bus nodes."""

    def __init__(
        self,
        topology: Topology,
        buses: Sequence[BusNode],
        data_dir: Path | str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`data_dir` is the override the process started with, if any."""
        self.topology = topology
        self.buses = list(buses)
        self.data_dir = data_dir
        self.clock = clock

    def reload(self) -> Outcome:
        """Take the file as it is now, or refuse it and change nothing."""
        judged = self._judge()
        if isinstance(judged, str):
            log.error(
                "topology reload refused, the tree goes on unchanged at version "
                "{version}: {why}",
                version=self.topology.version,
                why=judged,
                source=str(self.topology.source),
            )
            return self._outcome(False, f"refused: {judged}", self.topology.version)

        new, edit = judged
        for bus in self.buses:
            bus.apply_topology(new)
        self.topology = new
        log.info(
            "topology reloaded from {source}: {edit}",
            source=str(new.source),
            edit=edit.describe(),
            version=new.version,
        )
        return self._outcome(True, f"applied {edit.describe()}", new.version)

    def _judge(self) -> tuple[Topology, Edit] | str:
        """The edited tree and what changed, or why the process cannot take it."""
        try:
            new = load(self.topology.source, self.data_dir)
        except ConfigError as e:
            return str(e)
        why = plain_bus_refusal(new)
        if why is not None:
            return why
        try:
            return new, review_edit(self.topology, new, [b.me.name for b in self.buses])
        except ConfigError as e:
            return str(e)

    def _outcome(self, applied: bool, message: str, version: int) -> Outcome:
        outcome = Outcome(applied, message, version, self.clock())
        path = outcome_path(self.topology.data_dir, os.getpid())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(outcome.to_json()) + "\n")
            temporary.replace(path)
        except OSError as e:
            log.warn("cannot write {path}: {why}", path=str(path), why=str(e))
        return outcome


def reload_on_hangup(reloader: Reloader, reactor: Any) -> None:
    """Reload when the process gets SIGHUP (``systemctl reload``, `treescale
    reload`); the signal only schedules it, the reactor thread does the work."""

    def hangup(_signal: int, _frame: object) -> None:
        reactor.callFromThread(reloader.reload)

    signal.signal(signal.SIGHUP, hangup)
