"""Tests of the notification sender: queues, batches, retries, backoff, drops.

The queues run on a `Clock` against a poster the test answers by hand, so every
retry's timing is exact; `TreqPoster` is tested over StubTreq, with no socket.
"""

# Twisted's and treq's test helpers carry no annotations yet, and StubTreq makes
# its request methods at run time.
# mypy: disable-error-code="no-untyped-call,attr-defined"

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from treescale.ops.events import ENVELOPE_TYPE
from treescale.ops.metrics import Metrics
from treescale.ops.notify import (
    USER_AGENT,
    DeliveryRefused,
    DeliveryTimedOut,
    EndpointQueue,
    Notifier,
    TreqPoster,
)
from treescale.ops.settings import NotificationEndpoint, NotificationSettings


@dataclass
class Post:
    """One delivery the sender started, answered by the test."""

    url: str
    body: bytes
    headers: Sequence[tuple[str, str]]
    timeout: float
    answer: "Deferred[int]" = field(default_factory=Deferred)

    @property
    def ids(self) -> list[str]:
        return [event["id"] for event in json.loads(self.body)["events"]]


class HandPoster:
    """A poster whose deliveries wait until the test answers them."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.closed = False
        self.fail_now: Exception | None = None

    def post(
        self, url: str, body: bytes, headers: Sequence[tuple[str, str]], timeout: float
    ) -> "Deferred[int]":
        if self.fail_now is not None:
            raise self.fail_now
        post = Post(url, body, headers, timeout)
        self.posts.append(post)
        return post.answer

    def close(self) -> "Deferred[None]":
        self.closed = True
        return defer.succeed(None)

    def answer(self, status: int) -> None:
        """Answer the oldest unanswered delivery with `status`."""
        post = next(p for p in self.posts if not p.answer.called)
        post.answer.callback(status)

    def fail(self, error: Exception) -> None:
        post = next(p for p in self.posts if not p.answer.called)
        post.answer.errback(Failure(error))


def event(n: int, action: str = "push", media_type: str = "x/y") -> dict[str, Any]:
    """A notification object, as `events.notification` makes them."""
    return {"id": f"e{n}", "action": action, "target": {"mediaType": media_type}}


ENDPOINT = NotificationEndpoint(
    "audit", "http://hooks.test/in", headers=(("Authorization", "Bearer t"),)
)


@dataclass
class Sender:
    """A notifier on a clock, with a hand poster and its own metrics."""

    settings: NotificationSettings = field(
        default_factory=lambda: NotificationSettings(endpoints=(ENDPOINT,))
    )
    clock: Clock = field(default_factory=Clock)
    poster: HandPoster = field(default_factory=HandPoster)
    metrics: Metrics = field(default_factory=lambda: Metrics(with_process=False))
    logged: EventLoggingObserver = field(default_factory=EventLoggingObserver)

    def __post_init__(self) -> None:
        self.notifier = Notifier(
            self.settings, self.clock, self.poster, self.metrics, jitter=lambda: 0.0
        )
        for queue in self.notifier.queues:
            queue.log = Logger(observer=self.logged)
        self.notifier.log = Logger(observer=self.logged)

    @property
    def queue(self) -> EndpointQueue:
        return self.notifier.queues[0]

    def publish(self, *events: dict[str, Any]) -> None:
        for one in events:
            self.notifier.publish(one, one["action"], one["target"]["mediaType"])

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def messages(self) -> list[str]:
        return [str(e["log_format"]) for e in self.logged]


@pytest.fixture
def sender() -> Sender:
    return Sender()


def test_an_event_is_posted_in_the_envelope_at_once(sender: Sender) -> None:
    """Publishing POSTs the event to the endpoint with its headers and timeout."""
    sender.publish(event(1))
    (post,) = sender.poster.posts
    assert post.url == "http://hooks.test/in"
    assert json.loads(post.body) == {"events": [event(1)]}
    assert ("Content-Type", ENVELOPE_TYPE) in post.headers
    assert ("User-Agent", USER_AGENT) in post.headers
    assert ("Authorization", "Bearer t") in post.headers
    assert post.timeout == ENDPOINT.timeout

    sender.poster.answer(200)
    assert sender.queue.waiting == deque_of()
    assert sender.sample("treescale_notifications_sent_total", endpoint="audit") == 1


def deque_of(*items: object) -> object:
    """What an empty or given queue compares equal to."""
    from collections import deque

    return deque(items)


def test_one_delivery_in_flight_then_a_batch(sender: Sender) -> None:
    """Events published during a delivery wait, then go together, in order."""
    sender.publish(event(1), event(2), event(3))
    assert len(sender.poster.posts) == 1
    assert sender.poster.posts[0].ids == ["e1"]

    sender.poster.answer(204)
    assert len(sender.poster.posts) == 2
    assert sender.poster.posts[1].ids == ["e2", "e3"]
    sender.poster.answer(200)
    assert len(sender.queue.waiting) == 0
    assert sender.sample("treescale_notifications_sent_total", endpoint="audit") == 3


def test_batches_hold_at_most_max_batch() -> None:
    """No delivery carries more than ``max_batch`` events."""
    sender = Sender(NotificationSettings(endpoints=(ENDPOINT,), max_batch=2))
    sender.publish(*(event(n) for n in range(5)))
    for _ in range(3):
        sender.poster.answer(200)
    assert [post.ids for post in sender.poster.posts] == [
        ["e0"],
        ["e1", "e2"],
        ["e3", "e4"],
    ]


@pytest.mark.parametrize("status", [500, 503, 404, 302, 101])
def test_non_2xx_answers_are_retried(sender: Sender, status: int) -> None:
    """Any status but 2xx fails the delivery, which is sent again later."""
    sender.publish(event(1))
    sender.poster.answer(status)
    assert len(sender.poster.posts) == 1
    assert sender.sample("treescale_notifications_failed_total", endpoint="audit") == 1
    sender.clock.advance(sender.settings.backoff_initial)
    assert len(sender.poster.posts) == 2
    assert sender.poster.posts[1].ids == ["e1"]


def test_backoff_doubles_up_to_its_cap() -> None:
    """Retries wait 1, 2, 4, 8 s and then the cap, each to the second."""
    settings = NotificationSettings(
        endpoints=(ENDPOINT,), backoff_initial=1.0, backoff_max=10.0, max_attempts=0
    )
    sender = Sender(settings)
    sender.publish(event(1))
    waits = []
    for _ in range(6):
        sender.poster.fail(ConnectionRefusedError())
        posted = len(sender.poster.posts)
        waited = 0.0
        while len(sender.poster.posts) == posted:
            sender.clock.advance(0.5)
            waited += 0.5
        waits.append(waited)
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert {tuple(post.ids) for post in sender.poster.posts} == {("e1",)}


def test_jitter_is_added_to_the_backoff() -> None:
    """The jitter function's seconds come on top of each computed wait."""
    sender = Sender()
    sender.notifier = Notifier(
        sender.settings, sender.clock, sender.poster, sender.metrics, lambda: 0.25
    )
    sender.publish(event(1))
    sender.poster.answer(500)
    sender.clock.advance(1.0)
    assert len(sender.poster.posts) == 1
    sender.clock.advance(0.25)
    assert len(sender.poster.posts) == 2


def test_a_batch_is_given_up_after_max_attempts() -> None:
    """After ``max_attempts`` failures the batch is dropped and the next one sent."""
    settings = NotificationSettings(
        endpoints=(ENDPOINT,), max_attempts=3, backoff_initial=1.0
    )
    sender = Sender(settings)
    sender.publish(event(1))
    sender.publish(event(2))
    for _ in range(3):
        sender.poster.answer(500)
        sender.clock.advance(100)

    assert [post.ids for post in sender.poster.posts] == [["e1"]] * 3 + [["e2"]]
    assert sender.sample("treescale_notifications_failed_total", endpoint="audit") == 3
    dropped = sender.sample(
        "treescale_notifications_dropped_total", endpoint="audit", reason="gave_up"
    )
    assert dropped == 1
    assert any("gave up" in message for message in sender.messages())
    sender.poster.answer(200)
    assert len(sender.queue.waiting) == 0


def test_a_full_queue_drops_new_events_and_says_so_once() -> None:
    """Past ``queue_size`` new events are dropped, counted, and logged once."""
    settings = NotificationSettings(endpoints=(ENDPOINT,), queue_size=2)
    sender = Sender(settings)
    sender.publish(*(event(n) for n in range(5)))
    assert [e["id"] for e in sender.queue.waiting] == ["e0", "e1"]
    assert (
        sender.sample(
            "treescale_notifications_dropped_total",
            endpoint="audit",
            reason="queue_full",
        )
        == 3
    )
    full = [m for m in sender.messages() if "is full" in m]
    assert len(full) == 1

    sender.poster.answer(200)
    sender.publish(event(9))
    again = [e for e in sender.logged if "takes events again" in e["log_format"]]
    assert [e["count"] for e in again] == [3]
    assert [e["id"] for e in sender.queue.waiting] == ["e1", "e9"]


def test_a_down_endpoint_does_not_hold_up_another() -> None:
    """Each endpoint has its own queue: one failing leaves the other's flow alone."""
    second = NotificationEndpoint("search", "http://search.test/")
    sender = Sender(NotificationSettings(endpoints=(ENDPOINT, second)))
    sender.publish(event(1))
    audit, search = sender.poster.posts
    audit.answer.errback(Failure(ConnectionRefusedError()))
    search.answer.callback(200)
    sender.publish(event(2))
    assert sender.poster.posts[-1].url == "http://search.test/"
    assert sender.poster.posts[-1].ids == ["e2"]
    assert sender.notifier.queued() == {"audit": 2, "search": 1}
    sender.poster.posts[-1].answer.callback(200)
    assert sender.notifier.queued() == {"audit": 2, "search": 0}


def test_a_retry_sends_the_same_batch() -> None:
    """Events that arrive while a batch waits to be retried go in the next one."""
    sender = Sender()
    sender.publish(event(1))
    sender.poster.answer(500)
    sender.publish(event(2))
    sender.clock.advance(sender.settings.backoff_initial)
    sender.poster.answer(200)
    assert [post.ids for post in sender.poster.posts] == [["e1"], ["e1"], ["e2"]]


def test_ignored_actions_are_not_queued() -> None:
    """An endpoint ignoring pulls is sent pushes only."""
    quiet = NotificationEndpoint(
        "audit", "http://hooks.test/", ignore_actions=frozenset({"pull"})
    )
    sender = Sender(NotificationSettings(endpoints=(quiet,)))
    sender.publish(event(1, "pull"), event(2, "push"))
    assert [post.ids for post in sender.poster.posts] == [["e2"]]


def test_publish_never_raises(sender: Sender) -> None:
    """A poster that raises at once fails that try, which is retried; the caller
    sees nothing."""
    sender.poster.fail_now = RuntimeError("no sockets left")
    sender.publish(event(1))
    failed = [e for e in sender.logged if "why" in e]
    assert failed[0]["why"] == "RuntimeError: no sockets left"

    sender.poster.fail_now = None
    sender.publish(event(2))
    sender.clock.advance(sender.settings.backoff_initial)
    sender.poster.answer(200)
    sender.poster.answer(200)
    assert [post.ids for post in sender.poster.posts] == [["e1"], ["e2"]]


def test_stop_cancels_the_retry_and_the_delivery(sender: Sender) -> None:
    """After stop no delivery starts, and the one in flight is cancelled."""
    sender.publish(event(1))
    sender.poster.answer(500)
    assert sender.clock.getDelayedCalls()
    stopped = sender.notifier.stop()
    assert stopped.called and sender.poster.closed
    assert not sender.clock.getDelayedCalls()
    sender.clock.advance(1000)
    sender.publish(event(2))
    assert len(sender.poster.posts) == 1


def test_queued_gauge_is_read_at_scrape(sender: Sender) -> None:
    """The queue depth metric is the depth at the moment of the scrape."""
    sender.publish(event(1), event(2))
    assert sender.sample("treescale_notifications_queued", endpoint="audit") == 2
    sender.poster.answer(200)
    sender.poster.answer(200)
    assert sender.sample("treescale_notifications_queued", endpoint="audit") == 0


# TreqPoster, over StubTreq.


class Receiver(Resource):
    """A webhook receiver in memory: records what it is sent, answers `status`."""

    isLeaf = True

    def __init__(self, status: int = 200, hang: bool = False) -> None:
        super().__init__()
        self.status = status
        self.hang = hang
        self.received: list[tuple[bytes, dict[bytes, Sequence[bytes]]]] = []

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        headers = dict(request.requestHeaders.getAllRawHeaders())
        self.received.append((request.content.read(), headers))
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        return b"thanks" * 100


def test_treq_poster_sends_body_and_headers() -> None:
    """The body and every header arrive; the answer's status comes back."""
    receiver = Receiver(202)
    stub = StubTreq(receiver)
    poster = TreqPoster(Clock(), client=stub)
    sent = poster.post(
        "http://hooks.test/in",
        b'{"events":[]}',
        [("Content-Type", ENVELOPE_TYPE), ("X-Team", "a"), ("X-Team", "b")],
        5.0,
    )
    stub.flush()
    assert sent.result == 202
    body, headers = receiver.received[0]
    assert body == b'{"events":[]}'
    assert headers[b"Content-Type"] == [ENVELOPE_TYPE.encode()]
    assert headers[b"X-Team"] == [b"a", b"b"]
    assert poster.close().called


def test_treq_poster_times_out_a_hanging_receiver() -> None:
    """A receiver that never answers fails the delivery after its timeout."""
    clock = Clock()
    stub = StubTreq(Receiver(hang=True))
    poster = TreqPoster(clock, client=stub)
    sent = poster.post("http://hooks.test/in", b"{}", [], 2.0)
    stub.flush()
    assert not sent.called
    clock.advance(2.0)
    failures: list[Failure] = []
    sent.addErrback(failures.append)
    assert failures and failures[0].check(DeliveryTimedOut)
    assert not clock.getDelayedCalls()


def test_treq_poster_leaves_no_timer_behind() -> None:
    """A delivery answered in time cancels its timeout."""
    clock = Clock()
    stub = StubTreq(Receiver(500))
    sent = TreqPoster(clock, client=stub).post("http://hooks.test/", b"{}", [], 2.0)
    stub.flush()
    assert sent.result == 500
    assert not clock.getDelayedCalls()


def test_refused_status_is_its_own_error(sender: Sender) -> None:
    """A 500 is logged as the status the receiver answered."""
    sender.publish(event(1))
    sender.poster.answer(500)
    assert any("failed" in m for m in sender.messages())
    failed = [e for e in sender.logged if "why" in e]
    assert failed[0]["why"] == str(DeliveryRefused(500))
