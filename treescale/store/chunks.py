"""One relay's chunks: content-addressed files on its local disk.

Everything here is blocking, synchronous file code. The relay runs it in a thread pool
(``deferToThreadPool``), never on the reactor thread. A `ChunkStore` keeps no state
besides its paths, so threads may share one; a `ChunkWriter` belongs to one caller.

Layout under the store's root::

    ROOT/
      chunks/
        sha256/
          <first 2 hex>/        shards the directory so no folder grows huge
            <64 hex>            a whole chunk whose bytes hashed to its name when
                                it was committed; read() checks it again
      tmp/
        <random>.part           a write in progress: bytes land here, are hashed and
                                fsynced, then renamed into chunks/; anything left
                                here is a crash's residue and is removed at open
      quarantine/
        <64 hex>                a chunk whose bytes no longer matched its name when
                                read, kept aside for an operator to look at

A chunk appears under ``chunks/`` only by a rename of a complete, verified, fsynced
temporary file on the same filesystem, so a crash at any instant leaves either the
whole chunk or nothing there. ``tmp/`` must therefore live on the same filesystem as
``chunks/``, which holds as long as nobody mounts something over it.

Errors: a bad digest string, a missing chunk and bytes that do not match their digest
are `ChunkError`s. A failing disk (full, read-only, I/O error) surfaces as the
`OSError` the operating system raised.
"""

import hashlib
import os
import pathlib
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from twisted.logger import Logger

from treescale.durable import fsync_folder
from treescale.store.digests import ALGORITHM, is_chunk_digest

_HEX = re.compile(r"[0-9a-f]{64}")
_PART_SUFFIX = ".part"


@dataclass(frozen=True)
class AgedChunk:
    """A chunk file as the garbage collector sees it."""

    digest: str
    size: int
    written: float
    """When the file was last renamed into place, in epoch seconds."""


class ChunkError(Exception):
    """Base class of every error about a chunk, as opposed to the disk under it."""


class ChunkMissing(ChunkError):
    """This store holds no chunk with the digest asked for."""


class ChunkCorrupt(ChunkError):
    """The bytes do not hash to the chunk's digest, or are not its stated size."""


def _hex_of(digest: str) -> str:
    """The 64 hex digits of a caller's digest, refusing anything else.

    The hex becomes a file name, so this check is what keeps a hostile digest such as
    ``sha256:../../x`` from naming a path outside the store.
    """
    if not is_chunk_digest(digest):
        raise ChunkError(f"not a sha256 digest: {digest!r:.80}")
    return digest.removeprefix(f"{ALGORITHM}:")


class ChunkWriter:
    """One chunk being written, made by `ChunkStore.open_writer`.

    Bytes go to a temporary file until `commit`. The writer knows the digest and size
    the chunk must have, hashes as bytes arrive, and renames the file into place only
    when both match. Every way out other than a successful `commit` removes the
    temporary file.
    """

    def __init__(
        self,
        temp: pathlib.Path,
        final: pathlib.Path,
        hex_digest: str,
        size: int,
        *,
        fsync: bool,
        swap: "threading.Lock | None" = None,
    ) -> None:
        self._temp = temp
        self._swap = swap or threading.Lock()
        self._final = final
        self._hex = hex_digest
        self._size = size
        self._fsync = fsync
        self._written = 0
        self._hash = hashlib.sha256()
        self._state: Literal["open", "committed", "aborted"] = "open"
        self._file: BinaryIO = open(temp, "xb")  # noqa: SIM115 (closed by commit/abort)

    def write(self, data: bytes) -> None:
        """Append bytes to the chunk.

        Bytes past the stated size mean the stream is not this chunk: the write is
        refused with `ChunkCorrupt` and the writer gives up (its temp file is removed).
        """
        self._check_open()

        if self._written + len(data) > self._size:
            self.abort()
            raise ChunkCorrupt(
                f"chunk sha256:{self._hex} is {self._size} bytes; got more"
            )

        self._file.write(data)
        self._hash.update(data)
        self._written += len(data)

    def commit(self) -> None:
        """Check the bytes against the digest and size, then store them durably.

        Raises `ChunkCorrupt` (and removes the temp file) when they do not match. A
        chunk already stored is simply replaced by the same bytes.
        """
        self._check_open()
        self._verify()

        try:
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
            self._file.close()

            self._make_shard()
            with self._swap:
                os.replace(self._temp, self._final)
            if self._fsync:
                fsync_folder(self._final.parent)
        except BaseException:
            self.abort()
            raise

        self._state = "committed"

    def abort(self) -> None:
        """Give the write up and remove the temp file; harmless to call again.

        After a successful `commit` this does nothing, so callers may abort in a
        ``finally`` block.
        """
        if self._state != "open":
            return

        self._state = "aborted"
        self._file.close()
        self._temp.unlink(missing_ok=True)

    def _check_open(self) -> None:
        """Refuse use of a writer that was already committed or aborted."""
        if self._state != "open":
            raise ChunkError(f"writer for sha256:{self._hex} is {self._state}")

    def _verify(self) -> None:
        """Raise `ChunkCorrupt`, giving up, unless size and hash are the stated ones."""
        if self._written != self._size:
            self.abort()
            raise ChunkCorrupt(
                f"chunk sha256:{self._hex} is {self._size} bytes; got {self._written}"
            )

        actual = self._hash.hexdigest()
        if actual != self._hex:
            self.abort()
            raise ChunkCorrupt(f"bytes for sha256:{self._hex} hash to sha256:{actual}")

    def _make_shard(self) -> None:
        """Create the chunk's shard directory, durably when it is new."""
        shard = self._final.parent
        if shard.is_dir():
            return

        shard.mkdir(exist_ok=True)
        if self._fsync:
            fsync_folder(shard.parent)


class ChunkStore:
    """The chunk files under one root directory, addressed by digest."""

    log = Logger()

    def __init__(self, root: pathlib.Path, *, fsync: bool = True) -> None:
        """Open (creating if needed) a store and clear a crash's leftover writes.

        `fsync` off trades durability on power loss for speed, for tests and scratch
        stores: a chunk may then come back truncated, and `read` quarantines it.
        """
        self._root = root
        self._fsync = fsync
        self._chunks = root / "chunks" / ALGORITHM
        self._tmp = root / "tmp"
        self._quarantine = root / "quarantine"
        # Held while a chunk file is renamed into place and while the sweep checks
        # a file's age and removes it, so a fresh copy is never swept unseen.
        self._swap = threading.Lock()

        for path in (self._chunks, self._tmp, self._quarantine):
            path.mkdir(parents=True, exist_ok=True)

        self._remove_leftovers()

    def has(self, digest: str) -> bool:
        """Whether a chunk file exists; its bytes are checked only by `read`."""
        return self._path(digest).is_file()

    def size(self, digest: str) -> int | None:
        """The size of the chunk file on disk, or None when there is none."""
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open_writer(self, digest: str, size: int) -> ChunkWriter:
        """Start writing the chunk that must hash to `digest` and be `size` bytes."""
        hex_digest = _hex_of(digest)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ChunkError(f"not a chunk size: {size!r}")

        temp = self._tmp / f"{secrets.token_hex(16)}{_PART_SUFFIX}"
        return ChunkWriter(
            temp,
            self._path_of(hex_digest),
            hex_digest,
            size,
            fsync=self._fsync,
            swap=self._swap,
        )

    def write(self, digest: str, data: bytes) -> None:
        """Keep `data` as chunk `digest`, whole: verified, synced and renamed into
        place, or nothing left behind (blocking)."""
        writer = self.open_writer(digest, len(data))
        try:
            writer.write(data)
            writer.commit()
        finally:
            writer.abort()

    def read(self, digest: str) -> bytes:
        """The whole chunk, verified against its digest.

        Raises `ChunkMissing` when there is none. Bytes that no longer match move to
        quarantine and raise `ChunkCorrupt`, so the next read finds the chunk missing
        and the relay fetches a good copy rather than serving this one.
        """
        return self._read_verified(digest)

    def read_unchecked(self, digest: str, piece_size: int) -> tuple[bytes, ...]:
        """The chunk's bytes as they are on disk, not hashed, in pieces of at most
        `piece_size` bytes (-1: one piece; none for an empty chunk).

        For a relay answering a chunk-get: the requester verifies every chunk it
        fetches (`treescale.store.chunkclient`), so hashing here too would only
        hash each byte of a pull twice. A rotten copy is caught there, and the
        requester puts the good bytes back in its place; the scrub catches the
        copies nobody reads. Read in pieces, each is its own buffer, and none has
        to be cut from the whole again (a copy of every byte).
        """
        if piece_size < 1 and piece_size != -1:
            raise ValueError(f"a piece size must be positive or -1, not {piece_size}")
        pieces, _inode = self._read_raw(_hex_of(digest), piece_size)
        return pieces

    def set_aside_if_corrupt(self, digest: str) -> bool:
        """Move the chunk's file to quarantine if its bytes no longer match its
        digest; whether it did. A missing or sound chunk is left as it is."""
        try:
            self._read_verified(digest)
        except ChunkMissing:
            return False
        except ChunkCorrupt:
            return True
        return False

    def _read_verified(self, digest: str) -> bytes:
        """The chunk's bytes in one read, checked; set aside when they fail."""
        hex_digest = _hex_of(digest)
        pieces, inode = self._read_raw(hex_digest, -1)
        data = b"".join(pieces)

        actual = hashlib.sha256(data).hexdigest()
        if actual != hex_digest:
            self._quarantine_chunk(hex_digest, inode)
            raise ChunkCorrupt(
                f"stored bytes of {digest} ({len(data)} bytes) hash to sha256:{actual}"
            )

        return data

    def _read_raw(
        self, hex_digest: str, piece_size: int
    ) -> tuple[tuple[bytes, ...], int]:
        """A chunk file's bytes in reads of `piece_size` (-1: one read), and its
        inode; `ChunkMissing` when there is no such file."""
        pieces = []
        try:
            with open(self._path_of(hex_digest), "rb", buffering=0) as chunk_file:
                inode = os.fstat(chunk_file.fileno()).st_ino
                while piece := chunk_file.read(piece_size):
                    pieces.append(piece)
        except FileNotFoundError:
            raise ChunkMissing(f"{ALGORITHM}:{hex_digest}") from None
        return tuple(pieces), inode

    def delete(self, digest: str) -> None:
        """Remove a chunk; deleting one that is not there is not an error.

        The removal is not fsynced: after a power loss the chunk may come back, which
        costs disk space and nothing else.
        """
        self._path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        """Every chunk stored, in digest order; stray files are skipped."""
        for shard in sorted(self._chunks.iterdir()):
            if not shard.is_dir():
                continue

            for entry in sorted(shard.iterdir()):
                name = entry.name
                if _HEX.fullmatch(name) and name[:2] == shard.name:
                    yield f"{ALGORITHM}:{name}"

    def sizes_after(self, after: str, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` chunks after `after` (``""`` for the first), in digest order,
        each with its size on disk: a page of a walk over the whole store.

        Reads only the shard directories the page needs, so a walk that stops
        between pages costs nothing meanwhile. A chunk removed while listed is left
        out.
        """
        return [
            (digest, status.st_size)
            for digest, status in self._stats_after(after, limit)
        ]

    def aged_after(self, after: str, limit: int) -> list["AgedChunk"]:
        """Like `sizes_after`, each chunk with the time its file was last written.

        The garbage collector's view of a relay: a chunk rewritten by a push (every
        put renames a fresh file into place) looks young again.
        """
        return [
            AgedChunk(digest, status.st_size, status.st_mtime)
            for digest, status in self._stats_after(after, limit)
        ]

    def _stats_after(self, after: str, limit: int) -> list[tuple[str, os.stat_result]]:
        """The walk of `sizes_after`: up to `limit` chunks after `after`, each with
        its file's status."""
        start = _hex_of(after) if after else ""
        page: list[tuple[str, os.stat_result]] = []
        for shard in sorted(self._chunks.iterdir()):
            if shard.name < start[:2] or not shard.is_dir():
                continue

            for entry in sorted(shard.iterdir()):
                name = entry.name
                if name <= start or not (
                    _HEX.fullmatch(name) and name[:2] == shard.name
                ):
                    continue
                try:
                    status = entry.stat()
                except FileNotFoundError:
                    continue
                page.append((f"{ALGORITHM}:{name}", status))
                if len(page) == limit:
                    return page
        return page

    def delete_if_older(self, digest: str, cutoff: float) -> int | None:
        """Remove a chunk last written before `cutoff` (epoch seconds); the bytes
        freed, or None when it is missing or newer.

        The age is checked and the file removed under the lock a commit holds to
        rename, so a push that rewrites the chunk meanwhile keeps its copy.
        """
        path = self._path(digest)
        with self._swap:
            try:
                status = path.stat()
            except FileNotFoundError:
                return None
            if status.st_mtime >= cutoff:
                return None
            path.unlink(missing_ok=True)
        return status.st_size

    def _path(self, digest: str) -> pathlib.Path:
        """The file a caller's digest names, once the digest is known to be valid."""
        return self._path_of(_hex_of(digest))

    def _path_of(self, hex_digest: str) -> pathlib.Path:
        """The file of a chunk whose hex digest is already validated."""
        return self._chunks / hex_digest[:2] / hex_digest

    def _quarantine_chunk(self, hex_digest: str, inode: int) -> None:
        """Move a corrupt chunk aside, unless a good copy replaced it meanwhile."""
        path = self._path_of(hex_digest)

        # Shortcoming: a writer renaming a good copy into place between the inode
        # check and the rename below sees its copy quarantined; the chunk is then
        # fetched again, so the cost is a wasted fetch, never a wrong byte.
        try:
            if path.stat().st_ino != inode:
                return
            os.replace(path, self._quarantine / hex_digest)
        except FileNotFoundError:
            return

        self.log.error(
            "Quarantined corrupt chunk {digest} under {path}",
            digest=f"{ALGORITHM}:{hex_digest}",
            path=str(self._quarantine / hex_digest),
        )

    def _remove_leftovers(self) -> None:
        """Delete temporary files a crash left behind; they were never committed."""
        removed = 0
        for part in self._tmp.glob(f"*{_PART_SUFFIX}"):
            part.unlink(missing_ok=True)
            removed += 1

        if removed:
            self.log.info(
                "Removed {count} unfinished chunk writes from {path}",
                count=removed,
                path=str(self._tmp),
            )
