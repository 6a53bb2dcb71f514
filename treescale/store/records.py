"""Small mutable records (tags, links, recipes): versioned, replicated, read by quorum.

A record is a key and a value of a few kilobytes at most. It lives on the
`record_replicas` relays that rendezvous hashing picks for its key. Every write carries
a version from a hybrid logical clock (wall milliseconds, a counter, the writer's node
id), so versions from different writers order totally and a newer write wins on every
replica. A read asks every replica, waits for a quorum, takes the newest answer and
writes it back to the replicas that answered with something older (read repair).

On a relay, a record is one file, replaced atomically:

    ROOT/records/<first 2 hex of sha256(key)>/<sha256(key) hex>

holding a JSON document: the key, its version, whether it is a deletion, and the value
in base64. A deletion is kept as a tombstone so an old replica cannot bring the value
back.

Records under `LISTED_PREFIXES` (repositories, tags, referrers, and what garbage
collection walks) can also be listed in
key order. Files are named by hash, so each relay keeps an index of those keys in
memory, built from its files on the first listing and kept up to date by every write.
A listing asks every relay, since any may hold some of the keys; see
`RecordClient.list_keys` for why it needs all but ``quorum - 1`` of them to answer.
"""

import base64
import bisect
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from treescale.bus.frames import Kind
from treescale.bus.node import BusNode, HandlerError, Message
from treescale.store.errors import StorageUnavailable
from treescale.store.placement import Holder, place

log = Logger()

MAX_RECORD_SIZE = 1024 * 1024
MAX_VERSION_PART = 2**63 - 1
MAX_CLOCK_SKEW = 600.0
"""Seconds a version's wall time may run ahead of a relay's clock: a version from
far in the future would win every later write."""
RECORD_TIMEOUT = 10.0

LISTED_PREFIXES = (
    "repo/",
    "tag/",
    "referrer/",
    "link/",
    "manifest/",
    "recipe/",
    "upload/",
)
"""Key prefixes whose records relays index so they can be listed (the last four
so that garbage collection can walk every blob, link, manifest and upload)."""
MAX_LIST_PAGE = 1000
"""The most keys one relay returns for one listing request."""
MAX_LIST_REPLY = 4 * 1024 * 1024
"""Bytes one relay's listing answer may take: a full page of the longest keys."""


@dataclass(frozen=True, order=True)
class Version:
    """A hybrid logical clock reading: orders writes across nodes."""

    wall_ms: int
    counter: int
    node: int

    def to_list(self) -> list[int]:
        return [self.wall_ms, self.counter, self.node]

    @classmethod
    def from_list(cls, value: object) -> "Version":
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(
                isinstance(part, int) and 0 <= part <= MAX_VERSION_PART
                for part in value
            )
        ):
            raise ValueError(f"not a record version: {str(value)[:80]}")
        return cls(value[0], value[1], value[2])


class HybridClock:
    """Versions that grow even when the wall clock stalls or steps back."""

    def __init__(self, node: int, wall: Callable[[], float] = time.time) -> None:
        self.node = node
        self._wall = wall
        self._last = Version(0, 0, node)

    def now(self) -> Version:
        wall_ms = int(self._wall() * 1000)
        if wall_ms > self._last.wall_ms:
            self._last = Version(wall_ms, 0, self.node)
        else:
            self._last = Version(self._last.wall_ms, self._last.counter + 1, self.node)
        return self._last

    def observe(self, seen: Version) -> None:
        """Move past a version read from elsewhere, so our next write is newer.

        Relays refuse versions more than `MAX_CLOCK_SKEW` ahead of their clocks, so
        what is read here is never far in the future.
        """
        if (seen.wall_ms, seen.counter) > (self._last.wall_ms, self._last.counter):
            self._last = Version(seen.wall_ms, seen.counter, self.node)


@dataclass(frozen=True)
class Stored:
    """One replica's copy of a record."""

    version: Version
    value: bytes | None


@dataclass(frozen=True)
class Listed:
    """One key of a listing, as one replica knows it."""

    key: str
    version: Version
    deleted: bool


def is_listed(key: str) -> bool:
    """Whether relays index this key for listing."""
    return key.startswith(LISTED_PREFIXES)


class RecordFiles:
    """The records one relay keeps on its disk."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        """Open (creating if needed) a relay's records; clear a crash's leftovers."""
        self.root = root / "records"
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self._listed: dict[str, Listed] | None = None
        self._listed_keys: list[str] = []
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Delete the temporary files of writes a crash cut short.

        A record is replaced by renaming a complete temporary file over it, so a
        leftover was never the record: the record is still its previous version.
        """
        removed = 0
        for part in self.root.glob("*/*.part"):
            part.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info(
                "Removed {count} unfinished record writes from {path}",
                count=removed,
                path=str(self.root),
            )

    def _path(self, key: str) -> Path:
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.root / name[:2] / name

    def get(self, key: str) -> Stored | None:
        """The stored copy, or None when this relay never saw the key."""
        try:
            document = json.loads(self._path(key).read_bytes())
        except FileNotFoundError:
            return None
        value = None if document["deleted"] else base64.b64decode(document["value"])
        return Stored(Version.from_list(document["version"]), value)

    def put(self, key: str, stored: Stored) -> bool:
        """Keep `stored` unless a newer version is already here; True if kept."""
        current = self.get(key)
        if current is not None and current.version >= stored.version:
            return False
        document = {
            "key": key,
            "version": stored.version.to_list(),
            "deleted": stored.value is None,
            "value": base64.b64encode(stored.value or b"").decode(),
        }
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        # A name of its own per write: two writes of one record never share one.
        temporary = path.with_suffix(f".{secrets.token_hex(4)}.part")
        with open(temporary, "wb") as out:
            out.write(json.dumps(document).encode())
            if self.fsync:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, path)
        self._index(Listed(key, stored.version, stored.value is None))
        return True

    def purge_tombstones(self, before_ms: int, limit: int) -> int:
        """Remove up to `limit` tombstones written before `before_ms`; how many.

        Only safe long after the deletion: a replica that missed it and still holds
        the value would bring it back by read repair once the tombstone is gone,
        so the horizon must exceed any time a replica may stay away.
        """
        purged = 0
        for path in self.root.glob("*/*"):
            if purged == limit:
                break
            if path.suffix == ".part":
                continue
            try:
                document = json.loads(path.read_bytes())
            except FileNotFoundError:
                continue
            version = Version.from_list(document["version"])
            if not document["deleted"] or version.wall_ms >= before_ms:
                continue
            path.unlink(missing_ok=True)
            self._forget(str(document["key"]))
            purged += 1
        return purged

    def _forget(self, key: str) -> None:
        """Drop a purged key from the index, once the index exists."""
        if self._listed is None or key not in self._listed:
            return
        del self._listed[key]
        self._listed_keys.pop(bisect.bisect_left(self._listed_keys, key))

    def listing(self, prefix: str, after: str, limit: int) -> tuple[list[Listed], bool]:
        """Up to `limit` listed keys with `prefix` greater than `after`, tombstones
        too, in key order; and whether more follow."""
        listed = self._load_index()
        start = max(
            bisect.bisect_left(self._listed_keys, prefix),
            bisect.bisect_right(self._listed_keys, after),
        )
        entries: list[Listed] = []
        for key in self._listed_keys[start:]:
            if not key.startswith(prefix):
                return entries, False
            if len(entries) == limit:
                return entries, True
            entries.append(listed[key])
        return entries, False

    def _load_index(self) -> dict[str, Listed]:
        """The index of listed keys, read from every record file the first time."""
        if self._listed is not None:
            return self._listed

        self._listed = {}
        for path in self.root.glob("*/*"):
            if path.suffix == ".part":
                continue
            document = json.loads(path.read_bytes())
            key = document["key"]
            if is_listed(key):
                version = Version.from_list(document["version"])
                self._listed[key] = Listed(key, version, bool(document["deleted"]))
        self._listed_keys = sorted(self._listed)
        return self._listed

    def _index(self, entry: Listed) -> None:
        """Keep a written key in the index, once the index exists."""
        if self._listed is None or not is_listed(entry.key):
            return
        if entry.key not in self._listed:
            bisect.insort(self._listed_keys, entry.key)
        self._listed[entry.key] = entry


class RecordClient:
    """Quorum reads and writes of records, from any node of the bus."""

    log = Logger()

    def __init__(
        self,
        bus: BusNode,
        holders: Sequence[Holder],
        replicas: int,
        clock: HybridClock,
        timeout: float = RECORD_TIMEOUT,
    ) -> None:
        self.bus = bus
        self.holders = list(holders)
        self.replicas = min(replicas, len(self.holders))
        self.quorum = self.replicas // 2 + 1
        self.clock = clock
        self.timeout = timeout
        self._earlier: tuple[list[Holder], int] | None = None

    def use_holders(self, holders: Sequence[Holder], replicas: int) -> None:
        """Place records on `holders` from now on, after a topology edit.

        Until the relays have moved them, records still sit on their homes of the
        placement before: reads ask those too and take the newest copy.
        """
        # Shortcoming: only the placement just before is remembered. Two edits in
        # a row, the second before the relays moved the first's records, leave
        # records on homes of neither; a read then misses them until the
        # rebalance of the relays holding them has moved them on.
        if (
            list(holders) == self.holders
            and min(replicas, len(holders)) == self.replicas
        ):
            return  # an edit that moves no record: keep the placement before
        self._earlier = (self.holders, self.replicas)
        self.holders = list(holders)
        self.replicas = min(replicas, len(self.holders))
        self.quorum = self.replicas // 2 + 1

    def _earlier_replicas(self, key: str, current: list[str]) -> list[str]:
        """The key's homes before the last edit that are not its homes now."""
        if self._earlier is None:
            return []
        holders, replicas = self._earlier
        names = [holder.name for holder in place(key, holders, replicas)]
        return [name for name in names if name not in current]

    # Shortcoming: a record's replicas are fixed by placement, with no fallback:
    # while one of them is gone for good the record lives on the others only, and
    # nothing copies it elsewhere (the scrub keeps chunks, not records). With as
    # many relays as record replicas nothing could; with more, one more loss of a
    # replica leaves too few for a quorum.
    def _replicas(self, key: str) -> list[str]:
        return [holder.name for holder in place(key, self.holders, self.replicas)]

    async def get(self, key: str) -> bytes | None:
        """The newest value a quorum of replicas knows; repairs stale replicas.

        It answers as soon as a quorum has: a replica that is slow or frozen costs
        no time. A replica answering later with an older copy is repaired then.
        """
        stored = await self.get_stored(key)
        return None if stored is None else stored.value

    async def get_stored(self, key: str) -> Stored | None:
        """The newest copy of a record (a deleted one's value is None), or None
        when no relay has any.

        A key none of its homes holds is looked for on every other relay before
        it is called missing: after topology edits or a restart a record may
        still sit where an earlier placement put it, until the relays' rebalance
        moves it. Found so, it is copied to its homes.
        """
        # Shortcoming: so a record that does not exist (a blob never pushed, a
        # tag asked for in vain) costs a request to every relay, not a quorum.
        homes = self._replicas(key)
        # Right after an edit every copy counts, the old homes' too: wait for all.
        earlier = self._earlier_replicas(key, homes)
        names = homes + earlier
        newest: list[Stored] = []
        early_late: dict[str, Stored | None] = {}

        def late(name: str, reply: Message) -> None:
            copy = _stored_from_reply(reply)
            if not newest:
                early_late[name] = copy
            elif copy != newest[0]:
                self._repair(key, newest[0], [name])

        answers = await self._ask_quorum(
            names,
            Kind.RECORD_GET,
            {"key": key},
            b"",
            MAX_RECORD_SIZE,
            late,
            enough=len(names) if earlier else None,
        )
        if len(answers) < self.quorum:
            raise StorageUnavailable(
                f"record {key!r}: {len(answers)} of {len(names)} replicas answered, "
                f"{self.quorum} needed"
            )

        copies = {name: _stored_from_reply(reply) for name, reply in answers.items()}
        copies.update(early_late)
        if all(copy is None for copy in copies.values()):
            copies.update(await self._search_elsewhere(key, names))
        known = [copy for copy in copies.values() if copy is not None]
        if not known:
            return None
        newest.append(max(known, key=lambda copy: copy.version))
        self.clock.observe(newest[0].version)
        stale = [n for n, copy in copies.items() if copy != newest[0] and n in homes]
        if stale:
            self._repair(key, newest[0], stale)
        return newest[0]

    async def _search_elsewhere(
        self, key: str, asked: list[str]
    ) -> dict[str, Stored | None]:
        """Every copy of `key` on the reachable relays not asked yet."""
        others = [
            holder.name
            for holder in self.holders
            if holder.name not in asked and self.bus.reachable(holder.name)
        ]
        if not others:
            return {}
        answers = await self._ask_quorum(
            others,
            Kind.RECORD_GET,
            {"key": key},
            b"",
            MAX_RECORD_SIZE,
            enough=len(others),
        )
        return {name: _stored_from_reply(reply) for name, reply in answers.items()}

    async def put(self, key: str, value: bytes | None) -> None:
        """Write a new version to every replica; return once a quorum holds it."""
        stored = Stored(self.clock.now(), value)
        names = self._replicas(key)
        answers = await self._ask_quorum(
            names, Kind.RECORD_PUT, _put_meta(key, stored), value or b"", 1024
        )
        if len(answers) < self.quorum:
            raise StorageUnavailable(
                f"record {key!r}: {len(answers)} of {len(names)} replicas stored it, "
                f"{self.quorum} needed"
            )

    async def list_keys(self, prefix: str, after: str, limit: int) -> list[str]:
        """Up to `limit` keys of live records under `prefix` after `after`, in order.

        A key was written to at least a quorum of its replicas; if fewer than a
        quorum of all relays stay silent, at least one copy of its newest write
        (value or tombstone) is among the answers. So a listing needs all relays but
        ``quorum - 1`` to answer, and takes each key's newest version among them.
        """
        if not is_listed(prefix):
            raise ValueError(f"records under {prefix!r} are not listed")

        return [entry.key for entry in await self.list_entries(prefix, after, limit)]

    async def list_entries(self, prefix: str, after: str, limit: int) -> list[Listed]:
        """Like `list_keys`, each live key with the version of its newest write."""
        if not is_listed(prefix):
            raise ValueError(f"records under {prefix!r} are not listed")

        entries: list[Listed] = []
        while len(entries) < limit:
            live, end = await self._list_page(prefix, after, limit - len(entries))
            entries += live
            if end is None:
                break
            after = end
        return entries[:limit]

    async def delete_after(self, key: str, seen: Version) -> None:
        """Delete the record as it was at version `seen`, and no later write.

        The tombstone's version follows `seen` at once (same wall time, the next
        counter), so a write made since, whose wall time is later, stays newer
        than the tombstone on every replica and survives it: a collector that
        judged a record garbage cannot erase a fresh write of it.
        """
        tombstone = Stored(
            Version(seen.wall_ms, seen.counter + 1, self.clock.node), None
        )
        names = self._replicas(key)
        answers = await self._ask_quorum(
            names, Kind.RECORD_PUT, _put_meta(key, tombstone), b"", 1024
        )
        if len(answers) < self.quorum:
            raise StorageUnavailable(
                f"record {key!r}: {len(answers)} of {len(names)} replicas deleted it, "
                f"{self.quorum} needed"
            )

    async def _list_page(
        self, prefix: str, after: str, limit: int
    ) -> tuple[list[Listed], str | None]:
        """One round of a listing: the live keys up to where every relay's page is
        sure to be complete, and that key (None when no relay has more)."""
        names = [holder.name for holder in self.holders]
        enough = len(names) - self.quorum + 1
        page = min(limit, MAX_LIST_PAGE)
        meta = {"prefix": prefix, "after": after, "limit": page}
        answers = await self._ask_quorum(
            names, Kind.RECORD_LIST, meta, b"", MAX_LIST_REPLY, enough=enough
        )
        if len(answers) < enough:
            raise StorageUnavailable(
                f"listing {prefix!r}: {len(answers)} of {len(names)} relays answered, "
                f"{enough} needed"
            )

        pages = [_listing_from_reply(reply) for reply in answers.values()]
        ends = [entries[-1].key for entries, more in pages if more and entries]
        end = min(ends) if ends else None
        newest: dict[str, Listed] = {}
        for entries, _ in pages:
            for entry in entries:
                if end is not None and entry.key > end:
                    break
                known = newest.get(entry.key)
                if known is None or entry.version > known.version:
                    newest[entry.key] = entry
                    self.clock.observe(entry.version)
        live = [newest[key] for key in sorted(newest) if not newest[key].deleted]
        return live, end

    def _repair(self, key: str, newest: Stored, names: list[str]) -> None:
        self.log.info("repairing record {key} on {relays}", key=key, relays=names)
        for name in names:
            d = self._ask(
                name, Kind.RECORD_PUT, _put_meta(key, newest), newest.value or b"", 1024
            )
            d.addErrback(lambda _: None)

    def _ask(
        self,
        name: str,
        kind: Kind,
        meta: dict[str, object],
        data: bytes,
        max_reply: int,
    ) -> "Deferred[Message]":
        return self.bus.request(
            name, kind, meta, data, max_reply=max_reply, timeout=self.timeout
        )

    def _ask_quorum(
        self,
        names: list[str],
        kind: Kind,
        meta: dict[str, object],
        data: bytes,
        max_reply: int,
        late: Callable[[str, Message], None] | None = None,
        enough: int | None = None,
    ) -> "Deferred[dict[str, Message]]":
        """Ask every replica at once; fire with the answers once `enough` (a
        quorum, by default) have answered, or once every replica has answered or
        failed.

        Answers after that go to `late`; the requests stay out until they end, so
        every replica still gets a write.
        """
        wanted = self.quorum if enough is None else enough
        answers: dict[str, Message] = {}
        settled: list[str] = []
        done: Deferred[dict[str, Message]] = Deferred()

        def settle(name: str) -> None:
            settled.append(name)
            ready = len(answers) >= wanted or len(settled) == len(names)
            if ready and not done.called:
                done.callback(dict(answers))

        def answered(reply: Message, name: str) -> None:
            if done.called:
                if late is not None:
                    late(name, reply)
            else:
                answers[name] = reply
            settle(name)

        def failed(failure: Failure, name: str) -> None:
            self.log.warn(
                "record {kind} on {relay} failed: {why}",
                kind=kind.name,
                relay=name,
                why=failure.getErrorMessage(),
            )
            settle(name)

        for name in names:
            call = self._ask(name, kind, meta, data, max_reply)
            call.addCallbacks(
                answered, failed, callbackArgs=(name,), errbackArgs=(name,)
            )
        if not names:
            done.callback({})
        return done


def _put_meta(key: str, stored: Stored) -> dict[str, object]:
    return {
        "key": key,
        "version": stored.version.to_list(),
        "deleted": stored.value is None,
    }


def _stored_from_reply(reply: Message) -> Stored | None:
    version = reply.meta.get("version")
    if version is None:
        return None
    value = None if reply.meta.get("deleted") else reply.data
    return Stored(Version.from_list(version), value)


def _listing_from_reply(reply: Message) -> tuple[list[Listed], bool]:
    """A relay's page of a listing; a malformed one counts as an empty page."""
    try:
        document = json.loads(reply.data)
        entries = [
            Listed(str(key), Version.from_list(version), bool(deleted))
            for key, version, deleted in document["entries"]
        ]
        return entries, bool(document["more"])
    except (ValueError, KeyError, TypeError) as e:
        log.warn("unreadable listing from {relay}: {why}", relay=reply.origin, why=e)
        return [], False


def answer_record_list(files: RecordFiles, message: Message) -> Message:
    """A relay's answer to RECORD_LIST: a page of its listed keys (blocking)."""
    prefix = message.meta.get("prefix")
    after = message.meta.get("after")
    limit = message.meta.get("limit")
    if not isinstance(prefix, str) or not is_listed(prefix):
        raise HandlerError("bad_request", "listing of keys that are not listed")
    if not isinstance(after, str) or len(after) > 1024:
        raise HandlerError("bad_request", "listing without a valid start key")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise HandlerError("bad_request", "listing without a page size")
    if not 1 <= limit <= MAX_LIST_PAGE:
        raise HandlerError("bad_request", f"page size must be 1..{MAX_LIST_PAGE}")

    entries, more = files.listing(prefix, after, limit)
    document = {
        "entries": [
            [entry.key, entry.version.to_list(), entry.deleted] for entry in entries
        ],
        "more": more,
    }
    return Message(Kind.REPLY, message.origin, {}, json.dumps(document).encode())


def answer_record_get(files: RecordFiles, message: Message) -> Message:
    """A relay's answer to RECORD_GET (blocking: reads its file)."""
    key = _key_of(message)
    stored = files.get(key)
    if stored is None:
        return Message(Kind.REPLY, message.origin, {"version": None})
    meta = {"version": stored.version.to_list(), "deleted": stored.value is None}
    return Message(Kind.REPLY, message.origin, meta, stored.value or b"")


def answer_record_put(
    files: RecordFiles, message: Message, wall: Callable[[], float] = time.time
) -> Message:
    """A relay's answer to RECORD_PUT: keep the version if newer (blocking)."""
    key = _key_of(message)
    try:
        version = Version.from_list(message.meta.get("version"))
    except ValueError as e:
        raise HandlerError("bad_request", str(e)) from e
    if version.wall_ms > (wall() + MAX_CLOCK_SKEW) * 1000:
        raise HandlerError(
            "bad_request", f"record version is over {MAX_CLOCK_SKEW:.0f} s ahead"
        )
    value = None if message.meta.get("deleted") else message.data
    if value is not None and len(value) > MAX_RECORD_SIZE:
        raise HandlerError(
            "too_large", f"record {key!r} is over {MAX_RECORD_SIZE} bytes"
        )
    kept = files.put(key, Stored(version, value))
    return Message(Kind.REPLY, message.origin, {"kept": kept})


MAX_PURGE = 10_000
"""The most tombstones one relay removes for one purge request."""


MIN_PURGE_AGE = 86400.0
"""Seconds a tombstone is kept at the least, whatever a purge request asks."""


def answer_record_purge(
    files: RecordFiles, message: Message, wall: Callable[[], float] = time.time
) -> Message:
    """A relay's answer to RECORD_PURGE: drop tombstones older than the request's
    ``older_than`` seconds by this relay's clock (blocking)."""
    older_than = message.meta.get("older_than")
    limit = message.meta.get("limit")
    if isinstance(older_than, bool) or not isinstance(older_than, int | float):
        raise HandlerError("bad_request", "purge without a horizon")
    if older_than < MIN_PURGE_AGE:
        raise HandlerError("bad_request", f"purge horizon under {MIN_PURGE_AGE:.0f} s")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise HandlerError("bad_request", "purge without a limit")
    if not 1 <= limit <= MAX_PURGE:
        raise HandlerError("bad_request", f"purge limit must be 1..{MAX_PURGE}")
    before_ms = int((wall() - older_than) * 1000)
    purged = files.purge_tombstones(before_ms, limit)
    return Message(Kind.REPLY, message.origin, {"purged": purged})


def _key_of(message: Message) -> str:
    key = message.meta.get("key")
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise HandlerError("bad_request", "record request without a valid key")
    return key
