"""Tests of garbage collection over real relays on in-memory bus links.

Relays keep real chunk and record files under the test's folder; bus time is the
tree's `Clock`. Files are made old with ``os.utime`` and record versions are
judged against a `wall` two hours ahead, so nothing waits for real time.
"""

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred

from tests.unit.bustest import BusTree, InlinePool, inline_reactor, topology
from treescale.gc.collector import run_gc
from treescale.gc.plan import (
    GcReport,
    chunks_to_sweep,
    digest_of_key,
    recipe_is_garbage,
    session_expired,
)
from treescale.gc.settings import GcSettings
from treescale.registry.saved_uploads import SessionRecord, session_key
from treescale.store.blobs import ChunkRef, UploadState, recipe_key
from treescale.store.chunks import ChunkStore
from treescale.store.cluster import ClusterStorage
from treescale.store.digests import sha256_digest
from treescale.store.relay import Relay

RELAYS = ("a", "b", "c")
MAX_CHUNK = 1 << 20
CHUNK = 65536
KEPT = b"kept " * 30_000
GONE = b"gone " * 40_000
HOUR = 3600.0
SETTINGS = GcSettings(records_per_second=100_000.0, chunk_pages_per_second=1000.0)


class World:
    """A registry node "root" with a `ClusterStorage` and three relays below it."""

    def __init__(self, root: Path) -> None:
        spec: list[tuple[str, str | None]] = [("root", None)]
        spec += [(name, "root") for name in RELAYS]
        tree_topology = topology(spec, chunk_size=CHUNK)
        self.tree = BusTree(tree_topology).connect_all()
        self.relays = {
            name: Relay(
                self.tree[name], root / name, inline_reactor(), InlinePool(), MAX_CHUNK
            )
            for name in RELAYS
        }
        self.storage = ClusterStorage(self.tree["root"], tree_topology, self.tree.clock)

    def run(self, d: "Deferred[Any]", limit: float = 1000.0) -> Any:
        """Let bus time pass until `d` fires; its result."""
        return self.tree.run(d, 0.5, limit)

    def put_blob(self, data: bytes) -> str:
        return str(self.run(ensureDeferred(self.storage.blob_put(data))))

    def put_record(self, key: str, value: bytes | None) -> None:
        self.run(ensureDeferred(self.storage.record_put(key, value)))

    def get_record(self, key: str) -> bytes | None:
        value: bytes | None = self.run(ensureDeferred(self.storage.record_get(key)))
        return value

    def stores(self) -> list[ChunkStore]:
        return [relay.chunks for relay in self.relays.values()]

    def chunk_copies(self, digest: str) -> int:
        return sum(1 for store in self.stores() if store.has(digest))

    def age_all_chunks(self, seconds: float) -> None:
        """Make every chunk file on every relay look `seconds` old."""
        then = time.time() - seconds
        for store in self.stores():
            for digest in store.digests():
                path = store._path(digest)
                os.utime(path, (then, then))

    def gc(self, *, dry_run: bool, idle: float = HOUR) -> GcReport:
        later = time.time() + 2 * HOUR
        report: GcReport = self.run(
            ensureDeferred(
                run_gc(
                    self.storage,
                    self.tree.clock,
                    SETTINGS,
                    idle,
                    dry_run=dry_run,
                    wall=lambda: later,
                )
            )
        )
        return report

    def chunks_of(self, digest: str) -> list[str]:
        value = self.get_record(recipe_key(digest))
        assert value is not None
        return [chunk[0] for chunk in json.loads(value)["chunks"]]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield World(tmp_path)


def test_dry_run_reports_without_deleting(world: World) -> None:
    kept = world.put_blob(KEPT)
    world.put_record(f"link/r/{kept}", b'{"size": 150000}')
    gone = world.put_blob(GONE)
    gone_chunks = world.chunks_of(gone)
    world.age_all_chunks(2 * HOUR)

    report = world.gc(dry_run=True)

    assert report.blobs == [gone]
    assert len(gone_chunks) == 4
    assert report.blob_bytes == len(GONE)
    assert report.chunks == 2 * len(gone_chunks)  # two copies of each
    assert report.chunk_bytes == 2 * len(GONE)
    assert world.get_record(recipe_key(gone)) is not None
    assert all(world.chunk_copies(c) == 2 for c in gone_chunks)


def test_collection_removes_unreferenced_blobs_and_their_chunks(world: World) -> None:
    kept = world.put_blob(KEPT)
    world.put_record(f"link/r/{kept}", b'{"size": 150000}')
    gone = world.put_blob(GONE)
    gone_chunks = world.chunks_of(gone)
    kept_chunks = world.chunks_of(kept)
    world.age_all_chunks(2 * HOUR)

    report = world.gc(dry_run=False)

    assert report.blobs == [gone]
    assert report.chunk_bytes == 2 * len(GONE)
    assert report.errors == []
    assert world.get_record(recipe_key(gone)) is None
    assert all(world.chunk_copies(c) == 0 for c in gone_chunks)
    assert all(world.chunk_copies(c) == 2 for c in kept_chunks)
    assert world.gc(dry_run=True).blobs == []


def test_manifest_keeps_what_it_references_alive(world: World) -> None:
    layer = world.put_blob(b"layer " * 400)
    config = world.put_blob(b'{"architecture": "amd64"}')
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": 25,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer,
                    "size": 2400,
                }
            ],
        }
    ).encode()
    digest = world.put_blob(manifest)
    info = {"media_type": "application/vnd.oci.image.manifest.v1+json"}
    world.put_record(
        f"manifest/r/{digest}", json.dumps({**info, "size": len(manifest)}).encode()
    )
    world.age_all_chunks(2 * HOUR)

    report = world.gc(dry_run=False)

    assert report.blobs == []
    assert report.chunks == 0
    for blob in (layer, config, digest):
        assert world.get_record(recipe_key(blob)) is not None


def test_young_chunks_without_a_recipe_are_kept(world: World) -> None:
    stray = world.put_blob(b"stray " * 300)
    chunks = world.chunks_of(stray)
    world.put_record(recipe_key(stray), None)

    report = world.gc(dry_run=False)

    assert report.chunks == 0
    assert all(world.chunk_copies(c) == 2 for c in chunks)


def test_expired_sessions_go_and_live_ones_keep_their_chunks(world: World) -> None:
    data = b"partial " * 12_500
    world.put_blob(data)
    digest = sha256_digest(data)
    chunks = world.chunks_of(digest)
    world.put_record(recipe_key(digest), None)
    state = UploadState(
        "sha256",
        len(data),
        (ChunkRef(chunks[0], CHUNK),),
        ChunkRef(chunks[1], len(data) - CHUNK),
        None,
    )
    later = time.time() + 2 * HOUR
    live = SessionRecord("live", "r", "sha256", later, later, state.encode())
    stale = SessionRecord("old", "r", "sha256", 0.0, 0.0, None)
    world.put_record(session_key("live"), live.encode())
    world.put_record(session_key("old"), stale.encode())
    world.age_all_chunks(2 * HOUR)

    report = world.gc(dry_run=False)

    assert report.sessions == ["old"]
    assert world.get_record(session_key("old")) is None
    assert world.get_record(session_key("live")) is not None
    assert report.chunks == 0
    assert all(world.chunk_copies(c) == 2 for c in chunks)


def test_a_write_after_judgement_survives_the_tombstone(world: World) -> None:
    records = world.storage.records
    world.put_record("recipe/x", b"old")
    [entry] = world.run(ensureDeferred(records.list_entries("recipe/", "", 10)))
    world.put_record("recipe/x", b"fresh")

    world.run(ensureDeferred(records.delete_after("recipe/x", entry.version)))

    assert world.get_record("recipe/x") == b"fresh"


def test_tombstone_of_an_unchanged_record_deletes_it(world: World) -> None:
    records = world.storage.records
    world.put_record("recipe/x", b"old")
    [entry] = world.run(ensureDeferred(records.list_entries("recipe/", "", 10)))

    world.run(ensureDeferred(records.delete_after("recipe/x", entry.version)))

    assert world.get_record("recipe/x") is None


# The decisions, without a cluster.


def test_digest_of_key() -> None:
    assert digest_of_key("link/a/b/sha256:ab", "link/") == "sha256:ab"
    assert digest_of_key("link/a/b", "link/") is None


def test_recipe_is_garbage_only_when_old_and_unnamed() -> None:
    now = 10_000.0
    assert recipe_is_garbage("d", 1_000_000, set(), now, 60.0)
    assert not recipe_is_garbage("d", 1_000_000, {"d"}, now, 60.0)
    assert not recipe_is_garbage("d", 9_990_000, set(), now, 60.0)


def test_chunks_to_sweep_spares_live_and_young_chunks() -> None:
    page = [("a", 1, 100.0), ("b", 2, 100.0), ("c", 3, 10.0)]
    assert chunks_to_sweep(page, {"a"}, 60.0) == [("b", 2)]


def test_session_expiry() -> None:
    record = SessionRecord("u", "r", "sha256", 0.0, 100.0, None)
    assert session_expired(record, 200.0, 50.0)
    assert not session_expired(record, 120.0, 50.0)


def test_sweep_keeps_a_chunk_written_again_since_listing(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, fsync=False)
    data = b"chunk " * 100
    digest = sha256_digest(data)
    writer = store.open_writer(digest, len(data))
    writer.write(data)
    writer.commit()

    assert store.delete_if_older(digest, time.time() - HOUR) is None
    assert store.has(digest)
    then = time.time() - 2 * HOUR
    os.utime(store._path(digest), (then, then))

    assert store.delete_if_older(digest, time.time() - HOUR) == len(data)
    assert not store.has(digest)


def test_a_listed_record_no_read_finds_stops_every_sweep(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the listing names a recipe that a read then cannot find (its copies
    short, say after topology edits), its chunks are unknown: nothing is swept,
    and the report says why."""
    kept = world.put_blob(KEPT)
    kept_chunks = world.chunks_of(kept)
    gone = world.put_blob(GONE)
    gone_chunks = world.chunks_of(gone)
    world.age_all_chunks(2 * HOUR)
    records = world.storage.records
    real = records.get_stored

    async def short(key: str) -> Any:
        return None if key == recipe_key(kept) else await real(key)

    monkeypatch.setattr(records, "get_stored", short)

    report = world.gc(dry_run=False)

    assert any("not found by a read" in error for error in report.errors)
    assert any("no chunk swept" in error for error in report.errors)
    assert report.chunks == 0
    assert all(world.chunk_copies(c) == 2 for c in kept_chunks)
    assert all(world.chunk_copies(c) == 2 for c in gone_chunks)


def test_an_unreadable_manifest_keeps_every_recipe(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest that cannot be read may name any blob: no recipe is judged
    garbage in that run."""
    gone = world.put_blob(GONE)
    world.put_record(
        "manifest/r/sha256:" + "a" * 64,
        b'{"media_type": "application/vnd.oci.image.manifest.v1+json", "size": 10}',
    )
    world.age_all_chunks(2 * HOUR)
    records = world.storage.records
    real = records.get_stored

    async def short(key: str) -> Any:
        return None if key.startswith("manifest/") else await real(key)

    monkeypatch.setattr(records, "get_stored", short)

    report = world.gc(dry_run=False)

    assert report.blobs == []
    assert world.get_record(recipe_key(gone)) is not None
