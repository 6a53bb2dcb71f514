"""One garbage collection over a live cluster, at a bounded rate.

The order of the walk is what keeps pushes safe while it runs:

1. Upload sessions first: a session that finishes later writes its recipe, and the
   chunks it named are already marked live.
2. Then the roots (links and manifest records), then the recipes. A recipe listed
   old but written again since (a push of the same blob) survives: its tombstone
   is versioned just after the write it judged (`RecordClient.delete_after`), so
   the fresh write stays newer on every replica.
3. Then each relay's chunks, which the relay deletes only if they are still older
   than the grace period at that moment.

Shortcoming: chunks cut by one request that has yet to be saved in its session
record (a single ``PATCH`` or monolithic ``PUT`` still streaming) are named by no
record; one lasting longer than the grace period would lose its first chunks. The
grace period must exceed the longest upload request.
"""

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from treescale.bus.frames import Kind
from treescale.gc.plan import (
    GcReport,
    chunks_to_sweep,
    digest_of_key,
    manifest_references,
    recipe_is_garbage,
    session_chunks,
    session_expired,
)
from treescale.gc.settings import GcSettings
from treescale.registry.metadata import ManifestInfo
from treescale.registry.saved_uploads import SESSION_PREFIX, SessionRecord
from treescale.store.blobs import Recipe
from treescale.store.cluster import ClusterStorage
from treescale.store.errors import StorageError
from treescale.store.records import Listed
from treescale.store.relay import MAX_AGES_PAGE

log = Logger()

T = TypeVar("T")

REQUEST_TIMEOUT = 30.0


class Pace:
    """Spreads work at `rate` units a second: `spend` waits until there is room."""

    def __init__(self, clock: IReactorTime, rate: float) -> None:
        self._clock = clock
        self._rate = rate
        self._next = clock.seconds()

    async def spend(self, units: int = 1) -> None:
        now = self._clock.seconds()
        self._next = max(self._next, now) + units / self._rate
        wait = self._next - now - 1.0  # a second of burst is allowed
        if wait > 0:
            await deferLater(self._clock, wait, lambda: None)


@implementer(IConsumer)
class _Collect:
    """Keeps the bytes of one small blob (a manifest) read for marking."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.parts.append(data)


class Collector:
    """One collection's walk; `run` returns what it found and removed."""

    def __init__(
        self,
        storage: ClusterStorage,
        clock: IReactorTime,
        settings: GcSettings,
        upload_idle_timeout: float,
        dry_run: bool,
        wall: Callable[[], float],
    ) -> None:
        self.storage = storage
        self.records = storage.records
        self.clock = clock
        self.settings = settings
        self.idle = upload_idle_timeout
        self.wall = wall
        self.report = GcReport(dry_run)
        self.records_pace = Pace(clock, settings.records_per_second)
        self.pages_pace = Pace(clock, settings.chunk_pages_per_second)
        self.live_blobs: set[str] = set()
        self.live_chunks: set[str] = set()
        self.roots_known = True

    async def run(self) -> GcReport:
        await self._sessions()
        await self._roots()
        # With what the roots name not wholly known, no recipe may go either.
        self.roots_known = not self.report.errors
        await self._recipes()
        # A record that could not be read leaves the chunks it names unknown:
        # sweeping then could delete live data, so nothing is swept at all.
        if self.report.errors:
            self.report.errors.append(
                f"no chunk swept: {len(self.report.errors)} errors while finding "
                "what is live; run again when every relay answers"
            )
            log.warn("garbage collection swept no chunk: errors while marking")
        else:
            await self._chunks()
        if self.settings.purge_tombstones and not self.report.dry_run:
            await self._tombstones()
        log.info("garbage collection done: {summary}", summary=self.report.summary())
        return self.report

    async def _each(
        self, prefix: str, visit: Callable[[Listed], Awaitable[None]]
    ) -> None:
        """Visit every live record under `prefix`, a page at a time, paced."""
        after = ""
        while True:
            page = await self.records.list_entries(
                prefix, after, self.settings.page_size
            )
            for entry in page:
                await self.records_pace.spend()
                await visit(entry)
            if len(page) < self.settings.page_size:
                return
            after = page[-1].key

    async def _sessions(self) -> None:
        async def visit(entry: Listed) -> None:
            value = await self._listed_value(entry)
            if value is None:
                return
            try:
                record = SessionRecord.decode(value)
            except ValueError:
                self.report.errors.append(f"unreadable session {entry.key}")
                return
            if not session_expired(record, self.wall(), self.idle):
                self.live_chunks |= session_chunks(record)
                return
            self.report.sessions.append(record.uuid)
            if not self.report.dry_run:
                await self._delete(entry, keep_chunks=set())

        await self._each(SESSION_PREFIX, visit)

    async def _roots(self) -> None:
        async def link(entry: Listed) -> None:
            digest = digest_of_key(entry.key, "link/")
            if digest is not None:
                self.live_blobs.add(digest)

        async def manifest(entry: Listed) -> None:
            digest = digest_of_key(entry.key, "manifest/")
            if digest is None:
                return
            self.live_blobs.add(digest)
            value = await self._listed_value(entry)
            if value is None:
                return
            info = ManifestInfo.decode(value)
            data = await self._read(digest, info.size)
            if data is not None:
                self.live_blobs |= manifest_references(data, info.media_type)

        await self._each("link/", link)
        await self._each("manifest/", manifest)

    async def _listed_value(self, entry: Listed) -> bytes | None:
        """The value of a record the listing found live; None, with an error in
        the report, when a read finds none (a record read short of its copies:
        what it names must then count as unknown, not as garbage)."""
        stored = await self.records.get_stored(entry.key)
        if stored is None:
            self.report.errors.append(f"listed record {entry.key} not found by a read")
            return None
        return stored.value  # None when deleted since the listing: fine

    async def _read(self, digest: str, size: int) -> bytes | None:
        """A manifest's bytes; None (keeping what it names unknown) when unreadable."""
        sink = _Collect()
        try:
            await self.storage.blob_read(digest, 0, size, sink)
        except StorageError as e:
            self.report.errors.append(f"manifest {digest} unreadable: {e}")
            return None
        return b"".join(sink.parts)

    async def _recipes(self) -> None:
        async def visit(entry: Listed) -> None:
            digest = entry.key.removeprefix("recipe/")
            value = await self._listed_value(entry)
            if value is None:
                return
            try:
                recipe = Recipe.decode(value)
            except (ValueError, KeyError, TypeError):
                self.report.errors.append(f"unreadable recipe {entry.key}")
                return
            chunks = {chunk.digest for chunk in recipe.chunks}
            now, grace = self.wall(), self.settings.grace
            if not self.roots_known or not recipe_is_garbage(
                digest, entry.version.wall_ms, self.live_blobs, now, grace
            ):
                self.live_chunks |= chunks
                return
            self.report.blobs.append(digest)
            self.report.blob_bytes += recipe.size
            if self.report.dry_run:
                return
            await self._delete(entry, keep_chunks=chunks)

        await self._each("recipe/", visit)

    async def _delete(self, entry: Listed, keep_chunks: set[str]) -> None:
        """Tombstone a record judged garbage; if that fails, keep its chunks."""
        try:
            await self.records.delete_after(entry.key, entry.version)
        except StorageError as e:
            self.report.errors.append(f"could not delete {entry.key}: {e}")
            self.live_chunks |= keep_chunks
            if entry.key.startswith(SESSION_PREFIX):
                self.report.sessions.remove(entry.key.removeprefix(SESSION_PREFIX))
            elif entry.key.startswith("recipe/"):
                self.report.blobs.remove(entry.key.removeprefix("recipe/"))
            return
        log.info("garbage collection deleted {key}", key=entry.key)

    async def _chunks(self) -> None:
        for holder in self.storage.chunks.holders:
            try:
                await self._relay_chunks(holder.name)
            except Exception as e:
                self.report.errors.append(f"chunks of {holder.name}: {e}")

    async def _relay_chunks(self, relay: str) -> None:
        """Walk one relay's chunks and sweep (or count) those that may go."""
        after = ""
        limit = min(self.settings.page_size, MAX_AGES_PAGE)
        while True:
            await self.pages_pace.spend()
            reply = await self._ask(
                relay, Kind.CHUNK_AGES, {"after": after, "limit": limit}
            )
            page = [(str(d), int(n), float(a)) for d, n, a in json.loads(reply.data)]
            doomed = chunks_to_sweep(page, self.live_chunks, self.settings.grace)
            if doomed and self.report.dry_run:
                self.report.chunks += len(doomed)
                self.report.chunk_bytes += sum(size for _, size in doomed)
            elif doomed:
                await self.pages_pace.spend()
                swept = await self._ask(
                    relay,
                    Kind.CHUNK_SWEEP,
                    {"older_than": int(self.settings.grace)},
                    json.dumps([digest for digest, _ in doomed]).encode(),
                )
                self.report.chunks += int(swept.meta.get("deleted", 0))
                self.report.chunk_bytes += int(swept.meta.get("nbytes", 0))
            if len(page) < limit:
                return
            after = page[-1][0]

    async def _tombstones(self) -> None:
        """Ask every relay to drop its tombstones past the horizon."""
        limit = 1000
        for holder in self.storage.chunks.holders:
            try:
                while True:
                    await self.pages_pace.spend()
                    reply = await self._ask(
                        holder.name,
                        Kind.RECORD_PURGE,
                        {
                            "older_than": int(self.settings.tombstone_horizon),
                            "limit": limit,
                        },
                    )
                    purged = int(reply.meta.get("purged", 0))
                    self.report.tombstones += purged
                    if purged < limit:
                        break
            except Exception as e:
                self.report.errors.append(f"tombstones of {holder.name}: {e}")

    def _ask(
        self, relay: str, kind: Kind, meta: dict[str, Any], data: bytes = b""
    ) -> "Deferred[Any]":
        return self.storage.bus.request(
            relay, kind, meta, data, max_reply=1024 * 1024, timeout=REQUEST_TIMEOUT
        )


async def run_gc(
    storage: ClusterStorage,
    clock: IReactorTime,
    settings: GcSettings,
    upload_idle_timeout: float,
    *,
    dry_run: bool,
    wall: Callable[[], float] | None = None,
) -> GcReport:
    """Collect the cluster's garbage (or, in a dry run, only report it).

    `wall` is the clock record versions and session times are compared with; by
    default the system's.
    """
    collector = Collector(
        storage,
        clock,
        settings,
        upload_idle_timeout,
        dry_run,
        wall if wall is not None else time.time,
    )
    return await collector.run()
