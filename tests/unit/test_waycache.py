"""Tests of the bounded chunk cache a node keeps on the way (`ChunkCache`)."""

import pytest

from treescale.store.waycache import CacheCounts, ChunkCache


def test_a_chunk_put_is_got_back() -> None:
    """A chunk put in comes back by its digest, and counts as a hit."""
    cache = ChunkCache(100)

    assert cache.put("sha256:a", b"x" * 10)

    assert cache.get("sha256:a") == b"x" * 10
    assert cache.size == 10
    assert cache.counts() == CacheCounts(hits=1, misses=0, stored=1, evicted=0)


def test_an_unknown_chunk_is_a_miss() -> None:
    """A digest never put in gives None and counts as a miss."""
    cache = ChunkCache(100)

    assert cache.get("sha256:none") is None
    assert cache.counts().misses == 1


def test_the_least_recently_used_chunk_goes_first() -> None:
    """Past the capacity, the chunk used longest ago is forgotten, not the oldest
    put: a get makes a chunk the most recent."""
    cache = ChunkCache(30)
    cache.put("sha256:a", b"a" * 10)
    cache.put("sha256:b", b"b" * 10)
    cache.put("sha256:c", b"c" * 10)
    cache.get("sha256:a")

    cache.put("sha256:d", b"d" * 10)

    assert "sha256:b" not in cache
    assert all(key in cache for key in ("sha256:a", "sha256:c", "sha256:d"))
    assert cache.size == 30
    assert cache.counts().evicted == 1


def test_capacity_counts_bytes_not_chunks() -> None:
    """One large chunk makes room by forgetting as many small ones as it takes."""
    cache = ChunkCache(40)
    for name in "abcd":
        cache.put(f"sha256:{name}", name.encode() * 10)

    cache.put("sha256:big", b"B" * 35)

    assert len(cache) == 1
    assert cache.size == 35
    assert cache.counts().evicted == 4


def test_a_chunk_larger_than_the_cache_is_not_kept() -> None:
    """A chunk over the whole capacity is refused and evicts nothing."""
    cache = ChunkCache(20)
    cache.put("sha256:a", b"a" * 10)

    assert not cache.put("sha256:big", b"B" * 21)

    assert "sha256:big" not in cache
    assert "sha256:a" in cache
    assert cache.size == 10


def test_putting_a_chunk_again_counts_its_bytes_once() -> None:
    """A chunk put twice holds its bytes once."""
    cache = ChunkCache(20)
    cache.put("sha256:a", b"a" * 10)
    cache.put("sha256:a", b"a" * 10)

    assert cache.size == 10
    assert len(cache) == 1


def test_a_zero_cache_keeps_nothing() -> None:
    """A capacity of 0 keeps no chunk of any size but an empty one."""
    cache = ChunkCache(0)

    assert not cache.put("sha256:a", b"a")
    assert cache.size == 0


def test_a_negative_capacity_is_refused() -> None:
    """A cache cannot be made with less than no room."""
    with pytest.raises(ValueError):
        ChunkCache(-1)


def test_size_never_passes_capacity() -> None:
    """Whatever is put in, in any order, the bytes held stay within the capacity."""
    cache = ChunkCache(1000)
    for index in range(200):
        cache.put(f"sha256:{index % 37}", b"z" * ((index * 53) % 300))
        assert cache.size <= cache.capacity
        assert cache.size == sum(
            len(cache.get(key) or b"")
            for key in [f"sha256:{n}" for n in range(37)]
            if key in cache
        )
