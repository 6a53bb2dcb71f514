"""The background rebalance of one relay: what it holds but placement no longer homes
on it is copied to its homes and then deleted here, at a bounded rate.

Why each relay moves its own keys: as with the scrub (`treescale.store.scrub`), a
relay knows its own disk without asking anyone, so the work grows with the relays
and no node must list every chunk. A topology edit (a relay added, a weight or a
domain changed, a relay set to ``drain``) changes the homes of some keys; every
relay computes the same new homes from the same file, so each one alone can tell
which of its keys must leave.

A pass, started at start-up and whenever the `placement_digest` of the topology
changes, walks this relay's chunks, then its records, in the order of their files:

1. count what is misplaced (no longer homed here), for the progress's ``left``;
2. for each misplaced chunk, ask every home whether it holds it (``CHUNK_HAS``),
   copy it (``CHUNK_PUT``) to those that do not, and delete it here only once every
   home has confirmed a copy. A home that cannot be asked, or a copy that fails,
   leaves the chunk here, counted as left, for the next pass;
3. for each misplaced record, write it to every home with its own version (a
   tombstone stays a tombstone), and remove it here once every home has answered,
   unless a newer version arrived meanwhile.

Until then the old holder keeps serving: readers look for a key at its homes
first and then down the rest of its rank. A pass that leaves work is followed by
another `recheck_interval` later; one that leaves nothing ends in ``idle``. A pass
under way when the placement changes again is abandoned and begun anew.

At most `MOVES_AT_ONCE` chunks are in memory at once. Progress goes to the log
(``rebalance_*`` keys) and to the record ``rebalance/<relay>``, which
`read_rebalance_status` gathers for the status page of a registry node.
"""

# Shortcoming: a chunk or record written here by a node still on the placement
# before an edit, after this relay's pass went by it, stays here until the next
# pass (the next edit or restart). It is not lost: chunk readers search every
# relay, record readers the homes of the placement before too, and the scrub
# copies a chunk no home holds to its homes.
#
# Shortcoming: a home that says it holds a chunk of the right size is believed;
# its bytes are not checked before the copy here is deleted. The scrub of that
# home finds a bad copy and fetches a good one from the other homes.

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import (
    Deferred,
    DeferredLock,
    DeferredSemaphore,
    ensureDeferred,
    gatherResults,
)
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from treescale.bus.frames import Kind
from treescale.bus.node import BusNode
from treescale.config import Topology
from treescale.store.chunks import ChunkCorrupt, ChunkError, ChunkMissing, ChunkStore
from treescale.store.placement import Holder, holders_of, place
from treescale.store.rebalance_settings import RebalanceSettings
from treescale.store.records import RecordClient, RecordFiles, Stored, Version
from treescale.store.repair import Pacer, PeerHealth
from treescale.store.scrub import PeerRequests, RelayTask, read_status_records
from treescale.topology_change import placement_digest

__all__ = [
    "STATUS_PREFIX",
    "RebalanceCounts",
    "Rebalancer",
    "RecordShelf",
    "read_rebalance_status",
]

log = Logger()

STATUS_PREFIX = "rebalance/"
"""Key prefix of the records where each relay publishes its rebalance's progress."""

MOVES_AT_ONCE = 4
"""Chunks one relay's rebalance moves at the same time: at most this many chunks
are in its memory, whatever the size of the store."""

IDLE = "idle"
"""Nothing misplaced is left for the placement worked for."""
RUNNING = "running"
WAITING = "waiting"
"""Before the first pass for a placement, or between passes while work is left."""


@dataclass
class RebalanceCounts:
    """What one pass found misplaced and moved, or every pass together."""

    chunks_misplaced: int = 0
    bytes_misplaced: int = 0
    chunks_moved: int = 0
    """Chunks deleted here once every home held them."""
    bytes_moved: int = 0
    copies: int = 0
    """Chunk copies this relay sent to homes that lacked them."""
    records_misplaced: int = 0
    records_moved: int = 0
    failed: int = 0
    """Chunks and records kept here because a home did not answer or a copy
    failed."""

    @property
    def chunks_left(self) -> int:
        return max(0, self.chunks_misplaced - self.chunks_moved)

    @property
    def bytes_left(self) -> int:
        return max(0, self.bytes_misplaced - self.bytes_moved)

    @property
    def records_left(self) -> int:
        return max(0, self.records_misplaced - self.records_moved)

    def moved_json(self) -> dict[str, int]:
        """What was moved, without what was misplaced: for sums over passes."""
        return {
            "chunks_moved": self.chunks_moved,
            "bytes_moved": self.bytes_moved,
            "copies": self.copies,
            "records_moved": self.records_moved,
        }

    def add(self, other: "RebalanceCounts") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict[str, int]:
        """Moved and left, as the status record shows them."""
        return {
            **self.moved_json(),
            "chunks_left": self.chunks_left,
            "bytes_left": self.bytes_left,
            "records_left": self.records_left,
            "failed": self.failed,
        }


@dataclass
class RebalanceProgress:
    """Where the rebalance stands, for the status and the logs."""

    state: str = WAITING
    placement: str = ""
    passes: int = 0
    pass_started: float | None = None
    current: RebalanceCounts = field(default_factory=RebalanceCounts)
    last_pass_ended: float | None = None
    total: RebalanceCounts = field(default_factory=RebalanceCounts)


# Shortcoming: this subclass reaches into the file layout of `RecordFiles`
# (`_path`, `_forget`); its two methods belong on `RecordFiles` itself.
class RecordShelf(RecordFiles):
    """A relay's record files, walked in file order and removed one by one: what
    the rebalance needs beyond what `RecordFiles` answers the bus with."""

    def stored_after(self, after: str, limit: int) -> list[tuple[str, str, Stored]]:
        """Up to `limit` records whose file names follow `after` (``""`` for the
        first), in name order: each as its file name, its key and its copy.

        Reads only the shard folders the page needs; a file that cannot be read
        is left out (and logged).
        """
        page: list[tuple[str, str, Stored]] = []
        for shard in sorted(self.root.iterdir()):
            if not shard.is_dir() or shard.name < after[:2]:
                continue
            for entry in sorted(shard.iterdir()):
                if entry.name <= after or entry.suffix == ".part":
                    continue
                found = self._read_entry(entry)
                if found is None:
                    continue
                page.append(found)
                if len(page) == limit:
                    return page
        return page

    def _read_entry(self, entry: Path) -> tuple[str, str, Stored] | None:
        """One record file's name, key and copy; None when it is gone or damaged."""
        try:
            key = json.loads(entry.read_bytes())["key"]
            stored = self.get(key)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            log.warn(
                "record file {name} unreadable, left alone: {why}",
                name=entry.name,
                why=str(e),
            )
            return None
        return None if stored is None else (entry.name, key, stored)

    def remove_if_unchanged(self, key: str, version: Version) -> bool:
        """Remove this relay's copy of `key` if it is still at `version`; whether
        it was removed (blocking; hold the relay's record lock).

        Not fsynced: a copy that comes back after a power loss is moved again.
        """
        current = self.get(key)
        if current is None or current.version != version:
            return False
        self._path(key).unlink(missing_ok=True)
        self._forget(key)
        return True


class Rebalancer(RelayTask):
    """The rebalance of one relay's chunks and records, run as a child service of
    its bus; `use_topology` is its bus's topology listener (through the relay)."""

    task = "rebalance"
    progress: RebalanceProgress

    def __init__(
        self,
        bus: BusNode,
        chunks: ChunkStore,
        records: RecordShelf,
        record_lock: DeferredLock,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        status_records: RecordClient | None,
        settings: RebalanceSettings | None = None,
        max_chunk: int = 64 * 1024 * 1024,
        wall: Any = time.time,
    ) -> None:
        """`record_lock` is the lock the relay holds around each record request,
        so a copy is never removed between a put's read and its write."""
        self.settings = settings = settings or RebalanceSettings()
        self.progress = RebalanceProgress()
        status = (status_key(bus.me.name), settings.status_interval)
        super().__init__(bus, reactor, pool, status_records, status, wall)
        self.chunks = chunks
        self.records = records
        self.record_lock = record_lock
        self.max_chunk = max_chunk
        # A relay that does not answer is asked again after `recheck_interval`;
        # it is never presumed to hold anything, so "gone" never comes.
        self.health = PeerHealth(settings.recheck_interval, float("inf"))
        self.peers = PeerRequests(
            bus, "rebalance", self.health, settings.request_timeout
        )
        self.pacer = Pacer(settings.chunks_per_second, settings.bytes_per_second)
        self.holders: list[Holder] = []
        self.replicas = 1
        self.record_replicas = 1
        self._recheck: Deferred[None] | None = None
        # The placement before the last edit that moved keys: a chunk homed here
        # that gained homes with it is copied to them (None after a start: the
        # scrub makes missing copies then).
        self.previous: tuple[list[Holder], int] | None = None
        self._aim(bus.topology)
        bus.reach_listeners.append(self._reach_changed)

    def _aim(self, topology: Topology) -> None:
        """Work for `topology`'s placement from now on."""
        self.holders = holders_of(topology)
        self.replicas = min(topology.replicas, len(self.holders))
        self.record_replicas = min(topology.record_replicas, len(self.holders))
        self.progress.placement = placement_digest(topology)

    # Service life.

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._restart()

    def use_topology(
        self, topology: Topology, status_records: RecordClient | None
    ) -> None:
        """Take a topology edit: when it moves keys (a new placement digest), the
        pass under way is abandoned and a new one begins."""
        self.publisher.records = status_records
        old = self.progress.placement
        new = placement_digest(topology)
        before = (self.holders, self.replicas)
        self._aim(topology)
        if new == old:
            return
        self.previous = before
        self.log.info(
            "rebalance of {relay}: placement {old_placement} -> {placement}, "
            "a new pass begins",
            relay=self.me,
            old_placement=old,
            placement=new,
        )
        if self.running:
            self._restart()

    def _restart(self) -> None:
        """Abandon the passes under way (keeping what they moved in the total)
        and begin anew."""
        self._stop_running()
        if self.progress.state == RUNNING:
            self.progress.total.add(self.progress.current)
        self.progress.state = WAITING
        self.progress.current = RebalanceCounts()
        self._start_running()

    async def _run(self) -> None:
        """Passes for one placement, `recheck_interval` apart, until one leaves
        nothing to move."""
        # Published after `start_delay`, when the links have had time to come up
        # (until then the record of the pass before still says where it stood).
        await self._sleep(self.settings.start_delay)
        await self._publish(force=True)
        while True:
            counts = await self.run_pass()
            if counts.chunks_left == 0 and counts.records_left == 0:
                break
            self.progress.state = WAITING
            await self._publish(force=True)
            await self._wait_for_recheck()

        # The last word must reach the records: an operator waits for it.
        self.progress.state = IDLE
        while not await self.publisher.publish_now():
            await self._sleep(self.settings.status_interval)

    async def _wait_for_recheck(self) -> None:
        """Sleep `recheck_interval`, or less: a relay that comes within reach (a
        new one still linking when the pass ran, say) ends the wait, after
        `start_delay` to let the rest of the tree link too."""
        woken: Deferred[None] = Deferred()
        timer = self.clock.callLater(
            self.settings.recheck_interval, woken.callback, None
        )
        self._recheck = woken
        try:
            await woken
        finally:
            self._recheck = None
            if timer.active():
                timer.cancel()

    def _reach_changed(self) -> None:
        """What the bus reaches changed: a waiting pass may try again soon, and
        ask the relays now in reach at once."""
        woken = self._recheck
        if woken is None or woken.called:
            return
        for holder in self.holders:
            if self.bus.reachable(holder.name):
                self.health.may_ask_now(holder.name)
        self._recheck = None
        self.clock.callLater(
            self.settings.start_delay,
            lambda: None if woken.called else woken.callback(None),
        )

    # One pass.

    async def run_pass(self) -> RebalanceCounts:
        """Move everything misplaced here once; what the pass found and did."""
        progress = self.progress
        progress.state = RUNNING
        progress.passes += 1
        progress.pass_started = self.wall()
        progress.current = counts = RebalanceCounts()
        started = self.clock.seconds()

        await self._count_misplaced(counts)
        self.log.info(
            "rebalance pass {rebalance_pass} of {relay} for placement {placement}: "
            "{rebalance_chunks} chunks ({nbytes} bytes) and {rebalance_records} "
            "records to move",
            rebalance_pass=progress.passes,
            relay=self.me,
            placement=progress.placement,
            rebalance_chunks=counts.chunks_misplaced,
            nbytes=counts.bytes_misplaced,
            rebalance_records=counts.records_misplaced,
        )
        await self._publish(force=True)
        await self._move_chunks()
        await self._move_records()
        return self._end_pass(self.clock.seconds() - started)

    def _end_pass(self, elapsed: float) -> RebalanceCounts:
        progress = self.progress
        counts = progress.current
        progress.total.add(counts)
        progress.last_pass_ended = self.wall()
        self.log.info(
            "rebalance pass {rebalance_pass} of {relay} done in {elapsed:.1f} s: "
            "{rebalance_moved} chunks ({nbytes} bytes) and {rebalance_records} "
            "records moved, {rebalance_left} chunks and {rebalance_records_left} "
            "records left",
            rebalance_pass=progress.passes,
            relay=self.me,
            placement=progress.placement,
            elapsed=elapsed,
            rebalance_moved=counts.chunks_moved,
            nbytes=counts.bytes_moved,
            rebalance_records=counts.records_moved,
            rebalance_left=counts.chunks_left,
            rebalance_records_left=counts.records_left,
            rebalance_copies=counts.copies,
            rebalance_failed=counts.failed,
            peers=self.health.not_up(self.clock.seconds()),
        )
        return counts

    async def _count_misplaced(self, counts: RebalanceCounts) -> None:
        """How many chunks (and bytes) and records here placement homes elsewhere."""
        cursor = ""
        while True:
            page, cursor = await self._chunk_page(cursor)
            if not cursor:
                break
            counts.chunks_misplaced += len(page)
            counts.bytes_misplaced += sum(size for _, size in page)

        cursor = ""
        while True:
            records, cursor = await self._record_page(cursor)
            if not cursor:
                break
            counts.records_misplaced += len(records)

    async def _chunk_page(self, after: str) -> tuple[list[tuple[str, int]], str]:
        """The misplaced chunks of the next page of the store after `after`, and
        where the page ended (``""`` past the last chunk)."""
        page: list[tuple[str, int]] = await self._thread(
            self.chunks.sizes_after, after, self.settings.page_size
        )
        if not page:
            return [], ""
        misplaced = [(d, size) for d, size in page if self._needs_work(d)]
        return misplaced, page[-1][0]

    async def _record_page(self, after: str) -> tuple[list[tuple[str, Stored]], str]:
        """The misplaced records of the next page of files after `after`, and the
        last file name of the page (``""`` past the last record)."""
        page: list[tuple[str, str, Stored]] = await self._thread(
            self.records.stored_after, after, self.settings.page_size
        )
        if not page:
            return [], ""
        misplaced = [
            (key, stored)
            for _, key, stored in page
            if self.me not in self._record_homes(key)
        ]
        return misplaced, page[-1][0]

    def _homes(self, digest: str) -> list[str]:
        return [holder.name for holder in place(digest, self.holders, self.replicas)]

    def _homed_here(self, digest: str) -> bool:
        return self.me in self._homes(digest)

    def _needs_work(self, digest: str) -> bool:
        """Whether a chunk here is to move away, or to be copied to homes the
        last edit gave it that no one else will fill: more replicas, or a home
        that left while out of reach (a relay that is still reachable and no
        longer a home moves its copy itself)."""
        homes = self._homes(digest)
        if self.me not in homes:
            return True
        if self.previous is None:
            return False
        holders, replicas = self.previous
        before = {holder.name for holder in place(digest, holders, replicas)}
        gained = set(homes) - before
        lost = before - set(homes)
        return bool(gained) and not any(self.bus.reachable(name) for name in lost)

    def _record_homes(self, key: str) -> list[str]:
        homes = place(key, self.holders, self.record_replicas)
        return [holder.name for holder in homes]

    # Chunks.

    async def _move_chunks(self) -> None:
        """Every misplaced chunk, a page at a time, `MOVES_AT_ONCE` at once."""
        slots = DeferredSemaphore(MOVES_AT_ONCE)
        cursor = ""
        while True:
            page, cursor = await self._chunk_page(cursor)
            if not cursor:
                return
            moves = [slots.run(self._start_move, d, size) for d, size in page]
            await gatherResults(moves, consumeErrors=True)

    def _start_move(self, digest: str, size: int) -> "Deferred[bool]":
        return ensureDeferred(self.move_chunk(digest, size))

    async def move_chunk(self, digest: str, size: int) -> bool:
        """Bring one chunk to its homes, then delete it here; whether it left
        (or, for a chunk homed here, whether every home has it now)."""
        await self._sleep(self.pacer.reserve(size, self.clock.seconds()))
        homes = self._homes(digest)
        if self.me in homes:
            return await self._spread_chunk(digest, size, homes)
        holds = await self._ask_homes(digest, size, homes)
        if None in holds.values():
            return self._kept(digest, "a home did not answer")

        lacking = [name for name in homes if not holds[name]]
        why = await self._copy_lacking(digest, lacking) if lacking else None
        if why is not None:
            return self._kept(digest, why)

        await self._thread(self.chunks.delete, digest)
        return await self._moved(size)

    async def _spread_chunk(self, digest: str, size: int, homes: list[str]) -> bool:
        """Copy a chunk homed here to the homes lacking it; of its holders among
        its homes only the first copies, so each gets one copy, not several."""
        others = [name for name in homes if name != self.me]
        holds = await self._ask_homes(digest, size, others)
        if None in holds.values():
            return self._kept(digest, "a home did not answer")
        holders = [name for name in homes if name == self.me or holds[name]]
        lacking = [name for name in others if not holds[name]]
        if lacking and holders[0] == self.me:
            why = await self._copy_lacking(digest, lacking)
            if why is not None:
                return self._kept(digest, why)
        # Counted as moved: this relay's part in bringing it home is done (a
        # holder before it in the homes' order copies what is still lacking).
        return await self._moved(size)

    async def _copy_lacking(self, digest: str, lacking: Sequence[str]) -> str | None:
        """Send this relay's verified copy to each of `lacking`; why it could
        not (None when every one took it)."""
        data = await self._local_copy(digest)
        if data is None:
            return "no good copy here"
        for target in lacking:
            if not await self._copy_to(target, digest, data):
                return f"the copy to {target} failed"
        return None

    async def _moved(self, size: int) -> bool:
        """Count a chunk brought home, and say so in the status in time."""
        counts = self.progress.current
        counts.chunks_moved += 1
        counts.bytes_moved += size
        await self._publish()
        return True

    def _kept(self, key: str, why: str) -> bool:
        """Count a chunk or record (`key`) that stays here for the next pass."""
        self.progress.current.failed += 1
        self.log.debug(
            "rebalance of {relay}: {key} stays for now: {why}",
            relay=self.me,
            key=key,
            why=why,
        )
        return False

    async def _ask_homes(
        self, digest: str, size: int, homes: Sequence[str]
    ) -> dict[str, bool | None]:
        """For each home: holds a copy of the right size (True), does not
        (False), or gave no answer (None: down, or asked too recently)."""
        holds: dict[str, bool | None] = {}
        for name in homes:
            if not self.health.should_ask(name, self.clock.seconds()):
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

    async def _local_copy(self, digest: str) -> bytes | None:
        """This relay's copy, verified; None when it is missing or bad (the store
        quarantines a bad one, and the scrub of its other holders repairs it)."""
        try:
            data: bytes = await self._thread(self.chunks.read, digest)
        except ChunkMissing:
            return None
        except (ChunkCorrupt, ChunkError, OSError) as e:
            self.log.error(
                "rebalance of {relay} cannot use its copy of chunk {digest}: {why}",
                relay=self.me,
                digest=digest,
                why=str(e),
            )
            return None
        return data

    async def _copy_to(self, target: str, digest: str, data: bytes) -> bool:
        """Put this relay's copy on `target`; whether it took it."""
        meta = {"digest": digest, "size": len(data)}
        answer = await self.peers.request_meta(target, Kind.CHUNK_PUT, meta, data)
        if answer is None or not answer.get("stored"):
            return False
        self.progress.current.copies += 1
        return True

    # Records.

    async def _move_records(self) -> None:
        """Every misplaced record, a page at a time."""
        cursor = ""
        while True:
            page, cursor = await self._record_page(cursor)
            if not cursor:
                return
            for key, stored in page:
                await self.move_record(key, stored)

    async def move_record(self, key: str, stored: Stored) -> bool:
        """Write one record, at its own version, to every home, then remove it
        here unless it changed meanwhile; whether it left."""
        value = stored.value or b""
        await self._sleep(self.pacer.reserve(len(value), self.clock.seconds()))
        meta = {
            "key": key,
            "version": stored.version.to_list(),
            "deleted": stored.value is None,
        }
        for name in self._record_homes(key):
            if not self.health.should_ask(name, self.clock.seconds()):
                return self._kept(key, f"{name} did not answer")
            answer = await self.peers.request_meta(name, Kind.RECORD_PUT, meta, value)
            if answer is None:
                return self._kept(key, f"{name} did not take it")

        removed = await self._remove_record(key, stored.version)
        if removed:
            self.progress.current.records_moved += 1
            await self._publish()
        return removed

    async def _remove_record(self, key: str, version: Version) -> bool:
        """Remove this relay's copy under the record lock, if still at `version`.

        The lock is let go when the disk work ends, not when this pass does: a
        pass abandoned meanwhile must not let a record put in while the file is
        being removed.
        """
        await self.record_lock.acquire()
        work: Deferred[bool] = self._thread(
            self.records.remove_if_unchanged, key, version
        )
        work.addBoth(self._unlock_records)
        ended: Deferred[bool] = Deferred()
        work.chainDeferred(ended)
        removed = await ended
        if not removed:
            self._kept(key, "a newer version arrived here")
        return removed

    def _unlock_records(self, result: object) -> object:
        self.record_lock.release()
        return result

    # Status.

    def status(self) -> dict[str, object]:
        """Where this relay's rebalance stands, as JSON-ready values."""
        progress = self.progress
        return {
            "relay": self.me,
            "state": progress.state,
            "placement": progress.placement,
            "passes": progress.passes,
            "pass_started": progress.pass_started,
            "last_pass_ended": progress.last_pass_ended,
            **progress.current.to_json(),
            "total": progress.total.moved_json(),
            "peers_not_up": self.health.not_up(self.clock.seconds()),
            "settings": {
                "bytes_per_second": self.settings.bytes_per_second,
                "chunks_per_second": self.settings.chunks_per_second,
                "recheck_interval": self.settings.recheck_interval,
            },
            "updated": self.wall(),
        }


def status_key(relay: str) -> str:
    """The record holding relay `relay`'s rebalance status."""
    return f"{STATUS_PREFIX}{relay}"


SUMMED = (
    "chunks_moved",
    "bytes_moved",
    "chunks_left",
    "bytes_left",
    "records_moved",
    "records_left",
)
"""The figures of the relays' statuses that `read_rebalance_status` adds up."""


async def read_rebalance_status(
    records: RecordClient, relays: Sequence[str], now: float
) -> dict[str, object]:
    """Every relay's last published rebalance status, and the sums over them.

    A relay that never published is None, as in `read_repair_status`.
    """
    found = await read_status_records(records, STATUS_PREFIX, relays, now)
    totals = dict.fromkeys(SUMMED, 0)
    for status in found.values():
        for name, value in _figures(status).items():
            totals[name] += value
    return {"relays": found, "total": totals}


def _figures(status: Mapping[str, Any] | None) -> dict[str, int]:
    """The summed figures a status holds, ignoring what is not a count."""
    if status is None:
        return {}
    return {
        name: value
        for name in SUMMED
        if isinstance(value := status.get(name), int) and not isinstance(value, bool)
    }
