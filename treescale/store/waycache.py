"""A bounded cache of verified chunks, kept by a node that passes chunks on.

Nothing here does I/O: `ChunkCache` maps chunk digests to their bytes, holds at
most `capacity` bytes of chunk data, and forgets the least recently used chunks
first when a new one needs room. Whoever puts a chunk in has checked its bytes
against its digest (`treescale.store.transit` does, before it caches or answers).
"""

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["CacheCounts", "ChunkCache"]


@dataclass(frozen=True)
class CacheCounts:
    """What a cache has done since it was made, for logs and tests."""

    hits: int
    misses: int
    stored: int
    evicted: int


class ChunkCache:
    """Chunks by digest, least recently used forgotten first, bounded by bytes.

    Only chunk bytes count toward `capacity`: the keys and the map are a few
    hundred bytes per chunk, against the chunk itself (64 KiB to 64 MiB). A
    chunk larger than the whole capacity is not kept at all, rather than
    emptying the cache for a chunk that would be evicted by the next one.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("a cache's capacity must not be negative")
        self.capacity = capacity
        self._chunks: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._hits = self._misses = self._stored = self._evicted = 0

    @property
    def size(self) -> int:
        """Bytes of chunk data held now; never above `capacity`."""
        return self._size

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, digest: object) -> bool:
        """Whether a chunk is held, without counting a hit or a miss."""
        return digest in self._chunks

    def get(self, digest: str) -> bytes | None:
        """A chunk's bytes, now the most recently used; None when not held."""
        data = self._chunks.get(digest)
        if data is None:
            self._misses += 1
            return None

        self._hits += 1
        self._chunks.move_to_end(digest)
        return data

    def put(self, digest: str, data: bytes) -> bool:
        """Keep a verified chunk, forgetting the oldest ones to make room.

        Returns whether it is held afterwards: a chunk larger than the capacity
        is not.
        """
        if len(data) > self.capacity:
            return False

        old = self._chunks.pop(digest, None)
        if old is not None:
            self._size -= len(old)

        while self._chunks and self._size + len(data) > self.capacity:
            _, evicted = self._chunks.popitem(last=False)
            self._size -= len(evicted)
            self._evicted += 1

        self._chunks[digest] = data
        self._size += len(data)
        self._stored += 1
        return True

    def counts(self) -> CacheCounts:
        """Hits, misses, chunks stored and chunks evicted so far."""
        return CacheCounts(self._hits, self._misses, self._stored, self._evicted)
