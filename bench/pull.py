"""Pull benchmark: one layer through treescale's relays against one whole server.

The set-up stands for several hosts on one machine. Three relays and one reference
registry (CNCF distribution) each run in their own network namespace, joined to the
root namespace by their own veth pair, each end of every pair rate-limited by tbf at
``--rate``. The treescale registry node and this client run in the root namespace: a
pull from treescale crosses three links at once, a pull from the reference one.

    client --loopback--> registry node ==veth==> tsb-r1 (relay-a)
                                       ==veth==> tsb-r2 (relay-b)
                                       ==veth==> tsb-r3 (relay-c)
    client ==veth==> tsb-ref (docker-registry)

The layer is random bytes, pushed once to each side; then every run GETs it whole from
treescale, then from the reference, verifying the sha256 of each download. During each
treescale pull the registry process's peak RSS is taken (its high-water mark is reset
first), to show memory follows the window, not the layer.

Run as root from the repository root: ``.venv/bin/python bench/pull.py``. The
namespaces, veths and processes it makes go away at the end whatever happens; so does
its temporary folder, except for the logs when a run fails.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# Nodes are launched exactly as the integration tests launch them.
from tests.integration.cluster import TWISTD, child_environment  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / "conf" / "local.toml"

MIB = 1024 * 1024
REPO = "bench/layer"

# Fresh namespaces hold no listener, so these ports are free in them by construction.
RELAY_BUS_PORT = 7201
REFERENCE_PORT = 7350

# tbf as the lab measured it; only the rate is a choice.
TBF_BURST = "64kb"
TBF_LATENCY = "50ms"

COMMAND_TIMEOUT = 20.0
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.2
SOCKET_TIMEOUT = 60.0
SAMPLE_INTERVAL = 0.05
READ_PIECE = MIB


class BenchError(Exception):
    """The set-up or a transfer did not go as it must; the message says which."""


@dataclass(frozen=True)
class Link:
    """One namespace and the veth pair joining it to the root namespace."""

    namespace: str
    host_veth: str
    inner_veth: str
    host_address: str
    inner_address: str


@dataclass(frozen=True)
class Settings:
    """The cluster-wide settings of the treescale tree under test."""

    chunk_size: int
    replicas: int
    record_replicas: int
    window: int


@dataclass(frozen=True)
class Pull:
    """One timed download."""

    target: str
    run: int
    seconds: float
    rss_before_kib: int | None
    peak_rss_kib: int | None
    cpu_seconds: float | None
    link_bytes: tuple[int, ...] = ()
    link_busy: tuple[float, ...] = ()

    def mib_per_s(self, size: int) -> float:
        """The download's speed, for a blob of `size` bytes."""
        return size / MIB / self.seconds


RELAY_NAMES = ("relay-a", "relay-b", "relay-c")
RELAY_LINKS = tuple(
    Link(f"tsb-r{n}", f"tsb-r{n}-h", f"tsb-r{n}-n", f"10.250.{n}.1", f"10.250.{n}.2")
    for n in (1, 2, 3)
)
REFERENCE_LINK = Link("tsb-ref", "tsb-ref-h", "tsb-ref-n", "10.250.4.1", "10.250.4.2")
LINKS = (*RELAY_LINKS, REFERENCE_LINK)

# The registry node's bus listens on the root end of the first relay link; the other
# relays reach it through their own link by a host route.
REGISTRY_BUS_HOST = RELAY_LINKS[0].host_address


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; chunk size and window default to the embedded tree's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=64, help="layer size, MiB")
    parser.add_argument("--rate", default="100mbit", help="tbf rate of every link")
    parser.add_argument("--runs", type=int, default=3, help="pulls of each server")
    parser.add_argument("--chunk-mb", type=float, help="override the chunk size, MiB")
    parser.add_argument("--window", type=int, help="override the chunks in flight")
    parser.add_argument(
        "--seed", type=int, help="seed of the layer's bytes (default: a fresh one)"
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy the registry node during run 1"
    )
    args = parser.parse_args(argv)
    if args.size_mb < 1 or args.runs < 1:
        parser.error("--size-mb and --runs must be positive")
    return args


def cluster_settings(args: argparse.Namespace) -> Settings:
    """The embedded default's `[cluster]` settings, with command line overrides."""
    cluster = tomllib.loads(DEFAULT_CONFIG.read_text())["cluster"]
    chunk_size = int(cluster["chunk_size"])
    if args.chunk_mb is not None:
        chunk_size = int(args.chunk_mb * MIB)
    return Settings(
        chunk_size=chunk_size,
        replicas=int(cluster["replicas"]),
        record_replicas=int(cluster["record_replicas"]),
        window=args.window or int(cluster["window"]),
    )


def rate_bytes_per_s(rate: str) -> float | None:
    """What a tc rate such as ``100mbit`` carries in bytes a second, if it parses."""
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1.0}
    for unit, factor in units.items():
        number = rate.lower().removesuffix(unit)
        if number != rate.lower():
            try:
                return float(number) * factor / 8
            except ValueError:
                return None
    return None


# Running commands and processes.


def run_command(command: Sequence[str], *, check: bool = True) -> None:
    """Run a set-up command, bounded in time; fail with its output if it fails."""
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if check and done.returncode != 0:
        raise BenchError(f"{' '.join(command)}: {done.stderr.strip()}")


class Processes:
    """The servers this benchmark started, each with its log, stopped together."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start one server, its output going to ``LOG_DIR/<name>.out``."""
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
        return process

    def check_alive(self) -> None:
        """Fail if a server this benchmark started has exited."""
        for name, process in self.running.items():
            if process.poll() is not None:
                raise BenchError(
                    f"{name} exited with {process.returncode}; logs in {self.log_dir}"
                )

    def stop_all(self) -> None:
        """SIGTERM every server, SIGKILL those still there after the timeout."""
        for process in self.running.values():
            if process.poll() is None:
                process.terminate()
        for process in self.running.values():
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        self.running.clear()


def wait_until(ready: Callable[[], bool], what: str, processes: Processes) -> None:
    """Poll `ready` until it holds, or fail after the ready timeout."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        processes.check_alive()
        try:
            if ready():
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        time.sleep(POLL_INTERVAL)
    raise BenchError(f"{what} not ready in {READY_TIMEOUT} s")


# The network: namespaces, veths, tbf.


def set_up_link(link: Link, rate: str) -> None:
    """A namespace, its veth pair with a /30, and tbf on both ends' egress."""
    ns = ("ip", "netns", "exec", link.namespace)
    run_command(["ip", "netns", "add", link.namespace])
    run_command(
        [
            *("ip", "link", "add", link.host_veth, "type", "veth"),
            *("peer", "name", link.inner_veth, "netns", link.namespace),
        ]
    )
    run_command(["ip", "addr", "add", f"{link.host_address}/30", "dev", link.host_veth])
    run_command(["ip", "link", "set", link.host_veth, "up"])
    inner = f"{link.inner_address}/30"
    run_command([*ns, "ip", "addr", "add", inner, "dev", link.inner_veth])
    run_command([*ns, "ip", "link", "set", link.inner_veth, "up"])
    run_command([*ns, "ip", "link", "set", "lo", "up"])
    shape = ["root", "tbf", "rate", rate, "burst", TBF_BURST, "latency", TBF_LATENCY]
    run_command(["tc", "qdisc", "add", "dev", link.host_veth, *shape])
    run_command([*ns, "tc", "qdisc", "add", "dev", link.inner_veth, *shape])


def route_to_registry_bus(link: Link) -> None:
    """Let a relay reach the registry's bus address over its own link."""
    if link.host_address == REGISTRY_BUS_HOST:
        return
    run_command(
        [
            *("ip", "netns", "exec", link.namespace, "ip", "route", "add"),
            *(f"{REGISTRY_BUS_HOST}/32", "via", link.host_address),
        ]
    )


def tear_down_links() -> None:
    """Delete the benchmark's namespaces and veths, whichever of them exist."""
    for link in LINKS:
        run_command(["ip", "netns", "del", link.namespace], check=False)
        run_command(["ip", "link", "del", link.host_veth], check=False)


@contextmanager
def network(rate: str) -> Iterator[None]:
    """Every link of the benchmark, removed on the way out whatever happens."""
    tear_down_links()
    try:
        for link in LINKS:
            set_up_link(link, rate)
        for link in RELAY_LINKS:
            route_to_registry_bus(link)
        yield
    finally:
        tear_down_links()


# The servers.


def free_port(host: str) -> int:
    """A port on `host` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def write_topology(directory: Path, settings: Settings, http_port: int) -> Path:
    """The treescale tree: the registry in the root namespace, a relay per link."""
    bus_port = free_port(REGISTRY_BUS_HOST)
    lines = [
        "[cluster]",
        f'name = "bench-{os.getpid()}"',
        f"data_dir = {json.dumps(str(directory / 'data'))}",
        f"chunk_size = {settings.chunk_size}",
        f"replicas = {settings.replicas}",
        f"record_replicas = {settings.record_replicas}",
        f"window = {settings.window}",
        "",
        "[[node]]",
        'name = "registry"',
        "id = 1",
        f'bus = "{REGISTRY_BUS_HOST}:{bus_port}"',
        'roles = ["registry"]',
        f'http = "tcp:{http_port}:interface=127.0.0.1"',
    ]
    relays = zip(RELAY_NAMES, RELAY_LINKS, strict=True)
    for node_id, (name, link) in enumerate(relays, start=2):
        lines += [
            "",
            "[[node]]",
            f'name = "{name}"',
            f"id = {node_id}",
            f'bus = "{link.inner_address}:{RELAY_BUS_PORT}"',
            'parent = "registry"',
            'roles = ["store"]',
            f'domain = "{name.removeprefix("relay-")}"',
        ]
    path = directory / "topology.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def twistd_command(topology: Path, node: str, log_dir: Path) -> list[str]:
    """The command line of one treescale node."""
    return [
        sys.executable,
        *TWISTD,
        "-n",
        "--pidfile=",
        f"--logfile={log_dir / f'{node}.log'}",
        "treescale-node",
        "--config",
        str(topology),
        "--node",
        node,
    ]


def start_treescale(
    directory: Path, settings: Settings, processes: Processes
) -> tuple[str, int]:
    """The tree up with every relay linked; the registry's address and pid."""
    http_port = free_port("127.0.0.1")
    topology = write_topology(directory, settings, http_port)
    registry = processes.start(
        "registry", twistd_command(topology, "registry", processes.log_dir)
    )
    for name, link in zip(RELAY_NAMES, RELAY_LINKS, strict=True):
        command = twistd_command(topology, name, processes.log_dir)
        processes.start(name, ["ip", "netns", "exec", link.namespace, *command])

    address = f"127.0.0.1:{http_port}"

    def all_relays_up() -> bool:
        status = json.loads(request(address, "GET", "/_treescale/status")[1])
        return bool(status.get("relays_up") == len(RELAY_NAMES))

    wait_until(all_relays_up, "treescale (3 relays linked)", processes)
    return address, registry.pid


def start_reference(directory: Path, processes: Processes) -> str:
    """CNCF distribution in its namespace, storing under `directory`; its address."""
    address = f"{REFERENCE_LINK.inner_address}:{REFERENCE_PORT}"
    storage = directory / "reference-data"
    storage.mkdir()
    config = directory / "reference.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        "storage:\n"
        f"  filesystem: {{rootdirectory: {json.dumps(str(storage))}}}\n"
        f"http: {{addr: {json.dumps(address)}}}\n"
    )
    processes.start(
        "reference",
        [
            *("ip", "netns", "exec", REFERENCE_LINK.namespace),
            *("docker-registry", "serve", str(config)),
        ],
    )
    wait_until(
        lambda: request(address, "GET", "/v2/")[0] == 200, "reference", processes
    )
    return address


# A small HTTP client of the distribution API.


def request(
    address: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, http.client.HTTPResponse]:
    """One request on a fresh connection: status, body, and the response itself."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=SOCKET_TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response
    finally:
        connection.close()


def expect(status: int, wanted: int, what: str, body: bytes) -> None:
    """Fail unless a response has the status wanted."""
    if status != wanted:
        raise BenchError(f"{what}: HTTP {status}: {body[:300]!r}")


def upload_path(location: str | None, what: str) -> str:
    """The path and query of an upload session's `Location`."""
    if not location:
        raise BenchError(f"{what}: no Location")
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_query(path: str, key: str, value: str) -> str:
    """`path` with one more query parameter."""
    separator = "&" if "?" in path else "?"
    return f"{path}{separator}{key}={urllib.parse.quote(value, safe='')}"


def push_blob(address: str, data: bytes, digest: str) -> None:
    """POST a session, PATCH the whole body, PUT ``?digest=``, as clients do."""
    status, body, response = request(address, "POST", f"/v2/{REPO}/blobs/uploads/")
    expect(status, 202, f"POST upload to {address}", body)
    session = upload_path(response.getheader("Location"), "POST upload")

    headers = {"Content-Type": "application/octet-stream"}
    status, body, response = request(address, "PATCH", session, data, headers)
    expect(status, 202, f"PATCH to {address}", body)
    session = upload_path(response.getheader("Location"), "PATCH")

    status, body, _ = request(address, "PUT", with_query(session, "digest", digest))
    expect(status, 201, f"PUT digest to {address}", body)


def pull_blob(address: str, digest: str, size: int, deadline: float) -> float:
    """GET the blob whole, hashing it as it comes; the seconds it took."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=SOCKET_TIMEOUT)
    buffer = bytearray(READ_PIECE)
    view = memoryview(buffer)
    hasher = hashlib.sha256()
    received = 0
    try:
        started = time.perf_counter()
        connection.request("GET", f"/v2/{REPO}/blobs/{digest}")
        response = connection.getresponse()
        if response.status != 200:
            expect(response.status, 200, f"GET from {address}", response.read())
        while True:
            count = response.readinto(view)
            if not count:
                break
            hasher.update(view[:count])
            received += count
            if time.monotonic() > deadline:
                raise BenchError(f"GET from {address}: past its deadline")
        elapsed = time.perf_counter() - started
    finally:
        connection.close()

    actual = "sha256:" + hasher.hexdigest()
    if received != size or actual != digest:
        raise BenchError(
            f"GET from {address}: {received} bytes hashing to {actual}, "
            f"wanted {size} bytes of {digest}"
        )
    return elapsed


# What the registry process costs during a pull.


def reset_peak_rss(pid: int) -> None:
    """Reset a process's RSS high-water mark, so it covers only what follows."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def status_kib(pid: int, field: str) -> int:
    """One memory figure of ``/proc/PID/status``: ``VmRSS``, ``VmHWM`` ..."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise BenchError(f"no {field} for process {pid}")


def received_bytes() -> tuple[int, ...]:
    """Bytes the root namespace has received so far over each relay's link."""
    return tuple(
        int(Path(f"/sys/class/net/{link.host_veth}/statistics/rx_bytes").read_text())
        for link in RELAY_LINKS
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class LinkActivity:
    """Samples every relay link's received bytes in a thread, while a pull runs.

    A link counts as busy for a sample interval in which it carried at least a
    quarter of its rate: the busy seconds, set against the pull's, show links that
    sat idle while the pull waited on another.
    """

    def __init__(self, bytes_per_s: float | None) -> None:
        self.threshold = (bytes_per_s or 0.0) / 4
        self.busy = [0.0] * len(RELAY_LINKS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "LinkActivity":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT)

    def _sample(self) -> None:
        last_time, last = time.monotonic(), received_bytes()
        while not self._stop.wait(SAMPLE_INTERVAL):
            now, counts = time.monotonic(), received_bytes()
            interval = now - last_time
            for index, (before, after) in enumerate(zip(last, counts, strict=True)):
                if after - before > max(self.threshold * interval, 1):
                    self.busy[index] += interval
            last_time, last = now, counts


@contextmanager
def profiled(pid: int, output: str | None, seconds: float) -> Iterator[None]:
    """py-spy records process `pid` while the block runs, when asked to."""
    if output is None:
        yield
        return
    py_spy = Path(sys.executable).parent / "py-spy"
    command = [str(py_spy), "record", "--pid", str(pid), "--output", output]
    command += ["--format", "raw", "--duration", str(int(seconds) + 1), "--rate", "200"]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(STOP_TIMEOUT + seconds)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(STOP_TIMEOUT)


# The benchmark.


def transfer_deadline(size: int, rate: str) -> float:
    """How long one pull may take before it counts as hung: 8 times one link's time."""
    per_second = rate_bytes_per_s(rate)
    if per_second is None:
        return 600.0
    return 30.0 + 8 * size / per_second


def measure(
    args: argparse.Namespace,
    treescale: tuple[str, int],
    reference: str,
    digest: str,
    size: int,
) -> list[Pull]:
    """Every run, treescale then the reference, each download timed and verified."""
    address, pid = treescale
    allowed = transfer_deadline(size, args.rate)
    pulls = []
    for run in range(1, args.runs + 1):
        reset_peak_rss(pid)
        rss_before = status_kib(pid, "VmRSS")
        cpu_before = cpu_seconds(pid)
        links_before = received_bytes()
        output = args.profile if run == 1 else None
        activity = LinkActivity(rate_bytes_per_s(args.rate))
        with profiled(pid, output, allowed), activity:
            seconds = pull_blob(address, digest, size, time.monotonic() + allowed)
        cpu = cpu_seconds(pid) - cpu_before
        links = tuple(
            after - before
            for before, after in zip(links_before, received_bytes(), strict=True)
        )
        peak = status_kib(pid, "VmHWM")
        busy = tuple(activity.busy)
        pulls.append(
            Pull("treescale", run, seconds, rss_before, peak, cpu, links, busy)
        )

        seconds = pull_blob(reference, digest, size, time.monotonic() + allowed)
        pulls.append(Pull("reference", run, seconds, None, None, None))
    return pulls


def report(
    args: argparse.Namespace, settings: Settings, pulls: list[Pull], size: int
) -> str:
    """The table of every pull, the medians and the ratio."""
    lines = [
        f"layer {args.size_mb} MiB, every link tbf {args.rate} both ways, "
        f"chunk {settings.chunk_size / MIB:g} MiB, window {settings.window}, "
        f"replicas {settings.replicas}, {os.cpu_count()} cores",
        "",
        f"{'run':>3}  {'target':<10} {'seconds':>8} {'MiB/s':>7} "
        f"{'RSS before/peak MiB':>19} {'registry CPU s':>14}  "
        "MiB in (busy s) per relay link",
    ]
    for pull in pulls:
        rss = ""
        if pull.rss_before_kib is not None and pull.peak_rss_kib is not None:
            rss = f"{pull.rss_before_kib / 1024:.0f} / {pull.peak_rss_kib / 1024:.0f}"
        cpu = "" if pull.cpu_seconds is None else f"{pull.cpu_seconds:.2f}"
        links = " / ".join(
            f"{count / MIB:.1f} ({busy:.1f})"
            for count, busy in zip(pull.link_bytes, pull.link_busy, strict=True)
        )
        lines.append(
            f"{pull.run:>3}  {pull.target:<10} {pull.seconds:>8.2f} "
            f"{pull.mib_per_s(size):>7.2f} {rss:>19} {cpu:>14}  {links}"
        )

    medians = {
        target: statistics.median(
            p.mib_per_s(size) for p in pulls if p.target == target
        )
        for target in ("treescale", "reference")
    }
    ratio = medians["treescale"] / medians["reference"]
    lines += [
        "",
        f"median treescale (3 relays, 3 links): {medians['treescale']:.2f} MiB/s",
        f"median reference (one server, 1 link): {medians['reference']:.2f} MiB/s",
        f"ratio treescale / reference: {ratio:.2f}",
    ]
    lines.append(busiest_link_line(pulls, size, medians["reference"]))
    nominal = rate_bytes_per_s(args.rate)
    if nominal is not None:
        lines.append(
            f"nominal: one link {nominal / MIB:.2f} MiB/s, "
            f"three links {3 * nominal / MIB:.2f} MiB/s"
        )
    return "\n".join(lines)


def busiest_link_line(pulls: list[Pull], size: int, link_mib_per_s: float) -> str:
    """How long the median pull's busiest relay link alone needed, at one link's speed.

    A pull ends when its last chunk has come, so the link that carried the most bytes
    bounds it; an even share would be a third of the layer each.
    """
    ordered = sorted(
        (p for p in pulls if p.target == "treescale"), key=lambda p: p.seconds
    )
    median = ordered[len(ordered) // 2]
    busiest = max(median.link_bytes) / MIB
    return (
        f"busiest relay link (median pull): {busiest:.1f} MiB of {size / MIB:.0f}, "
        f"{busiest / link_mib_per_s:.2f} s at the reference's one-link speed "
        f"(an even third: {size / MIB / 3 / link_mib_per_s:.2f} s)"
    )


def benchmark(args: argparse.Namespace, directory: Path) -> str:
    """Set everything up, push the layer to both, pull it, and say what it took."""
    settings = cluster_settings(args)
    size = args.size_mb * MIB
    # The layer's bytes decide its chunks' digests, so where they live: a seed lets
    # one placement be measured again.
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4))
    data = random.Random(seed).randbytes(size)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    log_dir = directory / "logs"
    log_dir.mkdir()
    processes = Processes(log_dir)
    print(f"working in {directory}, layer seed {seed}", flush=True)
    with network(args.rate):
        try:
            treescale = start_treescale(directory, settings, processes)
            reference = start_reference(directory, processes)
            for address in (treescale[0], reference):
                started = time.perf_counter()
                push_blob(address, data, digest)
                elapsed = time.perf_counter() - started
                print(f"pushed to {address} in {elapsed:.1f} s", flush=True)
            del data
            pulls = measure(args, treescale, reference, digest, size)
            return report(args, settings, pulls, size)
        finally:
            processes.stop_all()
            for stored in ("data", "reference-data"):
                shutil.rmtree(directory / stored, ignore_errors=True)


def stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into an exception, so every clean-up on the way out runs."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str]) -> int:
    """Run the benchmark once, print its table; 1 if it could not run."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("pull.py: needs root (network namespaces, tc)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, stop_on_signal)
    directory = Path(tempfile.mkdtemp(prefix="tsb-"))
    try:
        print(benchmark(args, directory))
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print(f"pull.py: {e}", file=sys.stderr)
        print(f"pull.py: logs are in {directory / 'logs'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"pull.py: stopped ({e or 'interrupt'}), cleaned up", file=sys.stderr)
        print(f"pull.py: logs are in {directory / 'logs'}", file=sys.stderr)
        return 130
    shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
