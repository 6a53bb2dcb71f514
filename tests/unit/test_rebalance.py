"""Tests of a relay's rebalance over real relays on in-memory bus links.

The tree has four relays on its bus; the relays start believing a topology of three
(``d`` left out, or set to drain) and are then handed an edit, as their bus's
topology listeners are. Chunks and records sit in real files under the test's
folder, disk work runs inline (see `bustest`), and time is the tree's `Clock`.
"""

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, FirstError, ensureDeferred
from twisted.python.failure import Failure

from tests.unit.bustest import BusTree, InlinePool, inline_reactor, topology
from tests.unit.test_ops_metrics import scrape
from treescale.config import Topology, parse
from treescale.config_error import ConfigError
from treescale.ops.metrics import Metrics, ProgressFeed
from treescale.store.cluster import ClusterStorage
from treescale.store.digests import sha256_digest
from treescale.store.placement import holders_of, place
from treescale.store.rebalance import (
    IDLE,
    RUNNING,
    WAITING,
    RebalanceCounts,
    RecordShelf,
    read_rebalance_status,
)
from treescale.store.rebalance_settings import (
    RebalanceSettings,
    parse_rebalance_settings,
)
from treescale.store.records import HybridClock, RecordClient, Stored, Version
from treescale.store.relay import Relay
from treescale.store.scrub import _is_cancellation
from treescale.topology_change import placement_digest

RELAYS = ("a", "b", "c", "d")
MAX_CHUNK = 1 << 20
SETTINGS = RebalanceSettings(
    bytes_per_second=1 << 30,
    chunks_per_second=100_000.0,
    recheck_interval=20.0,
    start_delay=2.0,
    request_timeout=5.0,
)
FULL = topology([("root", None), *((name, "root") for name in RELAYS)])


def without(tree: Topology, name: str) -> Topology:
    """`tree` as it was before store `name` was added."""
    return replace(tree, nodes=tuple(n for n in tree.nodes if n.name != name))


BEFORE = without(FULL, "d")
"""The tree before relay d was added."""


def draining(tree: Topology, name: str) -> Topology:
    """`tree` with store `name` set to drain."""
    nodes = tuple(replace(n, drain=n.name == name) for n in tree.nodes)
    return replace(tree, nodes=nodes)


def with_settings(tree: Topology, settings: RebalanceSettings) -> Topology:
    return replace(tree, rebalance=settings)


class World:
    """A registry node "root" and four relays below it, which first see `before`."""

    def __init__(
        self,
        folder: Path,
        before: Topology | None = None,
        settings: RebalanceSettings = SETTINGS,
    ) -> None:
        before = before or BEFORE
        self.tree = BusTree(FULL).connect_all()
        self.relays: dict[str, Relay] = {}
        for name in RELAYS:
            bus = self.tree[name]
            bus.topology = with_settings(before, settings)
            self.relays[name] = Relay(
                bus, folder / name, inline_reactor(), InlinePool(), MAX_CHUNK
            )
        self.topology = before

    def keep(self, data: bytes, names: Sequence[str]) -> str:
        """Write `data` as a chunk straight onto the disks of `names`."""
        digest = sha256_digest(data)
        for name in names:
            writer = self.relays[name].chunks.open_writer(digest, len(data))
            writer.write(data)
            writer.commit()
        return digest

    def keep_on_homes(self, count: int, tree: Topology) -> dict[str, bytes]:
        """`count` chunks, each on its homes in `tree`; their bytes by digest."""
        kept = {}
        for number in range(count):
            data = f"chunk {number} ".encode() * 200
            kept[self.keep(data, homes(sha256_digest(data), tree))] = data
        return kept

    def holders(self, digest: str) -> list[str]:
        """The relays whose disk holds a good copy of `digest`."""
        found = []
        for name in RELAYS:
            try:
                self.relays[name].chunks.read(digest)
            except Exception:
                continue
            found.append(name)
        return found

    def edit(self, tree: Topology) -> None:
        """Hand every relay an edited topology, as its bus does after a reload."""
        self.topology = tree
        for name in RELAYS:
            bus = self.tree[name]
            bus.topology = with_settings(tree, bus.topology.rebalance)
            for listener in bus.topology_listeners:
                listener(bus.topology)

    def run(self, d: "Deferred[Any]", step: float = 0.5, limit: float = 1000.0) -> Any:
        """Let time pass until `d` fires; its result."""
        return self.tree.run(d, step, limit)

    def rebalance(self, name: str) -> RebalanceCounts:
        """One whole pass of relay `name`'s rebalance."""
        counts: RebalanceCounts = self.run(
            ensureDeferred(self.relays[name].rebalancer.run_pass())
        )
        return counts

    def rebalance_all(self) -> dict[str, RebalanceCounts]:
        return {name: self.rebalance(name) for name in RELAYS}

    def record_client(self, tree: Topology) -> RecordClient:
        """A client placing records as `tree` does, from the registry node."""
        root = self.tree["root"]
        return RecordClient(
            root, holders_of(tree), tree.record_replicas, HybridClock(root.me.id)
        )

    def record_copies(self, key: str) -> dict[str, Stored]:
        """Every relay's own copy of record `key`, read straight from its files."""
        copies = {}
        for name in RELAYS:
            stored = self.relays[name].records.get(key)
            if stored is not None:
                copies[name] = stored
        return copies


def homes(key: str, tree: Topology, replicas: int | None = None) -> list[str]:
    """Where `tree` places `key` (chunk replicas unless told otherwise)."""
    count = tree.replicas if replicas is None else replicas
    return [holder.name for holder in place(key, holders_of(tree), count)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield World(tmp_path)


# Chunks.


def test_added_relay_gets_its_chunks_and_old_holders_let_go(world: World) -> None:
    """After a relay is added, every chunk ends on exactly its new homes, some of
    them on the new relay, and the bytes are the same."""
    kept = world.keep_on_homes(40, world.topology)

    world.edit(FULL)
    counts = world.rebalance_all()

    for digest, data in kept.items():
        assert sorted(world.holders(digest)) == sorted(homes(digest, FULL))
        assert world.relays[homes(digest, FULL)[0]].chunks.read(digest) == data
    moved = sum(c.chunks_moved for c in counts.values())
    assert moved > 0
    assert moved == sum(1 for d in kept if "d" in homes(d, FULL))
    assert counts["d"].chunks_misplaced == 0
    assert all(c.chunks_left == 0 and c.failed == 0 for c in counts.values())


def test_copies_go_only_to_homes_that_lack_the_chunk(world: World) -> None:
    """A misplaced chunk is sent to the home without it, not to the one that has
    it; its old holder then deletes its copy."""
    for number in range(1000):
        data = f"pick {number}".encode() * 100
        digest = sha256_digest(data)
        old, new = homes(digest, world.topology), homes(digest, FULL)
        if "d" in new and len(set(old) - set(new)) == 1:
            break
    leaving = (set(old) - set(new)).pop()
    world.keep(data, old)

    world.edit(FULL)
    counts = world.rebalance(leaving)

    assert (counts.chunks_moved, counts.copies, counts.bytes_moved) == (
        1,
        1,
        len(data),
    )
    assert sorted(world.holders(digest)) == sorted(new)


def test_chunk_stays_while_a_home_does_not_answer(world: World) -> None:
    """With the new relay unreachable its chunks stay where they are, counted as
    left; once it answers again a later pass moves them."""
    kept = world.keep_on_homes(30, world.topology)
    bound_for_d = [d for d in kept if "d" in homes(d, FULL)]
    assert bound_for_d
    world.tree.cut("d")
    world.edit(FULL)

    first = world.rebalance_all()

    assert sum(c.chunks_left for c in first.values()) >= len(bound_for_d)
    assert sum(c.failed for c in first.values()) >= len(bound_for_d)
    for digest in bound_for_d:
        assert sorted(world.holders(digest)) == sorted(homes(digest, BEFORE))
    world.tree.connect("d")
    world.tree.advance(SETTINGS.recheck_interval, 5.0)

    second = world.rebalance_all()

    assert all(c.chunks_left == 0 for c in second.values())
    for digest in kept:
        assert sorted(world.holders(digest)) == sorted(homes(digest, FULL))


def test_draining_relay_ends_empty_and_nothing_is_lost(tmp_path: Path) -> None:
    """A relay set to drain gives every chunk and record away; each chunk ends on
    its homes among the others and every record still reads the same."""
    world = World(tmp_path, before=FULL)
    kept = world.keep_on_homes(40, FULL)
    writer = world.record_client(FULL)
    values = {f"tag/repo/t{n}": f"value {n}".encode() for n in range(20)}
    for key, value in values.items():
        world.run(ensureDeferred(writer.put(key, value)))
    assert world.relays["b"].chunks.sizes_after("", 1)

    drained = draining(FULL, "b")
    world.edit(drained)
    counts = world.rebalance_all()

    assert world.relays["b"].chunks.sizes_after("", 1) == []
    assert world.relays["b"].records.stored_after("", 1) == []
    assert counts["b"].chunks_moved == sum(1 for d in kept if "b" in homes(d, FULL))
    for digest, data in kept.items():
        assert sorted(world.holders(digest)) == sorted(homes(digest, drained))
        assert world.relays[homes(digest, drained)[0]].chunks.read(digest) == data
    reader = world.record_client(drained)
    for key, value in values.items():
        assert world.run(ensureDeferred(reader.get(key))) == value


# Records.


def test_records_move_with_their_versions_and_tombstones(world: World) -> None:
    """A record whose homes changed is on its new homes at the version it had, a
    deletion stays a deletion, and no relay off its homes keeps a copy."""
    writer = world.record_client(world.topology)
    keys = [f"tag/repo/r{n}" for n in range(30)]
    for key in keys:
        world.run(ensureDeferred(writer.put(key, key.encode())))
    deleted = keys[::3]
    for key in deleted:
        world.run(ensureDeferred(writer.put(key, None)))
    before = {key: world.record_copies(key) for key in keys}

    world.edit(FULL)
    counts = world.rebalance_all()

    moved = [k for k in keys if set(homes(k, FULL, 3)) != set(before[k])]
    assert moved, "no record changed homes: the test proves nothing"
    assert sum(c.records_moved for c in counts.values()) == len(moved)
    for key in keys:
        copies = world.record_copies(key)
        assert sorted(copies) == sorted(homes(key, FULL, 3))
        versions = {stored.version for stored in copies.values()}
        assert versions == {s.version for s in before[key].values()}
        gone = {stored.value is None for stored in copies.values()}
        assert gone == {key in deleted}


def test_record_written_meanwhile_is_kept(tmp_path: Path) -> None:
    """A copy that changed since the rebalance read it is not removed."""
    shelf = RecordShelf(tmp_path, fsync=False)
    shelf.put("tag/x/y", Stored(Version(1, 0, 1), b"old"))
    shelf.put("tag/x/y", Stored(Version(2, 0, 1), b"new"))

    assert shelf.remove_if_unchanged("tag/x/y", Version(1, 0, 1)) is False
    assert shelf.get("tag/x/y") == Stored(Version(2, 0, 1), b"new")
    assert shelf.remove_if_unchanged("tag/x/y", Version(2, 0, 1)) is True
    assert shelf.get("tag/x/y") is None


def test_removed_record_leaves_the_listing_index(tmp_path: Path) -> None:
    """A record removed by the rebalance is no longer listed by its old relay."""
    shelf = RecordShelf(tmp_path, fsync=False)
    shelf.put("tag/x/a", Stored(Version(1, 0, 1), b"a"))
    shelf.put("tag/x/b", Stored(Version(1, 0, 1), b"b"))
    assert [e.key for e in shelf.listing("tag/", "", 10)[0]] == ["tag/x/a", "tag/x/b"]

    shelf.remove_if_unchanged("tag/x/a", Version(1, 0, 1))

    assert [e.key for e in shelf.listing("tag/", "", 10)[0]] == ["tag/x/b"]


def test_records_are_walked_a_page_at_a_time(tmp_path: Path) -> None:
    """Pages follow one another in file order, each record once, half-written
    files and damaged ones left out."""
    shelf = RecordShelf(tmp_path, fsync=False)
    keys = {f"tag/k/{n}" for n in range(25)}
    for key in keys:
        shelf.put(key, Stored(Version(1, 0, 1), key.encode()))
    shard = next(p for p in shelf.root.iterdir() if p.is_dir())
    (shard / ("0" * 64 + ".part")).write_bytes(b"{")
    (shard / ("f" * 64)).write_bytes(b"not json")

    seen: list[str] = []
    cursor = ""
    while page := shelf.stored_after(cursor, 7):
        assert len(page) <= 7
        seen += [key for _, key, _ in page]
        cursor = page[-1][0]

    assert sorted(seen) == sorted(keys) and len(seen) == len(keys)


# Passes, edits and pace.


def test_rebalance_runs_at_start_and_ends_idle(world: World) -> None:
    """Started as a service, the rebalance waits `start_delay`, makes a pass, and
    rests idle once nothing is left."""
    kept = world.keep_on_homes(20, world.topology)
    world.edit(FULL)
    rebalancers = [world.relays[name].rebalancer for name in RELAYS]
    for rebalancer in rebalancers:
        rebalancer.startService()

    world.tree.advance(SETTINGS.start_delay - 1)
    assert all(r.progress.passes == 0 for r in rebalancers)
    world.tree.advance(SETTINGS.recheck_interval * 3, 0.5)

    assert all(r.progress.passes == 1 for r in rebalancers)
    assert all(r.status()["state"] == IDLE for r in rebalancers)
    assert all(r.status()["placement"] == placement_digest(FULL) for r in rebalancers)
    for digest in kept:
        assert sorted(world.holders(digest)) == sorted(homes(digest, FULL))
    for rebalancer in rebalancers:
        rebalancer.stopService()


def test_edit_that_keeps_placement_starts_no_pass(world: World) -> None:
    """An edit that moves no key (a new version number only) leaves an idle
    rebalance idle."""
    rebalancer = world.relays["a"].rebalancer
    rebalancer.startService()
    world.tree.advance(SETTINGS.start_delay + 1)
    assert rebalancer.progress.passes == 1

    world.edit(replace(world.topology, version=world.topology.version + 1))
    world.tree.advance(SETTINGS.recheck_interval * 2)

    assert rebalancer.progress.passes == 1
    assert rebalancer.status()["state"] == IDLE
    rebalancer.stopService()


def test_pass_under_way_restarts_for_a_new_edit(tmp_path: Path) -> None:
    """A second edit during a pass abandons it: the next pass works for the
    newest placement, and the chunks end on its homes."""
    slow = replace(SETTINGS, chunks_per_second=2.0)
    world = World(tmp_path, settings=slow)
    kept = world.keep_on_homes(80, world.topology)
    world.edit(FULL)
    rebalancers = [world.relays[name].rebalancer for name in RELAYS]
    for rebalancer in rebalancers:
        rebalancer.startService()
    world.tree.advance(slow.start_delay + 2, 0.25)
    assert any(r.progress.state == RUNNING for r in rebalancers)
    assert sum(r.progress.current.chunks_left for r in rebalancers) > 0

    last = draining(FULL, "a")
    world.edit(last)
    world.tree.advance(200.0, 0.5)

    for rebalancer in rebalancers:
        assert rebalancer.status()["placement"] == placement_digest(last)
        assert rebalancer.status()["state"] == IDLE
    for digest in kept:
        assert sorted(world.holders(digest)) == sorted(homes(digest, last))
    assert world.relays["a"].chunks.sizes_after("", 1) == []
    for rebalancer in rebalancers:
        rebalancer.stopService()


def test_pass_keeps_to_its_rate(tmp_path: Path) -> None:
    """Misplaced chunks at two a second take their time on the clock."""
    world = World(tmp_path, settings=replace(SETTINGS, chunks_per_second=2.0))
    kept = world.keep_on_homes(30, world.topology)
    leaving = [d for d in kept if "a" not in homes(d, FULL) and "a" in world.holders(d)]
    assert len(leaving) >= 3
    world.edit(FULL)
    started = world.tree.clock.seconds()

    counts = world.rebalance("a")

    assert counts.chunks_moved == len(leaving)
    assert world.tree.clock.seconds() - started >= (len(leaving) - 1) / 2.0


def test_scrub_follows_the_edit(world: World) -> None:
    """The edit reaches the scrub too: it scrubs for the new relay's holders."""
    world.edit(FULL)

    scrubber = world.relays["a"].scrubber
    assert [holder.name for holder in scrubber.holders] == list(RELAYS)


# Progress.


def test_progress_is_published_and_gathered(world: World) -> None:
    """Each relay's status record names the placement, what moved and what is
    left, and the registry's reading adds them up."""
    world.keep_on_homes(30, world.topology)
    world.edit(FULL)
    counts = world.rebalance_all()
    for name in RELAYS:
        world.run(ensureDeferred(world.relays[name].rebalancer._publish(force=True)))
    reader = world.record_client(FULL)

    status = world.run(
        ensureDeferred(read_rebalance_status(reader, list(RELAYS), 1e12))
    )

    for name in RELAYS:
        mine = status["relays"][name]
        assert mine["placement"] == placement_digest(FULL)
        assert mine["chunks_moved"] == counts[name].chunks_moved
        assert mine["chunks_left"] == 0
        assert mine["age"] >= 0
    total = sum(c.chunks_moved for c in counts.values())
    assert status["total"]["chunks_moved"] == total > 0
    raw = world.run(ensureDeferred(reader.get("rebalance/a")))
    assert json.loads(raw)["relay"] == "a"


def test_left_counts_down_as_chunks_move() -> None:
    """Left is what was misplaced at the pass's start less what has moved."""
    counts = RebalanceCounts(chunks_misplaced=5, bytes_misplaced=500)
    counts.chunks_moved, counts.bytes_moved = 2, 200

    assert (counts.chunks_left, counts.bytes_left) == (3, 300)
    assert counts.to_json()["chunks_left"] == 3


# Settings.


def test_settings_from_a_table() -> None:
    """A ``[rebalance]`` table sets the fields it names, within their bounds."""
    settings = parse_rebalance_settings(
        {"bytes_per_second": 1 << 20, "recheck_interval": 5}, Path("f.toml")
    )

    assert settings.bytes_per_second == 1 << 20
    assert settings.recheck_interval == 5.0
    assert settings.chunks_per_second == RebalanceSettings().chunks_per_second


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ({"recheck_intervall": 5}, "did you mean 'recheck_interval'"),
        ({"bytes_per_second": 10}, "not in"),
        ({"chunks_per_second": "fast"}, "must be a number"),
    ],
)
def test_bad_settings_are_refused(table: dict[str, object], why: str) -> None:
    """An unknown field, a wrong type or a value out of bounds is refused, naming
    the file and the field."""
    with pytest.raises(ConfigError, match=why) as raised:
        parse_rebalance_settings(table, Path("f.toml"))
    assert "f.toml: field 'rebalance." in str(raised.value)


def test_topology_file_reads_the_table() -> None:
    """The topology file's ``[rebalance]`` table reaches `Topology.rebalance`."""
    registry = {"name": "r", "id": 1, "bus": "127.0.0.1:7300", "roles": ["registry"]}
    registry["http"] = "tcp:0:interface=127.0.0.1"
    raw = {
        "node": [
            registry,
            {
                "name": "s",
                "id": 2,
                "bus": "127.0.0.1:7301",
                "roles": ["store"],
                "parent": "r",
            },
        ],
        "rebalance": {"recheck_interval": 2.5},
    }

    assert parse(raw, Path("t.toml")).rebalance.recheck_interval == 2.5


def test_last_status_is_published_once_the_records_can_take_it(
    world: World,
) -> None:
    """An idle status that could not be written (no quorum of its record's homes)
    is tried again until it lands: an operator waiting for it would wait for
    ever."""
    key = "rebalance/a"
    cut = [name for name in homes(key, BEFORE, 3) if name != "a"]
    for name in cut:
        world.tree.cut(name)
    rebalancer = world.relays["a"].rebalancer
    rebalancer.startService()
    world.tree.advance(SETTINGS.start_delay + SETTINGS.request_timeout * 3, 0.5)
    assert rebalancer.status()["state"] == IDLE
    assert all(world.relays[name].records.get(key) is None for name in cut)

    for name in cut:
        world.tree.connect(name)
    world.tree.advance(SETTINGS.status_interval * 3, 0.5)

    for name in cut:
        copy = world.relays[name].records.get(key)
        assert copy is not None and copy.value is not None
        assert json.loads(copy.value)["state"] == IDLE
    rebalancer.stopService()


class HeldPool(InlinePool):
    """A thread pool that keeps each call until the test lets it run."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []

    def callInThreadWithCallback(
        self, onResult: Any, func: Any, *args: Any, **kw: Any
    ) -> None:
        self.held.append(
            lambda: super(HeldPool, self).callInThreadWithCallback(
                onResult, func, *args, **kw
            )
        )

    def release(self) -> None:
        while self.held:
            self.held.pop(0)()


def test_abandoned_removal_keeps_the_record_lock_until_the_disk_is_done(
    world: World,
) -> None:
    """A pass cancelled while a record file is being removed lets go of the
    relay's record lock only once the removal has ended, so no record put runs
    beside it."""
    relay = world.relays["a"]
    relay.records.put("tag/x/y", Stored(Version(1, 0, 1), b"v"))
    pool = HeldPool()
    rebalancer = relay.rebalancer
    rebalancer.pool = pool
    removing = ensureDeferred(rebalancer._remove_record("tag/x/y", Version(1, 0, 1)))
    assert pool.held

    removing.cancel()
    removing.addErrback(lambda _: None)

    assert relay._record_lock.locked
    pool.release()
    assert not relay._record_lock.locked
    assert relay.records.get("tag/x/y") is None


def test_registry_storage_feeds_status_and_metrics(world: World) -> None:
    """The registry node's storage reads every relay's rebalance status, and a
    `ProgressFeed` over it turns them into per-relay metrics."""
    world.keep_on_homes(30, world.topology)
    world.edit(FULL)
    counts = world.rebalance_all()
    for name in RELAYS:
        world.run(ensureDeferred(world.relays[name].rebalancer._publish(force=True)))
    root = world.tree["root"]
    storage = ClusterStorage(root, FULL, world.tree.clock)
    metrics = Metrics(with_process=False)
    feed = ProgressFeed(
        world.tree.clock,
        storage.repair_status,
        storage.rebalance_status,
        lambda: placement_digest(FULL),
    )
    metrics.watch_progress(feed)

    status = world.run(ensureDeferred(storage.rebalance_status(1e12)))
    feed.startService()
    world.tree.advance(1.0, 0.5)
    feed.stopService()

    assert sorted(status["relays"]) == list(RELAYS)
    samples = scrape(metrics)
    moved = samples["treescale_rebalance_chunks_moved"]
    assert moved == {(("relay", n),): counts[n].chunks_moved for n in RELAYS}
    assert set(samples["treescale_rebalance_current"].values()) == {1.0}


def test_a_relay_coming_within_reach_ends_the_wait_for_a_recheck(
    world: World,
) -> None:
    """A pass that left chunks for an unreachable relay is tried again soon after
    that relay links, not `recheck_interval` later."""
    kept = world.keep_on_homes(30, world.topology)
    world.tree.cut("d")
    world.edit(FULL)
    rebalancers = [world.relays[name].rebalancer for name in RELAYS]
    for rebalancer in rebalancers:
        rebalancer.startService()
    first_pass = SETTINGS.start_delay + SETTINGS.request_timeout + 3
    world.tree.advance(first_pass, 0.5)
    waiting = [r for r in rebalancers if r.progress.state == WAITING]
    assert waiting, "no relay had anything for d"

    world.tree.connect("d")
    world.tree.advance(SETTINGS.start_delay + 3, 0.5)

    assert SETTINGS.start_delay + 3 < SETTINGS.recheck_interval
    assert all(r.status()["state"] == IDLE for r in rebalancers)
    for digest in kept:
        assert sorted(world.holders(digest)) == sorted(homes(digest, FULL))
    for rebalancer in rebalancers:
        rebalancer.stopService()


def test_a_pass_cancelled_inside_gathered_requests_is_no_crash() -> None:
    """An edit cancels a pass whose requests are gathered: the FirstError that
    wraps the cancel is a cancellation, not a crash."""
    inner = Failure(CancelledError())
    assert _is_cancellation(Failure(FirstError(inner, 0)))
    assert _is_cancellation(inner)
    assert not _is_cancellation(Failure(FirstError(Failure(ValueError("x")), 0)))


def test_more_replicas_are_made_by_one_holder_each(tmp_path: Path) -> None:
    """replicas 2 -> 3: every chunk gets its third copy from the rebalance, each
    sent once (by the first of its holders among its homes)."""
    world = World(tmp_path, FULL)
    kept = world.keep_on_homes(20, FULL)
    three = replace(FULL, replicas=3)
    world.edit(three)

    counts = world.rebalance_all()

    for digest in kept:
        assert sorted(world.holders(digest)) == sorted(homes(digest, three))
    assert sum(c.copies for c in counts.values()) == len(kept)
    assert all(c.chunks_left == 0 for c in counts.values())


def test_a_relay_drained_while_down_has_its_chunks_copied_by_the_others(
    tmp_path: Path,
) -> None:
    """A relay out of reach cannot move its chunks; once it drains, the other
    holder of each of them fills the home that took its place."""
    world = World(tmp_path, FULL)
    kept = world.keep_on_homes(20, FULL)
    on_b = [digest for digest in kept if "b" in homes(digest, FULL)]
    assert on_b
    world.tree.cut("b")
    drained = draining(FULL, "b")
    world.edit(drained)

    counts = {name: world.rebalance(name) for name in RELAYS if name != "b"}

    for digest in on_b:
        live = [name for name in world.holders(digest) if name != "b"]
        assert sorted(live) == sorted(homes(digest, drained))
    assert all(c.chunks_left == 0 for c in counts.values())
