"""Mutual TLS on the bus of a real treescale tree: members link, others do not.

A tree here is four ``twistd`` processes on loopback, their topology file with a
``[tls]`` table and their certificates made by ``treescale certs``. The tests push
and pull a blob over HTTP through it, then try to join as outsiders: a real node
process with a certificate of another CA, a process holding a valid certificate of
one relay while its HELLO claims another, and a plain TCP client that speaks our
frames. Each must get no link; the registry's log says why. Last, start-up refuses
a plain bus off loopback and a node whose own TLS files are wrong.
"""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from treescale.bus.frames import Frame, FrameDecoder, FrameError, Kind, encode
from treescale.bus.link import PROTOCOL_VERSION
from treescale.bus.node import topology_hash
from treescale.bus.tls_settings import node_identity
from treescale.config import load

from .cluster import (
    POLL_INTERVAL,
    REGISTRY,
    REPO_ROOT,
    TWISTD,
    Cluster,
    child_environment,
    read_log,
    run_treescale,
    running_cluster,
    stop_process,
    write_topology,
)

pytestmark = pytest.mark.integration

TLS_TABLE = """\
[tls]
ca = "certs/ca.pem"
cert = "certs/{node}.pem"
key = "certs/{node}.key"
"""

# The relay an outsider tries to replace (it is stopped first, so its port is
# free), and the relay whose valid certificate one outsider borrows.
TARGET = "relay-c"
LENDER = "relay-b"

TIMEOUT = 20.0
COMMAND_TIMEOUT = 60.0
# How long an outsider keeps trying before the test checks it never got in: long
# enough for several dials, since a refused one is retried with backoff.
OUTSIDER_TRIES = 4.0


def make_certs(topology: Path, out: Path, *options: str) -> str:
    """Run ``treescale certs`` (as ``python -m treescale.cli``); what it printed."""
    result = run_treescale(
        "certs", str(topology), "--out", str(out), *options, timeout=COMMAND_TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A tree of one registry and three relays whose bus is mutual TLS.

    The certificates are made from a first topology file in the cluster's folder;
    `running_cluster` then writes the file again with its own ports, but the same
    cluster and node names, which are all a certificate names.
    """
    directory = tmp_path / "cluster"
    planned = write_topology(directory, extra=TLS_TABLE)
    make_certs(planned.path, directory / "certs")
    with running_cluster(directory, extra=TLS_TABLE) as cluster:
        yield cluster


# HTTP, through urllib and never a proxy.


def http(
    cluster: Cluster,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Mapping[str, str], bytes]:
    """One request to the registry's API: status, headers, whole body."""
    url = path if path.startswith("http") else f"http://{cluster.address}{path}"
    request = urllib.request.Request(
        url, data=body, method=method, headers=dict(headers or {})
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def push_blob(cluster: Cluster, repository: str, data: bytes) -> str:
    """Upload a blob by POST then one PUT with its bytes; its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, body = http(cluster, "POST", f"/v2/{repository}/blobs/uploads/")
    assert status == 202, body
    location = headers["Location"]
    separator = "&" if "?" in location else "?"
    status, _, body = http(
        cluster,
        "PUT",
        f"{location}{separator}digest={digest}",
        data,
        {"Content-Type": "application/octet-stream"},
    )
    assert status == 201, body
    return digest


# Waiting on what the processes say.


def wait_until(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll `check` until it holds, or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(POLL_INTERVAL)
    raise AssertionError(f"not within {timeout} s: {what}")


def registry_links(cluster: Cluster) -> list[str]:
    """The peers the registry node has a bus link with."""
    links = cluster.status()["links"]
    assert isinstance(links, list)
    return sorted(str(link) for link in links)


def stop_target(cluster: Cluster) -> None:
    """Stop the relay an outsider will pose as, and wait until its link is gone."""
    cluster.stop_node(TARGET)
    wait_until(lambda: TARGET not in registry_links(cluster), f"{TARGET} unlinked")


def assert_kept_out(cluster: Cluster, outsider: "subprocess.Popen[bytes]") -> None:
    """The outsider kept trying, and the registry never linked it."""
    time.sleep(OUTSIDER_TRIES)
    assert outsider.poll() is None, "the outsider gave up or crashed"
    assert registry_links(cluster) == sorted(
        name for name in cluster.relays if name != TARGET
    )
    assert f"bus link up: {REGISTRY} <-> {TARGET}" not in after_stop(cluster)


def after_stop(cluster: Cluster) -> str:
    """What the registry logged since the target relay last went down."""
    text = cluster.log_text(REGISTRY)
    marker = f"bus link down: {REGISTRY} <-> {TARGET}"
    return text[text.rindex(marker) :] if marker in text else text


def start_process(command: list[str], log: Path) -> "subprocess.Popen[bytes]":
    """Start a process of the repository's Python, its output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=child_environment(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def identity(cluster: Cluster, node: str) -> str:
    """The DNS-ID node `node`'s certificate carries."""
    return node_identity(load(cluster.topology.path).cluster, node)


# Members.


def test_tls_tree_takes_a_push_and_serves_it_back(tls_cluster: Cluster) -> None:
    """Over a TLS bus, a blob of several chunks is pushed, spread over the relays
    and pulled back byte for byte."""
    data = os.urandom(3 * 1024 * 1024 + 777)

    digest = push_blob(tls_cluster, "tls/blob", data)
    status, _, body = http(tls_cluster, "GET", f"/v2/tls/blob/blobs/{digest}")

    assert status == 200
    assert body == data
    holders = [
        relay
        for relay in tls_cluster.relays
        if list(tls_cluster.chunk_dir(relay).glob("*/*"))
    ]
    assert len(holders) >= 2, "the chunks did not cross the bus to the relays"
    for name in tls_cluster.topology.nodes:
        assert "(mutual TLS)" in tls_cluster.log_text(name), name
    assert "Traceback" not in tls_cluster.logs()


# Outsiders.


# An outsider that is not a node process: a node refuses to start with files that
# are not its own, so this one builds its bus node itself, from the CA file it
# trusts and the certificate and key it shows, and says HELLO as the target relay.
IMPOSTOR = """
import sys
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from treescale.bus.node import BusNode
from treescale.bus.tls import BusTls
from treescale.config import load

topology_path, posing_as, ca, certificate, key, log = sys.argv[1:]
globalLogBeginner.beginLoggingTo([textFileLogObserver(open(log, "a"))])
topology = load(topology_path)
tls = BusTls(
    topology.cluster,
    posing_as,
    x509.load_pem_x509_certificates(open(ca, "rb").read()),
    x509.load_pem_x509_certificate(open(certificate, "rb").read()),
    serialization.load_pem_private_key(open(key, "rb").read(), password=None),
)
node = BusNode(topology, topology.node(posing_as), reactor, reactor, tls=tls)
node.privilegedStartService()
node.startService()
reactor.run()
"""


def start_impostor(
    cluster: Cluster, trusted_ca: Path, certificate: Path, key: Path, log: Path
) -> "subprocess.Popen[bytes]":
    """The process of `IMPOSTOR`, posing as the target relay with these files."""
    arguments = [str(cluster.topology.path), TARGET, str(trusted_ca)]
    arguments += [str(certificate), str(key), str(log)]
    command = [sys.executable, "-c", IMPOSTOR, *arguments]
    return start_process(command, log.with_suffix(".out"))


def test_certificate_of_another_ca_cannot_join(
    tls_cluster: Cluster, tmp_path: Path
) -> None:
    """Certificates of another CA get no link: a real node process made with them
    refuses the registry itself, and a process that trusts the registry but shows
    such a certificate is refused by the registry, which says why."""
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    text = tls_cluster.topology.path.read_text()
    data_dir = str(tls_cluster.topology.data_dir)
    (rogue / "topology.toml").write_text(text.replace(data_dir, str(rogue / "data")))
    make_certs(rogue / "topology.toml", rogue / "certs")
    stop_target(tls_cluster)

    log = rogue / "relay-c.log"
    command = [sys.executable, *TWISTD, "-n", "--pidfile=", f"--logfile={log}"]
    command += ["treescale-node", "--config", str(rogue / "topology.toml")]
    node = start_process([*command, "--node", TARGET], rogue / "relay-c.out")
    try:
        wait_until(
            lambda: (
                "the peer refused us: tlsv1 alert unknown ca" in after_stop(tls_cluster)
            ),
            "the registry's log of the rogue node's refusal",
        )
        assert_kept_out(tls_cluster, node)
        # The registry sends its CA along with its certificate; the rogue node
        # finds that CA is not the one it trusts.
        assert "which is not the cluster's CA" in read_log(log)
    finally:
        stop_process(node, 10.0)

    certs = tls_cluster.topology.path.parent / "certs"
    impostor = start_impostor(
        tls_cluster,
        certs / "ca.pem",
        rogue / "certs" / f"{TARGET}.pem",
        rogue / "certs" / f"{TARGET}.key",
        tmp_path / "impostor.log",
    )
    try:
        refusal = (
            f"refused in the TLS handshake: its certificate "
            f"({identity(tls_cluster, TARGET)}) is not signed by the cluster's CA"
        )
        wait_until(lambda: refusal in after_stop(tls_cluster), "the registry's refusal")
        assert_kept_out(tls_cluster, impostor)
    finally:
        stop_process(impostor, 10.0)

    tls_cluster.start_node(TARGET)
    tls_cluster.wait_for_relays(len(tls_cluster.relays))


def test_valid_certificate_of_another_node_cannot_join(
    tls_cluster: Cluster, tmp_path: Path
) -> None:
    """A process with relay-b's valid certificate whose HELLO says relay-c gets no
    link, and the registry logs the names that differ; relay-b stays linked."""
    certs = tls_cluster.topology.path.parent / "certs"
    stop_target(tls_cluster)

    outsider = start_impostor(
        tls_cluster,
        certs / "ca.pem",
        certs / f"{LENDER}.pem",
        certs / f"{LENDER}.key",
        tmp_path / "impostor.log",
    )
    try:
        refusal = (
            f"HELLO says {TARGET!r} but its certificate names "
            f"{identity(tls_cluster, LENDER)}, not {identity(tls_cluster, TARGET)}"
        )
        wait_until(lambda: refusal in after_stop(tls_cluster), "the registry's refusal")
        assert_kept_out(tls_cluster, outsider)
        assert LENDER in registry_links(tls_cluster)
    finally:
        stop_process(outsider, 10.0)


def test_plain_tcp_peer_speaking_frames_gets_nothing(tls_cluster: Cluster) -> None:
    """A plain TCP client that sends a correct HELLO gets no frame back (not even
    the registry's HELLO) and is cut off; the tree is untouched."""
    topology = load(tls_cluster.topology.path)
    hello = Frame(
        Kind.HELLO,
        12345,
        meta={
            "cluster": topology.cluster,
            "node": TARGET,
            "version": PROTOCOL_VERSION,
            "topology": topology_hash(topology),
        },
    )
    port = tls_cluster.topology.bus_ports[REGISTRY]

    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(encode(hello))
        while chunk := sock.recv(65536):
            received += chunk

    try:
        frames = FrameDecoder().feed(received)
    except FrameError:
        frames = []
    assert frames == []
    assert topology.cluster.encode() not in received
    wait_until(
        lambda: "bus link from" in tls_cluster.log_text(REGISTRY),
        "the registry's refusal of the plain peer",
    )
    assert registry_links(tls_cluster) == sorted(tls_cluster.relays)


# Start-up.


def run_node(topology: Path, node: str) -> subprocess.CompletedProcess[str]:
    """Run ``twistd -n treescale-node`` for one node to its end (it must end)."""
    command = [sys.executable, *TWISTD, "-n", "--pidfile=", "treescale-node"]
    return subprocess.run(
        [*command, "--config", str(topology), "--node", node],
        cwd=REPO_ROOT,
        env=child_environment(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a refused start-up printed, checked to be one and alone."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if "treescale-node:" in line]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def test_plain_bus_off_loopback_refuses_to_start(tmp_path: Path) -> None:
    """A file without [tls] whose relay's bus is not loopback stops the registry
    node at start with one line saying TLS is needed (nothing is dialled: the
    address is under .invalid, and the registry dials no one)."""
    topology = write_topology(tmp_path)
    text = topology.path.read_text()
    far = f'bus = "{TARGET}.invalid:7100"'
    text = text.replace(f'bus = "127.0.0.1:{topology.bus_ports[TARGET]}"', far)
    topology.path.write_text(text)

    line = one_line(run_node(topology.path, REGISTRY))

    assert f"node {TARGET!r}: field 'bus'" in line
    assert "not loopback" in line and "[tls]" in line


def test_node_with_wrong_tls_files_refuses_to_start(tmp_path: Path) -> None:
    """A node whose certificate is missing, or is another node's, stops at start
    with one line naming the file."""
    topology = write_topology(tmp_path, extra=TLS_TABLE)
    certs = tmp_path / "certs"

    missing = one_line(run_node(topology.path, TARGET))
    assert f"node {TARGET!r}: [tls]" in missing
    assert str(certs / "ca.pem") in missing

    make_certs(topology.path, certs)
    shutil.copy(certs / f"{LENDER}.pem", certs / f"{TARGET}.pem")
    shutil.copy(certs / f"{LENDER}.key", certs / f"{TARGET}.key")
    borrowed = one_line(run_node(topology.path, TARGET))
    assert str(certs / f"{TARGET}.pem") in borrowed
    assert f"is not for node {TARGET!r}" in borrowed
