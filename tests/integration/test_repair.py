"""Lost and damaged copies made whole again by the relays' scrub, with real processes.

Each test runs a fresh tree whose relays scrub every second (set through the
environment variable the relays read, see `treescale.store.scrub`), hurts it, and
waits for every chunk to be back at two good copies on its effective homes, without
a single read of the blob to help. Reads then still give every byte back.
"""

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from treescale.store.placement import Holder, place
from treescale.store.scrub_settings import SETTINGS_VARIABLE

from .cluster import (
    REPLICAS,
    Cluster,
    relay_chunk_files,
    running_cluster,
    torn_chunk_files,
    wait_for,
)
from .images import MiB, OciImage, Skopeo
from .test_failures import (
    REPOSITORY,
    blob_chunks,
    chunk_path,
    image_chunk_names,
    nodes_with_tracebacks,
    reference,
    served_wrong,
    write_random_image,
)

pytestmark = pytest.mark.integration

# A scrub quick enough for a test: a pass every second, a relay gone after 3 s.
FAST_SCRUB = {
    "start_delay": 0.5,
    "pass_interval": 1.0,
    "gone_after": 3.0,
    "recheck_after": 1.0,
    "request_timeout": 3.0,
    "status_interval": 0.5,
    "chunks_per_second": 2000.0,
    "bytes_per_second": 512 * MiB,
}
REPAIR_TIMEOUT = 40.0


@pytest.fixture
def scrubbing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A tree of one registry node and three relays that scrub every second."""
    monkeypatch.setenv(SETTINGS_VARIABLE, json.dumps(FAST_SCRUB))
    with running_cluster(tmp_path / "cluster") as running:
        yield running


@pytest.fixture
def fresh(tmp_path: Path) -> OciImage:
    """An image of random bytes, 6 MiB in two layers: six chunks and more."""
    return write_random_image(tmp_path / "fresh", "fresh", [4 * MiB, 2 * MiB])


def holders_of(cluster: Cluster, name: str) -> list[str]:
    """The relays holding a chunk file of hex digest `name` whose bytes verify."""
    found = []
    for relay in cluster.relays:
        path = chunk_path(cluster, relay, name)
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == name:
            found.append(relay)
    return found


def homes_of(cluster: Cluster, name: str, relays: tuple[str, ...]) -> list[str]:
    """Where placement puts a chunk among `relays`, as the tree's file states them."""
    holders = [Holder(r, 1.0, r.removeprefix("relay-")) for r in relays]
    return [h.name for h in place(f"sha256:{name}", holders, REPLICAS)]


def short_chunks(
    cluster: Cluster, names: set[str], relays: tuple[str, ...]
) -> set[str]:
    """The chunks of `names` not held, good, by both their homes among `relays`."""
    return {
        name
        for name in names
        if not set(homes_of(cluster, name, relays)) <= set(holders_of(cluster, name))
    }


def wait_until_whole(
    cluster: Cluster, names: set[str], relays: tuple[str, ...], what: str
) -> None:
    """Wait until every chunk of `names` is on both its homes among `relays`."""
    try:
        wait_for(lambda: not short_chunks(cluster, names, relays), what, REPAIR_TIMEOUT)
    except Exception as error:
        pytest.fail(
            f"{error}; short: {sorted(short_chunks(cluster, names, relays))}\n"
            f"{cluster.log_tails()}"
        )


def test_relay_gone_for_good_has_its_copies_made_again(
    scrubbing: Cluster, skopeo: Skopeo, fresh: OciImage
) -> None:
    """With a relay killed and never back, every chunk it held gets back to two
    copies on the relays left, and the image still reads whole."""
    skopeo.push(fresh, reference(scrubbing, "fresh"))
    names = image_chunk_names(fresh)
    lost = names & set(relay_chunk_files(scrubbing, "relay-b"))
    assert lost, "relay-b held none of the image: killing it proves nothing"

    scrubbing.stop_node("relay-b", kill=True)
    scrubbing.wait_for_relays(len(scrubbing.relays) - 1)
    left = ("relay-a", "relay-c")

    wait_until_whole(scrubbing, names, left, "every chunk on both relays left")
    assert served_wrong(scrubbing, REPOSITORY, fresh) == []
    logged = scrubbing.log_text("relay-a") + scrubbing.log_text("relay-c")
    assert "re-created chunk" in logged
    assert "presuming it down" in logged
    assert nodes_with_tracebacks(scrubbing) == []


def test_corrupt_copy_is_repaired_without_being_read(
    scrubbing: Cluster, skopeo: Skopeo, fresh: OciImage
) -> None:
    """Bytes flipped in a chunk file are found by the scrub, the copy set aside
    and fetched again from its twin, though no client read the blob."""
    skopeo.push(fresh, reference(scrubbing, "fresh"))
    name = hashlib.sha256(blob_chunks(fresh, fresh.layers[0].digest)[0]).hexdigest()
    victim = holders_of(scrubbing, name)[0]
    path = chunk_path(scrubbing, victim, name)
    with path.open("r+b") as chunk_file:
        chunk_file.seek(4000)
        original = chunk_file.read(8)
        chunk_file.seek(4000)
        chunk_file.write(bytes(byte ^ 0x5A for byte in original))
    assert len(original) == 8, "the chunk is too short to damage at that offset"

    wait_for(
        lambda: victim in holders_of(scrubbing, name),
        f"chunk {name} good again on {victim}",
        REPAIR_TIMEOUT,
    )

    quarantined = scrubbing.topology.data_dir / victim / "quarantine" / name
    assert quarantined.is_file()
    assert "is corrupt here" in scrubbing.log_text(victim)
    assert "fetched again from" in scrubbing.log_text(victim)
    assert torn_chunk_files(scrubbing) == []
    assert served_wrong(scrubbing, REPOSITORY, fresh) == []


def test_deleted_copy_is_made_again(
    scrubbing: Cluster, skopeo: Skopeo, fresh: OciImage
) -> None:
    """A chunk file removed from one of its homes is copied back by the other."""
    skopeo.push(fresh, reference(scrubbing, "fresh"))
    names = image_chunk_names(fresh)
    name = sorted(names)[-1]
    victim = holders_of(scrubbing, name)[0]
    chunk_path(scrubbing, victim, name).unlink()

    wait_until_whole(scrubbing, names, scrubbing.relays, "the deleted copy back")

    assert victim in holders_of(scrubbing, name)


def test_chunks_pushed_while_a_relay_was_down_go_home_when_it_returns(
    scrubbing: Cluster, skopeo: Skopeo, fresh: OciImage
) -> None:
    """Chunks placed on fallback relays while their home was down are copied to
    that home once it is back, and it serves them with the others killed."""
    scrubbing.stop_node("relay-b", kill=True)
    scrubbing.wait_for_relays(len(scrubbing.relays) - 1)
    skopeo.push(fresh, reference(scrubbing, "fresh"))
    names = image_chunk_names(fresh)
    homed_on_b = {
        name
        for name in names
        if "relay-b" in homes_of(scrubbing, name, scrubbing.relays)
    }
    assert homed_on_b, "no chunk of the image is homed on relay-b"
    assert not homed_on_b & set(relay_chunk_files(scrubbing, "relay-b"))

    scrubbing.start_node("relay-b")
    scrubbing.wait_for_relays(len(scrubbing.relays))
    wait_until_whole(scrubbing, names, scrubbing.relays, "chunks back on their homes")

    # relay-b alone with one other relay must now serve the whole image.
    for other in ("relay-a", "relay-c"):
        scrubbing.stop_node(other, kill=True)
        scrubbing.wait_for_relays(len(scrubbing.relays) - 1)
        assert served_wrong(scrubbing, REPOSITORY, fresh) == [], f"{other} down"
        scrubbing.start_node(other)
        scrubbing.wait_for_relays(len(scrubbing.relays))
    assert nodes_with_tracebacks(scrubbing) == []


def test_scrub_progress_is_logged_per_pass(
    scrubbing: Cluster, skopeo: Skopeo, fresh: OciImage
) -> None:
    """Each relay logs the start and the counts of its passes."""
    skopeo.push(fresh, reference(scrubbing, "fresh"))

    def passes_logged() -> bool:
        return all(
            "scrub pass 2 of " + relay + " done" in scrubbing.log_text(relay)
            for relay in scrubbing.relays
        )

    wait_for(passes_logged, "two passes on every relay", REPAIR_TIMEOUT)
    text = scrubbing.log_text("relay-a")
    assert "scrub pass 1 of relay-a starting" in text
    assert "copies missing" in text
