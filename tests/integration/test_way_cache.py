"""A chunk cache on the way, with real processes: registry nodes behind one relay.

The tree of this test is its own: a hub node with a chunk cache at the root, two
registry nodes and three store relays as its children, so every chunk a registry
node gets from a store relay passes the hub.

          hub (cache_size = 64 MiB)
       /    |     |     |     \\
    reg-1 reg-2 relay-a relay-b relay-c

(The hub has the registry role only because a node must have a role; nobody pulls
through it.) What the store relays send is read from outside, from the kernel's
count of the bytes each relay's link to the hub carried (``ss``): with the cache,
two registry nodes pulling one blob at once cost the relays about one blob's
bytes, not two, and a pull after them costs nothing.
"""

import hashlib
import http.client
import json
import os
import re
import subprocess
import urllib.parse
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from .cluster import (
    REPLICAS,
    TEST_CHUNK_SIZE,
    Cluster,
    Topology,
    free_ports,
    relay_chunk_files,
    torn_chunk_files,
    wait_for,
)
from .test_failures import node_pid, nodes_with_tracebacks

pytestmark = pytest.mark.integration

MiB = 1024 * 1024

HUB = "hub"
REGISTRIES = ("reg-1", "reg-2")
RELAYS = ("relay-a", "relay-b", "relay-c")
CACHE_SIZE = 64 * MiB
BLOB_SIZE = 24 * MiB  # 24 chunks of the tests' 1 MiB
REPOSITORY = "waycache/app"
HTTP_TIMEOUT = 60.0


@dataclass(frozen=True)
class HubTopology(Topology):
    """A tree with a hub at the root and registry nodes beside the relays."""

    registries: tuple[str, ...] = ()
    http_ports: Mapping[str, int] = field(default_factory=dict)

    @property
    def nodes(self) -> tuple[str, ...]:
        return (HUB, *self.registries, *self.relays)


def write_hub_topology(directory: Path) -> HubTopology:
    """The topology file of the tree above, on fresh loopback ports."""
    names = (HUB, *REGISTRIES, *RELAYS)
    ports = free_ports(2 * len(names))
    bus_ports = dict(zip(names, ports[: len(names)], strict=True))
    http_ports = dict(zip((HUB, *REGISTRIES), ports[len(names) :], strict=False))
    topology = HubTopology(
        path=directory / "topology.toml",
        data_dir=directory / "data",
        http_port=http_ports[REGISTRIES[0]],
        bus_ports=bus_ports,
        relays=RELAYS,
        registries=REGISTRIES,
        http_ports=http_ports,
    )
    lines = [
        "[cluster]",
        f'name = "waycache-{os.getpid()}"',
        f"data_dir = {json.dumps(str(topology.data_dir))}",
        f"chunk_size = {TEST_CHUNK_SIZE}",
        f"replicas = {REPLICAS}",
        "record_replicas = 3",
        "window = 8",
    ]
    for node_id, name in enumerate(names, start=1):
        lines += [
            "",
            "[[node]]",
            f"name = {json.dumps(name)}",
            f"id = {node_id}",
            f'bus = "127.0.0.1:{bus_ports[name]}"',
        ]
        if name != HUB:
            lines.append(f"parent = {json.dumps(HUB)}")
        if name in http_ports:
            http = f"tcp:{http_ports[name]}:interface=127.0.0.1"
            lines += ['roles = ["registry"]', f"http = {json.dumps(http)}"]
        else:
            lines += ['roles = ["store"]', f"domain = {json.dumps(name)}"]
        if name == HUB:
            lines.append(f"cache_size = {CACHE_SIZE}")
    directory.mkdir(parents=True, exist_ok=True)
    topology.data_dir.mkdir(exist_ok=True)
    topology.path.write_text("\n".join(lines) + "\n")
    return topology


@pytest.fixture
def hub_tree(tmp_path: Path) -> Iterator[Cluster]:
    """The tree above, running, every registry node seeing every relay."""
    topology = write_hub_topology(tmp_path / "cluster")
    cluster = Cluster(topology, tmp_path / "cluster" / "logs")
    try:
        cluster.start()
        for name in REGISTRIES[1:]:
            at(cluster, name).wait_for_relays(len(RELAYS))
        yield cluster
    finally:
        cluster.stop()


def at(cluster: Cluster, name: str) -> Cluster:
    """The same running tree, seen through registry node `name`'s HTTP API."""
    topology = cluster.topology
    assert isinstance(topology, HubTopology)
    return Cluster(
        replace(topology, http_port=topology.http_ports[name]), cluster.log_dir
    )


def connection(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)


def push_blob(port: int, data: bytes) -> str:
    """Upload one blob monolithically (POST, then PUT with the body); its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    http = connection(port)
    try:
        http.request("POST", f"/v2/{REPOSITORY}/blobs/uploads/", body=b"")
        started = http.getresponse()
        started.read()
        assert started.status == 202, started.status
        location = urllib.parse.urlsplit(started.getheader("Location") or "")
        query = f"{location.query}&" if location.query else ""
        http.request("PUT", f"{location.path}?{query}digest={digest}", body=data)
        done = http.getresponse()
        done.read()
        assert done.status == 201, done.status
    finally:
        http.close()
    return digest


def pull_digest(port: int, digest: str) -> str:
    """GET a blob whole; the digest of the bytes that came."""
    http = connection(port)
    try:
        http.request("GET", f"/v2/{REPOSITORY}/blobs/{digest}")
        response = http.getresponse()
        hasher = hashlib.sha256()
        while piece := response.read(MiB):
            hasher.update(piece)
        assert response.status == 200, response.status
        return "sha256:" + hasher.hexdigest()
    finally:
        http.close()


def sent_to_hub(cluster: Cluster, name: str) -> int:
    """Bytes node `name` has sent the hub and the hub has acknowledged, as the
    kernel counts them on its TCP link (``ss``'s ``bytes_acked``)."""
    pid = node_pid(cluster, name)
    hub_port = cluster.topology.bus_ports[HUB]
    listing = subprocess.run(
        ["ss", "-tinpH", "state", "established", f"( dport = :{hub_port} )"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.splitlines()
    sent = 0
    for header, details in zip(listing[::2], listing[1::2], strict=True):
        if f"pid={pid}," in header:
            acked = re.search(r"bytes_acked:(\d+)", details)
            sent += int(acked.group(1)) if acked else 0
    return sent


def relays_sent(cluster: Cluster) -> int:
    """Bytes the store relays have sent over their links, all together."""
    return sum(sent_to_hub(cluster, relay) for relay in RELAYS)


def test_registry_nodes_behind_a_cache_fetch_each_chunk_upstream_once(
    hub_tree: Cluster,
) -> None:
    """Two registry nodes pulling one blob at once through the hub cost the store
    relays one blob's bytes, not two; a third pull after them costs none."""
    topology = hub_tree.topology
    assert isinstance(topology, HubTopology)
    ports = [topology.http_ports[name] for name in REGISTRIES]
    data = os.urandom(BLOB_SIZE)
    digest = push_blob(ports[0], data)

    before = relays_sent(hub_tree)
    with ThreadPoolExecutor(len(ports)) as pool:
        pulled = list(pool.map(lambda port: pull_digest(port, digest), ports))
    together = relays_sent(hub_tree) - before

    assert pulled == [digest, digest]
    # Every chunk crossed a relay link once: the blob's bytes and the frames'
    # headers, records and heartbeats, well under a second copy.
    assert BLOB_SIZE * 0.95 < together < BLOB_SIZE * 1.25, together / BLOB_SIZE

    before = relays_sent(hub_tree)
    assert pull_digest(ports[1], digest) == digest
    again = relays_sent(hub_tree) - before

    assert again < BLOB_SIZE * 0.05, again / BLOB_SIZE
    assert nodes_with_tracebacks(hub_tree) == []


def test_bad_bytes_caught_on_the_way_are_put_right_on_their_relay(
    hub_tree: Cluster,
) -> None:
    """A relay whose copies rotted sends bad bytes to the hub, which refuses
    them (they are neither cached nor passed on); the registry node takes each
    chunk from its other holder and sends the good bytes back to the rotten one,
    which sets its copy aside and stores them."""
    topology = hub_tree.topology
    assert isinstance(topology, HubTopology)
    port = topology.http_ports[REGISTRIES[1]]
    data = os.urandom(BLOB_SIZE)
    digest = push_blob(topology.http_ports[REGISTRIES[0]], data)
    rotten = relay_chunk_files(hub_tree, "relay-a")
    assert rotten
    for path in rotten.values():
        with path.open("r+b") as chunk:
            chunk.seek(100)
            byte = chunk.read(1)
            chunk.seek(100)
            chunk.write(bytes([byte[0] ^ 0xFF]))

    assert pull_digest(port, digest) == digest

    hub_log = hub_tree.log_text(HUB)
    assert "bad bytes for chunk" in hub_log and "from relay-a" in hub_log
    wait_for(
        lambda: len(torn_chunk_files(hub_tree)) < len(rotten),
        "the registry node to put good bytes back on relay-a",
        30,
    )
    assert "re-creating chunk" in hub_tree.log_text(REGISTRIES[1])
    quarantined = topology.data_dir / "relay-a" / "quarantine"
    assert any(quarantined.rglob("*")), "no rotten copy set aside"
    assert pull_digest(port, digest) == digest
    assert nodes_with_tracebacks(hub_tree) == []
