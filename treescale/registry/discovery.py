"""Content discovery: tags of a repository, the catalog of repositories, referrers.

Listings come from the records of `Metadata`, in key order, paged the way the spec
and RFC 5988 describe: ``n`` says how many a page holds (capped by a setting),
``last`` where the previous page ended, and a ``Link: <...>; rel="next"`` header says
that more follow. A page is asked for one entry larger than it shows, so the
registry knows whether to send the ``Link``.
"""

from collections.abc import Awaitable, Callable
from urllib.parse import quote

from twisted.web.server import Request

from treescale.registry.errors import NAME_UNKNOWN, PAGINATION_NUMBER_INVALID, ApiError
from treescale.registry.http import json_response, query, set_headers
from treescale.registry.manifests import OCI_INDEX
from treescale.registry.metadata import Metadata
from treescale.registry.names import check_digest
from treescale.registry.ranges import parse_count
from treescale.registry.routes import Route
from treescale.registry.settings import RegistrySettings


class Discovery:
    """``tags/list``, ``_catalog`` and ``referrers``."""

    def __init__(self, metadata: Metadata, settings: RegistrySettings) -> None:
        self.metadata = metadata
        self.settings = settings

    async def tags(self, request: Request, route: Route, repo: str) -> bytes:
        """``GET .../tags/list``: a repository's tags, sorted and paged."""
        if not await self.metadata.has_repo(repo):
            raise ApiError(NAME_UNKNOWN, {"name": repo})

        page = await self._page(
            request,
            lambda after, limit: self.metadata.tags(repo, after, limit),
            self.settings.max_tags_page,
            f"/v2/{repo}/tags/list",
        )
        return json_response(request, {"name": repo, "tags": page})

    async def catalog(self, request: Request, route: Route, repo: str) -> bytes:
        """``GET /v2/_catalog``: every repository with a manifest, sorted and paged."""
        page = await self._page(
            request,
            self.metadata.repos,
            self.settings.max_catalog_page,
            "/v2/_catalog",
        )
        return json_response(request, {"repositories": page})

    async def _page(
        self,
        request: Request,
        listing: Callable[[str, int], Awaitable[list[str]]],
        most: int,
        path: str,
    ) -> list[str]:
        """One page of a listing as the request asks for it, with ``Link`` set
        when more follow."""
        limit = min(self._page_size(request, most), most)
        if limit == 0:
            return []

        last = query(request, "last") or ""
        names = await listing(last, limit + 1)
        page = names[:limit]
        if len(names) > limit:
            after = quote(page[-1], safe="")
            link = f'<{path}?n={limit}&last={after}>; rel="next"'
            set_headers(request, [("Link", link)])
        return page

    def _page_size(self, request: Request, most: int) -> int:
        """The ``n`` a client asked for, or the most a page holds."""
        value = query(request, "n")
        if value is None:
            return most

        count = parse_count(value)
        if count is None:
            raise ApiError(
                PAGINATION_NUMBER_INVALID, {"n": value, "reason": "not a count"}
            )
        return count

    async def referrers(self, request: Request, route: Route, repo: str) -> bytes:
        """``GET .../referrers/DIGEST``: an index of the manifests whose subject is
        DIGEST, perhaps only those of one ``artifactType``; empty when none."""
        subject = check_digest(route.reference)
        descriptors = await self.metadata.referrers(
            repo, subject, self.settings.max_referrers
        )
        wanted = query(request, "artifactType")
        if wanted is not None:
            descriptors = [d for d in descriptors if d.get("artifactType") == wanted]
            set_headers(request, [("OCI-Filters-Applied", "artifactType")])

        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        return json_response(request, index, content_type=OCI_INDEX)
