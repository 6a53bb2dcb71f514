"""The ``treescale`` command: tools an operator runs beside the nodes, one
subcommand each.

    treescale check TOPOLOGY              validate a topology file and summarise it
    treescale status [--url URL]          the tree as a registry node sees it (or tree)
    treescale certs TOPOLOGY --out DIR    the cluster's CA and a certificate per node
    treescale htpasswd FILE USER          add or replace a login (--delete removes it)
    treescale config-reference            the configuration reference, in Markdown
    treescale rebalance [--wait]          keys moving after a topology edit, and left

``check`` loads the file exactly as a node does (`treescale.config.load`), adds the
start-up check of a plain bus off loopback, and prints a summary: the cluster, its
nodes by role, the depth of the tree, the copies kept, the bus security and the
login mode.

``status`` asks one registry node, at ``--url`` (default ``http://127.0.0.1:5000``;
no other host is ever tried), for ``/_treescale/status`` and ``/readyz``, and prints
the tree indented under its root: each node's roles, state, whether the node asked
has a direct link to it (``memory`` when that node runs in the same process), and
its chunks and bytes (as its relay's last scrub pass
counted them, ``-`` while unknown). Then come the relays up against the copies
each chunk has, what the relays' scrubs found missing and re-created, readiness,
and a table of each relay's scrub; then where the relays' rebalance stands, with
a table of each relay's while one is under way.

``certs`` reads the topology file for the cluster's name and its nodes' names and
writes, in DIR: ``ca.pem`` and ``ca.key`` (the CA), then ``NODE.pem`` and ``NODE.key``
for every node, the names the example ``[tls]`` table expects. Keys are written
with mode 0600. A file that exists is never replaced without ``--force``; with
``--reuse-ca`` the CA already in DIR signs the new node certificates, which is how
a node is added or a certificate renewed without touching the others.

``htpasswd`` reads the password from standard input (its first line) or, on a
terminal, prompts for it twice; never from the command line, where other users
of the host could read it. It writes the bcrypt line ``htpasswd -B`` would
(``$2y$``), replacing the user's line if there is one, and replaces the file
atomically: a registry node re-reading it never sees half a file. A new file gets
mode 0600; an existing one keeps its mode and, where allowed, its owner.

``gc`` asks a registry node on this host to run a garbage collection (its
``/_treescale/gc`` answers local clients only) and prints the report.
``rebalance`` asks a registry node's ``/_treescale/status`` what each relay's
rebalance has moved and has left for the placement the node places keys by, and
prints it; with ``--wait`` it asks again every second, drawing a progress bar on a
terminal (a line per change elsewhere), until every relay reports that placement
with nothing left.

Exit status: 0 done (``status``: the node is ready; ``rebalance``: nothing left),
1 refused or not ready (files exist, the CA in DIR is unusable, a node not ready
or not reachable, a rebalance not done or not done within ``--timeout``), 2 a bad
command line or topology file.
"""

import argparse
import contextlib
import datetime
import getpass
import http.client
import json
import os
import ssl
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import monotonic, sleep
from typing import Any, TextIO
from urllib.parse import urlsplit

import bcrypt

from treescale.auth.htpasswd import BCRYPT_MAX_PASSWORD, HtpasswdError, parse_htpasswd
from treescale.auth.settings import BASIC, NONE, TOKEN
from treescale.bus.certs import (
    DEFAULT_CA_DAYS,
    DEFAULT_NODE_DAYS,
    CertificateError,
    Issued,
    load_ca,
    make_ca,
    make_node_certificate,
)
from treescale.bus.tls import plain_bus_refusal
from treescale.bus.tls_settings import check_tls_names, node_identity
from treescale.cli_reload import add_reload
from treescale.config import ConfigError, NodeConfig, Topology, load
from treescale.durable import fsync_folder
from treescale.ops.health import relays_needed
from treescale.settings_doc import reference

PROGRAM = "treescale"
CA_CERTIFICATE = "ca.pem"
CA_KEY = "ca.key"
KEY_MODE = 0o600
CERTIFICATE_MODE = 0o644
DIRECTORY_MODE = 0o700

DEFAULT_URL = "http://127.0.0.1:5000"
DEFAULT_TIMEOUT = 5.0
STATUS_PATH = "/_treescale/status"
READY_PATH = "/readyz"
MAX_ANSWER = 16 * 1024 * 1024
"""Bytes of a status answer read at most: a tree of many thousand nodes fits."""

NEW_FILE_MODE = 0o600
DEFAULT_COST = 5
MIN_COST = 4
MAX_COST = 17

GC_PATH = "/_treescale/gc"
DEFAULT_GC_TIMEOUT = 3600.0
DEFAULT_REBALANCE_WAIT = 3600.0
REBALANCE_POLL = 1.0
"""Seconds between two questions of ``rebalance --wait``."""


class Refused(Exception):
    """The command would do something it must not; the message says what."""


@dataclass(frozen=True)
class Output:
    """One file to write: where, what, and with which mode."""

    path: Path
    data: bytes
    mode: int
    about: str


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args, sys.stdout))
    except ConfigError as e:
        print(f"{PROGRAM}: {e}", file=sys.stderr)
        return 2
    except Refused as e:
        print(f"{PROGRAM} {args.command}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`treescale check FILE | head`): not an error of
        # ours; stdout is pointed at nothing so the exit flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line, one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Tools for running a treescale cluster."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_check(commands)
    _add_status(commands)
    _add_certs(commands)
    _add_htpasswd(commands)
    _add_config_reference(commands)
    _add_gc(commands)
    add_reload(commands)
    _add_rebalance(commands)
    return parser


def _add_check(commands: Any) -> None:
    check = commands.add_parser(
        "check",
        help="validate a topology file and summarise it",
        description="Load a topology file as a node would, and print what it "
        "describes, or the one line that says what is wrong (exit status 2).",
    )
    check.add_argument("topology", type=Path, help="the topology file")
    check.set_defaults(run=run_check)


def _add_status(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        aliases=["tree"],
        help="show the tree as a registry node sees it",
        description="Ask one registry node for its view of the tree and its "
        "readiness, and print them. Exit status 1 when the node is not ready or "
        "cannot be asked.",
    )
    _add_node_address(status, DEFAULT_TIMEOUT, "each answer")
    status.add_argument(
        "--cafile",
        type=Path,
        metavar="FILE",
        help="CA certificates to check an https:// node against (default: the "
        "system's)",
    )
    status.set_defaults(run=run_status)


def _add_node_address(command: Any, timeout: float, waited_for: str) -> None:
    """The ``--url`` and ``--timeout`` of a command that asks one registry node."""
    command.add_argument(
        "--url",
        type=_base_url,
        default=_base_url(DEFAULT_URL),
        help=f"the registry node's HTTP address (default {DEFAULT_URL}); only "
        "this address is asked",
    )
    command.add_argument(
        "--timeout",
        type=_seconds,
        default=timeout,
        metavar="SECONDS",
        help=f"how long to wait for {waited_for} (default {timeout:g})",
    )


def _add_certs(commands: Any) -> None:
    certs = commands.add_parser(
        "certs",
        help="make the cluster's CA and every node's TLS certificate",
        description="Make the CA of the cluster a topology file describes, and one "
        "key and certificate per node, for the file's [tls] table.",
    )
    certs.add_argument("topology", type=Path, help="the topology file")
    certs.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder to write the files in",
    )
    certs.add_argument(
        "--force", action="store_true", help="replace files that already exist"
    )
    certs.add_argument(
        "--reuse-ca",
        action="store_true",
        help=f"sign with the {CA_CERTIFICATE} and {CA_KEY} already in --out "
        "instead of making a new CA",
    )
    certs.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME",
        help="only this node (repeat for several; default: every node)",
    )
    certs.add_argument(
        "--ca-days",
        type=_positive_days,
        metavar="DAYS",
        default=DEFAULT_CA_DAYS,
        help=f"days a new CA is valid (default {DEFAULT_CA_DAYS})",
    )
    certs.add_argument(
        "--node-days",
        type=_positive_days,
        metavar="DAYS",
        default=DEFAULT_NODE_DAYS,
        help=f"days a node certificate is valid (default {DEFAULT_NODE_DAYS})",
    )
    certs.set_defaults(run=run_certs)


def _add_htpasswd(commands: Any) -> None:
    users = commands.add_parser(
        "htpasswd",
        help="add, replace or delete a login in an htpasswd file",
        description="Add USER to an htpasswd file with a bcrypt hash, or replace "
        "the user's password. The password is read from standard input (its first "
        "line), or asked for twice on a terminal; never from the command line.",
    )
    users.add_argument("file", type=Path, help="the htpasswd file (made if missing)")
    users.add_argument("user", help="the user name")
    users.add_argument("--delete", action="store_true", help="remove the user instead")
    users.add_argument(
        "--cost",
        type=_bcrypt_cost,
        default=DEFAULT_COST,
        help=f"bcrypt cost, {MIN_COST}..{MAX_COST} (default {DEFAULT_COST}, as "
        "htpasswd -B); each step doubles the time of an uncached login",
    )
    users.set_defaults(run=run_htpasswd)


def _add_config_reference(commands: Any) -> None:
    reference_command = commands.add_parser(
        "config-reference",
        help="print the configuration reference (Markdown)",
        description="Print every setting of the topology file with its type, "
        "default, bounds and meaning, built from the settings in the code; "
        "docs/configuration.md is this output.",
    )
    reference_command.set_defaults(run=run_config_reference)


def _add_gc(commands: Any) -> None:
    gc = commands.add_parser(
        "gc",
        help="collect blobs and chunks nothing refers to any more",
        description="Ask a registry node on this host to run a garbage "
        "collection (it answers only local clients) and print its report. With "
        "--dry-run nothing is deleted: the report says what would go.",
    )
    _add_node_address(gc, DEFAULT_GC_TIMEOUT, "the run")
    gc.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    gc.add_argument("--json", action="store_true", help="print the whole report")
    gc.set_defaults(run=run_gc_command)


def _add_rebalance(commands: Any) -> None:
    rebalance = commands.add_parser(
        "rebalance",
        help="show (or wait for) chunks and records moving after a topology edit",
        description="Print what each relay's rebalance has moved and has left for "
        "the placement the registry node places keys by. Exit status 0 when "
        "nothing is left, 1 otherwise; with --wait, 1 only when --timeout passes "
        "first.",
    )
    _add_node_address(
        rebalance, DEFAULT_REBALANCE_WAIT, "the rebalance to end, with --wait"
    )
    rebalance.add_argument(
        "--wait",
        action="store_true",
        help="ask again every second until every relay is done",
    )
    rebalance.set_defaults(run=run_rebalance)


def _positive_days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 1 <= days <= 100 * 366:
        raise argparse.ArgumentTypeError(f"{days} is not in 1..36600")
    return days


def run_certs(args: argparse.Namespace, out: TextIO) -> int:
    """``treescale certs``: plan every file, refuse before writing any, then write."""
    topology = load(args.topology)
    names = [topology.node(name).name for name in args.node] or [
        node.name for node in topology.nodes
    ]
    check_tls_names(topology.cluster, names, topology.source)

    ca, outputs = _plan_ca(topology, args.out, args.reuse_ca, args.ca_days)
    outputs += _plan_nodes(ca, topology, names, args.out, args.node_days)
    existing = [str(output.path) for output in outputs if output.path.exists()]
    if existing and not args.force:
        raise Refused(f"would replace {', '.join(existing)}; use --force to do so")

    _write_all(outputs, args.out, out, replace=args.force)
    print(
        f"{args.out / CA_KEY} signs node certificates: keep it off the nodes. Each "
        f"node needs {CA_CERTIFICATE}, its own .pem and its own .key.",
        file=out,
    )
    return 0


def _plan_nodes(
    ca: Issued, topology: Topology, names: Sequence[str], folder: Path, days: int
) -> list[Output]:
    """A new key and certificate of `ca` for each node named."""
    outputs = []
    for name in names:
        issued = make_node_certificate(ca, topology.cluster, name, days)
        until = _day(issued.certificate.not_valid_after_utc)
        about = f"{node_identity(topology.cluster, name)}, valid until {until}"
        outputs += [
            Output(
                folder / f"{name}.pem",
                issued.certificate_pem,
                CERTIFICATE_MODE,
                f"certificate of {about}",
            ),
            Output(folder / f"{name}.key", issued.key_pem, KEY_MODE, f"key of {name}"),
        ]
    return outputs


def _write_all(
    outputs: Sequence[Output], folder: Path, out: TextIO, *, replace: bool
) -> None:
    """Write every planned file into `folder` (made 0700 if new), saying so."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
    except OSError as e:
        raise Refused(f"cannot make {folder}: {e.strerror}") from e
    for output in outputs:
        try:
            write_file(output.path, output.data, output.mode, replace=replace)
        except FileExistsError:
            raise Refused(f"{output.path} appeared meanwhile; not replaced") from None
        except OSError as e:
            raise Refused(f"cannot write {output.path}: {e.strerror}") from e
        print(f"wrote {output.path} ({output.about})", file=out)


def _plan_ca(
    topology: Topology, folder: Path, reuse: bool, days: int
) -> tuple[Issued, list[Output]]:
    """The CA to sign with, and the CA files to write (none when it is reused)."""
    if reuse:
        try:
            ca = load_ca(
                (folder / CA_CERTIFICATE).read_bytes(), (folder / CA_KEY).read_bytes()
            )
        except OSError as e:
            raise Refused(f"--reuse-ca: cannot read {e.filename}: {e.strerror}") from e
        except CertificateError as e:
            raise Refused(f"--reuse-ca: {folder}: {e}") from e
        return ca, []

    ca = make_ca(topology.cluster, days)
    until = _day(ca.certificate.not_valid_after_utc)
    return ca, [
        Output(
            folder / CA_CERTIFICATE,
            ca.certificate_pem,
            CERTIFICATE_MODE,
            f"CA of cluster {topology.cluster}, valid until {until}",
        ),
        Output(folder / CA_KEY, ca.key_pem, KEY_MODE, "CA key"),
    ]


def write_file(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write `data` to `path` with `mode` from its first byte on.

    Without `replace` the file is created exclusively, so one that appeared since
    the check is still not replaced. With it, a temporary file beside it is renamed
    over it: a reader never sees half a key, and an old file's looser mode is not
    kept.
    """
    if not replace:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        return
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _day(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d}"


def run_check(args: argparse.Namespace, out: TextIO) -> int:
    """``treescale check``: load the file as a node does, then summarise it."""
    topology = load(args.topology)
    refusal = plain_bus_refusal(topology)
    if refusal is not None:
        print(f"{PROGRAM}: {refusal}", file=sys.stderr)
        return 2
    for line in check_summary(topology):
        print(line, file=out)
    return 0


def check_summary(topology: Topology) -> list[str]:
    """What a valid topology file describes, one line a subject."""
    stores = len(topology.stores)
    lines = [
        f"{topology.source}: valid",
        f"cluster        {topology.cluster}, topology version {topology.version}, "
        f"relays' data under {topology.data_dir}",
        f"nodes          {_nodes_by_role(topology)}",
        f"tree           {_tree_shape(topology)}",
        f"copies         {_copies(topology)}",
        *_draining(topology),
        f"ready          a registry node needs "
        f"{relays_needed(stores, topology.replicas, topology.record_replicas)} of "
        f"{stores} store relays",
        f"chunks         {_size(topology.chunk_size)}, window {topology.window}, "
        f"buffer {topology.buffer_chunks} chunks per registry node, "
        f"{topology.window_per_relay} per relay for a download",
        f"bus            {_bus_security(topology)}",
        f"logins         {_logins(topology)}",
        f"notifications  {_notifications(topology)}",
        f"log            {topology.log.format}",
    ]
    return lines


def _draining(topology: Topology) -> list[str]:
    """A line naming the draining relays, when there are any."""
    names = [node.name for node in topology.stores if node.drain]
    if not names:
        return []
    return [f"draining       {', '.join(names)}: no new chunks, theirs move away"]


def _nodes_by_role(topology: Topology) -> str:
    parts = []
    for role in ("registry", "store"):
        names = [node.name for node in topology.nodes if role in node.roles]
        parts.append(f"{len(names)} {role} ({', '.join(names)})")
    return f"{len(topology.nodes)}: " + "; ".join(parts)


def _tree_shape(topology: Topology) -> str:
    """The root and how many levels lie below it."""
    depths = _depths(topology.nodes)
    root = next(node.name for node in topology.nodes if node.parent is None)
    deepest = max(depths.values())
    levels = "level" if deepest == 1 else "levels"
    return f"root {root}, depth {deepest} ({deepest} {levels} below the root)"


def _depths(nodes: Sequence[NodeConfig]) -> dict[str, int]:
    """Each node's distance from the root, for a tree `load` has checked."""
    parents = {node.name: node.parent for node in nodes}
    depths: dict[str, int] = {}
    for name in parents:
        depth, current = 0, parents[name]
        while current is not None:
            depth, current = depth + 1, parents[current]
        depths[name] = depth
    return depths


def _copies(topology: Topology) -> str:
    """Copies per chunk and per record, as the nodes will keep them."""
    stores = len(topology.stores)
    chunk = min(topology.replicas, stores)
    record = min(topology.record_replicas, stores)
    return (
        f"{chunk} per chunk, {record} per record (reads and writes need "
        f"{record // 2 + 1} of them)"
    )


def _bus_security(topology: Topology) -> str:
    if topology.tls is not None:
        return f"mutual TLS, CA {topology.tls.ca}, certificates {topology.tls.cert}"
    if topology.insecure_plain_bus:
        return (
            "plain TCP off loopback (insecure_plain_bus): anyone who reaches a "
            "bus port can join the tree"
        )
    return "plain TCP, every bus address on loopback"


def _logins(topology: Topology) -> str:
    auth = topology.auth
    if auth.mode == NONE:
        return "none: every request is let in"
    parts = [auth.mode]
    if auth.htpasswd is not None:
        found = "" if auth.htpasswd.exists() else " (not on this machine)"
        parts.append(f"users in {auth.htpasswd}{found}")
    if auth.mode == TOKEN:
        parts.append(f"tokens of {auth.token_issuer} for {auth.token_service}")
        if auth.trusted_issuers:
            parts.append(f"{len(auth.trusted_issuers)} trusted issuers")
    if auth.mode in (BASIC, TOKEN):
        rules = len(auth.rules)
        parts.append(
            f"{rules} rules" if rules else "no rules: every user may do everything"
        )
    if auth.anonymous_pull:
        parts.append("anonymous pull")
    return ", ".join(parts)


def _notifications(topology: Topology) -> str:
    endpoints = [endpoint.name for endpoint in topology.notifications.endpoints]
    if not endpoints:
        return "none"
    return f"{len(endpoints)} endpoints ({', '.join(endpoints)})"


@dataclass(frozen=True)
class BaseUrl:
    """Where a registry node's HTTP API is: the one address ``status`` asks."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _base_url(text: str) -> BaseUrl:
    """An http:// or https:// URL of a host and port, with no path."""
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the port is not 1..65535"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"{text!r}: give the node's address only")
    if parts.username is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: the status pages need no login")
    default = 443 if parts.scheme == "https" else 80
    return BaseUrl(parts.scheme, parts.hostname, port or default)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 3600] seconds")
    return seconds


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: its status code and its body."""

    status: int
    body: bytes


def http_get(
    url: BaseUrl, path: str, timeout: float, cafile: Path | None = None
) -> Answer:
    """GET `path` of `url` (see `http_request`)."""
    return http_request("GET", url, path, timeout, cafile)


def http_request(
    method: str, url: BaseUrl, path: str, timeout: float, cafile: Path | None = None
) -> Answer:
    """Ask `path` of `url`, at that address only: no proxy from the environment,
    no redirect followed. `Refused` names the address when it cannot be asked."""
    connection: http.client.HTTPConnection
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=cafile)
        connection = http.client.HTTPSConnection(
            url.host, url.port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(url.host, url.port, timeout=timeout)
    try:
        connection.request(method, path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        body = response.read(MAX_ANSWER + 1)
    except (OSError, http.client.HTTPException) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or repr(e)
        raise Refused(
            f"cannot ask {url}{path}: {why}; is a registry node serving there? "
            "Give its address with --url"
        ) from e
    finally:
        connection.close()
    if len(body) > MAX_ANSWER:
        raise Refused(f"{url}{path} answered more than {MAX_ANSWER} bytes")
    return Answer(response.status, body)


@dataclass(frozen=True)
class NodeView:
    """One node of a status document."""

    name: str
    parent: str | None
    roles: tuple[str, ...]
    domain: str
    weight: float
    state: str
    chunks: int | None
    bytes: int | None
    drain: bool = False


@dataclass(frozen=True)
class ScrubView:
    """What one relay's scrub last published: its state and its last whole pass."""

    state: str
    passes: int
    last_pass: Mapping[str, int] | None
    age: float | None
    total: Mapping[str, int] | None = None
    """Every pass since the relay started, added up."""


@dataclass(frozen=True)
class StatusView:
    """The parts of ``/_treescale/status`` that ``status`` prints."""

    node: str
    cluster: str
    replicas: int
    relays: int
    relays_up: int
    links: frozenset[str]
    tree: tuple[NodeView, ...]
    in_memory: frozenset[str] = frozenset()
    """The links that are in memory: the neighbours in the node's own process."""
    repair: Mapping[str, ScrubView | None] | None = None
    """Each store relay's last published scrub status (None: not published);
    None as a whole when the node gave no repair progress."""
    placement: str | None = None
    """The placement digest the node places keys by."""
    rebalance: Mapping[str, "RebalanceView | None"] | None = None
    """Each store relay's last published rebalance status, as `repair` is."""


@dataclass(frozen=True)
class ReadyView:
    """The ``/readyz`` answer: ready or not, and the relay counts behind it."""

    ready: bool
    relays_up: int | None
    relays_needed: int | None


def run_status(args: argparse.Namespace, out: TextIO) -> int:
    """``treescale status``: ask one node, print its view, exit 1 unless ready."""
    answer = http_get(args.url, STATUS_PATH, args.timeout, args.cafile)
    if answer.status != 200:
        raise Refused(
            f"{args.url}{STATUS_PATH} answered {answer.status}: not a treescale "
            "registry node?"
        )
    status = parse_status(answer.body, f"{args.url}{STATUS_PATH}")
    ready = parse_ready(
        http_get(args.url, READY_PATH, args.timeout, args.cafile),
        f"{args.url}{READY_PATH}",
    )
    for line in render_status(status, ready, str(args.url)):
        print(line, file=out)
    return 0 if ready.ready else 1


def parse_status(body: bytes, where: str) -> StatusView:
    """The status document; `Refused` when it is not one."""
    try:
        document = json.loads(body)
        return StatusView(
            node=_text(document["node"]),
            cluster=_text(document["cluster"]),
            replicas=_count(document["replicas"]),
            relays=_count(document["relays"]),
            relays_up=_count(document["relays_up"]),
            links=frozenset(_text(link) for link in _items(document.get("links", []))),
            in_memory=frozenset(
                _text(link) for link in _items(document.get("links_in_memory", []))
            ),
            tree=tuple(_node_view(entry) for entry in _items(document["tree"])),
            repair=_repair_views(document.get("repair")),
            placement=_maybe_text(document.get("placement")),
            rebalance=_rebalance_views(document.get("rebalance")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise Refused(f"{where} is not a treescale status document ({e})") from e


def _repair_views(value: object) -> dict[str, ScrubView | None] | None:
    """The relays' scrub statuses; an entry that cannot be read counts as none."""
    if not isinstance(value, dict) or not isinstance(value.get("relays"), dict):
        return None
    return {str(name): _scrub_view(entry) for name, entry in value["relays"].items()}


def _scrub_view(entry: object) -> ScrubView | None:
    if not isinstance(entry, dict):
        return None
    last = entry.get("last_pass")
    total = entry.get("total")
    age = entry.get("age")
    try:
        return ScrubView(
            state=_text(entry.get("state")),
            passes=_count(entry.get("passes")),
            last_pass=None if last is None else _counts(last),
            age=float(age) if isinstance(age, int | float) else None,
            total=None if total is None else _counts(total),
        )
    except TypeError:
        return None


@dataclass(frozen=True)
class RebalanceView:
    """What one relay's rebalance last published: the placement it works for,
    its state, and what it has moved and has left."""

    state: str
    placement: str
    chunks_moved: int
    chunks_left: int
    bytes_moved: int
    bytes_left: int
    records_moved: int
    records_left: int
    age: float | None

    def done_for(self, placement: str | None) -> bool:
        """Whether this relay holds nothing misplaced under `placement`."""
        return (
            self.placement == placement
            and self.state == "idle"
            and self.chunks_left == 0
            and self.records_left == 0
        )


def _rebalance_views(value: object) -> dict[str, RebalanceView | None] | None:
    """The relays' rebalance statuses; an entry that cannot be read counts as
    none."""
    if not isinstance(value, dict) or not isinstance(value.get("relays"), dict):
        return None
    return {
        str(name): _rebalance_view(entry) for name, entry in value["relays"].items()
    }


def _rebalance_view(entry: object) -> RebalanceView | None:
    if not isinstance(entry, dict):
        return None
    age = entry.get("age")
    try:
        return RebalanceView(
            state=_text(entry.get("state")),
            placement=_text(entry.get("placement")),
            age=float(age) if isinstance(age, int | float) else None,
            **{name: _count(entry.get(name)) for name in _REBALANCE_FIGURES},
        )
    except TypeError:
        return None


_REBALANCE_FIGURES = (
    "chunks_moved",
    "chunks_left",
    "bytes_moved",
    "bytes_left",
    "records_moved",
    "records_left",
)


def _counts(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise TypeError(f"{value!r} is not a table of counts")
    return {str(name): _count(count) for name, count in value.items()}


def _node_view(entry: Any) -> NodeView:
    parent = entry.get("parent")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise TypeError(f"weight {weight!r}")
    return NodeView(
        name=_text(entry["name"]),
        parent=None if parent is None else _text(parent),
        roles=tuple(_text(role) for role in _items(entry.get("roles", []))),
        domain=_text(entry.get("domain", entry["name"])),
        weight=float(weight),
        state=_text(entry["state"]),
        chunks=_maybe_count(entry.get("chunks")),
        bytes=_maybe_count(entry.get("bytes")),
        drain=entry.get("drain") is True,
    )


def parse_ready(answer: Answer, where: str) -> ReadyView:
    """The ``/readyz`` answer: 200 ready, 503 not; anything else is not ready."""
    try:
        document = json.loads(answer.body)
        up = _maybe_count(document.get("relays_up"))
        needed = _maybe_count(document.get("relays_needed"))
    except (ValueError, TypeError, AttributeError) as e:
        raise Refused(f"{where} answered {answer.status} with no readiness") from e
    if answer.status not in (200, 503):
        raise Refused(f"{where} answered {answer.status}")
    return ReadyView(answer.status == 200, up, needed)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{value!r} is not a count")
    return value


def _maybe_count(value: object) -> int | None:
    return None if value is None else _count(value)


def _maybe_text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _items(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{value!r} is not a list")
    return value


def render_status(status: StatusView, ready: ReadyView, url: str) -> list[str]:
    """The tree indented under its root, then replica health and readiness."""
    lines = [
        f"cluster {status.cluster}, as node {status.node} at {url} sees it",
        "",
        *_table(_COLUMNS, _status_rows(status)),
        "",
        f"relays    {status.relays_up} of {status.relays} up",
        f"replicas  {replica_health(status.relays, status.relays_up, status.replicas)}",
        *_repair_summary(status.repair),
        rebalance_summary(status.rebalance, status.placement),
        f"ready     {_readiness(ready)}",
    ]
    if status.repair:
        lines += ["", *_table(_SCRUB_COLUMNS, _scrub_rows(status.repair))]
    if status.rebalance and not rebalance_done(status.rebalance, status.placement):
        lines += ["", *rebalance_table(status.rebalance, status.placement)]
    if any(_figures_from_scrub(node, status) for node in status.tree):
        lines.append(
            "(chunks and bytes a relay did not report are those its last scrub "
            "pass counted)"
        )
    if all(_figures(node, status) == (None, None) for node in _stores(status)):
        lines.append("(chunks and bytes show '-' until the relays report them)")
    return lines


_COLUMNS = ("NODE", "ROLES", "DOMAIN", "WEIGHT", "STATE", "LINK", "CHUNKS", "BYTES")
_REBALANCE_HEADS = (
    "CHUNKS_MOVED",
    "CHUNKS_LEFT",
    "BYTES_MOVED",
    "BYTES_LEFT",
    "RECORDS_MOVED",
    "RECORDS_LEFT",
)
_RIGHT_ALIGNED = frozenset(
    {
        "WEIGHT",
        "CHUNKS",
        "BYTES",
        "PASSES",
        "CHECKED",
        "MISSING",
        "MADE",
        "FAILED",
        "CORRUPT",
        *_REBALANCE_HEADS,
    }
)


def _status_rows(status: StatusView) -> list[tuple[str, ...]]:
    """One row per node, depth first from the root, a child indented two spaces."""
    rows: list[tuple[str, ...]] = []
    for node, depth in _walk(status.tree):
        link = _link_cell(node.name, status)
        rows.append(
            (
                "  " * depth + node.name,
                ",".join(node.roles) or "-",
                node.domain,
                f"{node.weight:g}",
                f"{node.state},draining" if node.drain else node.state,
                link,
                *_figure_cells(_figures(node, status)),
            )
        )
    return rows


def _link_cell(name: str, status: StatusView) -> str:
    """How the node asked reaches `name`: itself, a link in its own process
    (``memory``), a link to another process (``direct``), or through others."""
    if name == status.node:
        return "self"
    if name in status.in_memory:
        return "memory"
    return "direct" if name in status.links else "-"


def _stores(status: StatusView) -> list[NodeView]:
    return [node for node in status.tree if "store" in node.roles]


def _figures(node: NodeView, status: StatusView) -> tuple[int | None, int | None]:
    """A node's chunks and bytes: as reported, else as its last scrub pass
    counted them, else unknown."""
    if node.chunks is not None or node.bytes is not None:
        return node.chunks, node.bytes
    last = _last_pass(node, status)
    if last is None:
        return None, None
    return last.get("chunks"), last.get("nbytes")


def _figures_from_scrub(node: NodeView, status: StatusView) -> bool:
    reported = node.chunks is not None or node.bytes is not None
    return not reported and _last_pass(node, status) is not None


def _last_pass(node: NodeView, status: StatusView) -> Mapping[str, int] | None:
    scrub = (status.repair or {}).get(node.name)
    return None if scrub is None else scrub.last_pass


def _figure_cells(figures: tuple[int | None, int | None]) -> tuple[str, str]:
    chunks, nbytes = figures
    return (
        "-" if chunks is None else str(chunks),
        "-" if nbytes is None else _size(nbytes),
    )


_SCRUB_COLUMNS = (
    "SCRUB",
    "STATE",
    "PASSES",
    "CHECKED",
    "MISSING",
    "MADE",
    "FAILED",
    "CORRUPT",
    "UPDATED",
)


def _scrub_rows(repair: Mapping[str, ScrubView | None]) -> list[tuple[str, ...]]:
    """One row per relay: its scrub's state and what its last whole pass did."""
    rows: list[tuple[str, ...]] = []
    for relay, scrub in repair.items():
        if scrub is None:
            rows.append((relay, "unknown", *["-"] * 7))
            continue
        last = scrub.last_pass or {}
        counts = [
            str(last[name]) if name in last else "-"
            for name in ("chunks", "missing", "copied", "failed", "corrupt")
        ]
        updated = "-" if scrub.age is None else f"{scrub.age:.0f} s ago"
        rows.append((relay, scrub.state, str(scrub.passes), *counts, updated))
    return rows


def _repair_summary(repair: Mapping[str, ScrubView | None] | None) -> list[str]:
    """What the relays' scrubs found and did: their last passes, and every pass
    since they started, added up."""
    if repair is None:
        return ["repairs   not known: the node gave no repair progress"]
    passes = [scrub.last_pass for scrub in repair.values() if scrub and scrub.last_pass]
    if not passes:
        return ["repairs   no relay has finished a scrub pass yet"]

    lines = [f"repairs   last passes of {len(passes)} relays: {_repair_counts(passes)}"]
    totals = [scrub.total for scrub in repair.values() if scrub and scrub.total]
    if totals:
        lines.append(f"          since they started: {_repair_counts(totals)}")
    silent = sum(1 for scrub in repair.values() if scrub is None)
    if silent:
        lines.append(f"          {silent} relays published no scrub status")
    return lines


def _repair_counts(tables: Sequence[Mapping[str, int]]) -> str:
    def total(name: str) -> int:
        return sum(counts.get(name, 0) for counts in tables)

    return (
        f"{total('missing')} copies missing, {total('copied')} made, "
        f"{total('failed')} failed, {total('corrupt')} corrupt"
    )


def rebalance_done(
    relays: Mapping[str, RebalanceView | None], placement: str | None
) -> bool:
    """Whether every relay reports `placement` with nothing left to move."""
    return placement is not None and all(
        view is not None and view.done_for(placement) for view in relays.values()
    )


def rebalance_summary(
    relays: Mapping[str, RebalanceView | None] | None, placement: str | None
) -> str:
    """One line: done, or what is left and where."""
    if relays is None or placement is None:
        return "rebalance not known: the node gave no rebalance progress"
    if rebalance_done(relays, placement):
        return f"rebalance done: every relay holds what placement {placement} homes"
    views = [view for view in relays.values() if view is not None]
    left = sum(view.chunks_left for view in views)
    nbytes = sum(view.bytes_left for view in views)
    records = sum(view.records_left for view in views)
    moved = sum(view.chunks_moved for view in views)
    behind = [
        name
        for name, view in relays.items()
        if view is None or view.placement != placement or view.state != "idle"
    ]
    return (
        f"rebalance {left} chunks ({_size(nbytes)}) and {records} records left, "
        f"{moved} chunks moved; still working: {', '.join(behind) or 'none'}"
    )


def rebalance_table(
    relays: Mapping[str, RebalanceView | None], placement: str | None
) -> list[str]:
    """One row per relay: its state, whether it works for `placement`, moved and
    left."""
    heads = ("REBALANCE", "STATE", "PLACEMENT", *_REBALANCE_HEADS, "UPDATED")
    rows: list[tuple[str, ...]] = []
    for relay, view in relays.items():
        if view is None:
            rows.append((relay, "unknown", *["-"] * (len(heads) - 2)))
            continue
        rows.append(
            (
                relay,
                view.state,
                "current" if view.placement == placement else view.placement,
                str(view.chunks_moved),
                str(view.chunks_left),
                _size(view.bytes_moved),
                _size(view.bytes_left),
                str(view.records_moved),
                str(view.records_left),
                "-" if view.age is None else f"{view.age:.0f} s ago",
            )
        )
    return _table(heads, rows)


def _walk(tree: Sequence[NodeView]) -> list[tuple[NodeView, int]]:
    """Every node with its depth, parents before children, in document order.

    A node whose parent is not in the document is drawn as a root, and a node
    met twice (a cycle a broken answer might hold) only once.
    """
    names = {node.name for node in tree}
    children: dict[str | None, list[NodeView]] = {}
    for node in tree:
        parent = node.parent if node.parent in names else None
        children.setdefault(parent, []).append(node)

    walked: list[tuple[NodeView, int]] = []
    seen: set[str] = set()
    stack = [(node, 0) for node in reversed(children.get(None, []))]
    while stack:
        node, depth = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        walked.append((node, depth))
        stack += [(child, depth + 1) for child in reversed(children.get(node.name, []))]
    walked += [(node, 0) for node in tree if node.name not in seen]
    return walked


def _table(heads: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Rows under the column heads, each column as wide as its widest cell;
    counts right-aligned."""
    widths = [
        max(len(cell) for cell in column) for column in zip(heads, *rows, strict=True)
    ]
    lines = []
    for row in [heads, *rows]:
        cells = [
            cell.rjust(width) if head in _RIGHT_ALIGNED else cell.ljust(width)
            for cell, width, head in zip(row, widths, heads, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def replica_health(relays: int, relays_up: int, replicas: int) -> str:
    """What the relays that are down mean for the chunks' copies.

    Every chunk a push completed is on `replicas` distinct relays (fewer only
    when the tree has fewer), so while fewer relays than that are down each
    chunk still has a copy up.
    """
    copies = min(replicas, relays)
    down = relays - relays_up
    if down <= 0:
        return f"healthy: every relay up, {copies} copies of each chunk"
    if down < copies:
        return (
            f"degraded: {down} relay(s) down; every chunk still has a copy up "
            f"({copies} copies each)"
        )
    return (
        f"at risk: {down} relays down and {copies} copies of each chunk: chunks "
        "whose copies are all on those relays cannot be read until one returns"
    )


def _readiness(ready: ReadyView) -> str:
    word = "yes" if ready.ready else "NO"
    if ready.relays_up is None or ready.relays_needed is None:
        return word
    return f"{word} ({ready.relays_up} relays reached, {ready.relays_needed} needed)"


def _size(count: int) -> str:
    """A byte count in binary units, as an operator reads it."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def run_htpasswd(args: argparse.Namespace, out: TextIO) -> int:
    """``treescale htpasswd``: add, replace or delete one user's line, atomically."""
    check_user_name(args.user)
    path = args.file.resolve() if args.file.exists() else args.file
    old = _read_htpasswd_text(path)

    if args.delete:
        line = None
    else:
        password = read_password(sys.stdin, getpass.getpass)
        line = bcrypt_line(args.user, password, args.cost)
    text, had = edited_htpasswd(old or "", args.user, line)

    if line is None and not had:
        raise Refused(f"{path} has no user {args.user!r}; nothing changed")
    try:
        parse_htpasswd(text.encode("utf-8"), path)
    except HtpasswdError as e:
        raise Refused(f"not written: the registry would refuse the result: {e}") from e
    replace_file(path, text.encode("utf-8"), NEW_FILE_MODE)

    done = "removed" if line is None else ("replaced" if had else "added")
    print(f"{done} user {args.user!r} in {path}", file=out)
    return 0


def check_user_name(user: str) -> None:
    """A name an htpasswd line can hold and a login can send."""
    if not user or user != user.strip():
        raise Refused(
            f"{user!r}: a user name must be non-empty, without spaces at its ends"
        )
    if ":" in user or user.startswith("#"):
        raise Refused(f"{user!r}: a user name cannot hold ':' or start with '#'")
    if any(ord(char) < 32 or ord(char) == 127 for char in user):
        raise Refused(f"{user!r}: a user name cannot hold control characters")


def read_password(stdin: TextIO, ask: Callable[[str], str]) -> bytes:
    """The new password: asked twice on a terminal, else the first line of input."""
    if stdin.isatty():
        try:
            first = ask("New password: ")
            again = ask("Repeat it: ")
        except EOFError:
            raise Refused("no password given") from None
        if first != again:
            raise Refused("the two passwords differ; nothing changed")
        text = first
    else:
        text = stdin.readline().removesuffix("\n").removesuffix("\r")
    password = text.encode("utf-8")
    if not password:
        raise Refused("the password is empty; nothing changed")
    if len(password) > BCRYPT_MAX_PASSWORD:
        raise Refused(
            f"the password is {len(password)} bytes; bcrypt uses only the first "
            f"{BCRYPT_MAX_PASSWORD}, so choose one of at most that"
        )
    return password


def bcrypt_line(user: str, password: bytes, cost: int) -> str:
    """``user:hash`` with the ``$2y$`` bcrypt hash that ``htpasswd -B`` writes.

    ``$2b$`` and ``$2y$`` name the same algorithm; ``$2y$`` is what Apache's tool
    and CNCF distribution's examples use.
    """
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=cost)).decode("ascii")
    return f"{user}:$2y${hashed.removeprefix('$2b$')}"


def edited_htpasswd(text: str, user: str, line: str | None) -> tuple[str, bool]:
    """`text` with `user`'s line replaced by `line` (None: removed), and whether
    the user was there. Other lines, comments included, are kept as they are; a
    new user's line goes at the end."""
    kept: list[str] = []
    had = False
    for existing in text.splitlines():
        name, colon, _ = existing.strip().partition(":")
        if colon and name == user:
            if not had and line is not None:
                kept.append(line)
            had = True
            continue
        kept.append(existing)
    if not had and line is not None:
        kept.append(line)
    return "".join(f"{each}\n" for each in kept), had


def _read_htpasswd_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise Refused(f"{path} is not UTF-8 text; not changed") from None
    except OSError as e:
        raise Refused(f"cannot read {path}: {e.strerror}") from e


def replace_file(path: Path, data: bytes, new_mode: int) -> None:
    """Put `data` at `path` by renaming a complete, synced file over it.

    A new file gets `new_mode`; an existing one keeps its mode and, when this
    process may set it, its owner, so a registry node running as another user
    can still read it.
    """
    try:
        previous = path.stat()
    except FileNotFoundError:
        previous = None
    try:
        descriptor, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}."
        )
    except OSError as e:
        raise Refused(f"cannot write in {path.parent}: {e.strerror}") from e
    try:
        mode = new_mode if previous is None else previous.st_mode & 0o7777
        os.fchmod(descriptor, mode)
        if previous is not None:
            with contextlib.suppress(PermissionError):
                os.fchown(descriptor, previous.st_uid, previous.st_gid)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as e:
        Path(temporary).unlink(missing_ok=True)
        raise Refused(f"cannot write {path}: {e.strerror}") from e
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # not every file system can
        fsync_folder(path.parent)


def _bcrypt_cost(text: str) -> int:
    try:
        cost = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not MIN_COST <= cost <= MAX_COST:
        raise argparse.ArgumentTypeError(f"{cost} is not in {MIN_COST}..{MAX_COST}")
    return cost


def run_config_reference(args: argparse.Namespace, out: TextIO) -> int:
    """``treescale config-reference``: print the reference built from the code."""
    out.write(reference())
    return 0


def run_gc_command(args: argparse.Namespace, out: TextIO) -> int:
    """``treescale gc``: one collection run on the node, and its report."""
    path = GC_PATH + ("?dry_run=1" if args.dry_run else "")
    answer = http_request("POST", args.url, path, args.timeout)
    try:
        report = json.loads(answer.body)
    except ValueError:
        raise Refused(
            f"{args.url}{GC_PATH} answered {answer.status}, not JSON"
        ) from None
    if answer.status != 200:
        why = report.get("error") if isinstance(report, dict) else None
        raise Refused(f"{args.url}{GC_PATH} answered {answer.status}: {why}")

    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
        return 0
    verb = "would free" if report["dry_run"] else "freed"
    out.write(
        f"{len(report['blobs'])} blobs ({report['blob_bytes']} bytes), "
        f"{report['chunks']} chunk files: {verb} {report['chunk_bytes']} bytes; "
        f"{len(report['sessions'])} upload sessions expired; "
        f"{report['tombstones']} tombstones purged\n"
    )
    for error in report["errors"]:
        out.write(f"error: {error}\n")
    return 1 if report["errors"] else 0


def run_rebalance(args: argparse.Namespace, out: TextIO) -> int:
    """``treescale rebalance``: where every relay's rebalance stands; with
    ``--wait``, ask again until it is done or ``--timeout`` has passed."""
    if args.wait:
        return _wait_for_rebalance(args, out)
    status = _ask_status(args.url, min(args.timeout, DEFAULT_TIMEOUT))
    for line in _rebalance_report(status):
        print(line, file=out)
    return 0 if _still_working(status) is None else 1


def _wait_for_rebalance(args: argparse.Namespace, out: TextIO) -> int:
    """Ask every `REBALANCE_POLL` seconds, drawing progress, until done (0) or
    until ``--timeout`` (`Refused`, saying what is left). A node that does not
    answer once is asked again: it may be restarting."""
    deadline = monotonic() + args.timeout
    bar = ProgressBar(out)
    status: StatusView | None = None
    while True:
        remaining = deadline - monotonic()
        try:
            # Even the last ask gets a whole second: a shorter one fails as
            # "is a registry node serving there?", which misleads.
            status = _ask_status(args.url, max(1.0, min(remaining, DEFAULT_TIMEOUT)))
            why = _still_working(status)
        except Refused as e:
            why = str(e)
        fraction = None if status is None else rebalance_fraction(status)
        if status is not None and why is None:
            bar.end(fraction, "done")
            break
        if remaining <= 0:
            bar.end(fraction, "")
            if status is not None:
                print(*_rebalance_report(status), sep="\n", file=out)
            raise Refused(f"not done within {args.timeout:g} s: {why}")
        bar.show(fraction, str(why) if status is None else _progress_words(status))
        sleep(min(REBALANCE_POLL, max(0.0, remaining)))
    print(*_rebalance_report(status), sep="\n", file=out)
    return 0


def _ask_status(url: BaseUrl, timeout: float) -> StatusView:
    """The node's status document, parsed; `Refused` when it cannot be had."""
    answer = http_get(url, STATUS_PATH, timeout)
    if answer.status != 200:
        raise Refused(
            f"{url}{STATUS_PATH} answered {answer.status}: not a treescale "
            "registry node?"
        )
    return parse_status(answer.body, f"{url}{STATUS_PATH}")


def _still_working(status: StatusView) -> str | None:
    """Why the rebalance is not done yet, in words; None when it is."""
    if status.placement is None:
        return "the node does not say which placement it uses"
    if status.rebalance is None:
        return "the node could not read the relays' progress"
    if rebalance_done(status.rebalance, status.placement):
        return None
    return rebalance_summary(status.rebalance, status.placement)


def _rebalance_report(status: StatusView) -> list[str]:
    lines = [rebalance_summary(status.rebalance, status.placement)]
    if status.rebalance:
        lines += rebalance_table(status.rebalance, status.placement)
    return lines


def rebalance_fraction(status: StatusView) -> float | None:
    """How much of the moving is done, by bytes: moved over moved and left,
    over the relays that work for the node's placement; None before any has
    counted what it must move."""
    views = [
        view
        for view in (status.rebalance or {}).values()
        if view is not None and view.placement == status.placement
    ]
    moved = sum(view.bytes_moved for view in views)
    whole = moved + sum(view.bytes_left for view in views)
    if not views or whole == 0:
        return None
    return moved / whole


def _progress_words(status: StatusView) -> str:
    views = [view for view in (status.rebalance or {}).values() if view]
    left = sum(view.chunks_left for view in views)
    records = sum(view.records_left for view in views)
    working = sum(
        1
        for view in (status.rebalance or {}).values()
        if view is None or not view.done_for(status.placement)
    )
    return f"{left} chunks and {records} records left, {working} relays working"


class ProgressBar:
    """``rebalance --wait``'s progress: one line redrawn in place on a terminal,
    elsewhere a plain line each time the words change."""

    WIDTH = 30

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.terminal = out.isatty()
        self._last = ""
        self._drawn = False

    def show(self, fraction: float | None, words: str) -> None:
        line = self._line(fraction, words)
        if self.terminal:
            self.out.write("\r" + line.ljust(len(self._last)))
            self._drawn = True
        elif line != self._last:
            self.out.write(line + "\n")
        self.out.flush()
        self._last = line

    def end(self, fraction: float | None, words: str) -> None:
        """Draw the last state and leave the line, so what follows starts anew."""
        if self.terminal and self._drawn:
            self.show(fraction, words)
            self.out.write("\n")
            self.out.flush()

    def _line(self, fraction: float | None, words: str) -> str:
        if fraction is None:
            return f"[{'?' * self.WIDTH}]  ---%  {words}"
        filled = round(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return f"[{bar}] {fraction * 100:4.0f}%  {words}"


if __name__ == "__main__":
    sys.exit(main())
