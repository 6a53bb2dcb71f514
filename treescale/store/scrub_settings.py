"""How a relay's scrub runs: its settings, their bounds, and where they are read.

Apart from `treescale.store.scrub` so that the topology file's reader can hold a
``[scrub]`` table without importing the bus.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from treescale.config_error import ConfigError
from treescale.settings_fields import bounded, documented, parse_fields

MiB = 1024 * 1024


@dataclass(frozen=True)
class ScrubSettings:
    """How a relay's scrub runs; every field may be set in a ``[scrub]`` table."""

    enabled: bool = documented(True, "whether this relay scrubs at all")
    bytes_per_second: int = bounded(
        32 * MiB, 64 * 1024, 16 * 1024 * MiB, "chunk bytes read per second, at most"
    )
    chunks_per_second: float = bounded(
        100.0, 0.1, 100_000.0, "chunks checked per second, at most"
    )
    pass_interval: float = bounded(
        3600.0,
        1.0,
        30 * 86400.0,
        "seconds from the start of one pass to the start of the next",
    )
    start_delay: float = bounded(
        30.0, 0.0, 86400.0, "seconds after start-up before the first pass"
    )
    gone_after: float = bounded(
        600.0,
        1.0,
        30 * 86400.0,
        "seconds a relay must stay unreachable before its copies are made again "
        "elsewhere (a restart should take less)",
    )
    recheck_after: float = bounded(
        30.0, 0.5, 3600.0, "seconds a relay found down is presumed so before asking"
    )
    request_timeout: float = bounded(
        10.0, 0.5, 600.0, "seconds the scrub waits for another relay's answer"
    )
    status_interval: float = bounded(
        10.0, 0.5, 3600.0, "seconds between updates of the scrub's status record"
    )
    page_size: int = bounded(256, 1, 100_000, "chunks listed from disk at a time")


SETTINGS_VARIABLE = "TREESCALE_SCRUB"
"""An environment variable holding a JSON object of `ScrubSettings` fields, which
override the topology's for the relays of this process (tests use it for a fast
scrub)."""


def settings_from_environment(
    environment: Mapping[str, str], base: ScrubSettings = ScrubSettings()
) -> ScrubSettings:
    """`base` with the fields `SETTINGS_VARIABLE` sets; `base` when it is unset."""
    raw = environment.get(SETTINGS_VARIABLE)
    if not raw:
        return base
    try:
        table = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{SETTINGS_VARIABLE}: not JSON: {e}") from e
    if not isinstance(table, dict):
        raise ValueError(f"{SETTINGS_VARIABLE}: must be a JSON object")
    return replace(base, **parse_fields(ScrubSettings, table, "scrub", _env_failure))


def _env_failure(where: str, why: str) -> ValueError:
    return ValueError(f"{SETTINGS_VARIABLE}: {where}: {why}")


def parse_scrub_settings(table: Mapping[str, Any], source: Path) -> ScrubSettings:
    """The settings of a topology file's ``[scrub]`` table."""

    def fail(where: str, why: str) -> ConfigError:
        return ConfigError(source, None, where, why)

    return ScrubSettings(**parse_fields(ScrubSettings, table, "scrub", fail))
