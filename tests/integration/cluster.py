"""Servers the integration tests start as real processes on loopback.

A treescale tree here is one registry node and three store relays, each its own
``twistd`` process reading one topology file written for the test, with fresh
loopback ports and its data under the test's folder. The reference registry (CNCF
distribution) runs the same way, so the tests can prove an image and its assertions
against a known-good server first. Every wait is bounded; every process started is
stopped, with SIGTERM and then SIGKILL.

Either server can ask for logins from one htpasswd file of the test accounts below;
a treescale tree also gets their groups and per-repository rules.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http import HTTPStatus
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


def run_treescale(
    *arguments: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run the `treescale` command (as ``python -m treescale.cli``) from the
    repository, as a user would; its outcome, whatever its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "treescale.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=child_environment(),
        check=False,
    )


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


def answers_v2(address: str, timeout: float = 2.0) -> bool:
    """Whether a registry answers ``GET /v2/``: 200, or 401 when it wants a login."""
    try:
        get_json(f"http://{address}/v2/", timeout)
    except urllib.error.HTTPError as error:
        return error.code == HTTPStatus.UNAUTHORIZED
    except (OSError, ValueError):
        return False
    return True


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


def _node_table(
    topology: Topology, name: str, node_id: int, drain: bool = False
) -> list[str]:
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
    if drain:
        lines.append("drain = true")
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
    directory.mkdir(parents=True, exist_ok=True)
    topology.data_dir.mkdir(exist_ok=True)
    _write_file(topology, chunk_size=chunk_size, extra=extra)
    return topology


def edit_topology(
    topology: Topology,
    *,
    relays: Sequence[str],
    version: int,
    draining: Sequence[str] = (),
    chunk_size: int = TEST_CHUNK_SIZE,
    extra: str = "",
) -> Topology:
    """Rewrite a tree's file as an operator editing it would: relays kept keep
    their ports and ids, new ones get fresh ports and ids after the highest."""
    new = [name for name in relays if name not in topology.bus_ports]
    ports = dict(topology.bus_ports)
    ports.update(zip(new, free_ports(len(new)), strict=True))
    edited = Topology(
        path=topology.path,
        data_dir=topology.data_dir,
        http_port=topology.http_port,
        bus_ports=ports,
        relays=tuple(relays),
    )
    _write_file(
        edited,
        chunk_size=chunk_size,
        extra=extra,
        version=version,
        draining=draining,
    )
    return edited


def _write_file(
    topology: Topology,
    *,
    chunk_size: int,
    extra: str,
    version: int = 1,
    draining: Sequence[str] = (),
) -> None:
    """Write `topology` to its file; a node's id is its place among every node
    the tree has had (its bus ports are kept in that order)."""
    lines = [
        "[cluster]",
        f'name = "test-{os.getpid()}"',
        f"version = {version}",
        f"data_dir = {_toml_string(str(topology.data_dir))}",
        f"chunk_size = {chunk_size}",
        f"replicas = {REPLICAS}",
        "record_replicas = 3",
        "window = 8",
    ]
    ids = {name: number for number, name in enumerate(topology.bus_ports, start=1)}
    for name in topology.nodes:
        lines += ["", *_node_table(topology, name, ids[name], name in draining)]

    if extra:
        lines += ["", extra]

    temporary = topology.path.with_suffix(".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    temporary.replace(topology.path)


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

    def send_signal(self, name: str, signum: int) -> None:
        """Send node `name`'s process a signal (SIGHUP reloads its topology)."""
        process = self._processes.get(name)
        if process is None or process.poll() is not None:
            raise ServerError(f"node {name!r} is not running")
        process.send_signal(signum)

    def pid(self, name: str) -> int:
        """Node `name`'s process id."""
        return self._processes[name].pid

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
    """CNCF distribution's registry on a loopback port, storing under one folder.

    Given an htpasswd file it asks every request for Basic credentials from that
    file, and lets any user it knows do anything: it has no per-repository rules.
    """

    def __init__(self, directory: Path, htpasswd: Path | None = None) -> None:
        self.directory = directory
        self.htpasswd = htpasswd
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
        """Its own config file: loopback only, deletes on, storage here.

        Logins are on only if it was given an htpasswd file.
        """
        config = self.directory / "config.yml"
        storage = self.directory / "data"
        storage.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log: {level: info}",
            "storage:",
            f"  filesystem: {{rootdirectory: {json.dumps(str(storage))}}}",
            "  delete: {enabled: true}",
            f"http: {{addr: {json.dumps(self.address)}}}",
        ]
        if self.htpasswd is not None:
            path = json.dumps(str(self.htpasswd))
            lines.append(
                f"auth: {{htpasswd: {{realm: {REFERENCE_REALM}, path: {path}}}}}"
            )
        config.write_text("\n".join(lines) + "\n")
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
            if answers_v2(self.address):
                return
            time.sleep(POLL_INTERVAL)
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
def running_reference_registry(
    directory: Path, *, htpasswd: Path | None = None
) -> Iterator[ReferenceRegistry]:
    """The reference registry started under `directory`, stopped on the way out.

    With `htpasswd` it asks for Basic credentials from that file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    registry = ReferenceRegistry(directory, htpasswd)
    try:
        registry.start()
        yield registry
    finally:
        registry.stop()


# Logins. One htpasswd file, made by the real `htpasswd` tool, serves both servers;
# treescale also reads the groups and rules below, which the reference registry has
# no notion of: any user it knows may do anything there.

# The realm the reference registry names in its Basic challenge.
REFERENCE_REALM = "treescale-tests"

# The two ways treescale asks for a login: a Basic challenge, or the Docker token
# flow, where a client trades the password for a token at treescale's /token.
BASIC = "basic"
TOKEN = "token"

# Repositories below this prefix are the ones the developers' group may write.
TEAM_PREFIX = "team/"


@dataclass(frozen=True)
class Account:
    """A user the servers under test know, and the password it signs in with."""

    user: str
    password: str

    @property
    def creds(self) -> str:
        """``user:password``, as skopeo's ``--creds`` takes it."""
        return f"{self.user}:{self.password}"


def _new_password(user: str) -> str:
    """A password of this run alone, so finding it in a log can only be a leak."""
    return f"{user}-{secrets.token_urlsafe(18)}"


# A developer: pull, push and delete below team/, nothing elsewhere.
ALICE = Account("alice", _new_password("alice"))
# A reader: pull anything, push and delete nothing.
BOB = Account("bob", _new_password("bob"))
# Known to the servers, but only ever sent a wrong password: a log line naming
# this user can only be about a failed login.
CAROL = Account("carol", _new_password("carol"))
# Everything everywhere: the tests look with it at what a refused request left.
ADMIN = Account("admin", _new_password("admin"))

ACCOUNTS = (ALICE, BOB, CAROL, ADMIN)

# What every wrong-password attempt sends.
WRONG_PASSWORD = _new_password("wrong")


def leaked_passwords(logged: str) -> list[str]:
    """Which passwords the tests send appear in `logged`, alone or in Basic form.

    The wrong password counts too, as carol's; none may ever be logged.
    """
    pairs = [(account.user, account.password) for account in ACCOUNTS]
    pairs.append((CAROL.user, WRONG_PASSWORD))
    found = []
    for user, password in pairs:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        if password in logged or basic in logged:
            found.append(f"{user}'s password {password!r}")
    return found


@dataclass(frozen=True)
class AccessRule:
    """What the members of some groups may do to the repositories named."""

    repositories: tuple[str, ...]
    groups: tuple[str, ...]
    actions: tuple[str, ...]


GROUPS = {
    "devs": (ALICE.user, CAROL.user),
    "readers": (BOB.user,),
    "admins": (ADMIN.user,),
}

RULES = (
    AccessRule((f"{TEAM_PREFIX}**",), ("devs",), ("pull", "push", "delete")),
    AccessRule(("**",), ("readers",), ("pull",)),
    AccessRule(("**",), ("admins",), ("pull", "push", "delete")),
)


def write_htpasswd(path: Path, accounts: Sequence[Account] = ACCOUNTS) -> Path:
    """Write a bcrypt htpasswd file of `accounts` with the real tool; its path."""
    if shutil.which("htpasswd") is None:
        raise ServerError("htpasswd is not installed (scripts/install adds it)")

    entries = []
    for account in accounts:
        result = subprocess.run(
            ["htpasswd", "-Bbn", account.user, account.password],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise ServerError(f"htpasswd for {account.user}: {result.stderr}")
        entries.append(result.stdout.strip())

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(entries) + "\n")
    return path


def _toml_strings(values: Sequence[str]) -> str:
    """A TOML array of basic strings."""
    return "[" + ", ".join(_toml_string(value) for value in values) + "]"


def auth_tables(mode: str, htpasswd: Path, *, anonymous_pull: bool = False) -> str:
    """The ``[auth]`` tables that turn logins on in a treescale topology file."""
    lines = [
        "[auth]",
        f"mode = {_toml_string(mode)}",
        f"htpasswd = {_toml_string(str(htpasswd))}",
        f"anonymous_pull = {'true' if anonymous_pull else 'false'}",
        "",
        "[auth.groups]",
        *(f"{group} = {_toml_strings(users)}" for group, users in GROUPS.items()),
    ]
    for rule in RULES:
        lines += [
            "",
            "[[auth.rule]]",
            f"repositories = {_toml_strings(rule.repositories)}",
            f"groups = {_toml_strings(rule.groups)}",
            f"actions = {_toml_strings(rule.actions)}",
        ]
    return "\n".join(lines)


# One request in an access log, twisted.web's or the reference registry's (both
# write the combined format): the quoted request line, then the status.
ACCESS_REQUEST = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S*) HTTP/\d\.\d" (?P<status>\d{3}) '
)


@dataclass(frozen=True)
class Request:
    """One request an access log recorded."""

    method: str
    path: str
    status: int


def access_requests(text: str) -> list[Request]:
    """The requests of an access log, in the order they were logged."""
    return [
        Request(found["method"], found["path"], int(found["status"]))
        for found in ACCESS_REQUEST.finditer(text)
    ]


def event_lines(text: str) -> list[str]:
    """The lines of a log that are not access-log lines: what the code chose to say.

    A request line holds the query string, which for a token request names the
    user; only the lines left say something the server decided to log.
    """
    return [line for line in text.splitlines() if not ACCESS_REQUEST.search(line)]


@contextmanager
def running_reference_with_logins(directory: Path) -> Iterator[ReferenceRegistry]:
    """The reference registry asking for logins from a new htpasswd of `ACCOUNTS`."""
    htpasswd = write_htpasswd(directory / "htpasswd")
    with running_reference_registry(directory / "server", htpasswd=htpasswd) as ref:
        yield ref


@contextmanager
def running_cluster_with_logins(
    directory: Path, mode: str, *, anonymous_pull: bool = False
) -> Iterator[Cluster]:
    """A tree asking for logins in `mode`, from a new htpasswd of `ACCOUNTS`.

    Its groups and rules are `GROUPS` and `RULES`.
    """
    htpasswd = write_htpasswd(directory / "htpasswd")
    tables = auth_tables(mode, htpasswd, anonymous_pull=anonymous_pull)
    with running_cluster(directory / "cluster", extra=tables) as cluster:
        yield cluster


# What the relays keep on disk, looked at from outside: for tests that hurt the
# tree and then check that nothing torn or half-written is left.


def relay_chunk_files(cluster: Cluster, relay: str) -> dict[str, Path]:
    """Relay `relay`'s chunk files by hex digest (the name they are kept under)."""
    return {
        path.name: path
        for path in cluster.chunk_dir(relay).glob("*/*")
        if path.is_file() and not path.name.endswith(".part")
    }


def torn_chunk_files(cluster: Cluster) -> list[Path]:
    """Every chunk file, on any relay, whose bytes do not hash to its name."""
    torn = []
    for relay in cluster.relays:
        for name, path in relay_chunk_files(cluster, relay).items():
            digest = hashlib.sha256()
            with path.open("rb") as chunk:
                while piece := chunk.read(1024 * 1024):
                    digest.update(piece)
            if digest.hexdigest() != name:
                torn.append(path)
    return torn


def unfinished_writes(cluster: Cluster) -> list[Path]:
    """Temporary files of chunk or record writes left on any relay's disk."""
    left = []
    for relay in cluster.relays:
        root = cluster.topology.data_dir / relay
        left += [path for path in (root / "tmp").glob("*") if path.is_file()]
        left += list((root / "records").glob("*/*.part"))
    return left


def wait_for(check: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll `check` until it holds; `ServerError` naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ServerError(f"{what}: not within {timeout} s")
        time.sleep(POLL_INTERVAL)
