"""The registry's one view of operations: request metrics, and events sent on.

The registry tells its observer when a request starts (`request_started`, as early
as it knows of it: at its headers for a body streamed to an upload), who it was
let on as (`authorized`), what error it answered (`api_error`) and what it did to
content (`event`). The observer turns that into metrics when the response ends and
into notifications at once. Nothing it does may fail or slow a request: every
entry point catches and logs its own errors.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from treescale.ops.events import (
    BLOB,
    MANIFEST,
    PUSH,
    RegistryEvent,
    RequestRecord,
    SourceRecord,
    notification,
)
from treescale.ops.metrics import Metrics, method_label
from treescale.ops.notify import Notifier

# Routes whose GET is a pull and whose PUT is a push, as latency metrics see them.
_PULLED = {"blob": BLOB, "manifest": MANIFEST}
_PUSHED_MANIFEST = "manifest"


@dataclass
class _Seen:
    """What the observer keeps about one request until it ends."""

    route: str
    method: str
    started: float
    received: int = 0
    """Body bytes of a buffered request, measured before the body is dropped."""
    id: str = ""
    actor: str | None = None


class RegistryObserver:
    """Request metrics and content events of one registry."""

    log = Logger()

    def __init__(
        self,
        metrics: Metrics,
        clock: IReactorTime,
        notifier: Notifier | None = None,
        source: SourceRecord | None = None,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.notifier = notifier
        self.source = source or SourceRecord("", new_id())
        self.new_id = new_id
        self._seen: WeakKeyDictionary[Request, _Seen] = WeakKeyDictionary()

    def request_started(self, request: Request, route: str) -> None:
        """Start timing a request; later calls for the same request change nothing."""
        try:
            if request in self._seen:
                return
            seen = _Seen(route, method_label(request.method), self.clock.seconds())
            seen.received = _buffered_size(request)
            self._seen[request] = seen
            self.metrics.http_started()
            request.notifyFinish().addCallbacks(
                self._finished,
                self._abandoned,
                callbackArgs=(request, seen),
                errbackArgs=(request, seen),
            )
        except Exception:
            self.log.failure("request metrics failed")

    def authorized(self, request: Request, user: str | None) -> None:
        """The user a request was let on as, for its events' actor."""
        seen = self._seen.get(request)
        if seen is not None and user:
            seen.actor = user

    def api_error(self, code: str) -> None:
        """An error response with the spec's error `code` was sent."""
        try:
            self.metrics.api_error(code)
        except Exception:
            self.log.failure("error metrics failed")

    def event(self, request: Request, event: RegistryEvent) -> None:
        """Content was pushed, pulled, mounted or deleted: count it, send it on."""
        try:
            self.metrics.registry_event(event.action, event.kind)
            if event.action == PUSH and event.kind == BLOB and event.elapsed:
                self.metrics.pushed(BLOB, event.elapsed)
            if self.notifier is not None:
                self._notify(request, event)
        except Exception:
            self.log.failure(
                "event {action} of {repo} not sent on",
                action=event.action,
                repo=event.repository,
            )

    def _notify(self, request: Request, event: RegistryEvent) -> None:
        assert self.notifier is not None
        record = self._record(request)
        body = notification(
            event, record, self.source, self.new_id(), self.clock.seconds()
        )
        self.notifier.publish(body, event.action, event.target_media_type)

    def _record(self, request: Request) -> RequestRecord:
        """The request as notifications describe it; one id for all its events."""
        seen = self._seen.get(request)
        if seen is None:
            seen = _Seen("", method_label(request.method), self.clock.seconds())
            self._seen[request] = seen
        if not seen.id:
            seen.id = self.new_id()
        return request_record(request, seen.id, seen.actor)

    def _finished(self, _: object, request: Request, seen: _Seen) -> None:
        try:
            elapsed = self.clock.seconds() - seen.started
            code = int(request.code)
            self.metrics.http_finished(
                seen.route,
                seen.method,
                code,
                elapsed,
                _received(request, seen),
                int(request.sentLength),
            )
            self._latency(seen, code, elapsed)
        except Exception:
            self.log.failure("request metrics failed")

    def _abandoned(self, failure: Failure, request: Request, seen: _Seen) -> None:
        try:
            self.metrics.http_abandoned(
                seen.route,
                seen.method,
                self.clock.seconds() - seen.started,
                _received(request, seen),
                int(request.sentLength),
            )
        except Exception:
            self.log.failure("request metrics failed")

    def _latency(self, seen: _Seen, code: int, elapsed: float) -> None:
        """A whole GET of a blob or manifest is a pull; a stored manifest a push."""
        if seen.method == "GET" and code in (200, 206) and seen.route in _PULLED:
            self.metrics.pulled(_PULLED[seen.route], elapsed)
        if seen.method == "PUT" and code == 201 and seen.route == _PUSHED_MANIFEST:
            self.metrics.pushed(MANIFEST, elapsed)


def request_record(
    request: Request, request_id: str, actor: str | None
) -> RequestRecord:
    """A twisted.web request as notifications describe it."""
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    addr = f"{host}:{port}" if host is not None else str(address)
    scheme = "https" if request.isSecure() else "http"
    host_header = _header(request, b"host") or (
        request.getRequestHostname().decode("latin-1")
    )
    return RequestRecord(
        id=request_id,
        addr=addr,
        host=host_header,
        method=request.method.decode("latin-1"),
        useragent=_header(request, b"user-agent"),
        base_url=f"{scheme}://{host_header}",
        actor=actor,
    )


def _header(request: Request, name: bytes) -> str:
    values = request.requestHeaders.getRawHeaders(name)
    return bytes(values[-1]).decode("latin-1") if values else ""


def _received(request: Any, seen: _Seen) -> int:
    """Body bytes the request brought: a streaming request counts its own (the
    body arrives after it is first seen); any other was measured when seen."""
    streamed = getattr(request, "body_received", None)
    if isinstance(streamed, int):
        return streamed
    return seen.received


def _buffered_size(request: Any) -> int:
    """The size of a buffered body, leaving its read position where it was.

    twisted.web closes and drops the body before the request's end is told, so
    it is measured when the request is first seen, once the body is in.
    """
    content = getattr(request, "content", None)
    if content is None or hasattr(request, "body_received"):
        return 0
    try:
        position = content.tell()
        size = int(content.seek(0, 2))
        content.seek(position)
    except (OSError, ValueError):
        return 0
    return size
