"""Tests of records: the hybrid clock, a relay's record files, quorum reads, writes."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, fail, maybeDeferred

from tests.unit.bustest import (
    BusTree,
    InlinePool,
    failure,
    inline_reactor,
    success,
    topology,
)
from treescale.bus.frames import Kind
from treescale.bus.node import BusNode, HandlerError, Message, Unreachable
from treescale.store.errors import StorageUnavailable
from treescale.store.placement import Holder, place
from treescale.store.records import (
    MAX_CLOCK_SKEW,
    MAX_RECORD_SIZE,
    HybridClock,
    RecordClient,
    RecordFiles,
    Stored,
    Version,
    answer_record_get,
    answer_record_list,
    answer_record_put,
)
from treescale.store.relay import Relay

RELAYS = ["r1", "r2", "r3", "r4"]
HOLDERS = [Holder(name) for name in RELAYS]
KEY = "tag/library/alpine/latest"


class Wall:
    """A wall clock the test sets by hand, in seconds."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def v(wall_ms: int, counter: int = 0, node: int = 9) -> Version:
    """A version, briefly."""
    return Version(wall_ms, counter, node)


# The hybrid clock.


def test_clock_grows_while_the_wall_stalls() -> None:
    """Readings taken while the wall clock stands still still increase strictly."""
    clock = HybridClock(3, wall=Wall(5.0))

    readings = [clock.now() for _ in range(5)]

    assert readings == sorted(set(readings))
    assert readings[0] == Version(5000, 0, 3)
    assert readings[-1] == Version(5000, 4, 3)


def test_clock_grows_when_the_wall_steps_back() -> None:
    """A wall clock set backwards never makes a reading older than the last one."""
    wall = Wall(10.0)
    clock = HybridClock(1, wall=wall)
    before = clock.now()

    wall.now = 2.0
    after = clock.now()

    assert after > before
    assert after.wall_ms == 10_000


def test_clock_follows_the_wall_when_it_moves_on() -> None:
    """Once the wall passes the last reading, readings use it with a fresh counter."""
    wall = Wall(1.0)
    clock = HybridClock(1, wall=wall)
    clock.now()
    clock.now()

    wall.now = 2.5

    assert clock.now() == Version(2500, 0, 1)


def test_clock_moves_past_an_observed_version() -> None:
    """After observing a newer version from elsewhere, the next reading is newer."""
    clock = HybridClock(1, wall=Wall(1.0))
    seen = Version(9_000_000, 7, 2)

    clock.observe(seen)
    clock.observe(Version(5, 0, 3))  # an older one changes nothing

    reading = clock.now()
    assert reading > seen
    assert reading.node == 1


def test_versions_order_by_wall_then_counter_then_node() -> None:
    """Versions compare as (wall, counter, node), so ties between writers break."""
    assert v(1, 5, 9) < v(2, 0, 1)
    assert v(2, 0, 9) < v(2, 1, 1)
    assert v(2, 1, 1) < v(2, 1, 2)
    assert Version.from_list(v(3, 4, 5).to_list()) == v(3, 4, 5)


@pytest.mark.parametrize("bad", [None, [1, 2], [1, 2, "3"], "1,2,3", [1, 2, 3, 4]])
def test_version_from_anything_else_is_refused(bad: object) -> None:
    """Only a list of three integers reads as a version."""
    with pytest.raises(ValueError):
        Version.from_list(bad)


# Record files on one relay.


def test_files_keep_and_return_a_record(tmp_path: Path) -> None:
    """A stored record reads back with its version, from a reopened store too."""
    files = RecordFiles(tmp_path, fsync=False)

    assert files.get(KEY) is None
    assert files.put(KEY, Stored(v(1), b"digest-1"))

    assert files.get(KEY) == Stored(v(1), b"digest-1")
    assert RecordFiles(tmp_path).get(KEY) == Stored(v(1), b"digest-1")
    assert [p.suffix for p in (tmp_path / "records").rglob("*") if p.is_file()] == [""]


def test_files_replace_with_newer_and_refuse_older(tmp_path: Path) -> None:
    """A newer version replaces the record; an older or equal one is refused."""
    files = RecordFiles(tmp_path, fsync=True)
    files.put(KEY, Stored(v(5), b"five"))

    assert not files.put(KEY, Stored(v(4), b"four"))
    assert not files.put(KEY, Stored(v(5), b"other five"))
    assert files.get(KEY) == Stored(v(5), b"five")
    assert files.put(KEY, Stored(v(5, 1), b"newer"))
    assert files.get(KEY) == Stored(v(5, 1), b"newer")


def test_tombstone_hides_the_value_and_beats_older_writes(tmp_path: Path) -> None:
    """A deletion is kept as a tombstone, so an older value cannot come back."""
    files = RecordFiles(tmp_path, fsync=False)
    files.put(KEY, Stored(v(1), b"old"))

    assert files.put(KEY, Stored(v(2), None))
    assert files.get(KEY) == Stored(v(2), None)
    assert not files.put(KEY, Stored(v(1, 5), b"old again"))
    assert files.get(KEY) == Stored(v(2), None)


def test_empty_value_is_not_a_deletion(tmp_path: Path) -> None:
    """A record whose value is empty bytes is a value, not a tombstone."""
    files = RecordFiles(tmp_path, fsync=False)

    files.put(KEY, Stored(v(1), b""))

    assert files.get(KEY) == Stored(v(1), b"")


def test_keys_do_not_collide(tmp_path: Path) -> None:
    """Different keys, even ones sharing a file-name shard, are kept apart."""
    files = RecordFiles(tmp_path, fsync=False)
    keys = [f"key-{n}" for n in range(300)]

    for n, key in enumerate(keys):
        files.put(key, Stored(v(n + 1), key.encode()))

    assert all(
        files.get(key) == Stored(v(n + 1), key.encode()) for n, key in enumerate(keys)
    )


# The relay's handlers.


def put_message(key: object, version: object, value: bytes | None) -> Message:
    """A RECORD_PUT as a relay's handler receives it."""
    meta = {"key": key, "version": version, "deleted": value is None}
    return Message(Kind.RECORD_PUT, "edge", meta, value or b"")


def test_handlers_store_and_answer(tmp_path: Path) -> None:
    """RECORD_PUT keeps newer versions and RECORD_GET answers with the newest."""
    files = RecordFiles(tmp_path, fsync=False)
    get = Message(Kind.RECORD_GET, "edge", {"key": KEY})

    assert answer_record_get(files, get).meta == {"version": None}
    kept = answer_record_put(files, put_message(KEY, [3, 0, 1], b"value"))
    stale = answer_record_put(files, put_message(KEY, [2, 0, 1], b"older"))
    reply = answer_record_get(files, get)

    assert (kept.meta, stale.meta) == ({"kept": True}, {"kept": False})
    assert reply.meta == {"version": [3, 0, 1], "deleted": False}
    assert reply.data == b"value"


def test_handlers_answer_a_tombstone(tmp_path: Path) -> None:
    """RECORD_GET of a deleted record says so, with the deletion's version."""
    files = RecordFiles(tmp_path, fsync=False)
    answer_record_put(files, put_message(KEY, [3, 0, 1], None))

    reply = answer_record_get(files, Message(Kind.RECORD_GET, "e", {"key": KEY}))

    assert reply.meta == {"version": [3, 0, 1], "deleted": True}
    assert reply.data == b""


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (Message(Kind.RECORD_GET, "e", {}), "bad_request"),
        (Message(Kind.RECORD_GET, "e", {"key": ""}), "bad_request"),
        (Message(Kind.RECORD_GET, "e", {"key": "k" * 1025}), "bad_request"),
        (put_message(KEY, "yesterday", b"x"), "bad_request"),
        (put_message(3, [1, 0, 1], b"x"), "bad_request"),
        (put_message(KEY, [1, 0, 1], b"x" * (MAX_RECORD_SIZE + 1)), "too_large"),
    ],
)
def test_handlers_refuse_bad_requests(
    tmp_path: Path, message: Message, code: str
) -> None:
    """Malformed record requests are answered with a named error code."""
    files = RecordFiles(tmp_path, fsync=False)
    handler = (
        answer_record_get if message.kind == Kind.RECORD_GET else answer_record_put
    )

    error = failure(maybeDeferred(handler, files, message)).value

    assert isinstance(error, HandlerError)
    assert error.code == code


# Quorum reads and writes over a fake bus.


class FakeBus:
    """Delivers record requests straight to each relay's files; some relays are down."""

    def __init__(self, files: Mapping[str, RecordFiles]) -> None:
        self.files = files
        self.down: set[str] = set()
        self.silent: set[str] = set()
        self.calls: list[tuple[str, Kind]] = []

    def request(
        self,
        dest: str,
        kind: Kind,
        meta: Mapping[str, Any],
        data: bytes = b"",
        **options: Any,
    ) -> "Deferred[Message]":
        self.calls.append((dest, kind))
        if dest in self.down:
            return fail(Unreachable(f"no link toward {dest}"))
        if dest in self.silent:
            return Deferred()
        message = Message(kind, "edge", meta, data)
        answer = {
            Kind.RECORD_GET: answer_record_get,
            Kind.RECORD_PUT: answer_record_put,
            Kind.RECORD_LIST: answer_record_list,
        }[kind]
        return maybeDeferred(answer, self.files[dest], message)

    def reachable(self, dest: str) -> bool:
        return dest not in self.down

    def puts_to(self) -> list[str]:
        """The relays that were sent a RECORD_PUT, in order."""
        return [dest for dest, kind in self.calls if kind == Kind.RECORD_PUT]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, RecordFiles]:
    """Record files for each of four relays."""
    return {name: RecordFiles(tmp_path / name, fsync=False) for name in RELAYS}


def client_over(
    bus: FakeBus, wall: Wall | None = None, replicas: int = 3
) -> RecordClient:
    """A record client writing through a fake bus as node 1."""
    clock = HybridClock(1, wall=wall or Wall())
    return RecordClient(cast(BusNode, bus), HOLDERS, replicas, clock)


def replicas_of(key: str) -> list[str]:
    """The relays placement gives a key's record, three of four."""
    return [holder.name for holder in place(key, HOLDERS, 3)]


def get(client: RecordClient, key: str = KEY) -> "Deferred[bytes | None]":
    return ensureDeferred(client.get(key))


def put(client: RecordClient, value: bytes | None, key: str = KEY) -> "Deferred[None]":
    return ensureDeferred(client.put(key, value))


def test_put_then_get_over_the_replicas(files: dict[str, RecordFiles]) -> None:
    """A put reaches the key's three replicas only, and a get reads it back."""
    bus = FakeBus(files)
    client = client_over(bus)

    success(put(client, b"sha256:abc"))

    homes = replicas_of(KEY)
    assert sorted(bus.puts_to()) == sorted(homes)
    for name in RELAYS:
        stored = files[name].get(KEY)
        assert (stored is not None) == (name in homes)
    assert success(get(client)) == b"sha256:abc"


def test_never_written_record_reads_as_none(files: dict[str, RecordFiles]) -> None:
    """A key no replica knows reads as None, and nothing is repaired; every relay
    was asked before it was called missing."""
    bus = FakeBus(files)

    assert success(get(client_over(bus))) is None
    assert bus.puts_to() == []
    assert {dest for dest, kind in bus.calls if kind == Kind.RECORD_GET} == set(RELAYS)


def test_a_record_off_its_homes_is_found_and_brought_home(
    files: dict[str, RecordFiles],
) -> None:
    """A record only the relay outside its homes holds (left there by an earlier
    placement) is found there, and written to its homes."""
    outside = next(name for name in RELAYS if name not in replicas_of(KEY))
    files[outside].put(KEY, Stored(v(100), b"kept"))
    bus = FakeBus(files)

    assert success(get(client_over(bus))) == b"kept"
    assert sorted(bus.puts_to()) == sorted(replicas_of(KEY))


def test_newest_wins_and_stale_replicas_are_repaired(
    files: dict[str, RecordFiles],
) -> None:
    """A read returns the newest copy and writes it back to every older replica."""
    first, second, third = replicas_of(KEY)
    files[first].put(KEY, Stored(v(100), b"old"))
    files[second].put(KEY, Stored(v(300), b"newest"))
    files[third].put(KEY, Stored(v(200), b"middle"))
    bus = FakeBus(files)

    assert success(get(client_over(bus))) == b"newest"

    assert sorted(bus.puts_to()) == sorted([first, third])
    for name in (first, second, third):
        assert files[name].get(KEY) == Stored(v(300), b"newest")


def test_replica_without_the_record_is_repaired(files: dict[str, RecordFiles]) -> None:
    """A replica that never got the record receives it on the next read."""
    first, second, third = replicas_of(KEY)
    files[first].put(KEY, Stored(v(100), b"value"))
    files[second].put(KEY, Stored(v(100), b"value"))
    bus = FakeBus(files)

    assert success(get(client_over(bus))) == b"value"

    assert bus.puts_to() == [third]
    assert files[third].get(KEY) == Stored(v(100), b"value")


def test_newer_tombstone_wins_and_is_spread(files: dict[str, RecordFiles]) -> None:
    """A deletion newer than a value reads as None and reaches the stale replica."""
    first, second, third = replicas_of(KEY)
    files[first].put(KEY, Stored(v(100), b"value"))
    files[second].put(KEY, Stored(v(200), None))
    files[third].put(KEY, Stored(v(200), None))

    assert success(get(client_over(FakeBus(files)))) is None

    assert files[first].get(KEY) == Stored(v(200), None)


def test_put_of_none_deletes(files: dict[str, RecordFiles]) -> None:
    """Putting None writes a tombstone, so the record then reads as None."""
    client = client_over(FakeBus(files))
    success(put(client, b"value"))

    success(put(client, None))

    assert success(get(client)) is None
    assert all(
        files[name].get(KEY).value is None  # type: ignore[union-attr]
        for name in replicas_of(KEY)
    )


def test_read_makes_the_next_write_newer(files: dict[str, RecordFiles]) -> None:
    """After reading a version from a writer whose clock is ahead, a put still wins."""
    for name in replicas_of(KEY):
        files[name].put(KEY, Stored(Version(10**12, 0, 7), b"from the future"))
    client = client_over(FakeBus(files), wall=Wall(1.0))

    assert success(get(client)) == b"from the future"
    success(put(client, b"mine"))

    assert success(get(client)) == b"mine"


def test_one_replica_down_still_makes_a_quorum(files: dict[str, RecordFiles]) -> None:
    """With one of three replicas unreachable, puts and gets still succeed."""
    bus = FakeBus(files)
    bus.down.add(replicas_of(KEY)[0])
    client = client_over(bus)

    success(put(client, b"value"))

    assert success(get(client)) == b"value"


def test_too_few_answers_to_a_get_is_unavailable(
    files: dict[str, RecordFiles],
) -> None:
    """A get answered by fewer than a quorum raises StorageUnavailable."""
    first, second, third = replicas_of(KEY)
    files[third].put(KEY, Stored(v(1), b"value"))
    bus = FakeBus(files)
    bus.down.update([first, second])

    error = failure(get(client_over(bus))).value

    assert isinstance(error, StorageUnavailable)
    assert "1 of 3" in str(error)


def test_too_few_answers_to_a_put_is_unavailable(
    files: dict[str, RecordFiles],
) -> None:
    """A put stored by fewer than a quorum raises StorageUnavailable."""
    bus = FakeBus(files)
    bus.down.update(replicas_of(KEY)[1:])

    assert isinstance(failure(put(client_over(bus), b"x")).value, StorageUnavailable)


def test_get_answers_once_a_quorum_has(files: dict[str, RecordFiles]) -> None:
    """A get answers with the quorum's newest value while a third replica is
    silent: a frozen relay costs a read no time."""
    first, second, third = replicas_of(KEY)
    files[first].put(KEY, Stored(v(100), b"value"))
    files[second].put(KEY, Stored(v(100), b"value"))
    bus = FakeBus(files)
    bus.silent.add(third)

    assert success(get(client_over(bus))) == b"value"


def test_put_returns_once_a_quorum_holds_it(files: dict[str, RecordFiles]) -> None:
    """A put returns when two of three replicas stored it, the third silent."""
    bus = FakeBus(files)
    bus.silent.add(replicas_of(KEY)[2])

    assert success(put(client_over(bus), b"value")) is None


def test_fewer_holders_than_replicas_shrinks_the_quorum(tmp_path: Path) -> None:
    """With one store relay in the tree, records live on it alone and still work."""
    bus = FakeBus({"r1": RecordFiles(tmp_path, fsync=False)})
    client = RecordClient(cast(BusNode, bus), [Holder("r1")], 3, HybridClock(1))

    success(put(client, b"solo"))

    assert (client.replicas, client.quorum) == (1, 1)
    assert success(get(client)) == b"solo"


# Quorum over real bus nodes and relays.


def relay_tree(tmp_path: Path) -> BusTree:
    """A root and three relays, each relay serving records from its own folder."""
    tree = BusTree(
        topology([("edge", None), ("r1", "edge"), ("r2", "edge"), ("r3", "edge")])
    ).connect_all()
    for name in ("r1", "r2", "r3"):
        Relay(tree[name], tmp_path / name, inline_reactor(), InlinePool(), 1 << 20)
    return tree


def test_records_over_the_bus(tmp_path: Path) -> None:
    """A put and a get from the registry node go over links to three relays."""
    tree = relay_tree(tmp_path)
    holders = [Holder(name) for name in ("r1", "r2", "r3")]
    client = RecordClient(tree["edge"], holders, 3, HybridClock(1, wall=Wall()))

    written = put(client, b"over the bus")
    tree.flush()
    success(written)
    tree.cut("r2")
    read = get(client)
    tree.flush()

    assert success(read) == b"over the bus"
    assert RecordFiles(tmp_path / "r2").get(KEY) is not None


def test_records_over_the_bus_need_a_quorum(tmp_path: Path) -> None:
    """With two of three relays cut off, a read over the bus is unavailable."""
    tree = relay_tree(tmp_path)
    holders = [Holder(name) for name in ("r1", "r2", "r3")]
    client = RecordClient(tree["edge"], holders, 3, HybridClock(1, wall=Wall()))
    tree.cut("r1")
    tree.cut("r3")

    read = get(client)
    tree.flush()

    assert isinstance(failure(read).value, StorageUnavailable)


def test_relay_refuses_a_version_from_far_in_the_future(tmp_path: Path) -> None:
    """A RECORD_PUT whose wall time runs past the relay's clock plus the allowed
    skew is refused, so it can never win every later write."""
    files = RecordFiles(tmp_path, fsync=False)
    now = 1_000_000.0
    ahead = int((now + MAX_CLOCK_SKEW + 1) * 1000)

    error = failure(
        maybeDeferred(
            answer_record_put, files, put_message(KEY, [ahead, 0, 1], b"x"), lambda: now
        )
    ).value

    assert isinstance(error, HandlerError)
    assert error.code == "bad_request"
    assert files.get(KEY) is None


def test_version_parts_must_fit_in_63_bits() -> None:
    """A version part beyond 2**63 - 1 is not a version."""
    with pytest.raises(ValueError):
        Version.from_list([10**4000, 0, 0])
    with pytest.raises(ValueError):
        Version.from_list([-1, 0, 0])


def test_leftover_temporary_record_files_are_removed_on_open(tmp_path: Path) -> None:
    """A record write cut short by a crash leaves a temporary file that opening the
    files removes; the record itself keeps its previous version."""
    files = RecordFiles(tmp_path)
    files.put(KEY, Stored(v(1), b"old"))
    record = next((tmp_path / "records").glob("*/*"))
    leftover = record.with_suffix(".part")
    leftover.write_bytes(b'{"key": "tag/x", "version": [9')

    reopened = RecordFiles(tmp_path)

    assert not leftover.exists()
    assert reopened.get(KEY) == Stored(v(1), b"old")
