"""What the registry did, as events, and their notification format on the wire.

The registry's handlers say what happened in a `RegistryEvent`: a blob or manifest
pushed, pulled, mounted or deleted. `notification` turns one into the JSON object
CNCF distribution sends its notification endpoints, and `envelope` wraps a batch of
them in the body of one POST:

    {"events": [{
        "id", "timestamp", "action": "push" | "pull" | "delete" | "mount",
        "target": {"mediaType", "size", "digest", "length", "repository",
                   "fromRepository", "url", "tag"},
        "request": {"id", "addr", "host", "method", "useragent"},
        "actor": {"name"},
        "source": {"addr", "instanceID"}}]}

As the reference registry does, fields with nothing to say are left out (``actor``
stays, empty, when logins are off); a delete names only the repository and the
digest or the tag; deleting a manifest is one event for it, then one per tag that
went with it. Nothing here does I/O.
"""

import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.web.server import Request

ENVELOPE_TYPE = "application/vnd.docker.distribution.events.v1+json"

PUSH = "push"
PULL = "pull"
DELETE = "delete"
MOUNT = "mount"

# What an event is about: its kind picks the target's URL and media type.
BLOB = "blob"
MANIFEST = "manifest"
TAG = "tag"

BLOB_MEDIA_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class RegistryEvent:
    """One thing the registry did to a repository's content."""

    action: str
    kind: str
    repository: str
    digest: str = ""
    media_type: str = ""
    size: int | None = None
    tag: str = ""
    from_repository: str = ""
    elapsed: float | None = None
    """For a blob push: seconds from the upload's start to its commit."""

    @property
    def target_media_type(self) -> str:
        """The media type a notification names: a blob's is always octet-stream."""
        if self.kind == BLOB and self.action != DELETE:
            return BLOB_MEDIA_TYPE
        return self.media_type


EventSink = Callable[[Request, RegistryEvent], None]
"""What handlers tell an event to, with the request that caused it."""


def ignore_event(request: Request, event: RegistryEvent) -> None:
    """The sink of a handler no one observes."""


def blob_pushed(
    repository: str, digest: str, size: int, elapsed: float | None = None
) -> RegistryEvent:
    return RegistryEvent(PUSH, BLOB, repository, digest, size=size, elapsed=elapsed)


def blob_pulled(repository: str, digest: str, size: int) -> RegistryEvent:
    return RegistryEvent(PULL, BLOB, repository, digest, size=size)


def blob_mounted(repository: str, digest: str, size: int, source: str) -> RegistryEvent:
    return RegistryEvent(
        MOUNT, BLOB, repository, digest, size=size, from_repository=source
    )


def blob_deleted(repository: str, digest: str) -> RegistryEvent:
    return RegistryEvent(DELETE, BLOB, repository, digest)


def manifest_pushed(
    repository: str, digest: str, media_type: str, size: int, tag: str | None
) -> RegistryEvent:
    return RegistryEvent(
        PUSH, MANIFEST, repository, digest, media_type, size, tag or ""
    )


def manifest_pulled(
    repository: str, digest: str, media_type: str, size: int, tag: str | None
) -> RegistryEvent:
    return RegistryEvent(
        PULL, MANIFEST, repository, digest, media_type, size, tag or ""
    )


def manifest_deleted(repository: str, digest: str) -> RegistryEvent:
    return RegistryEvent(DELETE, MANIFEST, repository, digest)


def tag_deleted(repository: str, tag: str) -> RegistryEvent:
    return RegistryEvent(DELETE, TAG, repository, tag=tag)


@dataclass(frozen=True)
class RequestRecord:
    """The HTTP request that caused an event, as notifications describe it."""

    id: str
    addr: str
    host: str
    method: str
    useragent: str
    base_url: str
    """``scheme://host`` the client used: target URLs are built on it."""
    actor: str | None = None
    """The user the request was let on as; None when logins are off."""


@dataclass(frozen=True)
class SourceRecord:
    """The registry node that sends the events."""

    addr: str
    instance_id: str


def target_url(event: RegistryEvent, base_url: str) -> str:
    """Where the event's blob or manifest can be fetched; "" for a delete."""
    if event.action == DELETE or not event.digest:
        return ""
    place = "blobs" if event.kind == BLOB else "manifests"
    return f"{base_url}/v2/{event.repository}/{place}/{event.digest}"


def notification(
    event: RegistryEvent,
    request: RequestRecord,
    source: SourceRecord,
    event_id: str,
    when: float,
) -> dict[str, Any]:
    """The JSON object of one event, as CNCF distribution writes it.

    `when` is a POSIX time; `event_id` must be unique to the event, so a
    receiver can tell a retried delivery from a new one.
    """
    actor = {"name": request.actor} if request.actor else {}
    return {
        "id": event_id,
        "timestamp": timestamp(when),
        "action": event.action,
        "target": _target(event, request.base_url),
        "request": _present(
            {
                "id": request.id,
                "addr": request.addr,
                "host": request.host,
                "method": request.method,
                "useragent": request.useragent,
            }
        ),
        "actor": actor,
        "source": {"addr": source.addr, "instanceID": source.instance_id},
    }


def _target(event: RegistryEvent, base_url: str) -> dict[str, Any]:
    """What the event is about; a delete names only the repository and reference."""
    if event.action == DELETE:
        return _present(
            {"digest": event.digest, "repository": event.repository, "tag": event.tag}
        )
    return _present(
        {
            "mediaType": event.target_media_type,
            "size": event.size,
            "digest": event.digest,
            "length": event.size,
            "repository": event.repository,
            "fromRepository": event.from_repository,
            "url": target_url(event, base_url),
            "tag": event.tag,
        }
    )


def _present(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that say something: no empty strings, no unknown sizes."""
    return {key: value for key, value in fields.items() if value not in ("", None)}


def timestamp(when: float) -> str:
    """RFC 3339 in UTC with a ``Z``, as Go writes a time."""
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def envelope(events: Sequence[Mapping[str, Any]]) -> bytes:
    """The body of one delivery: every event of the batch, in order."""
    return json.dumps({"events": list(events)}, separators=(",", ":")).encode()
