"""Tests of the repair and rebalance metrics: a `ProgressFeed` reads the relays'
status documents on a `Clock`, and a scrape shows its last reading."""

from collections.abc import Mapping

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from tests.unit.test_ops_metrics import scrape
from treescale.ops.metrics import Metrics, ProgressFeed
from treescale.store.errors import StorageUnavailable
from treescale.store.rebalance import RebalanceCounts
from treescale.store.repair import ScrubCounts

PLACEMENT = "0123456789abcdef"
RELAY_A = (("relay", "relay-a"),)
RELAY_B = (("relay", "relay-b"),)


def rebalance_document(moved: int, left: int) -> dict[str, object]:
    """A rebalance status reading: relay-a working, relay-b on an old placement,
    relay-c silent."""
    counts = RebalanceCounts(
        chunks_misplaced=moved + left,
        bytes_misplaced=(moved + left) * 10,
        chunks_moved=moved,
        bytes_moved=moved * 10,
    )
    working = {"state": "running", "placement": PLACEMENT, **counts.to_json()}
    behind = {"state": "idle", "placement": "old", **RebalanceCounts().to_json()}
    return {"relays": {"relay-a": working, "relay-b": behind, "relay-c": None}}


def repair_document() -> dict[str, object]:
    total = ScrubCounts(chunks=40, nbytes=4000, missing=2, copied=2).to_json()
    status = {"state": "scrubbing", "passes": 3, "total": total}
    return {"relays": {"relay-a": status, "relay-b": None}}


class Readings:
    """Documents handed out one per read, and how many reads there were."""

    def __init__(self, *documents: Mapping[str, object] | Exception) -> None:
        self.documents = list(documents)
        self.reads = 0

    def __call__(self, now: float) -> "Deferred[Mapping[str, object]]":
        self.reads += 1
        document = self.documents[min(self.reads, len(self.documents)) - 1]
        if isinstance(document, Exception):
            return fail(document)
        return succeed(document)


def feed(
    clock: Clock, repair: Readings, rebalance: Readings
) -> tuple[Metrics, ProgressFeed]:
    metrics = Metrics(with_process=False)
    progress = ProgressFeed(
        clock,
        repair,
        rebalance,
        lambda: PLACEMENT,
        interval=10.0,
    )
    metrics.watch_progress(progress)
    return metrics, progress


def test_rebalance_progress_per_relay_from_the_last_reading() -> None:
    """Moved and left per relay come from the latest reading, and each relay says
    whether it works for this node's placement; a silent relay has no series."""
    clock = Clock()
    rebalance = Readings(rebalance_document(2, 6), rebalance_document(7, 1))
    metrics, progress = feed(clock, Readings(repair_document()), rebalance)
    progress.startService()

    first = scrape(metrics)
    clock.advance(10.0)
    second = scrape(metrics)
    progress.stopService()

    assert first["treescale_rebalance_chunks_left"][RELAY_A] == 6
    assert second["treescale_rebalance_chunks_left"][RELAY_A] == 1
    assert second["treescale_rebalance_chunks_moved"][RELAY_A] == 7
    assert second["treescale_rebalance_bytes_left"][RELAY_A] == 10
    assert second["treescale_rebalance_running"][RELAY_A] == 1
    assert second["treescale_rebalance_current"] == {RELAY_A: 1, RELAY_B: 0}
    assert (("relay", "relay-c"),) not in second["treescale_rebalance_chunks_left"]
    assert rebalance.reads == 2


def test_repair_progress_is_fed_too() -> None:
    """The scrub totals of the reading become the repair metrics."""
    clock = Clock()
    metrics, progress = feed(
        clock, Readings(repair_document()), Readings(rebalance_document(0, 0))
    )
    progress.startService()

    samples = scrape(metrics)
    progress.stopService()

    assert samples["treescale_repair_running"] == {RELAY_A: 1}
    assert samples["treescale_repair_passes_total"][RELAY_A] == 3
    assert samples["treescale_repair_checked_chunks_total"][RELAY_A] == 40
    chunks = samples["treescale_repair_chunks_total"]
    assert chunks[(("relay", "relay-a"), ("result", "copied"))] == 2


def test_failed_reading_keeps_the_one_before() -> None:
    """A reading that fails (no quorum) leaves the last figures in place, and the
    feed goes on reading."""
    clock = Clock()
    rebalance = Readings(
        rebalance_document(2, 6),
        StorageUnavailable("no quorum"),
        rebalance_document(8, 0),
    )
    metrics, progress = feed(clock, Readings(repair_document()), rebalance)
    progress.startService()

    clock.advance(10.0)
    kept = scrape(metrics)
    clock.advance(10.0)
    fresh = scrape(metrics)
    progress.stopService()
    clock.advance(100.0)

    assert kept["treescale_rebalance_chunks_left"][RELAY_A] == 6
    assert fresh["treescale_rebalance_chunks_left"][RELAY_A] == 0
    assert rebalance.reads == 3


def test_the_first_reading_waits_for_the_links() -> None:
    """With `first_after`, nothing is read until that long after the start."""
    clock = Clock()
    rebalance = Readings(rebalance_document(2, 6))
    progress = ProgressFeed(
        clock,
        Readings(repair_document()),
        rebalance,
        lambda: PLACEMENT,
        interval=10.0,
        first_after=5.0,
    )
    progress.startService()

    clock.advance(4.0)
    assert rebalance.reads == 0
    clock.advance(1.5)
    assert rebalance.reads == 1
    progress.stopService()
