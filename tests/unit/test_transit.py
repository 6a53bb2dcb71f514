"""Tests of chunk gets answered on the way (`ChunkTransit`), on bus nodes in memory.

Every test runs this tree (see `bustest`), one `Clock` for all of it, with a chunk
cache on the hub, which every request between a registry node and a store passes:

              hub (cache)
         /    |     |    \\
       r1     r2    s1    s2
    registry nodes   store relays (fake handlers)
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred

from tests.unit.bustest import BusTree, failure, success, unfired
from treescale.bus.frames import PIECE_SIZE, Flag, Frame, Kind
from treescale.bus.link import Link
from treescale.bus.node import HandlerError, Message, RemoteError
from treescale.config import Topology, parse
from treescale.store import digests
from treescale.store.chunkclient import ChunkClient, chunk_get_meta
from treescale.store.digests import check_of, sha256_digest
from treescale.store.placement import holders_of
from treescale.store.transit import ChunkTransit
from treescale.store.waycache import ChunkCache

DATA = bytes(range(256)) * (PIECE_SIZE * 5 // 2 // 256) + b"end"  # 2.5 pieces
DIGEST = sha256_digest(DATA)
OTHER = b"another chunk" * 1000
OTHER_DIGEST = sha256_digest(OTHER)

TREE = (
    ("hub", None, "registry"),
    ("r1", "hub", "registry"),
    ("r2", "hub", "registry"),
    ("s1", "hub", "store"),
    ("s2", "hub", "store"),
)


def hub_topology() -> Topology:
    """The tree above: registry nodes and store relays all children of the hub."""
    nodes: list[dict[str, Any]] = []
    for index, (name, parent, role) in enumerate(TREE):
        node: dict[str, Any] = {
            "name": name,
            "id": index + 1,
            "bus": f"127.0.0.1:{7300 + index}",
            "roles": [role],
            "domain": name,
        }
        if role == "registry":
            node["http"] = "tcp:0:interface=127.0.0.1"
        if parent is not None:
            node["parent"] = parent
        nodes.append(node)
    raw = {"cluster": {"name": "t", "chunk_size": 1024 * 1024}, "node": nodes}
    return parse(raw, Path("test.toml"))


class Store:
    """A store relay's chunk-get handler over a dict; it counts what it is asked.

    With `parked` set, each answer waits for the test to call `release`.
    """

    def __init__(self, chunks: dict[str, bytes], parked: bool = False) -> None:
        self.chunks = chunks
        self.parked = parked
        self.calls: list[Message] = []
        self.waiting: list[Deferred[None]] = []
        self.cancelled = 0

    async def __call__(self, message: Message) -> Message:
        self.calls.append(message)
        if self.parked:
            gate: Deferred[None] = Deferred(self._cancel)
            self.waiting.append(gate)
            await gate
        data = self.chunks.get(str(message.meta["digest"]))
        if data is None:
            raise HandlerError("chunk_missing", "not here")
        return Message(Kind.REPLY, message.origin, {"size": len(data)}, data)

    def _cancel(self, _: object) -> None:
        self.cancelled += 1

    def release(self) -> None:
        for gate in self.waiting:
            if not gate.called:
                gate.callback(None)
        self.waiting = []


class Hub:
    """The tree wired, its stores, and the hub's transit."""

    def __init__(self, capacity: int = 10 * 1024 * 1024, **stores: Store) -> None:
        self.tree = BusTree(hub_topology()).connect_all()
        self.stores = {
            "s1": stores.get("s1", Store({DIGEST: DATA})),
            "s2": stores.get("s2", Store({DIGEST: DATA})),
        }
        for name, store in self.stores.items():
            self.tree[name].handlers[Kind.CHUNK_GET] = store
        self.cache = ChunkCache(capacity)
        self.transit = ChunkTransit(self.tree["hub"], self.cache)

    def get(
        self,
        origin: str,
        holder: str,
        digest: str = DIGEST,
        check: str = "",
        **options: Any,
    ) -> "Deferred[Message]":
        """A chunk get as a registry node's chunk client sends it."""
        return self.tree[origin].request(
            holder,
            Kind.CHUNK_GET,
            chunk_get_meta(digest, check),
            max_reply=len(DATA),
            **options,
        )

    def asked(self) -> int:
        """Chunk gets the store relays received, all together."""
        return sum(len(store.calls) for store in self.stores.values())


@pytest.fixture
def hub() -> Iterator[Hub]:
    yield Hub()


def error_code(d: "Deferred[Any]") -> str:
    """The code of the remote error a Deferred failed with."""
    error = failure(d).value
    assert isinstance(error, RemoteError), error
    return error.code


# Answering from the cache and from one fetch.


def test_a_second_get_is_answered_from_the_cache(hub: Hub) -> None:
    """The first registry node's get goes to the holder; the second node's get of
    the same chunk is answered by the hub without asking any holder."""
    first = hub.get("r1", "s1")
    hub.tree.flush()
    second = hub.get("r2", "s2")
    hub.tree.flush()

    assert success(first).data == DATA
    assert success(second).data == DATA
    assert hub.asked() == 1
    assert hub.cache.counts().hits == 1
    assert hub.transit.taken == 0


def test_a_reply_from_the_cache_looks_like_the_holders(hub: Hub) -> None:
    """An answer from the cache has the holder's meta and names the holder asked."""
    hub.get("r1", "s1")
    hub.tree.flush()

    d = hub.get("r2", "s2")
    hub.tree.flush()

    reply = success(d)
    assert reply.origin == "s2"
    assert reply.meta == {"size": len(DATA)}


def test_concurrent_gets_of_one_chunk_make_one_fetch() -> None:
    """Gets of one chunk that arrive while it is fetched join that fetch, even
    when they name another holder: only one holder is asked, once."""
    hub = Hub(s1=Store({DIGEST: DATA}, parked=True))
    first = hub.get("r1", "s1")
    second = hub.get("r2", "s2")
    hub.tree.flush()
    assert unfired(first) and unfired(second)

    hub.stores["s1"].release()
    hub.tree.flush()

    assert success(first).data == DATA
    assert success(second).data == DATA
    assert len(hub.stores["s1"].calls) == 1
    assert hub.stores["s2"].calls == []
    assert hub.transit.counts().fetches == 1


def test_a_hedge_of_the_same_origin_asks_its_own_holder() -> None:
    """A second get of a chunk from a node that already waits on it is a hedge:
    the hub asks that get's holder too, and the first answer serves both."""
    hub = Hub(s1=Store({DIGEST: DATA}, parked=True))
    first = hub.get("r1", "s1")
    hedge = hub.get("r1", "s2")
    hub.tree.flush()

    assert len(hub.stores["s2"].calls) == 1
    assert success(hedge).data == DATA
    assert success(first).data == DATA
    assert hub.stores["s1"].cancelled == 1


def test_progress_reaches_the_requester_while_the_hub_fetches(hub: Hub) -> None:
    """Each frame the hub receives from upstream gives the requester a sign of
    progress, before any byte of the reply, so its hedge does not fire."""
    progress: list[bool] = []
    d = hub.get("r1", "s1", on_progress=lambda: progress.append(d.called))
    hub.tree.flush()

    frames = 1 + -(-len(DATA) // PIECE_SIZE)  # a REPLY, then the DATA pieces
    assert success(d).data == DATA
    assert progress == [False] * (2 * frames)


def test_the_real_chunk_client_gets_through_the_hub(hub: Hub) -> None:
    """Registry nodes' own chunk clients get verified bytes through the hub, each
    chunk fetched from the stores once for both of them."""
    clients = [
        ChunkClient(hub.tree[name], holders_of(hub.tree.topology), hub.tree.clock)
        for name in ("r1", "r2")
    ]

    gets = [client.get(DIGEST, len(DATA)) for client in clients]
    hub.tree.flush()

    assert [success(get) for get in gets] == [DATA, DATA]
    assert hub.asked() == 1


# Never a wrong byte.


def test_bad_bytes_upstream_are_neither_cached_nor_served() -> None:
    """Bytes that do not hash to the digest are answered as an error, and are not
    kept: the next get asks the holder again."""
    hub = Hub(s1=Store({DIGEST: DATA[:-1] + b"X"}))

    d = hub.get("r1", "s1")
    hub.tree.flush()

    assert error_code(d) == "bad_bytes"
    assert DIGEST not in hub.cache
    hub.get("r1", "s1")
    hub.tree.flush()
    assert len(hub.stores["s1"].calls) == 2


def test_a_chunk_clients_check_goes_with_its_get_and_verifies_the_bytes(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A get for a chunk whose check the registry node knows carries it, and the
    hub verifies the fetched bytes by it: BLAKE3, not sha256 again."""
    client = ChunkClient(hub.tree["r1"], holders_of(hub.tree.topology), hub.tree.clock)

    def no_sha256(data: bytes) -> str:
        raise AssertionError("hashed by sha256")

    monkeypatch.setattr(digests, "sha256_digest", no_sha256)
    get = client.get(DIGEST, len(DATA), check_of(DATA))
    hub.tree.flush()

    assert success(get) == DATA
    asked = [call.meta for store in hub.stores.values() for call in store.calls]
    assert asked == [{"digest": DIGEST, "check": check_of(DATA), "origin": "hub"}]


def test_a_wrong_check_costs_a_second_hash_not_the_bytes(hub: Hub) -> None:
    """A check that does not fit the bytes leaves the digest to decide: good
    bytes are served and cached all the same."""
    d = hub.get("r1", "s1", check=check_of(OTHER))
    hub.tree.flush()

    assert success(d).data == DATA
    assert DIGEST in hub.cache


def test_bad_bytes_fail_the_check_and_the_digest() -> None:
    """Bytes that are not the chunk are refused when the request has a check."""
    hub = Hub(s1=Store({DIGEST: DATA[:-1] + b"X"}))

    d = hub.get("r1", "s1", check=check_of(DATA))
    hub.tree.flush()

    assert error_code(d) == "bad_bytes"
    assert DIGEST not in hub.cache


def test_a_malformed_check_is_ignored(hub: Hub) -> None:
    """A check not of the check's form is not used; the digest verifies."""
    d = hub.get("r1", "s1", check="blake3:XYZ")
    hub.tree.flush()

    assert success(d).data == DATA


def test_a_miss_upstream_answers_the_same_error() -> None:
    """A holder's error reaches the requester that asked it with the same code."""
    hub = Hub(s1=Store({}))

    d = hub.get("r1", "s1")
    hub.tree.flush()

    assert error_code(d) == "chunk_missing"
    assert hub.transit.taken == 0


def test_a_get_that_joined_another_holder_is_not_answered_its_error() -> None:
    """A get that joined a fetch from another holder does not get that holder's
    error: the hub asks the holder it named, and passes on its answer."""
    hub = Hub(s1=Store({}, parked=True))
    missing = hub.get("r1", "s1")
    joined = hub.get("r2", "s2")
    hub.tree.flush()
    assert hub.stores["s2"].calls == []

    hub.stores["s1"].release()
    hub.tree.flush()

    assert error_code(missing) == "chunk_missing"
    assert success(joined).data == DATA
    assert len(hub.stores["s2"].calls) == 1


def test_an_unreachable_holder_is_answered_at_once(hub: Hub) -> None:
    """When the hub's link to the holder is down, the requester hears so at once
    instead of waiting for its deadline."""
    hub.tree.cut("s1")

    d = hub.get("r1", "s1")
    hub.tree.flush()

    assert error_code(d) == "unreachable"


# Cancelling.


def test_cancel_stops_only_the_cancelled_share() -> None:
    """A requester that cancels leaves the fetch to the others; when the last one
    cancels, the hub cancels its fetch upstream."""
    hub = Hub(s1=Store({DIGEST: DATA}, parked=True))
    first = hub.get("r1", "s1")
    second = hub.get("r2", "s1")
    hub.tree.flush()

    first.cancel()
    hub.tree.flush()
    assert hub.stores["s1"].cancelled == 0
    assert hub.transit.taken == 1

    second.cancel()
    hub.tree.flush()
    assert hub.stores["s1"].cancelled == 1
    assert hub.transit.taken == 0
    assert hub.transit.fetching == 0
    assert isinstance(failure(first).value, CancelledError)


def test_a_cancelled_share_gets_no_reply() -> None:
    """After a requester cancels, the fetch it had joined sends it nothing."""
    hub = Hub(s1=Store({DIGEST: DATA}, parked=True))
    first = hub.get("r1", "s1")
    second = hub.get("r2", "s1")
    hub.tree.flush()
    delivered: list[Frame] = []
    original = hub.tree["r1"].frame_received

    def spy(peer: str, frame: Frame, link: Link) -> None:
        delivered.append(frame)
        original(peer, frame, link)

    hub.tree["r1"].frame_received = spy  # type: ignore[method-assign]
    first.cancel()
    hub.tree.flush()
    hub.stores["s1"].release()
    hub.tree.flush()

    assert success(second).data == DATA
    assert delivered == []


def test_losing_the_link_to_the_origin_drops_its_share() -> None:
    """A registry node whose link to the hub goes down stops counting as a
    waiter, and the fetch nobody else waits on is cancelled."""
    hub = Hub(s1=Store({DIGEST: DATA}, parked=True))
    hub.get("r1", "s1")
    hub.tree.flush()

    hub.tree.cut("r1")

    assert hub.transit.taken == 0
    assert hub.stores["s1"].cancelled == 1


# What the hub leaves alone.


def test_a_store_relays_get_passes_through(hub: Hub) -> None:
    """A chunk get from a store relay (a scrub) goes to the relay it names."""
    d = hub.tree["s2"].request(
        "s1", Kind.CHUNK_GET, {"digest": DIGEST}, max_reply=2**22
    )
    hub.tree.flush()

    assert success(d).data == DATA
    assert hub.stores["s1"].calls[0].origin == "s2"
    assert hub.transit.counts().taken == 0
    assert DIGEST not in hub.cache


def test_a_malformed_digest_is_left_to_the_holder(hub: Hub) -> None:
    """A get whose digest is not a chunk's reaches the holder, which answers it."""
    d = hub.get("r1", "s1", digest="sha256:nothex")
    hub.tree.flush()

    assert error_code(d) == "chunk_missing"
    assert len(hub.stores["s1"].calls) == 1
    assert hub.transit.counts().taken == 0


def test_other_kinds_pass_as_before(hub: Hub) -> None:
    """Requests of other kinds are delivered to their destination untouched."""
    seen: list[Message] = []

    async def has(message: Message) -> Message:
        seen.append(message)
        return Message(Kind.REPLY, message.origin, {"has": True})

    hub.tree["s1"].handlers[Kind.CHUNK_HAS] = has
    d = hub.tree["r1"].request("s1", Kind.CHUNK_HAS, {"digest": DIGEST})
    hub.tree.flush()

    assert success(d).meta == {"has": True}
    assert seen[0].origin == "r1"


def test_a_get_claiming_another_origin_is_not_answered(hub: Hub) -> None:
    """A get that came over r1's link but claims to be r2's is neither taken
    over nor passed on: the hub sees that r2 is not on r1's side of it."""
    tree = hub.tree
    route = tree["r1"].routes.route_to(["s1"])
    forged = Frame(
        Kind.CHUNK_GET,
        event_id=12345,
        route=route,
        flags=Flag.END,
        meta={"digest": DIGEST, "origin": "r2"},
    )
    tree["r1"].links["hub"].send(forged)
    tree.flush()

    assert hub.transit.counts().taken == 0
    assert hub.transit.counts().fetches == 0
    assert hub.stores["s1"].calls == []


def test_requests_past_the_cap_are_passed_on() -> None:
    """With as many requests taken as allowed, the next goes to its holder."""
    hub = Hub(s1=Store({DIGEST: DATA}, parked=True))
    hub.transit.max_taken = 1
    hub.get("r1", "s1")
    hub.get("r2", "s2")
    hub.tree.flush()

    assert hub.transit.taken == 1
    assert len(hub.stores["s2"].calls) == 1


def test_without_a_transit_every_get_reaches_a_holder() -> None:
    """The control: with no transit on the hub, both gets are answered upstream."""
    tree = BusTree(hub_topology()).connect_all()
    store = Store({DIGEST: DATA})
    tree["s1"].handlers[Kind.CHUNK_GET] = store
    for origin in ("r1", "r2"):
        tree[origin].request("s1", Kind.CHUNK_GET, {"digest": DIGEST}, max_reply=2**22)
    tree.flush()

    assert len(store.calls) == 2


def test_a_small_cache_still_answers_what_it_cannot_keep() -> None:
    """A chunk larger than the cache is still fetched and answered, just not kept."""
    hub = Hub(capacity=1000)

    d = hub.get("r1", "s1")
    hub.tree.flush()

    assert success(d).data == DATA
    assert DIGEST not in hub.cache
