"""Tests of registry events as notifications, in CNCF distribution's format.

The shapes asserted here are the ones distribution 2.8.2 (the reference registry)
was seen sending to a receiver for a skopeo push, pull and delete, and for curl's
HEAD requests, range GET, mount and blob delete: which keys each action's target
has, which it leaves out, and that ``actor`` is an empty object without logins.
"""

import json
import re

from treescale.ops.events import (
    ENVELOPE_TYPE,
    RequestRecord,
    SourceRecord,
    blob_deleted,
    blob_mounted,
    blob_pulled,
    blob_pushed,
    envelope,
    manifest_deleted,
    manifest_pulled,
    manifest_pushed,
    notification,
    tag_deleted,
    timestamp,
)

DIGEST = "sha256:" + "ab" * 32
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REQUEST = RequestRecord(
    id="req-1",
    addr="127.0.0.1:51390",
    host="registry.test:5000",
    method="PUT",
    useragent="skopeo/1.9.3",
    base_url="http://registry.test:5000",
)
SOURCE = SourceRecord("node-1:5000", "instance-1")
WHEN = 1_700_000_000.25


def test_blob_push_has_the_reference_shape() -> None:
    """A blob push names octet-stream, size and length, the repo and the blob URL."""
    note = notification(
        blob_pushed("lib/app", DIGEST, 138, 0.5), REQUEST, SOURCE, "e1", WHEN
    )
    assert note == {
        "id": "e1",
        "timestamp": "2023-11-14T22:13:20.250000Z",
        "action": "push",
        "target": {
            "mediaType": "application/octet-stream",
            "size": 138,
            "digest": DIGEST,
            "length": 138,
            "repository": "lib/app",
            "url": f"http://registry.test:5000/v2/lib/app/blobs/{DIGEST}",
        },
        "request": {
            "id": "req-1",
            "addr": "127.0.0.1:51390",
            "host": "registry.test:5000",
            "method": "PUT",
            "useragent": "skopeo/1.9.3",
        },
        "actor": {},
        "source": {"addr": "node-1:5000", "instanceID": "instance-1"},
    }


def test_manifest_push_by_tag_names_the_tag() -> None:
    """A manifest pushed by tag has its own type, the tag, and a URL by digest."""
    event = manifest_pushed("lib/app", DIGEST, OCI_MANIFEST, 345, "v1")
    target = notification(event, REQUEST, SOURCE, "e", WHEN)["target"]
    assert target == {
        "mediaType": OCI_MANIFEST,
        "size": 345,
        "digest": DIGEST,
        "length": 345,
        "repository": "lib/app",
        "url": f"http://registry.test:5000/v2/lib/app/manifests/{DIGEST}",
        "tag": "v1",
    }


def test_pull_by_digest_has_no_tag() -> None:
    """A manifest pulled by digest leaves ``tag`` out, as the reference does."""
    event = manifest_pulled("lib/app", DIGEST, OCI_MANIFEST, 345, None)
    note = notification(event, REQUEST, SOURCE, "e", WHEN)
    assert note["action"] == "pull"
    assert "tag" not in note["target"]


def test_blob_pull_is_octet_stream() -> None:
    """A blob pull names the whole blob's size, whatever range was asked."""
    target = notification(blob_pulled("a", DIGEST, 9), REQUEST, SOURCE, "e", WHEN)[
        "target"
    ]
    assert target["mediaType"] == "application/octet-stream"
    assert (target["size"], target["length"]) == (9, 9)


def test_mount_names_the_source_repository() -> None:
    """A mount is its own action, with ``fromRepository``."""
    note = notification(
        blob_mounted("other", DIGEST, 138, "lib/app"), REQUEST, SOURCE, "e", WHEN
    )
    assert note["action"] == "mount"
    assert note["target"]["fromRepository"] == "lib/app"
    assert note["target"]["repository"] == "other"
    assert note["target"]["url"].endswith(f"/v2/other/blobs/{DIGEST}")


def test_deletes_name_only_repository_and_reference() -> None:
    """Deletes of a manifest, a blob and a tag carry no type, size or URL."""
    targets = [
        notification(event, REQUEST, SOURCE, "e", WHEN)["target"]
        for event in (
            manifest_deleted("lib/app", DIGEST),
            blob_deleted("lib/app", DIGEST),
            tag_deleted("lib/app", "v1"),
        )
    ]
    assert targets == [
        {"digest": DIGEST, "repository": "lib/app"},
        {"digest": DIGEST, "repository": "lib/app"},
        {"repository": "lib/app", "tag": "v1"},
    ]


def test_an_empty_blob_keeps_its_zero_size() -> None:
    """Size 0 is a size: only unknown values are left out."""
    target = notification(blob_pushed("a", DIGEST, 0), REQUEST, SOURCE, "e", WHEN)[
        "target"
    ]
    assert (target["size"], target["length"]) == (0, 0)


def test_actor_names_the_user_when_logged_in() -> None:
    """With logins on, ``actor`` names the user the request was let on as."""
    request = RequestRecord(**{**REQUEST.__dict__, "actor": "alice"})
    note = notification(blob_pulled("a", DIGEST, 1), request, SOURCE, "e", WHEN)
    assert note["actor"] == {"name": "alice"}


def test_request_fields_left_empty_are_left_out() -> None:
    """A request without a User-Agent has no ``useragent`` key."""
    request = RequestRecord(**{**REQUEST.__dict__, "useragent": ""})
    note = notification(blob_pulled("a", DIGEST, 1), request, SOURCE, "e", WHEN)
    assert "useragent" not in note["request"]


def test_timestamp_is_rfc3339_utc() -> None:
    """Times are written in UTC with a ``Z``, as Go's encoder writes them."""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", timestamp(WHEN))
    assert timestamp(0) == "1970-01-01T00:00:00Z"


def test_envelope_wraps_events_in_order() -> None:
    """A delivery body is ``{"events": [...]}``, the events in the order given."""
    notes = [
        notification(blob_pulled("a", DIGEST, n), REQUEST, SOURCE, f"e{n}", WHEN)
        for n in range(3)
    ]
    body = json.loads(envelope(notes))
    assert list(body) == ["events"]
    assert [event["id"] for event in body["events"]] == ["e0", "e1", "e2"]
    assert ENVELOPE_TYPE == "application/vnd.docker.distribution.events.v1+json"
