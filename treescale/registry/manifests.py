"""Manifests: parsing and validation by media type, without I/O.

A pushed manifest is checked here for shape only: that it is JSON of one of the four
supported media types, within the size limit, with well-formed descriptors. What it
references is returned so the caller can check, against storage, that every blob and
child manifest is known in the repository.

The media type comes from the manifest's ``mediaType`` field when present, else from
the request's Content-Type (umoci, for one, omits the field). When both are given they
must agree, as the spec requires clients to send the field's value as Content-Type.
Content-Type parameters (``; charset=utf-8``) are ignored, as the spec asks.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass

from treescale.registry.errors import (
    MANIFEST_INVALID,
    MANIFEST_TOO_LARGE,
    UNSUPPORTED,
    ApiError,
)
from treescale.registry.names import is_well_formed_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

IMAGE_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_MEDIA_TYPES = IMAGE_MEDIA_TYPES | INDEX_MEDIA_TYPES

NONDISTRIBUTABLE_LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
"""Layers a client is told not to push: a manifest may name them without them."""

DEFAULT_MAX_MANIFEST_SIZE = 4 * 1024 * 1024
"""The spec: registries should accept manifests of at least 4 MiB."""

MAX_DESCRIPTOR_SIZE = 2**63 - 1
"""The image spec: a descriptor's size is an int64."""


@dataclass(frozen=True)
class Descriptor:
    """A reference from a manifest to content, by digest."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What a valid manifest is and what it needs to exist before it may be stored.

    `blobs` are the config and layers (blobs linked in the repository); `manifests`
    the children of an index or list (manifests known in the repository); `subject`
    the manifest this one refers to, which the spec lets be pushed later.
    `artifact_type` is what the referrers API reports: the ``artifactType`` field, or
    else an image manifest's config media type.
    """

    media_type: str
    blobs: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None = None
    annotations: Mapping[str, str] | None = None


def media_type_of(content_type: str | None) -> str | None:
    """The media type of a Content-Type value without its parameters."""
    if content_type is None:
        return None

    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type or None


def parse_manifest(
    data: bytes,
    content_type: str | None,
    max_size: int = DEFAULT_MAX_MANIFEST_SIZE,
) -> Manifest:
    """Validate a pushed manifest and list what it references."""
    if len(data) > max_size:
        raise ApiError(MANIFEST_TOO_LARGE, {"size": len(data), "max_size": max_size})

    document = _decode(data)
    media_type = _media_type(document, media_type_of(content_type))
    _check_schema_version(document)
    annotations = _check_annotations(document, "annotations")
    subject = _optional_descriptor(document, "subject")
    artifact_type = _optional_string(document, "artifactType")

    if media_type in INDEX_MEDIA_TYPES:
        children = _descriptors(document, "manifests")
        return Manifest(media_type, (), children, subject, artifact_type, annotations)

    config = _descriptor(document.get("config"), "config")
    layers = _descriptors(document, "layers")
    distributable = tuple(
        layer
        for layer in layers
        if layer.media_type not in NONDISTRIBUTABLE_LAYER_TYPES
    )
    return Manifest(
        media_type,
        (config, *distributable),
        (),
        subject,
        artifact_type or config.media_type,
        annotations,
    )


def _invalid(field: str, reason: str) -> ApiError:
    """The error for one field that is wrong."""
    return ApiError(MANIFEST_INVALID, {"field": field, "reason": reason})


def _refuse_constant(name: str) -> object:
    """Refuse NaN and Infinity: Python reads them, JSON lacks them, clients choke."""
    raise ValueError(f"{name} is not a JSON value")


def _decode(data: bytes) -> Mapping[str, object]:
    """The manifest's JSON object; nesting too deep to parse is invalid too."""
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _invalid("", f"not JSON: {error}") from None

    if not isinstance(document, dict):
        raise _invalid("", "not a JSON object")

    return document


def _media_type(document: Mapping[str, object], header_type: str | None) -> str:
    """The manifest's media type, from its field or the request's Content-Type."""
    field_type = document.get("mediaType")
    if field_type is not None and not isinstance(field_type, str):
        raise _invalid("mediaType", "not a string")

    if field_type is not None and header_type is not None and field_type != header_type:
        raise ApiError(
            MANIFEST_INVALID,
            {
                "field": "mediaType",
                "reason": "mediaType and Content-Type disagree",
                "mediaType": field_type,
                "contentType": header_type,
            },
        )

    media_type = field_type or header_type
    if media_type is None:
        raise _invalid("mediaType", "no mediaType field and no Content-Type")

    if media_type not in MANIFEST_MEDIA_TYPES:
        raise ApiError(
            UNSUPPORTED,
            {"mediaType": media_type, "supported": sorted(MANIFEST_MEDIA_TYPES)},
            message="unsupported manifest media type",
        )

    return media_type


def _check_schema_version(document: Mapping[str, object]) -> None:
    """Every supported manifest type is schema version 2."""
    version = document.get("schemaVersion")
    if isinstance(version, bool) or version != 2:
        raise _invalid("schemaVersion", "must be 2")


def _optional_string(document: Mapping[str, object], field: str) -> str | None:
    """A field that, when present, is a non-empty string."""
    value = document.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _invalid(field, "must be a non-empty string")
    return value


def _check_annotations(
    document: Mapping[str, object], field: str
) -> Mapping[str, str] | None:
    """Annotations, when present, map strings to strings."""
    annotations = document.get("annotations")
    if annotations is None:
        return None

    if not isinstance(annotations, dict) or not all(
        isinstance(key, str) and isinstance(value, str)
        for key, value in annotations.items()
    ):
        raise _invalid(field, "must map strings to strings")
    return annotations


def _descriptors(document: Mapping[str, object], field: str) -> tuple[Descriptor, ...]:
    """A required list of descriptors."""
    entries = document.get(field)
    if not isinstance(entries, list):
        raise _invalid(field, "must be a list of descriptors")

    return tuple(
        _descriptor(entry, f"{field}[{index}]") for index, entry in enumerate(entries)
    )


def _optional_descriptor(
    document: Mapping[str, object], field: str
) -> Descriptor | None:
    """A descriptor that may be absent."""
    entry = document.get(field)
    if entry is None:
        return None

    return _descriptor(entry, field)


def _descriptor(entry: object, field: str) -> Descriptor:
    """One descriptor: media type, digest and size, all well formed."""
    if not isinstance(entry, dict):
        raise _invalid(field, "must be a descriptor object")

    media_type = entry.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{field}.mediaType", "must be a non-empty string")

    digest = entry.get("digest")
    if not isinstance(digest, str) or not is_well_formed_digest(digest):
        raise _invalid(f"{field}.digest", "must be a digest")

    size = entry.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _invalid(f"{field}.size", "must be a non-negative integer")

    if size > MAX_DESCRIPTOR_SIZE:
        raise _invalid(f"{field}.size", "must fit in an int64")

    _check_annotations(entry, f"{field}.annotations")
    return Descriptor(media_type, digest, size)
