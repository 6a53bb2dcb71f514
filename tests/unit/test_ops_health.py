"""Tests of ``/healthz``, ``/readyz`` and the pages a registry node serves."""

# Twisted's and treq's test helpers carry no annotations yet, and StubTreq makes
# its request methods at run time.
# mypy: disable-error-code="no-untyped-call,attr-defined"

import json

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from treescale.ops.health import (
    HealthResource,
    Readiness,
    ReadyResource,
    relays_needed,
)
from treescale.ops.pages import (
    HEALTH_PATH,
    METRICS_PATH,
    READY_PATH,
    endpoint_port,
    node_ops,
    source_address,
)
from treescale.ops.settings import NotificationEndpoint, NotificationSettings


@pytest.mark.parametrize(
    ("stores", "replicas", "record_replicas", "needed"),
    [
        (3, 2, 3, 2),  # the embedded default: a quorum of 3 is 2, as are replicas
        (5, 2, 5, 3),  # five record copies need three
        (5, 4, 3, 4),  # four chunk copies need four relays
        (1, 2, 3, 1),  # a one-relay tree asks for its one relay
        (2, 1, 3, 2),  # three record copies on two relays: a quorum of two
    ],
)
def test_relays_needed(
    stores: int, replicas: int, record_replicas: int, needed: int
) -> None:
    """Readiness asks for a record quorum and every chunk replica, within the tree."""
    assert relays_needed(stores, replicas, record_replicas) == needed


def test_healthz_is_200_with_json() -> None:
    """``/healthz`` answers 200 and says the process is alive."""
    stub = StubTreq(HealthResource())
    response = stub.get("http://node.test/healthz").result
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert json.loads(stub.content(response).result) == {"status": "alive"}


def test_readyz_follows_the_relays_it_reaches() -> None:
    """``/readyz`` is 200 with enough relays, 503 with too few, and says both."""
    state = Readiness(3, 2)
    stub = StubTreq(ReadyResource(lambda: state))
    response = stub.get("http://node.test/readyz").result
    assert response.code == 200
    assert json.loads(stub.content(response).result) == {
        "ready": True,
        "relays_up": 3,
        "relays_needed": 2,
    }

    state = Readiness(1, 2)
    response = stub.get("http://node.test/readyz").result
    assert response.code == 503
    assert json.loads(stub.content(response).result)["ready"] is False
    assert response.headers.getRawHeaders("cache-control") == ["no-store"]


def test_readyz_answers_head_and_refuses_post() -> None:
    """HEAD gets the status without a body; other methods are not allowed."""
    stub = StubTreq(ReadyResource(lambda: Readiness(0, 1)))
    head = stub.head("http://node.test/readyz").result
    assert head.code == 503
    assert stub.content(head).result == b""
    refused = stub.post("http://node.test/readyz").result
    assert refused.code == 405
    assert refused.headers.getRawHeaders("allow") == ["GET, HEAD"]


@pytest.mark.parametrize(
    ("description", "port"),
    [
        ("tcp:5000", 5000),
        ("tcp:5000:interface=127.0.0.1", 5000),
        ("tcp:port=8080:interface=127.0.0.1", 8080),
        ("tcp:interface=127.0.0.1:port=8081", 8081),
        ("ssl:443:privateKey=k.pem", 443),
        ("tcp6:5000", 5000),
        ("unix:/run/registry.sock", None),
        ("tcp:http", None),
        ("", None),
    ],
)
def test_endpoint_port(description: str, port: int | None) -> None:
    """The port of an endpoint string, where it has one."""
    assert endpoint_port(description) == port


def test_source_address_is_host_and_port() -> None:
    """Notifications name the node as ``hostname:port``, or the host alone."""
    assert source_address("node-1", "tcp:5000:interface=0.0.0.0") == "node-1:5000"
    assert source_address("node-1", "unix:/s") == "node-1"


def test_node_ops_serve_the_three_pages() -> None:
    """The node's pages answer at their paths, readiness from the relay count."""
    relays = [(1, 2)]
    ops = node_ops(Clock(), NotificationSettings(), "tcp:5000", lambda: relays[0])
    assert ops.notifier is None
    assert set(ops.pages) == {METRICS_PATH, HEALTH_PATH, READY_PATH}
    ready = StubTreq(ops.pages[READY_PATH])
    assert ready.get("http://node.test/readyz").result.code == 503
    relays[0] = (2, 2)
    assert ready.get("http://node.test/readyz").result.code == 200
    assert ops.metrics.registry.get_sample_value("treescale_relays_reachable") == 2
    assert ops.observer.source.addr.endswith(":5000")


def test_node_ops_make_a_notifier_for_endpoints() -> None:
    """With an endpoint configured, events go to a notifier."""
    settings = NotificationSettings(
        endpoints=(NotificationEndpoint("e", "http://127.0.0.1:9/"),)
    )
    ops = node_ops(Clock(), settings, "tcp:5000", lambda: (1, 1))
    assert ops.notifier is not None
    assert ops.observer.notifier is ops.notifier
    assert [queue.endpoint.name for queue in ops.notifier.queues] == ["e"]
