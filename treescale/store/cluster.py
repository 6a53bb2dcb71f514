"""The `Storage` the registry uses: blobs and records spread over the tree's relays."""

from typing import cast

from twisted.internet.interfaces import IConsumer, IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from treescale.bus.node import BusNode
from treescale.config import Topology
from treescale.store.blobs import (
    ChunkedUpload,
    Recipe,
    UploadState,
    download_window,
    read_blob,
    recipe_key,
    resume_upload,
)
from treescale.store.budget import ChunkBudget
from treescale.store.chunkclient import ChunkClient, ChunkSettings
from treescale.store.digests import ALGORITHM, digest_of
from treescale.store.errors import BlobUnknown, StorageUnavailable
from treescale.store.hashing import hash_in_pool
from treescale.store.placement import holders_of
from treescale.store.rebalance import read_rebalance_status
from treescale.store.records import HybridClock, RecordClient
from treescale.store.scrub import read_repair_status


class ClusterStorage:
    """Blobs cut into chunks on the relays; records on quorums of relays."""

    log = Logger()

    def __init__(
        self,
        bus: BusNode,
        topology: Topology,
        clock: IReactorTime,
        pool: ThreadPool | None = None,
    ) -> None:
        """`pool`, when given, hashes fetched chunks off the reactor thread."""
        holders = holders_of(topology)
        self.bus = bus
        self.chunk_size = topology.chunk_size
        self.window = topology.window
        self.window_per_relay = topology.window_per_relay
        self.budget = ChunkBudget(topology.buffer_chunks)
        hash_in = None
        if pool is not None:
            hash_in = hash_in_pool(cast(IReactorFromThreads, clock), pool)
        self.chunks = ChunkClient(
            bus, holders, clock, ChunkSettings(replicas=topology.replicas), hash_in
        )
        self.records = RecordClient(
            bus, holders, topology.record_replicas, HybridClock(bus.me.id)
        )
        bus.topology_listeners.append(self._topology_changed)

    def _topology_changed(self, topology: Topology) -> None:
        """Place new chunks and records by an edited tree; reads still search
        every relay, so chunks not yet moved are found where they are."""
        holders = holders_of(topology)
        self.chunks.holders = holders
        self.chunks.replicas = min(topology.replicas, len(holders))
        self.records.use_holders(holders, topology.record_replicas)

    def relays_up(self) -> int:
        """How many store relays this node can reach now."""
        return sum(
            1 for holder in self.chunks.holders if self.bus.reachable(holder.name)
        )

    async def recipe(self, digest: str) -> Recipe | None:
        data = await self.records.get(recipe_key(digest))
        if data is None:
            return None
        try:
            return Recipe.decode(data)
        except (ValueError, KeyError, TypeError) as e:
            self.log.error(
                "recipe of {digest} unreadable: {why}", digest=digest, why=str(e)
            )
            raise StorageUnavailable(f"the recipe of {digest} is damaged") from e

    async def blob_size(self, digest: str) -> int | None:
        recipe = await self.recipe(digest)
        return None if recipe is None else recipe.size

    def blob_upload(self, algorithm: str = ALGORITHM) -> ChunkedUpload:
        return ChunkedUpload(
            self.chunks,
            self.records,
            self.chunk_size,
            self.window,
            self.budget,
            algorithm,
        )

    async def blob_resume(self, state: bytes) -> ChunkedUpload:
        return await resume_upload(
            self.chunks,
            self.records,
            self.chunk_size,
            self.window,
            self.budget,
            UploadState.decode(state),
        )

    async def repair_status(self, now: float) -> dict[str, object]:
        """What every relay's scrub last published (see `read_repair_status`)."""
        relays = [holder.name for holder in self.chunks.holders]
        return await read_repair_status(self.records, relays, now)

    async def rebalance_status(self, now: float) -> dict[str, object]:
        """What every relay's rebalance last published (see
        `read_rebalance_status`)."""
        relays = [holder.name for holder in self.chunks.holders]
        return await read_rebalance_status(self.records, relays, now)

    async def blob_read(
        self, digest: str, start: int, end: int, consumer: IConsumer
    ) -> None:
        recipe = await self.recipe(digest)
        if recipe is None:
            raise BlobUnknown(digest)
        window = download_window(self.window, self.window_per_relay, self.relays_up())
        await read_blob(self.chunks, recipe, start, end, consumer, window, self.budget)

    async def blob_put(self, data: bytes, algorithm: str = ALGORITHM) -> str:
        digest = digest_of(data, algorithm)
        upload = self.blob_upload(algorithm)
        upload.write(data)
        await upload.finish(digest)
        return digest

    async def record_get(self, key: str) -> bytes | None:
        return await self.records.get(key)

    async def record_put(self, key: str, value: bytes | None) -> None:
        await self.records.put(key, value)

    async def record_list(self, prefix: str, after: str, limit: int) -> list[str]:
        return await self.records.list_keys(prefix, after, limit)
