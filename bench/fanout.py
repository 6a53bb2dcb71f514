"""The fanout case: many registry nodes behind one relay with a chunk cache.

    client threads, one per registry node (root namespace)
        registry-1 ... registry-N   (root namespace, bus on loopback)
              \\      |      /
               hub (root namespace; cache_size; bus on 10.250.1.1)
              /      |      \\
    ==veth==> relay-1  relay-2  relay-3   (each in its netns, behind its link)

The store relays sit behind their rate-limited links as in the other cases; the
hub and the registry nodes share the root namespace with the client, so what
crosses a link is what the store relays send, and nothing else. Each run pulls
two fresh layers of the same size, so the hub's cache is cold for both: one
registry node pulls the first alone, then every registry node pulls the second
at once. The figures: the bytes over the relays' links against the layer's size
(the cache's promise is each chunk upstream once), and each of those pulls' time
against the lone pull's.
"""

import functools
import json
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench import client
from bench.client import Registry, request
from bench.layers import Layer, make_layer
from bench.network import (
    Link,
    add_host_route,
    limit,
    links_up,
    relay_link,
    unlimit,
)
from bench.results import STREAM, TREESCALE
from bench.servers import (
    RELAY_BUS_PORT,
    Processes,
    Settings,
    free_port,
    twistd_command,
    wait_until,
)

if TYPE_CHECKING:
    from bench.runner import Bench

PHASE = "fanout"
HUB = "hub"
LABEL = "fanout"
REPO = "bench/fanout"

# The hub's bus listens on the root end of the first relay link, as the registry
# node's does in the other cases; the relays reach it by host routes.
HUB_BUS_HOST = relay_link(1).host_address

# Seeds of the fanout layers, apart from every other layer's.
SEED_STEP = 5000


@dataclass(frozen=True)
class FanoutTree:
    """A running fanout tree: every node's pid, and each registry node's API."""

    pids: dict[str, int]
    registries: tuple[Registry, ...]
    data_dir: Path


def registry_names(count: int) -> list[str]:
    return [f"registry-{index}" for index in range(1, count + 1)]


def topology_lines(
    settings: Settings,
    data_dir: Path,
    hub_bus: str,
    cache_size: int,
    http_ports: dict[str, int],
    relays: Sequence[Link],
) -> list[str]:
    """The topology file of the fanout tree.

    The hub has the registry role because a node needs a role; no client uses
    its API. A plain bus between namespaces needs the escape hatch for buses off
    loopback: the links here are private to this machine.
    """
    lines = [
        "[cluster]",
        "insecure_plain_bus = true",
        f'name = "bench-fanout-{os.getpid()}"',
        f"data_dir = {json.dumps(str(data_dir))}",
        f"chunk_size = {settings.chunk_size}",
        f"replicas = {min(settings.replicas, len(relays))}",
        f"record_replicas = {min(settings.record_replicas, len(relays))}",
        f"window = {settings.window}",
        f"window_per_relay = {settings.window_per_relay}",
        f"buffer_chunks = {settings.buffer_chunks}",
    ]
    nodes: list[tuple[str, str, str, str | None]] = [(HUB, hub_bus, "registry", None)]
    nodes += [
        (name, f"127.0.0.1:{free_port('127.0.0.1')}", "registry", HUB)
        for name in http_ports
        if name != HUB
    ]
    nodes += [
        (f"relay-{index}", f"{link.inner_address}:{RELAY_BUS_PORT}", "store", HUB)
        for index, link in enumerate(relays, start=1)
    ]
    for node_id, (name, bus, role, parent) in enumerate(nodes, start=1):
        lines += ["", "[[node]]", f'name = "{name}"', f"id = {node_id}"]
        lines += [f'bus = "{bus}"', f'roles = ["{role}"]']
        if parent is not None:
            lines.append(f'parent = "{parent}"')
        if role == "registry":
            lines.append(f'http = "tcp:{http_ports[name]}:interface=127.0.0.1"')
        else:
            lines.append(f'domain = "{name}"')
        if name == HUB:
            lines.append(f"cache_size = {cache_size}")
    return lines


def start(
    directory: Path,
    processes: Processes,
    settings: Settings,
    registries: int,
    cache_size: int,
    relays: Sequence[Link],
) -> FanoutTree:
    """The tree up, every registry node seeing every store relay."""
    http_ports = {
        name: free_port("127.0.0.1") for name in [HUB, *registry_names(registries)]
    }
    data_dir = directory / f"{LABEL}-data"
    topology = directory / f"{LABEL}.toml"
    hub_bus = f"{HUB_BUS_HOST}:{free_port(HUB_BUS_HOST)}"
    lines = topology_lines(settings, data_dir, hub_bus, cache_size, http_ports, relays)
    topology.write_text("\n".join(lines) + "\n")

    def launch(node: str, link: Link | None) -> int:
        log_file = processes.log_dir / f"{LABEL}-{node}.log"
        command = twistd_command(topology, node, log_file)
        if link is not None:
            command = link.inside(*command)
        return processes.start(f"{LABEL}-{node}", command)

    pids = {HUB: launch(HUB, None)}
    for name in registry_names(registries):
        pids[name] = launch(name, None)
    for index, link in enumerate(relays, start=1):
        pids[f"relay-{index}"] = launch(f"relay-{index}", link)

    # The hub sees the relays linked; each registry node, the hub (a registry
    # node counts a relay up when its link toward it, the hub's, is).
    every_api = {
        name: Registry(f"127.0.0.1:{port}", REPO) for name, port in http_ports.items()
    }
    for name, api in every_api.items():
        wait_until(
            functools.partial(sees_relays, api, len(relays)),
            f"{LABEL} node {name}",
            processes,
        )
    apis = tuple(api for name, api in every_api.items() if name != HUB)
    return FanoutTree(pids, apis, data_dir)


def sees_relays(api: Registry, count: int) -> bool:
    """Whether a registry node reports `count` relays up."""
    status = json.loads(
        request(Registry(api.address, ""), "GET", "/_treescale/status")[1]
    )
    return bool(status.get("relays_up") == count)


def pull_all_at_once(
    apis: Sequence[Registry], layer: Layer, deadline: float, seconds: list[float]
) -> float:
    """Every registry node pulls the layer at once, one client thread each;
    each pull's seconds go into `seconds`. The wall seconds until the last ends.

    The first error of any pull is raised after every pull is over.
    """
    start_together = threading.Barrier(len(apis) + 1)
    times: list[float | None] = [None] * len(apis)
    errors: list[BaseException] = []

    def pull(index: int) -> None:
        start_together.wait()
        try:
            times[index] = client.pull_stream(apis[index], layer, deadline)
        except Exception as error:  # raised again once every pull is over
            errors.append(error)

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(len(apis))]
    for thread in threads:
        thread.start()
    start_together.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    seconds.extend(value for value in times if value is not None)
    return elapsed


def run_case(bench: "Bench") -> None:
    """The fanout case of the plan: lone pulls, then all at once, per run."""
    plan = bench.plan
    links = [relay_link(index) for index in range(1, plan.fanout_relays + 1)]
    fresh = [
        make_layer(bench.layer_dir, plan.fanout_size, plan.seed + SEED_STEP + n)
        for n in range(2 * (plan.runs or 1) - 1)
    ]
    # The plan's own layer of this size is the first lone pull's; every other is
    # made here, so each pull finds the hub's cache cold.
    layers = [bench.layers[plan.fanout_size], *fresh]
    pairs = list(zip(layers[::2], layers[1::2], strict=True))
    try:
        with links_up(links):
            for link in links:
                add_host_route(link, HUB_BUS_HOST)
            tree = start(
                bench.directory,
                bench.processes,
                bench.settings,
                plan.fanout_registries,
                plan.fanout_cache,
                links,
            )
            try:
                measure(bench, tree, links, pairs)
            finally:
                bench.processes.stop([f"{LABEL}-{node}" for node in tree.pids])
                shutil.rmtree(tree.data_dir, ignore_errors=True)
    finally:
        for layer in fresh:
            layer.path.unlink(missing_ok=True)


def measure(
    bench: "Bench",
    tree: FanoutTree,
    links: Sequence[Link],
    pairs: Sequence[tuple[Layer, Layer]],
) -> None:
    """Load every layer unlimited, then time the lone pulls and the crowd's."""
    plan = bench.plan
    started = time.monotonic()
    for link in links:
        unlimit(link)
    for lone, crowd in pairs:
        client.push_layer(tree.registries[0], lone)
        client.push_layer(tree.registries[0], crowd)
    bench.say(
        f"loaded {LABEL}: {2 * len(pairs) * plan.fanout_size / 1e6:.0f} MB "
        f"in {time.monotonic() - started:.1f} s"
    )
    for link in links:
        limit(link, plan.fanout_rate)

    lone_deadline = bench.deadline(plan.fanout_size, plan.fanout_rate)
    lone_seconds: list[float] = []

    def lone_pull(run: int) -> float:
        layer = pairs[run][0]
        seconds = client.pull_stream(tree.registries[0], layer, lone_deadline())
        lone_seconds.append(seconds)
        return seconds

    crowd_deadline = bench.deadline(
        plan.fanout_size * len(tree.registries), plan.fanout_rate
    )
    crowd_seconds: list[float] = []

    def crowd_pull(run: int) -> float:
        return pull_all_at_once(
            tree.registries, pairs[run][1], crowd_deadline(), crowd_seconds
        )

    for clients, transfer, seconds in (
        (1, lone_pull, lone_seconds),
        (len(tree.registries), crowd_pull, crowd_seconds),
    ):
        bench.case(
            phase=PHASE,
            rate=plan.fanout_rate,
            server=TREESCALE,
            method=STREAM,
            relays=len(links),
            clients=clients,
            size=pairs[0][0].size,
            pids=tree.pids,
            links=links,
            runs=len(pairs),
            transfer=transfer,
            pull_seconds=seconds,
        )
