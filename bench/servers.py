"""The servers under test, as real processes: CNCF distribution's registry and a
treescale tree of one registry node and N store relays.

Every treescale node is its own ``twistd`` process, launched exactly as the
integration tests launch them (their `TWISTD` and `child_environment`). A server
may run in a link's namespace (``ip netns exec`` execs it, so its pid is the
server's own) or in the root namespace on loopback. Every wait has a timeout;
every process started here is stopped, SIGTERM then SIGKILL.
"""

import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.client import Registry, request
from bench.network import Link
from tests.integration.cluster import REPO_ROOT, TWISTD, child_environment
from treescale.config import DEFAULT_WINDOW_PER_RELAY

DEFAULT_CONFIG = REPO_ROOT / "conf" / "local.toml"

# Fresh namespaces hold no listener, so these ports are free in them by construction.
RELAY_BUS_PORT = 7201
REFERENCE_PORT = 7350

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.2

REGISTRY_NODE = "registry"


class ServerError(Exception):
    """A server did not start, answer or stay up; the message says where its log is."""


@dataclass(frozen=True)
class Settings:
    """The cluster-wide settings of the trees under test."""

    chunk_size: int
    replicas: int
    record_replicas: int
    window: int
    buffer_chunks: int
    tls: bool
    """Mutually authenticated TLS on the bus, or plain TCP."""
    window_per_relay: int = DEFAULT_WINDOW_PER_RELAY


def default_settings(
    chunk_size: int | None,
    window: int | None,
    tls: bool,
    window_per_relay: int | None = None,
) -> Settings:
    """The embedded default's ``[cluster]`` settings, with overrides."""
    cluster = tomllib.loads(DEFAULT_CONFIG.read_text())["cluster"]
    per_relay = cluster.get("window_per_relay", DEFAULT_WINDOW_PER_RELAY)
    return Settings(
        chunk_size=chunk_size or int(cluster["chunk_size"]),
        replicas=int(cluster["replicas"]),
        record_replicas=int(cluster["record_replicas"]),
        window=window or int(cluster["window"]),
        buffer_chunks=int(cluster["buffer_chunks"]),
        tls=tls,
        window_per_relay=window_per_relay or int(per_relay),
    )


def free_port(host: str) -> int:
    """A port on `host` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Processes:
    """The servers started, each with its output file, stopped together."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: Sequence[str]) -> int:
        """Start one server, its output going to ``LOG_DIR/<name>.out``; its pid."""
        with (self.log_dir / f"{name}.out").open("ab") as output:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=child_environment(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.running[name] = process
        return process.pid

    def check_alive(self) -> None:
        """Fail if a server started here has exited."""
        for name, process in self.running.items():
            if process.poll() is not None:
                raise ServerError(
                    f"{name} exited with {process.returncode}; logs in {self.log_dir}"
                )

    def stop(self, names: Sequence[str]) -> None:
        """SIGTERM the servers named, SIGKILL those still there after the timeout."""
        stopping = [self.running.pop(name) for name in names if name in self.running]
        for process in stopping:
            if process.poll() is None:
                process.terminate()
        for process in stopping:
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)

    def stop_all(self) -> None:
        """Stop every server still running."""
        self.stop(list(self.running))


def wait_until(ready: Callable[[], bool], what: str, processes: Processes) -> None:
    """Poll `ready` until it holds, or fail after the ready timeout."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        processes.check_alive()
        try:
            if ready():
                return
        except (OSError, ValueError):
            pass
        time.sleep(POLL_INTERVAL)
    raise ServerError(f"{what} not ready in {READY_TIMEOUT} s")


@dataclass(frozen=True)
class Reference:
    """A running reference registry."""

    name: str
    address: str
    pid: int


def start_reference(
    directory: Path, processes: Processes, link: Link | None, repo: str
) -> Reference:
    """CNCF distribution storing under `directory`, in `link`'s namespace or on
    loopback; up and answering."""
    if link is None:
        name, address = "reference-loopback", f"127.0.0.1:{free_port('127.0.0.1')}"
    else:
        name, address = "reference", f"{link.inner_address}:{REFERENCE_PORT}"
    storage = directory / f"{name}-data"
    storage.mkdir()
    config = directory / f"{name}.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        "storage:\n"
        f"  filesystem: {{rootdirectory: {json.dumps(str(storage))}}}\n"
        f"http: {{addr: {json.dumps(address)}}}\n"
    )
    command = ["docker-registry", "serve", str(config)]
    pid = processes.start(name, command if link is None else link.inside(*command))
    registry = Registry(address, repo)
    wait_until(lambda: request(registry, "GET", "/v2/")[0] == 200, name, processes)
    return Reference(name, address, pid)


@dataclass(frozen=True)
class RelayPlace:
    """Where one relay runs: its bus address, and its link unless on loopback."""

    name: str
    bus: str
    link: Link | None


@dataclass(frozen=True)
class Tree:
    """A running treescale tree."""

    label: str
    address: str
    pids: dict[str, int]
    """Every node's pid, the registry node first."""
    relays: tuple[RelayPlace, ...]
    data_dir: Path


def relays_on_links(links: Sequence[Link]) -> tuple[RelayPlace, ...]:
    """One relay in each link's namespace, its bus on the link's far end."""
    return tuple(
        RelayPlace(f"relay-{index}", f"{link.inner_address}:{RELAY_BUS_PORT}", link)
        for index, link in enumerate(links, start=1)
    )


def relays_on_loopback(count: int) -> tuple[RelayPlace, ...]:
    """`count` relays in the root namespace, on free loopback ports."""
    return tuple(
        RelayPlace(f"relay-{index}", f"127.0.0.1:{free_port('127.0.0.1')}", None)
        for index in range(1, count + 1)
    )


def write_topology(
    path: Path,
    data_dir: Path,
    settings: Settings,
    registry_bus: str,
    http_port: int,
    relays: Sequence[RelayPlace],
) -> None:
    """The topology file of a tree: the registry node, each relay its child.

    A tree of fewer relays than the settings' replicas keeps as many copies as it
    has relays: one copy of everything on a tree of one relay. A plain bus between
    namespaces needs treescale's escape hatch for buses off loopback: the links
    here are private to this machine.
    """
    replicas = min(settings.replicas, len(relays))
    record_replicas = min(settings.record_replicas, len(relays))
    lines = [
        "[cluster]",
        f'name = "bench-{os.getpid()}"',
        f"data_dir = {json.dumps(str(data_dir))}",
        f"chunk_size = {settings.chunk_size}",
        f"replicas = {replicas}",
        f"record_replicas = {record_replicas}",
        f"window = {settings.window}",
        f"window_per_relay = {settings.window_per_relay}",
        f"buffer_chunks = {settings.buffer_chunks}",
    ]
    if settings.tls:
        certs = path.parent / f"{path.stem}-certs"
        lines += [
            "",
            "[tls]",
            f"ca = {json.dumps(str(certs / 'ca.pem'))}",
            f"cert = {json.dumps(str(certs / '{node}.pem'))}",
            f"key = {json.dumps(str(certs / '{node}.key'))}",
        ]
    elif not all(is_loopback(bus) for bus in [registry_bus, *(r.bus for r in relays)]):
        lines.insert(lines.index("[cluster]") + 1, "insecure_plain_bus = true")
    lines += [
        "",
        "[[node]]",
        f'name = "{REGISTRY_NODE}"',
        "id = 1",
        f'bus = "{registry_bus}"',
        'roles = ["registry"]',
        f'http = "tcp:{http_port}:interface=127.0.0.1"',
    ]
    for node_id, relay in enumerate(relays, start=2):
        lines += [
            "",
            "[[node]]",
            f'name = "{relay.name}"',
            f"id = {node_id}",
            f'bus = "{relay.bus}"',
            f'parent = "{REGISTRY_NODE}"',
            'roles = ["store"]',
            f'domain = "{relay.name}"',
        ]
    path.write_text("\n".join(lines) + "\n")
    if settings.tls:
        make_certificates(path, path.parent / f"{path.stem}-certs")


def is_loopback(address: str) -> bool:
    """Whether a ``host:port`` is on loopback."""
    return address.startswith("127.")


def make_certificates(topology: Path, directory: Path) -> None:
    """The tree's CA and a certificate per node, made by treescale's own tool."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "treescale.cli", "certs"),
            *(str(topology), "--out", str(directory)),
        ],
        cwd=REPO_ROOT,
        env=child_environment(),
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise ServerError(f"treescale certs: {done.stderr.strip()}")


def twistd_command(topology: Path, node: str, log_file: Path) -> list[str]:
    """The command line of one treescale node."""
    return [
        sys.executable,
        *TWISTD,
        "-n",
        "--pidfile=",
        f"--logfile={log_file}",
        "treescale-node",
        "--config",
        str(topology),
        "--node",
        node,
    ]


def start_one_process_tree(
    directory: Path,
    processes: Processes,
    settings: Settings,
    label: str,
    relays: Sequence[RelayPlace],
) -> Tree:
    """A tree on loopback run by one twistd, as the embedded default runs: every
    node of the file in one process, linked in memory. Its one pid stands under
    the registry node's name, so its CPU and memory are the whole tree's."""
    http_port, topology, data_dir = write_tree(
        directory, settings, label, "127.0.0.1", relays
    )
    log = processes.log_dir / f"{label}.log"
    command = twistd_command(topology, REGISTRY_NODE, log)
    command = command[: command.index("--node")]
    pids = {REGISTRY_NODE: processes.start(f"{label}-{REGISTRY_NODE}", command)}
    return tree_up(processes, label, http_port, pids, relays, data_dir)


def start_tree(
    directory: Path,
    processes: Processes,
    settings: Settings,
    label: str,
    registry_bus_host: str,
    relays: Sequence[RelayPlace],
) -> Tree:
    """A tree up with every relay linked to the registry node, which runs in the
    root namespace with its HTTP API on loopback."""
    http_port, topology, data_dir = write_tree(
        directory, settings, label, registry_bus_host, relays
    )
    pids = {}
    for node, link in [(REGISTRY_NODE, None), *((r.name, r.link) for r in relays)]:
        command = twistd_command(
            topology, node, processes.log_dir / f"{label}-{node}.log"
        )
        if link is not None:
            command = link.inside(*command)
        pids[node] = processes.start(f"{label}-{node}", command)
    return tree_up(processes, label, http_port, pids, relays, data_dir)


def write_tree(
    directory: Path,
    settings: Settings,
    label: str,
    registry_bus_host: str,
    relays: Sequence[RelayPlace],
) -> tuple[int, Path, Path]:
    """The topology file of a tree labelled `label`, on free ports: its HTTP
    port, the file and the tree's data folder."""
    http_port = free_port("127.0.0.1")
    registry_bus = f"{registry_bus_host}:{free_port(registry_bus_host)}"
    data_dir = directory / f"{label}-data"
    topology = directory / f"{label}.toml"
    write_topology(topology, data_dir, settings, registry_bus, http_port, relays)
    return http_port, topology, data_dir


def tree_up(
    processes: Processes,
    label: str,
    http_port: int,
    pids: dict[str, int],
    relays: Sequence[RelayPlace],
    data_dir: Path,
) -> Tree:
    """The started tree, once its registry node reaches every relay."""
    address = f"127.0.0.1:{http_port}"
    wait_until(
        lambda: relays_linked(address, len(relays)),
        f"{label} ({len(relays)} relays linked)",
        processes,
    )
    return Tree(label, address, pids, tuple(relays), data_dir)


def relays_linked(address: str, count: int) -> bool:
    """Whether the registry node at `address` reaches `count` relays."""
    status = json.loads(request(Registry(address, ""), "GET", "/_treescale/status")[1])
    return bool(status.get("relays_up") == count)
