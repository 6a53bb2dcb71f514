"""The run: set everything up, load both servers, time every case, clean up.

Behind links: the reference in its namespace behind one link, measured first at
every rate, as one stream and as parallel ranges; then one treescale tree after
another (1, 2, ... relays, each relay in its own namespace behind its own link),
each loaded with the layers it is pulled at, then pulled at every rate. Links are
unlimited while a server is loaded and limited before its pulls.

On loopback: a reference and a tree of one relay in the root namespace, with no
limit; each layer is pushed to both (a fresh layer each run, so nothing is there
already), then pulled from both.
"""

import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import client, fanout, profiling
from bench.client import Registry
from bench.layers import (
    Layer,
    Part,
    bytes_digest,
    config_document,
    make_layer,
    manifest_document,
    split,
)
from bench.network import (
    REFERENCE_LINK,
    Link,
    add_host_route,
    limit,
    links_up,
    rate_bits_per_s,
    relay_link,
    unlimit,
)
from bench.plan import Plan
from bench.probes import Cost, watch
from bench.results import (
    LOOPBACK,
    PUSH,
    RANGES,
    REFERENCE,
    STREAM,
    TREESCALE,
    TREESCALE_ONE_PROCESS,
    Measurement,
)
from bench.servers import (
    Processes,
    Reference,
    RelayPlace,
    Settings,
    Tree,
    relays_on_links,
    relays_on_loopback,
    start_one_process_tree,
    start_reference,
    start_tree,
)

REPO = "bench/image"
TAG = "latest"

# The registry node's bus listens on the root end of the first relay link; the
# other relays reach it over their own link by a host route.
REGISTRY_BUS_HOST = relay_link(1).host_address

# A transfer that takes longer than this is hung, not slow.
LOOPBACK_FLOOR_BYTES_PER_S = 5e6
DEADLINE_SLACK = 60.0
DEADLINE_FACTOR = 8.0

# Seeds of the extra layers of repeated pushes, apart from the pulled layers'.
PUSH_SEED_STEP = 1000


@dataclass(frozen=True)
class LoopbackServer:
    """A server measured on loopback: what the report calls it, where it answers,
    the processes it runs, its relays, and its profile's name (none: never
    profiled)."""

    name: str
    registry: Registry
    pids: dict[str, int]
    relays: int
    profile_as: str = ""


class Bench:
    """One run of a plan, its measurements and its profiles."""

    def __init__(
        self,
        plan: Plan,
        settings: Settings,
        directory: Path,
        profile_dir: Path | None,
    ) -> None:
        self.plan = plan
        self.settings = settings
        self.directory = directory
        self.profile_dir = profile_dir
        self.log_dir = directory / "logs"
        self.log_dir.mkdir()
        self.layer_dir = directory / "layers"
        self.layer_dir.mkdir()
        self.processes = Processes(self.log_dir)
        self.layers: dict[int, Layer] = {}
        self.parts: dict[int, list[Part]] = {}
        self.measurements: list[Measurement] = []
        self.profiles: list[str] = []
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        """One line of progress, with the seconds since the start."""
        print(f"[{time.monotonic() - self.started:7.1f} s] {text}", flush=True)

    def run(self) -> None:
        """Every phase of the plan; every server stopped at the end."""
        try:
            self.make_layers()
            if {"link", "relays", "concurrency"} & set(self.plan.phases):
                self.behind_links()
            if "fanout" in self.plan.phases:
                fanout.run_case(self)
            if "loopback" in self.plan.phases:
                self.on_loopback()
        finally:
            self.processes.stop_all()

    def make_layers(self) -> None:
        """Every layer the plan pulls, on disk, with its parts for ranged fetches."""
        for size in self.plan.layer_sizes():
            self.layers[size] = make_layer(self.layer_dir, size, self.plan.seed)
            self.parts[size] = split(self.layers[size], self.plan.range_parts)
        total = sum(layer.size for layer in self.layers.values()) / 1e6
        self.say(f"made {len(self.layers)} layers, {total:.0f} MB")

    # Behind links.

    def behind_links(self) -> None:
        """The reference behind its link, then each tree behind its links."""
        trees = self.plan.trees()
        relay_links = [relay_link(index) for index in range(1, max(trees) + 1)]
        with links_up([REFERENCE_LINK, *relay_links]):
            for link in relay_links:
                add_host_route(link, REGISTRY_BUS_HOST)
            if self.plan.reference_sizes():
                self.reference_behind_link()
            for relays in trees:
                self.tree_behind_links(relays_on_links(relay_links[:relays]))

    def reference_behind_link(self) -> None:
        """Load the reference, then pull it at every rate: stream, then ranges."""
        reference = start_reference(
            self.directory, self.processes, REFERENCE_LINK, REPO
        )
        registry = Registry(reference.address, REPO)
        sizes = self.plan.reference_sizes()
        self.load(registry, [self.layers[size] for size in sizes], "reference")
        pids = {REFERENCE: reference.pid}
        try:
            for rate in self.plan.rates:
                limit(REFERENCE_LINK, rate)
                for size in sizes:
                    self.reference_pulls(registry, pids, rate, size)
        finally:
            self.stop_reference(reference)

    def reference_pulls(
        self, registry: Registry, pids: dict[str, int], rate: str, size: int
    ) -> None:
        """The reference's layer of `size` as one stream, then as ranges."""
        layer, parts = self.layers[size], self.parts[size]
        deadline = self.deadline(size, rate)
        self.case(
            phase="link",
            rate=rate,
            server=REFERENCE,
            method=STREAM,
            size=layer.size,
            pids=pids,
            transfer=pulling(registry, layer, deadline),
        )
        self.case(
            phase="link",
            rate=rate,
            server=REFERENCE,
            method=RANGES,
            size=layer.size,
            pids=pids,
            transfer=lambda _: client.pull_ranges(registry, layer, parts, deadline()),
        )

    def tree_behind_links(self, places: Sequence[RelayPlace]) -> None:
        """One tree: loaded unlimited, then pulled at every rate."""
        relays = len(places)
        links = [relay_link(index) for index in range(1, relays + 1)]
        for link in links:
            unlimit(link)
        tree = start_tree(
            self.directory,
            self.processes,
            self.settings,
            f"tree{relays}",
            REGISTRY_BUS_HOST,
            places,
        )
        try:
            registry = Registry(tree.address, REPO)
            sizes = self.plan.sizes_for_tree(relays)
            self.load(registry, [self.layers[size] for size in sizes], tree.label)
            for rate in self.plan.rates:
                for link in links:
                    limit(link, rate)
                self.tree_pulls(tree, registry, links, rate)
            # Concurrent pulls last: they leave the registry node's RSS higher
            # than single pulls would find it.
            concurrency = "concurrency" in self.plan.phases
            if concurrency and relays == self.plan.concurrency_relays:
                for rate in self.plan.rates:
                    for link in links:
                        limit(link, rate)
                    self.concurrent_pulls(tree, registry, links, rate)
        finally:
            self.stop_tree(tree)

    def tree_pulls(
        self, tree: Tree, registry: Registry, links: Sequence[Link], rate: str
    ) -> None:
        """A tree's single pulls at `rate`."""
        relays = len(tree.relays)
        for size in self.plan.pulls_for_tree(relays):
            layer, deadline = self.layers[size], self.deadline(size, rate)
            compared = relays in self.plan.relays and size in self.plan.sizes
            profile = (
                self.plan.smoke is False
                and relays == max(self.plan.relays)
                and rate == self.plan.rates[-1]
                and size == self.profiled_size()
            )
            self.case(
                phase="link" if compared else "relays",
                rate=rate,
                server=TREESCALE,
                method=STREAM,
                relays=relays,
                size=layer.size,
                pids=tree.pids,
                links=links,
                transfer=pulling(registry, layer, deadline),
                profile_as=f"tree{relays}-{rate}-pull" if profile else None,
            )

    def concurrent_pulls(
        self, tree: Tree, registry: Registry, links: Sequence[Link], rate: str
    ) -> None:
        """Several clients pulling one layer at once, at every level of the plan."""
        size = self.plan.concurrency_size
        layer = self.layers[size]
        for clients in self.plan.concurrency:
            deadline = self.deadline(size * clients, rate)
            self.case(
                phase="concurrency",
                rate=rate,
                server=TREESCALE,
                method=STREAM,
                relays=len(tree.relays),
                clients=clients,
                size=layer.size,
                pids=tree.pids,
                links=links,
                transfer=pulling(registry, layer, deadline, clients),
            )

    # On loopback.

    def on_loopback(self) -> None:
        """Push and pull every size on loopback: the reference, then treescale
        with its registry node and relay in two processes, then in one."""
        reference = start_reference(self.directory, self.processes, None, REPO)
        trees = []
        try:
            trees.append(
                start_tree(
                    self.directory,
                    self.processes,
                    self.settings,
                    "loopback",
                    "127.0.0.1",
                    relays_on_loopback(1),
                )
            )
            trees.append(
                start_one_process_tree(
                    self.directory,
                    self.processes,
                    self.settings,
                    "loopback-one",
                    relays_on_loopback(1),
                )
            )
            servers = [
                LoopbackServer(
                    REFERENCE,
                    Registry(reference.address, REPO),
                    {REFERENCE: reference.pid},
                    relays=0,
                ),
                *(
                    LoopbackServer(
                        name,
                        Registry(tree.address, REPO),
                        tree.pids,
                        relays=len(tree.relays),
                        profile_as=f"loopback{suffix}",
                    )
                    for name, suffix, tree in zip(
                        (TREESCALE, TREESCALE_ONE_PROCESS),
                        ("", "-one-process"),
                        trees,
                        strict=True,
                    )
                ),
            ]
            for size in self.plan.sizes:
                self.loopback_size(size, servers)
        finally:
            self.stop_reference(reference)
            for tree in trees:
                self.stop_tree(tree)

    def loopback_size(self, size: int, servers: Sequence["LoopbackServer"]) -> None:
        """One size on loopback: pushes of a fresh layer each run, then pulls."""
        runs = self.plan.runs_for(size)
        extra = {
            run: make_layer(self.layer_dir, size, self.plan.seed + PUSH_SEED_STEP * run)
            for run in range(1, runs)
        }
        pushed = {0: self.layers[size], **extra}
        deadline = self.deadline(size, LOOPBACK)
        profile = not self.plan.smoke and size == max(self.plan.sizes)
        try:
            for method in (PUSH, STREAM):
                for server in servers:
                    self.loopback_case(method, server, pushed, deadline, profile)
        finally:
            for layer in extra.values():
                layer.path.unlink()

    def loopback_case(
        self,
        method: str,
        server: "LoopbackServer",
        pushed: Mapping[int, Layer],
        deadline: Callable[[], float],
        profile: bool,
    ) -> None:
        """One server's pushes or pulls of one size on loopback."""
        layer = pushed[0]

        def transfer(run: int) -> float:
            if method == PUSH:
                return client.push_layer(server.registry, pushed[run])
            return client.pull_stream(server.registry, layer, deadline())

        self.case(
            phase="loopback",
            rate=LOOPBACK,
            server=server.name,
            method=method,
            relays=server.relays,
            size=layer.size,
            pids=server.pids,
            transfer=transfer,
            runs=len(pushed),
            profile_as=f"{server.profile_as}-{method}"
            if profile and server.profile_as
            else None,
        )

    # Shared steps.

    def load(self, registry: Registry, layers: Sequence[Layer], name: str) -> None:
        """Push the image of `layers` (layers, config, manifest) and read its
        manifest back, as a pull of the image starts."""
        started = time.monotonic()
        for layer in layers:
            client.push_layer(registry, layer)
        config = config_document(layers)
        client.push_small_blob(registry, config, bytes_digest(config))
        manifest = manifest_document(layers, config)
        client.push_manifest(registry, TAG, manifest)
        if client.fetch_manifest(registry, TAG) != manifest:
            raise client.TransferError(f"{name}: the manifest read back differs")
        total = sum(layer.size for layer in layers) / 1e6
        self.say(f"loaded {name}: {total:.0f} MB in {time.monotonic() - started:.1f} s")

    def deadline(self, moved: int, rate: str) -> Callable[[], float]:
        """When a transfer of `moved` bytes started now counts as hung."""
        if rate == LOOPBACK:
            allowed = DEADLINE_SLACK + moved / LOOPBACK_FLOOR_BYTES_PER_S
        else:
            per_second = rate_bits_per_s(rate) / 8
            allowed = DEADLINE_SLACK + DEADLINE_FACTOR * moved / per_second
        return lambda: time.monotonic() + allowed

    def profiled_size(self) -> int:
        """The size whose pull behind links is profiled: the sweep's, if compared."""
        if self.plan.sweep_size in self.plan.sizes:
            return self.plan.sweep_size
        return max(self.plan.sizes)

    def case(
        self,
        *,
        phase: str,
        rate: str,
        server: str,
        method: str,
        size: int,
        pids: dict[str, int],
        transfer: Callable[[int], float],
        relays: int = 0,
        clients: int = 1,
        links: Sequence[Link] = (),
        runs: int | None = None,
        profile_as: str | None = None,
        pull_seconds: Sequence[float] = (),
    ) -> Measurement:
        """Run one case, every run watched; keep and print its measurement.

        `pull_seconds` is filled by the transfers when each client's own time
        is wanted too (the fanout case), and kept with the measurement.
        """
        seconds: list[float] = []
        costs: list[Cost] = []
        for run in range(runs or self.plan.runs_for(size)):
            with ExitStack() as stack:
                if profile_as is not None and run == 0:
                    stack.enter_context(self.profiled(pids, profile_as))
                cost = stack.enter_context(watch(pids, links))
                seconds.append(transfer(run))
            costs.append(cost)
        measurement = Measurement(
            phase=phase,
            rate=rate,
            server=server,
            method=method,
            relays=relays,
            clients=clients,
            size=size,
            seconds=seconds,
            peak_rss_mib={
                name: max(cost.peak_rss_mib[name] for cost in costs) for name in pids
            },
            rss_before_mib=costs[0].rss_before_mib,
            cpu_s={name: sum(cost.cpu_s[name] for cost in costs) for name in pids},
            cpu_wait_s={
                name: sum(cost.cpu_wait_s[name] for cost in costs) for name in pids
            },
            client_cpu_s=sum(cost.client_cpu_s for cost in costs),
            link_mb=[sum(mbs) for mbs in zip(*(c.link_mb for c in costs), strict=True)],
            pull_seconds=list(pull_seconds),
        )
        self.measurements.append(measurement)
        self.say(describe(measurement))
        return measurement

    @contextmanager
    def profiled(self, pids: dict[str, int], name: str) -> Iterator[None]:
        """py-spy the processes while the block runs, when profiles were asked."""
        if self.profile_dir is None:
            yield
            return
        prefix = self.profile_dir / f"profile-{name}"
        with profiling.recording(pids, prefix) as record:
            yield
        for process, path in record.files.items():
            if not path.exists():
                self.profiles.append(f"{name} {process}: py-spy wrote nothing")
                continue
            stacks = profiling.parse_collapsed(path.read_text().splitlines())
            summary = profiling.summarize(stacks, record.seconds)
            self.profiles.append(
                profiling.summary_text(f"{name}, {process} ({path.name})", summary)
            )

    def stop_reference(self, reference: Reference) -> None:
        """Stop a reference registry and drop what it stored."""
        self.processes.stop([reference.name])
        shutil.rmtree(self.directory / f"{reference.name}-data", ignore_errors=True)

    def stop_tree(self, tree: Tree) -> None:
        """Stop every node of a tree and drop its data."""
        self.processes.stop([f"{tree.label}-{node}" for node in tree.pids])
        shutil.rmtree(tree.data_dir, ignore_errors=True)


def pulling(
    registry: Registry, layer: Layer, deadline: Callable[[], float], clients: int = 1
) -> Callable[[int], float]:
    """A transfer: `clients` pulls of the whole layer at once (one: a plain pull)."""

    def transfer(_: int) -> float:
        if clients == 1:
            return client.pull_stream(registry, layer, deadline())
        return client.pull_concurrently(registry, layer, clients, deadline())

    return transfer


def describe(measurement: Measurement) -> str:
    """A one-line account of a case, for progress."""
    who = measurement.server
    if measurement.server == TREESCALE:
        who += f" {measurement.relays} relay{'s' if measurement.relays > 1 else ''}"
    if measurement.clients > 1:
        who += f" x{measurement.clients} clients"
    peak = max(measurement.peak_rss_mib.values(), default=0.0)
    before = max(measurement.rss_before_mib.values(), default=0.0)
    return (
        f"{who}, {measurement.rate}, {measurement.size / 1e6:.0f} MB "
        f"{measurement.method}: {measurement.mb_per_s:.1f} MB/s "
        f"({measurement.runs} run{'s' if measurement.runs > 1 else ''}), "
        f"peak RSS {peak:.0f} MiB (at start {before:.0f})"
    )
