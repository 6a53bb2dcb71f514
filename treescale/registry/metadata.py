"""What the registry knows about repositories, kept as storage records.

Blobs are content; everything else the API serves is a small record, one per fact,
so that two clients changing one repository at once never overwrite each other's
facts (one record per tag, not one record of all tags):

- ``repo/<repo>``: the repository exists (written with its first manifest); listed
  by ``/v2/_catalog``. Value: empty.
- ``link/<repo>/<digest>``: the blob is part of the repository (a blob is visible in
  a repository only when linked to it). Value: JSON ``{"size": n}``.
- ``manifest/<repo>/<digest>``: a manifest pushed to the repository; its bytes are
  the blob of that digest. Value: JSON `ManifestInfo`.
- ``tag/<repo>:<tag>``: a tag and the digest it points to. Value: the digest.
- ``referrer/<repo>:<subject>/<digest>``: the manifest `digest` names `subject` as
  its subject. Value: JSON of its descriptor, as the referrers API lists it.

Repository names cannot hold ``:``, so ``tag/a:`` never lists the tags of ``a/b``.
Deleting writes tombstones (`Storage.record_put` with None): a deleted fact is gone
from every listing and read. The chunks of a blob nothing references any more stay
until garbage collection removes them.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults

from treescale.registry.manifests import Manifest
from treescale.store.interface import Storage

LIST_PAGE = 1000
"""Keys asked for at once when the registry walks a whole listing itself."""


def repo_key(repo: str) -> str:
    return f"repo/{repo}"


def link_key(repo: str, digest: str) -> str:
    return f"link/{repo}/{digest}"


def manifest_key(repo: str, digest: str) -> str:
    return f"manifest/{repo}/{digest}"


def tag_prefix(repo: str) -> str:
    return f"tag/{repo}:"


def referrer_prefix(repo: str, subject: str) -> str:
    return f"referrer/{repo}:{subject}/"


@dataclass(frozen=True)
class ManifestInfo:
    """What the registry keeps about a pushed manifest, beside its bytes."""

    media_type: str
    size: int
    subject: str | None = None
    artifact_type: str | None = None

    def encode(self) -> bytes:
        document = {
            "media_type": self.media_type,
            "size": self.size,
            "subject": self.subject,
            "artifact_type": self.artifact_type,
        }
        return json.dumps(document).encode("utf-8")

    @classmethod
    def decode(cls, value: bytes) -> "ManifestInfo":
        document = json.loads(value)
        return cls(
            str(document["media_type"]),
            int(document["size"]),
            document.get("subject"),
            document.get("artifact_type"),
        )


def referrer_descriptor(
    manifest: Manifest, digest: str, size: int, max_size: int
) -> dict[str, Any]:
    """The descriptor the referrers API lists for a manifest with a subject.

    Annotations are copied as the spec asks, unless they would make the record
    larger than `max_size`; they are then left out (the manifest itself keeps them).
    """
    descriptor: dict[str, Any] = {
        "mediaType": manifest.media_type,
        "digest": digest,
        "size": size,
    }
    if manifest.artifact_type is not None:
        descriptor["artifactType"] = manifest.artifact_type
    if manifest.annotations:
        with_annotations = {**descriptor, "annotations": dict(manifest.annotations)}
        if len(json.dumps(with_annotations)) <= max_size:
            return with_annotations
    return descriptor


async def _all(calls: list["Deferred[Any]"]) -> list[Any]:
    """The results of calls made at once; the first failure is raised as itself."""
    try:
        return await gatherResults(calls, consumeErrors=True)
    except FirstError as error:
        error.subFailure.raiseException()
        raise  # unreachable: raiseException always raises


class Metadata:
    """Reads and writes of the records above, over a `Storage`."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    # Repositories.

    async def add_repo(self, repo: str) -> None:
        """Make a repository known to the catalog (once is enough)."""
        if await self.storage.record_get(repo_key(repo)) is None:
            await self.storage.record_put(repo_key(repo), b"")

    async def has_repo(self, repo: str) -> bool:
        return await self.storage.record_get(repo_key(repo)) is not None

    async def repos(self, after: str, limit: int) -> list[str]:
        """Repository names in order, after `after` ("" for the first)."""
        start = repo_key(after) if after else ""
        keys = await self.storage.record_list(repo_key(""), start, limit)
        return [key.removeprefix(repo_key("")) for key in keys]

    # Blobs.

    async def is_linked(self, repo: str, digest: str) -> bool:
        return await self.storage.record_get(link_key(repo, digest)) is not None

    async def are_linked(self, repo: str, digests: list[str]) -> list[bool]:
        """For each digest, whether it is linked in the repository (asked at once)."""
        found = await _all(
            [
                Deferred.fromCoroutine(self.storage.record_get(link_key(repo, d)))
                for d in digests
            ]
        )
        return [value is not None for value in found]

    async def link(self, repo: str, digest: str, size: int) -> None:
        value = json.dumps({"size": size}).encode("utf-8")
        await self.storage.record_put(link_key(repo, digest), value)

    async def unlink(self, repo: str, digest: str) -> bool:
        """Remove a blob from a repository; False when it was not in it."""
        if not await self.is_linked(repo, digest):
            return False
        await self.storage.record_put(link_key(repo, digest), None)
        return True

    # Manifests.

    async def manifest(self, repo: str, digest: str) -> ManifestInfo | None:
        value = await self.storage.record_get(manifest_key(repo, digest))
        return None if value is None else ManifestInfo.decode(value)

    async def have_manifests(self, repo: str, digests: list[str]) -> list[bool]:
        """For each digest, whether it is a manifest of the repository."""
        found = await _all(
            [
                Deferred.fromCoroutine(self.storage.record_get(manifest_key(repo, d)))
                for d in digests
            ]
        )
        return [value is not None for value in found]

    async def put_manifest(self, repo: str, digest: str, info: ManifestInfo) -> None:
        await self.storage.record_put(manifest_key(repo, digest), info.encode())

    async def delete_manifest(self, repo: str, digest: str) -> None:
        await self.storage.record_put(manifest_key(repo, digest), None)

    # Tags.

    async def tag(self, repo: str, tag: str) -> str | None:
        """The digest a tag points to, or None."""
        value = await self.storage.record_get(tag_prefix(repo) + tag)
        return None if value is None else value.decode("utf-8")

    async def set_tag(self, repo: str, tag: str, digest: str) -> None:
        await self.storage.record_put(tag_prefix(repo) + tag, digest.encode("utf-8"))

    async def delete_tag(self, repo: str, tag: str) -> None:
        await self.storage.record_put(tag_prefix(repo) + tag, None)

    async def tags(self, repo: str, after: str, limit: int) -> list[str]:
        """Tag names of a repository in order, after `after` ("" for the first)."""
        prefix = tag_prefix(repo)
        start = prefix + after if after else ""
        keys = await self.storage.record_list(prefix, start, limit)
        return [key.removeprefix(prefix) for key in keys]

    async def tags_of(self, repo: str, digest: str) -> list[str]:
        """Every tag of the repository that points to `digest`."""
        found: list[str] = []
        after = ""
        while True:
            names = await self.tags(repo, after, LIST_PAGE)
            targets = await _all(
                [Deferred.fromCoroutine(self.tag(repo, name)) for name in names]
            )
            found += [n for n, t in zip(names, targets, strict=True) if t == digest]
            if len(names) < LIST_PAGE:
                return found
            after = names[-1]

    # Referrers.

    async def add_referrer(
        self, repo: str, subject: str, descriptor: Mapping[str, Any]
    ) -> None:
        key = referrer_prefix(repo, subject) + str(descriptor["digest"])
        await self.storage.record_put(key, json.dumps(descriptor).encode("utf-8"))

    async def remove_referrer(self, repo: str, subject: str, digest: str) -> None:
        await self.storage.record_put(referrer_prefix(repo, subject) + digest, None)

    async def referrers(
        self, repo: str, subject: str, limit: int
    ) -> list[dict[str, Any]]:
        """Descriptors of up to `limit` manifests whose subject is `subject`."""
        prefix = referrer_prefix(repo, subject)
        keys = await self.storage.record_list(prefix, "", limit)
        values = await _all(
            [Deferred.fromCoroutine(self.storage.record_get(key)) for key in keys]
        )
        return [json.loads(value) for value in values if value is not None]
