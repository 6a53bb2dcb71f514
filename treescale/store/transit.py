"""Chunk gets answered on the way: a node with a chunk cache takes over the chunk
requests it would pass on towards a store relay, and fetches each chunk upstream
once for all the registry nodes behind it.

`ChunkTransit` binds a `ChunkCache` (`treescale.store.waycache`) to a bus node's
`transit` table. A CHUNK_GET from a registry node that this node would forward is
answered here instead: from the cache, or by one request of this node's own to the
holder the registry asked, shared by every request for the same chunk that comes
while it runs. The bytes are verified before they are cached or sent (against the
chunk's check when the request carries one, else its digest); bytes that do not
match are neither.
"""

# Design notes
#
# The hook: `BusNode.transit` maps a frame kind to a function the node calls with
# a frame it is about to pass on (from a neighbour, not for this node). It says
# whether it took the frame; one not taken is forwarded as before. This module
# takes CHUNK_GET requests and the CANCELs of the requests it took.
#
# What the requester checks. `BusNode._answer_arrived` matches an answer to a
# request it still waits on by `correlation` alone; the reply's `Message.origin` is
# the destination the requester named, not read from the wire. So an answer here is
# a REPLY with the relay's meta (``{"size": n}``) and the chunk as DATA pieces, the
# last flagged END, or one ERROR, all with the request's event id as correlation,
# routed to its origin. What the destination checks first is checked here too: the
# origin is a known node reached over the link the request came in on
# (`BusNode._came_the_right_way`). A request failing a check is passed on
# untouched, and the destination refuses it as before.
#
# What the bytes are verified against. A registry node's chunk-get carries the
# chunk's check from its recipe beside the digest. The fetch verifies by the check
# of the request that started it, and by the digest when that check is missing
# or does not match (`chunk_matches_either`): a wrong check from one registry node
# costs a second hash, never refuses good bytes to the others, and never lets in
# bytes that match neither. Each registry node verifies what it gets by its own
# check again.
#
# Only requests from registry nodes are taken: a relay's scrub asking another
# relay for a copy keeps talking to that relay.
#
# Progress. The bytes leave only once the whole chunk is here and verified, so
# the requester would see nothing for the length of a chunk's transfer, and its
# hedge (`treescale.store.chunkclient.HedgeDelay`) would ask another holder: a
# second upstream fetch of the same chunk. Each frame that arrives from upstream is
# therefore passed on as an empty DATA frame without END: the requester counts it
# as progress and it adds no byte to the reply. A holder that stalls sends no
# frames, so the requester's hedge still fires for it.
#
# One fetch per chunk. A request joins the fetch of its digest already under way,
# whichever holder that fetch asked; a request from an origin that already waits
# on that digest is that origin's hedge, and asks its own holder as well. The
# first verified answer serves every waiter of the digest and stops the other
# fetches. A fetch that fails answers its error to the waiters that named its
# holder (a miss upstream answers the same code), and places the others again.
#
# Memory: the cache's capacity, plus one chunk per fetch in flight, and fetches
# are bounded by the requests taken (`max_taken`). A reply being sent shares the
# bytes of the cache or of its fetch; it makes no copy but one piece at a time.

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from treescale.bus.frames import PIECE_SIZE, Flag, Frame, FrameError, Kind
from treescale.bus.node import (
    BusError,
    BusNode,
    EventIds,
    LinkLost,
    Message,
    RemoteError,
    RequestTimeout,
    Unreachable,
)
from treescale.bus.routing import RouteError, nth_prime
from treescale.config import Topology
from treescale.store.chunkclient import chunk_get_meta
from treescale.store.digests import chunk_matches_either, is_check, is_chunk_digest
from treescale.store.hashing import Runner, hash_here
from treescale.store.waycache import ChunkCache

__all__ = [
    "FETCH_TIMEOUT",
    "ChunkTransit",
    "TransitCounts",
]

FETCH_TIMEOUT = 25.0
"""Seconds an upstream fetch may take; under a registry's own chunk-get deadline
(30 s), so a requester hears the error before it gives up on its own."""


@dataclass(frozen=True)
class TransitCounts:
    """What the transit has done since it started, for logs and tests."""

    taken: int
    from_cache: int
    fetches: int
    fetched_bytes: int
    errors: int


@dataclass(eq=False)
class _Waiter:
    """A request taken over: who asked, of whom, and how its answer goes back."""

    origin: str
    correlation: int
    holder: str
    """The node the requester asked: an error of that node is answered as is."""
    via: str
    """The neighbour the request came from, toward its origin."""
    digest: str
    check: str
    """The chunk's check the requester gave, or empty (see `_Fetch.check`)."""
    fetch: "_Fetch | None" = None
    sending: "Deferred[None] | None" = None
    cancelled: bool = False


@dataclass(eq=False)
class _Fetch:
    """This node's own request for a chunk, and the requests waiting on it."""

    digest: str
    holder: str
    check: str
    """What the bytes are verified against first: the check of the request
    that started the fetch (`chunk_matches_either`)."""
    waiters: list[_Waiter] = field(default_factory=list)
    call: "Deferred[Any] | None" = None


class ChunkTransit:
    """Takes over the chunk gets a node passes on, answering them from its cache
    or from one shared fetch upstream."""

    log = Logger()

    def __init__(
        self,
        bus: BusNode,
        cache: ChunkCache,
        hash_in: Runner | None = None,
        timeout: float = FETCH_TIMEOUT,
        max_taken: int | None = None,
    ) -> None:
        """Bind to `bus`; `hash_in` runs the hashing of a chunk's bytes (at once
        when None; see `treescale.store.hashing`), and `max_taken` caps the
        requests held at once (the bus's cap on inbound requests when None);
        past it, requests are passed on."""
        self.bus = bus
        self.cache = cache
        self.hash_in = hash_in or hash_here
        self.timeout = timeout
        self.max_taken = max_taken or bus.link_settings.max_inbound_requests
        self._primes = _primes_of(bus.topology)
        self._taken: dict[int, _Waiter] = {}
        self._fetches: dict[str, dict[str, _Fetch]] = {}
        self._ids = EventIds()
        self._counts = dict.fromkeys(TransitCounts.__dataclass_fields__, 0)
        bus.transit[Kind.CHUNK_GET] = self.take_request
        bus.transit[Kind.CANCEL] = self.take_cancel
        bus.link_listeners.append(self.link_changed)
        bus.topology_listeners.append(self.topology_changed)
        self.log.info(
            "chunk cache of {nbytes} bytes on {node}: it answers chunk gets on the way",
            nbytes=cache.capacity,
            node=bus.me.name,
        )

    @property
    def taken(self) -> int:
        """Requests taken over and not yet answered in full."""
        return len(self._taken)

    @property
    def fetching(self) -> int:
        """Upstream fetches under way."""
        return sum(len(fetches) for fetches in self._fetches.values())

    def counts(self) -> TransitCounts:
        return TransitCounts(**self._counts)

    # What the bus node hands over.

    # Shortcoming: a get answered from the cache never reaches its holder, so a
    # registry node does not learn that a home relay lost its copy and does not
    # put it back on read; the relays' scrub brings it back instead.
    def take_request(self, frame: Frame, came_from: str) -> bool:
        """Take a chunk get passing through, unless it is not ours to answer."""
        waiter = self._waiter_for(frame, came_from)
        if waiter is None or len(self._taken) >= self.max_taken:
            return False

        self._taken[waiter.correlation] = waiter
        self._counts["taken"] += 1
        data = self.cache.get(waiter.digest)
        if data is not None:
            self._counts["from_cache"] += 1
            self._answer(waiter, data)
        else:
            self._place(waiter)
        return True

    def take_cancel(self, frame: Frame, came_from: str) -> bool:
        """Stop a request taken here when its origin cancels it."""
        waiter = self._taken.get(frame.correlation)
        if waiter is None or waiter.via != came_from:
            return False

        self._drop(waiter)
        return True

    def link_changed(self, peer: str, up: bool) -> None:
        """Forget the requests whose origin lay behind a link that went down."""
        if up:
            return

        for waiter in [w for w in self._taken.values() if w.via == peer]:
            self._drop(waiter)

    def topology_changed(self, topology: Topology) -> None:
        self._primes = _primes_of(topology)

    # Which requests are taken.

    def _waiter_for(self, frame: Frame, came_from: str) -> _Waiter | None:
        """The request as a waiter, if it is a chunk get this node may answer."""
        digest = frame.meta.get("digest")
        origin = frame.meta.get("origin")
        if not (frame.flags & Flag.END) or not is_chunk_digest(digest):
            return None

        if not isinstance(origin, str) or not self._came_from_registry(
            origin, came_from
        ):
            return None

        holder = self._destination(frame.route)
        if holder is None:
            return None

        assert isinstance(digest, str)
        check = frame.meta.get("check")
        return _Waiter(
            origin,
            frame.event_id,
            holder,
            came_from,
            digest,
            check if isinstance(check, str) and is_check(check) else "",
        )

    def _came_from_registry(self, origin: str, came_from: str) -> bool:
        """Whether `origin` is a registry node whose link toward us is `came_from`."""
        if origin == self.bus.me.name or origin not in self.bus.topology.parents:
            return False

        try:
            right_way = self.bus.routes.next_hop(origin) == came_from
        except RouteError:
            return False
        return right_way and self.bus.topology.node(origin).is_registry

    def _destination(self, route: int) -> str | None:
        """The one store node a route delivers to, if it is one and not us."""
        found = [
            name for name, prime in self._primes.items() if route % (prime * prime) == 0
        ]
        if len(found) != 1 or found[0] == self.bus.me.name:
            return None

        if found[0] not in self.bus.topology.parents:
            return None
        return found[0] if self.bus.topology.node(found[0]).is_store else None

    # Fetching upstream.

    def _place(self, waiter: _Waiter) -> None:
        """Join the fetch of the waiter's chunk, or start one toward its holder."""
        fetches = self._fetches.setdefault(waiter.digest, {})
        fetch = fetches.get(waiter.holder)
        if fetch is None and fetches and not self._hedging(waiter):
            fetch = next(iter(fetches.values()))

        if fetch is not None:
            fetch.waiters.append(waiter)
            waiter.fetch = fetch
            return

        fetch = _Fetch(waiter.digest, waiter.holder, waiter.check, [waiter])
        fetches[waiter.holder] = fetch
        waiter.fetch = fetch
        self._start(fetch)

    def _hedging(self, waiter: _Waiter) -> bool:
        """Whether the waiter's origin already waits on its chunk: a hedge."""
        return any(
            other.origin == waiter.origin
            for fetch in self._fetches.get(waiter.digest, {}).values()
            for other in fetch.waiters
        )

    def _start(self, fetch: _Fetch) -> None:
        self._counts["fetches"] += 1
        call = self.bus.request(
            fetch.holder,
            Kind.CHUNK_GET,
            chunk_get_meta(fetch.digest, fetch.check),  # a cache further up may verify
            max_reply=self.bus.max_request_data,
            timeout=self.timeout,
            on_progress=partial(self._progress, fetch),
        )
        fetch.call = call
        call.addCallbacks(
            self._arrived,
            self._fetch_failed,
            callbackArgs=(fetch,),
            errbackArgs=(fetch,),
        )

    def _current(self, fetch: _Fetch) -> bool:
        """Whether a fetch is still the one of its digest and holder."""
        return self._fetches.get(fetch.digest, {}).get(fetch.holder) is fetch

    def _progress(self, fetch: _Fetch) -> None:
        """Upstream sent a frame: tell every waiter, without any bytes."""
        for waiter in fetch.waiters:
            self._send(waiter, self._frame(waiter, Kind.DATA))

    def _arrived(self, reply: Message, fetch: _Fetch) -> None:
        """The chunk came whole: verify it before anything else is done with it."""
        if not self._current(fetch):
            return

        self._counts["fetched_bytes"] += len(reply.data)
        checking = self.hash_in(
            chunk_matches_either, reply.data, fetch.digest, fetch.check
        )
        fetch.call = checking
        checking.addCallbacks(
            self._verified,
            self._fetch_failed,
            callbackArgs=(fetch, reply.data),
            errbackArgs=(fetch,),
        )

    def _verified(self, good: bool, fetch: _Fetch, data: bytes) -> None:
        if not self._current(fetch):
            return

        if not good:
            self.log.error(
                "bad bytes for chunk {digest} from {relay}, caught at {node}",
                digest=fetch.digest,
                relay=fetch.holder,
                node=self.bus.me.name,
            )
            self._fail_fetch(
                fetch,
                "bad_bytes",
                f"{fetch.holder} sent bytes that do not match {fetch.digest}",
            )
            return

        self.cache.put(fetch.digest, data)
        self.log.debug(
            "chunk {digest} fetched from {relay} for {waiting} requests",
            digest=fetch.digest,
            relay=fetch.holder,
            waiting=sum(len(f.waiters) for f in self._fetches[fetch.digest].values()),
        )
        for other in self._fetches.pop(fetch.digest).values():
            if other is not fetch and other.call is not None:
                other.call.cancel()
            for waiter in other.waiters:
                self._answer(waiter, data)

    def _fetch_failed(self, failure: Failure, fetch: _Fetch) -> None:
        if not self._current(fetch):
            return

        code, message = self._error_answer(failure, fetch)
        self._fail_fetch(fetch, code, message)

    def _error_answer(self, failure: Failure, fetch: _Fetch) -> tuple[str, str]:
        """The code and message a failed fetch is answered with, as the holder
        itself would have answered, or as close as this node can tell."""
        error = failure.value
        if isinstance(error, RemoteError):
            return error.code, error.message

        if isinstance(error, RequestTimeout):
            return "timeout", f"{fetch.holder} did not answer within {self.timeout} s"

        if isinstance(error, LinkLost | Unreachable):
            return "unreachable", f"{self.bus.me.name} cannot reach {fetch.holder}"

        if not isinstance(error, BusError | CancelledError):
            self.log.failure(
                "fetch of chunk {digest} from {relay} failed",
                failure,
                digest=fetch.digest,
                relay=fetch.holder,
            )
        return "internal", f"{self.bus.me.name} failed to fetch {fetch.digest}"

    def _fail_fetch(self, fetch: _Fetch, code: str, message: str) -> None:
        """Answer the waiters that asked the fetch's holder with its error, and
        place the others again."""
        fetches = self._fetches[fetch.digest]
        del fetches[fetch.holder]
        if not fetches:
            del self._fetches[fetch.digest]

        for waiter in fetch.waiters:
            waiter.fetch = None
            if waiter.holder == fetch.holder:
                self._answer_error(waiter, code, message)
            else:
                self._place(waiter)

    def _drop(self, waiter: _Waiter) -> None:
        """Forget a waiter; a fetch nobody waits on any more is cancelled."""
        self._taken.pop(waiter.correlation, None)
        waiter.cancelled = True
        if waiter.sending is not None:
            waiter.sending.cancel()

        fetch, waiter.fetch = waiter.fetch, None
        if fetch is None:
            return

        fetch.waiters.remove(waiter)
        if fetch.waiters or not self._current(fetch):
            return

        fetches = self._fetches[fetch.digest]
        del fetches[fetch.holder]
        if not fetches:
            del self._fetches[fetch.digest]
        if fetch.call is not None:
            fetch.call.cancel()

    # Answering the requesters.

    def _answer(self, waiter: _Waiter, data: bytes) -> None:
        """Send a chunk to a waiter, as its holder would have sent it."""
        waiter.fetch = None
        sending = Deferred.fromCoroutine(self._send_reply(waiter, data))
        waiter.sending = sending
        sending.addErrback(self._reply_failed, waiter)
        sending.addBoth(lambda _: self._answered(waiter))

    async def _send_reply(self, waiter: _Waiter, data: bytes) -> None:
        """The REPLY frame, then the data in pieces, waiting on backpressure."""
        first = self._frame(waiter, Kind.REPLY, {"size": len(data)}, last=not data)
        self._send(waiter, first)
        for offset in range(0, len(data), PIECE_SIZE):
            link = self.bus.links.get(waiter.via)
            if link is None:
                return
            await link.wait_writable()
            if waiter.cancelled:
                return
            piece = data[offset : offset + PIECE_SIZE]
            last = offset + PIECE_SIZE >= len(data)
            self._send(waiter, self._frame(waiter, Kind.DATA, payload=piece, last=last))

    def _reply_failed(self, failure: Failure, waiter: _Waiter) -> None:
        if not isinstance(failure.value, CancelledError | ConnectionError):
            self.log.failure(
                "reply of chunk {digest} to {origin} failed",
                failure,
                digest=waiter.digest,
                origin=waiter.origin,
            )

    def _answered(self, waiter: _Waiter) -> None:
        if self._taken.get(waiter.correlation) is waiter:
            del self._taken[waiter.correlation]

    def _answer_error(self, waiter: _Waiter, code: str, message: str) -> None:
        self._counts["errors"] += 1
        self._answered(waiter)
        meta = {"code": code, "message": message}
        self._send(waiter, self._frame(waiter, Kind.ERROR, meta, last=True))

    def _frame(
        self,
        waiter: _Waiter,
        kind: Kind,
        meta: Mapping[str, object] | None = None,
        payload: bytes = b"",
        last: bool = False,
    ) -> Frame:
        """A frame of the answer to `waiter`, routed to its origin."""
        return Frame(
            kind,
            self._ids.next(),
            correlation=waiter.correlation,
            route=self.bus.routes.route_to([waiter.origin]),
            flags=Flag.END if last else Flag.NONE,
            meta=meta or {},
            payload=payload,
        )

    def _send(self, waiter: _Waiter, frame: Frame) -> None:
        """Put a frame on the link toward the waiter's origin, if it is up."""
        link = self.bus.links.get(waiter.via)
        if link is None:
            return

        try:
            link.send(frame)
        except FrameError as e:
            self.log.error(
                "answer to {origin} cannot be sent: {why}",
                origin=waiter.origin,
                why=str(e),
            )


def _primes_of(topology: Topology) -> dict[str, int]:
    """Every node's prime, as the routes are made of them."""
    return {node.name: nth_prime(node.id) for node in topology.nodes}
