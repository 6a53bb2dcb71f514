"""What an operator sees of a running registry: metrics, health, webhooks, JSON logs.

Three groups, all over real sockets on loopback with skopeo as the client:

- A treescale tree of ``twistd`` processes answers ``/healthz``, ``/readyz`` and
  ``/metrics``; its counts follow a real push and pull, and readiness follows the
  relays it reaches.
- Webhooks, from a registry run in this test's own reactor (over memory storage,
  served by the real site on a real port) to three real receivers: one that hangs,
  one that answers 500 at first, one that is down until late. Pushes do not wait
  for any of them, every event arrives, retried ones with the same ids. The same
  skopeo steps against the reference registry (CNCF distribution, with its own
  notifications on) give the same events, field for field.
- The same from a real tree with ``[notifications]`` and ``[log] format = "json"``
  in its topology file, whose logs are then JSON lines. It needs those tables read
  by `treescale.config`; until they are, it is skipped and says so.
"""

# Twisted's test helpers and resources carry no annotations yet.
# mypy: disable-error-code="no-untyped-call"

import http.server
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor as global_reactor
from twisted.internet import threads
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.unit.memstore import MemoryStorage
from treescale import config
from treescale.ops.events import ENVELOPE_TYPE
from treescale.ops.pages import node_ops
from treescale.ops.settings import NotificationEndpoint, NotificationSettings
from treescale.registry.app import Registry, make_site

from .cluster import (
    Cluster,
    ReferenceRegistry,
    free_ports,
    read_log,
    running_cluster,
    wait_for,
)
from .images import OciImage, Skopeo

pytestmark = pytest.mark.integration

REPOSITORY = "ops/app"
TAG = "v1"

# The reactor pytest-twisted runs; typed loosely, as service.py types it.
reactor: Any = global_reactor

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fetch(address: str, path: str) -> tuple[int, bytes, str]:
    """Status, body and content type of a GET to the node, never via a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{address}{path}", timeout=5) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers["Content-Type"]


def scrape(address: str) -> Samples:
    """The node's ``/metrics``, parsed: (sample name, labels) to value."""
    status, body, content_type = fetch(address, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples[(sample.name, labels)] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample, have), value in samples.items()
        if sample == name and wanted <= set(have)
    )


def ready(address: str) -> tuple[int, dict[str, Any]]:
    status, body, _ = fetch(address, "/readyz")
    return status, json.loads(body)


# A real tree, as deployed.


def test_a_real_tree_counts_a_push_and_a_pull(
    cluster: Cluster, small_image: OciImage, skopeo: Skopeo, tmp_path: Path
) -> None:
    """Health and readiness answer, and the metrics follow skopeo's push and pull:
    requests by route and status, bytes each way, events, pull latencies, links."""
    assert fetch(cluster.address, "/healthz")[:2] == (200, b'{"status": "alive"}')
    assert ready(cluster.address) == (
        200,
        {"ready": True, "relays_up": 3, "relays_needed": 2},
    )

    reference = f"{cluster.address}/{REPOSITORY}:{TAG}"
    skopeo.push(small_image, reference)
    skopeo.pull(reference, tmp_path / "pulled", TAG)
    samples = scrape(cluster.address)

    blobs = (small_image.config, *small_image.layers)
    blob_bytes = sum(blob.size for blob in blobs)
    requests = "treescale_http_requests_total"
    assert total(samples, requests, route="manifest", method="PUT", code="201") == 1
    assert total(samples, requests, route="blob", method="GET", code="200") == len(
        blobs
    )
    assert total(samples, "treescale_http_received_bytes_total") >= blob_bytes
    assert total(samples, "treescale_http_sent_bytes_total", route="blob") == blob_bytes
    events = "treescale_registry_events_total"
    assert total(samples, events, action="push", kind="blob") == len(blobs)
    assert total(samples, events, action="push", kind="manifest") == 1
    assert total(samples, "treescale_pull_duration_seconds_count", kind="blob") == len(
        blobs
    )
    assert total(samples, "treescale_push_duration_seconds_count", kind="blob") == len(
        blobs
    )
    assert total(samples, "treescale_http_requests_in_flight") == 0
    for relay in cluster.relays:
        assert total(samples, "treescale_bus_link_up", peer=relay) == 1
    assert total(samples, "treescale_relays_reachable") == 3
    # Every chunk of the pull was fetched whole from some holder; every chunk of
    # the push stored on two (the blobs are smaller than a chunk: one each).
    fetched = total(samples, "treescale_chunk_fetches_total", outcome="ok")
    stored = total(samples, "treescale_chunk_puts_total", outcome="ok")
    assert fetched >= len(blobs) + 1
    assert stored >= 2 * (len(blobs) + 1)
    assert total(samples, "treescale_bus_pending_requests") == 0
    queued = {
        dict(labels)["peer"]
        for name, labels in samples
        if name == "treescale_bus_link_queued_bytes"
    }
    assert queued == set(cluster.relays)
    assert total(samples, "process_resident_memory_bytes") > 0
    # The status and operations pages are not the API: they are not counted.
    assert total(samples, requests, route="none") == 0


def test_readiness_follows_the_relays_a_tree_reaches(cluster: Cluster) -> None:
    """With two of three relays gone the node is alive but not ready; with one
    back it is ready again, and the metrics show each link's state."""
    cluster.stop_node("relay-a")
    cluster.stop_node("relay-b")
    wait_for(
        lambda: ready(cluster.address)[0] == 503, "readyz answering 503", timeout=30
    )
    assert ready(cluster.address)[1] == {
        "ready": False,
        "relays_up": 1,
        "relays_needed": 2,
    }
    assert fetch(cluster.address, "/healthz")[0] == 200
    samples = scrape(cluster.address)
    assert total(samples, "treescale_bus_link_up", peer="relay-a") == 0
    assert total(samples, "treescale_bus_link_up", peer="relay-c") == 1
    changes = "treescale_bus_link_changes_total"
    assert total(samples, changes, peer="relay-b", state="down") >= 1

    cluster.start_node("relay-a")
    cluster.wait_for_relays(2)
    assert ready(cluster.address)[0] == 200


# Webhooks, from a registry in this reactor to receivers in it.


@dataclass
class Delivery:
    """One POST a receiver was sent."""

    content_type: str
    events: list[dict[str, Any]]
    status: int = 0


class Receiver(Resource):
    """A webhook receiver: records deliveries; can hang, or fail the first ones."""

    isLeaf = True

    def __init__(self, fail_first: int = 0, hang: bool = False) -> None:
        super().__init__()
        self.fail_first = fail_first
        self.hang = hang
        self.deliveries: list[Delivery] = []
        self.held: list[tuple[Request, Delivery]] = []

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        content_type = request.getHeader(b"content-type") or b""
        delivery = Delivery(
            content_type.decode(), json.loads(request.content.read())["events"]
        )
        self.deliveries.append(delivery)
        if self.hang:
            self.held.append((request, delivery))
            return NOT_DONE_YET
        delivery.status = 500 if len(self.deliveries) <= self.fail_first else 200
        request.setResponseCode(delivery.status)
        return b"noted"

    def release(self) -> None:
        """Answer every held delivery with 200, and hold no more."""
        self.hang = False
        for request, delivery in self.held:
            delivery.status = 200
            request.write(b"noted")
            request.finish()
        self.held = []

    @property
    def events(self) -> list[dict[str, Any]]:
        """Events of the deliveries taken (2xx), each once, in order."""
        seen: dict[str, dict[str, Any]] = {}
        for delivery in self.deliveries:
            if delivery.status == 200:
                for event in delivery.events:
                    seen.setdefault(event["id"], event)
        return list(seen.values())

    def actions(self) -> list[str]:
        return [event["action"] for event in self.events]


async def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Let the reactor run until `check` holds; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await deferLater(reactor, 0.05, lambda: None)


def event_shape(event: dict[str, Any]) -> tuple[object, ...]:
    """What must match between two registries' events: all but ids, times, hosts."""
    target = dict(event["target"])
    url = target.pop("url", None)
    path = url.split("/", 3)[3] if url else None
    return (
        event["action"],
        event["request"]["method"],
        path,
        tuple(sorted(target.items())),
        tuple(sorted(event["actor"].items())),
    )


class NotifyingReference(ReferenceRegistry):
    """The reference registry with one notification endpoint of its own."""

    def __init__(self, directory: Path, hook_url: str) -> None:
        super().__init__(directory)
        self.hook_url = hook_url

    def write_config(self) -> Path:
        path = super().write_config()
        lines = [
            "notifications:",
            "  endpoints:",
            "    - name: test",
            f"      url: {json.dumps(self.hook_url)}",
            "      timeout: 5s",
            "      threshold: 3",
            "      backoff: 1s",
        ]
        path.write_text(path.read_text() + "\n".join(lines) + "\n")
        return path


async def push_pull_delete(
    skopeo: Skopeo, image: OciImage, address: str, workdir: Path
) -> None:
    """skopeo's push, pull and delete of `image`, each in a thread."""
    reference = f"{address}/{REPOSITORY}:{TAG}"
    await threads.deferToThread(skopeo.push, image, reference)
    await threads.deferToThread(skopeo.pull, reference, workdir / "pulled", TAG)
    await threads.deferToThread(skopeo.delete, reference)


def listen(resource: Resource, port: int = 0) -> Any:
    return reactor.listenTCP(port, Site(resource), interface="127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_webhooks_never_hold_up_pushes_and_match_the_reference(
    small_image: OciImage, skopeo: Skopeo, tmp_path: Path
) -> None:
    """A hanging, a failing and a down receiver cost skopeo's push nothing; each
    receiver then gets every event (failed deliveries again, with the same ids),
    and the events are those the reference registry sends for the same steps."""
    hanging, failing, late = Receiver(hang=True), Receiver(fail_first=2), Receiver()
    late_port = free_ports(1)[0]
    ports = [listen(hanging), listen(failing)]
    urls = [f"http://127.0.0.1:{port.getHost().port}/hook" for port in ports]
    urls.append(f"http://127.0.0.1:{late_port}/hook")
    settings = NotificationSettings(
        endpoints=tuple(
            NotificationEndpoint(name, url, timeout=60.0)
            for name, url in zip(("hanging", "failing", "late"), urls, strict=True)
        ),
        backoff_initial=0.1,
        backoff_max=0.5,
        max_attempts=0,
    )
    ops = node_ops(reactor, settings, "tcp:0", lambda: (1, 1))
    assert ops.notifier is not None
    registry = Registry(MemoryStorage(), reactor, observer=ops.observer)
    api = reactor.listenTCP(0, make_site(registry), interface="127.0.0.1")
    ports.append(api)
    address = f"127.0.0.1:{api.getHost().port}"
    try:
        reference = f"{address}/{REPOSITORY}:{TAG}"
        started = time.monotonic()
        await threads.deferToThread(skopeo.push, small_image, reference)
        push_seconds = time.monotonic() - started

        # The push is done while one receiver still holds the first event and
        # another refuses connections.
        assert [len(d.events) for d in hanging.deliveries] == [1]
        assert hanging.held
        assert late.deliveries == []
        assert push_seconds < 30, push_seconds

        hanging.release()
        ports.append(listen(late, late_port))
        await threads.deferToThread(skopeo.pull, reference, tmp_path / "pulled", TAG)
        await threads.deferToThread(skopeo.delete, reference)
        for receiver in (hanging, failing, late):
            await eventually(
                lambda receiver=receiver: "delete" in receiver.actions(),
                "the delete events",
            )
        await deferLater(reactor, 0.5, lambda: None)
    finally:
        await ops.notifier.stop()
        for port in ports:
            await port.stopListening()

    ids = [event["id"] for event in hanging.events]
    assert [event["id"] for event in failing.events] == ids
    assert [event["id"] for event in late.events] == ids
    first, second, third = failing.deliveries[:3]
    assert (first.status, second.status, third.status) == (500, 500, 200)
    assert [e["id"] for e in first.events] == [e["id"] for e in third.events]
    assert {d.content_type for d in failing.deliveries} == {ENVELOPE_TYPE}
    blobs = len(small_image.content_digests)
    assert hanging.actions()[: blobs + 1] == ["push"] * (blobs + 1)

    treescale_shapes = Counter(event_shape(event) for event in hanging.events)
    reference_events = await reference_run(small_image, skopeo, tmp_path / "reference")
    reference_shapes = Counter(event_shape(event) for event in reference_events)
    assert {shape[0] for shape in reference_shapes} == {"push", "pull", "delete"}
    assert treescale_shapes == reference_shapes, (
        f"only treescale: {treescale_shapes - reference_shapes}\n"
        f"only the reference: {reference_shapes - treescale_shapes}"
    )


async def reference_run(
    image: OciImage, skopeo: Skopeo, directory: Path
) -> list[dict[str, Any]]:
    """The events the reference registry sends for skopeo's push, pull, delete."""
    receiver = Receiver()
    port = listen(receiver)
    directory.mkdir(parents=True)
    registry = NotifyingReference(
        directory, f"http://127.0.0.1:{port.getHost().port}/hook"
    )
    try:
        await threads.deferToThread(registry.start)
        await push_pull_delete(skopeo, image, registry.address, directory)
        await eventually(lambda: "delete" in receiver.actions(), "reference deletes")
        # Deleting a manifest sends one event for it and one per tag, in turn.
        await deferLater(reactor, 1.0, lambda: None)
    finally:
        await threads.deferToThread(registry.stop)
        await port.stopListening()
    return receiver.events


# A real tree reading [notifications] and [log] from its topology file.

WIRED = {"notifications", "log"} <= config.TOP_FIELDS


@dataclass
class ThreadedReceiver:
    """A webhook receiver in a thread, for tests without a reactor."""

    fail_first: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def running(self) -> Iterator[str]:
        """Serve on a loopback port; its URL."""
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with owner.lock:
                    delivery = Delivery(self.headers["Content-Type"], body["events"])
                    owner.deliveries.append(delivery)
                    failing = len(owner.deliveries) <= owner.fail_first
                    delivery.status = 500 if failing else 200
                self.send_response(delivery.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test reads what was delivered instead."""

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/hook"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)

    def actions(self) -> list[str]:
        with self.lock:
            taken = [d for d in self.deliveries if d.status == 200]
        seen: dict[str, str] = {}
        for delivery in taken:
            for event in delivery.events:
                seen.setdefault(event["id"], event["action"])
        return list(seen.values())


@pytest.mark.skipif(
    not WIRED,
    reason="treescale.config does not read the [notifications] and [log] tables yet",
)
def test_a_real_tree_notifies_and_logs_json_lines(
    small_image: OciImage, skopeo: Skopeo, tmp_path: Path
) -> None:
    """A tree configured for webhooks and JSON logs sends every event (after two
    refused deliveries) and writes each node's log as JSON lines."""
    receiver = ThreadedReceiver(fail_first=2)
    with receiver.running() as url:
        tables = "\n".join(
            [
                "[log]",
                'format = "json"',
                "",
                "[notifications]",
                "backoff_initial = 0.2",
                "backoff_max = 1.0",
                "",
                "[[notifications.endpoint]]",
                'name = "hook"',
                f"url = {json.dumps(url)}",
            ]
        )
        with running_cluster(tmp_path / "cluster", extra=tables) as cluster:
            reference = f"{cluster.address}/{REPOSITORY}:{TAG}"
            skopeo.push(small_image, reference)
            skopeo.pull(reference, tmp_path / "pulled", TAG)
            skopeo.delete(reference)
            wait_for(lambda: "delete" in receiver.actions(), "delete events", 30)
            samples = scrape(cluster.address)
            logs = {
                name: read_log(cluster.log_path(name))
                for name in cluster.topology.nodes
            }

    blobs = len(small_image.content_digests)
    assert receiver.actions()[: blobs + 1] == ["push"] * (blobs + 1)
    assert "pull" in receiver.actions()
    assert [d.status for d in receiver.deliveries[:3]] == [500, 500, 200]
    sent = "treescale_notifications_sent_total"
    assert total(samples, sent, endpoint="hook") == len(receiver.actions())
    assert total(samples, "treescale_notifications_failed_total", endpoint="hook") == 2

    for name, text in logs.items():
        lines = [json.loads(line) for line in text.splitlines()]
        assert lines, f"{name} logged nothing"
        for line in lines:
            assert {"time", "level", "namespace", "message"} <= set(line), line
    pushed = [
        line
        for line in (json.loads(text) for text in logs["registry"].splitlines())
        if line["message"].startswith("manifest ") and "pushed" in line["message"]
    ]
    assert pushed and pushed[0]["repo"] == REPOSITORY
    assert pushed[0]["digest"].startswith("sha256:")
    assert pushed[0]["namespace"] == "treescale.registry.pushes.Pushes"


def test_a_real_tree_logs_from_its_level_on(
    small_image: OciImage, skopeo: Skopeo, tmp_path: Path
) -> None:
    """With ``[log] level = "warn"`` a node writes its warnings (a relay of another
    process lost) and nothing below them: no info line of a push, of twistd's own
    start, or of the links coming up."""
    with running_cluster(
        tmp_path / "cluster", extra='[log]\nlevel = "warn"'
    ) as cluster:
        skopeo.push(small_image, f"{cluster.address}/{REPOSITORY}:{TAG}")
        cluster.stop_node("relay-a")
        wait_for(
            lambda: (
                "bus link down: registry <-> relay-a" in cluster.log_text("registry")
            ),
            "the registry to log the relay's link down",
            30,
        )
        text = cluster.log_text("registry")

    assert "#warn] bus link down: registry <-> relay-a" in text
    assert "#info]" not in text and "#debug]" not in text
    assert "[-]" not in text  # twistd's own start lines are info too
