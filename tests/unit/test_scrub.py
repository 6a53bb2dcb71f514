"""Tests of a relay's scrub over real relays on in-memory bus links.

Each relay keeps real chunk files under the test's folder; disk work runs inline
(see `bustest`), and time is the tree's `Clock`, so timeouts and pacing are driven
by the test.
"""

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred

from tests.unit.bustest import BusTree, InlinePool, inline_reactor, topology
from treescale.bus.frames import Kind
from treescale.bus.node import Message
from treescale.config_error import ConfigError
from treescale.store.chunks import ChunkStore
from treescale.store.digests import sha256_digest
from treescale.store.placement import Holder, search_order
from treescale.store.records import HybridClock, RecordClient
from treescale.store.relay import Relay
from treescale.store.repair import ScrubCounts
from treescale.store.scrub import read_repair_status, status_key
from treescale.store.scrub_settings import (
    SETTINGS_VARIABLE,
    ScrubSettings,
    parse_scrub_settings,
    settings_from_environment,
)

RELAYS = ("a", "b", "c")
MAX_CHUNK = 1 << 20
TIMEOUT = 5.0
GONE = 100.0
RECHECK = 20.0
SETTINGS = ScrubSettings(
    bytes_per_second=1 << 30,
    chunks_per_second=100_000.0,
    request_timeout=TIMEOUT,
    gone_after=GONE,
    recheck_after=RECHECK,
    start_delay=5.0,
    pass_interval=60.0,
)
HOLDERS = [Holder(name, domain=name) for name in RELAYS]


class World:
    """A registry node "root" and three relays below it, each scrubbing its disk."""

    def __init__(self, root: Path, settings: ScrubSettings = SETTINGS) -> None:
        tree_spec: list[tuple[str, str | None]] = [("root", None)]
        tree_spec += [(name, "root") for name in RELAYS]
        self.tree = BusTree(topology(tree_spec)).connect_all()
        self.root = root
        self.relays = {
            name: Relay(
                self.tree[name],
                root / name,
                inline_reactor(),
                InlinePool(),
                MAX_CHUNK,
                scrub=settings,
            )
            for name in RELAYS
        }

    def store(self, name: str) -> ChunkStore:
        return self.relays[name].chunks

    def holders_of(self, digest: str) -> list[str]:
        """The relays whose disk holds a good copy of `digest`."""
        found = []
        for name in RELAYS:
            try:
                self.store(name).read(digest)
            except Exception:
                continue
            found.append(name)
        return found

    def keep(self, data: bytes, *names: str) -> str:
        """Write `data` as a chunk straight onto the disks of `names`."""
        digest = sha256_digest(data)
        for name in names:
            writer = self.store(name).open_writer(digest, len(data))
            writer.write(data)
            writer.commit()
        return digest

    def run(self, d: "Deferred[Any]", step: float = 0.5, limit: float = 1000.0) -> Any:
        """Let time pass until `d` fires; its result."""
        return self.tree.run(d, step, limit)

    def scrub(self, name: str) -> ScrubCounts:
        """One whole pass of relay `name`'s scrub."""
        counts: ScrubCounts = self.run(
            ensureDeferred(self.relays[name].scrubber.run_pass())
        )
        return counts


def chunk_homed(first: str, second: str, salt: str = "") -> bytes:
    """Chunk bytes whose homes, in order, are `first` then `second`."""
    for number in range(10_000):
        data = f"chunk {salt}{number} ".encode() * 300
        order = [h.name for h in search_order(sha256_digest(data), HOLDERS, 2)]
        if order[:2] == [first, second]:
            return data
    raise AssertionError("no such chunk")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield World(tmp_path)


# Copies made again.


def test_first_home_copies_to_the_home_that_lacks_it(world: World) -> None:
    """A chunk only on its first home is copied to its second by the first."""
    digest = world.keep(chunk_homed("a", "b"), "a")

    counts = world.scrub("a")

    assert sorted(world.holders_of(digest)) == ["a", "b"]
    assert (counts.chunks, counts.missing, counts.copied) == (1, 1, 1)


def test_second_home_copies_when_the_first_lacks_it(world: World) -> None:
    """A chunk only on its second home is copied to its first by the second."""
    digest = world.keep(chunk_homed("a", "b"), "b")

    world.scrub("b")

    assert sorted(world.holders_of(digest)) == ["a", "b"]


def test_whole_chunk_is_left_alone(world: World) -> None:
    """A chunk on both its homes is only checked: nothing is copied."""
    digest = world.keep(chunk_homed("a", "b"), "a", "b")

    counts = world.scrub("a")
    world.scrub("b")

    assert sorted(world.holders_of(digest)) == ["a", "b"]
    assert (counts.chunks, counts.missing, counts.copied) == (1, 0, 0)


def test_fallback_copy_is_brought_home(world: World) -> None:
    """A chunk left only on a relay that is not its home is copied to both homes."""
    digest = world.keep(chunk_homed("a", "b"), "c")

    counts = world.scrub("c")

    assert sorted(world.holders_of(digest)) == ["a", "b", "c"]
    assert counts.copied == 2


def test_fallback_holder_leaves_the_work_to_a_home_that_holds_it(world: World) -> None:
    """With a home holding the chunk, the extra holder copies nothing; the home
    does."""
    digest = world.keep(chunk_homed("a", "b"), "a", "c")

    assert world.scrub("c").copied == 0
    assert sorted(world.holders_of(digest)) == ["a", "c"]
    assert world.scrub("a").copied == 1
    assert sorted(world.holders_of(digest)) == ["a", "b", "c"]


def test_copy_of_the_wrong_size_is_replaced(world: World, tmp_path: Path) -> None:
    """A home whose file has the wrong size gets the good bytes."""
    data = chunk_homed("a", "b")
    digest = world.keep(data, "a", "b")
    path = tmp_path / "b" / "chunks" / "sha256" / digest[7:9] / digest[7:]
    path.write_bytes(data[:-10])

    counts = world.scrub("a")

    assert counts.missing == 1
    assert sorted(world.holders_of(digest)) == ["a", "b"]


# Corruption.


def test_corrupt_copy_is_quarantined_and_fetched_again(
    world: World, tmp_path: Path
) -> None:
    """A copy whose bytes no longer match is set aside and replaced by a good one
    from the other home."""
    data = chunk_homed("a", "b")
    digest = world.keep(data, "a", "b")
    path = tmp_path / "a" / "chunks" / "sha256" / digest[7:9] / digest[7:]
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 0xFF
    path.write_bytes(bytes(damaged))

    counts = world.scrub("a")

    assert (counts.corrupt, counts.restored) == (1, 1)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest[7:]
    assert (tmp_path / "a" / "quarantine" / digest[7:]).read_bytes() == damaged


def test_corrupt_copy_with_no_good_twin_counts_as_failed(
    world: World, tmp_path: Path
) -> None:
    """A corrupt copy that no other relay holds is quarantined and counted."""
    digest = world.keep(chunk_homed("a", "b"), "a")
    path = tmp_path / "a" / "chunks" / "sha256" / digest[7:9] / digest[7:]
    path.write_bytes(b"not the chunk")

    counts = world.scrub("a")

    assert (counts.corrupt, counts.restored, counts.failed) == (1, 0, 1)
    assert world.holders_of(digest) == []


def test_relay_sending_wrong_bytes_is_not_believed(
    world: World, tmp_path: Path
) -> None:
    """A corrupt copy is fetched again past a relay whose answer does not hash to
    the chunk's digest, from the next relay that holds it."""
    data = chunk_homed("a", "b")
    digest = world.keep(data, "a", "b", "c")
    path = tmp_path / "a" / "chunks" / "sha256" / digest[7:9] / digest[7:]
    path.write_bytes(b"x" + data[1:])

    async def lie(message: Message) -> Message:
        return Message(Kind.REPLY, message.origin, {"size": len(data)}, data[::-1])

    world.tree["b"].handlers[Kind.CHUNK_GET] = lie

    counts = world.scrub("a")

    assert (counts.corrupt, counts.restored) == (1, 1)
    assert path.read_bytes() == data


# Relays away for a while, or for good.


def test_unreachable_home_is_presumed_to_hold_its_copy(world: World) -> None:
    """A home that stops answering is not replaced before `gone_after`."""
    digest = world.keep(chunk_homed("a", "b"), "a", "b")
    world.tree.cut("b")

    counts = world.scrub("a")

    assert counts.copied == 0
    assert world.holders_of(digest) == ["a", "b"]
    assert world.relays["a"].scrubber.status()["peers_not_up"] == {"b": "down"}


def test_gone_home_is_replaced_by_the_next_relay(world: World) -> None:
    """Once a home has been unreachable for `gone_after`, its chunks are copied to
    the next relay of their rank."""
    digest = world.keep(chunk_homed("a", "b"), "a", "b")
    world.tree.cut("b")
    world.scrub("a")
    world.tree.advance(GONE, 10.0)

    counts = world.scrub("a")

    assert counts.copied == 1
    assert sorted(world.holders_of(digest)) == ["a", "b", "c"]
    assert world.relays["a"].scrubber.status()["peers_not_up"] == {"b": "gone"}


def test_returning_relay_is_a_home_again(world: World) -> None:
    """A gone relay that answers again is a home again: its copy counts."""
    digest = world.keep(chunk_homed("a", "b"), "a", "b")
    world.tree.cut("b")
    world.scrub("a")
    world.tree.advance(GONE + RECHECK, 10.0)
    world.tree.connect("b")
    world.scrub("a")
    # A later chunk, homed on a and b, missing from b: it must go to b, not c.
    later = world.keep(chunk_homed("a", "b", salt="later"), "a")

    world.scrub("a")

    assert world.relays["a"].scrubber.status()["peers_not_up"] == {}
    assert world.holders_of(later) == ["a", "b"]
    assert "b" in world.holders_of(digest)


# Pace, progress and status.


def test_pass_keeps_to_its_rate(tmp_path: Path) -> None:
    """Three chunks at one chunk a second take two seconds of clock time."""
    slow = World(tmp_path, ScrubSettings(chunks_per_second=1.0))
    for number in range(3):
        slow.keep(f"payload {number}".encode() * 50, "a")
    started = slow.tree.clock.seconds()

    counts = slow.run(ensureDeferred(slow.relays["a"].scrubber.run_pass()), 0.25)

    assert counts.chunks == 3
    assert slow.tree.clock.seconds() - started >= 2.0


def test_status_is_published_and_gathered(world: World) -> None:
    """After a pass each relay's status record is read back with the totals."""
    world.keep(chunk_homed("a", "b"), "a")
    world.scrub("a")
    scrubber = world.relays["a"].scrubber
    world.run(ensureDeferred(scrubber._publish(force=True)))
    records = RecordClient(
        world.tree["root"], HOLDERS, 3, HybridClock(world.tree["root"].me.id)
    )

    status = world.run(
        ensureDeferred(read_repair_status(records, list(RELAYS), scrubber.wall()))
    )

    mine = status["relays"]["a"]
    assert mine["passes"] == 1
    assert mine["last_pass"]["copied"] == 1
    assert mine["age"] >= 0
    assert status["relays"]["b"] is None
    assert status["total"]["copied"] == 1
    raw = world.run(ensureDeferred(records.get(status_key("a"))))
    assert json.loads(raw)["relay"] == "a"


def test_scrub_runs_after_its_delay_and_again_each_interval(world: World) -> None:
    """Started as a service, the scrub waits `start_delay`, then passes every
    `pass_interval`; stopping it stops the passes."""
    scrubber = world.relays["a"].scrubber
    world.keep(chunk_homed("a", "b"), "a")
    scrubber.startService()

    world.tree.advance(SETTINGS.start_delay - 1)
    assert scrubber.progress.passes == 0
    world.tree.advance(2)
    assert scrubber.progress.passes == 1
    world.tree.advance(SETTINGS.pass_interval)
    assert scrubber.progress.passes == 2
    scrubber.stopService()
    world.tree.advance(SETTINGS.pass_interval * 2)

    assert scrubber.progress.passes == 2


def test_scrub_that_is_off_never_runs(tmp_path: Path) -> None:
    """With `enabled` false the service starts and does nothing."""
    off = World(tmp_path, ScrubSettings(enabled=False))
    scrubber = off.relays["a"].scrubber
    scrubber.startService()
    off.tree.advance(ScrubSettings().start_delay * 2, 10.0)

    assert (scrubber.progress.passes, scrubber.status()["state"]) == (0, "off")


# Settings.


def test_settings_from_a_table() -> None:
    """A table sets the fields it names, within their bounds."""
    settings = parse_scrub_settings(
        {"bytes_per_second": 1 << 20, "pass_interval": 5, "enabled": False},
        Path("f.toml"),
    )

    assert settings.bytes_per_second == 1 << 20
    assert settings.pass_interval == 5.0 and isinstance(settings.pass_interval, float)
    assert settings.enabled is False


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ({"pass_intervall": 5}, "did you mean 'pass_interval'"),
        ({"bytes_per_second": 1.5}, "whole number"),
        ({"chunks_per_second": 0}, "not in"),
        ({"enabled": 1}, "true or false"),
        ({"gone_after": "10"}, "must be a number"),
    ],
)
def test_bad_settings_are_refused(table: dict[str, object], why: str) -> None:
    """An unknown field, a wrong type or a value out of bounds is refused, naming
    the file and the field."""
    with pytest.raises(ConfigError, match=why) as raised:
        parse_scrub_settings(table, Path("f.toml"))
    assert "f.toml: field 'scrub." in str(raised.value)


def test_settings_from_the_environment() -> None:
    """The environment variable holds a JSON table whose fields override the
    settings given; unset, the settings given stand."""
    base = ScrubSettings(pass_interval=7.0)

    assert settings_from_environment({}, base) == base
    assert settings_from_environment(
        {SETTINGS_VARIABLE: '{"gone_after": 2}'}, base
    ) == ScrubSettings(gone_after=2.0, pass_interval=7.0)
    with pytest.raises(ValueError, match="JSON object"):
        settings_from_environment({SETTINGS_VARIABLE: "[1]"})
