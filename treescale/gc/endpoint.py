"""``POST /_treescale/gc``: a collection run on a registry node, asked for locally.

The registry node already is on the bus as a member of the tree, so it runs the
collection; the ``treescale gc`` command asks it to over HTTP. There is no
administrator login yet, so only a client on the node's own host (a loopback
address) may ask; anyone else gets 403. One run at a time: a second ask while one
runs gets 409. ``?dry_run=1`` reports what would go without deleting anything.
"""

import ipaddress
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from treescale.gc.collector import run_gc
from treescale.gc.plan import GcReport
from treescale.gc.settings import GcSettings

TRUE_WORDS = frozenset({"1", "true", "yes"})


def _is_loopback(request: Request) -> bool:
    host = getattr(request.getClientAddress(), "host", "")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GcResource(Resource):
    """Runs a collection when asked by a local client, answering its report."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        storage: Any,
        clock: IReactorTime,
        settings: GcSettings,
        upload_idle_timeout: float,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.storage = storage
        self.clock = clock
        self.settings = settings
        self.upload_idle_timeout = upload_idle_timeout
        self.running = False

    def render_POST(self, request: Request) -> bytes | int:
        if not _is_loopback(request):
            return _answer(request, 403, {"error": "only a local client may run GC"})
        if self.running:
            return _answer(request, 409, {"error": "a collection is running"})

        values = (request.args or {}).get(b"dry_run", [b"0"])
        dry_run = bytes(values[0]).decode("latin-1").lower() in TRUE_WORDS
        self.running = True
        run = Deferred.fromCoroutine(
            run_gc(
                self.storage,
                self.clock,
                self.settings,
                self.upload_idle_timeout,
                dry_run=dry_run,
            )
        )
        run.addCallbacks(
            self._done, self._failed, callbackArgs=(request,), errbackArgs=(request,)
        )
        return NOT_DONE_YET

    def _done(self, report: GcReport, request: Request) -> None:
        self.running = False
        self.log.info("garbage collection: {summary}", summary=report.summary())
        if request.channel is not None:
            request.setHeader(b"content-type", b"application/json")
            request.write(report.to_json().encode("utf-8"))
            request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        self.running = False
        self.log.failure("garbage collection failed", failure)
        if request.channel is not None:
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"application/json")
            why = {"error": f"the collection failed: {failure.getErrorMessage()}"}
            request.write(json.dumps(why).encode("utf-8"))
            request.finish()


def _answer(request: Request, status: int, document: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(document).encode("utf-8")
