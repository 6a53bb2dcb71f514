"""``/healthz`` and ``/readyz``: is the process alive, and can it serve the API.

Alive means the process answers HTTP at all; an orchestrator restarts a node that
stops answering. Ready means a pull or push can succeed now: the node reaches
enough store relays for a record quorum (a tag, a recipe) and for every replica of
a chunk. A node that is alive but not ready should be taken out of a load
balancer, not restarted: its relays may come back.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass

from twisted.web.resource import Resource
from twisted.web.server import Request


@dataclass(frozen=True)
class Readiness:
    """How many store relays the node reaches, and how many it needs."""

    relays_up: int
    relays_needed: int

    @property
    def ready(self) -> bool:
        return self.relays_up >= self.relays_needed

    def to_json(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "relays_up": self.relays_up,
            "relays_needed": self.relays_needed,
        }


def relays_needed(stores: int, replicas: int, record_replicas: int) -> int:
    """Relays a node must reach to write a record and every copy of a chunk.

    Records go to `record_replicas` relays and need a majority of them; a chunk
    needs `replicas` holders. Neither can ask for more relays than the tree has.
    """
    record_quorum = min(record_replicas, stores) // 2 + 1
    return max(1, min(stores, max(replicas, record_quorum)))


class ReadOnlyPage(Resource):
    """A page that only answers GET and HEAD; other methods get a bare 405."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def render(self, request: Request) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-length", b"0")
            return b""
        return super().render(request)  # type: ignore[no-any-return,no-untyped-call]


class HealthResource(ReadOnlyPage):
    """``GET /healthz``: 200 while the process serves HTTP."""

    def render_GET(self, request: Request) -> bytes:
        return _json(request, 200, {"status": "alive"})


class ReadyResource(ReadOnlyPage):
    """``GET /readyz``: 200 when the node reaches enough relays, else 503."""

    def __init__(self, readiness: Callable[[], Readiness]) -> None:
        super().__init__()
        self.readiness = readiness

    def render_GET(self, request: Request) -> bytes:
        now = self.readiness()
        return _json(request, 200 if now.ready else 503, now.to_json())


def _json(request: Request, status: int, document: object) -> bytes:
    body = json.dumps(document).encode()
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    request.setHeader(b"cache-control", b"no-store")
    return body
