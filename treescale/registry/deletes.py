"""Content management: deleting tags, manifests and blobs.

Deleting removes facts, not bytes: the tag, the manifest's record (with every tag
pointing to it and its place among its subject's referrers), or the blob's link in
the repository. Afterwards nothing deleted is listed or served. The chunks stay on
the relays until garbage collection finds nothing refers to them. Deletes are on by
default; with ``delete_enabled = false`` each is answered 405.
"""

from twisted.logger import Logger
from twisted.web.server import Request

from treescale.ops.events import (
    EventSink,
    blob_deleted,
    ignore_event,
    manifest_deleted,
    tag_deleted,
)
from treescale.registry.errors import (
    BLOB_UNKNOWN,
    DELETE_DISABLED,
    MANIFEST_UNKNOWN,
    ApiError,
)
from treescale.registry.http import empty_response
from treescale.registry.metadata import Metadata
from treescale.registry.names import check_digest, check_tag, is_digest_like
from treescale.registry.routes import Route
from treescale.registry.settings import RegistrySettings


class Deletes:
    """``DELETE`` of manifests (by digest), tags and blobs."""

    log = Logger()

    def __init__(
        self,
        metadata: Metadata,
        settings: RegistrySettings,
        events: EventSink = ignore_event,
    ) -> None:
        self.metadata = metadata
        self.settings = settings
        self.events = events

    def _check_enabled(self) -> None:
        if not self.settings.delete_enabled:
            raise ApiError(DELETE_DISABLED, headers={"Allow": "GET, HEAD, PUT"})

    async def manifest(self, request: Request, route: Route, repo: str) -> bytes:
        """``DELETE .../manifests/REF``: a tag alone, or a manifest and its tags."""
        self._check_enabled()
        if is_digest_like(route.reference):
            await self._delete_manifest(request, repo, check_digest(route.reference))
        else:
            await self._delete_tag(request, repo, check_tag(route.reference))
        return empty_response(request, 202)

    async def _delete_tag(self, request: Request, repo: str, tag: str) -> None:
        if await self.metadata.tag(repo, tag) is None:
            raise ApiError(MANIFEST_UNKNOWN, {"tag": tag})

        await self.metadata.delete_tag(repo, tag)
        self.log.info("tag {tag} of {repo} deleted", tag=tag, repo=repo)
        self.events(request, tag_deleted(repo, tag))

    async def _delete_manifest(self, request: Request, repo: str, digest: str) -> None:
        info = await self.metadata.manifest(repo, digest)
        if info is None:
            raise ApiError(MANIFEST_UNKNOWN, {"digest": digest})

        tags = await self.metadata.tags_of(repo, digest)
        for tag in tags:
            await self.metadata.delete_tag(repo, tag)
        if info.subject is not None:
            await self.metadata.remove_referrer(repo, info.subject, digest)
        await self.metadata.delete_manifest(repo, digest)
        self.log.info(
            "manifest {digest} of {repo} deleted, with tags {tags}",
            digest=digest,
            repo=repo,
            tags=tags,
        )
        self.events(request, manifest_deleted(repo, digest))
        for tag in tags:
            self.events(request, tag_deleted(repo, tag))

    async def blob(self, request: Request, route: Route, repo: str) -> bytes:
        """``DELETE .../blobs/DIGEST``: the blob is no longer part of the repository."""
        self._check_enabled()
        digest = check_digest(route.reference)
        if not await self.metadata.unlink(repo, digest):
            raise ApiError(BLOB_UNKNOWN, {"digest": digest})

        self.log.info("blob {digest} unlinked from {repo}", digest=digest, repo=repo)
        self.events(request, blob_deleted(repo, digest))
        return empty_response(request, 202)
