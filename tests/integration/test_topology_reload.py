"""Topology edits taken live, with real processes: SIGHUP and `treescale reload`.

Each test runs a fresh tree (one registry node, three relays, each its own twistd
process), edits its file as an operator would and has the running processes take
the edit, or refuse it whole while the tree serves on.
"""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .cluster import (
    REGISTRY,
    RELAYS,
    REPO_ROOT,
    TWISTD,
    Cluster,
    child_environment,
    edit_topology,
    get_json,
    relay_chunk_files,
    run_treescale,
    stop_process,
    wait_for,
    write_topology,
)
from .images import MiB, OciImage, Skopeo
from .test_failures import (
    REPOSITORY,
    assert_pulls_back,
    image_chunk_names,
    nodes_with_tracebacks,
    reference,
    served_wrong,
    write_random_image,
)

pytestmark = pytest.mark.integration

NEW_RELAY = "relay-d"
LINK_TIMEOUT = 20.0


def treescale_reload(
    cluster: Cluster, names: tuple[str, ...]
) -> subprocess.CompletedProcess[str]:
    """Run `treescale reload` of the tree's file for the processes of `names`."""
    return reload_pids(cluster.topology.path, [cluster.pid(name) for name in names])


def image(tmp_path: Path, tag: str) -> OciImage:
    """An image of random bytes, 8 MiB in two layers: eight chunks and more."""
    return write_random_image(tmp_path / tag, tag, [5 * MiB, 3 * MiB])


def test_a_relay_added_by_reload_joins_and_takes_chunks(
    cluster: Cluster, skopeo: Skopeo, tmp_path: Path
) -> None:
    """relay-d is added to the file and started; the running nodes take the edit
    from `treescale reload`, the registry links it, new pushes place chunks on
    it, and what was pushed before still pulls whole."""
    before = image(tmp_path, "before")
    skopeo.push(before, reference(cluster, "before"))
    running = (REGISTRY, *RELAYS)

    cluster.topology = edit_topology(
        cluster.topology, relays=(*RELAYS, NEW_RELAY), version=2
    )
    cluster.start_node(NEW_RELAY)
    wait_for(
        lambda: "is not a child of" in cluster.log_text(REGISTRY),
        "the registry refusing relay-d before it reloads",
        LINK_TIMEOUT,
    )
    finished = treescale_reload(cluster, running)

    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert len(lines) == len(running)
    assert all("applied version 1 -> 2: relay-d added" in line for line in lines)
    cluster.wait_for_relays(4, LINK_TIMEOUT)
    assert "topology reloaded from" in cluster.log_text(REGISTRY)

    after = image(tmp_path, "after")
    skopeo.push(after, reference(cluster, "after"))
    assert image_chunk_names(after) & set(relay_chunk_files(cluster, NEW_RELAY))
    assert served_wrong(cluster, REPOSITORY, before) == []
    assert served_wrong(cluster, REPOSITORY, after) == []
    assert nodes_with_tracebacks(cluster) == []


def test_a_bad_edit_is_refused_whole_and_the_tree_serves_on(
    cluster: Cluster, skopeo: Skopeo, tmp_path: Path
) -> None:
    """An edit giving relay-b another id is refused by every process with the
    file, node and field; the tree goes on as it was."""
    pushed = image(tmp_path, "pushed")
    skopeo.push(pushed, reference(cluster, "pushed"))
    path = cluster.topology.path
    good = path.read_text()
    edit_topology(cluster.topology, relays=RELAYS, version=2)
    text = path.read_text()
    assert "id = 3\n" in text
    path.write_text(text.replace("id = 3\n", "id = 9\n"))

    finished = treescale_reload(cluster, (REGISTRY, "relay-a"))

    assert finished.returncode == 1
    assert finished.stdout.count("node 'relay-b': field 'id'") == 2
    assert "refused" in finished.stdout
    assert "topology reload refused" in cluster.log_text(REGISTRY)
    cluster.wait_for_relays(3)
    assert served_wrong(cluster, REPOSITORY, pushed) == []

    # A file no node could load is refused before any process is signalled.
    path.write_text("[[node]\n")
    finished = treescale_reload(cluster, (REGISTRY,))
    assert finished.returncode == 2
    assert "not valid TOML" in finished.stderr and "no node was signalled" in (
        finished.stderr
    )

    # SIGHUP straight from an operator's kill: logged, and nothing changes.
    cluster.send_signal(REGISTRY, signal.SIGHUP)
    wait_for(
        lambda: cluster.log_text(REGISTRY).count("topology reload refused") >= 2,
        "the second refusal in the registry's log",
        LINK_TIMEOUT,
    )
    path.write_text(good)
    assert served_wrong(cluster, REPOSITORY, pushed) == []
    assert nodes_with_tracebacks(cluster) == []


def relays_up(http_port: int) -> object:
    try:
        status = get_json(f"http://127.0.0.1:{http_port}/_treescale/status")
    except (OSError, ValueError):
        return None
    return status.get("relays_up") if isinstance(status, dict) else None


def test_one_process_of_every_local_node_starts_and_stops_relays(
    tmp_path: Path, skopeo: Skopeo, image: OciImage
) -> None:
    """The embedded default's way: one twistd runs every node of the file, its
    nodes linked in memory; an image pushes and pulls back whole; a relay added
    to the file starts in that process on reload, links in memory too, and one
    drained and removed stops there."""
    topology = write_topology(tmp_path / "tree")
    log = tmp_path / "all.log"
    process = subprocess.Popen(
        [
            sys.executable,
            *TWISTD,
            "-n",
            "--pidfile=",
            f"--logfile={log}",
            "treescale-node",
            "--config",
            str(topology.path),
        ],
        cwd=REPO_ROOT,
        env=child_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: relays_up(topology.http_port) == 3, "3 relays", LINK_TIMEOUT)
        for relay in RELAYS:
            assert f"{REGISTRY} <-> {relay} (in this process)" in (log.read_text())
        status = run_treescale(
            "status", "--url", f"http://127.0.0.1:{topology.http_port}"
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert {
            line.split()[0]: line.split()[5]
            for line in status.stdout.splitlines()
            if line.startswith("  relay-")
        } == dict.fromkeys(RELAYS, "memory")
        ref = f"127.0.0.1:{topology.http_port}/{REPOSITORY}:one"
        skopeo.push(image, ref)
        assert_pulls_back(skopeo, ref, image, tmp_path / "pulled")

        grown = edit_topology(topology, relays=(*RELAYS, NEW_RELAY), version=2)
        finished = reload_pids(grown.path, [process.pid])
        assert finished.returncode == 0, finished.stderr
        assert "relay-d added; relay-d started here" in finished.stdout
        wait_for(lambda: relays_up(topology.http_port) == 4, "4 relays", LINK_TIMEOUT)
        assert f"{NEW_RELAY} <-> {REGISTRY} (in this process)" in (log.read_text())

        edit_topology(grown, relays=grown.relays, version=3, draining=(NEW_RELAY,))
        assert reload_pids(grown.path, [process.pid]).returncode == 0
        edit_topology(grown, relays=RELAYS, version=4)
        finished = reload_pids(grown.path, [process.pid])

        assert finished.returncode == 0, finished.stderr
        assert "relay-d removed; relay-d stopped here" in finished.stdout
        wait_for(lambda: relays_up(topology.http_port) == 3, "3 relays", LINK_TIMEOUT)
        assert "Traceback" not in log.read_text()
    finally:
        stop_process(process, 10.0)


def reload_pids(path: Path, pids: list[int]) -> subprocess.CompletedProcess[str]:
    """`treescale reload PATH --pid ...`."""
    arguments = [argument for pid in pids for argument in ("--pid", str(pid))]
    return run_treescale("reload", str(path), *arguments)
