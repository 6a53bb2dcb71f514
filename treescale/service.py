"""The twistd service tree of one process: a bus node per node run, plus its roles.

    MultiService (the process)
      BusNode "registry"        listens for children, routes frames
        ClientService           dials the parent, when the node has one
      web service               the registry's HTTP API (registry role only)
      BusNode "relay-a"         with a Relay bound to its handlers (store role)
      ...

Every node of one process still talks to the others over real TCP, exactly as it
would across hosts: the embedded default differs from a deployment only in addresses.
With a ``[tls]`` table each node reads its own certificate as it is built; a tree
without one starts only if its bus is all on loopback (`plain_bus_refusal`).
"""

import datetime
import json
import sys
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from treescale.auth.authenticator import TOKEN_PATH, Authenticator
from treescale.auth.endpoint import TokenResource
from treescale.auth.htpasswd import HtpasswdError
from treescale.auth.keys import KeyUnusable
from treescale.auth.settings import NONE, TOKEN, check_auth_files
from treescale.bus.local import LocalNodes
from treescale.bus.node import BusNode
from treescale.bus.tls import BusTls, TlsUnusable, load_bus_tls, plain_bus_refusal
from treescale.config import ConfigError, NodeConfig, Topology
from treescale.gc.endpoint import GcResource
from treescale.ops.health import relays_needed
from treescale.ops.metrics import ProgressFeed
from treescale.ops.pages import node_ops
from treescale.registry.app import Registry
from treescale.registry.app import make_site as registry_site
from treescale.reload import Reloader, reload_on_hangup
from treescale.store.cluster import ClusterStorage
from treescale.store.hashing import hash_in_pool
from treescale.store.relay import Relay
from treescale.store.transit import ChunkTransit
from treescale.store.waycache import ChunkCache
from treescale.topology_change import placement_digest
from treescale.web.page import StatusPage
from treescale.web.rates import SAMPLE_INTERVAL, LinkRates
from treescale.web.status import tree_status

log = Logger()

GC_PATH = b"/_treescale/gc"
"""Where a local client asks the registry node for a garbage collection."""

PROGRESS_FIRST_READ = 10.0
"""Seconds after start before the metrics first read the relays' progress."""

STATUS_REPAIR_TIMEOUT = 3.0
"""Seconds the status document waits for the relays' repair records."""

STATUS_PAGE_PATH = b"/_treescale"
"""Where the status page is (with or without its trailing slash)."""

# A node whose bus certificate ends sooner says so at every start.
CERTIFICATE_WARNING = datetime.timedelta(days=30)


# The reactor passed around here is the global one, used as a core, TCP, time and
# thread-pool reactor at once: no single interface names that mix, hence Any.


def make_process_service(
    topology: Topology,
    names: Sequence[str],
    reactor: Any,
    data_dir: Path | str | None = None,
) -> IService:
    """Services for the nodes named, or for every local node when none is named.

    SIGHUP reloads the topology file (`treescale.reload`); `data_dir` is the
    override the process started with, kept for those reloads.
    """
    nodes = [topology.node(name) for name in names] or list(topology.local_nodes())
    if not nodes:
        raise ValueError(f"{topology.source}: no node of this file has a local address")
    refusal = plain_bus_refusal(topology)
    if refusal is not None:
        fail_start(refusal)
    top = _Process()  # type: ignore[no-untyped-call]
    # The nodes of this process link to each other in memory (treescale.bus.local).
    local = LocalNodes(planned={node.name for node in nodes})
    buses = [make_node_service(topology, node, reactor, local) for node in nodes]
    for bus in buses:
        bus.setServiceParent(top)  # type: ignore[no-untyped-call]
    # A process that runs every local node also starts those an edit adds here.
    start_node = (
        None if names else partial(make_node_service, reactor=reactor, local=local)
    )
    reloader = Reloader(topology, buses, data_dir, process=top, start_node=start_node)
    reload_on_hangup(reloader, reactor)
    return top


def make_node_service(
    topology: Topology, node: NodeConfig, reactor: Any, local: LocalNodes | None = None
) -> BusNode:
    """One node: its bus, and a relay or a registry (or both) on top of it.

    `local` holds the other nodes of this process, which it links to in memory.
    """
    tls = make_bus_tls(topology, node)
    bus = BusNode(topology, node, reactor, reactor, tls=tls, local=local)
    if node.is_store:
        root = Path(topology.data_dir).resolve() / node.name
        Relay(
            bus,
            root,
            reactor,
            reactor.getThreadPool(),
            max_chunk=topology.chunk_size,
            scrub=topology.scrub,
        )
    if node.cache_size > 0:
        hash_in = hash_in_pool(reactor, reactor.getThreadPool())
        ChunkTransit(bus, ChunkCache(node.cache_size), hash_in)
    if node.is_registry:
        assert node.http is not None
        try:
            web = strports.service(node.http, make_site(bus, topology, node, reactor))
        except OSError as e:
            fail_start(
                f"{topology.source}: node {node.name!r}: field 'http': cannot use "
                f"{node.http!r}: {e.strerror or e}"
            )
        web.setServiceParent(bus)
    return bus


def make_bus_tls(topology: Topology, node: NodeConfig) -> BusTls | None:
    """The node's bus credentials when the file has ``[tls]``; files that cannot be
    used stop start-up with one line naming them."""
    if topology.tls is None:
        return None
    try:
        tls = load_bus_tls(topology, node.name, topology.tls.files_for(node.name))
    except TlsUnusable as e:
        fail_start(f"{topology.source}: node {node.name!r}: [tls]: {e}")
    left = tls.not_after - datetime.datetime.now(datetime.UTC)
    if left < CERTIFICATE_WARNING:
        log.warn(
            "bus certificate of {node} expires in {days} days, on {not_after}",
            node=node.name,
            days=left.days,
            not_after=tls.not_after.isoformat(),
        )
    return tls


def make_site(bus: BusNode, topology: Topology, node: NodeConfig, reactor: Any) -> Site:
    """The registry's HTTP site, with the node's status page and, in token mode,
    its token endpoint beside the API."""
    storage = ClusterStorage(bus, topology, reactor, reactor.getThreadPool())
    authenticator = make_authenticator(topology, reactor)
    ops = node_ops(
        reactor,
        topology.notifications,
        node.http or "",
        lambda: (storage.relays_up(), _relays_needed(bus.topology)),
    )
    ops.metrics.watch_links(
        lambda: {peer: peer in bus.links for peer in bus.routes.neighbours}
    )
    ops.metrics.watch_chunk_buffer(
        lambda: (storage.budget.size - storage.budget.free, storage.budget.size)
    )
    ops.metrics.watch_link_queues(
        lambda: {peer: link.unsent for peer, link in bus.links.items()}
    )
    ops.metrics.watch_bus_pending(lambda: bus.pending_requests)
    bus.link_listeners.append(ops.metrics.link_changed)
    progress = ProgressFeed(
        reactor,
        storage.repair_status,
        storage.rebalance_status,
        lambda: placement_digest(bus.topology),
        first_after=PROGRESS_FIRST_READ,
    )
    ops.metrics.watch_progress(progress)
    progress.setServiceParent(bus)  # type: ignore[no-untyped-call]
    storage.chunks.observer = ops.metrics
    registry = Registry(
        storage,
        clock=reactor,
        settings=topology.registry,
        authenticator=authenticator,
        observer=ops.observer,
    )
    site = registry_site(registry)
    tokens = None
    if authenticator is not None and topology.auth.mode == TOKEN:
        tokens = TokenResource(authenticator)
    pages = {
        **ops.pages,
        GC_PATH: GcResource(
            storage, reactor, topology.gc, topology.registry.upload_idle_timeout
        ),
    }
    front = _WithStatus(site.resource, bus, storage, reactor, tokens, pages)
    site.resource = front
    _sample_link_rates(bus, front.link_rates, reactor)
    return site


def _sample_link_rates(bus: BusNode, rates: LinkRates, clock: IReactorTime) -> None:
    """Sample the bus links' byte counters for the status page, while the bus
    node runs."""

    def sample() -> None:
        counters = {
            peer: (link.bytes_sent, link.bytes_received)
            for peer, link in bus.links.items()
        }
        rates.sample(clock.seconds(), counters)

    sampler = TimerService(SAMPLE_INTERVAL, sample)
    sampler.clock = clock
    sampler.setServiceParent(bus)


def _relays_needed(topology: Topology) -> int:
    """Relays a registry node needs up to be ready, in the tree as it is now."""
    return relays_needed(
        len(topology.stores), topology.replicas, topology.record_replicas
    )


def make_authenticator(topology: Topology, reactor: Any) -> Authenticator | None:
    """The logins of the ``[auth]`` table, or None when they are off.

    An htpasswd file or key that cannot be used stops start-up with one line.
    """
    if topology.auth.mode == NONE:
        return None
    try:
        check_auth_files(topology.auth, topology.source)
        return Authenticator(topology.auth, reactor.seconds)
    except ConfigError as e:
        fail_start(str(e))
    except (HtpasswdError, KeyUnusable, OSError) as e:
        fail_start(f"{topology.source}: [auth]: {e}")


class _Process(MultiService):
    """Every node of this process; a port that is taken stops start-up with one line."""

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]
        except CannotListenError as e:
            where = f"{e.interface or '*'}:{e.port}"
            fail_start(f"cannot listen on {where}: {e.socketError}")


class _WithStatus(Resource):
    """Serves ``/_treescale/status`` (the tree's state as JSON), the status page
    drawing it at ``/_treescale/``, the token endpoint and the operations pages
    (``/metrics``, ``/healthz``, ``/readyz``) itself, and hands every other path
    on."""

    isLeaf = True

    def __init__(
        self,
        inner: Resource,
        bus: BusNode,
        storage: ClusterStorage,
        clock: IReactorTime,
        tokens: Resource | None = None,
        pages: Mapping[bytes, Resource] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.inner = inner
        self.bus = bus
        self.storage = storage
        self.tokens = tokens
        self.pages = pages or {}
        self.link_rates = LinkRates()
        self.status_page: Resource = StatusPage()
        self.clock = clock

    def render(self, request: Request) -> bytes | int:
        path = request.path.rstrip(b"/")
        if self.tokens is not None and path == TOKEN_PATH.encode():
            return self.tokens.render(request)  # type: ignore[no-any-return]
        page = self.pages.get(path)
        if page is not None:
            return page.render(request)  # type: ignore[no-any-return]
        if path == STATUS_PAGE_PATH:
            return self.status_page.render(request)  # type: ignore[no-any-return]
        if path != b"/_treescale/status":
            return self.inner.render(request)  # type: ignore[no-any-return]
        answer = Deferred.fromCoroutine(self._status(request))
        answer.addErrback(self._status_failed, request)
        return NOT_DONE_YET

    async def _status(self, request: Request) -> None:
        """The tree's state (with the ``placement`` digest it places keys by), with
        every relay's repair and rebalance progress when the records answer within
        `STATUS_REPAIR_TIMEOUT` (else ``repair`` or ``rebalance`` is null)."""
        status = tree_status(self.bus.topology, self.bus.me.name, self.bus.reachable)
        status["links"] = sorted(self.bus.links)
        status["links_in_memory"] = sorted(
            name for name in self.bus.links if self.bus.in_memory(name)
        )
        status["link_rates"] = self.link_rates.rates()
        status["topology_version"] = self.bus.topology.version
        now = time.time()
        readings = {
            "repair": Deferred.fromCoroutine(self.storage.repair_status(now)),
            "rebalance": Deferred.fromCoroutine(self.storage.rebalance_status(now)),
        }
        for reading in readings.values():
            reading.addTimeout(STATUS_REPAIR_TIMEOUT, self.clock)
        for name, reading in readings.items():
            try:
                status[name] = await reading
            except Exception as e:  # a slow or failed record read leaves it out
                log.info("status without {part} progress: {why}", part=name, why=str(e))
                status[name] = None
        if request.finished or _client_gone(request):
            return
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(json.dumps(status).encode())
        request.finish()

    def _status_failed(self, failure: Failure, request: Request) -> None:
        log.failure("status page failed", failure)
        if not request.finished and not _client_gone(request):
            request.setResponseCode(500)
            request.finish()


def _client_gone(request: Request) -> bool:
    return request.channel is None


def fail_start(message: str) -> NoReturn:
    """Stop start-up with one clear line, on the terminal even where twistd has
    already sent standard error to its log."""
    terminal = sys.__stderr__ or sys.stderr
    terminal.write(f"treescale-node: {message}\n")
    raise SystemExit(2)
