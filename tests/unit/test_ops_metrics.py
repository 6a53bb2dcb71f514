"""Tests of the metrics object and the ``/metrics`` page."""

# Twisted's and treq's test helpers carry no annotations yet, and StubTreq makes
# its request methods at run time.
# mypy: disable-error-code="no-untyped-call,attr-defined"

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger

from treescale.ops.metrics import (
    Metrics,
    RepairSnapshot,
    method_label,
)
from treescale.ops.pages import MetricsResource


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def scrape(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The text exposition, parsed back: sample name to labels to value."""
    body, _ = metrics.render(None)
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def test_a_request_is_counted_with_its_time_and_bytes() -> None:
    """One finished request adds to count, duration, bytes in and out."""
    metrics = Metrics(with_process=False)
    metrics.http_started()
    assert value(metrics, "treescale_http_requests_in_flight") == 1
    metrics.http_finished("blob", "GET", 200, 0.3, 0, 1234)
    assert value(metrics, "treescale_http_requests_in_flight") == 0
    labels = {"route": "blob", "method": "GET"}
    assert value(metrics, "treescale_http_requests_total", code="200", **labels) == 1
    assert (
        value(metrics, "treescale_http_request_duration_seconds_sum", **labels) == 0.3
    )
    assert (
        value(
            metrics,
            "treescale_http_request_duration_seconds_bucket",
            le="0.5",
            **labels,
        )
        == 1
    )
    assert value(metrics, "treescale_http_sent_bytes_total", route="blob") == 1234
    assert value(metrics, "treescale_http_received_bytes_total", route="blob") == 0


def test_an_abandoned_request_is_counted_apart() -> None:
    """A request whose client left counts as abandoned, not as answered."""
    metrics = Metrics(with_process=False)
    metrics.http_started()
    metrics.http_abandoned("upload", "PATCH", 2.0, 5000, 0)
    assert (
        value(
            metrics,
            "treescale_http_requests_abandoned_total",
            route="upload",
            method="PATCH",
        )
        == 1
    )
    assert value(metrics, "treescale_http_received_bytes_total", route="upload") == 5000
    assert value(metrics, "treescale_http_requests_in_flight") == 0


def test_invented_methods_and_outcomes_fold_into_other() -> None:
    """Labels stay in small sets: unknown methods and outcomes become "other"."""
    assert method_label(b"GET") == "GET"
    assert method_label(b"BREW") == "other"
    assert method_label("PROPFIND") == "other"
    metrics = Metrics(with_process=False)
    metrics.chunk_fetch("relay-a", "weird")
    metrics.chunk_fetch("relay-a", "ok")
    metrics.chunk_put("relay-b", "timeout")
    fetches = "treescale_chunk_fetches_total"
    assert value(metrics, fetches, holder="relay-a", outcome="other") == 1
    assert value(metrics, fetches, holder="relay-a", outcome="ok") == 1
    assert (
        value(
            metrics, "treescale_chunk_puts_total", holder="relay-b", outcome="timeout"
        )
        == 1
    )


def test_store_and_bus_counters() -> None:
    """Hedges and link changes each count where they should."""
    metrics = Metrics(with_process=False)
    metrics.hedge()
    metrics.hedge()
    metrics.link_changed("relay-a", False)
    metrics.link_changed("relay-a", True)
    assert value(metrics, "treescale_chunk_hedges_total") == 2
    changes = "treescale_bus_link_changes_total"
    assert value(metrics, changes, peer="relay-a", state="down") == 1
    assert value(metrics, changes, peer="relay-a", state="up") == 1


def test_registry_events_errors_and_latencies() -> None:
    """Events by action and kind, error codes, pull and push latencies."""
    metrics = Metrics(with_process=False)
    metrics.registry_event("push", "blob")
    metrics.api_error("BLOB_UNKNOWN")
    metrics.pulled("manifest", 0.02)
    metrics.pushed("blob", 12.0)
    assert (
        value(metrics, "treescale_registry_events_total", action="push", kind="blob")
        == 1
    )
    assert value(metrics, "treescale_registry_errors_total", code="BLOB_UNKNOWN") == 1
    assert value(metrics, "treescale_pull_duration_seconds_count", kind="manifest") == 1
    assert value(metrics, "treescale_push_duration_seconds_sum", kind="blob") == 12.0


def test_watched_gauges_are_read_at_each_scrape() -> None:
    """Links, queues, relays and the chunk buffer show their state at scrape time."""
    metrics = Metrics(with_process=False)
    links: dict[str, bool] = {"relay-a": True, "relay-b": False}
    queued = {"relay-a": 0}
    pending = [3]
    metrics.watch_links(lambda: links)
    metrics.watch_link_queues(lambda: queued)
    metrics.watch_bus_pending(lambda: pending[0])
    metrics.watch_relays(lambda: (2, 3))
    metrics.watch_chunk_buffer(lambda: (5, 64))
    assert value(metrics, "treescale_bus_link_up", peer="relay-a") == 1
    assert value(metrics, "treescale_bus_link_up", peer="relay-b") == 0
    assert value(metrics, "treescale_bus_pending_requests") == 3
    assert value(metrics, "treescale_relays_reachable") == 2
    assert value(metrics, "treescale_relays_needed") == 3
    assert value(metrics, "treescale_chunk_buffer_used") == 5
    assert value(metrics, "treescale_chunk_buffer_size") == 64

    links["relay-b"] = True
    queued["relay-a"] = 4096
    pending[0] = 0
    assert value(metrics, "treescale_bus_link_up", peer="relay-b") == 1
    assert value(metrics, "treescale_bus_link_queued_bytes", peer="relay-a") == 4096
    assert value(metrics, "treescale_bus_pending_requests") == 0


def test_repair_and_rebalance_progress() -> None:
    """Repair and rebalance snapshots become counters and gauges per relay, the
    source read once per scrape."""
    metrics = Metrics(with_process=False)
    reads = []

    def repair() -> list[RepairSnapshot]:
        reads.append(1)
        return [
            RepairSnapshot(
                "relay-a", True, 2, 100, 4096, {"corrupt": 1, "copied": 3, "bogus": 9}
            )
        ]

    metrics.watch_repair(repair)
    samples = scrape(metrics)
    assert len(reads) == 1
    relay_a = (("relay", "relay-a"),)
    assert samples["treescale_repair_running"][relay_a] == 1
    assert samples["treescale_repair_passes_total"][relay_a] == 2
    assert samples["treescale_repair_checked_chunks_total"][relay_a] == 100
    assert samples["treescale_repair_checked_bytes_total"][relay_a] == 4096
    counts = samples["treescale_repair_chunks_total"]
    assert counts == {
        (("relay", "relay-a"), ("result", "corrupt")): 1,
        (("relay", "relay-a"), ("result", "copied")): 3,
    }


def test_a_failing_source_leaves_only_its_metrics_out() -> None:
    """A watched callable that raises is logged; the rest of the page is served."""
    metrics = Metrics(with_process=False)
    logged = EventLoggingObserver()
    metrics._snapshots.log = Logger(observer=logged)

    def broken() -> Mapping[str, bool]:
        raise RuntimeError("bus gone")

    metrics.watch_links(broken)
    metrics.watch_relays(lambda: (1, 1))
    metrics.hedge()
    samples = scrape(metrics)
    assert "treescale_bus_link_up" not in samples
    assert samples["treescale_relays_reachable"][()] == 1
    assert samples["treescale_chunk_hedges_total"][()] == 1
    assert len(logged) == 1
    assert logged[0]["log_failure"].check(RuntimeError)


def test_two_metrics_objects_do_not_share_values() -> None:
    """Each Metrics has its own registry: counts of one never show in another."""
    first, second = Metrics(), Metrics()
    first.hedge()
    assert value(first, "treescale_chunk_hedges_total") == 1
    assert value(second, "treescale_chunk_hedges_total") == 0


def test_process_metrics_are_there_by_default() -> None:
    """The standard process metrics (memory, CPU) come with a Metrics."""
    samples = scrape(Metrics())
    assert "process_resident_memory_bytes" in samples
    assert "python_info" in samples


def test_page_serves_text_or_openmetrics() -> None:
    """``GET /metrics`` answers Prometheus text, or OpenMetrics when asked for."""
    metrics = Metrics(with_process=False)
    metrics.hedge()
    stub = StubTreq(MetricsResource(metrics))
    response = stub.get("http://node.test/metrics").result
    content_type = response.headers.getRawHeaders("content-type")[0]
    assert content_type.startswith("text/plain; version=0.0.4")
    body = stub.content(response).result.decode()
    assert "treescale_chunk_hedges_total 1.0" in body

    asked = {"Accept": "application/openmetrics-text; version=1.0.0"}
    response = stub.get("http://node.test/metrics", headers=asked).result
    content_type = response.headers.getRawHeaders("content-type")[0]
    assert content_type.startswith("application/openmetrics-text")
    assert stub.content(response).result.decode().rstrip().endswith("# EOF")

    head = stub.head("http://node.test/metrics").result
    assert head.code == 200
    assert stub.content(head).result == b""
    refused = stub.delete("http://node.test/metrics").result
    assert refused.code == 405
    assert refused.headers.getRawHeaders("allow") == ["GET, HEAD"]
