"""Soak: many concurrent pushes and pulls while relays are killed and restarted.

A real tree (one registry node, three relays, two replicas of every chunk) takes
pushes and pulls of small random images from several skopeo clients at once for a
bounded time, while a loop kills a random relay with SIGKILL and starts it again.
A push or pull that fails while a relay is down is counted, not fatal: the promise
is about the end state. Once the time is up and every relay is back, every image
whose push succeeded must pull back byte for byte, and every chunk of those images
must be on its replica count of relays.

Not part of ``pytest tests``; run it with
``SOAK_MINUTES=3 .venv/bin/python -m pytest soak -q -s`` (the default is 3
minutes; SOAK_CLIENTS sets the concurrency, 4 by default).
"""

import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.cluster import REPLICAS, Cluster, running_cluster
from tests.integration.images import OciImage, Skopeo, mismatched_blobs
from tests.integration.test_failures import (
    chunk_names,
    image_chunk_names,
    nodes_with_tracebacks,
    reference,
    wait_until,
    write_random_image,
)

KiB = 1024
MiB = 1024 * KiB
MINUTES = float(os.environ.get("SOAK_MINUTES", "3"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "4"))
KILL_EVERY = (5.0, 15.0)
"""Seconds between relay kills, drawn at random in this range."""
DOWN_FOR = (1.0, 6.0)
"""Seconds a killed relay stays down."""
SETTLE_TIMEOUT = 120.0


@dataclass
class Tally:
    """What the clients and the killer did, shared between their threads."""

    pushed: dict[str, OciImage] = field(default_factory=dict)
    push_failures: int = 0
    pulls: int = 0
    pull_failures: int = 0
    wrong_pulls: list[str] = field(default_factory=list)
    """Pulls made under load that brought back other bytes than were pushed."""
    kills: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path / "tree") as tree:
        yield tree


def random_sizes(rng: random.Random) -> list[int]:
    """Layer sizes of a small image: a few KiB to a few chunks."""
    return [rng.randint(4 * KiB, 3 * MiB) for _ in range(rng.randint(1, 3))]


def client(
    number: int, cluster: Cluster, work: Path, deadline: float, tally: Tally
) -> None:
    """Push new images and pull back pushed ones until the deadline."""
    rng = random.Random(number)
    skopeo = Skopeo.in_directory(work / f"client-{number}" / "home")
    round_ = 0
    while time.monotonic() < deadline:
        round_ += 1
        tag = f"c{number}-r{round_}"
        image = write_random_image(work / "images" / tag, tag, random_sizes(rng))
        try:
            skopeo.push(image, reference(cluster, tag, "soak/app"))
        except Exception:
            with tally.lock:
                tally.push_failures += 1
        else:
            with tally.lock:
                tally.pushed[tag] = image
        with tally.lock:
            choices = list(tally.pushed)
        if choices:
            pull_tag = rng.choice(choices)
            layout = work / f"client-{number}" / f"pull-{round_}"
            try:
                pulled = skopeo.pull(
                    reference(cluster, pull_tag, "soak/app"), layout, "t"
                )
            except Exception:
                with tally.lock:
                    tally.pull_failures += 1
            else:
                wrong = differences(pulled, tally.pushed[pull_tag], pull_tag)
                with tally.lock:
                    tally.wrong_pulls += wrong
            with tally.lock:
                tally.pulls += 1


def differences(pulled: OciImage, pushed: OciImage, tag: str) -> list[str]:
    """How a pulled image differs from the one pushed (nothing, when it is whole)."""
    wrong = [f"{tag}: {digest}" for digest in mismatched_blobs(pulled)]
    same = pulled.manifest.digest == pushed.manifest.digest
    if not same or pulled.content_digests != pushed.content_digests:
        wrong.append(f"{tag}: not the image pushed")
    return wrong


def killer(cluster: Cluster, deadline: float, tally: Tally) -> None:
    """Kill a random relay now and then and start it again shortly after."""
    rng = random.Random(0)
    while True:
        pause = rng.uniform(*KILL_EVERY)
        if time.monotonic() + pause > deadline:
            return
        time.sleep(pause)
        victim = rng.choice(cluster.relays)
        cluster.stop_node(victim, kill=True)
        tally.kills += 1
        time.sleep(rng.uniform(*DOWN_FOR))
        cluster.start_node(victim)


def under_replicated(cluster: Cluster, images: list[OciImage]) -> list[str]:
    """Chunks of `images` held by fewer relays than the replica count."""
    held = [chunk_names(cluster, relay) for relay in cluster.relays]
    wanted: set[str] = set().union(*(image_chunk_names(image) for image in images))
    return sorted(name for name in wanted if sum(name in h for h in held) < REPLICAS)


def test_soak(cluster: Cluster, tmp_path: Path) -> None:
    tally = Tally()
    started = time.monotonic()
    deadline = started + MINUTES * 60
    with ThreadPoolExecutor(max_workers=CLIENTS + 1) as pool:
        jobs = [
            pool.submit(client, n, cluster, tmp_path, deadline, tally)
            for n in range(CLIENTS)
        ]
        jobs.append(pool.submit(killer, cluster, deadline, tally))
        for job in jobs:
            job.result()
    cluster.wait_for_relays(len(cluster.relays), SETTLE_TIMEOUT)

    images = list(tally.pushed.values())
    print(
        f"\nsoak: {time.monotonic() - started:.0f} s, {len(images)} pushes "
        f"({tally.push_failures} failed), {tally.pulls} pulls "
        f"({tally.pull_failures} failed), {tally.kills} relay kills"
    )
    # One relay down at a time, with two copies of every chunk: no push or pull
    # may fail, and every pull under load must bring back what was pushed.
    assert images, "no push succeeded"
    assert (tally.push_failures, tally.pull_failures) == (0, 0)
    assert tally.wrong_pulls == []
    wait_until(
        lambda: not under_replicated(cluster, images),
        "every chunk on its replica count",
        SETTLE_TIMEOUT,
    )

    skopeo = Skopeo.in_directory(tmp_path / "checker")
    (tmp_path / "check").mkdir()
    wrong = []
    for tag, image in sorted(tally.pushed.items()):
        pulled = skopeo.pull(
            reference(cluster, tag, "soak/app"), tmp_path / "check" / tag, tag
        )
        wrong += differences(pulled, image, tag)
    assert wrong == []
    assert nodes_with_tracebacks(cluster) == []
