"""Every Prometheus metric of one process, and the ``/metrics`` page that shows them.

# One `Metrics` object holds its own `CollectorRegistry`: two in one process (tests,
# or several registry nodes run together) never share or clash. Parts that count
# call a named method (`chunk_fetch`, `hedge`, `http_finished` ...), so a metric's
# name and labels are written once, here. State that already lives elsewhere (links
# up, bytes queued on a link, relays reachable, repair progress) is not copied on
# every change: a `watch_*` method takes a callable read at scrape time. A callable
# that fails leaves its metrics out of that scrape and is logged; it never breaks
# the page.
#
# The repair and rebalance figures live in the relays' status records, which only
# an asynchronous read over the bus gets. A scrape cannot wait for that, so a
# `ProgressFeed` reads them every `interval` seconds and the scrape shows its last
# reading: figures at most that old, and a scrape that never touches the bus.
#
# Labels take values from small, fixed sets only: routes, methods, status codes,
# relay and endpoint names from the topology file. Never a repository, digest or
# user, which would grow a series per value.

    treescale_http_requests_total{route,method,code}         requests answered
    treescale_http_request_duration_seconds{route,method}    headers in to body out
    treescale_http_requests_in_flight
    treescale_http_requests_abandoned_total{route,method}    client left first
    treescale_http_received_bytes_total{route}                request bodies
    treescale_http_sent_bytes_total{route}                    response bodies
    treescale_registry_errors_total{code}                     API error codes sent
    treescale_registry_events_total{action,kind}              push/pull/mount/delete
    treescale_pull_duration_seconds{kind}                     GET of a blob/manifest
    treescale_push_duration_seconds{kind}                     upload start to commit
    treescale_chunk_fetches_total{holder,outcome}
    treescale_chunk_puts_total{holder,outcome}
    treescale_chunk_hedges_total
    treescale_chunk_buffer_used, treescale_chunk_buffer_size  the chunk budget
    treescale_relays_reachable, treescale_relays_needed
    treescale_bus_link_up{peer}, treescale_bus_link_changes_total{peer,state}
    treescale_bus_link_queued_bytes{peer}, treescale_bus_pending_requests
    treescale_repair_*{relay}                                 each relay's scrub
    treescale_rebalance_*{relay}                              each relay's rebalance
    treescale_notifications_{sent,failed,dropped}_total{endpoint,...}
    treescale_notifications_queued{endpoint}
    process_*, python_*                                       the standard ones
"""

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

# Seconds, from a small manifest on loopback to a large layer over a slow link.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    900.0,
)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# How one chunk request ended, as `chunk_fetch` and `chunk_put` count it.
OK = "ok"
BAD_BYTES = "bad_bytes"
MISSING = "missing"
TIMEOUT = "timeout"
FAILED = "failed"
CANCELLED = "cancelled"
OUTCOMES = frozenset({OK, BAD_BYTES, MISSING, TIMEOUT, FAILED, CANCELLED})

# The counts of a repair pass, as `RepairSnapshot.counts` names them.
REPAIR_RESULTS = frozenset(
    {"corrupt", "restored", "missing", "copied", "failed", "errors"}
)

Labels = tuple[str, ...]
Samples = Mapping[Labels, float]


@dataclass(frozen=True)
class RepairSnapshot:
    """Where one relay's repair (scrub) stands, read at scrape time."""

    relay: str
    running: bool
    passes: int
    chunks_checked: int
    bytes_checked: int
    counts: Mapping[str, int] = field(default_factory=dict)
    """Totals since start, by result: see `REPAIR_RESULTS`."""


@dataclass(frozen=True)
class RebalanceSnapshot:
    """Where one relay's rebalance stands, as its status record last said."""

    relay: str
    running: bool
    current: bool
    """Whether it works for the placement this node places keys by."""
    chunks_moved: int
    chunks_left: int
    bytes_moved: int
    bytes_left: int
    records_moved: int
    records_left: int


def method_label(method: bytes | str) -> str:
    """A request method as a label: methods a client invents count as "other"."""
    text = method.decode("latin-1") if isinstance(method, bytes) else method
    return text if text in METHODS else "other"


class Metrics:
    """The metrics of one process, each with a method that updates it."""

    log = Logger()

    def __init__(self, with_process: bool = True) -> None:
        self.registry = CollectorRegistry()
        if with_process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._snapshots = _Snapshots(self.log)
        self.registry.register(self._snapshots)
        self._http()
        self._registry_metrics()
        self._store()
        self._bus_and_notifications()

    def _counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(name, doc, list(labels), registry=self.registry)

    def _histogram(self, name: str, doc: str, labels: Iterable[str]) -> Histogram:
        return Histogram(
            name, doc, list(labels), registry=self.registry, buckets=LATENCY_BUCKETS
        )

    def _http(self) -> None:
        self.requests = self._counter(
            "treescale_http_requests",
            "HTTP API requests answered, by route, method and status code.",
            ["route", "method", "code"],
        )
        self.request_seconds = self._histogram(
            "treescale_http_request_duration_seconds",
            "Seconds from a request's headers to the end of its response.",
            ["route", "method"],
        )
        self.in_flight = Gauge(
            "treescale_http_requests_in_flight",
            "HTTP API requests started and not yet answered.",
            registry=self.registry,
        )
        self.abandoned = self._counter(
            "treescale_http_requests_abandoned",
            "HTTP API requests whose client left before the response ended.",
            ["route", "method"],
        )
        self.received = self._counter(
            "treescale_http_received_bytes",
            "Bytes of HTTP request bodies received.",
            ["route"],
        )
        self.sent = self._counter(
            "treescale_http_sent_bytes",
            "Bytes of HTTP response bodies sent.",
            ["route"],
        )

    def _registry_metrics(self) -> None:
        self.errors = self._counter(
            "treescale_registry_errors",
            "Error responses by the spec's error code (UNKNOWN: a bug, logged).",
            ["code"],
        )
        self.events = self._counter(
            "treescale_registry_events",
            "Content pushed, pulled, mounted and deleted, by action and kind.",
            ["action", "kind"],
        )
        self.pull_seconds = self._histogram(
            "treescale_pull_duration_seconds",
            "Seconds to serve a GET of a blob or manifest, to the last byte.",
            ["kind"],
        )
        self.push_seconds = self._histogram(
            "treescale_push_duration_seconds",
            "Seconds from a blob upload's start to its commit, or to store a "
            "manifest PUT.",
            ["kind"],
        )

    def _store(self) -> None:
        self.chunk_fetches = self._counter(
            "treescale_chunk_fetches",
            "Chunk gets sent to holders, by holder and how they ended.",
            ["holder", "outcome"],
        )
        self.chunk_puts = self._counter(
            "treescale_chunk_puts",
            "Chunk puts sent to holders, by holder and how they ended.",
            ["holder", "outcome"],
        )
        self.hedges = self._counter(
            "treescale_chunk_hedges",
            "Chunk gets that asked another holder because the first was slow.",
        )

    def _bus_and_notifications(self) -> None:
        self.link_changes = self._counter(
            "treescale_bus_link_changes",
            "Bus links that came up or went down, by peer.",
            ["peer", "state"],
        )
        self.notes_sent = self._counter(
            "treescale_notifications_sent",
            "Events delivered to notification endpoints.",
            ["endpoint"],
        )
        self.notes_failed = self._counter(
            "treescale_notifications_failed",
            "Deliveries to notification endpoints that failed (each try counts).",
            ["endpoint"],
        )
        self.notes_dropped = self._counter(
            "treescale_notifications_dropped",
            "Events never delivered: the queue was full, or every try failed.",
            ["endpoint", "reason"],
        )
        self.notes_seconds = self._histogram(
            "treescale_notification_delivery_seconds",
            "Seconds one successful delivery took.",
            ["endpoint"],
        )

    # The HTTP API (called by the registry's observer).

    def http_started(self) -> None:
        self.in_flight.inc()

    def http_finished(
        self,
        route: str,
        method: str,
        code: int,
        seconds: float,
        received: int,
        sent: int,
    ) -> None:
        """One request answered: its status, time and bytes each way."""
        self.in_flight.dec()
        self.requests.labels(route, method, str(code)).inc()
        self.request_seconds.labels(route, method).observe(seconds)
        self.received.labels(route).inc(received)
        self.sent.labels(route).inc(sent)

    def http_abandoned(
        self, route: str, method: str, seconds: float, received: int, sent: int
    ) -> None:
        """One request whose client left before its response ended."""
        self.in_flight.dec()
        self.abandoned.labels(route, method).inc()
        self.request_seconds.labels(route, method).observe(seconds)
        self.received.labels(route).inc(received)
        self.sent.labels(route).inc(sent)

    def api_error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def registry_event(self, action: str, kind: str) -> None:
        self.events.labels(action, kind).inc()

    def pulled(self, kind: str, seconds: float) -> None:
        self.pull_seconds.labels(kind).observe(seconds)

    def pushed(self, kind: str, seconds: float) -> None:
        self.push_seconds.labels(kind).observe(seconds)

    # The store (for `store.chunkclient` and the relays to call).

    def chunk_fetch(self, holder: str, outcome: str) -> None:
        """One chunk get to `holder` ended with `outcome` (see `OUTCOMES`)."""
        self.chunk_fetches.labels(holder, _outcome(outcome)).inc()

    def chunk_put(self, holder: str, outcome: str) -> None:
        """One chunk put to `holder` ended with `outcome` (see `OUTCOMES`)."""
        self.chunk_puts.labels(holder, _outcome(outcome)).inc()

    def hedge(self) -> None:
        """A chunk get asked one more holder, the ones asked being slow."""
        self.hedges.inc()

    # The bus.

    def link_changed(self, peer: str, up: bool) -> None:
        """A bus link came up or went down; the shape of `BusNode.link_listeners`."""
        self.link_changes.labels(peer, "up" if up else "down").inc()

    # Notifications (called by the sender).

    def notifications_sent(self, endpoint: str, count: int, seconds: float) -> None:
        self.notes_sent.labels(endpoint).inc(count)
        self.notes_seconds.labels(endpoint).observe(seconds)

    def notification_failed(self, endpoint: str) -> None:
        self.notes_failed.labels(endpoint).inc()

    def notification_dropped(self, endpoint: str, reason: str, count: int = 1) -> None:
        self.notes_dropped.labels(endpoint, reason).inc(count)

    # State read at scrape time.

    def watch_links(self, source: Callable[[], Mapping[str, bool]]) -> None:
        """Which bus links are up, by peer: 1 up, 0 down."""
        self._snapshots.gauge(
            "treescale_bus_link_up",
            "Whether the bus link to a neighbour is up.",
            ["peer"],
            lambda: {(peer,): float(up) for peer, up in source().items()},
        )

    def watch_link_queues(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Bytes waiting unsent on each bus link."""
        self._snapshots.gauge(
            "treescale_bus_link_queued_bytes",
            "Bytes written to a bus link that its transport has not sent yet.",
            ["peer"],
            lambda: {(peer,): float(n) for peer, n in source().items()},
        )

    def watch_bus_pending(self, source: Callable[[], int]) -> None:
        """Requests this node sent on the bus and still waits for."""
        self._snapshots.gauge(
            "treescale_bus_pending_requests",
            "Bus requests of this node waiting for their answer.",
            [],
            lambda: {(): float(source())},
        )

    def watch_relays(self, source: Callable[[], tuple[int, int]]) -> None:
        """Store relays reachable, and how many readiness needs."""
        self._snapshots.gauge(
            "treescale_relays_reachable",
            "Store relays this node can reach now.",
            [],
            lambda: {(): float(source()[0])},
        )
        self._snapshots.gauge(
            "treescale_relays_needed",
            "Store relays needed for a record quorum and every chunk replica.",
            [],
            lambda: {(): float(source()[1])},
        )

    def watch_chunk_buffer(self, source: Callable[[], tuple[int, int]]) -> None:
        """Chunks held in memory by reads and uploads, and the budget's size."""
        self._snapshots.gauge(
            "treescale_chunk_buffer_used",
            "Chunks held in memory by this node's reads and uploads.",
            [],
            lambda: {(): float(source()[0])},
        )
        self._snapshots.gauge(
            "treescale_chunk_buffer_size",
            "Chunks this node's reads and uploads may hold at once.",
            [],
            lambda: {(): float(source()[1])},
        )

    def watch_notification_queues(
        self, source: Callable[[], Mapping[str, int]]
    ) -> None:
        self._snapshots.gauge(
            "treescale_notifications_queued",
            "Events waiting for a notification endpoint, in flight included.",
            ["endpoint"],
            lambda: {(name,): float(n) for name, n in source().items()},
        )

    def watch_repair(self, source: Callable[[], Iterable[RepairSnapshot]]) -> None:
        """Each relay's repair progress: passes, chunks checked, what was found."""
        self._snapshots.watch(lambda: _repair_families(list(source())))

    def watch_rebalance(
        self, source: Callable[[], Iterable[RebalanceSnapshot]]
    ) -> None:
        """Each relay's rebalance progress: chunks, bytes and records moved and
        left in its current pass."""
        self._snapshots.watch(lambda: _rebalance_families(list(source())))

    def watch_progress(self, feed: "ProgressFeed") -> None:
        """The repair and rebalance figures of a `ProgressFeed`'s last reading."""
        self.watch_repair(feed.repair)
        self.watch_rebalance(feed.rebalance)

    # The page.

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition the Accept header asks for (OpenMetrics or text), and
        its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _outcome(outcome: str) -> str:
    return outcome if outcome in OUTCOMES else "other"


def _repair_families(snapshots: list[RepairSnapshot]) -> list[Metric]:
    """The repair metrics of every relay, from one reading of their progress."""
    counts = _family(
        True,
        "treescale_repair_chunks",
        "Chunks a relay's repair found or fixed, by result.",
        ["relay", "result"],
        {
            (s.relay, result): float(count)
            for s in snapshots
            for result, count in s.counts.items()
            if result in REPAIR_RESULTS
        },
    )
    return [
        _family(
            False,
            "treescale_repair_running",
            "Whether a relay's repair pass is running now.",
            ["relay"],
            {(s.relay,): float(s.running) for s in snapshots},
        ),
        _family(
            True,
            "treescale_repair_passes",
            "Repair passes a relay has finished.",
            ["relay"],
            {(s.relay,): float(s.passes) for s in snapshots},
        ),
        _family(
            True,
            "treescale_repair_checked_chunks",
            "Chunks a relay's repair has checked.",
            ["relay"],
            {(s.relay,): float(s.chunks_checked) for s in snapshots},
        ),
        _family(
            True,
            "treescale_repair_checked_bytes",
            "Bytes a relay's repair has read back and verified.",
            ["relay"],
            {(s.relay,): float(s.bytes_checked) for s in snapshots},
        ),
        counts,
    ]


_REBALANCE_GAUGES = (
    ("chunks_moved", "Chunks a relay's rebalance pass has moved to their homes."),
    ("chunks_left", "Chunks a relay's rebalance pass still has to move."),
    ("bytes_moved", "Bytes of chunks a relay's rebalance pass has moved."),
    ("bytes_left", "Bytes of chunks a relay's rebalance pass still has to move."),
    ("records_moved", "Records a relay's rebalance pass has moved."),
    ("records_left", "Records a relay's rebalance pass still has to move."),
)


def _rebalance_families(snapshots: list[RebalanceSnapshot]) -> list[Metric]:
    """The rebalance metrics of every relay, from one reading of their progress."""
    families = [
        _family(
            False,
            f"treescale_rebalance_{name}",
            doc,
            ["relay"],
            {(s.relay,): float(getattr(s, name)) for s in snapshots},
        )
        for name, doc in _REBALANCE_GAUGES
    ]
    families.append(
        _family(
            False,
            "treescale_rebalance_running",
            "Whether a relay's rebalance pass is running now.",
            ["relay"],
            {(s.relay,): float(s.running) for s in snapshots},
        )
    )
    families.append(
        _family(
            False,
            "treescale_rebalance_current",
            "Whether a relay's rebalance works for this node's placement (0: it "
            "has not taken the latest topology edit yet).",
            ["relay"],
            {(s.relay,): float(s.current) for s in snapshots},
        )
    )
    return families


def _family(
    counter: bool, name: str, doc: str, labels: list[str], samples: Samples
) -> Metric:
    """One metric family of the samples given."""
    family: Metric
    if counter:
        family = CounterMetricFamily(name, doc, labels=labels)
    else:
        family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples.items():
        family.add_metric(list(values), value)
    return family


class _Snapshots(Collector):
    """The collector of every watched metric: each reader is called per scrape."""

    def __init__(self, log: Logger) -> None:
        self.log = log
        self.readers: list[Callable[[], Iterable[Metric]]] = []

    def watch(self, reader: Callable[[], Iterable[Metric]]) -> None:
        self.readers.append(reader)

    def gauge(
        self, name: str, doc: str, labels: list[str], samples: Callable[[], Samples]
    ) -> None:
        self.watch(lambda: [_family(False, name, doc, labels, samples())])

    def describe(self) -> list[Metric]:
        """Nothing up front: what is watched is known only once it is watched."""
        return []

    def collect(self) -> Iterator[Metric]:
        for reader in self.readers:
            try:
                families = list(reader())
            except Exception:
                self.log.failure("a watched metric could not be read")
                continue
            yield from families


Reading = Callable[[float], Awaitable[Mapping[str, object]]]
"""Reads the relays' status records (given the wall time now): the shape of
`ClusterStorage.repair_status` and `ClusterStorage.rebalance_status`."""


class ProgressFeed(Service):
    """The relays' repair and rebalance progress, read every `interval` seconds
    for the metrics (see the note at the top of this module).

    A reading that fails keeps the one before, and is logged.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        read_repair: Reading,
        read_rebalance: Reading,
        placement: Callable[[], str],
        interval: float = 15.0,
        wall: Callable[[], float] = time.time,
        first_after: float = 0.0,
    ) -> None:
        """`placement` gives the placement digest this node places keys by; the
        first reading waits `first_after` seconds (a node starting has no links
        yet, and every record read would only log that)."""
        self.clock = clock
        self.read_repair = read_repair
        self.read_rebalance = read_rebalance
        self.placement = placement
        self.interval = interval
        self.wall = wall
        self.repair_document: Mapping[str, object] = {}
        self.rebalance_document: Mapping[str, object] = {}
        self.first_after = first_after
        self._loop: LoopingCall | None = None
        self._first: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self.read()))
        self._loop.clock = self.clock
        if self.first_after > 0:
            self._first = self.clock.callLater(self.first_after, self._begin)
        else:
            self._begin()

    def _begin(self) -> None:
        self._first = None
        if self._loop is None:
            return
        self._loop.start(self.interval, now=True).addErrback(
            lambda failure: self.log.failure("progress feed stopped", failure)
        )

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._first is not None and self._first.active():
            self._first.cancel()
        self._first = None
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    async def read(self) -> None:
        """One reading of both kinds of status records."""
        now = self.wall()
        for part, reading in (
            ("repair", self.read_repair),
            ("rebalance", self.read_rebalance),
        ):
            try:
                document = await reading(now)
            except Exception as e:  # a tree without a quorum: try next time
                self.log.info(
                    "metrics without fresh {part} progress: {why}", part=part, why=e
                )
                continue
            setattr(self, f"{part}_document", document)

    def repair(self) -> list[RepairSnapshot]:
        return repair_snapshots(self.repair_document)

    def rebalance(self) -> list[RebalanceSnapshot]:
        return rebalance_snapshots(self.rebalance_document, self.placement())


def repair_snapshots(document: Mapping[str, object]) -> list[RepairSnapshot]:
    """The snapshots of a repair status document (`read_repair_status`'s shape);
    relays that published nothing, or nothing readable, are left out."""
    snapshots = []
    for relay, status in _relay_statuses(document):
        total = status.get("total")
        counts = _whole_numbers(total if isinstance(total, dict) else {})
        snapshots.append(
            RepairSnapshot(
                relay=relay,
                running=status.get("state") == "scrubbing",
                passes=_whole_numbers(status).get("passes", 0),
                chunks_checked=counts.get("chunks", 0),
                bytes_checked=counts.get("nbytes", 0),
                counts={k: v for k, v in counts.items() if k in REPAIR_RESULTS},
            )
        )
    return snapshots


def rebalance_snapshots(
    document: Mapping[str, object], placement: str
) -> list[RebalanceSnapshot]:
    """The snapshots of a rebalance status document (`read_rebalance_status`'s
    shape), judged against this node's `placement`."""
    snapshots = []
    for relay, status in _relay_statuses(document):
        figures = _whole_numbers(status)
        snapshots.append(
            RebalanceSnapshot(
                relay=relay,
                running=status.get("state") == "running",
                current=status.get("placement") == placement,
                **{name: figures.get(name, 0) for name, _ in _REBALANCE_GAUGES},
            )
        )
    return snapshots


def _relay_statuses(document: Mapping[str, object]) -> list[tuple[str, Any]]:
    relays = document.get("relays")
    if not isinstance(relays, dict):
        return []
    return [(str(r), s) for r, s in sorted(relays.items()) if isinstance(s, dict)]


def _whole_numbers(table: Mapping[str, object]) -> dict[str, int]:
    """The entries of a JSON table that are counts: whole, not negative."""
    return {
        name: value
        for name, value in table.items()
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0
    }
