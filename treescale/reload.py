"""Taking an edited topology file into a running process, on SIGHUP.

The process re-reads the file it started from, has
`treescale.topology_change.review_edit` judge the edit against what it runs, and
either hands the new tree to every bus node it runs or refuses the edit whole: one
log line either way, naming the file, node and field of a refusal. The outcome is
also written to ``DATA_DIR/reload-<pid>.json`` so `treescale reload` can tell the
operator at the terminal.

A process started without ``--node`` runs every node of the file on this host, so
it also starts the nodes an edit adds on this host, and stops those it removes; a
process started for named nodes leaves new nodes to their own processes.
"""

import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from treescale.bus.node import BusNode
from treescale.bus.tls import plain_bus_refusal
from treescale.config import ConfigError, NodeConfig, Topology, load
from treescale.topology_change import Edit, review_edit

log = Logger()

OUTCOME_PREFIX = "reload-"

NodeStarter = Callable[[Topology, NodeConfig], BusNode]
"""Builds the services of one node of a topology (`treescale.service`)."""


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
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "message": self.message,
            "version": self.version,
            "at": self.at,
            "source": self.source,
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
        process: MultiService | None = None,
        start_node: NodeStarter | None = None,
    ) -> None:
        """`data_dir` is the override the process started with, if any. Given a
        `start_node`, the process runs every local node: nodes an edit adds on
        this host are started under `process`, and those it removes stopped."""
        self.topology = topology
        self.buses = list(buses)
        self.data_dir = data_dir
        self.clock = clock
        self.process = process
        self.start_node = start_node
        self._edited_data_dir: Path | None = None

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
        stopped = self._stop_removed(new)
        for bus in self.buses:
            bus.apply_topology(new)
        here = stopped + self._start_added(new)
        self.topology = new
        described = edit.describe() + "".join(f"; {line}" for line in here)
        log.info(
            "topology reloaded from {source}: {edit}",
            source=str(new.source),
            edit=described,
            version=new.version,
        )
        return self._outcome(True, f"applied {described}", new.version)

    def _judge(self) -> tuple[Topology, Edit] | str:
        """The edited tree and what changed, or why the process cannot take it."""
        try:
            new = load(self.topology.source, self.data_dir)
        except ConfigError as e:
            return str(e)
        self._edited_data_dir = new.data_dir
        why = plain_bus_refusal(new)
        if why is not None:
            return why
        local = [bus.me.name for bus in self.buses]
        removable = local if self.start_node is not None else []
        try:
            return new, review_edit(self.topology, new, local, removable)
        except ConfigError as e:
            return str(e)

    def _stop_removed(self, new: Topology) -> list[str]:
        """Stop the nodes of this process the edit removed."""
        names = {node.name for node in new.nodes}
        stopped = []
        for bus in [bus for bus in self.buses if bus.me.name not in names]:
            self.buses.remove(bus)
            bus.disownServiceParent()  # type: ignore[no-untyped-call]
            stopped.append(f"{bus.me.name} stopped here")
        return stopped

    def _start_added(self, new: Topology) -> list[str]:
        """Start the nodes the edit added on this host, when this process runs
        every local node; a node that cannot start is named, the rest goes on."""
        if self.start_node is None or self.process is None:
            return []
        running = {bus.me.name for bus in self.buses}
        said = []
        for node in new.local_nodes():
            if node.name in running or node.name in self.topology.parents:
                continue
            try:
                bus = self.start_node(new, node)
                bus.setServiceParent(self.process)  # type: ignore[no-untyped-call]
            except (CannotListenError, SystemExit) as e:
                log.error(
                    "topology reload: cannot start {node} here: {why}",
                    node=node.name,
                    why=str(e) or "see the line above",
                )
                said.append(f"{node.name} could not start here")
                continue
            self.buses.append(bus)
            said.append(f"{node.name} started here")
        return said

    def _outcome(self, applied: bool, message: str, version: int) -> Outcome:
        source = str(Path(self.topology.source).resolve())
        outcome = Outcome(applied, message, version, self.clock(), source)
        # Written where the file now says too, when an edit of data_dir (which
        # is refused) moved it: `treescale reload` looks there.
        folders = [Path(self.topology.data_dir)]
        edited = self._edited_data_dir
        if edited is not None and Path(edited) != folders[0]:
            folders.append(Path(edited))
        for folder in folders:
            _write_outcome(outcome_path(folder, os.getpid()), outcome)
        return outcome


def _write_outcome(path: Path, outcome: Outcome) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(outcome.to_json()) + "\n")
        temporary.replace(path)
    except OSError as e:
        log.warn("cannot write {path}: {why}", path=str(path), why=str(e))


def reload_on_hangup(reloader: Reloader, reactor: Any) -> None:
    """Reload when the process gets SIGHUP (``systemctl reload``, `treescale
    reload`); the signal only schedules it, the reactor thread does the work."""

    def hangup(_signal: int, _frame: object) -> None:
        reactor.callFromThread(reloader.reload)

    signal.signal(signal.SIGHUP, hangup)
