"""How a relay's rebalance runs: its settings, their bounds, and where they are read.

Apart from `treescale.store.rebalance` so that the topology file's reader can hold a
``[rebalance]`` table without importing the bus.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treescale.config_error import ConfigError
from treescale.settings_fields import bounded, parse_fields

MiB = 1024 * 1024


@dataclass(frozen=True)
class RebalanceSettings:
    """How a relay moves what it holds to the relays placement now chooses; every
    field may be set in a ``[rebalance]`` table."""

    bytes_per_second: int = bounded(
        50 * MiB, 64 * 1024, 16 * 1024 * MiB, "chunk bytes moved per second, at most"
    )
    chunks_per_second: float = bounded(
        200.0, 0.1, 100_000.0, "chunks and records moved per second, at most"
    )
    recheck_interval: float = bounded(
        30.0,
        0.5,
        86400.0,
        "seconds between passes while the last one left work (a relay that did "
        "not answer, a copy that failed)",
    )
    start_delay: float = bounded(
        5.0,
        0.0,
        3600.0,
        "seconds after start-up, or after a topology edit, before a pass starts "
        "(time for the bus links to come up)",
    )
    request_timeout: float = bounded(
        10.0, 0.5, 600.0, "seconds the rebalance waits for another relay's answer"
    )
    status_interval: float = bounded(
        5.0, 0.5, 3600.0, "seconds between updates of the rebalance's status record"
    )
    page_size: int = bounded(256, 1, 100_000, "chunks or records listed at a time")


def parse_rebalance_settings(
    table: Mapping[str, Any], source: Path
) -> RebalanceSettings:
    """The settings of a topology file's ``[rebalance]`` table."""

    def fail(where: str, why: str) -> ConfigError:
        return ConfigError(source, None, where, why)

    return RebalanceSettings(
        **parse_fields(RebalanceSettings, table, "rebalance", fail)
    )
