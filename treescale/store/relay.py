"""A store relay's answers to bus events: chunks and records on its own disk.

Chunk and record files are read and written in the reactor's thread pool, so one slow
disk operation never stalls the links of this relay. Record work runs one request at a
time, since a record put is a read-compare-replace of one file.

For garbage collection a relay lists its chunks with their ages (CHUNK_AGES),
deletes the ones a collector names if they are still old enough (CHUNK_SWEEP), and
drops tombstones past a horizon (RECORD_PURGE); see `treescale.gc.collector`.

Each relay also runs its scrub (`treescale.store.scrub.Scrubber`) and its rebalance
(`treescale.store.rebalance.Rebalancer`) as child services of its bus node, so they
start and stop with the node; a topology edit the bus takes reaches both.
"""

import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from treescale.bus.frames import PIECE_SIZE, Kind
from treescale.bus.node import BusNode, HandlerError, Message
from treescale.config import Topology
from treescale.store.chunks import ChunkCorrupt, ChunkError, ChunkMissing, ChunkStore
from treescale.store.digests import ALGORITHM
from treescale.store.placement import holders_of
from treescale.store.rebalance import Rebalancer, RecordShelf
from treescale.store.records import (
    HybridClock,
    RecordClient,
    RecordFiles,
    answer_record_get,
    answer_record_list,
    answer_record_purge,
    answer_record_put,
)
from treescale.store.scrub import Scrubber
from treescale.store.scrub_settings import ScrubSettings, settings_from_environment


class Relay:
    """Binds one relay's chunk store and record files to its bus node."""

    log = Logger()

    def __init__(
        self,
        bus: BusNode,
        root: Path,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        max_chunk: int,
        scrub: ScrubSettings | None = None,
    ) -> None:
        """Bind the handlers, and add the scrub to the bus node's services.

        Fields of `scrub` (the defaults when None) may be overridden by the
        environment (see `treescale.store.scrub.settings_from_environment`).
        """
        self.bus = bus
        self.chunks = ChunkStore(root)
        self.records = RecordShelf(root)
        self.reactor = reactor
        self.pool = pool
        self.max_chunk = max_chunk
        self._record_lock = DeferredLock()
        self._clock = HybridClock(bus.me.id)
        self.scrubber = self._make_scrubber(
            settings_from_environment(os.environ, scrub or ScrubSettings())
        )
        self.rebalancer = self._make_rebalancer()
        bus.topology_listeners.append(self._topology_changed)
        handlers: dict[Kind, Callable[[Message], Awaitable[Message]]] = {
            Kind.CHUNK_PUT: self.chunk_put,
            Kind.CHUNK_GET: self.chunk_get,
            Kind.CHUNK_HAS: self.chunk_has,
            Kind.RECORD_GET: self.record_get,
            Kind.RECORD_PUT: self.record_put,
            Kind.RECORD_LIST: self.record_list,
            Kind.RECORD_PURGE: self.record_purge,
            Kind.CHUNK_AGES: self.chunk_ages,
            Kind.CHUNK_SWEEP: self.chunk_sweep,
        }
        bus.handlers.update(handlers)

    def _make_scrubber(self, settings: ScrubSettings) -> Scrubber:
        """This relay's scrub, over every store of the topology."""
        topology = self.bus.topology
        scrubber = Scrubber(
            self.bus,
            self.chunks,
            self.reactor,
            self.pool,
            holders_of(topology),
            topology.replicas,
            self._status_records(topology),
            settings,
            max_chunk=self.max_chunk,
        )
        scrubber.setServiceParent(self.bus)  # type: ignore[no-untyped-call]
        return scrubber

    def _make_rebalancer(self) -> Rebalancer:
        """This relay's rebalance, with the ``[rebalance]`` settings of its tree."""
        topology = self.bus.topology
        rebalancer = Rebalancer(
            self.bus,
            self.chunks,
            self.records,
            self._record_lock,
            self.reactor,
            self.pool,
            self._status_records(topology),
            topology.rebalance,
            max_chunk=self.max_chunk,
        )
        rebalancer.setServiceParent(self.bus)  # type: ignore[no-untyped-call]
        return rebalancer

    def _status_records(self, topology: Topology) -> RecordClient:
        """The record client the scrub and the rebalance publish their status by."""
        return RecordClient(
            self.bus, holders_of(topology), topology.record_replicas, self._clock
        )

    def _topology_changed(self, topology: Topology) -> None:
        """A topology edit the bus took: scrub by its holders, and rebalance
        when it moved keys."""
        # Shortcoming: only placement follows an edit; [scrub] and [rebalance]
        # settings changed in the file apply at the next start.
        records = self._status_records(topology)
        self.scrubber.use_holders(holders_of(topology), topology.replicas, records)
        self.rebalancer.use_topology(topology, records)

    async def record_get(self, message: Message) -> Message:
        return await self._record_work(answer_record_get, message)

    async def record_put(self, message: Message) -> Message:
        return await self._record_work(answer_record_put, message)

    async def record_list(self, message: Message) -> Message:
        return await self._record_work(answer_record_list, message)

    async def record_purge(self, message: Message) -> Message:
        return await self._record_work(answer_record_purge, message)

    async def _record_work(
        self, answer: Callable[[RecordFiles, Message], Message], message: Message
    ) -> Message:
        # The lock is let go when the disk work ends, not when the handler does:
        # a request cancelled meanwhile (its requester gone, its deadline past)
        # must not let the next write of the same record in while this one runs.
        await self._record_lock.acquire()
        work = deferToThreadPool(self.reactor, self.pool, answer, self.records, message)
        work.addBoth(self._release_records)
        ended: Deferred[Message] = Deferred()
        work.chainDeferred(ended)
        return await ended

    def _release_records(self, result: object) -> object:
        self._record_lock.release()
        return result

    async def chunk_put(self, message: Message) -> Message:
        """Keep a chunk whose bytes hash to its digest; refuse anything else.

        A put marked ``repair`` comes from a requester that found this relay's
        copy missing or rotten: a copy that fails its digest is set aside in
        quarantine (and logged) before the good bytes take its place.
        """
        digest = _digest_of(message)
        size = message.meta.get("size")
        if not isinstance(size, int) or size != len(message.data):
            raise HandlerError("bad_request", "chunk size does not match its data")
        if size > self.max_chunk:
            raise HandlerError("too_large", f"chunk over {self.max_chunk} bytes")
        if message.meta.get("repair") is True:
            await deferToThreadPool(
                self.reactor, self.pool, self.chunks.set_aside_if_corrupt, digest
            )
        try:
            await deferToThreadPool(
                self.reactor, self.pool, self.chunks.write, digest, message.data
            )
        except ChunkCorrupt as e:
            self.log.warn(
                "refused chunk {digest} from {origin}: {why}",
                digest=digest,
                origin=message.origin,
                why=str(e),
            )
            raise HandlerError("digest_mismatch", str(e)) from e
        except ChunkError as e:
            raise HandlerError("bad_request", str(e)) from e
        return Message(Kind.REPLY, message.origin, {"stored": True})

    # Shortcoming: the reply holds the whole chunk in memory until it is sent; a
    # peer that does not read pins up to max_inbound_requests chunks until
    # stall_timeout drops its link. Streaming the file in pieces would not.
    async def chunk_get(self, message: Message) -> Message:
        """A chunk's bytes as stored, for the requester to verify.

        Not hashed here: the requester verifies every chunk it fetches, and puts
        good bytes back in place of a rotten copy (`ChunkStore.read_unchecked`).
        Read in the pieces the bus sends, so none is cut from a copy of the whole;
        for a requester of this process, read whole, as it is handed over whole.
        """
        digest = _digest_of(message)
        whole = self.bus.in_memory(message.origin)
        try:
            pieces = await deferToThreadPool(
                self.reactor,
                self.pool,
                self.chunks.read_unchecked,
                digest,
                -1 if whole else PIECE_SIZE,
            )
        except ChunkMissing as e:
            raise HandlerError("chunk_missing", f"{digest} is not here") from e
        except ChunkError as e:
            raise HandlerError("bad_request", str(e)) from e
        size = sum(len(piece) for piece in pieces)
        if whole:
            data = pieces[0] if pieces else b""
            return Message(Kind.REPLY, message.origin, {"size": size}, data)
        return Message(Kind.REPLY, message.origin, {"size": size}, pieces=pieces)

    async def chunk_has(self, message: Message) -> Message:
        """Whether this relay holds a chunk, and its size (without reading it)."""
        digest = _digest_of(message)
        try:
            size = self.chunks.size(digest)
        except ChunkError as e:
            raise HandlerError("bad_request", str(e)) from e
        return Message(
            Kind.REPLY, message.origin, {"has": size is not None, "size": size}
        )

    async def chunk_ages(self, message: Message) -> Message:
        """A page of this relay's chunks in digest order, with size and age.

        Ages are seconds by this relay's clock, so the collector never compares
        its clock with ours.
        """
        after = message.meta.get("after")
        limit = message.meta.get("limit")
        if not isinstance(after, str) or (after and not after.startswith(ALGORITHM)):
            raise HandlerError("bad_request", "chunk listing without a start digest")
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise HandlerError("bad_request", "chunk listing without a page size")
        if not 1 <= limit <= MAX_AGES_PAGE:
            raise HandlerError("bad_request", f"page size must be 1..{MAX_AGES_PAGE}")
        try:
            page = await deferToThreadPool(
                self.reactor, self.pool, self.chunks.aged_after, after, limit
            )
        except ChunkError as e:
            raise HandlerError("bad_request", str(e)) from e
        now = time.time()
        entries = [[c.digest, c.size, max(now - c.written, 0.0)] for c in page]
        return Message(
            Kind.REPLY, message.origin, {}, json.dumps(entries).encode("ascii")
        )

    async def chunk_sweep(self, message: Message) -> Message:
        """Delete the listed chunks that are older than ``older_than`` seconds.

        The age is checked again here, at the moment of deletion, so a chunk
        pushed again since the collector looked is kept.
        """
        older_than = message.meta.get("older_than")
        if isinstance(older_than, bool) or not isinstance(older_than, int | float):
            raise HandlerError("bad_request", "sweep without an age")
        if older_than < MIN_SWEEP_AGE:
            raise HandlerError("bad_request", f"sweep age under {MIN_SWEEP_AGE:.0f} s")
        try:
            digests = json.loads(message.data)
        except ValueError as e:
            raise HandlerError("bad_request", "sweep without a digest list") from e
        if not isinstance(digests, list) or len(digests) > MAX_AGES_PAGE:
            raise HandlerError("bad_request", "sweep without a digest list")
        try:
            deleted, freed = await deferToThreadPool(
                self.reactor, self.pool, self._sweep, digests, float(older_than)
            )
        except ChunkError as e:
            raise HandlerError("bad_request", str(e)) from e
        if deleted:
            self.log.info(
                "garbage collection deleted {count} chunks, {nbytes} bytes",
                count=deleted,
                nbytes=freed,
            )
        return Message(
            Kind.REPLY, message.origin, {"deleted": deleted, "nbytes": freed}
        )

    def _sweep(self, digests: list[object], older_than: float) -> tuple[int, int]:
        """Delete each chunk that is old enough (blocking); count and bytes."""
        cutoff = time.time() - older_than
        deleted = freed = 0
        for digest in digests:
            if not isinstance(digest, str):
                raise ChunkError("sweep of something that is not a digest")
            size = self.chunks.delete_if_older(digest, cutoff)
            if size is not None:
                deleted += 1
                freed += size
        return deleted, freed


MAX_AGES_PAGE = 1000
"""Chunks one relay lists, or sweeps, for one request."""
MIN_SWEEP_AGE = 60.0
"""Seconds a chunk file is kept at the least, whatever a sweep request asks: a
floor under the collector's grace period."""


def _digest_of(message: Message) -> str:
    digest = message.meta.get("digest")
    if not isinstance(digest, str):
        raise HandlerError("bad_request", "chunk request without a digest")
    return digest
