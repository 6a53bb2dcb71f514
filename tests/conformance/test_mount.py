"""Cross-repository blob mounts: ``POST .../blobs/uploads/?mount=D&from=R``.

A mount either links the blob at once (201, and the blob is served in the new
repository) or falls back to an upload session (202, and that session works). The
spec lets a registry pick; what it may not do is answer one and behave as the other.
"""

import pytest

from .client import Client, Response
from .content import digest_of, random_blob
from .workflows import Registry

pytestmark = pytest.mark.integration


def assert_mounted(client: Client, response: Response, repo: str, data: bytes) -> None:
    """A 201 mount: a Location, and the blob served in the repository it went to."""
    assert response.status == 201, response.describe()
    location = response.header("Location")
    assert location, response.describe()
    served = client.get(Registry.blob_path(repo, digest_of(data)))
    assert served.status == 200, served.describe()
    assert served.body == data


def assert_usable_session(
    client: Client, response: Response, repo: str, data: bytes
) -> None:
    """A 202 mount: a Location at which the blob can still be uploaded."""
    assert response.status == 202, response.describe()
    location = response.header("Location")
    assert location, response.describe()
    target = Registry.with_digest(client.target_of(location), digest_of(data))
    stored = client.put(target, data)
    assert stored.status == 201, stored.describe()
    served = client.get(Registry.blob_path(repo, digest_of(data)))
    assert served.body == data, served.describe()


def test_mount_from_repository(registry: Registry, client: Client, repo: str) -> None:
    """A mount from a repository holding the blob: 201, and it is served here."""
    data = random_blob(200)
    digest = registry.push_blob(f"{repo}/source", data)

    response = client.post(
        registry.uploads_path(f"{repo}/target", f"mount={digest}&from={repo}/source")
    )

    assert_mounted(client, response, f"{repo}/target", data)


def test_mount_without_from(registry: Registry, client: Client, repo: str) -> None:
    """A mount naming no source: 201 with the blob served, or 202 with a session."""
    data = random_blob(200)
    digest = registry.push_blob(f"{repo}/source", data)

    response = client.post(registry.uploads_path(f"{repo}/target", f"mount={digest}"))

    assert response.status in (201, 202), response.describe()
    if response.status == 201:
        assert_mounted(client, response, f"{repo}/target", data)
    else:
        assert_usable_session(client, response, f"{repo}/target", data)


def test_mount_absent_blob(registry: Registry, client: Client, repo: str) -> None:
    """A mount of a blob no one pushed: 202 with a session the blob can go to."""
    registry.push_blob(f"{repo}/source", random_blob(10))
    data = random_blob(200)

    response = client.post(
        registry.uploads_path(
            f"{repo}/target", f"mount={digest_of(data)}&from={repo}/source"
        )
    )

    assert_usable_session(client, response, f"{repo}/target", data)


def test_mount_from_repository_without_blob(
    registry: Registry, client: Client, repo: str
) -> None:
    """A mount from a repository that lacks the blob is no mount: 202, a session.

    The blob exists elsewhere in the registry; mounting it anyway would let anyone
    who knows a digest read a repository they name nothing of.
    """
    data = random_blob(200)
    digest = registry.push_blob(f"{repo}/holder", data)
    registry.push_blob(f"{repo}/source", random_blob(10))

    response = client.post(
        registry.uploads_path(f"{repo}/target", f"mount={digest}&from={repo}/source")
    )

    assert_usable_session(client, response, f"{repo}/target", data)
