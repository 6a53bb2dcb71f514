"""Putting chunks on their holders and getting them back, over the bus.

Placement (`treescale.store.placement`) ranks every store relay for a chunk's digest;
the first `replicas` of that rank (in distinct failure domains where it can) are the
chunk's home. A put that cannot reach a home relay uses the next relay of the rank, so
a push goes on while a relay is down; a get walks the same rank, so it finds those
chunks too.

A get is hedged rather than broadcast: it asks one holder first, the home relay with
the fewest bytes of gets in flight (ties rotate), so that the chunks of one blob come
from every relay at once and a relay that holds more of them is not asked for more
than its share. It asks the next holder as soon as the first fails, sends bad bytes,
or makes no progress (no reply, no new piece of data) for the hedge delay, learned
from recent waits for first bytes and at most `hedge_after` seconds (`HedgeDelay`). The
first whole, verified answer wins and the others are cancelled. Asking every holder
at once from the start would send each chunk twice over the relays' links, halving
what a pull gets from them.

A home relay that answered that its copy is missing or corrupt is then sent the
verified bytes, so a chunk that is read gets back to `replicas` copies.

Concurrent gets of one chunk on one node share one race (`_SharedGet`): many
clients pulling the same layer through a registry node fetch each chunk once.

A relay that lagged behind a put (alive on the bus but not answering, as a frozen
process is until its link times out) is *suspect* for `suspect_for` seconds: puts
ask it last, so a push does not wait `put_laggard_after` on every chunk it homes.
The chunks placed elsewhere meanwhile are copied home by the relays' scrub.
"""

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from treescale.bus.frames import Kind
from treescale.bus.node import BusError, BusNode, Message, RemoteError, RequestTimeout
from treescale.store.digests import check_of, chunk_matches, sha256_digest
from treescale.store.errors import StorageUnavailable, UploadFailed
from treescale.store.hashing import Runner, hash_here
from treescale.store.placement import Holder, search_order


class ChunkObserver(Protocol):
    """Who counts chunk requests and their outcomes (the node's metrics)."""

    def chunk_fetch(self, holder: str, outcome: str) -> None: ...

    def chunk_put(self, holder: str, outcome: str) -> None: ...

    def hedge(self) -> None: ...


class _Unobserved:
    """Counts nothing: chunk requests of a node without metrics."""

    def chunk_fetch(self, holder: str, outcome: str) -> None:
        pass

    def chunk_put(self, holder: str, outcome: str) -> None:
        pass

    def hedge(self) -> None:
        pass


def outcome_of(error: BaseException | None) -> str:
    """How a failed chunk request is counted."""
    if isinstance(error, CancelledError):
        return "cancelled"
    if isinstance(error, RequestTimeout):
        return "timeout"
    if isinstance(error, RemoteError) and error.code in LOST_COPY_CODES:
        return "missing"
    return "failed"


def name_of(data: bytes, digest: str = "") -> tuple[str, str]:
    """A chunk's sha256 name (`digest` when already known) and its check."""
    return digest or sha256_digest(data), check_of(data)


def chunk_get_meta(digest: str, check: str = "") -> dict[str, object]:
    """The meta of a chunk-get: the digest the holder needs, and the chunk's
    check when known, for a cache on the way to verify the bytes by
    (`treescale.store.transit`)."""
    return {"digest": digest, "check": check} if check else {"digest": digest}


# What a relay answers when its copy of a chunk is gone or failed verification,
# and what a cache on the way answers for the relay whose bytes it caught failing
# (`treescale.store.transit`): either way that relay's copy is put back.
LOST_COPY_CODES = frozenset({"chunk_missing", "chunk_corrupt", "bad_bytes"})


@dataclass(frozen=True)
class ChunkSettings:
    """How chunk requests behave; every limit named."""

    replicas: int = 2
    put_timeout: float = 60.0
    put_laggard_after: float = 5.0
    """Seconds a put may trail one that already succeeded before the next relay of
    the rank is asked too: a frozen relay must not stall a push for `put_timeout`."""
    get_timeout: float = 30.0
    hedge_after: float = 2.0
    """The most seconds a get waits on a holder that shows no progress before it
    asks the next; the delay used is learned (`HedgeDelay`) and never longer."""
    hedge_floor: float = 0.25
    """The least a learned hedge delay may be: below it, a busy disk would be
    overtaken all the time and every chunk sent twice."""
    hedge_factor: float = 4.0
    """The learned delay is this many times the recent 90th percentile of the wait
    for a holder's first bytes."""
    hedge_samples: int = 64
    """How many recent first-byte waits the delay is learned from."""
    suspect_for: float = 30.0
    """Seconds a relay that lagged behind a put is asked last by later puts."""


class HedgeDelay:
    """The no-progress delay after which a get asks another holder, learned from
    how long holders recently took to send a chunk's first bytes.

    A fixed delay is either too long (a stalled relay costs seconds per chunk) or
    too short (a relay reading from a busy disk is overtaken and the chunk crosses
    two links). The delay is `factor` times the 90th percentile of the last
    `samples` first-byte waits, between `floor` and `ceiling`; with no samples yet
    it is the ceiling.
    """

    def __init__(self, floor: float, ceiling: float, factor: float, samples: int):
        self.floor = floor
        self.ceiling = ceiling
        self.factor = factor
        self.waits: deque[float] = deque(maxlen=samples)

    def observe(self, wait: float) -> None:
        """A holder sent its first bytes `wait` seconds after it was asked."""
        self.waits.append(max(wait, 0.0))

    def seconds(self) -> float:
        if not self.waits:
            return self.ceiling
        ordered = sorted(self.waits)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        return min(self.ceiling, max(self.floor, self.factor * p90))


class ChunkClient:
    """The registry's side of chunk-put and chunk-get."""

    log = Logger()

    def __init__(
        self,
        bus: BusNode,
        holders: Sequence[Holder],
        clock: IReactorTime,
        settings: ChunkSettings = ChunkSettings(),
        hash_in: Runner | None = None,
    ) -> None:
        """`hash_in(work, *args)` runs a hashing function where this node hashes
        chunks: in a thread pool on a registry node (hashlib and blake3 let go
        of the GIL), so the reactor goes on reading other chunks meanwhile; at
        once when None."""
        self.bus = bus
        self.holders = list(holders)
        self.clock = clock
        self.hash_in = hash_in or hash_here
        self.observer: ChunkObserver = _Unobserved()
        self.hedge_delay = HedgeDelay(
            settings.hedge_floor,
            settings.hedge_after,
            settings.hedge_factor,
            settings.hedge_samples,
        )
        self._in_flight: dict[tuple[str, int, str], _SharedGet] = {}
        self.settings = settings
        self.replicas = min(settings.replicas, len(self.holders))
        self._turn = itertools.count()
        self._load: dict[str, int] = {holder.name: 0 for holder in self.holders}
        self._suspect_until: dict[str, float] = {}

    def name(self, data: bytes, digest: str = "") -> "Deferred[tuple[str, str]]":
        """A cut chunk's name and check, in one trip to where chunks are hashed;
        a name already known (`digest`) is not computed again."""
        return self.hash_in(name_of, data, digest)

    def matches(self, data: bytes, digest: str, check: str) -> "Deferred[bool]":
        """Whether fetched bytes are the chunk (`chunk_matches`).

        A chunk with a check is verified at once, in this thread: BLAKE3 takes
        about 0.7 ms for 4 MiB, less than a trip to the thread pool and back
        costs (a one-process tree pulled 5 to 10% faster so). One without is
        hashed by sha256, four times slower, where chunks are hashed.
        """
        if check:
            return hash_here(chunk_matches, data, digest, check)
        return self.hash_in(chunk_matches, data, digest, check)

    def candidates(self, digest: str) -> list[str]:
        """Every relay in the order a chunk is looked for: homes, then the rank."""
        order = search_order(digest, self.holders, self.replicas)
        return [holder.name for holder in order]

    async def put(self, digest: str, data: bytes) -> list[str]:
        """Store a chunk on `replicas` relays; `UploadFailed` if too few take it.

        Returns the relays that took it.
        """
        candidates = [
            name for name in self.candidates(digest) if self.bus.reachable(name)
        ]
        order = self._trusted_first(candidates)
        return await _PutRace(self, digest, data, order, self.replicas).run()

    def short_of_copies(self, holders: Sequence[str]) -> bool:
        """Whether fewer than `replicas` of a chunk's holders are reachable now."""
        live = sum(1 for name in set(holders) if self.bus.reachable(name))
        return live < self.replicas

    async def top_up(self, digest: str, size: int, holders: Sequence[str]) -> list[str]:
        """Copy a chunk to more relays until `replicas` reachable ones hold it.

        The bytes come verified from a holder (`get`); returns every reachable
        holder afterwards. `UploadFailed` when too few relays take a copy.
        """
        live = [name for name in dict.fromkeys(holders) if self.bus.reachable(name)]
        needed = self.replicas - len(live)
        if needed <= 0:
            return live

        data = await self.get(digest, size)
        others = [
            name
            for name in self.candidates(digest)
            if name not in live and self.bus.reachable(name)
        ]
        self.log.info(
            "chunk {digest} is on {count} live relays; copying it to {needed} more",
            digest=digest,
            count=len(live),
            needed=needed,
        )
        added = await _PutRace(
            self, digest, data, self._trusted_first(others), needed
        ).run()
        return live + added

    def suspect(self, name: str) -> None:
        """Ask relay `name` last in puts for the next `suspect_for` seconds."""
        until = self.clock.seconds() + self.settings.suspect_for
        if self._suspect_until.get(name, 0.0) < self.clock.seconds():
            self.log.warn(
                "relay {relay} lags behind puts; asking it last for {seconds} s",
                relay=name,
                seconds=self.settings.suspect_for,
            )
        self._suspect_until[name] = until

    def _trusted_first(self, names: list[str]) -> list[str]:
        """`names` in order, the relays suspect now moved to the end."""
        now = self.clock.seconds()
        suspect = {n for n, until in self._suspect_until.items() if until > now}
        return [n for n in names if n not in suspect] + [
            n for n in names if n in suspect
        ]

    def _put_one(
        self, name: str, digest: str, data: bytes, repair: bool = False
    ) -> "Deferred[bool]":
        """Put a chunk on one relay; with `repair`, the relay sets its own copy
        aside first if that copy no longer matches (it sent bad bytes, or lost
        it), so an operator can look at what rotted."""
        meta: dict[str, object] = {"digest": digest, "size": len(data)}
        if repair:
            meta["repair"] = True
        call = self.bus.request(
            name, Kind.CHUNK_PUT, meta, data, timeout=self.settings.put_timeout
        )

        def stored(_: Message) -> bool:
            self.observer.chunk_put(name, "ok")
            return True

        def failed(failure: Failure) -> bool:
            error = failure.value
            self.observer.chunk_put(name, outcome_of(error))
            if isinstance(error, CancelledError):
                raise error
            self.log.warn(
                "chunk put of {digest} to {relay} failed: {why}",
                digest=digest,
                relay=name,
                why=str(error),
            )
            return False

        return call.addCallbacks(stored, failed)

    def get(self, digest: str, size: int, check: str = "") -> "Deferred[bytes]":
        """A chunk's verified bytes, from whichever holder gives them first.

        The bytes are verified against the chunk's `check` when the caller knows
        it (a recipe lists it), else against its name (`chunk_matches`). Relays
        send what they hold without hashing it: this is where a copy rotten on a
        relay's disk is caught, and that relay is sent the good bytes.

        Concurrent gets of one chunk (many clients pulling one layer) share one
        race to the holders: the relays send it once. Each caller may cancel its
        own get; the race is cancelled when the last of them has.
        """
        key = (digest, size, check)
        shared = self._in_flight.get(key)
        if shared is None:
            shared = _SharedGet(Deferred.fromCoroutine(self._race(*key)))
            self._in_flight[key] = shared
            shared.race.addBoth(self._race_over, key)
        return shared.join()

    def _race_over(self, result: object, key: tuple[str, int, str]) -> object:
        self._in_flight.pop(key, None)
        return result

    async def _race(self, digest: str, size: int, check: str) -> bytes:
        candidates = [
            name for name in self.candidates(digest) if self.bus.reachable(name)
        ]
        if not candidates:
            raise StorageUnavailable(f"no relay that may hold {digest} is reachable")
        homes = set(candidates[: self.replicas])
        order = self._order(candidates)
        return await _Race(self, digest, size, check, order, homes).run()

    def _order(self, candidates: list[str]) -> list[str]:
        """Homes least loaded first (ties rotating), then the rest of the rank.

        The rest comes after the homes, since it holds a chunk only after a
        fallback put.
        """
        first = min(self.replicas, len(candidates))
        turn = next(self._turn) % first
        homes = candidates[turn:first] + candidates[:turn]
        homes.sort(key=lambda name: self._load.get(name, 0))
        return homes + candidates[first:]

    def _ask(
        self,
        name: str,
        ref: tuple[str, int, str],
        on_progress: Callable[[], None],
    ) -> "Deferred[Message]":
        """Ask `name` for the chunk `ref` (digest, size, check)."""
        digest, size, check = ref
        self._load[name] = self._load.get(name, 0) + size
        call = self.bus.request(
            name,
            Kind.CHUNK_GET,
            chunk_get_meta(digest, check),
            max_reply=size,
            timeout=self.settings.get_timeout,
            on_progress=on_progress,
        )

        def settled(result: object) -> object:
            self._load[name] -= size
            return result

        return call.addBoth(settled)


class _SharedGet:
    """One race to a chunk's holders and the gets waiting on it."""

    def __init__(self, race: "Deferred[bytes]") -> None:
        self.race = race
        self.waiting: list[Deferred[bytes]] = []
        self.outcome: bytes | Failure | None = None
        """How the race ended, once it has (it may end before anyone joins)."""
        race.addCallbacks(self._settle, self._settle_failure)

    def join(self) -> "Deferred[bytes]":
        """A get of its own for one more caller."""
        if isinstance(self.outcome, Failure):
            return fail(self.outcome)
        if self.outcome is not None:
            return succeed(self.outcome)
        mine: Deferred[bytes] = Deferred(self._left)
        self.waiting.append(mine)
        return mine

    def _left(self, mine: "Deferred[bytes]") -> None:
        """A caller cancelled its get; the race stops when no one waits."""
        if mine in self.waiting:
            self.waiting.remove(mine)
        if not self.waiting and not self.race.called:
            self.race.cancel()

    def _settle(self, data: bytes) -> None:
        self.outcome = data
        waiting, self.waiting = self.waiting, []
        for mine in waiting:
            mine.callback(data)

    def _settle_failure(self, failure: Failure) -> None:
        self.outcome = failure
        waiting, self.waiting = self.waiting, []
        for mine in waiting:
            mine.errback(failure)


class _Race:
    """One hedged chunk-get: holders asked one after another, first good one wins."""

    def __init__(
        self,
        client: ChunkClient,
        digest: str,
        size: int,
        check: str,
        order: list[str],
        homes: set[str],
    ) -> None:
        self.client = client
        self.digest = digest
        self.size = size
        self.check = check
        self.homes = homes
        self.to_repair: list[str] = []
        self.waiting = list(order)
        self.asked: dict[str, Deferred[Any]] = {}
        """The holders asked (or whose answer is being verified) by name."""
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())
        self.hedge: IDelayedCall | None = None
        self.errors: list[str] = []

    async def run(self) -> bytes:
        self._ask_next()
        return await self.done

    def _ask_next(self) -> None:
        self._cancel_hedge()
        if not self.waiting:
            if not self.asked and not self.done.called:
                self.done.errback(
                    StorageUnavailable(
                        f"chunk {self.digest}: no holder gave it "
                        f"({'; '.join(self.errors)})"
                    )
                )
            return
        name = self.waiting.pop(0)
        # The hedge is armed before the answer is looked at: an answer given at
        # once then cancels it, rather than leaving it to ask someone after the end.
        if self.waiting:
            self.hedge = self.client.clock.callLater(
                self.client.hedge_delay.seconds(), self._hedge_fired
            )
        asked_at = self.client.clock.seconds()
        first = [True]

        def progress() -> None:
            if first[0]:
                first[0] = False
                self.client.hedge_delay.observe(self.client.clock.seconds() - asked_at)
            self._progress()

        call = self.client._ask(name, (self.digest, self.size, self.check), progress)
        self.asked[name] = call
        call.addCallbacks(
            self._answered, self._failed, callbackArgs=(name,), errbackArgs=(name,)
        )

    def _progress(self) -> None:
        """A holder is still sending: give it the hedge delay again."""
        hedge = self.hedge
        if hedge is not None and hedge.active():
            hedge.reset(self.client.hedge_delay.seconds())

    def _hedge_fired(self) -> None:
        self.hedge = None
        self.client.observer.hedge()
        self.client.log.info(
            "chunk {digest}: no progress from {relays}; asking another",
            digest=self.digest,
            relays=sorted(self.asked),
        )
        self._ask_next()

    def _answered(self, reply: Message, name: str) -> None:
        """Verify a holder's answer; until that ends it counts as still asked."""
        if self.done.called:
            del self.asked[name]
            return
        data = reply.data
        if len(data) != self.size:
            checking: Deferred[bool] = succeed(False)
        else:
            checking = self.client.matches(data, self.digest, self.check)
        self.asked[name] = checking
        checking.addCallbacks(
            self._verified,
            self._failed,
            callbackArgs=(reply.data, name),
            errbackArgs=(name,),
        )

    def _verified(self, good: bool, data: bytes, name: str) -> None:
        del self.asked[name]
        if self.done.called:
            return
        self.client.observer.chunk_fetch(name, "ok" if good else "bad_bytes")
        if not good:
            self.client.log.error(
                "bad bytes for chunk {digest} from {relay}",
                digest=self.digest,
                relay=name,
            )
            self.errors.append(f"{name}: bad bytes")
            if name in self.homes:
                self.to_repair.append(name)
            self._ask_next()
            return
        self._stop()
        self._repair(data)
        self.done.callback(data)

    def _repair(self, data: bytes) -> None:
        """Put the good bytes back on home relays that lost or damaged their copy."""
        # Chunks nobody reads are brought back to their copies by the relays'
        # scrub (treescale.store.scrub).
        for name in self.to_repair:
            self.client.log.info(
                "re-creating chunk {digest} on {relay}", digest=self.digest, relay=name
            )
            put = self.client._put_one(name, self.digest, data, repair=True)
            put.addErrback(lambda _: None)

    def _failed(self, failure: Failure, name: str) -> None:
        self.asked.pop(name, None)
        error = failure.value
        self.client.observer.chunk_fetch(name, outcome_of(error))
        if self.done.called or isinstance(error, CancelledError):
            return
        if not isinstance(error, BusError):
            self.client.log.error(
                "chunk get of {digest} from {relay}: {why}",
                digest=self.digest,
                relay=name,
                why=repr(error),
            )
        self.errors.append(f"{name}: {error}")
        lost = isinstance(error, RemoteError) and error.code in LOST_COPY_CODES
        if lost and name in self.homes:
            self.to_repair.append(name)
        self._ask_next()

    def _stop(self) -> None:
        self._cancel_hedge()
        for call in list(self.asked.values()):
            call.cancel()
        self.asked.clear()

    def _cancel_hedge(self) -> None:
        hedge = self.hedge
        self.hedge = None
        if hedge is not None and hedge.active():
            hedge.cancel()


class _PutRace:
    """One chunk put: `needed` relays at once, the next of the rank for each that
    fails, and for one that lags `put_laggard_after` behind a success."""

    def __init__(
        self,
        client: ChunkClient,
        digest: str,
        data: bytes,
        order: list[str],
        needed: int,
    ) -> None:
        self.client = client
        self.digest = digest
        self.data = data
        self.needed = needed
        self.untried = list(order)
        self.pending: dict[str, Deferred[bool]] = {}
        self.stored: list[str] = []
        self.done: Deferred[None] = Deferred(lambda _: self._stop())
        self.laggard_timer: IDelayedCall | None = None
        # True while the first puts go out: one answered at once must not be
        # taken for the whole race before the others are even asked.
        self.starting = False

    async def run(self) -> list[str]:
        self.starting = True
        for _ in range(self.needed):
            self._ask_next()
        self.starting = False
        self._check()
        await self.done
        return list(self.stored)

    def _ask_next(self) -> None:
        if not self.untried:
            return
        name = self.untried.pop(0)
        call = self.client._put_one(name, self.digest, self.data)
        self.pending[name] = call
        call.addCallback(self._settled, name)
        call.addErrback(lambda _: None)

    def _settled(self, stored: bool, name: str) -> None:
        self.pending.pop(name, None)
        if self.done.called:
            return
        if stored:
            self.stored.append(name)
            if self.laggard_timer is None and self.pending:
                self.laggard_timer = self.client.clock.callLater(
                    self.client.settings.put_laggard_after, self._laggards
                )
        else:
            self._ask_next()
        self._check()

    def _laggards(self) -> None:
        self.laggard_timer = None
        self.client.log.warn(
            "chunk {digest}: put to {relays} lags; putting it on another relay",
            digest=self.digest,
            relays=sorted(self.pending),
        )
        for name in list(self.pending):
            self.client.suspect(name)
            self._ask_next()
        self._check()

    def _check(self) -> None:
        if self.done.called or self.starting:
            return
        if len(self.stored) >= self.needed:
            self._stop()
            self.done.callback(None)
        elif not self.pending:
            self._stop()
            self.done.errback(
                UploadFailed(
                    f"chunk {self.digest} is on {len(self.stored)} relays, "
                    f"{self.needed} needed"
                )
            )

    def _stop(self) -> None:
        if self.laggard_timer is not None and self.laggard_timer.active():
            self.laggard_timer.cancel()
        self.laggard_timer = None
        for call in list(self.pending.values()):
            call.cancel()
        self.pending.clear()
