"""The limits and switches of the HTTP API, and their ``[registry]`` table.

Every limit the API enforces is a field here with its default, and an operator may
set any of them in the topology file's ``[registry]`` table. Each field states its
bounds in its metadata, so the parser checks what an operator wrote without a
second list of rules.
"""

import difflib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from treescale.config_error import ConfigError
from treescale.registry.manifests import DEFAULT_MAX_MANIFEST_SIZE
from treescale.registry.names import DEFAULT_MAX_NAME_LENGTH

MiB = 1024 * 1024


def _bounded(default: Any, low: float, high: float, doc: str) -> Any:
    """A settings field with a default, bounds and the sentence the docs show."""
    return field(default=default, metadata={"bounds": (low, high), "doc": doc})


@dataclass(frozen=True)
class RegistrySettings:
    """The limits of the HTTP API."""

    max_name_length: int = _bounded(
        DEFAULT_MAX_NAME_LENGTH, 1, 4096, "longest repository name accepted"
    )
    max_manifest_size: int = _bounded(
        DEFAULT_MAX_MANIFEST_SIZE,
        4 * MiB,
        64 * MiB,
        "largest manifest accepted, in bytes (the spec asks for at least 4 MiB)",
    )
    max_upload_sessions: int = _bounded(
        1024, 1, 1_000_000, "upload sessions open at once on this node"
    )
    upload_idle_timeout: float = _bounded(
        3600.0, 1.0, 7 * 86400.0, "seconds an upload session may go unused"
    )
    max_tags_page: int = _bounded(
        1000, 1, 100_000, "most tags one tags/list answer holds; more are paged"
    )
    max_catalog_page: int = _bounded(
        1000, 1, 100_000, "most repositories one _catalog answer holds"
    )
    max_referrers: int = _bounded(
        1000, 1, 100_000, "most descriptors one referrers answer holds"
    )
    max_referrer_descriptor: int = _bounded(
        64 * 1024,
        1024,
        512 * 1024,
        "bytes a referrer's descriptor may take with its annotations; past it "
        "the annotations are left out of referrers answers",
    )
    body_piece_size: int = _bounded(
        64 * 1024, 1024, 16 * MiB, "bytes of a buffered body fed to an upload at once"
    )
    chunk_min_length: int = _bounded(
        4 * MiB,
        1,
        1024 * MiB,
        "OCI-Chunk-Min-Length advertised to clients that upload in chunks "
        "(a hint: smaller chunks are still taken)",
    )
    delete_enabled: bool = field(
        default=True,
        metadata={"doc": "DELETE of tags, manifests and blobs (405 when off)"},
    )


def parse_registry_settings(
    table: Mapping[str, Any], source: Path, **defaults: Any
) -> RegistrySettings:
    """The settings of a ``[registry]`` table; `defaults` replace the built-in
    defaults of fields the table leaves out (the cluster's chunk size, say)."""
    known = {spec.name: spec for spec in fields(RegistrySettings)}
    for name in sorted(set(table) - set(known)):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(source, None, f"registry.{name}", f"unknown field{hint}")

    values = dict(defaults)
    for name, value in table.items():
        spec = known[name]
        default = spec.default if spec.default is not MISSING else None
        values[name] = _checked(name, value, default, spec.metadata, source)
    return RegistrySettings(**values)


def _checked(
    name: str, value: object, default: object, metadata: Mapping[str, Any], source: Path
) -> object:
    """One field's value, of its default's type and within its bounds."""
    where = f"registry.{name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(source, None, where, "must be true or false")
        return value

    wanted = float if isinstance(default, float) else int
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(source, None, where, f"must be a number, not {value!r}")
    if wanted is int and not isinstance(value, int):
        raise ConfigError(source, None, where, f"must be a whole number, not {value}")

    low, high = metadata["bounds"]
    if not low <= value <= high:
        raise ConfigError(source, None, where, f"{value} is not in {low}..{high}")
    return wanted(value)
