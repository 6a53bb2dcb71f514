"""The operations side of one registry node, put together: metrics, the registry's
observer, the notification sender, and the pages served beside the API.

    /metrics   Prometheus exposition (text, or OpenMetrics when asked for)
    /healthz   200 while the process serves HTTP
    /readyz    200 when enough relays are reachable, else 503

These pages answer without a login, like ``/_treescale/status``: they name no
repository, tag or user.
"""

import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from treescale.ops.events import SourceRecord
from treescale.ops.health import (
    HealthResource,
    Readiness,
    ReadOnlyPage,
    ReadyResource,
)
from treescale.ops.metrics import Metrics
from treescale.ops.notify import Notifier, TreqPoster
from treescale.ops.observer import RegistryObserver
from treescale.ops.settings import NotificationSettings

METRICS_PATH = b"/metrics"
HEALTH_PATH = b"/healthz"
READY_PATH = b"/readyz"


@dataclass(frozen=True)
class NodeOps:
    """What a registry node's site needs for operations."""

    metrics: Metrics
    observer: RegistryObserver
    notifier: Notifier | None
    pages: Mapping[bytes, Resource]


def node_ops(
    reactor: Any,
    notifications: NotificationSettings,
    http_endpoint: str,
    relays: Callable[[], tuple[int, int]],
) -> NodeOps:
    """Metrics, observer, sender and pages of a node serving on `http_endpoint`.

    `relays` says how many store relays the node reaches and how many it needs;
    it decides readiness and is shown as metrics.
    """
    metrics = Metrics()
    metrics.watch_relays(relays)
    notifier = None
    if notifications.endpoints:
        notifier = Notifier(notifications, reactor, TreqPoster(reactor), metrics)
    source = SourceRecord(
        source_address(socket.gethostname(), http_endpoint), str(uuid.uuid4())
    )
    observer = RegistryObserver(metrics, reactor, notifier, source)
    pages: dict[bytes, Resource] = {
        METRICS_PATH: MetricsResource(metrics),
        HEALTH_PATH: HealthResource(),
        READY_PATH: ReadyResource(lambda: Readiness(*relays())),
    }
    return NodeOps(metrics, observer, notifier, pages)


def source_address(hostname: str, http_endpoint: str) -> str:
    """``host:port`` naming this node in notifications, as the reference registry
    does; just the host when the endpoint string has no port."""
    port = endpoint_port(http_endpoint)
    return f"{hostname}:{port}" if port is not None else hostname


def endpoint_port(description: str) -> int | None:
    """The port of a ``tcp:``, ``tcp6:`` or ``ssl:`` Twisted endpoint string."""
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    for part in rest.split(":"):
        value = part.removeprefix("port=")
        if value.isdigit():
            return int(value)
        if "=" not in part:
            return None
    return None


class MetricsResource(ReadOnlyPage):
    """``GET /metrics``: the process's metrics, for Prometheus to scrape."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        text = accept.decode("latin-1") if accept is not None else None
        body, content_type = self.metrics.render(text)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        return body
