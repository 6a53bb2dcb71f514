"""The OCI Distribution Spec v2 API as a Klein application over a `Storage`.

One Klein route takes every path under ``/v2/``; `routes.parse_route` says which
endpoint it is and a table picks the handler for the endpoint and method. Handlers
only check input, call the storage and set headers; they raise for every failure,
and the one error handler renders it (`errors.render_error`).

What the registry keeps, beside blobs, as storage records:

- ``link/<repo>/<digest>``: the blob is part of the repository (a blob is visible
  in a repository only when linked to it). Written when an upload into the
  repository completes, or a mount into it succeeds. Value: JSON ``{"size": n}``.
- ``manifest/<repo>/<digest>``: a manifest pushed to the repository. Value: JSON
  ``{"media_type": ..., "size": n}``; its bytes are the blob of that digest.
- ``tags/<repo>``: JSON object from tag to manifest digest; written (perhaps empty)
  with the repository's first manifest, so it also says the repository exists.

Upload bodies stream through `request.StreamingRequest` (installed by `make_site`)
straight into the session's `BlobUpload`. A request of another class (a test's
in-memory client, say) has its buffered body fed to the upload by the handler, so
both paths meet in `Registry._body_session`.

Klein answers a request whose URL or Host is not UTF-8 itself, in plain text, before
any route runs; `Registry.resource` puts a check in front of it so that answer too is
the spec's error body.
"""

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from treescale.registry.errors import (
    BLOB_UNKNOWN,
    BLOB_UPLOAD_RANGE,
    DIGEST_INVALID,
    ENDPOINT_UNKNOWN,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_TOO_LARGE,
    MANIFEST_UNKNOWN,
    METHOD_NOT_ALLOWED,
    NAME_UNKNOWN,
    QUERY_INVALID,
    SIZE_INVALID,
    UNKNOWN,
    URL_INVALID,
    ApiError,
    api_error_for,
    render_error,
)
from treescale.registry.manifests import (
    DEFAULT_MAX_MANIFEST_SIZE,
    Descriptor,
    Manifest,
    parse_manifest,
)
from treescale.registry.names import (
    DEFAULT_MAX_NAME_LENGTH,
    check_digest,
    check_name,
    is_digest_like,
    is_tag,
)
from treescale.registry.ranges import (
    ByteRange,
    parse_content_range,
    parse_count,
    parse_range,
    upload_range,
)
from treescale.registry.request import BodySink, StreamingRequest, StreamingSite
from treescale.registry.routes import ALLOWED_METHODS, Endpoint, Route, parse_route
from treescale.registry.uploads import UploadSession, UploadSessions
from treescale.store.digests import sha256_digest
from treescale.store.errors import BlobUnknown
from treescale.store.interface import Storage

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")

Handler = Callable[[Request, Route], Awaitable[bytes | None]]


@dataclass(frozen=True)
class RegistrySettings:
    """The limits of the HTTP API."""

    max_name_length: int = DEFAULT_MAX_NAME_LENGTH
    max_manifest_size: int = DEFAULT_MAX_MANIFEST_SIZE
    max_upload_sessions: int = 1024
    upload_idle_timeout: float = 3600.0
    """Seconds an upload session may go unused before it is given up."""
    max_tags_page: int = 1000
    """The most tags one ``tags/list`` answer holds; more are paged with ``Link``."""
    body_piece_size: int = 64 * 1024
    """How much of a buffered body is fed to an upload in one write."""


def link_key(repo: str, digest: str) -> str:
    """The record saying a blob is part of a repository."""
    return f"link/{repo}/{digest}"


def manifest_key(repo: str, digest: str) -> str:
    """The record of a manifest pushed to a repository."""
    return f"manifest/{repo}/{digest}"


def tags_key(repo: str) -> str:
    """The record of a repository's tags."""
    return f"tags/{repo}"


def _set_headers(request: Request, headers: Iterable[tuple[str, str]]) -> None:
    """Set response headers, each to one value."""
    for name, value in headers:
        request.responseHeaders.setRawHeaders(name, [value])


def _json_response(request: Request, document: object) -> bytes:
    """A JSON response body, with its type and length set."""
    body = json.dumps(document).encode("utf-8")
    _set_headers(
        request,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return body


def _empty_response(request: Request, status: int) -> bytes:
    """A response with no body."""
    request.setResponseCode(status)
    if status != 204:
        _set_headers(request, [("Content-Length", "0")])
    return b""


def _query(request: Request, name: str) -> str | None:
    """The first value of a query parameter, or None when absent."""
    args = request.args or {}
    values = args.get(name.encode("ascii"))
    if not values:
        return None
    return bytes(values[0]).decode("utf-8", "replace")


def _header(request: Request, name: str) -> str | None:
    """A request header's value, or None when absent.

    Header bytes are read as ISO-8859-1, which decodes any of them: a value that
    is not UTF-8 is then refused by the check it fails, not by a decoding error.
    """
    values = request.requestHeaders.getRawHeaders(name.encode("ascii"))
    if not values or not values[-1]:
        return None
    return bytes(values[-1]).decode("latin-1")


def _client_left(request: Request) -> bool:
    """Whether the request's connection is gone, or going: its transport says so first.

    A TCP transport marks itself disconnected before it stops the response's
    producer, which is what fails a blob read; the request hears of it only later.
    """
    transport = getattr(request, "transport", None)
    return request.channel is None or bool(getattr(transport, "disconnected", False))


def _is_utf8_url(request: Request) -> bool:
    """Whether the path (percent-decoded) and the Host are UTF-8, as Klein needs."""
    try:
        unquote_to_bytes(request.path).decode("utf-8")
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Registry:
    """The registry's HTTP API: routes, upload sessions and the records it keeps."""

    log = Logger()

    def __init__(
        self,
        storage: Storage,
        clock: IReactorTime,
        settings: RegistrySettings | None = None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.settings = settings or RegistrySettings()
        self.sessions = UploadSessions(
            storage,
            clock,
            self.settings.max_upload_sessions,
            self.settings.upload_idle_timeout,
        )
        self.app = Klein()
        # Without merge_slashes=False, werkzeug answers a path with "//" by raising a
        # redirect, which no handler expects.
        self.app.route("/v2/", branch=True, strict_slashes=False, merge_slashes=False)(
            self._dispatch
        )
        self.app.handle_errors(Exception)(self._on_failure)
        self._handlers: dict[tuple[Endpoint, bytes], Handler] = {
            (Endpoint.VERSION, b"GET"): self._version,
            (Endpoint.VERSION, b"HEAD"): self._version,
            (Endpoint.BLOB, b"GET"): self._blob_get,
            (Endpoint.BLOB, b"HEAD"): self._blob_get,
            (Endpoint.UPLOAD_START, b"POST"): self._upload_start,
            (Endpoint.UPLOAD, b"GET"): self._upload_status,
            (Endpoint.UPLOAD, b"PATCH"): self._upload_patch,
            (Endpoint.UPLOAD, b"PUT"): self._upload_put,
            (Endpoint.UPLOAD, b"DELETE"): self._upload_delete,
            (Endpoint.MANIFEST, b"GET"): self._manifest_get,
            (Endpoint.MANIFEST, b"HEAD"): self._manifest_get,
            (Endpoint.MANIFEST, b"PUT"): self._manifest_put,
            (Endpoint.TAGS, b"GET"): self._tags_list,
            (Endpoint.TAGS, b"HEAD"): self._tags_list,
        }

    def close(self) -> None:
        """Give up every upload in progress, as the registry stops."""
        self.sessions.cancel_all()

    def resource(self) -> IResource:
        """The resource serving the API: the Klein app behind the UTF-8 URL check."""
        return _ApiResource(self, self.app.resource())

    def refuse_url(self, request: Request) -> bytes:
        """The answer to a request whose URL or Host is not UTF-8."""
        error = ApiError(URL_INVALID, {"path": request.path.decode("latin-1")})
        failure = Failure(error)  # type: ignore[no-untyped-call]
        return self._render_failure(request, failure) or b""

    # The streaming request's view of the registry (request.BodyRouter).

    @property
    def body_limit(self) -> int:
        """The largest body kept in memory: a manifest."""
        return self.settings.max_manifest_size

    def open_body(self, request: Request) -> BodySink | None:
        """The upload session a request's body streams into, if it is an upload."""
        route = parse_route(request.path)
        if route is None or not self._takes_upload_body(request, route):
            return None

        return self._claim_session_for_body(request, route)

    def _takes_upload_body(self, request: Request, route: Route) -> bool:
        """Whether the request's body is blob bytes for an upload."""
        if route.endpoint is Endpoint.UPLOAD:
            return request.method in (b"PATCH", b"PUT")

        return (
            route.endpoint is Endpoint.UPLOAD_START
            and request.method == b"POST"
            and _query(request, "digest") is not None
            and _query(request, "mount") is None
        )

    def _claim_session_for_body(self, request: Request, route: Route) -> UploadSession:
        """Check an upload request before its body, and claim its session."""
        repo = self._repo(route)
        if route.endpoint is Endpoint.UPLOAD_START:
            self._digest_param(request)
            session = self.sessions.open(repo)
        else:
            session = self.sessions.get(route.reference, repo)
            self._check_chunk_range(request, session)
            if request.method == b"PUT":
                self._digest_param(request)

        self.sessions.claim(session)
        request.notifyFinish().addBoth(self._request_ended, session, route)
        return session

    def _request_ended(
        self, result: object, session: UploadSession, route: Route
    ) -> None:
        """A request that claimed a session is over, answered or not.

        The session of a one-request upload was never named to the client, so
        if it is still there (the client left mid-body, say) no one can use it.
        """
        self.sessions.release(session)
        if route.endpoint is Endpoint.UPLOAD_START and session in self.sessions:
            self.sessions.cancel(session)

    def _check_chunk_range(self, request: Request, session: UploadSession) -> None:
        """A chunk with a Content-Range must start where the upload stands."""
        header = _header(request, "content-range")
        if header is None:
            return

        first, last = parse_content_range(header)
        if first != session.size:
            raise ApiError(
                BLOB_UPLOAD_RANGE,
                {"content_range": header, "offset": session.size},
                headers={
                    "Location": session.location,
                    "Range": upload_range(session.size),
                    "Docker-Upload-UUID": session.uuid,
                },
            )

        length = parse_count(_header(request, "content-length") or "")
        if length is not None and length != last - first + 1:
            raise ApiError(SIZE_INVALID, {"content_range": header, "length": length})

    # Dispatch and errors.

    async def _dispatch(self, request: Request) -> bytes | None:
        """Find the handler for the request's endpoint and method, and run it."""
        _set_headers(request, [API_VERSION])
        route = parse_route(request.path)
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

        return await handler(request, route)

    def _on_failure(self, request: IRequest, failure: Failure) -> bytes | None:
        """Klein's error handler: every request it serves is a twisted.web one."""
        return self._render_failure(cast(Request, request), failure)

    def _render_failure(self, request: Request, failure: Failure) -> bytes | None:
        """The one place a failure becomes a response; bugs are logged, not shown."""
        if isinstance(failure.value, CancelledError) and _client_left(request):
            self.log.info(
                "client left before {method} {path} was answered",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),
            )
            return None

        error = self._log_failure(request, failure)
        if getattr(request, "startedWriting", False):
            self._cut_short(request)
            return None

        _set_headers(request, [API_VERSION])
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
            self.log.info(
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

    # Checks shared by handlers.

    def _repo(self, route: Route) -> str:
        """The route's repository name, validated."""
        return check_name(route.name, self.settings.max_name_length)

    def _digest_param(self, request: Request) -> str:
        """The ``digest`` query parameter a closing upload request must carry."""
        digest = _query(request, "digest")
        if digest is None:
            raise ApiError(DIGEST_INVALID, {"reason": "no digest query parameter"})
        return check_digest(digest)

    async def _is_linked(self, repo: str, digest: str) -> bool:
        """Whether a blob is part of a repository."""
        return await self.storage.record_get(link_key(repo, digest)) is not None

    async def _link_blob(self, repo: str, digest: str, size: int) -> None:
        """Make a stored blob part of a repository."""
        value = json.dumps({"size": size}).encode("utf-8")
        await self.storage.record_put(link_key(repo, digest), value)

    async def _tags(self, repo: str) -> dict[str, str] | None:
        """A repository's tags, or None when it has no manifest at all."""
        value = await self.storage.record_get(tags_key(repo))
        if value is None:
            return None

        tags = json.loads(value)
        if not isinstance(tags, dict):
            raise ValueError(f"tags record of {repo} is not a JSON object")
        return {str(tag): str(digest) for tag, digest in tags.items()}

    # Base.

    async def _version(self, request: Request, route: Route) -> bytes:
        """``GET /v2/``: this is a registry of the spec's v2 API."""
        return _json_response(request, {})

    # Blobs.

    async def _blob_get(self, request: Request, route: Route) -> bytes | None:
        """``GET``/``HEAD`` a blob, whole or one byte range, streamed from storage."""
        repo = self._repo(route)
        digest = check_digest(route.reference)
        size = await self._linked_blob_size(repo, digest)
        requested = parse_range(_header(request, "range"), size)
        byte_range = requested or ByteRange(0, size)
        self._blob_headers(request, digest, byte_range)
        if requested is not None:
            request.setResponseCode(206)
            _set_headers(request, [("Content-Range", byte_range.content_range(size))])

        if request.method == b"HEAD" or byte_range.length == 0:
            return b""

        await self._stream_blob(request, digest, byte_range.start, byte_range.end)
        return None

    async def _linked_blob_size(self, repo: str, digest: str) -> int:
        """The size of a blob that is part of the repository."""
        size = None
        if await self._is_linked(repo, digest):
            size = await self.storage.blob_size(digest)

        if size is None:
            raise ApiError(BLOB_UNKNOWN, {"digest": digest})
        return size

    def _blob_headers(
        self, request: Request, digest: str, byte_range: ByteRange
    ) -> None:
        """The headers of a blob read."""
        _set_headers(
            request,
            [
                ("Docker-Content-Digest", digest),
                ("Accept-Ranges", "bytes"),
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(byte_range.length)),
            ],
        )

    async def _stream_blob(
        self, request: Request, digest: str, start: int, end: int
    ) -> None:
        """Write blob bytes to the response; a client that hangs up cancels the read."""
        reading = Deferred.fromCoroutine(
            self.storage.blob_read(digest, start, end, IConsumer(request))
        )
        request.notifyFinish().addErrback(lambda _: reading.cancel())
        await reading

    # Uploads.

    async def _upload_start(self, request: Request, route: Route) -> bytes:
        """``POST .../blobs/uploads/``: mount, upload in one go, or open a session."""
        repo = self._repo(route)
        mount = _query(request, "mount")
        if mount is not None and await self._mount(request, repo, mount):
            return _empty_response(request, 201)

        if mount is None and _query(request, "digest") is not None:
            return await self._upload_monolithic(request, route)

        session = self.sessions.open(repo)
        _set_headers(
            request,
            [
                ("Location", session.location),
                ("Range", upload_range(0)),
                ("Docker-Upload-UUID", session.uuid),
            ],
        )
        return _empty_response(request, 202)

    async def _mount(self, request: Request, repo: str, mount: str) -> bool:
        """Link a blob of another repository into this one, if it is there to link."""
        digest = check_digest(mount)
        source = _query(request, "from")
        if source is None:
            return False

        source = check_name(source, self.settings.max_name_length)
        size = await self.storage.blob_size(digest)
        if size is None or not await self._is_linked(source, digest):
            return False

        await self._link_blob(repo, digest, size)
        self.log.info(
            "mounted blob {digest} from {source} into {repo}",
            digest=digest,
            source=source,
            repo=repo,
            nbytes=size,
        )
        _set_headers(
            request,
            [
                ("Location", f"/v2/{repo}/blobs/{digest}"),
                ("Docker-Content-Digest", digest),
            ],
        )
        return True

    async def _upload_monolithic(self, request: Request, route: Route) -> bytes:
        """``POST ...?digest=`` with the whole blob as its body."""
        session = await self._body_session(request, route)
        return await self._finish_upload(request, session, self._digest_param(request))

    async def _upload_status(self, request: Request, route: Route) -> bytes:
        """``GET`` an upload session: how many bytes it holds."""
        session = self.sessions.get(route.reference, self._repo(route))
        self._session_headers(request, session)
        return _empty_response(request, 204)

    async def _upload_patch(self, request: Request, route: Route) -> bytes:
        """``PATCH`` a chunk into an upload session, answered once it is stored."""
        session = await self._body_session(request, route)
        try:
            await session.upload.drain()
        except Exception:
            self.sessions.cancel(session)
            raise

        self._session_headers(request, session)
        return _empty_response(request, 202)

    async def _upload_put(self, request: Request, route: Route) -> bytes:
        """``PUT ...?digest=``: the last chunk, if any, then close the session."""
        session = await self._body_session(request, route)
        return await self._finish_upload(request, session, self._digest_param(request))

    async def _upload_delete(self, request: Request, route: Route) -> bytes:
        """``DELETE`` an upload session, giving its upload up."""
        session = self.sessions.get(route.reference, self._repo(route))
        self.sessions.claim(session)
        self.sessions.cancel(session)
        return _empty_response(request, 204)

    def _session_headers(self, request: Request, session: UploadSession) -> None:
        """Where an upload continues and how far it has got."""
        _set_headers(
            request,
            [
                ("Location", session.location),
                ("Range", upload_range(session.size)),
                ("Docker-Upload-UUID", session.uuid),
            ],
        )

    async def _body_session(self, request: Request, route: Route) -> UploadSession:
        """The session this request's body went into, streamed or fed from a buffer."""
        if isinstance(request, StreamingRequest) and request.request_line_known:
            return self._streamed_session(request)

        if getattr(request, "body_overflow", False):
            raise ApiError(SIZE_INVALID, {"reason": "body too large to buffer"})

        session = self._claim_session_for_body(request, route)
        try:
            self._feed(request, session)
        except Exception as error:
            self._drop_failed(session, error)
            raise
        return session

    def _feed(self, request: Request, session: UploadSession) -> None:
        """Write a buffered body to an upload, a bounded piece at a time."""
        content = request.content
        while content is not None:
            piece = content.read(self.settings.body_piece_size)
            if not piece:
                return
            session.write(piece)

    def _streamed_session(self, request: StreamingRequest) -> UploadSession:
        """The session a streaming request wrote its body into, or why it did not."""
        session = request.body_sink
        error = request.body_error
        if error is not None:
            if isinstance(session, UploadSession):
                self._drop_failed(session, error)
            raise error

        if not isinstance(session, UploadSession):
            raise RuntimeError("an upload request's body was not streamed to a session")
        return session

    def _drop_failed(self, session: UploadSession, error: Exception) -> None:
        """Give up a session whose upload failed; keep it after a client's mistake."""
        client_error = api_error_for(error)
        if client_error is None or client_error.status >= 500:
            self.sessions.cancel(session)

    async def _finish_upload(
        self, request: Request, session: UploadSession, digest: str
    ) -> bytes:
        """Close the session: check the blob's digest, store it, link it."""
        self.sessions.end(session)
        try:
            size = await session.upload.finish(digest)
        except Exception:
            session.upload.abort()
            raise

        await self._link_blob(session.repo, digest, size)
        self.log.info(
            "upload of {digest} into {repo} complete: {nbytes} bytes in {elapsed} s",
            digest=digest,
            repo=session.repo,
            nbytes=size,
            elapsed=self.clock.seconds() - session.started,
        )
        _set_headers(
            request,
            [
                ("Location", f"/v2/{session.repo}/blobs/{digest}"),
                ("Docker-Content-Digest", digest),
            ],
        )
        return _empty_response(request, 201)

    # Manifests.

    async def _manifest_get(self, request: Request, route: Route) -> bytes | None:
        """``GET``/``HEAD`` a manifest by tag or digest, as pushed, with its type."""
        repo = self._repo(route)
        digest = await self._resolve(repo, route.reference)
        value = await self.storage.record_get(manifest_key(repo, digest))
        if value is None:
            raise ApiError(MANIFEST_UNKNOWN, {"reference": route.reference})

        info = json.loads(value)
        size = int(info["size"])
        _set_headers(
            request,
            [
                ("Content-Type", str(info["media_type"])),
                ("Docker-Content-Digest", digest),
                ("Content-Length", str(size)),
            ],
        )
        if request.method == b"HEAD":
            return b""

        try:
            await self._stream_blob(request, digest, 0, size)
        except BlobUnknown:
            raise ApiError(MANIFEST_UNKNOWN, {"reference": route.reference}) from None
        return None

    async def _resolve(self, repo: str, reference: str) -> str:
        """The digest a manifest reference names: itself, or what its tag points to."""
        if is_digest_like(reference):
            return check_digest(reference)

        self._check_tag(reference)
        digest = (await self._tags(repo) or {}).get(reference)
        if digest is None:
            raise ApiError(MANIFEST_UNKNOWN, {"tag": reference})
        return digest

    def _check_tag(self, reference: str) -> None:
        """A reference that is not a digest must be a valid tag."""
        if not is_tag(reference):
            raise ApiError(
                MANIFEST_INVALID,
                {"reference": reference, "reason": "neither a tag nor a digest"},
            )

    async def _manifest_put(self, request: Request, route: Route) -> bytes:
        """``PUT`` a manifest: validate it, check what it references, store, tag."""
        repo = self._repo(route)
        body = self._manifest_body(request)
        manifest = parse_manifest(
            body, _header(request, "content-type"), self.settings.max_manifest_size
        )
        digest = sha256_digest(body)
        tag = self._push_reference(route.reference, digest)
        await self._check_references(repo, manifest)

        stored = await self.storage.blob_put(body)
        if stored != digest:
            raise RuntimeError(f"storage stored manifest {digest} as {stored}")

        info = {"media_type": manifest.media_type, "size": len(body)}
        await self.storage.record_put(
            manifest_key(repo, digest), json.dumps(info).encode("utf-8")
        )
        await self._update_tags(repo, tag, digest)
        self.log.info(
            "manifest {digest} pushed to {repo} as {reference}: {media_type}, "
            "{nbytes} bytes",
            digest=digest,
            repo=repo,
            reference=route.reference,
            media_type=manifest.media_type,
            nbytes=len(body),
        )
        _set_headers(
            request,
            [
                ("Location", f"/v2/{repo}/manifests/{digest}"),
                ("Docker-Content-Digest", digest),
            ],
        )
        return _empty_response(request, 201)

    def _manifest_body(self, request: Request) -> bytes:
        """A pushed manifest's bytes, refused when past the size limit."""
        limit = self.settings.max_manifest_size
        if getattr(request, "body_overflow", False):
            raise ApiError(MANIFEST_TOO_LARGE, {"max_size": limit})

        content = request.content
        if content is None:
            return b""

        content.seek(0)
        body = bytes(content.read(limit + 1))
        if len(body) > limit:
            raise ApiError(MANIFEST_TOO_LARGE, {"max_size": limit})
        return body

    def _push_reference(self, reference: str, digest: str) -> str | None:
        """The tag a manifest is pushed under, or None when pushed by its digest."""
        if not is_digest_like(reference):
            self._check_tag(reference)
            return reference

        if check_digest(reference) != digest:
            raise ApiError(
                DIGEST_INVALID,
                {"reference": reference, "digest": digest},
                message="the manifest does not hash to the digest it is pushed as",
            )
        return None

    async def _check_references(self, repo: str, manifest: Manifest) -> None:
        """Every blob must be linked in the repository, every child manifest in it."""
        wanted: list[tuple[Descriptor, str]] = [
            (blob, link_key(repo, blob.digest)) for blob in manifest.blobs
        ] + [(child, manifest_key(repo, child.digest)) for child in manifest.manifests]
        try:
            found = await gatherResults(
                [
                    Deferred.fromCoroutine(self.storage.record_get(key))
                    for _, key in wanted
                ],
                consumeErrors=True,
            )
        except FirstError as error:
            error.subFailure.raiseException()

        missing = [
            descriptor.digest
            for (descriptor, _), value in zip(wanted, found, strict=True)
            if value is None
        ]
        if missing:
            raise ApiError(MANIFEST_BLOB_UNKNOWN, {"digests": missing})

    async def _update_tags(self, repo: str, tag: str | None, digest: str) -> None:
        """Point a tag at a manifest; make sure the repository's tags record exists."""
        # Shortcoming: tags are read, changed and written back, last writer wins;
        # two pushes to one repository at once can lose one of their tags.
        tags = await self._tags(repo)
        if tags is not None and (tag is None or tags.get(tag) == digest):
            return

        tags = dict(tags or {})
        if tag is not None:
            tags[tag] = digest
        value = json.dumps(tags, sort_keys=True).encode("utf-8")
        await self.storage.record_put(tags_key(repo), value)

    # Tags.

    async def _tags_list(self, request: Request, route: Route) -> bytes:
        """``GET .../tags/list``, sorted, paged by ``n`` and ``last``."""
        repo = self._repo(route)
        tags = await self._tags(repo)
        if tags is None:
            raise ApiError(NAME_UNKNOWN, {"name": repo})

        names = sorted(tags)
        last = _query(request, "last")
        if last is not None:
            names = [name for name in names if name > last]

        limit = min(self._page_size(request), self.settings.max_tags_page)
        page = names[:limit]
        if 0 < limit < len(names):
            link = f'</v2/{repo}/tags/list?n={limit}&last={page[-1]}>; rel="next"'
            _set_headers(request, [("Link", link)])

        return _json_response(request, {"name": repo, "tags": page})

    def _page_size(self, request: Request) -> int:
        """The ``n`` a client asked for, or the most a page holds."""
        value = _query(request, "n")
        if value is None:
            return self.settings.max_tags_page

        count = parse_count(value)
        if count is None:
            raise ApiError(QUERY_INVALID, {"n": value, "reason": "not a count"})
        return count


class _ApiResource(Resource):
    """The Klein resource, with URLs Klein cannot decode refused in the spec's terms."""

    isLeaf = True

    def __init__(self, registry: Registry, inner: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._registry = registry
        self._inner = inner

    def render(self, request: Request) -> bytes | int:
        """Hand a readable request to Klein; answer any other one here."""
        if not _is_utf8_url(request):
            return self._registry.refuse_url(request)
        return self._inner.render(request)  # type: ignore[no-any-return]


def make_site(registry: Registry) -> Site:
    """A site serving the registry, with upload bodies streamed as they arrive."""
    return StreamingSite(registry.resource(), registry)
