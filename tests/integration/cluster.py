"""Servers the integration tests start as real processes on loopback.

A treescale tree here is one registry node and three store relays, each its own
``twistd`` process reading one topology file written for the test, with fresh
loopback ports and its data under the test's folder. The reference registry (CNCF
distribution) runs the same way, so the tests can prove an image and its assertions
against a known-good server first. Every wait is bounded; every process started is
stopped, with SIGTERM and then SIGKILL.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

REPO_ROOT = Path(__file__).resolve().parents[2]

REGISTRY = "registry"
RELAYS = ("relay-a", "relay-b", "relay-c")

# Small chunks cut even a 40 MiB image into dozens, so the way they spread over three
# relays says something; the embedded default cuts at 4 MiB.
TEST_CHUNK_SIZE = 1024 * 1024

# Relays holding each chunk, as the embedded default has it.
REPLICAS = 2

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.2

# twistd itself, not `python -m twisted`: that runs `twist`, whose options differ.
TWISTD = ("-c", "from twisted.scripts.twistd import run; run()")


class ServerError(Exception):
    """A server under test did not start, answer or stop as it should."""


class Server(Protocol):
    """What a push and pull test needs from the registry it talks to."""

    @property
    def address(self) -> str:
        """``host:port`` of the registry's HTTP API."""

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of every log the server writes, labelled, for a failure."""

    def logs(self) -> str:
        """Everything the server has logged so far, every log together."""


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    # Shortcoming: a port is free when chosen, but another program may take it before
    # the node binds it; the node then fails to start and the test says so.
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(
                socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            )
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def child_environment() -> dict[str, str]:
    """This process's environment without proxies, with the repository importable."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.lower().endswith("_proxy")
    }
    paths = [str(REPO_ROOT), *filter(None, [environment.get("PYTHONPATH")])]
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment


def read_log(path: Path) -> str:
    """A log file with its rotated parts before it, oldest first; empty if none."""
    rotated = [
        sibling
        for sibling in path.parent.glob(path.name + ".*")
        if sibling.suffix[1:].isdigit()
    ]
    rotated.sort(key=lambda sibling: int(sibling.suffix[1:]), reverse=True)
    parts = [*rotated, path] if path.exists() else rotated
    return "".join(part.read_text(errors="replace") for part in parts)


def tail(text: str, lines: int) -> str:
    """The last `lines` lines of `text`."""
    return "\n".join(text.splitlines()[-lines:])


def get_json(url: str, timeout: float = 2.0) -> object:
    """The JSON body of a GET to a loopback URL, never through a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return json.loads(response.read())


def stop_process(process: "subprocess.Popen[bytes]", timeout: float) -> int:
    """Ask a process to stop, kill it if it has not after `timeout`; its exit code."""
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout)


@dataclass(frozen=True)
class Topology:
    """A tree of one registry node and its store relays, as written to a file."""

    path: Path
    data_dir: Path
    http_port: int
    bus_ports: Mapping[str, int]
    relays: tuple[str, ...]

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node's name, the registry first."""
        return (REGISTRY, *self.relays)


def _toml_string(value: str) -> str:
    """A TOML basic string; JSON's escapes are a subset TOML reads the same way."""
    return json.dumps(value)


def _node_table(topology: Topology, name: str, node_id: int) -> list[str]:
    """The ``[[node]]`` table of one node, as lines."""
    lines = [
        "[[node]]",
        f"name = {_toml_string(name)}",
        f"id = {node_id}",
        f"bus = {_toml_string(f'127.0.0.1:{topology.bus_ports[name]}')}",
    ]
    if name == REGISTRY:
        http = f"tcp:{topology.http_port}:interface=127.0.0.1"
        lines += ['roles = ["registry"]', f"http = {_toml_string(http)}"]
    else:
        lines += [
            f"parent = {_toml_string(REGISTRY)}",
            'roles = ["store"]',
            f"domain = {_toml_string(name.removeprefix('relay-'))}",
        ]
    return lines


def write_topology(
    directory: Path,
    *,
    relays: Sequence[str] = RELAYS,
    chunk_size: int = TEST_CHUNK_SIZE,
    extra: str = "",
) -> Topology:
    """Write a topology file for a tree on fresh loopback ports, under `directory`.

    `extra` is TOML appended to the file: a test's ``[registry]`` or ``[auth]``
    tables, say.
    """
    names = (REGISTRY, *relays)
    http_port, *bus_ports = free_ports(1 + len(names))
    topology = Topology(
        path=directory / "topology.toml",
        data_dir=directory / "data",
        http_port=http_port,
        bus_ports=dict(zip(names, bus_ports, strict=True)),
        relays=tuple(relays),
    )

    lines = [
        "[cluster]",
        f'name = "test-{os.getpid()}"',
        f"data_dir = {_toml_string(str(topology.data_dir))}",
        f"chunk_size = {chunk_size}",
        f"replicas = {REPLICAS}",
        "record_replicas = 3",
        "window = 8",
    ]
    for node_id, name in enumerate(names, start=1):
        lines += ["", *_node_table(topology, name, node_id)]

    if extra:
        lines += ["", extra]

    directory.mkdir(parents=True, exist_ok=True)
    topology.data_dir.mkdir(exist_ok=True)
    topology.path.write_text("\n".join(lines) + "\n")
    return topology


class Cluster:
    """A running treescale tree: one ``twistd`` process per node of a topology."""

    def __init__(self, topology: Topology, log_dir: Path) -> None:
        self.topology = topology
        self.log_dir = log_dir
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def address(self) -> str:
        """``host:port`` of the registry node's HTTP API."""
        return f"127.0.0.1:{self.topology.http_port}"

    @property
    def relays(self) -> tuple[str, ...]:
        """The store relays' names."""
        return self.topology.relays

    def log_path(self, name: str) -> Path:
        """The file twistd logs node `name` to."""
        return self.log_dir / f"{name}.log"

    def output_path(self, name: str) -> Path:
        """Where node `name`'s stdout and stderr go: errors from before it logs."""
        return self.log_dir / f"{name}.out"

    def chunk_dir(self, name: str) -> Path:
        """The folder under which relay `name` keeps its chunk files."""
        return self.topology.data_dir / name / "chunks" / "sha256"

    def is_running(self, name: str) -> bool:
        """Whether node `name` has a process that has not exited."""
        process = self._processes.get(name)
        return process is not None and process.poll() is None

    def start_node(self, name: str) -> None:
        """Start node `name`'s process; it appends to the same log as before."""
        if name not in self.topology.nodes:
            raise ServerError(f"no node {name!r} in {self.topology.path}")
        if self.is_running(name):
            raise ServerError(f"node {name!r} is already running")

        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            *TWISTD,
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path(name)}",
            "treescale-node",
            "--config",
            str(self.topology.path),
            "--node",
            name,
        ]
        with self.output_path(name).open("ab") as output:
            self._processes[name] = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=child_environment(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def stop_node(
        self, name: str, *, kill: bool = False, timeout: float = STOP_TIMEOUT
    ) -> int | None:
        """Stop node `name` (SIGTERM, or SIGKILL at once); its exit code, if it ran."""
        process = self._processes.pop(name, None)
        if process is None:
            return None
        if kill:
            process.kill()
            return process.wait(timeout)
        return stop_process(process, timeout)

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start every node, then wait until the registry sees every relay."""
        for name in self.topology.nodes:
            self.start_node(name)
        self.wait_for_relays(len(self.relays), timeout)

    def stop(self) -> None:
        """Stop every node that is still running."""
        for name in list(self._processes):
            self.stop_node(name)

    def status(self) -> Mapping[str, object]:
        """The registry node's ``/_treescale/status`` answer."""
        answer = get_json(f"http://{self.address}/_treescale/status")
        if not isinstance(answer, dict):
            raise ServerError(f"status is not a JSON object: {answer!r}")
        return answer

    def wait_for_relays(self, count: int, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the registry node reports `count` relays up, or fail with logs."""
        deadline = time.monotonic() + timeout
        last: object = "no answer"
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                last = self.status()
            except (OSError, ValueError, ServerError) as reason:
                last = reason
            else:
                if isinstance(last, Mapping) and last.get("relays_up") == count:
                    return
            time.sleep(POLL_INTERVAL)
        raise ServerError(
            f"registry did not report {count} relays up within {timeout} s "
            f"(last: {last!r})\n{self.log_tails()}"
        )

    def _check_alive(self) -> None:
        """Fail, with the logs, if a node this cluster started has exited."""
        for name, process in self._processes.items():
            if process.poll() is not None:
                raise ServerError(
                    f"node {name!r} exited with {process.returncode}\n"
                    f"{self.log_tails()}"
                )

    def log_text(self, name: str) -> str:
        """Everything node `name` wrote: its twistd log, then its raw output."""
        return read_log(self.log_path(name)) + read_log(self.output_path(name))

    def logs(self) -> str:
        """Everything every node has logged so far."""
        return "".join(self.log_text(name) for name in self.topology.nodes)

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of every node's log and output, labelled."""
        sections = []
        for name in self.topology.nodes:
            for path in (self.log_path(name), self.output_path(name)):
                sections.append(f"--- {path} ---\n{tail(read_log(path), lines)}")
        return "\n".join(sections)


@contextmanager
def running_cluster(
    directory: Path, *, chunk_size: int = TEST_CHUNK_SIZE, extra: str = ""
) -> Iterator[Cluster]:
    """A tree started under `directory`, stopped on the way out whatever happens.

    `extra` is TOML added to its topology file (see `write_topology`).
    """
    topology = write_topology(directory, chunk_size=chunk_size, extra=extra)
    cluster = Cluster(topology, directory / "logs")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class ReferenceRegistry:
    """CNCF distribution's registry on a loopback port, storing under one folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_ports(1)[0]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port`` of its HTTP API."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where its output goes."""
        return self.directory / "registry.log"

    def write_config(self) -> Path:
        """Its own config file: loopback only, no auth, deletes on, storage here."""
        config = self.directory / "config.yml"
        storage = self.directory / "data"
        storage.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "version: 0.1\n"
            "log: {level: info}\n"
            "storage:\n"
            f"  filesystem: {{rootdirectory: {json.dumps(str(storage))}}}\n"
            "  delete: {enabled: true}\n"
            f"http: {{addr: {json.dumps(self.address)}}}\n"
        )
        return config

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start it and wait until ``/v2/`` answers."""
        config = self.write_config()
        with self.log_path.open("ab") as output:
            self._process = subprocess.Popen(
                ["docker-registry", "serve", str(config)],
                cwd=self.directory,
                env=child_environment(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Poll ``/v2/`` until it answers, or fail with the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise ServerError(f"reference registry exited\n{self.log_tails()}")
            try:
                get_json(f"http://{self.address}/v2/")
            except (OSError, ValueError):
                time.sleep(POLL_INTERVAL)
            else:
                return
        raise ServerError(
            f"reference registry not up in {timeout} s\n{self.log_tails()}"
        )

    def stop(self) -> None:
        """Stop it if it runs."""
        if self._process is not None:
            stop_process(self._process, STOP_TIMEOUT)
            self._process = None

    def logs(self) -> str:
        """Everything it has logged so far."""
        return read_log(self.log_path)

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of its log, labelled."""
        return f"--- {self.log_path} ---\n{tail(read_log(self.log_path), lines)}"


@contextmanager
def running_reference_registry(directory: Path) -> Iterator[ReferenceRegistry]:
    """The reference registry started under `directory`, stopped on the way out."""
    directory.mkdir(parents=True, exist_ok=True)
    registry = ReferenceRegistry(directory)
    try:
        registry.start()
        yield registry
    finally:
        registry.stop()
