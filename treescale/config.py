"""The topology file: every node of one tree, read and checked into frozen values.

The same file is deployed to every host. Each process picks the nodes it runs (see
`Topology.local_nodes`). Validation happens here, once, so the rest of the program can
trust what it is given: exactly one root, no cycles, unique names and ids, every parent
known, addresses that parse, sizes that are positive. A `ConfigError` names the file,
the node and the field, so an operator can fix the line at once.
"""

import contextlib
import dataclasses
import difflib
import ipaddress
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from treescale.auth.settings import AuthSettings, parse_auth
from treescale.bus.tls_settings import TlsSettings, check_tls_names, parse_tls_settings
from treescale.config_error import ConfigError
from treescale.gc.settings import GcSettings, parse_gc_settings
from treescale.ops.settings import (
    LogSettings,
    NotificationSettings,
    parse_log,
    parse_notifications,
)
from treescale.registry.settings import RegistrySettings, parse_registry_settings
from treescale.store.rebalance_settings import (
    RebalanceSettings,
    parse_rebalance_settings,
)
from treescale.store.scrub_settings import ScrubSettings, parse_scrub_settings

__all__ = ["Address", "ConfigError", "NodeConfig", "Topology", "load", "parse"]

ROLES = frozenset({"registry", "store"})
TOP_FIELDS = frozenset(
    {
        "cluster",
        "node",
        "registry",
        "auth",
        "tls",
        "notifications",
        "log",
        "scrub",
        "rebalance",
        "gc",
    }
)

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
DEFAULT_REPLICAS = 2
DEFAULT_RECORD_REPLICAS = 3
DEFAULT_WINDOW = 8
DEFAULT_WINDOW_PER_RELAY = 3
DEFAULT_BUFFER_CHUNKS = 64
DEFAULT_DATA_DIR = "./treescale-data"

# Bounds that keep a typo from taking a node down: a chunk must fit comfortably in
# memory and travel as a handful of bus pieces.
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_WINDOW = 256
MAX_BUFFER_CHUNKS = 65536
MAX_REPLICAS = 16
MAX_NODE_ID = 100_000
MAX_TOPOLOGY_VERSION = 2**31 - 1
MAX_CACHE_SIZE = 2**40


class _Required:
    """The default of a field the file must set."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Setting:
    """One field of the ``[cluster]`` or ``[[node]]`` table.

    These two tables are parsed by hand (their checks reach across fields), so each
    field is stated once here: the parser takes its default and bounds from this
    table, and the configuration reference (`treescale.settings_doc`) prints it.
    """

    name: str
    type: type
    default: Any
    doc: str
    bounds: tuple[int, int] | None = None
    shown_default: str | None = None
    """What the reference shows as the default when it is not a fixed value."""


CLUSTER_SETTINGS = (
    Setting(
        "version",
        int,
        1,
        "the topology's edition: raise it with every edit, so nodes that meet "
        "while an edit rolls out can tell which of them is behind",
        (1, MAX_TOPOLOGY_VERSION),
    ),
    Setting(
        "name",
        str,
        "treescale",
        "name of the cluster: a peer of another cluster is refused, and with [tls] "
        "it is part of every certificate's name",
    ),
    Setting(
        "data_dir",
        str,
        DEFAULT_DATA_DIR,
        "folder under which each store relay keeps its data, in "
        "DATA_DIR/<node name>/; a relative path is relative to the folder twistd "
        "starts in, and twistd's --data-dir overrides it",
    ),
    Setting(
        "chunk_size",
        int,
        DEFAULT_CHUNK_SIZE,
        "bytes a blob is cut into (its last chunk may be shorter)",
        (MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
    ),
    Setting(
        "replicas",
        int,
        DEFAULT_REPLICAS,
        "relays holding each chunk, in distinct failure domains where the tree has "
        "them; a value written may not exceed the store nodes, the default is cut "
        "down to them",
        (1, MAX_REPLICAS),
    ),
    Setting(
        "record_replicas",
        int,
        DEFAULT_RECORD_REPLICAS,
        "relays holding each record (tags, recipes, links, upload sessions); "
        "reads and writes need a majority of them; limited to the store nodes as "
        "replicas is",
        (1, MAX_REPLICAS),
    ),
    Setting(
        "window",
        int,
        DEFAULT_WINDOW,
        "chunks in flight per upload and per download",
        (1, MAX_WINDOW),
    ),
    Setting(
        "window_per_relay",
        int,
        DEFAULT_WINDOW_PER_RELAY,
        "chunks a download keeps in flight per reachable relay, within window: one "
        "relay serves a few chunks at once best (on loopback a pull of one relay "
        "ran 5 to 12% faster with 3 in flight than with 8)",
        (1, MAX_WINDOW),
    ),
    Setting(
        "buffer_chunks",
        int,
        DEFAULT_BUFFER_CHUNKS,
        "chunks a registry node holds in memory for all its transfers together; "
        "at least window",
        (1, MAX_BUFFER_CHUNKS),
    ),
    Setting(
        "insecure_plain_bus",
        bool,
        False,
        "allow a plain TCP bus that is not all loopback: anyone who reaches a bus "
        "port can then join the tree; only for networks private by other means, "
        "and not together with [tls]",
    ),
)

NODE_SETTINGS = (
    Setting(
        "name",
        str,
        REQUIRED,
        "unique name of the node: letters, digits, '-', '_' or '.' (with [tls], "
        "one lower-case DNS label: letters, digits and '-')",
    ),
    Setting(
        "id",
        int,
        REQUIRED,
        "unique number; the node's routing prime is the id-th prime, so keep a "
        "node's id when you edit the tree",
        (1, MAX_NODE_ID),
    ),
    Setting(
        "bus",
        str,
        REQUIRED,
        "HOST:PORT the node's bus listens on (an IPv6 host in brackets); its "
        "children dial it there",
    ),
    Setting(
        "parent",
        str,
        None,
        "name of the node's parent in the tree; exactly one node, the root, has none",
    ),
    Setting(
        "roles",
        list,
        ("store",),
        'what the node does: "registry" serves the HTTP API, "store" keeps '
        "chunks and records on its disk; one or both",
    ),
    Setting(
        "http",
        str,
        None,
        "(registry nodes, required there) Twisted endpoint string the HTTP API "
        'listens on, e.g. "tcp:5000:interface=127.0.0.1"',
    ),
    Setting(
        "weight",
        float,
        1.0,
        "(store nodes) share of chunks and records relative to the other relays; "
        "a positive number",
    ),
    Setting(
        "domain",
        str,
        None,
        "(store nodes) failure domain: copies go to distinct domains where there "
        "are enough of them",
        shown_default="the node's name",
    ),
    Setting(
        "drain",
        bool,
        False,
        "(store nodes) take no new chunks or records and move the ones held to "
        "the other relays; remove the node from the file once it is empty",
    ),
    Setting(
        "cache_size",
        int,
        0,
        "bytes of chunks a node keeps in memory from the chunk replies it passes "
        "towards registry nodes, to answer later requests itself; 0 turns it off",
        (0, MAX_CACHE_SIZE),
    ),
)

CLUSTER_FIELDS = frozenset(setting.name for setting in CLUSTER_SETTINGS)
NODE_FIELDS = frozenset(setting.name for setting in NODE_SETTINGS)
_CLUSTER = {setting.name: setting for setting in CLUSTER_SETTINGS}
_NODE = {setting.name: setting for setting in NODE_SETTINGS}


@dataclass(frozen=True)
class Address:
    """A host and a port to listen on or dial."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    """One node of the tree as the topology file states it."""

    name: str
    id: int
    bus: Address
    parent: str | None
    roles: frozenset[str]
    http: str | None
    weight: float
    domain: str
    drain: bool = False
    cache_size: int = 0

    @property
    def is_store(self) -> bool:
        return "store" in self.roles

    @property
    def is_registry(self) -> bool:
        return "registry" in self.roles


@dataclass(frozen=True)
class Topology:
    """The whole tree and the cluster-wide settings."""

    source: Path
    cluster: str
    data_dir: Path
    chunk_size: int
    replicas: int
    record_replicas: int
    window: int
    buffer_chunks: int
    nodes: tuple[NodeConfig, ...]
    version: int = 1
    window_per_relay: int = DEFAULT_WINDOW_PER_RELAY
    registry: RegistrySettings = dataclasses.field(default_factory=RegistrySettings)
    auth: AuthSettings = dataclasses.field(default_factory=AuthSettings)
    notifications: NotificationSettings = dataclasses.field(
        default_factory=NotificationSettings
    )
    log: LogSettings = dataclasses.field(default_factory=LogSettings)
    scrub: ScrubSettings = dataclasses.field(default_factory=ScrubSettings)
    rebalance: RebalanceSettings = dataclasses.field(default_factory=RebalanceSettings)
    gc: GcSettings = dataclasses.field(default_factory=GcSettings)
    tls: TlsSettings | None = None
    """The ``[tls]`` table; None leaves the bus plain TCP (loopback only)."""
    insecure_plain_bus: bool = False
    """Plain TCP on a bus that is not all loopback: anyone who reaches a bus port
    can then join the tree. For networks that are private by other means only."""

    def node(self, name: str) -> NodeConfig:
        """The node called `name`; `ConfigError` when the file has none."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(self.source, name, "name", "no such node in this file")

    @property
    def stores(self) -> tuple[NodeConfig, ...]:
        return tuple(node for node in self.nodes if node.is_store)

    @property
    def parents(self) -> dict[str, str | None]:
        return {node.name: node.parent for node in self.nodes}

    def local_nodes(self) -> tuple[NodeConfig, ...]:
        """Every node whose bus address is on this host: the embedded default."""
        return tuple(node for node in self.nodes if is_local_host(node.bus.host))


def load(path: Path | str, data_dir: Path | str | None = None) -> Topology:
    """Read and validate a topology file; `data_dir` overrides the file's setting."""
    source = Path(path)
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(
            source, None, None, f"cannot read the file: {e.strerror}"
        ) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, None, None, f"not valid TOML: {e}") from e
    return parse(raw, source, data_dir)


def parse(
    raw: Mapping[str, Any], source: Path, data_dir: Path | str | None = None
) -> Topology:
    """Validate a decoded topology document."""
    _check_known(raw, TOP_FIELDS, source, None, "")
    cluster = _table(raw.get("cluster", {}), source, None, "cluster")
    _check_known(cluster, CLUSTER_FIELDS, source, None, "cluster.")
    node_tables = raw.get("node")
    if not isinstance(node_tables, list) or not node_tables:
        raise ConfigError(
            source, None, "node", "the file must list at least one [[node]]"
        )

    nodes = tuple(
        _parse_node(table, source, index) for index, table in enumerate(node_tables)
    )
    _check_unique(nodes, source)
    _check_tree(nodes, source)

    chosen_dir = data_dir if data_dir is not None else cluster.get("data_dir")
    topology = Topology(
        source=source,
        cluster=_string(
            cluster.get("name", _CLUSTER["name"].default),
            source,
            None,
            "cluster.name",
        ),
        data_dir=Path(
            _string(
                str(chosen_dir or _CLUSTER["data_dir"].default),
                source,
                None,
                "cluster.data_dir",
            )
        ),
        chunk_size=_cluster_int(cluster, "chunk_size", source),
        replicas=_cluster_int(cluster, "replicas", source),
        record_replicas=_cluster_int(cluster, "record_replicas", source),
        window=_cluster_int(cluster, "window", source),
        buffer_chunks=_cluster_int(cluster, "buffer_chunks", source),
        nodes=nodes,
        version=_cluster_int(cluster, "version", source),
        window_per_relay=_cluster_int(cluster, "window_per_relay", source),
    )
    topology = replace(
        topology,
        registry=parse_registry_settings(
            _table(raw.get("registry", {}), source, None, "registry"),
            source,
            chunk_min_length=topology.chunk_size,
        ),
        auth=parse_auth(raw.get("auth", {}), source, check_files=False),
        notifications=parse_notifications(raw.get("notifications", {}), source),
        log=parse_log(raw.get("log", {}), source),
        scrub=parse_scrub_settings(
            _table(raw.get("scrub", {}), source, None, "scrub"), source
        ),
        rebalance=parse_rebalance_settings(
            _table(raw.get("rebalance", {}), source, None, "rebalance"), source
        ),
        gc=parse_gc_settings(_table(raw.get("gc", {}), source, None, "gc"), source),
    )
    topology = _with_bus_security(topology, raw, cluster)
    _check_stores(topology)
    # A default asks for as many copies as there are stores, up to its value; a
    # number the operator wrote must be possible as written.
    for field in ("replicas", "record_replicas"):
        wanted = getattr(topology, field)
        if field in cluster and wanted > len(topology.stores):
            raise ConfigError(
                source,
                None,
                f"cluster.{field}",
                f"{wanted} copies asked for, but the tree has only "
                f"{len(topology.stores)} store nodes",
            )
    if topology.buffer_chunks < topology.window:
        raise ConfigError(
            source,
            None,
            "cluster.buffer_chunks",
            f"{topology.buffer_chunks} is less than the window ({topology.window}): "
            "one read could never fill its window",
        )
    return topology


def _with_bus_security(
    topology: Topology, raw: Mapping[str, Any], cluster: Mapping[str, Any]
) -> Topology:
    """The ``[tls]`` table and the plain-bus escape hatch, which exclude each other."""
    source = topology.source
    insecure = cluster.get("insecure_plain_bus", _CLUSTER["insecure_plain_bus"].default)
    if not isinstance(insecure, bool):
        raise ConfigError(source, None, "cluster.insecure_plain_bus", "true or false")
    if "tls" not in raw:
        return replace(topology, insecure_plain_bus=insecure)
    if insecure:
        raise ConfigError(
            source,
            None,
            "cluster.insecure_plain_bus",
            "the file has a [tls] table: the bus cannot be TLS and plain at once",
        )
    tls = parse_tls_settings(raw["tls"], source)
    check_tls_names(topology.cluster, (node.name for node in topology.nodes), source)
    return replace(topology, tls=tls)


def _parse_node(table: object, source: Path, index: int) -> NodeConfig:
    node = _table(table, source, f"#{index + 1}", "node")
    name = _string(node.get("name"), source, f"#{index + 1}", "name")
    _check_known(node, NODE_FIELDS, source, name, "")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(source, name, "name", "use letters, digits, '-', '_' or '.'")

    roles_raw = node.get("roles", list(_NODE["roles"].default))
    if not isinstance(roles_raw, list) or not roles_raw:
        raise ConfigError(source, name, "roles", "a non-empty list of roles")
    roles = frozenset(str(role) for role in roles_raw)
    if not roles <= ROLES:
        unknown = ", ".join(sorted(roles - ROLES))
        raise ConfigError(
            source,
            name,
            "roles",
            f"unknown role {unknown}; use 'registry' and/or 'store'",
        )

    http = node.get("http")
    if "registry" in roles and not http:
        raise ConfigError(
            source,
            name,
            "http",
            "a registry node needs an http "
            "endpoint, e.g. 'tcp:5000:interface=127.0.0.1'",
        )
    if http is not None:
        http = _check_endpoint(_string(http, source, name, "http"), source, name)

    parent = node.get("parent")
    weight = node.get("weight", _NODE["weight"].default)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
        raise ConfigError(source, name, "weight", "a positive number")

    return NodeConfig(
        name=name,
        id=_bounded_int(node.get("id"), source, "id", *_bounds(_NODE["id"]), node=name),
        bus=_parse_address(node.get("bus"), source, name),
        parent=None if parent is None else _string(parent, source, name, "parent"),
        roles=roles,
        http=http,
        weight=float(weight),
        domain=_string(node.get("domain", name), source, name, "domain"),
        drain=_flag(node, "drain", source, name),
        cache_size=_bounded_int(
            node.get("cache_size", _NODE["cache_size"].default),
            source,
            "cache_size",
            *_bounds(_NODE["cache_size"]),
            node=name,
        ),
    )


def _flag(table: Mapping[str, Any], field: str, source: Path, node: str) -> bool:
    """A true/false field of a node, its default from the field table."""
    value = table.get(field, _NODE[field].default)
    if not isinstance(value, bool):
        raise ConfigError(source, node, field, "true or false")
    return value


def _cluster_int(cluster: Mapping[str, Any], name: str, source: Path) -> int:
    """A whole-number field of ``[cluster]``, its default and bounds from the table."""
    setting = _CLUSTER[name]
    return _bounded_int(
        cluster.get(name, setting.default),
        source,
        f"cluster.{name}",
        *_bounds(setting),
    )


def _bounds(setting: Setting) -> tuple[int, int]:
    assert setting.bounds is not None, setting.name
    return setting.bounds


def _check_endpoint(description: str, source: Path, node: str) -> str:
    """A Twisted server endpoint string that parses, with a port in range."""
    try:
        endpoint = serverFromString(
            MemoryReactor(),  # type: ignore[no-untyped-call]
            description,
        )
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(
            source, node, "http", f"{description!r} is not a Twisted endpoint: {e}"
        ) from e
    except OSError:
        # An ssl: endpoint reads its certificate as it is parsed. Every host reads
        # every node's entry, but only the node's own host holds its files: that
        # host checks them as the node starts (treescale.service).
        return description
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port < 65536:
        raise ConfigError(source, node, "http", f"port {port} is out of range")
    return description


def _check_known(
    table: Mapping[str, Any],
    known: frozenset[str],
    source: Path,
    node: str | None,
    prefix: str,
) -> None:
    """Refuse fields this program does not know: a typo must not pass unseen."""
    for field in sorted(set(table) - known):
        close = difflib.get_close_matches(field, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        allowed = ", ".join(sorted(known))
        raise ConfigError(
            source, node, prefix + field, f"unknown field{hint} (known: {allowed})"
        )


def _parse_address(value: object, source: Path, node: str) -> Address:
    text = _string(value, source, node, "bus")
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(source, node, "bus", f"{text!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(source, node, "bus", f"port {port} is out of range")
    return Address(host, port)


def _check_unique(nodes: tuple[NodeConfig, ...], source: Path) -> None:
    seen_names: set[str] = set()
    seen_ids: dict[int, str] = {}
    seen_buses: dict[Address, str] = {}
    for node in nodes:
        if node.name in seen_names:
            raise ConfigError(source, node.name, "name", "appears twice")
        if node.id in seen_ids:
            raise ConfigError(
                source,
                node.name,
                "id",
                f"{node.id} is already the id of {seen_ids[node.id]!r}",
            )
        if node.bus in seen_buses:
            raise ConfigError(
                source,
                node.name,
                "bus",
                f"{node.bus} is already used by {seen_buses[node.bus]!r}",
            )
        seen_names.add(node.name)
        seen_ids[node.id] = node.name
        seen_buses[node.bus] = node.name


def _check_tree(nodes: tuple[NodeConfig, ...], source: Path) -> None:
    by_name = {node.name: node for node in nodes}
    roots = [node.name for node in nodes if node.parent is None]
    if len(roots) != 1:
        listed = ", ".join(roots) or "none"
        raise ConfigError(
            source,
            roots[1] if len(roots) > 1 else None,
            "parent",
            f"exactly one node must have no parent (roots: {listed})",
        )

    for node in nodes:
        if node.parent is not None and node.parent not in by_name:
            raise ConfigError(
                source,
                node.name,
                "parent",
                f"{node.parent!r} is not a node of this file",
            )

    for node in nodes:
        path = [node.name]
        current = node
        while current.parent is not None:
            if current.parent in path:
                raise ConfigError(
                    source,
                    node.name,
                    "parent",
                    "cycle: " + " -> ".join([*path, current.parent]),
                )
            path.append(current.parent)
            current = by_name[current.parent]


def _check_stores(topology: Topology) -> None:
    if not topology.stores:
        raise ConfigError(topology.source, None, "roles", "no node has the store role")
    if not any(node.is_registry for node in topology.nodes):
        raise ConfigError(
            topology.source, None, "roles", "no node has the registry role"
        )
    for node in topology.nodes:
        if node.drain and not node.is_store:
            raise ConfigError(
                topology.source, node.name, "drain", "only a store node can drain"
            )
    if all(node.drain for node in topology.stores):
        raise ConfigError(
            topology.source,
            topology.stores[-1].name,
            "drain",
            "every store node drains: no relay would be left to take the chunks",
        )


def _table(value: object, source: Path, node: str | None, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(source, node, field, "must be a table")
    return value


def _string(value: object, source: Path, node: str | None, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(source, node, field, "a non-empty string is required")
    return value


def _bounded_int(
    value: object,
    source: Path,
    field: str,
    low: int,
    high: int,
    node: str | None = None,
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(source, node, field, "an integer is required")
    if not low <= value <= high:
        raise ConfigError(source, node, field, f"{value} is not in {low}..{high}")
    return value


def is_loopback_host(host: str) -> bool:
    """Whether `host` is a loopback address by its text alone: no lookup, so a name
    that resolves elsewhere on another host cannot pass."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_host(host: str) -> bool:
    """Whether `host` names an address of this machine (loopback included)."""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        if host == "localhost":
            return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {str(info[4][0]) for info in infos}
    local = {"127.0.0.1", "::1"}
    with contextlib.suppress(OSError):
        local.update(
            str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)
        )
    return bool(addresses & local)
