"""How garbage collection runs: the fields of a ``[gc]`` table."""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treescale.config_error import ConfigError
from treescale.settings_fields import bounded, documented, parse_fields

DAY = 86400.0


@dataclass(frozen=True)
class GcSettings:
    """How a collection runs; every field may be set in a ``[gc]`` table."""

    grace: float = bounded(
        3600.0,
        60.0,
        30 * DAY,
        "seconds a blob or chunk is kept after its last write even when nothing "
        "references it, so uploads in progress are never collected",
    )
    purge_tombstones: bool = documented(
        False, "whether a collection also removes tombstones past the horizon"
    )
    tombstone_horizon: float = bounded(
        30 * DAY,
        DAY,
        3650 * DAY,
        "seconds a deletion's tombstone is kept; longer than any relay stays away",
    )
    records_per_second: float = bounded(
        200.0, 1.0, 100_000.0, "records read or deleted per second, at most"
    )
    chunk_pages_per_second: float = bounded(
        5.0, 0.1, 1000.0, "pages of a relay's chunks listed or swept per second"
    )
    page_size: int = bounded(500, 1, 1000, "keys or chunks asked for at once")


def parse_gc_settings(table: Mapping[str, Any], source: Path) -> GcSettings:
    """The settings of a topology file's ``[gc]`` table."""

    def fail(where: str, why: str) -> ConfigError:
        return ConfigError(source, None, where, why)

    return GcSettings(**parse_fields(GcSettings, table, "gc", fail))
