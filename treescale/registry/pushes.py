"""Writes of the API: blob uploads (monolithic, streamed, chunked), mounts, manifests.

Upload bodies stream through `request.StreamingRequest` straight into the session's
`BlobUpload`: the streaming request asks `Pushes.open_body` where a body goes before
it arrives. A request of another class (a test's in-memory client, say) has its
buffered body fed to the upload by the handler, so both paths meet in
`Pushes._body_session`.

A blob is hashed as it arrives with the algorithm its upload was opened with: sha256,
or what the client named in ``?digest-algorithm=`` (or in the ``digest`` of a
one-request upload). A manifest is hashed with the algorithm of the digest it is
pushed by, sha256 when pushed by tag.
"""

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.server import Request

from treescale.ops.events import (
    EventSink,
    blob_mounted,
    blob_pushed,
    ignore_event,
    manifest_pushed,
)
from treescale.registry.errors import (
    BLOB_UPLOAD_RANGE,
    DIGEST_INVALID,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_TOO_LARGE,
    SIZE_INVALID,
    ApiError,
    api_error_for,
)
from treescale.registry.http import empty_response, header, query, set_headers
from treescale.registry.manifests import Manifest, parse_manifest
from treescale.registry.metadata import ManifestInfo, Metadata, referrer_descriptor
from treescale.registry.names import (
    check_algorithm,
    check_digest,
    check_name,
    check_tag,
    is_digest_like,
)
from treescale.registry.ranges import parse_content_range, parse_count, upload_range
from treescale.registry.request import BodySink, StreamingRequest
from treescale.registry.restoring import RangeAfterRestore
from treescale.registry.routes import Endpoint, Route, parse_route
from treescale.registry.saved_uploads import SavedUpload
from treescale.registry.settings import RegistrySettings
from treescale.registry.uploads import UploadSession, UploadSessions
from treescale.store.digests import ALGORITHM, algorithm_of, digest_of
from treescale.store.interface import Storage


class Pushes:
    """Uploads into sessions, cross-repository mounts and manifest pushes."""

    log = Logger()

    def __init__(
        self,
        storage: Storage,
        metadata: Metadata,
        sessions: UploadSessions,
        settings: RegistrySettings,
        clock: IReactorTime,
        may_pull: Callable[[Request, str], bool] = lambda request, source: True,
        events: EventSink = ignore_event,
    ) -> None:
        self.storage = storage
        self.events = events
        self.may_pull = may_pull
        self.metadata = metadata
        self.sessions = sessions
        self.settings = settings
        self.clock = clock

    def _repo(self, route: Route) -> str:
        return check_name(route.name, self.settings.max_name_length)

    # The streaming request's view (request.BodyRouter, through the registry).

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
            and query(request, "digest") is not None
            and query(request, "mount") is None
        )

    def _claim_session_for_body(
        self, request: Request, route: Route
    ) -> UploadSession | RangeAfterRestore:
        """Check an upload request before its body, and claim its session; what
        the body goes to."""
        repo = self._repo(route)
        sink: UploadSession | RangeAfterRestore
        if route.endpoint is Endpoint.UPLOAD_START:
            digest = self._digest_param(request)
            session = sink = self._open_session(request, repo, algorithm_of(digest))
        else:
            session = self.sessions.get(route.reference, repo)
            sink = self._range_checked(request, session)
            if request.method == b"PUT":
                self._check_closing_digest(session, self._digest_param(request))

        self.sessions.claim(session)
        request.notifyFinish().addBoth(self._request_ended, session, route)
        return sink

    def _range_checked(
        self, request: Request, session: UploadSession
    ) -> UploadSession | RangeAfterRestore:
        """The session, its chunk's Content-Range checked; or, while the session
        is being restored, a sink that checks it once it is back."""
        restoring = isinstance(session.upload, SavedUpload) and session.upload.restoring
        if restoring and header(request, "content-range") is not None:
            return RangeAfterRestore(
                session,
                self.sessions.ready(session),
                lambda restored: self._check_chunk_range(request, restored),
            )
        self._check_chunk_range(request, session)
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
        """A chunk with a Content-Range must start where the upload stands.

        A chunk out of order, or sent twice, is refused before a byte of it is
        taken, so the upload is just as it was.
        """
        value = header(request, "content-range")
        if value is None:
            return

        first, last = parse_content_range(value)
        if first != session.size:
            raise ApiError(
                BLOB_UPLOAD_RANGE,
                {"content_range": value, "offset": session.size},
                headers=self._session_header_map(session),
            )

        length = parse_count(header(request, "content-length") or "")
        if length is not None and length != last - first + 1:
            raise ApiError(SIZE_INVALID, {"content_range": value, "length": length})

    def _digest_param(self, request: Request) -> str:
        """The ``digest`` query parameter a closing upload request must carry."""
        digest = query(request, "digest")
        if digest is None:
            raise ApiError(DIGEST_INVALID, {"reason": "no digest query parameter"})
        return check_digest(digest)

    def _check_closing_digest(self, session: UploadSession, digest: str) -> None:
        """The closing digest must be of the algorithm the upload is hashed with."""
        algorithm = algorithm_of(digest)
        if algorithm != session.upload.algorithm:
            raise ApiError(
                DIGEST_INVALID,
                {"digest": digest, "upload_algorithm": session.upload.algorithm},
                message=f"this upload is hashed with {session.upload.algorithm}; "
                f"start it with ?digest-algorithm={algorithm} to close it with a "
                f"{algorithm} digest",
            )

    # Starting uploads.

    async def upload_start(self, request: Request, route: Route, repo: str) -> bytes:
        """``POST .../blobs/uploads/``: mount, upload in one go, or open a session."""
        mount = query(request, "mount")
        if mount is not None and await self._mount(request, repo, mount):
            return empty_response(request, 201)

        if mount is None and query(request, "digest") is not None:
            return await self._upload_monolithic(request, route)

        algorithm = check_algorithm(query(request, "digest-algorithm") or ALGORITHM)
        session = self._open_session(request, repo, algorithm)
        self._session_headers(request, session)
        set_headers(
            request, [("OCI-Chunk-Min-Length", str(self.settings.chunk_min_length))]
        )
        return empty_response(request, 202)

    def _open_session(
        self, request: Request, repo: str, algorithm: str
    ) -> UploadSession:
        """Open a session counted against the client's share of the table."""
        address = request.getClientAddress()
        client = getattr(address, "host", None)
        return self.sessions.open(
            repo,
            algorithm,
            client=client if isinstance(client, str) else None,
            client_cap=self.settings.max_upload_sessions_per_client,
        )

    async def _mount(self, request: Request, repo: str, mount: str) -> bool:
        """Link a blob of another repository into this one, if it is there to link.

        Without ``from``, no repository is named whose access could be checked, so
        the registry answers with an upload session, as the spec allows; so it
        does when the client may not pull from ``from``.
        """
        digest = check_digest(mount)
        source = query(request, "from")
        if source is None:
            return False

        source = check_name(source, self.settings.max_name_length)
        if not self.may_pull(request, source):
            return False

        size = await self.storage.blob_size(digest)
        if size is None or not await self.metadata.is_linked(source, digest):
            return False

        await self.metadata.link(repo, digest, size)
        self.log.info(
            "mounted blob {digest} from {source} into {repo}",
            digest=digest,
            source=source,
            repo=repo,
            nbytes=size,
        )
        self.events(request, blob_mounted(repo, digest, size, source))
        set_headers(
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

    # Sessions.

    async def upload_status(self, request: Request, route: Route, repo: str) -> bytes:
        """``GET`` an upload session: how many bytes it holds (once a session
        saved by another node, or before a restart, is loaded)."""
        session = self.sessions.get(route.reference, repo)
        await self.sessions.ready(session)
        self._session_headers(request, session)
        return empty_response(request, 204)

    async def upload_patch(self, request: Request, route: Route, repo: str) -> bytes:
        """``PATCH`` a chunk into an upload session, answered once it is stored."""
        session = await self._body_session(request, route)
        try:
            await session.upload.drain()
        except Exception:
            self.sessions.cancel(session)
            raise

        self._session_headers(request, session)
        return empty_response(request, 202)

    async def upload_put(self, request: Request, route: Route, repo: str) -> bytes:
        """``PUT ...?digest=``: the last chunk, if any, then close the session."""
        session = await self._body_session(request, route)
        return await self._finish_upload(request, session, self._digest_param(request))

    async def upload_delete(self, request: Request, route: Route, repo: str) -> bytes:
        """``DELETE`` an upload session, giving its upload up; 404 for one that
        is not there, known only once its record was looked for."""
        session = self.sessions.get(route.reference, repo)
        await self.sessions.ready(session)
        self.sessions.claim(session)
        self.sessions.cancel(session)
        return empty_response(request, 204)

    def _session_header_map(self, session: UploadSession) -> dict[str, str]:
        """Where an upload continues and how far it has got."""
        return {
            "Location": session.location,
            "Range": upload_range(session.size),
            "Docker-Upload-UUID": session.uuid,
        }

    def _session_headers(self, request: Request, session: UploadSession) -> None:
        set_headers(request, self._session_header_map(session).items())

    async def _body_session(self, request: Request, route: Route) -> UploadSession:
        """The session this request's body went into, streamed or fed from a buffer."""
        if isinstance(request, StreamingRequest) and request.request_line_known:
            return await self._streamed_session(request)

        if getattr(request, "body_overflow", False):
            raise ApiError(SIZE_INVALID, {"reason": "body too large to buffer"})

        session = await _settled(self._claim_session_for_body(request, route))
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

    async def _streamed_session(self, request: StreamingRequest) -> UploadSession:
        """The session a streaming request wrote its body into, or why it did not."""
        session = request.body_sink
        error = request.body_error
        if isinstance(session, RangeAfterRestore):
            await session.settled
            error = error or session.error
            session = session.session
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

        await self.metadata.link(session.repo, digest, size)
        elapsed = self.clock.seconds() - session.started
        self.log.info(
            "upload of {digest} into {repo} complete: "
            "{nbytes} bytes, {elapsed:.2f} s after its session began",
            digest=digest,
            repo=session.repo,
            nbytes=size,
            elapsed=elapsed,
        )
        self.events(request, blob_pushed(session.repo, digest, size, elapsed))
        set_headers(
            request,
            [
                ("Location", f"/v2/{session.repo}/blobs/{digest}"),
                ("Docker-Content-Digest", digest),
            ],
        )
        return empty_response(request, 201)

    # Manifests.

    async def manifest_put(self, request: Request, route: Route, repo: str) -> bytes:
        """``PUT`` a manifest: validate it, check what it references, store, tag."""
        body = self._manifest_body(request)
        manifest = parse_manifest(
            body, header(request, "content-type"), self.settings.max_manifest_size
        )
        digest, tag = self._push_reference(route.reference, body)
        await self._check_references(repo, manifest)

        stored = await self.storage.blob_put(body, algorithm_of(digest))
        if stored != digest:
            raise RuntimeError(f"storage stored manifest {digest} as {stored}")

        await self._record_manifest(repo, digest, manifest, len(body))
        if tag is not None:
            await self.metadata.set_tag(repo, tag, digest)
        self.log.info(
            "manifest {digest} pushed to {repo} as {reference}: {media_type}, "
            "{nbytes} bytes",
            digest=digest,
            repo=repo,
            reference=route.reference,
            media_type=manifest.media_type,
            nbytes=len(body),
        )
        pushed = manifest_pushed(repo, digest, manifest.media_type, len(body), tag)
        self.events(request, pushed)
        headers = [
            ("Location", f"/v2/{repo}/manifests/{digest}"),
            ("Docker-Content-Digest", digest),
        ]
        if manifest.subject is not None:
            headers.append(("OCI-Subject", manifest.subject.digest))
        set_headers(request, headers)
        return empty_response(request, 201)

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

    def _push_reference(self, reference: str, body: bytes) -> tuple[str, str | None]:
        """The manifest's digest, and the tag it is pushed under (None by digest)."""
        if not is_digest_like(reference):
            return digest_of(body), check_tag(reference)

        wanted = check_digest(reference)
        digest = digest_of(body, algorithm_of(wanted))
        if digest != wanted:
            raise ApiError(
                DIGEST_INVALID,
                {"reference": reference, "digest": digest},
                message="the manifest does not hash to the digest it is pushed as",
            )
        return digest, None

    async def _check_references(self, repo: str, manifest: Manifest) -> None:
        """Every blob must be linked in the repository, every child manifest in it.

        The subject need not exist: the spec lets a referrer be pushed first.
        """
        blobs = [blob.digest for blob in manifest.blobs]
        children = [child.digest for child in manifest.manifests]
        linked = await self.metadata.are_linked(repo, blobs)
        known = await self.metadata.have_manifests(repo, children)
        missing = [d for d, ok in zip(blobs, linked, strict=True) if not ok] + [
            d for d, ok in zip(children, known, strict=True) if not ok
        ]
        if missing:
            raise ApiError(MANIFEST_BLOB_UNKNOWN, {"digests": missing})

    async def _record_manifest(
        self, repo: str, digest: str, manifest: Manifest, size: int
    ) -> None:
        """The records of a stored manifest: the repository, the manifest, and its
        place among its subject's referrers."""
        await self.metadata.add_repo(repo)
        subject = manifest.subject.digest if manifest.subject else None
        info = ManifestInfo(manifest.media_type, size, subject, manifest.artifact_type)
        await self.metadata.put_manifest(repo, digest, info)
        if subject is not None:
            descriptor: dict[str, Any] = referrer_descriptor(
                manifest, digest, size, self.settings.max_referrer_descriptor
            )
            await self.metadata.add_referrer(repo, subject, descriptor)


async def _settled(sink: UploadSession | RangeAfterRestore) -> UploadSession:
    """The session a body goes to, once a range waiting for its restore is
    checked; raises the check's refusal."""
    if isinstance(sink, UploadSession):
        return sink
    await sink.settled
    if sink.error is not None:
        raise sink.error
    return sink.session
