"""Tests of the registry under observation: request metrics and content events.

The registry runs over memory storage through StubTreq (the buffered-body path)
and over a fake socket (the streaming path), with a real observer, metrics and
notifier whose poster answers at once or fails as the test says.
"""

# Twisted's and treq's test helpers carry no annotations yet, and StubTreq makes
# its request methods at run time.
# mypy: disable-error-code="no-untyped-call,attr-defined"

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from tests.unit.test_registry_app import BLOB, World, encode, image_manifest
from tests.unit.test_registry_auth import basic, write_htpasswd
from tests.unit.test_registry_request import chunk, connect, request_head
from treescale.auth.authenticator import Authenticator
from treescale.auth.settings import parse_auth
from treescale.ops.events import SourceRecord
from treescale.ops.metrics import Metrics
from treescale.ops.notify import Notifier
from treescale.ops.observer import RegistryObserver
from treescale.ops.settings import NotificationEndpoint, NotificationSettings
from treescale.registry.app import Registry, make_site
from treescale.registry.manifests import OCI_MANIFEST
from treescale.store.digests import sha256_digest

ENDPOINT = NotificationEndpoint("audit", "http://hooks.test/")


class AnsweringPoster:
    """Takes every delivery at once (or fails them all), keeping the bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.status = 200
        self.attempts = 0

    def post(
        self, url: str, body: bytes, headers: Sequence[tuple[str, str]], timeout: float
    ) -> "Deferred[int]":
        self.attempts += 1
        if self.status == 200:
            self.bodies.append(body)
        return defer.succeed(self.status)

    def close(self) -> "Deferred[None]":
        return defer.succeed(None)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event delivered, in order."""
        return [event for body in self.bodies for event in json.loads(body)["events"]]


@dataclass
class Observed(World):
    """A registry with a real observer, metrics and notifier."""

    def __post_init__(self) -> None:
        self.metrics = Metrics(with_process=False)
        self.poster = AnsweringPoster()
        settings = NotificationSettings(endpoints=(ENDPOINT,), max_batch=100)
        self.notifier = Notifier(
            settings, self.clock, self.poster, self.metrics, jitter=lambda: 0.0
        )
        ids = itertools.count(1)
        self.observer = RegistryObserver(
            self.metrics,
            self.clock,
            self.notifier,
            SourceRecord("node-1:5000", "instance-1"),
            new_id=lambda: f"id-{next(ids)}",
        )
        self.registry = Registry(
            self.storage,
            self.clock,
            self.settings,
            self.authenticator,
            observer=self.observer,
        )
        self.registry.log = Logger(observer=self.events)
        self.observer.log = Logger(observer=self.events)
        self.stub = StubTreq(self.registry.resource())
        self._request = self.stub.request

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def requests(self, route: str, method: str, code: int) -> float:
        return self.sample(
            "treescale_http_requests_total", route=route, method=method, code=str(code)
        )

    def actions(self) -> list[tuple[str, dict[str, Any]]]:
        """Each delivered event's action and target."""
        return [(event["action"], event["target"]) for event in self.poster.events]


@pytest.fixture
def world() -> Observed:
    return Observed()


def push_image(world: Observed, repo: str = "lib/app", tag: str = "v1") -> str:
    """Push a two-blob image by tag; the manifest's digest."""
    answer = world.push_image(repo, tag)
    assert answer.code == 201, answer.body
    digest = answer.header("Docker-Content-Digest")
    assert digest is not None
    return digest


# Events.


def test_a_push_sends_blob_and_manifest_events(world: Observed) -> None:
    """Each blob pushed and the manifest tagged send one push event each."""
    manifest = push_image(world)
    config, layer = sha256_digest(b"{}"), sha256_digest(BLOB)
    document = encode(image_manifest(config, layer))
    assert world.actions() == [
        (
            "push",
            {
                "mediaType": "application/octet-stream",
                "size": 2,
                "digest": config,
                "length": 2,
                "repository": "lib/app",
                "url": f"http://registry.test/v2/lib/app/blobs/{config}",
            },
        ),
        (
            "push",
            {
                "mediaType": "application/octet-stream",
                "size": len(BLOB),
                "digest": layer,
                "length": len(BLOB),
                "repository": "lib/app",
                "url": f"http://registry.test/v2/lib/app/blobs/{layer}",
            },
        ),
        (
            "push",
            {
                "mediaType": OCI_MANIFEST,
                "size": len(document),
                "digest": manifest,
                "length": len(document),
                "repository": "lib/app",
                "url": f"http://registry.test/v2/lib/app/manifests/{manifest}",
                "tag": "v1",
            },
        ),
    ]
    event = world.poster.events[-1]
    assert event["request"]["method"] == "PUT"
    assert event["request"]["host"] == "registry.test"
    assert event["source"] == {"addr": "node-1:5000", "instanceID": "instance-1"}
    assert event["actor"] == {}
    assert len({e["id"] for e in world.poster.events}) == 3


def test_pulls_send_pull_events(world: Observed) -> None:
    """GET and HEAD of manifests and blobs send pull events; a range names the
    whole blob's size; a pull by digest names no tag."""
    manifest = push_image(world)
    layer = sha256_digest(BLOB)
    pushed = len(world.poster.events)
    accept = {"Accept": OCI_MANIFEST}
    assert world.send("GET", "/v2/lib/app/manifests/v1", headers=accept).code == 200
    assert world.send("HEAD", f"/v2/lib/app/manifests/{manifest}").code == 200
    ranged = {"Range": "bytes=0-3"}
    assert world.send("GET", f"/v2/lib/app/blobs/{layer}", headers=ranged).code == 206

    pulls = world.actions()[pushed:]
    assert [action for action, _ in pulls] == ["pull"] * 3
    assert pulls[0][1]["tag"] == "v1"
    assert "tag" not in pulls[1][1]
    assert world.poster.events[pushed + 1]["request"]["method"] == "HEAD"
    assert pulls[2][1]["size"] == len(BLOB)
    assert pulls[2][1]["digest"] == layer


def test_failed_requests_send_no_event(world: Observed) -> None:
    """A pull of something absent, or a refused push, sends nothing."""
    missing = "sha256:" + "0" * 64
    assert world.send("GET", f"/v2/lib/app/blobs/{missing}").code == 404
    assert world.send("GET", "/v2/lib/app/manifests/nope").code == 404
    bad = world.send(
        "PUT", "/v2/lib/app/manifests/v1", b"{}", {"Content-Type": OCI_MANIFEST}
    )
    assert bad.code == 400
    assert world.poster.events == []


def test_deleting_a_manifest_sends_it_then_its_tags(world: Observed) -> None:
    """The manifest's delete event comes first, then one per tag, one request id."""
    manifest = push_image(world, tag="v1")
    document = encode(image_manifest(sha256_digest(b"{}"), sha256_digest(BLOB)))
    assert world.put_manifest("lib/app", "latest", document, OCI_MANIFEST).code == 201
    before = len(world.poster.events)
    assert world.send("DELETE", f"/v2/lib/app/manifests/{manifest}").code == 202

    deletes = world.poster.events[before:]
    assert [(e["action"], e["target"]) for e in deletes] == [
        ("delete", {"digest": manifest, "repository": "lib/app"}),
        ("delete", {"repository": "lib/app", "tag": "latest"}),
        ("delete", {"repository": "lib/app", "tag": "v1"}),
    ]
    assert len({e["request"]["id"] for e in deletes}) == 1
    assert len({e["id"] for e in deletes}) == 3


def test_tag_and_blob_deletes_send_events(world: Observed) -> None:
    """Deleting a tag or unlinking a blob sends one delete event each."""
    push_image(world)
    layer = sha256_digest(BLOB)
    before = len(world.poster.events)
    assert world.send("DELETE", "/v2/lib/app/manifests/v1").code == 202
    assert world.send("DELETE", f"/v2/lib/app/blobs/{layer}").code == 202
    assert world.actions()[before:] == [
        ("delete", {"repository": "lib/app", "tag": "v1"}),
        ("delete", {"digest": layer, "repository": "lib/app"}),
    ]


def test_a_mount_sends_a_mount_event(world: Observed) -> None:
    """A cross-repository mount is a mount, naming the repository it came from."""
    digest = world.push_blob("lib/app", BLOB)
    path = f"/v2/other/blobs/uploads/?mount={digest}&from=lib/app"
    assert world.send("POST", path).code == 201
    action, target = world.actions()[-1]
    assert action == "mount"
    assert target["fromRepository"] == "lib/app"
    assert target["repository"] == "other"
    assert target["size"] == len(BLOB)


def test_the_actor_is_the_user_let_on(tmp_path: Path) -> None:
    """With logins on, each event's actor names the user who made the request."""
    write_htpasswd(tmp_path)
    settings = parse_auth(
        {"htpasswd": "htpasswd", "mode": "basic"}, tmp_path / "topology.toml"
    )
    world = Observed(authenticator=Authenticator(settings, time.time))
    digest = sha256_digest(BLOB)
    path = f"/v2/app/blobs/uploads/?digest={digest}"
    assert world.send("POST", path, BLOB, headers=basic("alice")).code == 201
    assert (
        world.send("GET", f"/v2/app/blobs/{digest}", headers=basic("bob")).code == 200
    )
    assert [e["actor"] for e in world.poster.events] == [
        {"name": "alice"},
        {"name": "bob"},
    ]


# Nothing the observer or a receiver does reaches the request.


def test_a_failing_receiver_does_not_fail_pushes(world: Observed) -> None:
    """Pushes answer as usual while every delivery fails; the events are retried."""
    world.poster.status = 500
    push_image(world)
    assert world.poster.bodies == []
    first = world.poster.attempts
    world.clock.advance(1.0)
    assert world.poster.attempts == first + 1
    world.poster.status = 200
    world.clock.advance(2.0)
    assert [action for action, _ in world.actions()] == ["push"] * 3


def test_a_broken_observer_does_not_fail_requests(world: Observed) -> None:
    """An error inside the observer is logged; the request is answered as usual."""

    def broken(*args: object) -> None:
        raise RuntimeError("metrics backend gone")

    world.metrics.registry_event = broken  # type: ignore[method-assign,assignment]
    world.metrics.http_finished = broken  # type: ignore[method-assign,assignment]
    push_image(world)
    assert world.send("GET", f"/v2/lib/app/blobs/{sha256_digest(BLOB)}").code == 200
    failures = [e for e in world.events if e.get("log_failure") is not None]
    assert failures
    assert all(e["log_failure"].check(RuntimeError) for e in failures)


# Request metrics.


def test_requests_are_counted_by_route_method_and_code(world: Observed) -> None:
    """Every answered request counts once under its endpoint, method and status."""
    push_image(world)
    layer = sha256_digest(BLOB)
    assert world.send("GET", "/v2/").code == 200
    assert world.send("GET", f"/v2/lib/app/blobs/{layer}").code == 200
    assert world.send("GET", "/v2/lib/app/blobs/sha256:" + "1" * 64).code == 404
    assert world.send("GET", "/v2/lib/app/nothing").code == 404
    assert world.send("BREW", "/v2/").code == 405

    assert world.requests("upload_start", "POST", 201) == 2
    assert world.requests("manifest", "PUT", 201) == 1
    assert world.requests("version", "GET", 200) == 1
    assert world.requests("blob", "GET", 200) == 1
    assert world.requests("blob", "GET", 404) == 1
    assert world.requests("none", "GET", 404) == 1
    assert world.requests("version", "other", 405) == 1
    errors = "treescale_registry_errors_total"
    assert world.sample(errors, code="BLOB_UNKNOWN") == 1
    # The spec answers an unknown endpoint and a wrong method with UNSUPPORTED.
    assert world.sample(errors, code="UNSUPPORTED") == 2
    assert world.sample("treescale_http_requests_in_flight") == 0


def test_bytes_in_and_out_are_counted(world: Observed) -> None:
    """A pushed body counts as received, a pulled blob as sent."""
    digest = world.push_blob("lib/app", BLOB)
    assert world.sample(
        "treescale_http_received_bytes_total", route="upload_start"
    ) == len(BLOB)
    assert world.send("GET", f"/v2/lib/app/blobs/{digest}").body == BLOB
    assert world.sample("treescale_http_sent_bytes_total", route="blob") == len(BLOB)


def test_refused_urls_are_counted(world: Observed) -> None:
    """A URL refused before routing still counts, with its error code."""
    assert world.send("GET", "/v2//a/tags/list").code == 400
    assert world.sample("treescale_registry_errors_total", code="NAME_INVALID") == 1
    assert world.requests("tags", "GET", 400) == 1


def test_pull_latency_counts_whole_gets_only(world: Observed) -> None:
    """A GET of a blob or manifest is a pull; a HEAD or a 404 is not."""
    push_image(world)
    layer = sha256_digest(BLOB)
    world.send("GET", f"/v2/lib/app/blobs/{layer}")
    world.send("HEAD", f"/v2/lib/app/blobs/{layer}")
    world.send("GET", "/v2/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    world.send("GET", "/v2/lib/app/manifests/v2")
    pulls = "treescale_pull_duration_seconds_count"
    assert world.sample(pulls, kind="blob") == 1
    assert world.sample(pulls, kind="manifest") == 1
    assert world.sample("treescale_push_duration_seconds_count", kind="manifest") == 1


def test_blob_push_latency_runs_from_the_upload_start(world: Observed) -> None:
    """A blob's push time is from its session's opening to its commit."""
    location = world.start_upload("lib/app")
    world.clock.advance(7.0)
    assert world.send("PATCH", location, BLOB).code == 202
    world.clock.advance(5.0)
    digest = sha256_digest(BLOB)
    assert world.send("PUT", f"{location}?digest={digest}").code == 201
    assert world.sample("treescale_push_duration_seconds_sum", kind="blob") == 12.0
    assert world.sample("treescale_push_duration_seconds_count", kind="blob") == 1


# The streaming path, over a fake socket.


def test_a_streamed_body_is_timed_from_its_headers() -> None:
    """Over the wire a request is timed from its headers, its body bytes counted."""
    world = Observed()
    site = make_site(world.registry)
    data = b"0123456789" * 10
    digest = sha256_digest(data)
    connection = connect(site)
    connection.send(
        request_head(
            "POST",
            f"/v2/a/blobs/uploads/?digest={digest}",
            "Transfer-Encoding: chunked",
            "User-Agent: skopeo/1.9.3",
        )
    )
    world.clock.advance(3.0)
    connection.send(chunk(data[:50]))
    world.clock.advance(1.0)
    connection.send(chunk(data[50:]) + b"0\r\n\r\n")
    assert connection.response()[0] == 201

    labels = {"route": "upload_start", "method": "POST"}
    seconds = world.sample("treescale_http_request_duration_seconds_sum", **labels)
    assert seconds == 4.0
    assert (
        world.sample("treescale_http_received_bytes_total", route="upload_start") == 100
    )
    event = world.poster.events[0]
    assert event["request"]["useragent"] == "skopeo/1.9.3"
    assert event["request"]["addr"] == "127.0.0.1:40000"


def test_a_client_leaving_mid_pull_is_abandoned() -> None:
    """A GET whose client leaves before the body ends counts as abandoned."""
    world = Observed()
    digest = world.push_blob("a", BLOB)
    world.storage.hold_reads = True
    site = make_site(world.registry)
    connection = connect(site)
    connection.send(request_head("GET", f"/v2/a/blobs/{digest}"))
    assert world.sample("treescale_http_requests_in_flight") == 1
    connection.lose()
    assert (
        world.sample(
            "treescale_http_requests_abandoned_total", route="blob", method="GET"
        )
        == 1
    )
    assert world.sample("treescale_http_requests_in_flight") == 0
    assert world.requests("blob", "GET", 200) == 0


def test_a_registry_without_an_observer_still_serves() -> None:
    """The default observer keeps metrics of its own and sends nothing."""
    world = World()
    assert world.registry.observer.notifier is None
    assert world.send("GET", "/v2/").code == 200


def test_a_plain_run_logs_no_failure(world: Observed) -> None:
    """Pushes and pulls under observation log no failure of the observer."""
    push_image(world)
    assert world.send("GET", "/v2/lib/app/tags/list").code == 200
    assert not [e for e in world.events if e.get("log_failure") is not None]
