"""Nodes killed with SIGKILL at random instants during pushes, with real processes.

The loop test pushes a new image of random bytes with skopeo, kills a node chosen at
random (the registry node or any relay) at a random instant of the push, starts it
again, and then checks what a crash must never leave behind:

- a tag that lists must pull back byte-exact (no partial manifest, recipe or tag);
- the push, tried again, must succeed;
- no chunk file on any relay may fail its digest, and no unfinished write may be
  left where a reader could find it.

`CRASH_RUNS` runs by default; ``TREESCALE_CRASH_RUNS`` raises it for a long run, and
``TREESCALE_CRASH_SEED`` replays one. Each run's victim, instant and outcome are
written to the test's output, and every problem found is listed when it fails.

The second test restarts the registry node in the middle of an upload session and
goes on with the same session afterwards.
"""

import hashlib
import http.client
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from treescale.registry.saved_uploads import new_upload_id

from .cluster import (
    REGISTRY,
    RELAYS,
    Cluster,
    running_cluster,
    torn_chunk_files,
    unfinished_writes,
)
from .images import MiB, OciImage, Skopeo, forget_uploads, read_image
from .test_failures import (
    REPOSITORY,
    connect,
    http_get,
    nodes_with_tracebacks,
    reference,
    served_wrong,
    write_random_image,
)

pytestmark = pytest.mark.integration

CRASH_RUNS = int(os.environ.get("TREESCALE_CRASH_RUNS", "6"))
SEED = int(os.environ.get("TREESCALE_CRASH_SEED", str(random.randrange(1 << 30))))

PUSH_TIMEOUT = 180.0
SETTLE_SECONDS = 5.0
# Kills fall at a random instant within the time an unhurt push took, measured
# at the start, a little past it too: a crash just after a push is a case as well.
KILL_WINDOW = 1.2


@dataclass
class Run:
    """One push, one kill, and what the checks after it found."""

    number: int
    victim: str
    delay: float
    first_push_ok: bool = False
    retry_ok: bool = False
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        first = "ok" if self.first_push_ok else "failed"
        retry = "ok" if self.retry_ok else "FAILED"
        found = "; ".join(self.problems) or "nothing wrong"
        return (
            f"run {self.number}: killed {self.victim} after {self.delay:.2f} s; "
            f"push {first}, retry {retry}; {found}"
        )


def random_image(directory: Path, tag: str, chooser: random.Random) -> OciImage:
    """An image of two layers of random bytes, a few MiB: a few chunks each."""
    sizes = [
        chooser.randint(1 * MiB, 4 * MiB),
        chooser.randint(64 * 1024, 1 * MiB),
    ]
    return write_random_image(directory, tag, sizes)


def wrong_tags(cluster: Cluster, images: dict[str, OciImage]) -> list[str]:
    """Tags the tree lists that do not pull back exactly as pushed."""
    status, body = http_get(cluster, f"/v2/{REPOSITORY}/tags/list")
    if status == 404:
        return []
    if status != 200:
        return [f"tags/list answered {status}"]

    wrong = []
    for tag in json.loads(body).get("tags") or []:
        image = images.get(tag)
        if image is None:
            wrong.append(f"{tag}: listed but never pushed")
            continue
        path = f"/v2/{REPOSITORY}/manifests/{tag}"
        got = http_get(cluster, path, {"Accept": image.manifest.media_type})
        if got != (200, image.manifest_bytes):
            wrong.append(f"{tag}: manifest by tag is {got[0]}, {len(got[1])} bytes")
        wrong += [f"{tag}: {blob}" for blob in served_wrong(cluster, REPOSITORY, image)]
    return wrong


def disk_problems(cluster: Cluster) -> list[str]:
    """Torn chunk files on any relay's disk, and unfinished writes that stay.

    A record write to the last replica of a quorum may still be going on after
    the push that caused it has been answered, so a temporary file is a problem
    only if it is still there a few seconds later; a crashed relay clears its own
    at start-up.
    """
    problems = [f"torn chunk {path}" for path in torn_chunk_files(cluster)]
    deadline = time.monotonic() + SETTLE_SECONDS
    while (left := unfinished_writes(cluster)) and time.monotonic() < deadline:
        time.sleep(0.1)
    problems += [f"unfinished write {path}" for path in left]
    return problems


def push_arguments(cluster: Cluster, image: OciImage) -> tuple[str, ...]:
    return (
        "copy",
        "--dest-tls-verify=false",
        f"oci:{image.layout}:{image.tag}",
        f"docker://{reference(cluster, image.tag)}",
    )


def timed_push(cluster: Cluster, skopeo: Skopeo, image: OciImage) -> float:
    """Seconds an unhurt push of `image` takes."""
    started = time.monotonic()
    skopeo.push(image, reference(cluster, image.tag))
    return time.monotonic() - started


def crash_one_push(cluster: Cluster, skopeo: Skopeo, image: OciImage, run: Run) -> None:
    """Push `image` and SIGKILL `run.victim` after `run.delay` s, then restart it."""
    forget_uploads()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pushing = pool.submit(
            skopeo.run, *push_arguments(cluster, image), timeout=PUSH_TIMEOUT
        )
        time.sleep(run.delay)
        cluster.stop_node(run.victim, kill=True)
        run.first_push_ok = pushing.result(timeout=PUSH_TIMEOUT).returncode == 0
    cluster.start_node(run.victim)
    cluster.wait_for_relays(len(cluster.relays), timeout=30)


def test_sigkill_at_random_instants_never_serves_a_partial_push(
    tmp_path: Path, skopeo: Skopeo
) -> None:
    """Whatever node dies whenever in a push, every listed tag pulls back exact, a
    retried push succeeds, and no torn chunk or unfinished write is left."""
    chooser = random.Random(SEED)
    pushed: dict[str, OciImage] = {}
    runs: list[Run] = []

    with running_cluster(tmp_path / "cluster") as cluster:
        push_seconds = timed_push(
            cluster, skopeo, random_image(tmp_path / "w", "w", chooser)
        )
        pushed["w"] = read_image(tmp_path / "w", "w")
        for number in range(CRASH_RUNS):
            tag = f"run{number}"
            image = random_image(tmp_path / tag, tag, chooser)
            victim = chooser.choice((REGISTRY, *RELAYS))
            delay = chooser.uniform(0.0, push_seconds * KILL_WINDOW)
            run = Run(number, victim, delay)
            runs.append(run)

            crash_one_push(cluster, skopeo, image, run)
            # The crashed push's tag may list only if it is whole.
            run.problems += wrong_tags(cluster, {**pushed, tag: image})
            run.problems += disk_problems(cluster)

            retried = skopeo.run(*push_arguments(cluster, image), timeout=PUSH_TIMEOUT)
            run.retry_ok = retried.returncode == 0
            if not run.retry_ok:
                run.problems.append(retried.stderr.decode(errors="replace").strip())
            pushed[tag] = image
            run.problems += wrong_tags(cluster, pushed)
            run.problems += disk_problems(cluster)
            print(run.line())

        tracebacks = nodes_with_tracebacks(cluster)

    failed = [run.line() for run in runs if run.problems or not run.retry_ok]
    summary = (
        f"seed {SEED}: {len(runs)} runs, {len(failed)} with problems, "
        f"{sum(not run.first_push_ok for run in runs)} first pushes failed "
        f"(an unhurt push took {push_seconds:.2f} s)"
    )
    print(summary)
    assert failed == [], summary + "\n" + "\n".join(failed)
    assert tracebacks == []


# An upload session across a restart of its registry node.


def request(
    cluster: Cluster,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request; its status, headers (lower-case names) and body."""
    connection = connect(cluster)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        answer = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, answer
    finally:
        connection.close()


def wait_for_status(
    cluster: Cluster, location: str, timeout: float = 20.0
) -> dict[str, str]:
    """The headers of the first upload status answer that is not a 503 (the
    session is still being restored) or a refused connection."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, headers, _ = request(cluster, "GET", location)
        except (ConnectionError, http.client.HTTPException):
            status, headers = 0, {}
        if status not in (0, 503):
            assert status == 204, status
            return headers
        if time.monotonic() > deadline:
            pytest.fail(f"upload status still {status} after {timeout} s")
        time.sleep(0.1)


def test_upload_session_survives_a_registry_restart(cluster: Cluster) -> None:
    """Half a blob PATCHed, the registry node killed and started again: the same
    session reports its offset, takes the rest and closes with the right digest,
    its running hash restored rather than computed again."""
    blob = os.urandom(3 * MiB + 12345)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    half = len(blob) // 2
    status, headers, _ = request(cluster, "POST", f"/v2/{REPOSITORY}/blobs/uploads/")
    assert status == 202
    location = headers["location"]
    status, headers, _ = request(
        cluster,
        "PATCH",
        location,
        blob[:half],
        {"Content-Type": "application/octet-stream"},
    )
    assert (status, headers["range"]) == (202, f"0-{half - 1}")

    cluster.stop_node(REGISTRY, kill=True)
    cluster.start_node(REGISTRY)
    cluster.wait_for_relays(len(cluster.relays), timeout=30)

    assert wait_for_status(cluster, location)["range"] == f"0-{half - 1}"
    status, headers, _ = request(
        cluster,
        "PATCH",
        location,
        blob[half:],
        {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{half}-{len(blob) - 1}",
        },
    )
    assert (status, headers["range"]) == (202, f"0-{len(blob) - 1}")
    status, headers, _ = request(cluster, "PUT", f"{location}?digest={digest}")
    assert status == 201
    assert headers["docker-content-digest"] == digest

    assert http_get(cluster, f"/v2/{REPOSITORY}/blobs/{digest}") == (200, blob)
    logged = cluster.log_text(REGISTRY)
    assert "restored from its record" in logged
    assert "hash restored" in logged
    assert nodes_with_tracebacks(cluster) == []


def test_a_ranged_chunk_right_after_a_restart_waits_for_its_session(
    cluster: Cluster,
) -> None:
    """A chunk with a Content-Range sent as soon as the registry node is back, to
    a session it has not read back yet, is checked once the session is restored:
    at the wrong offset 416 with the offset, at the right one taken. A ranged
    chunk or a DELETE for a session that does not exist is 404, not 503."""
    blob = os.urandom(2 * MiB + 777)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    half = len(blob) // 2
    octets = {"Content-Type": "application/octet-stream"}
    status, headers, _ = request(cluster, "POST", f"/v2/{REPOSITORY}/blobs/uploads/")
    location = headers["location"]
    status, headers, _ = request(cluster, "PATCH", location, blob[:half], octets)
    assert (status, headers["range"]) == (202, f"0-{half - 1}")

    def restart() -> None:
        cluster.stop_node(REGISTRY, kill=True)
        cluster.start_node(REGISTRY)
        cluster.wait_for_relays(len(cluster.relays), timeout=30)

    def ranged(first: int) -> tuple[int, dict[str, str], bytes]:
        rest = blob[first:]
        last = f"{first}-{first + len(rest) - 1}"
        return request(
            cluster, "PATCH", location, rest, {**octets, "Content-Range": last}
        )

    restart()
    status, headers, body = ranged(half + 1)
    assert (status, headers["range"]) == (416, f"0-{half - 1}"), body

    restart()
    status, headers, body = ranged(half)
    assert (status, headers["range"]) == (202, f"0-{len(blob) - 1}"), body
    status, _, _ = request(cluster, "PUT", f"{location}?digest={digest}")
    assert status == 201
    assert http_get(cluster, f"/v2/{REPOSITORY}/blobs/{digest}") == (200, blob)

    unknown = f"/v2/{REPOSITORY}/blobs/uploads/{new_upload_id('sha256')}"
    for method, body_bytes, extra in (
        ("PATCH", b"0123456789", {**octets, "Content-Range": "0-9"}),
        ("DELETE", b"", {}),
    ):
        status, _, answer = request(cluster, method, unknown, body_bytes, extra)
        assert status == 404, (method, answer)
        assert json.loads(answer)["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    assert nodes_with_tracebacks(cluster) == []
