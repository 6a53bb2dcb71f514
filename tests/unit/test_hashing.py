"""Runners of hashing work (`treescale.store.hashing`)."""

from tests.unit.bustest import InlinePool, failure, inline_reactor, success
from treescale.store.digests import sha256_digest
from treescale.store.hashing import hash_here, hash_in_pool


def test_hashing_here_gives_the_result_or_the_error() -> None:
    """At once: the work's result, or a failed Deferred carrying its error."""

    def broken(data: bytes) -> str:
        raise ValueError(f"cannot hash {len(data)} bytes")

    assert success(hash_here(sha256_digest, b"x")) == sha256_digest(b"x")
    assert isinstance(failure(hash_here(broken, b"x")).value, ValueError)


def test_hashing_in_a_pool_runs_the_work_there() -> None:
    """In a pool: the work runs on the pool, its result handed back."""
    pool = InlinePool()
    run = hash_in_pool(inline_reactor(), pool)

    assert success(run(sha256_digest, b"y")) == sha256_digest(b"y")
    assert pool.ran == 1
