"""The background scrub of one relay: every chunk it holds verified and kept at its
replica count, at a bounded rate.

Why the relays scrub, not a registry node: a chunk's bytes are checked where they
lie, with a local disk read and no network; each relay walks only its own disk, so the
work grows with the relays and no node must know every chunk. Only the questions to
the other homes (``CHUNK_HAS``, a few bytes) and the repairs themselves cross the bus.
What no relay holds any more cannot be found this way; nothing could repair it
anyway.

One pass walks the chunk store in digest order, a page at a time, paced by
`ScrubSettings.chunks_per_second` and `bytes_per_second`. For each chunk:

1. read and verify it; a corrupt copy is quarantined by the store and fetched again,
   verified, from another holder;
2. ask the chunk's other effective homes (see `treescale.store.repair`) whether they
   hold it, at its size;
3. copy it to those that lack it, when this relay is the one to do so.

Progress goes to the log as structured events (``scrub_*`` keys) and to the record
``scrub/<relay>``, which `read_repair_status` gathers for a status page on any node.
Nothing is ever deleted here.

What the relay's rebalance (`treescale.store.rebalance`) shares with the scrub is
here too: `RelayTask` (a service running one coroutine, with its status record),
`PeerRequests` (requests to other relays that note their health) and
`StatusPublisher`.
"""

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    ensureDeferred,
)
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from treescale.bus.frames import Kind
from treescale.bus.node import BusError, BusNode, RemoteError
from treescale.store.chunks import ChunkCorrupt, ChunkError, ChunkMissing, ChunkStore
from treescale.store.digests import sha256_digest
from treescale.store.errors import StorageError
from treescale.store.placement import Holder, search_order
from treescale.store.records import RecordClient
from treescale.store.repair import (
    Pacer,
    PeerHealth,
    PeerState,
    ScrubCounts,
    ScrubProgress,
    copy_targets,
    effective_homes,
)
from treescale.store.scrub_settings import ScrubSettings

MiB = 1024 * 1024

__all__ = [
    "STATUS_PREFIX",
    "PeerRequests",
    "ScrubSettings",
    "Scrubber",
    "StatusPublisher",
    "read_repair_status",
    "read_status_records",
]

STATUS_PREFIX = "scrub/"
"""Key prefix of the records where each relay publishes its scrub's progress."""


class _Progress(Protocol):
    state: str


def _is_cancellation(failure: Failure) -> bool:
    """Whether a run ended because it was cancelled, also when the cancel reached
    it through a `gatherResults` of several requests (a `FirstError`)."""
    error = failure.value
    while isinstance(error, FirstError):
        error = error.subFailure.value
    return isinstance(error, CancelledError)


class RelayTask(Service):
    """What a relay's background work (its scrub, its rebalance) has in common:
    one coroutine run while the service runs, cancelled when it stops, with its
    sleeps on the bus's clock, its disk work in the thread pool and its status
    written by a `StatusPublisher`."""

    log = Logger()
    task = "task"
    """Names the work in log lines: ``scrub of relay-a ...``."""
    progress: "_Progress"

    def __init__(
        self,
        bus: BusNode,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        records: RecordClient | None,
        status: tuple[str, float],
        wall: Any,
    ) -> None:
        """`status` is the key of the status record and the seconds between
        its writes."""
        self.bus = bus
        self.me = bus.me.name
        self.clock: IReactorTime = bus.clock
        self.reactor = reactor
        self.pool = pool
        self.wall = wall
        key, interval = status
        self.publisher = StatusPublisher(
            self.task, self.me, records, key, self.clock, interval, self.status
        )
        self._running: Deferred[None] | None = None

    def status(self) -> dict[str, object]:
        """The document of the status record: the subclass's to say."""
        raise NotImplementedError

    async def _run(self) -> None:
        """The work itself: the subclass's to do."""
        raise NotImplementedError

    def _start_running(self) -> None:
        """Begin `_run`, after stopping a run under way."""
        self._stop_running()
        self._running = ensureDeferred(self._run())
        self._running.addErrback(self._crashed)

    def _stop_running(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.cancel()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stop_running()

    def _crashed(self, failure: Failure) -> None:
        if _is_cancellation(failure):
            return
        self.progress.state = "failed"
        self.log.failure(
            "{task} of {relay} stopped", failure, task=self.task, relay=self.me
        )

    def _sleep(self, seconds: float) -> "Deferred[None]":
        return deferLater(self.clock, seconds, lambda: None)

    def _thread(self, work: Any, *args: object) -> Any:
        return deferToThreadPool(self.reactor, self.pool, work, *args)

    async def _publish(self, force: bool = False) -> None:
        await self.publisher.publish(force)


class Scrubber(RelayTask):
    """The scrub of one relay's chunk store, run as a child service of its bus."""

    task = "scrub"
    progress: ScrubProgress

    def __init__(
        self,
        bus: BusNode,
        chunks: ChunkStore,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        holders: Sequence[Holder],
        replicas: int,
        records: RecordClient | None,
        settings: ScrubSettings | None = None,
        max_chunk: int = 64 * MiB,
        wall: Any = time.time,
    ) -> None:
        self.settings = settings = settings or ScrubSettings()
        self.progress = ScrubProgress()
        status = (status_key(bus.me.name), settings.status_interval)
        super().__init__(bus, reactor, pool, records, status, wall)
        self.chunks = chunks
        self.holders = list(holders)
        self.replicas = min(replicas, len(self.holders))
        self.records = records
        self.max_chunk = max_chunk
        self.health = PeerHealth(settings.recheck_after, settings.gone_after)
        self.peers = PeerRequests(bus, "scrub", self.health, settings.request_timeout)
        self.pacer = Pacer(settings.chunks_per_second, settings.bytes_per_second)
        self._probing: set[str] = set()

    def use_holders(
        self, holders: Sequence[Holder], replicas: int, records: RecordClient | None
    ) -> None:
        """Scrub for a new topology from the next chunk on: its holders, its
        replica count and the record client its status goes through."""
        self.holders = list(holders)
        self.replicas = min(replicas, len(self.holders))
        self.records = records
        self.publisher.records = records

    # Service life.

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if not self.settings.enabled:
            self.progress.state = "off"
            self.log.info("scrub of {relay} is off", relay=self.me)
            return
        self._start_running()

    async def _run(self) -> None:
        """Passes, one after another, `pass_interval` apart, for as long as we run."""
        await self._sleep(self.settings.start_delay)
        while True:
            started = self.clock.seconds()
            await self.run_pass()
            elapsed = self.clock.seconds() - started
            self.progress.state = "waiting"
            await self._publish(force=True)
            await self._sleep(max(0.0, self.settings.pass_interval - elapsed))

    # One pass.

    async def run_pass(self) -> ScrubCounts:
        """Walk every chunk of the store once; what the pass found and did."""
        progress = self.progress
        progress.state = "scrubbing"
        progress.passes += 1
        progress.pass_started = self.wall()
        progress.cursor = ""
        progress.current = ScrubCounts()
        started = self.clock.seconds()
        self.log.info(
            "scrub pass {scrub_pass} of {relay} starting",
            scrub_pass=progress.passes,
            relay=self.me,
        )

        while True:
            page = await self._thread(
                self.chunks.sizes_after, progress.cursor, self.settings.page_size
            )
            if not page:
                break
            for digest, size in page:
                await self.scrub_chunk(digest, size)
                progress.cursor = digest
                await self._publish()

        return self._end_pass(self.clock.seconds() - started)

    def _end_pass(self, elapsed: float) -> ScrubCounts:
        """Close the pass's counts and say what it did."""
        progress = self.progress
        counts = progress.current
        progress.total.add(counts)
        progress.last_pass = counts
        progress.last_pass_ended = self.wall()
        progress.last_pass_seconds = elapsed
        progress.current = ScrubCounts()
        self.log.info(
            "scrub pass {scrub_pass} of {relay} done in {elapsed:.1f} s: "
            "{scrub_chunks} chunks ({nbytes} bytes), {scrub_corrupt} corrupt, "
            "{scrub_missing} copies missing, {scrub_copied} made, "
            "{scrub_failed} repairs failed",
            scrub_pass=progress.passes,
            relay=self.me,
            elapsed=elapsed,
            scrub_chunks=counts.chunks,
            nbytes=counts.nbytes,
            scrub_corrupt=counts.corrupt,
            scrub_missing=counts.missing,
            scrub_copied=counts.copied,
            scrub_failed=counts.failed,
            peers=self.health.not_up(self.clock.seconds()),
        )
        return counts

    async def scrub_chunk(self, digest: str, size: int) -> None:
        """Verify one chunk here and bring its copies elsewhere up to count."""
        await self._sleep(self.pacer.reserve(size, self.clock.seconds()))
        data = await self._verified_local_copy(digest)
        if data is None:
            return

        counts = self.progress.current
        counts.chunks += 1
        counts.nbytes += len(data)
        ranked = [h.name for h in search_order(digest, self.holders, self.replicas)]
        self._recheck_not_up(digest, ranked)
        now = self.clock.seconds()
        homes = effective_homes(ranked, self.replicas, self.me, self.health, now)
        holds = await self._ask_homes(digest, len(data), homes)
        counts.missing += sum(1 for held in holds.values() if held is False)

        for target in copy_targets(self.me, homes, holds):
            await self._copy_to(target, digest, data)

    async def _verified_local_copy(self, digest: str) -> bytes | None:
        """This relay's copy, verified, fetched again if it was bad; None if there
        is none to go on with."""
        counts = self.progress.current
        try:
            data: bytes = await self._thread(self.chunks.read, digest)
            return data
        except ChunkMissing:
            return None
        except ChunkCorrupt as e:
            counts.corrupt += 1
            self.log.error(
                "scrub of {relay}: chunk {digest} is corrupt here: {why}",
                relay=self.me,
                digest=digest,
                why=str(e),
            )
        except (ChunkError, OSError) as e:
            counts.errors += 1
            self.log.error(
                "scrub of {relay} cannot read chunk {digest}: {why}",
                relay=self.me,
                digest=digest,
                why=str(e),
            )
            return None

        fetched = await self._fetch_good_copy(digest)
        if fetched is None:
            counts.failed += 1
            return None
        counts.restored += 1
        return fetched

    async def _fetch_good_copy(self, digest: str) -> bytes | None:
        """A verified copy of a chunk from another holder, written back here."""
        ranked = [h.name for h in search_order(digest, self.holders, self.replicas)]
        for name in ranked:
            if name == self.me or not self.health.should_ask(
                name, self.clock.seconds()
            ):
                continue
            reply = await self.peers.request(
                name, Kind.CHUNK_GET, {"digest": digest}, max_reply=self.max_chunk
            )
            if reply is None or sha256_digest(reply) != digest:
                continue
            try:
                await self._thread(self.chunks.write, digest, reply)
            except (ChunkError, OSError) as e:
                self.log.error(
                    "scrub of {relay} cannot store chunk {digest}: {why}",
                    relay=self.me,
                    digest=digest,
                    why=str(e),
                )
                return None
            self.log.info(
                "scrub of {relay}: chunk {digest} fetched again from {source}",
                relay=self.me,
                digest=digest,
                source=name,
            )
            return reply
        self.log.error(
            "scrub of {relay}: no other relay gave a good copy of chunk {digest}",
            relay=self.me,
            digest=digest,
        )
        return None

    def _recheck_not_up(self, digest: str, ranked: Sequence[str]) -> None:
        """Ask again, in the background and once per `recheck_after`, each relay
        of `ranked` found down or gone; one that answers is up again, a home again,
        and serves what it still holds. The pass goes on meanwhile, presuming: a
        dead relay must not stall it for a timeout at each try."""
        now = self.clock.seconds()
        for name in ranked:
            if name == self.me or name in self._probing:
                continue
            if self.health.state(name, now) is PeerState.UP:
                continue
            if not self.health.should_ask(name, now):
                continue
            self._probing.add(name)
            probe = ensureDeferred(
                self.peers.request_meta(name, Kind.CHUNK_HAS, {"digest": digest})
            )
            probe.addBoth(self._probed, name)

    def _probed(self, _: object, name: str) -> None:
        self._probing.discard(name)

    async def _ask_homes(
        self, digest: str, size: int, homes: Sequence[str]
    ) -> dict[str, bool | None]:
        """For each other home: holds a copy of the right size (True), does not
        (False), or is down and presumed to (None)."""
        holds: dict[str, bool | None] = {}
        for name in homes:
            if name == self.me:
                continue
            if self.health.state(name, self.clock.seconds()) is not PeerState.UP:
                holds[name] = None
                continue
            reply = await self.peers.request_meta(
                name, Kind.CHUNK_HAS, {"digest": digest}
            )
            if reply is None:
                holds[name] = None
            else:
                holds[name] = bool(reply.get("has")) and reply.get("size") == size
        return holds

    async def _copy_to(self, target: str, digest: str, data: bytes) -> None:
        """Put a good copy on `target`, counting the outcome."""
        counts = self.progress.current
        meta = {"digest": digest, "size": len(data)}
        answered = await self.peers.request_meta(target, Kind.CHUNK_PUT, meta, data)
        if answered is None:
            counts.failed += 1
            return
        counts.copied += 1
        self.log.info(
            "scrub of {relay}: re-created chunk {digest} on {target}",
            relay=self.me,
            digest=digest,
            target=target,
            nbytes=len(data),
        )

    # Status.

    def status(self) -> dict[str, object]:
        """Where this relay's scrub stands, as JSON-ready values."""
        progress = self.progress
        return {
            "relay": self.me,
            "state": progress.state,
            "passes": progress.passes,
            "pass_started": progress.pass_started,
            "cursor": progress.cursor,
            "current_pass": progress.current.to_json(),
            "last_pass": None
            if progress.last_pass is None
            else progress.last_pass.to_json(),
            "last_pass_ended": progress.last_pass_ended,
            "last_pass_seconds": progress.last_pass_seconds,
            "total": progress.total.to_json(),
            "peers_not_up": self.health.not_up(self.clock.seconds()),
            "settings": {
                "bytes_per_second": self.settings.bytes_per_second,
                "chunks_per_second": self.settings.chunks_per_second,
                "pass_interval": self.settings.pass_interval,
                "gone_after": self.settings.gone_after,
            },
            "updated": self.wall(),
        }


def status_key(relay: str) -> str:
    """The record holding relay `relay`'s scrub status."""
    return f"{STATUS_PREFIX}{relay}"


async def read_repair_status(
    records: RecordClient, relays: Sequence[str], now: float
) -> dict[str, object]:
    """Every relay's last published scrub status, and the sums over them.

    A relay that never published (or whose record cannot be read) is None; `age`
    says how many seconds old each status is, so a relay that went silent shows.
    """
    found = await read_status_records(records, STATUS_PREFIX, relays, now)
    totals = ScrubCounts()
    for status in found.values():
        if status is not None:
            _add_counts(totals, status.get("total"))
    return {"relays": found, "total": totals.to_json()}


async def read_status_records(
    records: RecordClient, prefix: str, relays: Sequence[str], now: float
) -> dict[str, dict[str, Any] | None]:
    """The status document each relay published under ``prefix + relay``, each
    with its `age` in seconds; None for a relay whose record is missing or
    unreadable."""
    found: dict[str, dict[str, Any] | None] = {}
    for relay in relays:
        try:
            raw = await records.get(f"{prefix}{relay}")
        except (StorageError, BusError):
            raw = None
        status = _status_from(raw)
        if status is not None:
            updated = status.get("updated")
            if isinstance(updated, int | float):
                status["age"] = max(0.0, now - updated)
        found[relay] = status
    return found


def _status_from(raw: bytes | None) -> dict[str, Any] | None:
    """A status record's document; None when there is none or it is unreadable."""
    if raw is None:
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _add_counts(totals: ScrubCounts, counts: object) -> None:
    """Add a published count table into `totals`, ignoring what is not a count."""
    if not isinstance(counts, dict):
        return
    for name in ScrubCounts.__dataclass_fields__:
        value = counts.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(totals, name, getattr(totals, name) + value)


class PeerRequests:
    """Requests a relay's background work (its scrub, its rebalance) sends to the
    other relays: every failure is an answer of None, logged, and what each
    answer or silence says of a relay is kept in a `PeerHealth`."""

    log = Logger()

    def __init__(
        self, bus: BusNode, task: str, health: PeerHealth, timeout: float
    ) -> None:
        """`task` names the work in the log lines: ``scrub of relay-a: ...``."""
        self.bus = bus
        self.task = task
        self.me = bus.me.name
        self.health = health
        self.timeout = timeout

    async def request(
        self,
        name: str,
        kind: Kind,
        meta: Mapping[str, Any],
        data: bytes = b"",
        max_reply: int = 1024,
    ) -> bytes | None:
        """The data of a reply, or None when `name` gave none (noted in health)."""
        reply = await self.exchange(name, kind, meta, data, max_reply)
        return None if reply is None else reply[1]

    async def request_meta(
        self, name: str, kind: Kind, meta: Mapping[str, Any], data: bytes = b""
    ) -> Mapping[str, Any] | None:
        """The metadata of a reply, or None when `name` gave none."""
        reply = await self.exchange(name, kind, meta, data, 1024)
        return None if reply is None else reply[0]

    async def exchange(
        self,
        name: str,
        kind: Kind,
        meta: Mapping[str, Any],
        data: bytes,
        max_reply: int,
    ) -> tuple[Mapping[str, Any], bytes] | None:
        """One request to another relay; None on any failure, which is logged."""
        clock = self.bus.clock
        self.health.asked(name, clock.seconds())
        try:
            reply = await self.bus.request(
                name, kind, meta, data, max_reply=max_reply, timeout=self.timeout
            )
        except RemoteError as e:
            self._heard_from(name)
            self.log.warn(
                "{task} of {relay}: {kind} to {target} refused: {why}",
                task=self.task,
                relay=self.me,
                kind=kind.name,
                target=name,
                why=str(e),
            )
            return None
        except BusError as e:
            if self.health.failed(name, clock.seconds()):
                self.log.warn(
                    "{task} of {relay}: {target} does not answer ({why}); "
                    "presuming it down",
                    task=self.task,
                    relay=self.me,
                    target=name,
                    why=str(e),
                )
            return None
        self._heard_from(name)
        return reply.meta, reply.data

    def _heard_from(self, name: str) -> None:
        if self.health.answered(name):
            self.log.info(
                "{task} of {relay}: {target} answers again",
                task=self.task,
                relay=self.me,
                target=name,
            )


class StatusPublisher:
    """Writes the status record of a relay's background work, at most every
    `interval` seconds.

    A write goes on in the background: a tree without a quorum for it must not
    slow the work. A forced write (a pass's end) waits for the one before.
    """

    log = Logger()

    def __init__(
        self,
        task: str,
        relay: str,
        records: RecordClient | None,
        key: str,
        clock: IReactorTime,
        interval: float,
        document: Callable[[], Mapping[str, object]],
    ) -> None:
        self.task = task
        self.relay = relay
        self.records = records
        self.key = key
        self.clock = clock
        self.interval = interval
        self.document = document
        self._last = float("-inf")
        self._writing: Deferred[bool] | None = None

    async def publish(self, force: bool = False) -> None:
        """Write the status now if it is time (or `force`)."""
        now = self.clock.seconds()
        if self.records is None:
            return
        if not force and now - self._last < self.interval:
            return
        if self._writing is not None:
            if not force:
                return
            await self._writing
        self._last = now
        self._writing = ensureDeferred(self._write(self.records))
        self._writing.addBoth(self._written)

    async def publish_now(self) -> bool:
        """Write the status now, after the write under way if any; whether a
        quorum of its replicas took it (true when there are no records to write
        to: nothing is left to try)."""
        if self._writing is not None:
            await self._writing
        if self.records is None:
            return True
        self._last = self.clock.seconds()
        return await self._write(self.records)

    def _written(self, result: object) -> object:
        self._writing = None
        return result

    async def _write(self, records: RecordClient) -> bool:
        document = json.dumps(self.document()).encode()
        try:
            await records.put(self.key, document)
        except (StorageError, BusError) as e:
            self.log.warn(
                "{task} of {relay}: status not published: {why}",
                task=self.task,
                relay=self.relay,
                why=str(e),
            )
            return False
        return True
