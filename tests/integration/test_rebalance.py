"""Chunks and records moved after a live topology edit, with real processes.

Each test runs a fresh tree (one registry node, three relays, each its own twistd
process) whose relays rebalance slowly enough for pulls to overlap the moving,
pushes an image, edits the file as an operator would and has every process take
the edit with `treescale reload`. It then waits with `treescale rebalance --wait`
and checks every chunk file on disk against placement.
"""

import hashlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from treescale.store.placement import Holder, place

from .cluster import (
    REGISTRY,
    RELAYS,
    REPLICAS,
    REPO_ROOT,
    Cluster,
    child_environment,
    edit_topology,
    relay_chunk_files,
    running_cluster,
)
from .images import MiB, OciImage, Skopeo
from .test_failures import (
    REPOSITORY,
    assert_pulls_back,
    chunk_path,
    image_chunk_names,
    nodes_with_tracebacks,
    reference,
    served_wrong,
    write_random_image,
)
from .test_topology_reload import treescale_reload

pytestmark = pytest.mark.integration

NEW_RELAY = "relay-d"
# One chunk of 1 MiB a second on each relay: the few chunks of an image of a dozen
# that change homes take seconds to move, long enough for pulls in between.
SLOW_REBALANCE = "\n".join(
    [
        "[rebalance]",
        "start_delay = 0.5",
        "recheck_interval = 1.0",
        "request_timeout = 3.0",
        "status_interval = 0.5",
        "chunks_per_second = 1.0",
        f"bytes_per_second = {MiB}",
    ]
)
WAIT_TIMEOUT = 120.0


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Cluster]:
    """A tree of one registry node and three relays that rebalance slowly."""
    with running_cluster(tmp_path / "cluster", extra=SLOW_REBALANCE) as running:
        yield running


@pytest.fixture
def pushed(tree: Cluster, skopeo: Skopeo, tmp_path: Path) -> OciImage:
    """An image of random bytes, 12 MiB in three layers, pushed to the tree."""
    image = write_random_image(
        tmp_path / "pushed", "pushed", [5 * MiB, 4 * MiB, 3 * MiB]
    )
    skopeo.push(image, reference(tree, "pushed"))
    return image


def homes_of(
    name: str, relays: Sequence[str], draining: Sequence[str] = ()
) -> set[str]:
    """Where placement puts the chunk of hex digest `name` among `relays`."""
    holders = [Holder(r, 1.0, r.removeprefix("relay-"), r in draining) for r in relays]
    return {h.name for h in place(f"sha256:{name}", holders, REPLICAS)}


def holders_of(cluster: Cluster, name: str) -> set[str]:
    """The relays holding a chunk file of hex digest `name` whose bytes verify."""
    found = set()
    for relay in cluster.relays:
        path = chunk_path(cluster, relay, name)
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == name:
            found.add(relay)
    return found


def misplaced(
    cluster: Cluster, names: set[str], draining: Sequence[str] = ()
) -> dict[str, set[str]]:
    """The chunks of `names` whose holders are not exactly their homes."""
    wrong = {}
    for name in names:
        holders = holders_of(cluster, name)
        if holders != homes_of(name, cluster.relays, draining):
            wrong[name] = holders
    return wrong


def start_rebalance_wait(cluster: Cluster) -> "subprocess.Popen[str]":
    """`treescale rebalance --wait` against the tree's registry node, started."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "treescale.cli",
            "rebalance",
            "--wait",
            "--url",
            f"http://{cluster.address}",
            "--timeout",
            str(WAIT_TIMEOUT),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=child_environment(),
    )


def wait_output(waiting: "subprocess.Popen[str]") -> tuple[int, str]:
    """The exit status and output of a started `treescale rebalance --wait`."""
    try:
        out, err = waiting.communicate(timeout=WAIT_TIMEOUT + 30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    return waiting.returncode, out + err


def rebalance_left(cluster: Cluster) -> int | None:
    """Chunks the relays report left to move for the registry's placement; None
    while any relay has not reported for it yet."""
    status = cluster.status()
    relays = (status.get("rebalance") or {}).get("relays") or {}
    left = 0
    for relay in cluster.relays:
        mine = relays.get(relay)
        if not mine or mine.get("placement") != status.get("placement"):
            return None
        left += mine["chunks_left"] if mine.get("state") != "idle" else 0
    return left


def test_added_relay_takes_its_chunks_while_pulls_go_on(
    tree: Cluster, pushed: OciImage, skopeo: Skopeo, tmp_path: Path
) -> None:
    """relay-d added live: the relays move to it the chunks it is now home to and
    delete their old copies, pulls during the move are byte-exact, and
    `treescale rebalance --wait` ends with exit status 0."""
    names = image_chunk_names(pushed)
    assert misplaced(tree, names) == {}
    relays = (*RELAYS, NEW_RELAY)
    bound = {name for name in names if NEW_RELAY in homes_of(name, relays)}
    assert bound, "no chunk of the image is homed on relay-d: the test proves nothing"

    tree.topology = edit_topology(
        tree.topology, relays=relays, version=2, extra=SLOW_REBALANCE
    )
    tree.start_node(NEW_RELAY)
    reloaded = treescale_reload(tree, (REGISTRY, *RELAYS))
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    tree.wait_for_relays(len(relays))
    waiting = start_rebalance_wait(tree)

    pulls_while_moving = 0
    wrong: list[str] = []
    for _ in range(500):
        moving = bool(misplaced(tree, names))
        if not moving and rebalance_left(tree) == 0:
            break
        wrong += served_wrong(tree, REPOSITORY, pushed)
        pulls_while_moving += moving
    status, output = wait_output(waiting)

    assert status == 0, output
    assert "rebalance done" in output
    assert wrong == []
    assert pulls_while_moving > 0, "every pull came after the move: slow it down"
    assert misplaced(tree, names) == {}
    assert bound <= set(relay_chunk_files(tree, NEW_RELAY))
    assert_pulls_back(skopeo, reference(tree, "pushed"), pushed, tmp_path / "pull")
    status = tree.status()
    placements = {s["placement"] for s in status["rebalance"]["relays"].values()}
    assert placements == {status["placement"]}
    assert "rebalance pass 1 of relay-a for placement" in tree.log_text("relay-a")
    assert nodes_with_tracebacks(tree) == []


def test_draining_relay_ends_empty_and_nothing_is_lost(
    tree: Cluster, pushed: OciImage, skopeo: Skopeo, tmp_path: Path
) -> None:
    """relay-b set to drain: it ends with no chunk and no record, every chunk is
    on its homes among the others, and with relay-b stopped the image still
    pulls whole."""
    names = image_chunk_names(pushed)
    on_b = names & set(relay_chunk_files(tree, "relay-b"))
    assert on_b, "relay-b held none of the image: draining it proves nothing"

    tree.topology = edit_topology(
        tree.topology,
        relays=RELAYS,
        version=2,
        draining=("relay-b",),
        extra=SLOW_REBALANCE,
    )
    reloaded = treescale_reload(tree, (REGISTRY, *RELAYS))
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    status, output = wait_output(start_rebalance_wait(tree))

    assert status == 0, output
    assert relay_chunk_files(tree, "relay-b") == {}
    records = tree.topology.data_dir / "relay-b" / "records"
    assert [p for p in records.glob("*/*") if p.is_file()] == []
    assert misplaced(tree, names, draining=("relay-b",)) == {}

    tree.stop_node("relay-b")
    tree.wait_for_relays(len(RELAYS) - 1)
    assert served_wrong(tree, REPOSITORY, pushed) == []
    assert_pulls_back(skopeo, reference(tree, "pushed"), pushed, tmp_path / "pull")
    assert nodes_with_tracebacks(tree) == []
