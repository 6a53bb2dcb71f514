"""The notification sender: registry events POSTed to every configured endpoint.

    Notifier.publish(event) ──> EndpointQueue "audit"  ──> Poster.post (treq)
                           └──> EndpointQueue "search" ──> Poster.post

# Each endpoint has its own bounded queue and at most one delivery in flight, so a
# slow receiver delays only itself and events reach each receiver in the order they
# happened. `publish` only appends to queues: it never waits, and nothing a receiver
# does (refusing, hanging, answering 500) reaches the request that caused the event.
# A failed delivery is retried, with the same events and ids, after an exponential
# backoff with a cap and jitter (Twisted's `backoffPolicy`, as the bus's dialer
# uses); after `max_attempts` tries the batch is given up and logged. A queue that
# is full drops new events: the ones waiting are older, and keep their order.
#
# Shortcoming: queues live in memory. Events still queued when the process stops
# are lost, as they are in the reference registry.
"""

import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import treq
from treq.client import HTTPClient
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from treescale import __version__
from treescale.ops.events import ENVELOPE_TYPE, envelope
from treescale.ops.metrics import Metrics
from treescale.ops.settings import NotificationEndpoint, NotificationSettings

USER_AGENT = f"treescale/{__version__}"


class DeliveryRefused(Exception):
    """A receiver answered a delivery with a status other than 2xx."""

    def __init__(self, status: int) -> None:
        super().__init__(f"answered {status}")
        self.status = status


class DeliveryTimedOut(Exception):
    """A receiver did not answer a delivery, body and all, within its timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no answer within {timeout} s")


class Poster(Protocol):
    """Sends one POST and says how it went: the I/O edge of the sender."""

    def post(
        self, url: str, body: bytes, headers: Sequence[tuple[str, str]], timeout: float
    ) -> "Deferred[int]":
        """Fire with the response's status once its body is read, or fail."""

    def close(self) -> "Deferred[None]":
        """Let go of every connection kept open."""


class EndpointQueue:
    """The events waiting for one endpoint, and the one delivery in flight."""

    log = Logger()

    def __init__(
        self,
        endpoint: NotificationEndpoint,
        settings: NotificationSettings,
        clock: IReactorTime,
        poster: Poster,
        metrics: Metrics,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self.clock = clock
        self.poster = poster
        self.metrics = metrics
        self.waiting: deque[Mapping[str, Any]] = deque()
        self.failures = 0
        self.dropped = 0
        self._batch = 0
        """Events at the head of `waiting` that the current delivery carries; a
        retry sends exactly these again."""
        self._delay = backoffPolicy(
            initialDelay=settings.backoff_initial,
            maxDelay=settings.backoff_max,
            factor=settings.backoff_factor,
            jitter=jitter,
        )
        self._in_flight: Deferred[int] | None = None
        self._retry: IDelayedCall | None = None
        self._stopped = False
        self._headers = (
            ("Content-Type", ENVELOPE_TYPE),
            ("User-Agent", USER_AGENT),
            *endpoint.headers,
        )

    @property
    def busy(self) -> bool:
        """Whether a delivery is in flight or waiting to be retried."""
        return self._in_flight is not None or self._retry is not None

    def offer(self, event: Mapping[str, Any]) -> None:
        """Queue one event, or drop it if the queue is full; never blocks."""
        if self._stopped:
            return
        if len(self.waiting) >= self.settings.queue_size:
            self._drop(event)
            return

        if self.dropped:
            self.log.warn(
                "notification queue of {endpoint} takes events again; "
                "{count} were dropped while it was full",
                endpoint=self.endpoint.name,
                count=self.dropped,
            )
            self.dropped = 0
        self.waiting.append(event)
        self._send_next()

    def stop(self) -> None:
        """Send nothing more: cancel the retry timer and the delivery in flight."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._in_flight is not None:
            self._in_flight.cancel()

    def _drop(self, event: Mapping[str, Any]) -> None:
        """Count an event the full queue cannot take; say so once per spell."""
        self.metrics.notification_dropped(self.endpoint.name, "queue_full")
        if not self.dropped:
            self.log.error(
                "notification queue of {endpoint} is full ({queue_size} events); "
                "dropping new events until it drains",
                endpoint=self.endpoint.name,
                queue_size=self.settings.queue_size,
                action=event.get("action"),
            )
        self.dropped += 1

    def _send_next(self) -> None:
        """Start a delivery of the oldest events, unless one is under way."""
        if self._stopped or self.busy or not self.waiting:
            return

        count = self._batch or min(len(self.waiting), self.settings.max_batch)
        self._batch = count
        batch = [self.waiting[i] for i in range(count)]
        started = self.clock.seconds()
        # A poster that raises at once fails this try like any other failure.
        posting: Deferred[int] = maybeDeferred(
            self.poster.post,
            self.endpoint.url,
            envelope(batch),
            self._headers,
            self.endpoint.timeout,
        )
        self._in_flight = posting
        posting.addCallback(self._check_status)
        posting.addCallbacks(
            self._delivered,
            self._failed,
            callbackArgs=(count, started),
            errbackArgs=(count,),
        )

    def _check_status(self, status: int) -> int:
        if not 200 <= status < 300:
            raise DeliveryRefused(status)
        return status

    def _delivered(self, status: int, count: int, started: float) -> None:
        """The receiver took the batch: forget it, and send what came since."""
        self._in_flight = None
        self._forget_batch(count)
        self.metrics.notifications_sent(
            self.endpoint.name, count, self.clock.seconds() - started
        )
        if self.failures:
            self.log.info(
                "notifications reach {endpoint} again after {attempts} failed tries",
                endpoint=self.endpoint.name,
                attempts=self.failures,
            )
        self.failures = 0
        self._send_next()

    def _failed(self, failure: Failure, count: int) -> None:
        """Retry the batch after a backoff, or give it up after the last try."""
        self._in_flight = None
        if self._stopped:
            return

        self.failures += 1
        self.metrics.notification_failed(self.endpoint.name)
        why = _reason(failure)
        cap = self.settings.max_attempts
        if cap and self.failures >= cap:
            self._give_up(count, why)
            return

        delay = self._delay(self.failures - 1)
        self.log.warn(
            "notification delivery to {endpoint} failed ({why}), try {attempt}; "
            "retrying in {delay:.1f} s",
            endpoint=self.endpoint.name,
            why=why,
            attempt=self.failures,
            delay=delay,
        )
        self._retry = self.clock.callLater(delay, self._retry_now)

    def _give_up(self, count: int, why: str) -> None:
        """Drop a batch no try delivered, and go on with the next one."""
        self._forget_batch(count)
        self.metrics.notification_dropped(self.endpoint.name, "gave_up", count)
        self.log.error(
            "gave up delivering {count} notifications to {endpoint} after "
            "{attempts} tries: {why}",
            endpoint=self.endpoint.name,
            count=count,
            attempts=self.failures,
            why=why,
        )
        self.failures = 0
        self._send_next()

    def _forget_batch(self, count: int) -> None:
        for _ in range(count):
            self.waiting.popleft()
        self._batch = 0

    def _retry_now(self) -> None:
        self._retry = None
        self._send_next()


class Notifier:
    """Every endpoint's queue; what the registry hands its events to."""

    log = Logger()

    def __init__(
        self,
        settings: NotificationSettings,
        clock: IReactorTime,
        poster: Poster,
        metrics: Metrics,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.poster = poster
        self.queues = [
            EndpointQueue(endpoint, settings, clock, poster, metrics, jitter)
            for endpoint in settings.endpoints
        ]
        metrics.watch_notification_queues(self.queued)

    def publish(
        self, event: Mapping[str, Any], action: str, media_type: str = ""
    ) -> None:
        """Queue one event (a `notification` object) for every endpoint that wants
        it. Returns at once; never raises."""
        for queue in self.queues:
            if not queue.endpoint.wants(action, media_type):
                continue
            try:
                queue.offer(event)
            except Exception:
                self.log.failure(
                    "notification for {endpoint} could not be queued",
                    endpoint=queue.endpoint.name,
                )

    def queued(self) -> dict[str, int]:
        """How many events wait for each endpoint, the one in flight included."""
        return {queue.endpoint.name: len(queue.waiting) for queue in self.queues}

    def stop(self) -> "Deferred[None]":
        """Stop every queue, then close the poster's connections."""
        for queue in self.queues:
            queue.stop()
        return self.poster.close()


def _reason(failure: Failure) -> str:
    """A failed delivery in a few words, for the log."""
    error = failure.value
    if isinstance(error, DeliveryRefused | DeliveryTimedOut):
        return str(error)
    if isinstance(error, CancelledError):
        return "cancelled"
    return f"{type(error).__name__}: {error}"


class TreqPoster:
    """Deliveries over HTTP or HTTPS with treq."""

    def __init__(self, reactor: Any, client: Any = None) -> None:
        """`client` is treq's `HTTPClient` or anything with its ``post`` (StubTreq
        in tests); by default a client on a connection pool of its own."""
        self.clock: IReactorTime = reactor
        self._pool: HTTPConnectionPool | None = None
        if client is None:
            client, self._pool = _pooled_client(reactor)
        self.client = client

    def post(
        self, url: str, body: bytes, headers: Sequence[tuple[str, str]], timeout: float
    ) -> "Deferred[int]":
        """POST `body`; fire with the status once the answer is read and dropped.

        The whole exchange, answer body included, has `timeout` seconds: a
        receiver that trickles its answer cannot hold the queue.
        """
        sending = Deferred.fromCoroutine(self._post(url, body, headers))
        timer = self.clock.callLater(timeout, sending.cancel)

        def settled(result: int | Failure) -> int | Failure:
            if timer.active():
                timer.cancel()
                return result
            if isinstance(result, Failure):
                raise DeliveryTimedOut(timeout)
            return result

        return sending.addBoth(settled)

    async def _post(
        self, url: str, body: bytes, headers: Sequence[tuple[str, str]]
    ) -> int:
        sent = Headers()
        for name, value in headers:
            sent.addRawHeader(name, value)
        response = await self.client.post(
            url, data=body, headers=sent, allow_redirects=False
        )
        await treq.collect(response, _discard)
        return int(response.code)

    def close(self) -> "Deferred[None]":
        if self._pool is None:
            done: Deferred[None] = Deferred()
            done.callback(None)
            return done
        pool: Any = self._pool
        closing: Deferred[None] = pool.closeCachedConnections()
        return closing


def _pooled_client(reactor: Any) -> tuple[HTTPClient, HTTPConnectionPool]:
    """A treq client on a pool of its own, so closing it closes only its own.

    Each delivery opens a connection of its own: a receiver may close an idle
    kept-alive connection at any moment (a plain HTTP/1.0 server does so at once),
    and a POST sent on one that just closed fails, and is not retried by Twisted
    since it is not idempotent.
    """
    # The second argument is `persistent`.
    pool = HTTPConnectionPool(reactor, False)  # type: ignore[no-untyped-call]
    agent = Agent(reactor, pool=pool)  # type: ignore[no-untyped-call]
    return HTTPClient(agent), pool


def _discard(data: bytes) -> None:
    """A receiver's answer body says nothing the sender needs."""
