"""The ``[tls]`` table of the topology file: where each node finds its credentials.

    [tls]
    ca = "certs/ca.pem"          # the cluster's CA: the only authority a peer may use
    cert = "certs/{node}.pem"    # this node's certificate; {node} is its name
    key = "certs/{node}.key"     # and its private key

Relative paths are relative to the topology file's folder. The table is all or
nothing: with it every bus link is mutually authenticated TLS, without it the bus is
plain TCP, which `treescale.bus.tls.plain_bus_refusal` allows on loopback only.

A node's certificate names it by one DNS-ID, ``<node>.<cluster>.treescale`` (see
`node_identity`), so with TLS on, node names and the cluster name must each be one
DNS label. The check is here, once, so that a name no certificate could carry is an
error of the file, not a link that never comes up.

This module must not import `treescale.config`: the topology parser calls it.
"""

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treescale.config_error import ConfigError

TLS_FIELDS = frozenset({"ca", "cert", "key"})
NODE_PLACEHOLDER = "{node}"
IDENTITY_SUFFIX = "treescale"

# One DNS label, lower case: DNS-IDs compare without case, so "Relay" and "relay"
# would be one identity; refusing capitals keeps one name, one certificate.
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class TlsFiles:
    """The three files one node reads to speak TLS on the bus."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsSettings:
    """The ``[tls]`` table: paths, the certificate and key ones per node."""

    ca: Path = dataclasses.field(
        metadata={
            "doc": "the cluster's CA certificate (PEM): the only authority a peer's "
            "certificate may come from"
        }
    )
    cert: str = dataclasses.field(
        metadata={
            "doc": "this node's certificate (PEM); {node} is replaced by the node's "
            "name, so one file serves every host"
        }
    )
    key: str = dataclasses.field(
        metadata={"doc": "this node's private key (PEM); {node} as in cert"}
    )

    def files_for(self, node: str) -> TlsFiles:
        """The files of node `node`, with its name put in the templates."""
        return TlsFiles(
            ca=self.ca,
            cert=Path(self.cert.replace(NODE_PLACEHOLDER, node)),
            key=Path(self.key.replace(NODE_PLACEHOLDER, node)),
        )


def node_identity(cluster: str, node: str) -> str:
    """The DNS-ID a certificate of node `node` of cluster `cluster` carries."""
    return f"{node}.{cluster}.{IDENTITY_SUFFIX}"


def parse_tls_settings(raw: object, source: Path) -> TlsSettings:
    """Validate the decoded ``[tls]`` table of the topology file `source`."""
    if not isinstance(raw, dict):
        raise ConfigError(source, None, "tls", "must be a table")
    _check_known(raw, source)
    folder = source.parent
    return TlsSettings(
        ca=folder / _path_text(raw, "ca", source, templated=False),
        cert=str(folder / _path_text(raw, "cert", source, templated=True)),
        key=str(folder / _path_text(raw, "key", source, templated=True)),
    )


def check_tls_names(cluster: str, nodes: Iterable[str], source: Path) -> None:
    """Every name that goes into a DNS-ID must be one lower-case DNS label."""
    if not _LABEL.match(cluster):
        raise ConfigError(
            source,
            None,
            "cluster.name",
            f"{cluster!r} cannot be part of a certificate's name: with [tls] it "
            "must be lower-case letters, digits and '-' (at most 63)",
        )
    for node in nodes:
        if not _LABEL.match(node):
            raise ConfigError(
                source,
                node,
                "name",
                "with [tls] a node name is part of its certificate's name: use "
                "lower-case letters, digits and '-' (at most 63), no '.' or '_'",
            )


def _check_known(table: Mapping[str, Any], source: Path) -> None:
    for field in sorted(set(table) - TLS_FIELDS):
        close = difflib.get_close_matches(field, TLS_FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            source,
            None,
            f"tls.{field}",
            f"unknown field{hint} (known: {', '.join(sorted(TLS_FIELDS))})",
        )
    for field in sorted(TLS_FIELDS - set(table)):
        raise ConfigError(
            source, None, f"tls.{field}", "missing: [tls] needs ca, cert and key"
        )


def _path_text(
    table: Mapping[str, Any], field: str, source: Path, *, templated: bool
) -> str:
    """A non-empty path; only cert and key may hold ``{node}``, and nothing else."""
    value = table[field]
    if not isinstance(value, str) or not value:
        raise ConfigError(source, None, f"tls.{field}", "a non-empty path is required")
    rest = value.replace(NODE_PLACEHOLDER, "") if templated else value
    if "{" in rest or "}" in rest:
        allowed = f"only {NODE_PLACEHOLDER} may appear" if templated else "no {...}"
        raise ConfigError(
            source, None, f"tls.{field}", f"{value!r}: {allowed} in this path"
        )
    return value
