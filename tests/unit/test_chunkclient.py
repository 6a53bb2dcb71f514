"""Tests of the chunk client: where chunks go, fallback on put, hedged gets."""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import Clock

from tests.unit.bustest import (
    BusTree,
    InlinePool,
    failure,
    inline_reactor,
    success,
    topology,
)
from treescale.bus.frames import Kind
from treescale.bus.node import BusNode, Message, RemoteError, RequestTimeout
from treescale.store.chunkclient import ChunkClient, ChunkSettings, HedgeDelay
from treescale.store.digests import check_of, sha256_digest
from treescale.store.errors import StorageUnavailable, UploadFailed
from treescale.store.placement import Holder, place, rank
from treescale.store.relay import Relay

RELAYS = ["r1", "r2", "r3", "r4"]
HOLDERS = [Holder(name, domain=name) for name in RELAYS]
DATA = b"one chunk of a layer " * 50
DIGEST = sha256_digest(DATA)
HEDGE = ChunkSettings().hedge_after


class Call:
    """One request the client made, waiting for the test to answer it."""

    def __init__(self, dest: str, kind: Kind, meta: Mapping[str, Any], data: bytes):
        self.dest = dest
        self.kind = kind
        self.meta = dict(meta)
        self.data = data
        self.cancelled = False
        self.done: Deferred[Message] = Deferred(self._cancel)
        self.on_progress: Callable[[], None] | None = None

    def _cancel(self, _: object) -> None:
        self.cancelled = True

    def reply(self, data: bytes = b"") -> None:
        """Answer whole at once, as one frame: one sign of progress, then the end."""
        if self.on_progress is not None:
            self.on_progress()
        self.done.callback(Message(Kind.REPLY, self.dest, {}, data))

    def refuse(self, code: str = "chunk_missing") -> None:
        self.done.errback(RemoteError(code, "refused"))


class FakeBus:
    """Answers nothing by itself: the test answers each Call, or `auto` does."""

    def __init__(self, up: list[str] = RELAYS) -> None:
        self.up = set(up)
        self.calls: list[Call] = []
        self.auto: dict[str, Callable[[Call], None]] = {}

    def reachable(self, name: str) -> bool:
        return name in self.up

    def request(
        self,
        dest: str,
        kind: Kind,
        meta: Mapping[str, Any],
        data: bytes = b"",
        **options: Any,
    ) -> "Deferred[Message]":
        call = Call(dest, kind, meta, data)
        call.on_progress = options.get("on_progress")
        self.calls.append(call)
        if dest in self.auto:
            self.auto[dest](call)
        return call.done

    def asked(self) -> list[str]:
        return [call.dest for call in self.calls]


def client(bus: FakeBus, clock: Clock | None = None) -> ChunkClient:
    """A chunk client over a fake bus, two replicas, default timers."""
    return ChunkClient(cast(BusNode, bus), HOLDERS, clock or Clock(), ChunkSettings())


def candidates() -> list[str]:
    """The order in which relays are looked to for DIGEST: homes, then the rank."""
    homes = [holder.name for holder in place(DIGEST, HOLDERS, 2)]
    return homes + [h.name for h in rank(DIGEST, HOLDERS) if h.name not in homes]


def put(chunks: ChunkClient, data: bytes = DATA) -> "Deferred[None]":
    return ensureDeferred(chunks.put(sha256_digest(data), data))


def get(chunks: ChunkClient) -> "Deferred[bytes]":
    return ensureDeferred(chunks.get(DIGEST, len(DATA)))


# Candidates.


def test_candidates_are_homes_then_the_rest_of_the_rank() -> None:
    """Every relay is a candidate once: the placed homes first, then by rank."""
    order = client(FakeBus()).candidates(DIGEST)

    assert order == candidates()
    assert sorted(order) == RELAYS
    assert order[:2] == [holder.name for holder in place(DIGEST, HOLDERS, 2)]


def test_replicas_shrink_to_the_holders_there_are() -> None:
    """With fewer relays than replicas, a chunk goes to every relay there is."""
    chunks = ChunkClient(
        cast(BusNode, FakeBus(["r1"])), [Holder("r1")], Clock(), ChunkSettings()
    )

    assert chunks.replicas == 1
    assert chunks.candidates(DIGEST) == ["r1"]


# Puts.


def test_put_goes_to_both_homes() -> None:
    """A put sends the chunk with its digest and size to its two home relays."""
    bus = FakeBus()
    d = put(client(bus))

    assert bus.asked() == candidates()[:2]
    assert all(call.kind == Kind.CHUNK_PUT for call in bus.calls)
    assert bus.calls[0].meta == {"digest": DIGEST, "size": len(DATA)}
    assert bus.calls[0].data == DATA
    bus.calls[0].reply()
    assert not d.called
    bus.calls[1].reply()

    success(d)


def test_put_skips_an_unreachable_home() -> None:
    """A home relay that cannot be reached is replaced by the next of the rank."""
    order = candidates()
    bus = FakeBus([name for name in RELAYS if name != order[0]])
    d = put(client(bus))

    assert bus.asked() == [order[1], order[2]]
    for call in bus.calls:
        call.reply()
    success(d)


def test_put_falls_back_when_a_relay_fails() -> None:
    """A relay refusing or timing out a put is replaced by the next of the rank."""
    order = candidates()
    bus = FakeBus()
    d = put(client(bus))

    bus.calls[0].done.errback(RequestTimeout("CHUNK_PUT"))
    bus.calls[1].reply()
    assert bus.asked() == [order[0], order[1], order[2]]
    bus.calls[2].refuse("digest_mismatch")
    assert bus.asked() == order
    bus.calls[3].reply()

    success(d)


def test_put_with_too_few_relays_fails() -> None:
    """When fewer relays than replicas take the chunk, the put raises UploadFailed."""
    order = candidates()
    bus = FakeBus()
    bus.auto = {name: Call.refuse for name in order[1:]}
    d = put(client(bus))

    bus.calls[0].reply()

    error = failure(d).value
    assert isinstance(error, UploadFailed)
    assert "1 relays, 2 needed" in str(error)
    assert sorted(bus.asked()) == RELAYS


def test_put_lagging_behind_a_success_goes_to_the_next_relay() -> None:
    """A home that stays silent `put_laggard_after` seconds after the other home
    stored the chunk is given up for the next relay of the rank."""
    order = candidates()
    bus, clock = FakeBus(), Clock()
    d = put(client(bus, clock))

    bus.calls[1].reply()
    clock.advance(ChunkSettings().put_laggard_after - 0.1)
    assert bus.asked() == order[:2]
    clock.advance(0.2)
    assert bus.asked() == order[:3]
    bus.calls[2].reply()

    success(d)
    assert bus.calls[0].cancelled


def test_put_with_nothing_reachable_fails_at_once() -> None:
    """A put when no relay is reachable fails without sending anything."""
    bus = FakeBus([])

    assert isinstance(failure(put(client(bus))).value, UploadFailed)
    assert bus.calls == []


def test_cancelling_a_put_cancels_every_request() -> None:
    """Cancelling a put (an aborted upload) cancels each of its requests in flight."""
    bus = FakeBus()
    d = put(client(bus))

    d.cancel()

    assert isinstance(failure(d).value, CancelledError)
    assert [call.cancelled for call in bus.calls] == [True, True]


# Gets.


def test_get_asks_one_holder_and_returns_its_bytes() -> None:
    """A get asks the first holder alone and returns its verified bytes."""
    bus = FakeBus()
    d = get(client(bus))

    assert bus.asked() == candidates()[:1]
    assert bus.calls[0].kind == Kind.CHUNK_GET
    assert bus.calls[0].meta == {"digest": DIGEST}
    bus.calls[0].reply(DATA)

    assert success(d) == DATA


def test_get_rotates_the_first_holder() -> None:
    """Successive gets ask the two homes first in turn, spreading the load."""
    bus = FakeBus()
    chunks = client(bus)
    homes = candidates()[:2]

    firsts = []
    for _ in range(4):
        d = get(chunks)
        firsts.append(bus.calls[-1].dest)
        bus.calls[-1].reply(DATA)
        success(d)

    assert firsts == [homes[0], homes[1], homes[0], homes[1]]


def test_get_tries_the_other_home_before_the_rest() -> None:
    """Whichever home is asked first, the other home is asked second."""
    bus = FakeBus()
    chunks = client(bus)
    homes = candidates()[:2]
    bus.auto = {name: Call.refuse for name in RELAYS}

    for _ in range(2):
        failure(get(chunks))

    assert bus.asked()[:2] == homes
    assert bus.asked()[4:6] == [homes[1], homes[0]]


def test_get_hedges_after_a_silence() -> None:
    """A holder silent for hedge_after makes the next one be asked; the first wins."""
    bus, clock = FakeBus(), Clock()
    d = get(client(bus, clock))
    order = candidates()

    clock.advance(HEDGE - 0.01)
    assert bus.asked() == order[:1]
    clock.advance(0.02)
    assert bus.asked() == order[:2]
    bus.calls[1].reply(DATA)

    assert success(d) == DATA
    assert bus.calls[0].cancelled
    clock.advance(10 * HEDGE)
    assert len(bus.calls) == 2


def test_slow_holder_may_still_win_the_race() -> None:
    """After a hedge, whichever holder answers first wins and the other is cancelled."""
    bus, clock = FakeBus(), Clock()
    d = get(client(bus, clock))

    clock.advance(HEDGE)
    bus.calls[0].reply(DATA)

    assert success(d) == DATA
    assert bus.calls[1].cancelled
    assert not bus.calls[0].cancelled


def test_get_skips_a_holder_with_bad_bytes() -> None:
    """Bytes that do not hash to the digest are dropped and the next holder asked."""
    bus = FakeBus()
    d = get(client(bus))

    bus.calls[0].reply(DATA[:-1] + b"!")
    assert len(bus.calls) == 2
    bus.calls[1].reply(DATA)

    assert success(d) == DATA


def test_get_skips_a_failing_holder_at_once() -> None:
    """A holder that fails is replaced at once, without waiting for the hedge."""
    bus = FakeBus()
    d = get(client(bus))

    bus.calls[0].refuse()
    assert len(bus.calls) == 2
    bus.calls[1].reply(DATA)

    assert success(d) == DATA


def test_get_fails_when_every_holder_fails() -> None:
    """When no holder gives good bytes, the get raises StorageUnavailable."""
    bus = FakeBus()
    d = get(client(bus))

    bus.calls[0].refuse()
    bus.calls[1].reply(b"garbage")
    bus.calls[2].done.errback(RequestTimeout("CHUNK_GET"))
    bus.calls[3].refuse("chunk_corrupt")

    error = failure(d).value
    assert isinstance(error, StorageUnavailable)
    assert "bad bytes" in str(error)
    assert "chunk_corrupt" in str(error)


def test_get_waits_for_a_slow_holder_after_the_others_fail() -> None:
    """A holder still working when all others have failed can still answer."""
    bus, clock = FakeBus(), Clock()
    d = get(client(bus, clock))

    clock.advance(HEDGE)
    for call in bus.calls[1:]:
        call.refuse()
    clock.advance(HEDGE)
    for call in bus.calls[2:]:
        if not call.done.called:
            call.refuse()
    assert not d.called
    bus.calls[0].reply(DATA)

    assert success(d) == DATA


def test_get_with_nothing_reachable_is_unavailable() -> None:
    """A get when no relay is reachable raises StorageUnavailable at once."""
    bus = FakeBus([])

    assert isinstance(failure(get(client(bus))).value, StorageUnavailable)


def test_cancelling_a_get_cancels_its_requests_and_hedge() -> None:
    """Cancelling a get cancels the requests in flight and asks no one else."""
    bus, clock = FakeBus(), Clock()
    d = get(client(bus, clock))
    clock.advance(HEDGE)

    d.cancel()
    clock.advance(10 * HEDGE)

    assert isinstance(failure(d).value, CancelledError)
    assert [call.cancelled for call in bus.calls] == [True, True]


def test_answers_given_at_once_leave_no_timer_behind() -> None:
    """Holders that answer synchronously leave no hedge to ask anyone later."""
    order = candidates()
    bus, clock = FakeBus(), Clock()
    bus.auto = {order[0]: Call.refuse, order[1]: lambda call: call.reply(DATA)}

    d = get(client(bus, clock))
    clock.advance(10 * HEDGE)

    assert success(d) == DATA
    gets = [call.dest for call in bus.calls if call.kind == Kind.CHUNK_GET]
    assert gets == order[:2]
    assert clock.getDelayedCalls() == []


def test_home_that_lost_its_copy_is_sent_the_good_bytes() -> None:
    """A home answering chunk_missing gets the verified chunk put back to it."""
    order = candidates()
    bus = FakeBus()
    bus.auto = {order[0]: Call.refuse, order[1]: lambda call: call.reply(DATA)}

    assert success(get(client(bus))) == DATA

    puts = [call for call in bus.calls if call.kind == Kind.CHUNK_PUT]
    assert [call.dest for call in puts] == [order[0]]
    assert puts[0].data == DATA
    assert puts[0].meta == {"digest": DIGEST, "size": len(DATA), "repair": True}


@pytest.mark.parametrize("code", ["chunk_missing", "chunk_corrupt", "bad_bytes"])
def test_a_home_whose_copy_was_found_lost_on_the_way_is_repaired(code: str) -> None:
    """An answer saying the home's copy is lost, from the home itself or from a
    cache on the way that caught its bytes failing (``bad_bytes``), has the home
    sent the good bytes."""
    order = candidates()
    bus = FakeBus()
    bus.auto = {
        order[0]: lambda call: call.refuse(code),
        order[1]: lambda call: call.reply(DATA),
    }

    assert success(get(client(bus))) == DATA

    puts = [call for call in bus.calls if call.kind == Kind.CHUNK_PUT]
    assert [(call.dest, call.meta.get("repair")) for call in puts] == [(order[0], True)]


def test_home_that_sent_bad_bytes_is_sent_the_good_bytes() -> None:
    """Relays send what they hold unhashed: a home whose copy rotted is caught by
    the get's own check, and is sent the verified bytes in its place."""
    order = candidates()
    bus = FakeBus()
    bus.auto = {
        order[0]: lambda call: call.reply(DATA[:-1] + b"!"),
        order[1]: lambda call: call.reply(DATA),
    }

    assert success(get(client(bus))) == DATA

    puts = [call for call in bus.calls if call.kind == Kind.CHUNK_PUT]
    assert [(call.dest, call.data) for call in puts] == [(order[0], DATA)]


def test_a_get_with_a_check_verifies_by_the_check() -> None:
    """Given the chunk's check (from its recipe), a get takes bytes that match the
    check, and refuses bytes whose check differs even where the name matches:
    the check, not the name, is what is verified."""
    bus = FakeBus()
    d = ensureDeferred(client(bus).get(DIGEST, len(DATA), check_of(DATA)))
    bus.calls[0].reply(DATA)
    assert success(d) == DATA

    other = check_of(b"x" * len(DATA))
    d = ensureDeferred(client(bus).get(DIGEST, len(DATA), other))
    bus.calls[-1].reply(DATA)

    assert not d.called
    assert len([call for call in bus.calls if call.kind == Kind.CHUNK_GET]) == 3


def test_an_answer_of_the_wrong_size_is_bad_bytes() -> None:
    """Bytes of another length than the chunk's are refused without hashing."""
    bus = FakeBus()
    d = get(client(bus))

    bus.calls[0].reply(DATA + b"!")
    assert len(bus.calls) == 2
    bus.calls[1].reply(DATA)

    assert success(d) == DATA


def test_home_that_timed_out_is_not_sent_a_copy() -> None:
    """A home that merely failed to answer in time is not re-sent the chunk."""
    order = candidates()
    bus = FakeBus()
    bus.auto = {
        order[0]: lambda call: call.done.errback(RequestTimeout("CHUNK_GET")),
        order[1]: lambda call: call.reply(DATA),
    }

    assert success(get(client(bus))) == DATA

    assert [call for call in bus.calls if call.kind == Kind.CHUNK_PUT] == []


# Over real bus nodes and relays.


@pytest.fixture
def relay_tree(tmp_path: Path) -> BusTree:
    """A registry node and three relays keeping chunks under tmp_path."""
    tree = BusTree(
        topology([("edge", None), ("r1", "edge"), ("r2", "edge"), ("r3", "edge")])
    ).connect_all()
    for name in ("r1", "r2", "r3"):
        Relay(tree[name], tmp_path / name, inline_reactor(), InlinePool(), 1 << 20)
    return tree


def test_put_and_get_over_the_bus(relay_tree: BusTree, tmp_path: Path) -> None:
    """A chunk put over the bus lands on two relays' disks and reads back."""
    holders = [Holder(name) for name in ("r1", "r2", "r3")]
    chunks = ChunkClient(relay_tree["edge"], holders, relay_tree.clock)
    data = bytes(range(256)) * 1200  # over one bus piece

    stored = ensureDeferred(chunks.put(sha256_digest(data), data))
    relay_tree.flush()
    success(stored)
    on_disk = [
        name
        for name in ("r1", "r2", "r3")
        if any((tmp_path / name / "chunks").rglob("*" + sha256_digest(data)[7:]))
    ]
    assert sorted(on_disk) == sorted(chunks.candidates(sha256_digest(data))[:2])

    relay_tree.cut(on_disk[0])
    fetched = ensureDeferred(chunks.get(sha256_digest(data), len(data)))
    relay_tree.flush()

    assert success(fetched) == data


# What a put reports, topping copies up, and relays that lag.


def test_put_returns_the_relays_that_took_the_chunk() -> None:
    """A put answers with the relays that stored the chunk."""
    order = candidates()
    bus = FakeBus()
    bus.auto = {name: Call.reply for name in RELAYS}

    assert sorted(success(put(client(bus)))) == sorted(order[:2])


def test_short_of_copies_counts_reachable_holders() -> None:
    """A chunk is short of copies when fewer than two of its holders are up."""
    chunks = client(FakeBus(["r1", "r2", "r3"]))

    assert not chunks.short_of_copies(["r1", "r2"])
    assert chunks.short_of_copies(["r1", "r4"])
    assert chunks.short_of_copies(["r1", "r1"])


def test_top_up_copies_a_verified_chunk_to_one_more_relay() -> None:
    """A chunk with one holder left is fetched from it and put on one more relay."""
    order = candidates()
    bus = FakeBus([name for name in RELAYS if name != order[1]])
    bus.auto = {
        name: (
            lambda call: (
                call.reply(DATA) if call.kind == Kind.CHUNK_GET else call.reply()
            )
        )
        for name in RELAYS
    }

    holders = success(
        ensureDeferred(client(bus).top_up(DIGEST, len(DATA), [order[0], order[1]]))
    )

    assert holders == [order[0], order[2]]
    kinds = [(call.dest, call.kind) for call in bus.calls]
    assert kinds == [(order[0], Kind.CHUNK_GET), (order[2], Kind.CHUNK_PUT)]


def test_top_up_of_a_chunk_with_enough_copies_does_nothing() -> None:
    """With enough reachable holders, top_up sends nothing."""
    bus = FakeBus()
    order = candidates()

    holders = success(ensureDeferred(client(bus).top_up(DIGEST, len(DATA), order[:2])))

    assert holders == order[:2]
    assert bus.calls == []


def test_relay_that_lagged_is_asked_last_for_a_while() -> None:
    """After lagging behind a put, a home is asked after the others by later puts,
    until `suspect_for` has passed."""
    order = candidates()
    bus, clock = FakeBus(), Clock()
    chunks = client(bus, clock)
    first = put(chunks)
    bus.calls[1].reply()
    clock.advance(ChunkSettings().put_laggard_after)
    bus.calls[2].reply()
    success(first)
    bus.calls.clear()

    put(chunks)
    assert bus.asked() == [order[1], order[2]]
    bus.calls.clear()

    clock.advance(ChunkSettings().suspect_for)
    put(chunks)
    assert bus.asked() == order[:2]


# Verification off the reactor thread.


class HeldVerifier:
    """Hashing the test finishes by hand, as a thread pool would later."""

    def __init__(self) -> None:
        self.held: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, work: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        checking: Deferred[Any] = Deferred()
        self.held.append((checking, work, args))
        return checking

    def finish(self, index: int = 0) -> None:
        checking, work, args = self.held[index]
        checking.callback(work(*args))


def held_client(bus: FakeBus, verifier: HeldVerifier, clock: Clock) -> ChunkClient:
    return ChunkClient(cast(BusNode, bus), HOLDERS, clock, ChunkSettings(), verifier)


def test_an_answer_being_verified_still_counts_as_asked() -> None:
    """While one holder's bytes are checked elsewhere, another holder failing does
    not end the get: the verified bytes win when the check ends."""
    bus, verifier, clock = FakeBus(up=candidates()[:2]), HeldVerifier(), Clock()
    d = get(held_client(bus, verifier, clock))
    clock.advance(HEDGE)
    bus.calls[0].reply(DATA)
    bus.calls[1].refuse()

    assert len(bus.calls) == 2 and not d.called
    verifier.finish()

    assert success(d) == DATA


def test_bad_bytes_found_by_a_later_check_ask_the_next_holder() -> None:
    """A check that ends with the wrong digest moves the get to the next holder."""
    bus, verifier, clock = FakeBus(), HeldVerifier(), Clock()
    d = get(held_client(bus, verifier, clock))
    bus.calls[0].reply(DATA[:-1] + b"!")
    verifier.finish()

    assert len(bus.calls) == 2
    bus.calls[1].reply(DATA)
    verifier.finish(1)

    assert success(d) == DATA


def test_cancelling_a_get_during_its_check_leaves_nothing_running() -> None:
    """A client that leaves while bytes are being checked cancels the check; its
    late result is ignored."""
    bus, verifier, clock = FakeBus(), HeldVerifier(), Clock()
    d = get(held_client(bus, verifier, clock))
    bus.calls[0].reply(DATA)

    d.cancel()
    verifier.finish()

    assert isinstance(failure(d).value, CancelledError)
    assert clock.getDelayedCalls() == []


# Counting chunk requests for the node's metrics.


class Counts:
    """An observer that keeps every count it is told."""

    def __init__(self) -> None:
        self.fetches: list[tuple[str, str]] = []
        self.puts: list[tuple[str, str]] = []
        self.hedges = 0

    def chunk_fetch(self, holder: str, outcome: str) -> None:
        self.fetches.append((holder, outcome))

    def chunk_put(self, holder: str, outcome: str) -> None:
        self.puts.append((holder, outcome))

    def hedge(self) -> None:
        self.hedges += 1


def test_gets_are_counted_by_holder_and_outcome() -> None:
    """Bad bytes, a lost copy, a hedge and the winning answer are each counted."""
    bus, clock, counts = FakeBus(), Clock(), Counts()
    chunks = client(bus, clock)
    chunks.observer = counts
    d = get(chunks)

    bus.calls[0].reply(DATA[:-1] + b"!")
    bus.calls[1].refuse("chunk_missing")
    clock.advance(HEDGE)
    bus.calls[3].reply(DATA)

    assert success(d) == DATA
    names = [call.dest for call in bus.calls]
    assert counts.fetches[:2] == [(names[0], "bad_bytes"), (names[1], "missing")]
    assert (names[3], "ok") in counts.fetches
    assert (names[2], "cancelled") in counts.fetches
    assert counts.hedges == 1


def test_puts_are_counted_by_holder_and_outcome() -> None:
    bus, counts = FakeBus(), Counts()
    chunks = client(bus)
    chunks.observer = counts
    d = put(chunks)

    bus.calls[0].reply()
    bus.calls[1].refuse("disk_full")
    bus.calls[2].reply()

    success(d)
    names = [call.dest for call in bus.calls]
    assert counts.puts == [(names[0], "ok"), (names[1], "failed"), (names[2], "ok")]


# Concurrent gets of one chunk share one fetch.


def test_concurrent_gets_of_a_chunk_ask_its_holders_once() -> None:
    """Two pulls of one layer at once: the chunk crosses the relay link once."""
    bus = FakeBus()
    chunks = client(bus)
    first, second = get(chunks), get(chunks)

    bus.calls[0].reply(DATA)

    assert len(bus.calls) == 1
    assert success(first) == success(second) == DATA


def test_a_caller_that_leaves_does_not_stop_the_others() -> None:
    """One of two callers cancels: the shared fetch goes on for the other."""
    bus = FakeBus()
    chunks = client(bus)
    leaving, staying = get(chunks), get(chunks)

    leaving.cancel()
    bus.calls[0].reply(DATA)

    assert isinstance(failure(leaving).value, CancelledError)
    assert not bus.calls[0].cancelled
    assert success(staying) == DATA


def test_the_fetch_stops_when_every_caller_has_left() -> None:
    """Once no caller waits, the holders are told; a later get starts afresh."""
    bus, clock = FakeBus(), Clock()
    chunks = client(bus, clock)
    gets = [get(chunks), get(chunks)]

    for each in gets:
        each.cancel()

    assert bus.calls[0].cancelled
    assert clock.getDelayedCalls() == []
    later = get(chunks)
    assert len(bus.calls) == 2 and not later.called


# The hedge delay, learned.


def test_hedge_delay_follows_recent_first_byte_waits() -> None:
    """With no samples the delay is the ceiling; then four times the recent 90th
    percentile, within the floor and the ceiling; old samples age out."""
    delay = HedgeDelay(floor=0.25, ceiling=2.0, factor=4.0, samples=10)
    assert delay.seconds() == 2.0

    for _ in range(10):
        delay.observe(0.1)
    assert delay.seconds() == pytest.approx(0.4)

    for _ in range(10):
        delay.observe(0.001)
    assert delay.seconds() == 0.25

    delay.observe(5.0)
    assert delay.seconds() == 2.0


def test_a_quick_holder_makes_the_next_hedge_come_sooner() -> None:
    """After holders answered at once, a silent one is overtaken at the floor, not
    after the full `hedge_after`."""
    bus, clock = FakeBus(), Clock()
    chunks = client(bus, clock)
    for _ in range(3):
        d = get(chunks)
        bus.calls[-1].reply(DATA)
        success(d)
    asked = len(bus.calls)

    get(chunks)
    clock.advance(ChunkSettings().hedge_floor)

    assert len(bus.calls) == asked + 2


def test_a_chunk_with_a_check_is_verified_at_once_not_in_the_pool() -> None:
    """BLAKE3 checks are cheaper than a trip to the thread pool: a get with a
    check is verified in the calling thread, one without goes to the pool."""
    bus, verifier, clock = FakeBus(), HeldVerifier(), Clock()
    chunks = held_client(bus, verifier, clock)

    checked = ensureDeferred(chunks.get(DIGEST, len(DATA), check_of(DATA)))
    bus.calls[0].reply(DATA)
    assert success(checked) == DATA
    assert verifier.held == []

    named = get(chunks)
    bus.calls[-1].reply(DATA)
    assert not named.called and len(verifier.held) == 1
