"""Reads of the API: blobs, whole or by byte range, and manifests by tag or digest.

Bodies stream from storage straight into the response, as pushed: a manifest is
served with the exact bytes, type and length it was pushed with, never re-encoded.
A client that hangs up mid-body cancels the storage read.
"""

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.web.server import Request

from treescale.ops.events import (
    EventSink,
    blob_pulled,
    ignore_event,
    manifest_pulled,
)
from treescale.registry.accept import accepts
from treescale.registry.errors import BLOB_UNKNOWN, MANIFEST_UNKNOWN, ApiError
from treescale.registry.http import header, header_lines, set_headers
from treescale.registry.manifests import INDEX_MEDIA_TYPES
from treescale.registry.metadata import Metadata
from treescale.registry.names import check_digest, check_tag, is_digest_like
from treescale.registry.ranges import ByteRange, parse_range
from treescale.registry.routes import Route
from treescale.store.errors import BlobUnknown
from treescale.store.interface import Storage


async def stream_blob(
    storage: Storage, request: Request, digest: str, start: int, end: int
) -> None:
    """Write blob bytes to the response; a client that hangs up cancels the read."""
    reading = Deferred.fromCoroutine(
        storage.blob_read(digest, start, end, IConsumer(request))
    )
    request.notifyFinish().addErrback(lambda _: reading.cancel())
    await reading


async def resolve(metadata: Metadata, repo: str, reference: str) -> str:
    """The digest a manifest reference names: itself, or what its tag points to."""
    if is_digest_like(reference):
        return check_digest(reference)

    digest = await metadata.tag(repo, check_tag(reference))
    if digest is None:
        raise ApiError(MANIFEST_UNKNOWN, {"tag": reference})
    return digest


class Pulls:
    """``GET`` and ``HEAD`` of blobs and manifests."""

    def __init__(
        self, storage: Storage, metadata: Metadata, events: EventSink = ignore_event
    ) -> None:
        self.storage = storage
        self.metadata = metadata
        self.events = events

    async def blob(self, request: Request, route: Route, repo: str) -> bytes | None:
        """A blob, whole or one byte range, streamed from storage."""
        digest = check_digest(route.reference)
        size = await self._linked_blob_size(repo, digest)
        requested = parse_range(header(request, "range"), size)
        byte_range = requested or ByteRange(0, size)
        set_headers(
            request,
            [
                ("Docker-Content-Digest", digest),
                ("Accept-Ranges", "bytes"),
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(byte_range.length)),
            ],
        )
        if requested is not None:
            request.setResponseCode(206)
            set_headers(request, [("Content-Range", byte_range.content_range(size))])

        self.events(request, blob_pulled(repo, digest, size))
        if request.method == b"HEAD" or byte_range.length == 0:
            return b""

        await stream_blob(
            self.storage, request, digest, byte_range.start, byte_range.end
        )
        return None

    async def _linked_blob_size(self, repo: str, digest: str) -> int:
        """The size of a blob that is part of the repository."""
        size = None
        if await self.metadata.is_linked(repo, digest):
            size = await self.storage.blob_size(digest)

        if size is None:
            raise ApiError(BLOB_UNKNOWN, {"digest": digest})
        return size

    async def manifest(self, request: Request, route: Route, repo: str) -> bytes | None:
        """A manifest by tag or digest, as pushed, with its type."""
        digest = await resolve(self.metadata, repo, route.reference)
        info = await self.metadata.manifest(repo, digest)
        if info is None:
            raise ApiError(MANIFEST_UNKNOWN, {"reference": route.reference})

        self._check_acceptable(request, route, info.media_type)
        set_headers(
            request,
            [
                ("Content-Type", info.media_type),
                ("Docker-Content-Digest", digest),
                ("Content-Length", str(info.size)),
            ],
        )
        tag = None if is_digest_like(route.reference) else route.reference
        self.events(
            request, manifest_pulled(repo, digest, info.media_type, info.size, tag)
        )
        if request.method == b"HEAD":
            return b""

        try:
            await stream_blob(self.storage, request, digest, 0, info.size)
        except BlobUnknown:
            raise ApiError(MANIFEST_UNKNOWN, {"reference": route.reference}) from None
        return None

    def _check_acceptable(
        self, request: Request, route: Route, media_type: str
    ) -> None:
        """Refuse an index to a client whose Accept header rules indexes out.

        An image manifest is served whatever the client accepts: the registry cannot
        convert it, and clients that list only some image types still read the
        others. An index is a different kind of document; a client that did not
        ask for it would take it for an image. (CNCF distribution does the same.)
        """
        if media_type not in INDEX_MEDIA_TYPES:
            return

        if not accepts(header_lines(request, "accept"), media_type):
            raise ApiError(
                MANIFEST_UNKNOWN,
                {"reference": route.reference, "mediaType": media_type},
                message="the manifest is an index, which the Accept header rules out",
            )
