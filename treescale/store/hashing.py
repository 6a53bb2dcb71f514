"""Where a node hashes chunk bytes: at once, or in its reactor's thread pool.

A *runner* is called as ``run(work, *args)`` and gives a Deferred of
``work(*args)``. The chunk client (names, checks) and the cache on the way
(verification) take one, so a registry node or a caching hub hashes 4 MiB chunks
off its reactor thread (hashlib and blake3 let go of the GIL meanwhile), while
unit tests hash at once.
"""

from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

Runner = Callable[..., "Deferred[Any]"]
"""``run(work, *args)``: a Deferred of ``work(*args)``."""


def hash_here(work: Callable[..., Any], *args: Any) -> "Deferred[Any]":
    """Run a hashing function at once, in this thread."""
    try:
        return succeed(work(*args))
    except Exception:
        return fail()


def hash_in_pool(reactor: IReactorFromThreads, pool: ThreadPool) -> Runner:
    """A runner that hashes in `pool`, handing the result back to the reactor."""
    return partial(deferToThreadPool, reactor, pool)
