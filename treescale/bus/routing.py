"""The TreeScale path model: routes as prime products, and what a hop does with one.

Pure functions over a topology; the bus node asks a `RouteTable` where an event goes
and does the sending itself.
"""

# Design notes
#
# Every node of the tree owns a distinct prime. The route of an event is one integer:
# the product of the primes of the nodes it must pass, with each destination's prime
# squared. The origin leaves its own prime out unless it is a destination, so a route
# always means "what is still to be done" and every hop reads it the same way.
#
# A hop receiving route r delivers locally when its prime divides r twice, divides
# all its own factors out, and splits what remains by the edge leading to each
# factor: each neighbour gets exactly the factors of nodes on its side of the tree.
# The side an event came from gets nothing, whatever the route says, so no event
# ever travels an edge twice. Factors that match no node are dropped.
#
# Everything a hop needs is precomputed here: its neighbours and, for each, the
# product of the primes on that neighbour's side. Splitting a route is then a few
# gcds per neighbour, with no walk of the tree at run time.

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["RouteError", "RouteTable", "Step", "nth_prime"]

# Witnesses that make Miller-Rabin exact for every number below 2**64.
_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
_PRIME_CEILING = 2**64


class RouteError(Exception):
    """A route that cannot be made or followed: an unknown node, a malformed tree or
    primes table, or an argument out of range."""


def nth_prime(n: int) -> int:
    """Give the n-th prime, counting 2 as the first: a stable way to number nodes."""
    if n < 1:
        raise RouteError(f"there is no prime number {n}; counting starts at 1")

    bound = _sieve_bound(n)
    sieve = bytearray([1]) * (bound + 1)
    sieve[0:2] = b"\x00\x00"
    for candidate in range(2, math.isqrt(bound) + 1):
        if sieve[candidate]:
            first = candidate * candidate
            sieve[first::candidate] = bytes(len(range(first, bound + 1, candidate)))

    count = 0
    for number, flag in enumerate(sieve):
        count += flag
        if flag and count == n:
            return number

    raise AssertionError("the sieve bound was too small")  # pragma: no cover


def _sieve_bound(n: int) -> int:
    """An upper bound on the n-th prime (Rosser's theorem), small enough to sieve."""
    if n < 6:
        return 13

    log_n = math.log(n)
    return int(n * (log_n + math.log(log_n))) + 1


def _is_prime(number: int) -> bool:
    """Tell whether a number below 2**64 is prime (exact Miller-Rabin)."""
    if number < 2:
        return False

    for small in _WITNESSES:
        if number % small == 0:
            return number == small

    odd, twos = number - 1, 0
    while odd % 2 == 0:
        odd, twos = odd // 2, twos + 1

    return all(_passes(number, witness, odd, twos) for witness in _WITNESSES)


def _passes(number: int, witness: int, odd: int, twos: int) -> bool:
    """One Miller-Rabin round: False proves the number composite."""
    value = pow(witness, odd, number)
    if value in (1, number - 1):
        return True

    for _ in range(twos - 1):
        value = value * value % number
        if value == number - 1:
            return True

    return False


@dataclass(frozen=True)
class Step:
    """What one hop does with an event: handle it here, and where to send it on."""

    deliver: bool
    forwards: Mapping[str, int]  # neighbour name -> the route to send on that link


class RouteTable:
    """The tree seen from one node: its neighbours and what lies behind each.

    Built once per topology. The constructor checks the tree and the primes, so a
    bad topology fails when it loads, not when the first event moves.
    """

    me: str
    neighbours: frozenset[str]

    def __init__(
        self, parents: Mapping[str, str | None], primes: Mapping[str, int], me: str
    ) -> None:
        _check_tree(parents)
        _check_primes(parents, primes)
        if me not in parents:
            raise RouteError(f"node {me!r} is not in the tree")

        self.me = me
        self._parents = dict(parents)
        self._primes = dict(primes)
        self._toward_me = _walk_from(me, _adjacency(parents))
        self._first_hop = self._first_hops()
        self.neighbours = frozenset(self._first_hop.values())
        self._sides = self._side_products()

    def _first_hops(self) -> dict[str, str]:
        """Map every other node to the neighbour of mine on the way to it."""
        first_hop: dict[str, str] = {}
        for node in self._parents:
            if node == self.me:
                continue

            hop = node
            while self._toward_me[hop] != self.me:
                hop = self._toward_me[hop]
            first_hop[node] = hop

        return first_hop

    def _side_products(self) -> dict[str, int]:
        """For each neighbour, the product of the primes of the nodes behind it."""
        sides = dict.fromkeys(self.neighbours, 1)
        for node, hop in self._first_hop.items():
            sides[hop] *= self._primes[node]

        return sides

    def route_to(self, destinations: Iterable[str]) -> int:
        """Make the route an event takes from here to every destination given."""
        targets = set(destinations)
        if not targets:
            raise RouteError("a route needs at least one destination")

        unknown = sorted(targets - self._parents.keys())
        if unknown:
            raise RouteError(f"no route to unknown node(s) {', '.join(unknown)}")

        passed: set[str] = set()
        for target in targets:
            passed.update(self._path_from_me(target))

        route = 1
        for node in passed:
            route *= self._primes[node]
        for target in targets:
            route *= self._primes[target]

        return route

    def _path_from_me(self, target: str) -> list[str]:
        """The nodes an event passes from here to a target, the target included and
        this node left out unless it is the target."""
        if target == self.me:
            return [target]

        path: list[str] = []
        node = target
        while node != self.me:
            path.append(node)
            node = self._toward_me[node]

        return path

    def step(self, route: int, came_from: str | None) -> Step:
        """Decide what this hop does with an event that arrived carrying a route."""
        self._check_came_from(came_from)
        if route < 1:
            raise RouteError(f"route {route} is not a positive product of primes")

        prime = self._primes[self.me]
        deliver = route % (prime * prime) == 0
        remaining = _without_factor(route, prime)

        forwards: dict[str, int] = {}
        for neighbour in sorted(self.neighbours - {came_from}):
            part = _part_over(remaining, self._sides[neighbour])
            if part > 1:
                forwards[neighbour] = part

        return Step(deliver=deliver, forwards=MappingProxyType(forwards))

    def flood(self, came_from: str | None) -> frozenset[str]:
        """The links a broadcast event goes out on: every one but where it came in."""
        self._check_came_from(came_from)
        return self.neighbours - {came_from}

    def next_hop(self, destination: str) -> str:
        """The neighbour to send an event to on its way to a destination."""
        if destination == self.me:
            raise RouteError(f"{destination!r} is this node; there is no next hop")

        if destination not in self._first_hop:
            raise RouteError(f"no route to unknown node {destination!r}")

        return self._first_hop[destination]

    def _check_came_from(self, came_from: str | None) -> None:
        """Refuse an arrival link that is not one of this node's edges."""
        if came_from is not None and came_from not in self.neighbours:
            raise RouteError(f"{came_from!r} is not a neighbour of {self.me!r}")


def _check_tree(parents: Mapping[str, str | None]) -> None:
    """Refuse anything but one tree: one root, known parents, no cycle."""
    roots = sorted(node for node, parent in parents.items() if parent is None)
    if len(roots) != 1:
        raise RouteError(f"the tree needs exactly one root, found {roots or 'none'}")

    for node, parent in parents.items():
        if parent is not None and parent not in parents:
            raise RouteError(f"node {node!r} has unknown parent {parent!r}")

    reached = _walk_from(roots[0], _adjacency(parents))
    cut_off = sorted(parents.keys() - reached.keys())
    if cut_off:
        raise RouteError(f"node(s) {', '.join(cut_off)} sit on a cycle, off the tree")


def _check_primes(parents: Mapping[str, str | None], primes: Mapping[str, int]) -> None:
    """Refuse a primes table that leaves a node out or gives one prime twice."""
    missing = sorted(parents.keys() - primes.keys())
    if missing:
        raise RouteError(f"node(s) {', '.join(missing)} have no prime")

    extra = sorted(primes.keys() - parents.keys())
    if extra:
        raise RouteError(f"primes given for unknown node(s) {', '.join(extra)}")

    for node, prime in primes.items():
        if not 0 < prime < _PRIME_CEILING or not _is_prime(prime):
            raise RouteError(f"node {node!r} has {prime}, not a prime below 2**64")

    if len(set(primes.values())) != len(primes):
        raise RouteError("two nodes share a prime")


def _adjacency(parents: Mapping[str, str | None]) -> dict[str, list[str]]:
    """The tree's edges, as each node's list of neighbours."""
    adjacent: dict[str, list[str]] = {node: [] for node in parents}
    for node, parent in parents.items():
        if parent is not None:
            adjacent[node].append(parent)
            adjacent[parent].append(node)

    return adjacent


def _walk_from(start: str, adjacent: Mapping[str, list[str]]) -> dict[str, str]:
    """Visit the tree from one node; map each node reached to its neighbour one step
    closer to the start (the start maps to itself)."""
    toward = {start: start}
    frontier = [start]
    while frontier:
        node = frontier.pop()
        for neighbour in adjacent[node]:
            if neighbour not in toward:
                toward[neighbour] = node
                frontier.append(neighbour)

    return toward


def _without_factor(number: int, prime: int) -> int:
    """Divide every power of a prime out of a number."""
    while number % prime == 0:
        number //= prime

    return number


def _part_over(number: int, primes_product: int) -> int:
    """The part of a number made of the primes in a square-free product, with their
    full multiplicity."""
    part = 1
    common = math.gcd(number, primes_product)
    while common > 1:
        part *= common
        number //= common
        common = math.gcd(number, common)

    return part
