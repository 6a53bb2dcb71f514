"""The limits and switches of the HTTP API, and their ``[registry]`` table.

Every limit the API enforces is a field here with its default, and an operator may
set any of them in the topology file's ``[registry]`` table. Each field states its
bounds in its metadata, so the parser checks what an operator wrote without a
second list of rules.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treescale.config_error import ConfigError
from treescale.registry.manifests import DEFAULT_MAX_MANIFEST_SIZE
from treescale.registry.names import DEFAULT_MAX_NAME_LENGTH
from treescale.settings_fields import bounded, documented, parse_fields

MiB = 1024 * 1024


@dataclass(frozen=True)
class RegistrySettings:
    """The limits of the HTTP API."""

    max_name_length: int = bounded(
        DEFAULT_MAX_NAME_LENGTH, 1, 4096, "longest repository name accepted"
    )
    max_manifest_size: int = bounded(
        DEFAULT_MAX_MANIFEST_SIZE,
        4 * MiB,
        64 * MiB,
        "largest manifest accepted, in bytes (the spec asks for at least 4 MiB)",
    )
    max_upload_sessions: int = bounded(
        1024, 1, 1_000_000, "upload sessions open at once on this node"
    )
    max_upload_sessions_per_client: int = bounded(
        64,
        1,
        1_000_000,
        "upload sessions one client (by peer address) may hold open at once",
    )
    upload_idle_timeout: float = bounded(
        3600.0, 1.0, 7 * 86400.0, "seconds an upload session may go unused"
    )
    max_tags_page: int = bounded(
        1000, 1, 100_000, "most tags one tags/list answer holds; more are paged"
    )
    max_catalog_page: int = bounded(
        1000, 1, 100_000, "most repositories one _catalog answer holds"
    )
    max_referrers: int = bounded(
        1000, 1, 100_000, "most descriptors one referrers answer holds"
    )
    max_referrer_descriptor: int = bounded(
        64 * 1024,
        1024,
        512 * 1024,
        "bytes a referrer's descriptor may take with its annotations; past it "
        "the annotations are left out of referrers answers",
    )
    body_piece_size: int = bounded(
        64 * 1024, 1024, 16 * MiB, "bytes of a buffered body fed to an upload at once"
    )
    chunk_min_length: int = bounded(
        4 * MiB,
        1,
        1024 * MiB,
        "OCI-Chunk-Min-Length advertised to clients that upload in chunks "
        "(a hint: smaller chunks are still taken)",
    )
    client_idle_timeout: float = bounded(
        60.0,
        1.0,
        86400.0,
        "seconds a connection may send nothing while the registry waits for it "
        "(between requests, or mid-body)",
    )
    header_timeout: float = bounded(
        30.0, 1.0, 3600.0, "seconds a client has to send a request's line and headers"
    )
    min_body_rate: int = bounded(
        1024,
        0,
        1024 * MiB,
        "bytes per second a request body must average over body_rate_window; "
        "a slower client is dropped (0: no minimum)",
    )
    body_rate_window: float = bounded(
        30.0, 1.0, 3600.0, "seconds over which a body's rate is measured"
    )
    delete_enabled: bool = documented(
        True, "DELETE of tags, manifests and blobs (405 when off)"
    )


def parse_registry_settings(
    table: Mapping[str, Any], source: Path, **defaults: Any
) -> RegistrySettings:
    """The settings of a ``[registry]`` table; `defaults` replace the built-in
    defaults of fields the table leaves out (the cluster's chunk size, say)."""

    def fail(where: str, why: str) -> ConfigError:
        return ConfigError(source, None, where, why)

    values = parse_fields(RegistrySettings, table, "registry", fail)
    return RegistrySettings(**{**defaults, **values})
