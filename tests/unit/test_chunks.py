"""Tests of one relay's chunk files: atomic writes, verified reads, digest checks."""

import hashlib
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treescale.store.chunks import (
    ChunkCorrupt,
    ChunkError,
    ChunkMissing,
    ChunkStore,
)
from treescale.store.digests import sha256_digest

DATA = b"a chunk of some layer, " * 100
DIGEST = sha256_digest(DATA)
HEX = DIGEST.removeprefix("sha256:")


def put(store: ChunkStore, data: bytes) -> str:
    """Store `data` as one chunk through a writer and return its digest."""
    digest = sha256_digest(data)
    writer = store.open_writer(digest, len(data))
    writer.write(data)
    writer.commit()
    return digest


def chunk_file(root: pathlib.Path, hex_digest: str) -> pathlib.Path:
    """Where the documented layout keeps a chunk."""
    return root / "chunks" / "sha256" / hex_digest[:2] / hex_digest


def temp_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Every write in progress under the store."""
    return list((root / "tmp").iterdir())


def test_sha256_digest_is_the_sha256_in_spec_form() -> None:
    """sha256_digest names bytes by their sha256, prefixed with the algorithm."""
    assert sha256_digest(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_round_trip(tmp_path: pathlib.Path) -> None:
    """Bytes written in pieces and committed read back whole, at the layout's path."""
    store = ChunkStore(tmp_path)

    writer = store.open_writer(DIGEST, len(DATA))
    writer.write(DATA[:7])
    writer.write(b"")
    writer.write(DATA[7:])
    writer.commit()

    assert store.read(DIGEST) == DATA
    assert chunk_file(tmp_path, HEX).read_bytes() == DATA
    assert temp_files(tmp_path) == []


def test_round_trip_without_fsync(tmp_path: pathlib.Path) -> None:
    """A store with fsync off still stores and reads chunks."""
    store = ChunkStore(tmp_path, fsync=False)

    put(store, DATA)

    assert store.read(DIGEST) == DATA


def test_empty_chunk_round_trips(tmp_path: pathlib.Path) -> None:
    """A chunk of zero bytes is stored and read like any other."""
    store = ChunkStore(tmp_path)

    digest = put(store, b"")

    assert store.read(digest) == b""
    assert store.size(digest) == 0


@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=4096), cut=st.integers(min_value=0, max_value=4096))
def test_any_bytes_cut_anywhere_round_trip(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, cut: int
) -> None:
    """Any bytes, written in two pieces split at any point, read back unchanged."""
    store = ChunkStore(tmp_path_factory.mktemp("store"), fsync=False)
    digest = sha256_digest(data)

    writer = store.open_writer(digest, len(data))
    writer.write(data[:cut])
    writer.write(data[cut:])
    writer.commit()

    assert store.read(digest) == data


def test_has_and_size(tmp_path: pathlib.Path) -> None:
    """has and size report a stored chunk, and report nothing for an absent one."""
    store = ChunkStore(tmp_path)
    assert not store.has(DIGEST)
    assert store.size(DIGEST) is None

    put(store, DATA)

    assert store.has(DIGEST)
    assert store.size(DIGEST) == len(DATA)


def test_commit_of_wrong_bytes_raises_and_leaves_nothing(
    tmp_path: pathlib.Path,
) -> None:
    """Bytes of the right size but another hash are refused and no file remains."""
    store = ChunkStore(tmp_path)
    wrong = b"X" + DATA[1:]

    writer = store.open_writer(DIGEST, len(DATA))
    writer.write(wrong)
    with pytest.raises(ChunkCorrupt):
        writer.commit()

    assert not store.has(DIGEST)
    assert temp_files(tmp_path) == []
    assert list(store.digests()) == []


def test_commit_of_too_few_bytes_raises_and_leaves_nothing(
    tmp_path: pathlib.Path,
) -> None:
    """A chunk shorter than its stated size is refused at commit and no file remains."""
    store = ChunkStore(tmp_path)

    writer = store.open_writer(DIGEST, len(DATA))
    writer.write(DATA[:-1])
    with pytest.raises(ChunkCorrupt):
        writer.commit()

    assert not store.has(DIGEST)
    assert temp_files(tmp_path) == []


def test_over_long_write_is_refused(tmp_path: pathlib.Path) -> None:
    """A write past the stated size raises, gives the writer up and stores nothing."""
    store = ChunkStore(tmp_path)

    writer = store.open_writer(DIGEST, len(DATA))
    writer.write(DATA)
    with pytest.raises(ChunkCorrupt):
        writer.write(b"!")

    assert temp_files(tmp_path) == []
    with pytest.raises(ChunkError):
        writer.commit()
    assert not store.has(DIGEST)


def test_committing_a_present_chunk_is_fine(tmp_path: pathlib.Path) -> None:
    """Writing a chunk the store already holds succeeds and keeps its bytes."""
    store = ChunkStore(tmp_path)
    put(store, DATA)

    put(store, DATA)

    assert store.read(DIGEST) == DATA
    assert list(store.digests()) == [DIGEST]


def test_commit_twice_is_an_error(tmp_path: pathlib.Path) -> None:
    """A writer that has committed refuses further writes and commits."""
    store = ChunkStore(tmp_path)
    writer = store.open_writer(DIGEST, len(DATA))
    writer.write(DATA)
    writer.commit()

    with pytest.raises(ChunkError):
        writer.commit()
    with pytest.raises(ChunkError):
        writer.write(b"")
    assert store.read(DIGEST) == DATA


def test_corrupt_file_is_detected_and_quarantined(tmp_path: pathlib.Path) -> None:
    """A chunk whose file changed on disk raises on read and moves to quarantine."""
    store = ChunkStore(tmp_path)
    put(store, DATA)
    chunk_file(tmp_path, HEX).write_bytes(b"bit rot" + DATA[7:])

    with pytest.raises(ChunkCorrupt):
        store.read(DIGEST)

    assert (tmp_path / "quarantine" / HEX).read_bytes() == b"bit rot" + DATA[7:]
    assert not store.has(DIGEST)
    with pytest.raises(ChunkMissing):
        store.read(DIGEST)


def test_truncated_file_is_detected(tmp_path: pathlib.Path) -> None:
    """A chunk file cut short on disk raises on read instead of serving a prefix."""
    store = ChunkStore(tmp_path)
    put(store, DATA)
    chunk_file(tmp_path, HEX).write_bytes(DATA[:10])

    with pytest.raises(ChunkCorrupt):
        store.read(DIGEST)

    assert (tmp_path / "quarantine" / HEX).exists()


def test_missing_chunk_read_raises(tmp_path: pathlib.Path) -> None:
    """Reading a chunk the store never held raises ChunkMissing."""
    store = ChunkStore(tmp_path)

    with pytest.raises(ChunkMissing):
        store.read(DIGEST)


BAD_DIGESTS = [
    "",
    "sha256:",
    HEX,
    "sha256:" + HEX.upper(),
    "sha256:" + HEX[:-1],
    "sha256:" + HEX + "0",
    "sha256:" + HEX + "\n",
    "sha512:" + HEX,
    "SHA256:" + HEX,
    "sha256:" + "g" * 64,
    "sha256:../../../../etc/passwd",
    "sha256:" + "../" * 21 + "x",
    "sha256:" + HEX[:2] + "/" + HEX[3:],
]


@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_bad_digest_strings_are_rejected(tmp_path: pathlib.Path, digest: str) -> None:
    """Every verb taking a digest refuses one not in sha256:<64 lowercase hex> form."""
    store = ChunkStore(tmp_path)

    with pytest.raises(ChunkError):
        store.has(digest)
    with pytest.raises(ChunkError):
        store.size(digest)
    with pytest.raises(ChunkError):
        store.open_writer(digest, 0)
    with pytest.raises(ChunkError):
        store.read(digest)
    with pytest.raises(ChunkError):
        store.delete(digest)
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("size", [-1, True, 1.5])
def test_bad_sizes_are_rejected(tmp_path: pathlib.Path, size: int) -> None:
    """open_writer refuses a size that is not a non-negative integer."""
    store = ChunkStore(tmp_path)

    with pytest.raises(ChunkError):
        store.open_writer(DIGEST, size)
    assert temp_files(tmp_path) == []


def test_leftover_part_files_are_removed_on_open(tmp_path: pathlib.Path) -> None:
    """An unfinished write left by a crash is gone when the store opens again."""
    store = ChunkStore(tmp_path)
    put(store, DATA)
    other = b"another chunk"
    crashed = store.open_writer(sha256_digest(other), len(other))
    crashed.write(other[:5])
    stray = tmp_path / "tmp" / "from-an-earlier-run.part"
    stray.write_bytes(b"half")
    assert len(temp_files(tmp_path)) == 2

    reopened = ChunkStore(tmp_path)

    assert temp_files(tmp_path) == []
    assert not reopened.has(sha256_digest(other))
    assert reopened.read(DIGEST) == DATA


def test_digests_lists_every_chunk(tmp_path: pathlib.Path) -> None:
    """digests yields each stored chunk once, in order, skipping stray files."""
    store = ChunkStore(tmp_path)
    stored = {put(store, f"chunk {n}".encode()) for n in range(20)}
    (tmp_path / "chunks" / "sha256" / "stray").write_bytes(b"")
    (tmp_path / "chunks" / "sha256" / HEX[:2]).mkdir(exist_ok=True)
    (tmp_path / "chunks" / "sha256" / HEX[:2] / "notes.txt").write_bytes(b"")
    misplaced = hashlib.sha256(b"misplaced").hexdigest()
    (tmp_path / "chunks" / "sha256" / HEX[:2] / misplaced).write_bytes(b"misplaced")

    listed = list(store.digests())

    assert set(listed) == stored
    assert listed == sorted(listed)


def test_delete_removes_a_chunk(tmp_path: pathlib.Path) -> None:
    """A deleted chunk is gone, and deleting it again is not an error."""
    store = ChunkStore(tmp_path)
    put(store, DATA)

    store.delete(DIGEST)
    store.delete(DIGEST)

    assert not store.has(DIGEST)
    assert list(store.digests()) == []


def test_abort_removes_the_write(tmp_path: pathlib.Path) -> None:
    """An aborted writer leaves no file, may be aborted again, and refuses writes."""
    store = ChunkStore(tmp_path)
    writer = store.open_writer(DIGEST, len(DATA))
    writer.write(DATA[:10])

    writer.abort()
    writer.abort()

    assert temp_files(tmp_path) == []
    assert not store.has(DIGEST)
    with pytest.raises(ChunkError):
        writer.write(DATA[10:])
    with pytest.raises(ChunkError):
        writer.commit()


def test_abort_after_commit_keeps_the_chunk(tmp_path: pathlib.Path) -> None:
    """Aborting a committed writer, as a finally block does, keeps the chunk."""
    store = ChunkStore(tmp_path)
    writer = store.open_writer(DIGEST, len(DATA))
    writer.write(DATA)
    writer.commit()

    writer.abort()

    assert store.read(DIGEST) == DATA


def test_sizes_after_pages_through_every_chunk(tmp_path: pathlib.Path) -> None:
    """Pages of `sizes_after` list each chunk once, in order, with its size."""
    store = ChunkStore(tmp_path)
    stored = {put(store, f"chunk {n}".encode() * (n + 1)) for n in range(30)}
    (tmp_path / "chunks" / "sha256" / "stray").write_bytes(b"")

    pages, after = [], ""
    while page := store.sizes_after(after, 7):
        pages.append(page)
        after = page[-1][0]

    listed = [digest for page in pages for digest, _ in page]
    assert listed == sorted(stored)
    assert all(len(page) == 7 for page in pages[:-1])
    assert all(store.size(digest) == size for page in pages for digest, size in page)


def test_sizes_after_the_last_chunk_is_empty(tmp_path: pathlib.Path) -> None:
    """A page after the greatest digest is empty; an empty store has no pages."""
    store = ChunkStore(tmp_path)
    assert store.sizes_after("", 10) == []
    last = max(put(store, f"chunk {n}".encode()) for n in range(3))

    assert store.sizes_after(last, 10) == []


def test_unchecked_read_gives_the_stored_bytes_in_pieces(
    tmp_path: pathlib.Path,
) -> None:
    """A relay's read for a chunk-get gives the file's bytes as they are, in
    pieces of the size asked (-1: one piece), without hashing them: rotten bytes
    come out rotten, for the requester's check to catch."""
    store = ChunkStore(tmp_path)
    put(store, DATA)

    assert b"".join(store.read_unchecked(DIGEST, 100)) == DATA
    assert [len(p) for p in store.read_unchecked(DIGEST, 1000)] == [1000, 1000, 300]
    assert store.read_unchecked(DIGEST, -1) == (DATA,)

    chunk_file(tmp_path, HEX).write_bytes(DATA[:-1] + b"!")
    assert store.read_unchecked(DIGEST, -1) == (DATA[:-1] + b"!",)
    assert list((tmp_path / "quarantine").iterdir()) == []


def test_unchecked_read_of_a_missing_chunk_or_with_a_bad_size_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    """No file is ChunkMissing; a piece size of zero or below -1 is a ValueError."""
    store = ChunkStore(tmp_path)

    with pytest.raises(ChunkMissing):
        store.read_unchecked(DIGEST, 100)
    for size in (0, -2):
        with pytest.raises(ValueError):
            store.read_unchecked(DIGEST, size)


def test_set_aside_if_corrupt_moves_only_a_rotten_copy(tmp_path: pathlib.Path) -> None:
    """A sound copy stays; a rotten one moves to quarantine; none is no error."""
    store = ChunkStore(tmp_path)
    put(store, DATA)

    assert store.set_aside_if_corrupt(DIGEST) is False
    chunk_file(tmp_path, HEX).write_bytes(DATA[:-1] + b"!")
    assert store.set_aside_if_corrupt(DIGEST) is True
    assert not store.has(DIGEST)
    assert (tmp_path / "quarantine" / HEX).read_bytes() == DATA[:-1] + b"!"
    assert store.set_aside_if_corrupt(DIGEST) is False
