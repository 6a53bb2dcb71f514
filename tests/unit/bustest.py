"""Shared fixtures of the unit tests: small topologies, bus nodes wired in memory.

A `BusTree` builds one `BusNode` per node of a topology, all on one `Clock`, and joins
each child to its parent with a pair of `Link` protocols over `twisted.test.iosim`
transports. Nothing listens and nothing dials: the nodes' services are never started,
so no socket is opened. `flush` moves bytes over every edge until the tree is quiet.

Also here: helpers to read a fired Deferred, and an inline thread pool that runs a
relay's disk work at once on the calling thread.
"""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.test import iosim
from zope.interface import implementer

from treescale.bus.link import Link, LinkSettings
from treescale.bus.node import BusNode
from treescale.config import Topology, parse

DEFAULT_SETTINGS = LinkSettings()

T = TypeVar("T")
P = ParamSpec("P")

# The default test tree; "a1" sits below "a" so events to it pass through a hop.
#
#          root (registry)
#         /    \
#        a      b
#        |
#        a1
DEFAULT_TREE: tuple[tuple[str, str | None], ...] = (
    ("root", None),
    ("a", "root"),
    ("b", "root"),
    ("a1", "a"),
)


def topology(
    tree: Sequence[tuple[str, str | None]] = DEFAULT_TREE,
    cluster: str = "test",
    chunk_size: int = 1024 * 1024,
    window: int = 4,
) -> Topology:
    """A topology of `tree`: the root is the registry, every other node a store."""
    nodes = []
    for index, (name, parent) in enumerate(tree):
        node: dict[str, Any] = {
            "name": name,
            "id": index + 1,
            "bus": f"127.0.0.1:{7200 + index}",
            "roles": ["store"] if parent is not None else ["registry"],
            "domain": name,
        }
        if parent is None:
            node["http"] = "tcp:0:interface=127.0.0.1"
        else:
            node["parent"] = parent
        nodes.append(node)
    raw = {
        "cluster": {"name": cluster, "chunk_size": chunk_size, "window": window},
        "node": nodes,
    }
    return parse(raw, Path("test.toml"))


def make_node(
    tree: Topology,
    name: str,
    clock: Clock,
    settings: LinkSettings = DEFAULT_SETTINGS,
    max_request_data: int | None = None,
) -> BusNode:
    """A bus node of `tree` that is never started, so it never touches a socket."""
    reactor = MemoryReactorClock()  # type: ignore[no-untyped-call]
    return BusNode(tree, tree.node(name), reactor, clock, settings, max_request_data)


class Edge:
    """One wired tree edge: the child's link, the parent's link and their pump."""

    def __init__(self, child: Link, parent: Link, pump: Any) -> None:
        self.child = child
        self.parent = parent
        self.pump = pump

    def pump_once(self) -> bool:
        """Move what each side has written to the other; whether anything moved."""
        return bool(self.pump.pump())

    def cut(self) -> None:
        """Drop the connection as a failing network would (both ends see it lost)."""
        self.child.transport.abortConnection()  # type: ignore[union-attr]


class BusTree:
    """Every node of a topology as a `BusNode`, on one clock, linked in memory."""

    def __init__(
        self,
        tree: Topology | None = None,
        settings: Mapping[str, LinkSettings] | None = None,
        max_request_data: Mapping[str, int] | None = None,
    ) -> None:
        self.topology = tree if tree is not None else topology()
        self.clock = Clock()
        self.nodes: dict[str, BusNode] = {}
        self.edges: dict[str, Edge] = {}
        for config in self.topology.nodes:
            self.nodes[config.name] = make_node(
                self.topology,
                config.name,
                self.clock,
                (settings or {}).get(config.name, LinkSettings()),
                (max_request_data or {}).get(config.name),
            )

    def __getitem__(self, name: str) -> BusNode:
        return self.nodes[name]

    def connect(self, child: str, parent_node: BusNode | None = None) -> Edge:
        """Wire `child` to its parent (or to `parent_node`) and run the handshake."""
        node = self.nodes[child]
        parent_name = node.me.parent
        assert parent_name is not None
        upper = parent_node if parent_node is not None else self.nodes[parent_name]
        return self.join(Link(upper, None), Link(node, parent_name), key=child)

    def join(self, server: Link, client: Link, key: str) -> Edge:
        """Connect an accepting link and a dialling link, then flush the tree."""
        pump = iosim.connect(  # type: ignore[no-untyped-call]
            server,
            iosim.FakeTransport(server, isServer=True),  # type: ignore[no-untyped-call]
            client,
            iosim.FakeTransport(client, isServer=False),  # type: ignore[no-untyped-call]
            greet=False,
            clock=self.clock,
        )
        edge = Edge(client, server, pump)
        self.edges[key] = edge
        self.flush()
        return edge

    def connect_all(self) -> "BusTree":
        """Wire every child to its parent, in the order the topology lists them."""
        for config in self.topology.nodes:
            if config.parent is not None:
                self.connect(config.name)
        return self

    def flush(self) -> None:
        """Pump every edge until no bytes move and no disconnection is pending."""
        for _ in range(10_000):
            moved = [edge.pump_once() for edge in list(self.edges.values())]
            if not any(moved):
                return
        raise AssertionError("the tree never went quiet")

    def cut(self, child: str) -> None:
        """Break the edge between `child` and its parent, and let both ends notice."""
        self.edges[child].cut()
        self.flush()

    def advance(self, seconds: float, step: float = 1.0) -> None:
        """Let time pass in steps, flushing the links after each one."""
        elapsed = 0.0
        while elapsed < seconds:
            tick = min(step, seconds - elapsed)
            self.clock.advance(tick)
            elapsed += tick
            self.flush()

    def run(self, d: "Deferred[T]", step: float = 0.5, limit: float = 1000.0) -> T:
        """Let time pass until `d` fires, flushing the links; its result."""
        waited = 0.0
        while not d.called:
            self.flush()
            self.clock.advance(0)
            self.flush()
            if d.called:
                break
            assert waited < limit, "never finished"
            self.advance(step, step)
            waited += step
        return success(d)


def success(d: "Deferred[T]") -> T:
    """The result of a Deferred that must already have succeeded."""
    results: list[T] = []
    failures: list[Failure] = []
    d.addCallbacks(results.append, failures.append)
    if failures:
        failures[0].raiseException()
    assert results, "the Deferred has not fired"
    return results[0]


def failure(d: "Deferred[Any]") -> Failure:
    """The failure of a Deferred that must already have failed."""
    results: list[object] = []
    failures: list[Failure] = []
    d.addCallbacks(results.append, failures.append)
    assert not results, f"the Deferred succeeded with {results[0]!r}"
    assert failures, "the Deferred has not fired"
    return failures[0]


def unfired(d: "Deferred[Any]") -> bool:
    """Whether a Deferred has no result yet."""
    return not d.called


class InlinePool(ThreadPool):
    """A thread pool that runs each call at once on the caller's thread.

    `deferToThreadPool` hands the pool a function and a callback; this pool calls
    both before returning, so the Deferred has fired when `deferToThreadPool`
    returns. `ran` counts the calls, to prove work went through the pool.
    """

    ran = 0

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, Any], object] | None,
        func: Callable[P, Any],
        *args: P.args,
        **kw: P.kwargs,
    ) -> None:
        self.ran += 1
        try:
            result = func(*args, **kw)
        except Exception as e:
            if onResult is not None:
                onResult(False, Failure(e))  # type: ignore[no-untyped-call]
            return
        if onResult is not None:
            onResult(True, result)


@implementer(IReactorFromThreads)
class InlineReactor:
    """Runs calls "from a thread" at once: with `InlinePool`, disk work is inline."""

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None:
        callable(*args, **kwargs)


def inline_reactor() -> IReactorFromThreads:
    """An `InlineReactor` typed as the interface a relay wants."""
    return cast(IReactorFromThreads, InlineReactor())
