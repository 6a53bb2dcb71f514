"""The OCI Distribution Spec v2 API as a Klein application over a `Storage`.

One Klein route takes every path under ``/v2/``; `routes.parse_route` says which
endpoint it is and a table picks the handler for the endpoint and method. The
handlers live with their kind of work: `pulls`, `pushes`, `discovery`, `deletes`.
They only check input, call the storage (through `metadata` for everything but
blob bytes) and set headers; they raise for every failure, and the one error
handler here renders it (`errors.render_error`).

Upload bodies stream through `request.StreamingRequest` (installed by `make_site`),
which asks the registry where a body goes before it arrives (`open_body`).

Klein answers a request whose URL or Host is not UTF-8 itself, in plain text, before
any route runs; `Registry.resource` puts a check in front of it so that answer too is
the spec's error body.
"""

from collections.abc import Awaitable, Callable
from typing import Any, cast

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from treescale.auth.authenticator import Authenticator, Decision
from treescale.auth.scopes import Access
from treescale.ops.metrics import Metrics
from treescale.ops.observer import RegistryObserver
from treescale.registry.access import mount_source_access, wanted_access
from treescale.registry.deletes import Deletes
from treescale.registry.discovery import Discovery
from treescale.registry.errors import (
    DENIED,
    ENDPOINT_UNKNOWN,
    METHOD_NOT_ALLOWED,
    NAME_INVALID,
    UNAUTHORIZED,
    UNKNOWN,
    URL_INVALID,
    ApiError,
    api_error_for,
    render_error,
)
from treescale.registry.http import (
    client_left,
    header,
    is_utf8_url,
    json_response,
    set_headers,
)
from treescale.registry.metadata import Metadata
from treescale.registry.names import check_name
from treescale.registry.pulls import Pulls
from treescale.registry.pushes import Pushes
from treescale.registry.request import BodySink, StreamingSite
from treescale.registry.routes import ALLOWED_METHODS, Endpoint, Route, parse_route
from treescale.registry.settings import RegistrySettings
from treescale.registry.uploads import UploadSessions
from treescale.store.interface import Storage

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")

Handler = Callable[[Request, Route, str], Awaitable[bytes | None]]

__all__ = ["Registry", "RegistrySettings", "make_site"]


class Registry:
    """The registry's HTTP API: routes, upload sessions and the records it keeps."""

    log = Logger()

    def __init__(
        self,
        storage: Storage,
        clock: IReactorTime,
        settings: RegistrySettings | None = None,
        authenticator: Authenticator | None = None,
        observer: RegistryObserver | None = None,
    ) -> None:
        self.storage = storage
        self.authenticator = authenticator
        self.clock = clock
        self.settings = settings or RegistrySettings()
        self.observer = observer or RegistryObserver(Metrics(with_process=False), clock)
        events = self.observer.event
        self.metadata = Metadata(storage)
        self.sessions = UploadSessions(
            storage,
            clock,
            self.settings.max_upload_sessions,
            self.settings.upload_idle_timeout,
        )
        self.pulls = Pulls(storage, self.metadata, events)
        self.pushes = Pushes(
            storage,
            self.metadata,
            self.sessions,
            self.settings,
            clock,
            self._may,
            events,
        )
        self.discovery = Discovery(self.metadata, self.settings)
        self.deletes = Deletes(self.metadata, self.settings, events)
        self.app = Klein()
        # Without merge_slashes=False, werkzeug answers a path with "//" by raising a
        # redirect, which no handler expects.
        self.app.route("/v2/", branch=True, strict_slashes=False, merge_slashes=False)(
            self._dispatch
        )
        self.app.handle_errors(Exception)(self._on_failure)
        self._handlers = self._handler_table()

    def _handler_table(self) -> dict[tuple[Endpoint, bytes], Handler]:
        """Which handler answers each endpoint and method."""
        pulls, pushes = self.pulls, self.pushes
        return {
            (Endpoint.VERSION, b"GET"): self._version,
            (Endpoint.VERSION, b"HEAD"): self._version,
            (Endpoint.BLOB, b"GET"): pulls.blob,
            (Endpoint.BLOB, b"HEAD"): pulls.blob,
            (Endpoint.BLOB, b"DELETE"): self.deletes.blob,
            (Endpoint.UPLOAD_START, b"POST"): pushes.upload_start,
            (Endpoint.UPLOAD, b"GET"): pushes.upload_status,
            (Endpoint.UPLOAD, b"PATCH"): pushes.upload_patch,
            (Endpoint.UPLOAD, b"PUT"): pushes.upload_put,
            (Endpoint.UPLOAD, b"DELETE"): pushes.upload_delete,
            (Endpoint.MANIFEST, b"GET"): pulls.manifest,
            (Endpoint.MANIFEST, b"HEAD"): pulls.manifest,
            (Endpoint.MANIFEST, b"PUT"): pushes.manifest_put,
            (Endpoint.MANIFEST, b"DELETE"): self.deletes.manifest,
            (Endpoint.TAGS, b"GET"): self.discovery.tags,
            (Endpoint.TAGS, b"HEAD"): self.discovery.tags,
            (Endpoint.CATALOG, b"GET"): self.discovery.catalog,
            (Endpoint.CATALOG, b"HEAD"): self.discovery.catalog,
            (Endpoint.REFERRERS, b"GET"): self.discovery.referrers,
            (Endpoint.REFERRERS, b"HEAD"): self.discovery.referrers,
        }

    def close(self) -> None:
        """Give up every upload in progress, as the registry stops."""
        self.sessions.cancel_all()

    def resource(self) -> IResource:
        """The resource serving the API: the Klein app behind the UTF-8 URL check."""
        return _ApiResource(self, self.app.resource())

    def refuse_url(self, request: Request) -> bytes:
        """The answer to a request Klein cannot route: a URL or Host that is not
        UTF-8, or a repository name that starts with a slash."""
        path = request.path.decode("latin-1")
        if is_utf8_url(request):
            error = ApiError(NAME_INVALID, {"path": path, "reason": "empty component"})
        else:
            error = ApiError(URL_INVALID, {"path": path})
        failure = Failure(error)  # type: ignore[no-untyped-call]
        return self._render_failure(request, failure) or b""

    # The streaming request's view of the registry (request.BodyRouter).

    @property
    def body_limit(self) -> int:
        """The largest body kept in memory: a manifest."""
        return self.settings.max_manifest_size

    def open_body(self, request: Request) -> BodySink | None:
        """The upload session a request's body streams into, if it is an upload.

        The login is checked here, before the first byte of the body: a request
        that may not write must not add a byte to anyone's upload.
        """
        route = parse_route(request.path)
        if route is not None:
            # Timed from its headers, so the body's upload counts; any other
            # request of the site (a status page, say) is not the API's.
            self.observer.request_started(request, _route_label(route))
        if route is not None and (route.endpoint, request.method) in self._handlers:
            wanted = wanted_access(route.endpoint, request.method, self._repo(route))
            self._authorize(request, wanted)
        return self.pushes.open_body(request)

    async def _dispatch(self, request: Request) -> bytes | None:
        """Find the handler for the request's endpoint and method, and run it."""
        set_headers(request, [API_VERSION])
        route = parse_route(request.path)
        self.observer.request_started(request, _route_label(route))
        if route is None:
            raise ApiError(ENDPOINT_UNKNOWN, {"path": request.path.decode("latin-1")})

        handler = self._handlers.get((route.endpoint, request.method))
        if handler is None:
            allowed = b", ".join(ALLOWED_METHODS[route.endpoint]).decode("ascii")
            raise ApiError(
                METHOD_NOT_ALLOWED,
                {"method": request.method.decode("latin-1"), "allowed": allowed},
                headers={"Allow": allowed},
            )

        repo = self._repo(route)
        self._authorize(request, wanted_access(route.endpoint, request.method, repo))
        return await handler(request, route, repo)

    def _authorize(self, request: Request, wanted: list[Access]) -> None:
        """Let the request on only if its credentials allow what it asks for.

        A streaming request is checked as its headers arrive (`open_body`) and
        again when it is dispatched: the decision is kept on the request, so its
        credentials are checked (a bcrypt or a signature) and a failed login is
        logged once.
        """
        kept = getattr(request, _DECISION, None)
        if kept is not None and kept[0] == wanted:
            decision = kept[1]
        else:
            decision = self._decide(request, wanted)
            setattr(request, _DECISION, (wanted, decision))
            if decision.allowed:
                self.observer.authorized(request, decision.user)
        if decision.allowed:
            return

        if decision.status == 401:
            challenge = {"WWW-Authenticate": decision.challenge or ""}
            raise ApiError(UNAUTHORIZED, decision.reason, headers=challenge)
        raise ApiError(DENIED, decision.reason)

    def _may(self, request: Request, source: str) -> bool:
        """Whether the request may pull from `source` (a mount's other repository)."""
        return self._decide(request, [mount_source_access(source)]).allowed

    def _decide(self, request: Request, wanted: list[Access]) -> Decision:
        """The authenticator's decision on the request, or yes when logins are off."""
        if self.authenticator is None:
            return _OPEN
        return self.authenticator.authorize(
            header(request, "authorization"),
            wanted,
            _peer(request),
            _base_url(request),
        )

    def _repo(self, route: Route) -> str:
        """The route's repository name, validated; "" for endpoints without one."""
        if route.endpoint in (Endpoint.VERSION, Endpoint.CATALOG):
            return ""
        return check_name(route.name, self.settings.max_name_length)

    async def _version(self, request: Request, route: Route, repo: str) -> bytes:
        """``GET /v2/``: this is a registry of the spec's v2 API."""
        return json_response(request, {})

    # Errors.

    def _on_failure(self, request: IRequest, failure: Failure) -> bytes | None:
        """Klein's error handler: every request it serves is a twisted.web one."""
        return self._render_failure(cast(Request, request), failure)

    def _render_failure(self, request: Request, failure: Failure) -> bytes | None:
        """The one place a failure becomes a response; bugs are logged, not shown."""
        self.observer.request_started(request, _route_label(parse_route(request.path)))
        if isinstance(failure.value, CancelledError) and client_left(request):
            self.log.info(
                "client left before {method} {path} was answered",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),
            )
            return None

        error = self._log_failure(request, failure)
        self.observer.api_error(error.error.code)
        if getattr(request, "startedWriting", False):
            self._cut_short(request)
            return None

        set_headers(request, [API_VERSION])
        return render_error(request, error)

    def _log_failure(self, request: Request, failure: Failure) -> ApiError:
        """Log a failure as what it is to an operator; return what the client sees."""
        error = api_error_for(failure.value)
        fields: dict[str, Any] = {
            "method": request.method.decode("latin-1"),
            "path": request.path.decode("latin-1"),
        }
        if error is None:
            self.log.failure(
                "unexpected error answering {method} {path}", failure, **fields
            )
            return ApiError(UNKNOWN)

        if error.status >= 500:
            self.log.warn(
                "could not answer {method} {path}: {code} {reason}",
                code=error.error.code,
                reason=str(failure.value),
                **fields,
            )
        else:
            # A HEAD that finds nothing is how clients ask whether a blob or
            # manifest is there (every push asks it of each layer): not news.
            probe = error.status == 404 and request.method == b"HEAD"
            log = self.log.debug if probe else self.log.info
            log(
                "rejected {method} {path}: {status} {code} {message} {detail}",
                status=error.status,
                code=error.error.code,
                message=error.message,
                detail=error.detail,
                **fields,
            )
        return error

    def _cut_short(self, request: Request) -> None:
        """Abort a response whose status is sent already, so the client sees it fail.

        A body that merely ended early could pass for a whole one on a chunked
        response; an aborted connection cannot.
        """
        transport = getattr(request, "transport", None)
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()


_OPEN = Decision(True, None, 200, None, "logins are off")

_DECISION = "treescale_access_decision"
"""The request attribute keeping what it asked for and the decision on it."""


def _route_label(route: Route | None) -> str:
    """The endpoint a request names, as metrics label it: never a repository."""
    return route.endpoint.value if route is not None else "none"


def _peer(request: Request) -> str:
    """The client's address, for logs of failed logins."""
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


def _base_url(request: Request) -> str:
    """The URL the client used to reach this registry, without a path.

    The token endpoint's default realm is under it, so a client fetches its token
    from the same host and port it talks to.
    """
    scheme = "https" if request.isSecure() else "http"
    host = header(request, "host") or request.getRequestHostname().decode("latin-1")
    return f"{scheme}://{host}"


class _ApiResource(Resource):
    """The Klein resource, with URLs Klein cannot decode or match refused in the
    spec's terms.

    Klein's ``/v2/`` branch does not match a rest that starts with ``/``, so a
    name with an empty first component would get Klein's own 404 page.
    """

    isLeaf = True

    def __init__(self, registry: Registry, inner: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._registry = registry
        self._inner = inner

    def render(self, request: Request) -> bytes | int:
        """Hand a readable request to Klein; answer any other one here."""
        if not is_utf8_url(request) or request.path.startswith(b"/v2//"):
            return self._registry.refuse_url(request)
        return self._inner.render(request)  # type: ignore[no-any-return]


def make_site(registry: Registry) -> Site:
    """A site serving the registry, with upload bodies streamed as they arrive."""
    return StreamingSite(registry.resource(), registry)
