"""Tests for the TreeScale path model: primes, tables, and events moved hop by hop."""

from collections import Counter
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treescale.bus.routing import RouteError, RouteTable, Step, nth_prime

_SMALL_PRIMES = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61]
_POOL = [*_SMALL_PRIMES, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107, 109, 113]

# A small fixed tree with both sides of an origin in play:
#
#         root
#        /    \
#       a      b
#      / \      \
#    a1   a2     b1
_PARENTS: dict[str, str | None] = {
    "root": None,
    "a": "root",
    "b": "root",
    "a1": "a",
    "a2": "a",
    "b1": "b",
}
_PRIMES = {"root": 2, "a": 3, "b": 5, "a1": 7, "a2": 11, "b1": 13}


def _tables(
    parents: Mapping[str, str | None], primes: Mapping[str, int]
) -> dict[str, RouteTable]:
    """One route table per node of a tree, as each node would build its own."""
    return {node: RouteTable(parents, primes, node) for node in parents}


def _path(parents: Mapping[str, str | None], start: str, end: str) -> list[str]:
    """The nodes from start to end via their lowest common ancestor, both ends in."""
    up_from_start = [start]
    while (parent := parents[up_from_start[-1]]) is not None:
        up_from_start.append(parent)

    up_from_end = [end]
    while up_from_end[-1] not in up_from_start:
        parent = parents[up_from_end[-1]]
        assert parent is not None
        up_from_end.append(parent)

    meeting = up_from_start.index(up_from_end[-1])
    return up_from_start[:meeting] + list(reversed(up_from_end))


class _Trace:
    """What happened to one event as it moved through the tree."""

    def __init__(self) -> None:
        self.delivered: Counter[str] = Counter()
        self.edges: Counter[frozenset[str]] = Counter()
        self.visited: set[str] = set()


def _simulate(tables: Mapping[str, RouteTable], origin: str, route: int) -> _Trace:
    """Move an event hop by hop using only `step`, checking it is never sent back."""
    trace = _Trace()
    queue: list[tuple[str, int, str | None]] = [(origin, route, None)]

    for _ in range(4 * len(tables)):
        if not queue:
            break

        node, carried, came_from = queue.pop()
        trace.visited.add(node)
        step = tables[node].step(carried, came_from)
        if step.deliver:
            trace.delivered[node] += 1

        for neighbour, forwarded in step.forwards.items():
            assert neighbour != came_from
            assert neighbour in tables[node].neighbours
            trace.edges[frozenset((node, neighbour))] += 1
            queue.append((neighbour, forwarded, node))

    assert not queue, "the event was still moving after more hops than a tree allows"
    return trace


@st.composite
def _trees(draw: st.DrawFn) -> tuple[dict[str, str | None], dict[str, int]]:
    """A random tree of up to 20 nodes with distinct primes drawn from a pool."""
    size = draw(st.integers(min_value=1, max_value=20))
    names = [f"n{index}" for index in range(size)]
    order = draw(st.permutations(names))

    parents: dict[str, str | None] = {order[0]: None}
    for index in range(1, size):
        parents[order[index]] = order[draw(st.integers(0, index - 1))]

    chosen = draw(st.permutations(_POOL))[:size]
    return parents, dict(zip(names, chosen, strict=False))


@st.composite
def _events(
    draw: st.DrawFn,
) -> tuple[dict[str, str | None], dict[str, int], str, set[str]]:
    """A random tree, an origin in it, and a non-empty set of destinations."""
    parents, primes = draw(_trees())
    nodes = sorted(parents)
    origin = draw(st.sampled_from(nodes))
    destinations = draw(st.sets(st.sampled_from(nodes), min_size=1))
    return parents, primes, origin, destinations


@given(_events())
def test_event_reaches_exactly_its_destinations(
    event: tuple[dict[str, str | None], dict[str, int], str, set[str]],
) -> None:
    """Following only `step`, each destination gets the event once and nobody else."""
    parents, primes, origin, destinations = event
    tables = _tables(parents, primes)

    trace = _simulate(tables, origin, tables[origin].route_to(destinations))

    assert set(trace.delivered) == destinations
    assert all(count == 1 for count in trace.delivered.values())


@given(_events())
def test_event_uses_each_edge_once_and_only_needed_nodes(
    event: tuple[dict[str, str | None], dict[str, int], str, set[str]],
) -> None:
    """An event crosses no edge twice and visits only the nodes on its paths."""
    parents, primes, origin, destinations = event
    tables = _tables(parents, primes)

    trace = _simulate(tables, origin, tables[origin].route_to(destinations))

    needed = {node for end in destinations for node in _path(parents, origin, end)}
    assert all(count == 1 for count in trace.edges.values())
    assert trace.visited == needed


@given(_trees(), st.data())
def test_flood_reaches_every_node_once(
    tree: tuple[dict[str, str | None], dict[str, int]], data: st.DataObject
) -> None:
    """A broadcast following `flood` from any node reaches every node exactly once."""
    parents, primes = tree
    tables = _tables(parents, primes)
    origin = data.draw(st.sampled_from(sorted(parents)))

    reached: Counter[str] = Counter()
    queue: list[tuple[str, str | None]] = [(origin, None)]
    for _ in range(2 * len(parents)):
        if not queue:
            break

        node, came_from = queue.pop()
        reached[node] += 1
        queue.extend((next_node, node) for next_node in tables[node].flood(came_from))

    assert not queue
    assert reached == Counter(parents.keys())


@given(_trees(), st.data())
def test_next_hop_is_the_first_node_on_the_path(
    tree: tuple[dict[str, str | None], dict[str, int]], data: st.DataObject
) -> None:
    """`next_hop` names the neighbour that starts the path to a destination."""
    parents, primes = tree
    nodes = sorted(parents)
    origin = data.draw(st.sampled_from(nodes))
    destination = data.draw(st.sampled_from(nodes))
    table = RouteTable(parents, primes, origin)

    if destination == origin:
        with pytest.raises(RouteError):
            table.next_hop(destination)
    else:
        assert table.next_hop(destination) == _path(parents, origin, destination)[1]


@given(_trees(), st.data())
def test_neighbours_are_parent_and_children(
    tree: tuple[dict[str, str | None], dict[str, int]], data: st.DataObject
) -> None:
    """A table's neighbours are its node's parent, if any, and its children."""
    parents, primes = tree
    me = data.draw(st.sampled_from(sorted(parents)))
    table = RouteTable(parents, primes, me)

    children = {node for node, parent in parents.items() if parent == me}
    expected = children | ({parents[me]} - {None})
    assert table.me == me
    assert table.neighbours == expected


def test_route_up_and_down_from_a_leaf() -> None:
    """From a1, a route to a2 and b1 goes up to a, then splits down and up-and-over."""
    tables = _tables(_PARENTS, _PRIMES)
    route = tables["a1"].route_to(["a2", "b1"])

    assert route == 3 * 11 * 11 * 2 * 5 * 13 * 13
    assert tables["a1"].step(route, None) == Step(False, {"a": route})
    assert tables["a"].step(route, "a1") == Step(
        False, {"a2": 11 * 11, "root": 2 * 5 * 13 * 13}
    )
    assert tables["root"].step(2 * 5 * 13 * 13, "a") == Step(False, {"b": 5 * 13 * 13})
    assert tables["b"].step(5 * 13 * 13, "root") == Step(False, {"b1": 13 * 13})
    assert tables["b1"].step(13 * 13, "b") == Step(True, {})


def test_pass_through_node_delivers_when_also_a_destination() -> None:
    """A node that is both on the path and a destination delivers and forwards."""
    tables = _tables(_PARENTS, _PRIMES)
    route = tables["root"].route_to(["a", "a1"])

    assert tables["root"].step(route, None) == Step(False, {"a": 3 * 3 * 7 * 7})
    assert tables["a"].step(3 * 3 * 7 * 7, "root") == Step(True, {"a1": 7 * 7})


def test_route_to_self_is_own_prime_squared() -> None:
    """Naming the origin as a destination puts its prime in the route twice."""
    table = RouteTable(_PARENTS, _PRIMES, "b")

    assert table.route_to(["b"]) == 25
    assert table.step(25, None) == Step(True, {})
    assert table.route_to(["b", "b1"]) == 25 * 13 * 13


def test_step_never_sends_back_where_the_event_came_from() -> None:
    """Factors of the arrival side are ignored, so the event never turns back."""
    table = RouteTable(_PARENTS, _PRIMES, "a")

    assert table.step(7 * 7 * 11 * 11, "a1") == Step(False, {"a2": 11 * 11})
    assert table.step(2 * 5 * 13 * 13, "root") == Step(False, {})


def test_route_for_nobody_goes_nowhere() -> None:
    """A route whose factors match no node beyond this one forwards nothing."""
    table = RouteTable(_PARENTS, _PRIMES, "root")

    assert table.step(17 * 19 * 19, None) == Step(False, {})
    assert table.step(2, None) == Step(False, {})


def test_repeated_destinations_count_once() -> None:
    """Naming a destination twice gives the same route as naming it once."""
    table = RouteTable(_PARENTS, _PRIMES, "root")

    assert table.route_to(["b1", "b1"]) == table.route_to(["b1"])


def test_single_node_tree() -> None:
    """A tree of one node has no neighbours and routes only to itself."""
    table = RouteTable({"solo": None}, {"solo": 2}, "solo")

    assert table.neighbours == frozenset()
    assert table.route_to(["solo"]) == 4
    assert table.step(4, None) == Step(True, {})
    assert table.flood(None) == frozenset()


@pytest.mark.parametrize(
    ("parents", "primes", "me", "reason"),
    [
        ({"a": None, "b": None}, {"a": 2, "b": 3}, "a", "one root"),
        ({"a": "b", "b": "a"}, {"a": 2, "b": 3}, "a", "one root"),
        ({"r": None, "a": "b", "b": "a"}, {"r": 5, "a": 2, "b": 3}, "r", "cycle"),
        ({"r": None, "a": "a"}, {"r": 5, "a": 2}, "r", "cycle"),
        ({"r": None, "a": "ghost"}, {"r": 5, "a": 2}, "r", "unknown parent"),
        ({"r": None, "a": "r"}, {"r": 5}, "r", "no prime"),
        ({"r": None}, {"r": 5, "x": 3}, "r", "unknown node"),
        ({"r": None, "a": "r"}, {"r": 5, "a": 5}, "r", "share"),
        ({"r": None, "a": "r"}, {"r": 5, "a": 9}, "r", "not a prime"),
        ({"r": None, "a": "r"}, {"r": 5, "a": 1}, "r", "not a prime"),
        ({"r": None, "a": "r"}, {"r": 5, "a": -3}, "r", "not a prime"),
        ({"r": None, "a": "r"}, {"r": 5, "a": 2**89 - 1}, "r", "not a prime"),
        ({"r": None, "a": "r"}, {"r": 5, "a": 3}, "z", "not in the tree"),
    ],
)
def test_bad_topology_is_refused(
    parents: dict[str, str | None], primes: dict[str, int], me: str, reason: str
) -> None:
    """A table refuses a forest, a cycle, unknown parents and bad primes."""
    with pytest.raises(RouteError, match=reason):
        RouteTable(parents, primes, me)


def test_route_to_unknown_or_nobody_is_refused() -> None:
    """A route to an unknown node, or to no node at all, is an error at the origin."""
    table = RouteTable(_PARENTS, _PRIMES, "a")

    with pytest.raises(RouteError, match="ghost"):
        table.route_to(["b1", "ghost"])
    with pytest.raises(RouteError, match="at least one"):
        table.route_to([])


def test_next_hop_to_unknown_is_refused() -> None:
    """Asking the way to a node not in the tree raises RouteError."""
    table = RouteTable(_PARENTS, _PRIMES, "a")

    assert table.next_hop("b1") == "root"
    with pytest.raises(RouteError, match="unknown"):
        table.next_hop("ghost")


@pytest.mark.parametrize("came_from", ["b", "ghost", "a"])
def test_arrival_from_a_non_neighbour_is_refused(came_from: str) -> None:
    """An event said to arrive from a node that is not a neighbour is refused."""
    table = RouteTable(_PARENTS, _PRIMES, "a")

    with pytest.raises(RouteError, match="not a neighbour"):
        table.step(4, came_from)
    with pytest.raises(RouteError, match="not a neighbour"):
        table.flood(came_from)


@pytest.mark.parametrize("route", [0, -6])
def test_non_positive_route_is_refused(route: int) -> None:
    """Route 0 or below carries no destination and is refused, not flooded."""
    table = RouteTable(_PARENTS, _PRIMES, "a")

    with pytest.raises(RouteError, match="positive"):
        table.step(route, None)


def test_nth_prime_values() -> None:
    """nth_prime counts from 2 as the first prime, far enough for any tree."""
    assert [nth_prime(n) for n in range(1, 19)] == _SMALL_PRIMES
    assert nth_prime(100) == 541
    assert nth_prime(1000) == 7919
    assert nth_prime(10000) == 104729


@pytest.mark.parametrize("n", [0, -1])
def test_nth_prime_refuses_counts_below_one(n: int) -> None:
    """There is no zeroth or negative prime."""
    with pytest.raises(RouteError):
        nth_prime(n)
