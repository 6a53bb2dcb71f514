"""Tests of record listing: a relay's index of listed keys, and listings that merge
every relay's page by version."""

from pathlib import Path

import pytest
from twisted.internet.defer import ensureDeferred, maybeDeferred

from tests.unit.bustest import failure, success
from tests.unit.test_records import (
    RELAYS,
    FakeBus,
    Wall,
    client_over,
    relay_tree,
    replicas_of,
    v,
)
from treescale.bus.frames import Kind
from treescale.bus.node import HandlerError, Message
from treescale.store import records
from treescale.store.errors import StorageUnavailable
from treescale.store.placement import Holder
from treescale.store.records import (
    HybridClock,
    RecordClient,
    RecordFiles,
    Stored,
    answer_record_list,
)


def keys_of(entries: list[records.Listed]) -> list[str]:
    return [entry.key for entry in entries]


# One relay's index.


def test_listing_is_in_key_order_within_the_prefix(tmp_path: Path) -> None:
    """Keys come sorted; a sibling repository sharing the first letters is apart."""
    files = RecordFiles(tmp_path, fsync=False)
    for key in ("tag/a:v2", "tag/a:v1", "tag/a/b:v1", "tag/ab:x", "repo/a"):
        files.put(key, Stored(v(1), b"d"))

    entries, more = files.listing("tag/a:", "", 10)

    assert keys_of(entries) == ["tag/a:v1", "tag/a:v2"]
    assert not more


def test_listing_pages_with_after_and_says_more(tmp_path: Path) -> None:
    """A page stops at its limit, says more follow, and the next starts after it."""
    files = RecordFiles(tmp_path, fsync=False)
    for index in range(5):
        files.put(f"repo/r{index}", Stored(v(1), b""))

    first, more = files.listing("repo/", "", 2)
    second, more_after = files.listing("repo/", first[-1].key, 10)

    assert keys_of(first) == ["repo/r0", "repo/r1"] and more
    assert keys_of(second) == ["repo/r2", "repo/r3", "repo/r4"] and not more_after


def test_listing_shows_tombstones_with_their_versions(tmp_path: Path) -> None:
    """A deleted key is listed as deleted, so a merge can let it win."""
    files = RecordFiles(tmp_path, fsync=False)
    files.put("repo/a", Stored(v(1), b""))
    files.listing("repo/", "", 10)
    files.put("repo/a", Stored(v(2), None))

    entries, _ = files.listing("repo/", "", 10)

    assert entries == [records.Listed("repo/a", v(2), True)]


def test_index_is_rebuilt_from_the_files(tmp_path: Path) -> None:
    """A relay that restarts lists what its files hold; unlisted keys stay out."""
    files = RecordFiles(tmp_path, fsync=False)
    files.put("tag/a:v1", Stored(v(1), b"d"))
    files.put("chunk/sha256:00", Stored(v(1), b"r"))

    entries, _ = RecordFiles(tmp_path, fsync=False).listing("tag/", "", 10)

    assert keys_of(entries) == ["tag/a:v1"]


@pytest.mark.parametrize(
    "meta",
    [
        {"prefix": "chunk/", "after": "", "limit": 1},
        {"prefix": "tag/", "after": 3, "limit": 1},
        {"prefix": "tag/", "after": "", "limit": 0},
        {"prefix": "tag/", "after": "", "limit": records.MAX_LIST_PAGE + 1},
        {"prefix": "tag/", "after": "", "limit": True},
        {"prefix": "tag/", "after": "x" * 2000, "limit": 1},
    ],
)
def test_relay_refuses_bad_listings(tmp_path: Path, meta: dict[str, object]) -> None:
    """Unlisted prefixes, bad start keys and page sizes are the sender's mistake."""
    files = RecordFiles(tmp_path, fsync=False)
    message = Message(Kind.RECORD_LIST, "edge", meta)

    error = failure(maybeDeferred(answer_record_list, files, message)).value

    assert isinstance(error, HandlerError)
    assert error.code == "bad_request"


# Listings over the replicas.


@pytest.fixture
def files(tmp_path: Path) -> dict[str, RecordFiles]:
    """Record files for each of four relays."""
    return {name: RecordFiles(tmp_path / name, fsync=False) for name in RELAYS}


def list_keys(
    client: RecordClient, prefix: str, after: str = "", limit: int = 100
) -> list[str]:
    return success(ensureDeferred(client.list_keys(prefix, after, limit)))


def test_listing_merges_every_relays_keys(files: dict[str, RecordFiles]) -> None:
    """Keys written through the client, each on three of four relays, list once."""
    client = client_over(FakeBus(files))
    names = [f"tag/app:{index:02}" for index in range(12)]
    for name in reversed(names):
        success(ensureDeferred(client.put(name, b"sha256:x")))

    assert list_keys(client, "tag/app:") == names


def test_listing_hides_deleted_keys(files: dict[str, RecordFiles]) -> None:
    """A deletion on a quorum hides the key even where a replica missed it."""
    key = "tag/app:old"
    first, second, third = replicas_of(key)
    for name in (first, second, third):
        files[name].put(key, Stored(v(1), b"d"))
    for name in (first, second):
        files[name].put(key, Stored(v(2), None))
    bus = FakeBus(files)
    bus.down.add(first)

    assert list_keys(client_over(bus), "tag/app:") == []


def test_listing_pages_past_each_relays_page(
    files: dict[str, RecordFiles], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With relay pages smaller than the request, the listing goes round again
    and still returns every key once, in order, never past an unsure point."""
    monkeypatch.setattr(records, "MAX_LIST_PAGE", 3)
    client = client_over(FakeBus(files))
    names = [f"repo/r{index:02}" for index in range(20)]
    for name in names:
        success(ensureDeferred(client.put(name, b"")))

    assert list_keys(client, "repo/") == names
    assert list_keys(client, "repo/", after="repo/r04", limit=5) == names[5:10]


def test_listing_survives_one_relay_down(files: dict[str, RecordFiles]) -> None:
    """With one relay of four gone, every key still has a copy among the rest."""
    bus = FakeBus(files)
    client = client_over(bus)
    names = [f"repo/r{index}" for index in range(8)]
    for name in names:
        success(ensureDeferred(client.put(name, b"")))
    bus.down.add(RELAYS[0])

    assert list_keys(client, "repo/") == names


def test_listing_with_too_few_relays_is_unavailable(
    files: dict[str, RecordFiles],
) -> None:
    """Two relays of four down: a key might be on neither answerer, so no answer."""
    bus = FakeBus(files)
    bus.down.update(RELAYS[:2])

    error = failure(ensureDeferred(client_over(bus).list_keys("repo/", "", 5))).value

    assert isinstance(error, StorageUnavailable)
    assert "2 of 4" in str(error)


def test_listing_of_an_unlisted_prefix_is_a_bug(files: dict[str, RecordFiles]) -> None:
    """Asking for keys no relay indexes is refused before anything is sent."""
    bus = FakeBus(files)

    error = failure(ensureDeferred(client_over(bus).list_keys("chunk/", "", 5))).value

    assert isinstance(error, ValueError)
    assert bus.calls == []


def test_listing_over_the_bus(tmp_path: Path) -> None:
    """A listing from the registry node crosses real links to three relays."""
    tree = relay_tree(tmp_path)
    holders = [Holder(name) for name in ("r1", "r2", "r3")]
    client = RecordClient(tree["edge"], holders, 3, HybridClock(1, wall=Wall()))
    for name in ("repo/b", "repo/a"):
        written = ensureDeferred(client.put(name, b""))
        tree.flush()
        success(written)
    tree.cut("r2")

    listed = ensureDeferred(client.list_keys("repo/", "", 10))
    tree.flush()

    assert success(listed) == ["repo/a", "repo/b"]
