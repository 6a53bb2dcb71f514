"""What each request of the API asks to do, in the scopes logins are checked against.

Reads (blobs, manifests, tags, referrers) pull; uploads and manifest pushes pull and
push, as docker asks for both when it pushes; deletes delete; the catalog is the
``registry:catalog:*`` scope. ``GET /v2/`` asks for nothing but a login, which is
how clients find out that, and how, they must sign in.
"""

from treescale.auth.scopes import (
    DELETE,
    PULL,
    PUSH,
    Access,
    catalog_access,
    repository_access,
)
from treescale.registry.routes import Endpoint

_ACTIONS: dict[tuple[Endpoint, bytes], tuple[str, ...]] = {
    (Endpoint.BLOB, b"GET"): (PULL,),
    (Endpoint.BLOB, b"HEAD"): (PULL,),
    (Endpoint.BLOB, b"DELETE"): (DELETE,),
    (Endpoint.UPLOAD_START, b"POST"): (PULL, PUSH),
    (Endpoint.UPLOAD, b"GET"): (PULL, PUSH),
    (Endpoint.UPLOAD, b"PATCH"): (PULL, PUSH),
    (Endpoint.UPLOAD, b"PUT"): (PULL, PUSH),
    (Endpoint.UPLOAD, b"DELETE"): (PULL, PUSH),
    (Endpoint.MANIFEST, b"GET"): (PULL,),
    (Endpoint.MANIFEST, b"HEAD"): (PULL,),
    (Endpoint.MANIFEST, b"PUT"): (PULL, PUSH),
    (Endpoint.MANIFEST, b"DELETE"): (DELETE,),
    (Endpoint.TAGS, b"GET"): (PULL,),
    (Endpoint.TAGS, b"HEAD"): (PULL,),
    (Endpoint.REFERRERS, b"GET"): (PULL,),
    (Endpoint.REFERRERS, b"HEAD"): (PULL,),
}


def wanted_access(endpoint: Endpoint, method: bytes, repo: str) -> list[Access]:
    """The scopes a request must hold; empty for the version check."""
    if endpoint is Endpoint.VERSION:
        return []

    if endpoint is Endpoint.CATALOG:
        return [catalog_access()]

    actions = _ACTIONS.get((endpoint, method))
    if actions is None:
        raise ValueError(f"no access is defined for {method!r} on {endpoint}")
    return [repository_access(repo, *actions)]


def mount_source_access(source: str) -> Access:
    """What mounting a blob from `source` asks of that repository."""
    return repository_access(source, PULL)
